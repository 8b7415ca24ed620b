"""ROS 2 semantic segmentation node (``ros2 run bisenet_ros segmentation_node``).

The only module of the package that imports rclpy and ROS message packages. It is a thin adapter:
message -> array (:mod:`bisenet_ros.codec`) -> engine (:class:`bisenet_ros.inference.Segmenter`)
-> arrays -> messages (:mod:`bisenet_ros.outputs`), with the input header copied onto every
output. Frame scheduling, statistics and parameter validation live in the ROS-free
:mod:`bisenet_ros.pipeline`.

Subscribes:
    ``image`` (sensor_msgs/Image; or ``image/compressed``, sensor_msgs/CompressedImage, with
    ``use_compressed``), sensor-data QoS by default.
Publishes:
    ``~/mask`` (mono8 class ids), ``~/drivable_mask`` (mono8, 255 = drivable), ``~/confidence``
    (32FC1 or mono8, with ``publish_confidence``): first, on every frame; then, at most
    ``visualization_rate`` per second, ``~/color_mask`` and ``~/overlay`` (bgr8 or rgb8) and
    ``~/overlay/compressed`` (JPEG) and ``~/color_mask/compressed`` (PNG), ``~/label_info`` (vision_msgs/LabelInfo, transient local) and
    ``/diagnostics`` (diagnostic_msgs/DiagnosticArray).

Latency never builds up: the subscription callback only stores the newest message in a one-slot
buffer, and a worker thread runs inference on whatever is newest when it is free. Frames replaced
before inference, frames older than ``max_frame_age`` and malformed messages are counted in
``/diagnostics``; the node never dies on input.
"""
from __future__ import annotations

import array
import os
import sys
import threading
import time
from typing import Any, Callable

import rclpy
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor
from rclpy.exceptions import InvalidParameterTypeException, InvalidParameterValueException
from rclpy.executors import ExternalShutdownException
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CompressedImage, Image
from vision_msgs.msg import LabelInfo, VisionClass

from bisenet_ros import outputs
from bisenet_ros.codec import CodecError, decode_compressed, decode_image
from bisenet_ros.pipeline import (
    LatestFrameSlot, NodeOptions, ParameterSpec, PipelineStats, RateLimiter, all_parameters,
    config_from_parameters, frame_age_s, is_stale, node_options_from_parameters, stamp_to_ns)
from bisenet_ros.runtime import prefer_passive_openmp
from bisenet_ros.transport import DDS_DOCS, FrameGapEstimator, dds_config_problems

# Throttle period of the per-frame warnings (malformed input, stale frames, engine errors):
# a broken camera at 30 Hz must not flood the log, but the first occurrence is shown at once.
LOG_THROTTLE_S = 5.0
# Frames lost in transport recur on every frame until the DDS configuration is fixed: say it
# once, then at most every 30 s.
TRANSPORT_LOG_THROTTLE_S = 30.0


class StartupError(Exception):
    """The node cannot start (already logged by the node with the cause and the fix)."""


class ParameterError(StartupError, ValueError):
    """A parameter value the node cannot start with."""


def _descriptor(spec: ParameterSpec) -> ParameterDescriptor:
    # Read-only: the engine is built once from these values, so changing one at runtime would
    # silently do nothing. `ros2 param describe` shows the help text and the constraints.
    descriptor = ParameterDescriptor(description=spec.description, read_only=True,
                                     additional_constraints=spec.constraints)
    if spec.int_range:
        descriptor.integer_range = [
            IntegerRange(from_value=spec.int_range[0], to_value=spec.int_range[1], step=0)]
    if spec.float_range:
        descriptor.floating_point_range = [FloatingPointRange(
            from_value=float(spec.float_range[0]), to_value=float(spec.float_range[1]), step=0.0)]
    return descriptor


def input_qos(options: NodeOptions) -> QoSProfile:
    """The subscription QoS. Best effort (``sensor_data``) matches both best-effort and reliable
    camera publishers; keep-last with a small depth never queues old frames."""
    reliability = {
        "sensor_data": ReliabilityPolicy.BEST_EFFORT,
        "reliable": ReliabilityPolicy.RELIABLE,
        "system_default": ReliabilityPolicy.SYSTEM_DEFAULT,
    }[options.qos]
    return QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=options.qos_depth,
                      reliability=reliability, durability=DurabilityPolicy.VOLATILE)


class SegmentationNode(Node):
    """Semantic segmentation of a camera stream with BiSeNet V1/V2 or STDC.

    Args:
        segmenter_factory: builds the engine from a ``SegmenterConfig``; default
            :class:`bisenet_ros.inference.Segmenter` (imported here, so importing this module
            does not import torch).
        **kwargs: passed to :class:`rclpy.node.Node` (``namespace``, ``parameter_overrides``, ...).

    Raises:
        ParameterError: a parameter value is invalid (the message names it and the fix).
        StartupError: the engine cannot be built (missing weights file, backend or device).
    """

    def __init__(self, *, segmenter_factory: Callable[[Any], Any] | None = None,
                 node_name: str = "segmentation", **kwargs: Any) -> None:
        super().__init__(node_name, **kwargs)
        try:
            # rclpy checks an override's type against the default's, and ranges, right here.
            values = {spec.name: self.declare_parameter(spec.name, spec.default,
                                                        _descriptor(spec)).value
                      for spec in all_parameters()}
        except (InvalidParameterTypeException, InvalidParameterValueException) as err:
            self.get_logger().fatal(
                f"invalid parameter: {err} (`ros2 param describe` lists types and ranges; see "
                "config/*.yaml)")
            raise ParameterError(str(err)) from err
        try:
            self.options = node_options_from_parameters(values)
            self.config = config_from_parameters(
                values, publish_confidence=self.options.publish_confidence)
        except ValueError as err:
            self.get_logger().fatal(f"invalid parameter: {err}")
            raise ParameterError(str(err)) from err

        from bisenet_ros.inference import engine_provenance

        if segmenter_factory is None:
            from bisenet_ros.inference import Segmenter as segmenter_factory
        self.get_logger().info(
            f"loading {self.config.variant} ({self.config.weights or 'random weights'}) on "
            f"{self.config.backend}/{self.config.device} at "
            f"{self.config.resolution[0]}x{self.config.resolution[1]}")
        if not self.config.weights:
            self.get_logger().warning(
                "no 'weights' given: the model is randomly initialised and its output is "
                "meaningless (set weights:=/path/to/model.pth or .onnx)")
        try:
            self.segmenter = segmenter_factory(self.config)
        except (ImportError, OSError, ValueError, RuntimeError) as err:
            self.get_logger().fatal(f"cannot build the segmentation engine: {err}")
            raise StartupError(str(err)) from err
        warmup = getattr(self.segmenter, "warmup", None)
        if warmup is not None:
            # Lazy initialisation (cuDNN autotuning, TensorRT engine build: minutes on a Jetson on
            # the first run, cached afterwards) happens here rather than on the first camera frame.
            self.get_logger().info("warming up the engine (a first TensorRT run builds its engine)")
            try:
                warmup(frame_size=tuple(self.config.resolution))
            except Exception as err:  # noqa: BLE001 - report like a construction error
                self.get_logger().fatal(f"the segmentation engine fails on a blank frame: {err}")
                raise StartupError(str(err)) from err

        # What actually runs (an .onnx file's own variant, size and classes win over the
        # parameters): diagnostics report this, never the parameter defaults.
        self.engine_info = engine_provenance(self.segmenter)
        self.get_logger().info(
            "engine: {variant} {res} ({num_classes} classes) on {backend}/{device} {precision}".format(
                res="x".join(str(v) for v in self.engine_info.get("resolution") or ["?"]),
                **{k: self.engine_info.get(k) for k in (
                    "variant", "num_classes", "backend", "device", "precision")}))
        self.stats = PipelineStats()
        self.frame_gaps = FrameGapEstimator()
        self._slot: LatestFrameSlot[Any] = LatestFrameSlot()

        # Outputs: reliable keep-last matches reliable and best-effort subscribers (rviz, planners).
        out_qos = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=1,
                             reliability=ReliabilityPolicy.RELIABLE)
        topics = [t for t in outputs.OUTPUT_TOPICS
                  if t != "confidence" or self.options.publish_confidence]
        self._image_publishers = {t: self.create_publisher(Image, f"~/{t}", out_qos) for t in topics}
        # image_transport "compressed" names (<topic>/compressed): rviz and image_transport
        # subscribers pick them up as the compressed transport of ~/overlay and ~/color_mask.
        self._image_publishers.update({t: self.create_publisher(CompressedImage, f"~/{t}", out_qos)
                                       for t in outputs.COMPRESSED_TOPICS})
        self._visualization_limiter = RateLimiter(self.options.visualization_rate)
        # Transient local: a subscriber starting later still receives the class map.
        latched = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=1,
                             reliability=ReliabilityPolicy.RELIABLE,
                             durability=DurabilityPolicy.TRANSIENT_LOCAL)
        self._label_info_publisher = self.create_publisher(LabelInfo, "~/label_info", latched)
        self._diagnostics_publisher = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        self._publish_label_info()

        msg_type = CompressedImage if self.options.use_compressed else Image
        self._decode = decode_compressed if self.options.use_compressed else decode_image
        self._subscription = self.create_subscription(
            msg_type, self.options.input_topic, self._on_image, input_qos(self.options))
        self._diagnostics_timer = self.create_timer(
            self.options.diagnostics_period, self._publish_diagnostics)

        self._worker = threading.Thread(target=self._run_worker, name="segmentation", daemon=True)
        self._worker.start()
        self.get_logger().info(
            f"segmenting {self.options.input_topic} ({msg_type.__name__}, QoS {self.options.qos}, "
            f"depth {self.options.qos_depth}); max frame age {self.options.max_frame_age} s")

    # -- input ------------------------------------------------------------------------------

    def _on_image(self, msg: Any) -> None:
        """Subscription callback: keep only the newest message, decode nothing here."""
        self.stats.count("frames_received")
        gap = self.frame_gaps.observe(stamp_to_ns(msg.header.stamp))
        if gap is not None:
            self.get_logger().warning(
                f"{gap.missing} camera frame(s) never reached this node (header stamps "
                f"{gap.gap_s * 1e3:.0f} ms apart, camera period {gap.period_s * 1e3:.0f} ms): "
                "large images are being dropped by the DDS transport (or the driver); see "
                f"{DDS_DOCS} (config/cyclonedds.xml, net.core.rmem_max)",
                throttle_duration_sec=TRANSPORT_LOG_THROTTLE_S)
        if self._slot.put(msg):
            self.stats.count("dropped_superseded")

    def _run_worker(self) -> None:
        while not self._slot.closed:
            msg = self._slot.take(timeout=0.5)
            if msg is None:
                continue
            try:
                self.process(msg)
            except Exception as err:  # noqa: BLE001 - e.g. publishing while Ctrl-C shuts down
                if self._slot.closed:
                    break
                self.stats.record_error(f"{type(err).__name__}: {err}")
                self.get_logger().error(f"processing a frame failed: {type(err).__name__}: {err}",
                                        throttle_duration_sec=LOG_THROTTLE_S)

    # -- processing -------------------------------------------------------------------------

    def _wanted_topics(self) -> tuple[list[str], list[str]]:
        """Planner topics and visualization topics to build for this frame.

        The mask is always published (planners rely on it); other outputs only cost time when
        somebody listens, and visualization topics at most ``visualization_rate`` times a second.
        """
        wanted = [t for t, pub in self._image_publishers.items()
                  if t == "mask" or pub.get_subscription_count() > 0]
        planner = [t for t in outputs.PLANNER_TOPICS if t in wanted]
        visual = [t for t in outputs.VISUALIZATION_TOPICS if t in wanted]
        if visual and not self._visualization_limiter.ready():
            visual = []
        return planner, visual

    def process(self, msg: Any) -> bool:
        """Segment one message and publish the outputs; returns whether anything was published.

        ``~/mask`` and ``~/drivable_mask`` are built and published first; the visualization
        topics (raw and compressed) follow. Never raises on bad input: stale, malformed and
        failing frames are logged (throttled) and counted in ``/diagnostics``.
        """
        stamp_ns = stamp_to_ns(msg.header.stamp)
        now_ns = self.get_clock().now().nanoseconds
        if is_stale(stamp_ns, now_ns, self.options.max_frame_age):
            self.stats.count("dropped_stale")
            self.get_logger().warning(
                f"dropping a frame {frame_age_s(stamp_ns, now_ns):.3f} s old (max_frame_age "
                f"{self.options.max_frame_age} s): inference is slower than the camera or the "
                "clocks differ (use_sim_time with a bag?)", throttle_duration_sec=LOG_THROTTLE_S)
            return False
        start = time.perf_counter()
        try:
            frame, color_order = self._decode(msg)
        except CodecError as err:
            self.stats.count("malformed")
            self.get_logger().warning(f"skipping a malformed image message: {err}",
                                      throttle_duration_sec=LOG_THROTTLE_S)
            return False
        decoded = time.perf_counter()
        planner, visual = self._wanted_topics()
        try:
            result = self.segmenter(frame, color_order=color_order,
                                    outputs=outputs.engine_outputs_for(planner + visual))
        except ValueError as err:  # the engine's "bad frame" error (e.g. an empty or huge image)
            self.stats.count("malformed")
            self.get_logger().warning(f"skipping a frame the engine rejects: {err}",
                                      throttle_duration_sec=LOG_THROTTLE_S)
            return False
        except Exception as err:  # noqa: BLE001 - the node must outlive a backend failure
            self.stats.record_error(f"{type(err).__name__}: {err}")
            self.get_logger().error(f"inference failed: {type(err).__name__}: {err}",
                                    throttle_duration_sec=LOG_THROTTLE_S)
            return False
        inferred = time.perf_counter()
        image_options = {"color_encoding": self.options.color_mask_encoding,
                         "confidence_encoding": self.options.confidence_encoding}
        for topic, fields in outputs.result_to_image_fields(
                result, color_order, topics=planner, **image_options).items():
            self._image_publishers[topic].publish(self._image_message(msg.header, fields))
        planned = time.perf_counter()
        if visual:
            for topic, fields in outputs.result_to_image_fields(
                    result, color_order, topics=visual, **image_options).items():
                self._image_publishers[topic].publish(self._image_message(msg.header, fields))
            for topic, fields in outputs.result_to_compressed_fields(
                    result, color_order, color_encoding=self.options.color_mask_encoding,
                    jpeg_quality=self.options.jpeg_quality, topics=visual).items():
                self._image_publishers[topic].publish(
                    self._compressed_message(msg.header, fields))
        done = time.perf_counter()
        engine = dict(getattr(result, "timings", None) or {})
        if "total" in engine:  # 'total' below is the node's (decode to publish)
            engine["engine"] = engine.pop("total")
        timings = {"decode": (decoded - start) * 1e3, **engine,
                   "publish_planner": (planned - inferred) * 1e3,
                   "publish": (done - inferred) * 1e3, "total": (done - start) * 1e3}
        age = frame_age_s(stamp_ns, self.get_clock().now().nanoseconds)
        self.stats.record_frame(timings, None if age is None else age * 1e3)
        return True

    @staticmethod
    def _pixels(buffer: Any) -> array.array:
        # rclpy's generated setter takes array.array('B') as is (a NumPy array is rejected, a
        # list or bytes is checked element by element); frombytes is a single memcpy, the one
        # copy of the pixels this node makes (rclpy's C conversion at publish makes its own).
        data = array.array("B")
        data.frombytes(buffer)
        return data

    def _image_message(self, header: Any, fields: dict[str, Any]) -> Image:
        msg = Image(header=header, height=fields["height"], width=fields["width"],
                    encoding=fields["encoding"], is_bigendian=fields["is_bigendian"],
                    step=fields["step"])
        msg.data = self._pixels(fields["data"])
        return msg

    def _compressed_message(self, header: Any, fields: dict[str, Any]) -> CompressedImage:
        msg = CompressedImage(header=header, format=fields["format"])
        msg.data = self._pixels(fields["data"])
        return msg

    # -- metadata and diagnostics -----------------------------------------------------------

    def _publish_label_info(self) -> None:
        info = outputs.label_info_fields(self.segmenter.class_names)
        msg = LabelInfo()
        msg.header.stamp = self.get_clock().now().to_msg()
        msg.class_map = [VisionClass(class_id=i, class_name=name) for i, name in info["class_map"]]
        msg.threshold = info["threshold"]
        self._label_info_publisher.publish(msg)

    def _publish_diagnostics(self) -> None:
        snapshot = {**self.stats.snapshot(), **self.frame_gaps.snapshot()}
        level, message = outputs.diagnostic_level(snapshot)
        levels = {outputs.OK: DiagnosticStatus.OK, outputs.WARN: DiagnosticStatus.WARN,
                  outputs.ERROR: DiagnosticStatus.ERROR}
        status = DiagnosticStatus(
            level=levels[level], name=f"{self.get_fully_qualified_name()}: segmentation",
            message=message, hardware_id=str(self.engine_info.get("device") or self.config.device),
            values=[KeyValue(key=k, value=v)
                    for k, v in outputs.diagnostic_values(snapshot, self.engine_info)])
        msg = DiagnosticArray()
        msg.header.stamp = self.get_clock().now().to_msg()
        msg.status = [status]
        self._diagnostics_publisher.publish(msg)

    def destroy_node(self) -> None:
        """Stop the worker thread, then destroy the node."""
        slot, worker = getattr(self, "_slot", None), getattr(self, "_worker", None)
        if slot is not None:
            slot.close()
        if worker is not None and worker.is_alive() and worker is not threading.current_thread():
            worker.join(timeout=5.0)
        super().destroy_node()


def main(args: list[str] | None = None) -> int:
    """Entry point of ``ros2 run bisenet_ros segmentation_node``; returns the exit status."""
    prefer_passive_openmp()  # before the engine imports torch
    # Before rclpy.init: a CycloneDDS that cannot read its configuration fails inside rcl with
    # a long trace; say which file is missing in one line instead.
    for variable, problem in dds_config_problems():
        print(f"[segmentation_node] {problem}", file=sys.stderr)
        if variable == "CYCLONEDDS_URI" and "cyclonedds" in os.environ.get(
                "RMW_IMPLEMENTATION", ""):
            return 1
    rclpy.init(args=args)
    node = None
    try:
        node = SegmentationNode()
        rclpy.spin(node)
    except StartupError:
        return 1  # already logged with the cause and the fix
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        if node is not None:
            node.destroy_node()
        rclpy.try_shutdown()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
