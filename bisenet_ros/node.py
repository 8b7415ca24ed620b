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
    (32FC1 or mono8, with ``publish_confidence``) and ``~/drivable_grid`` (nav_msgs/OccupancyGrid
    in ``grid_frame``, only while somebody subscribes: the drivable area projected onto the ground
    with the camera's CameraInfo, subscribed beside the image subscription's resolved name as
    image_transport does, and its tf pose, :mod:`bisenet_ros.bev`): first, on every
    frame; and, at most ``visualization_rate`` per second, built and published on the
    visualization worker thread (:mod:`bisenet_ros.visualization`), ``~/color_mask`` and
    ``~/overlay`` (bgr8 or rgb8), ``~/overlay/compressed`` (JPEG) and
    ``~/color_mask/compressed`` (PNG);
    ``~/label_info`` (vision_msgs/LabelInfo, transient local) and ``/diagnostics``
    (diagnostic_msgs/DiagnosticArray).

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

import numpy as np
import rclpy
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from nav_msgs.msg import OccupancyGrid
from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor
from rclpy.exceptions import InvalidParameterTypeException, InvalidParameterValueException
from rclpy.executors import ExternalShutdownException
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from rclpy.time import Time
from sensor_msgs.msg import CameraInfo, CompressedImage, Image
from tf2_ros import TransformException
from tf2_ros.buffer import Buffer
from tf2_ros.transform_listener import TransformListener
from vision_msgs.msg import LabelInfo, VisionClass

from bisenet_ros import bev, outputs
from bisenet_ros.codec import CodecError, decode_compressed, decode_image
from bisenet_ros.labels import make_class_set
from bisenet_ros.pipeline import (
    LatestFrameSlot, NodeOptions, ParameterSpec, PipelineStats, RateLimiter, all_parameters,
    choose_camera_info_topic, config_from_parameters, frame_age_s, grid_options_from_parameters,
    is_stale, node_options_from_parameters, stamp_to_ns)
from bisenet_ros.runtime import prefer_passive_openmp
from bisenet_ros.transport import DDS_DOCS, FrameGapEstimator, dds_config_problems
from bisenet_ros.visualization import VisualizationWorker

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


class CameraPoseLookup:
    """tf2 behind one call: the pose of an image's optical frame in the grid frame.

    The seam between tf2 and the ROS-free :mod:`bisenet_ros.bev`: a tf2 ``Buffer`` fed by a
    ``TransformListener`` (``/tf`` and ``/tf_static``) on the node, looked up at the image's stamp
    (a stamp of 0 asks for the latest), with the ``static_camera_pose`` fallback.

    Args:
        node: The node the listener subscribes with.
        grid_frame: Target frame (``grid_frame``).
        fallback: Pose used when tf has no transform (``use_static_camera_pose``), or None.
    """

    def __init__(self, node: Node, grid_frame: str, fallback: bev.Pose | None) -> None:
        self.grid_frame = grid_frame
        self.fallback = fallback
        self.buffer = Buffer()
        self.listener = TransformListener(self.buffer, node)
        self._logger = node.get_logger()
        self._fallback_logged = False

    def pose(self, frame_id: str, stamp_ns: int) -> tuple[bev.Pose | None, str | None]:
        """``(pose, None)``, or ``(None, why)`` when there is no transform and no fallback."""
        if not frame_id:
            problem = "the image header has an empty frame_id; the camera driver must set it"
        else:
            try:
                msg = self.buffer.lookup_transform(self.grid_frame, frame_id,
                                                   Time(nanoseconds=max(stamp_ns, 0)))
                t, q = msg.transform.translation, msg.transform.rotation
                return bev.Pose.from_transform((t.x, t.y, t.z), (q.x, q.y, q.z, q.w)), None
            except TransformException as err:
                problem = (f"no transform from {frame_id!r} to {self.grid_frame!r} at the image "
                           f"stamp ({type(err).__name__}: {err}); publish the camera mount on "
                           "/tf_static (robot_state_publisher) or set use_static_camera_pose")
            except bev.BevError as err:
                problem = f"the transform from {frame_id!r} to {self.grid_frame!r} is invalid: {err}"
        if self.fallback is None:
            return None, problem
        if not self._fallback_logged:
            self._logger.warning(f"{problem}; using static_camera_pose instead")
            self._fallback_logged = True
        return self.fallback, None


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
            self.grid_options = grid_options_from_parameters(values)
            self.config = config_from_parameters(
                values, publish_confidence=self.options.publish_confidence)
        except ValueError as err:
            self.get_logger().fatal(f"invalid parameter: {err}")
            raise ParameterError(str(err)) from err

        from bisenet_ros.inference.segmenter import engine_provenance, model_summary

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
        self.get_logger().info(f"engine: {model_summary(self.engine_info)}")
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
        self._image_options = {"color_encoding": self.options.color_mask_encoding,
                               "confidence_encoding": self.options.confidence_encoding}
        self._visualization_limiter = RateLimiter(self.options.visualization_rate)
        self._visualization: VisualizationWorker[Any] = VisualizationWorker(
            self._publish_visualization, self.stats, on_error=self._on_visualization_error)
        # Transient local: a subscriber starting later still receives the class map.
        latched = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=1,
                             reliability=ReliabilityPolicy.RELIABLE,
                             durability=DurabilityPolicy.TRANSIENT_LOCAL)
        self._label_info_publisher = self.create_publisher(LabelInfo, "~/label_info", latched)
        self._diagnostics_publisher = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        self._publish_label_info()

        msg_type = CompressedImage if self.options.use_compressed else Image
        self._decode = decode_compressed if self.options.use_compressed else decode_image
        qos = input_qos(self.options)
        self._subscription = self.create_subscription(
            msg_type, self.options.input_topic, self._on_image, qos)
        self._setup_grid(qos)
        self._diagnostics_timer = self.create_timer(
            self.options.diagnostics_period, self._publish_diagnostics)

        self._worker = threading.Thread(target=self._run_worker, name="segmentation", daemon=True)
        self._worker.start()
        # Resolved names (namespace and remapping applied): what `ros2 topic list` shows.
        self.get_logger().info(
            f"segmenting {self._subscription.topic_name} ({msg_type.__name__}, QoS "
            f"{self.options.qos}, depth {self.options.qos_depth}); max frame age "
            f"{self.options.max_frame_age} s; CameraInfo {self._camera_info_subscription.topic_name} "
            f"({self._camera_info_reason}); outputs "
            + ", ".join(p.topic_name for p in self._image_publishers.values()))

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

        ``~/mask`` and ``~/drivable_mask`` are built and published here; the visualization
        topics (raw and compressed) are handed to the visualization worker, which builds and
        publishes them on its own thread (newest result only). Never raises on bad input:
        stale, malformed and failing frames are logged (throttled) and counted in
        ``/diagnostics``.
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
        for topic, fields in outputs.result_to_image_fields(
                result, color_order, topics=planner, **self._image_options).items():
            self._image_publishers[topic].publish(self._image_message(msg.header, fields))
        planned = time.perf_counter()
        grid_ms: dict[str, float] = {}
        if self._grid_publisher.get_subscription_count() > 0:
            if self.publish_grid(msg.header, result.labels, frame.shape):
                grid_ms["grid"] = (time.perf_counter() - planned) * 1e3
        if visual:
            # Built and published on the visualization worker: only references cross over.
            self._visualization.submit((msg.header, result, color_order, tuple(visual)))
        done = time.perf_counter()
        engine = dict(getattr(result, "timings", None) or {})
        if "total" in engine:  # 'total' below is the node's (decode to publish)
            engine["engine"] = engine.pop("total")
        timings = {"decode": (decoded - start) * 1e3, **engine, **grid_ms,
                   "publish_planner": (planned - inferred) * 1e3,
                   "publish": (done - inferred) * 1e3, "total": (done - start) * 1e3}
        age = frame_age_s(stamp_ns, self.get_clock().now().nanoseconds)
        self.stats.record_frame(timings, None if age is None else age * 1e3)
        return True

    def _publish_visualization(self, job: tuple[Any, Any, str, tuple[str, ...]]) -> None:
        """The visualization worker's job: ``~/overlay``, ``~/color_mask`` and their
        ``/compressed`` for one result (raw first, as subscribers of both expect)."""
        header, result, color_order, topics = job
        for topic, fields in outputs.result_to_image_fields(
                result, color_order, topics=topics, **self._image_options).items():
            self._image_publishers[topic].publish(self._image_message(header, fields))
        for topic, fields in outputs.result_to_compressed_fields(
                result, color_order, color_encoding=self.options.color_mask_encoding,
                jpeg_quality=self.options.jpeg_quality, topics=topics).items():
            self._image_publishers[topic].publish(self._compressed_message(header, fields))

    def _on_visualization_error(self, err: BaseException) -> None:
        self.stats.record_error(f"visualization: {type(err).__name__}: {err}")
        self.get_logger().error(f"publishing the visualization failed: {type(err).__name__}: "
                                f"{err}", throttle_duration_sec=LOG_THROTTLE_S)

    @staticmethod
    def _pixels(buffer: Any, typecode: str = "B") -> array.array:
        # rclpy's generated setter takes array.array('B') as is (a NumPy array is rejected, a
        # list or bytes is checked element by element); frombytes is a single memcpy, the one
        # copy of the pixels this node makes (rclpy's C conversion at publish makes its own).
        data = array.array(typecode)
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

    # -- bird's-eye drivable grid -------------------------------------------------------------

    def _setup_grid(self, qos: QoSProfile) -> None:
        opts = self.grid_options
        try:
            class_set = make_class_set(self.segmenter.class_names)
            drivable = np.flatnonzero(class_set.mask_lut(self.config.drivable_classes))
        except ValueError as err:  # the engine resolves the same names; only a stand-in can differ
            self.get_logger().warning(f"drivable_classes cannot be resolved for the grid: {err}")
            drivable = np.zeros(0, dtype=np.int64)
        self._bev = bev.BevProjector(opts.grid, drivable.tolist())
        self._camera_info: Any = None
        self._camera_model: tuple[Any, bev.CameraModel] | None = None
        self._grid_logged: dict[str, float] = {}
        self._camera_poses = CameraPoseLookup(self, opts.grid.frame_id, opts.static_pose)
        self._grid_publisher = self.create_publisher(
            OccupancyGrid, "~/drivable_grid",
            QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=1,
                       reliability=ReliabilityPolicy.RELIABLE))
        # image_transport's rule on the image subscription's resolved name, unless the
        # camera_info_topic parameter or a remap of 'camera_info' says otherwise.
        remapped = self.resolve_topic_name("camera_info")
        topic, self._camera_info_reason = choose_camera_info_topic(
            self._subscription.topic_name, compressed=self.options.use_compressed,
            parameter=opts.camera_info_topic,
            remapped=remapped if remapped != self.resolve_topic_name(
                "camera_info", only_expand=True) else None)
        self._camera_info_subscription = self.create_subscription(
            CameraInfo, topic, self._on_camera_info, qos)

    def _on_camera_info(self, msg: Any) -> None:
        self._camera_info = msg  # one reference assignment: safe against the worker thread

    def _grid_problem(self, counter: str, message: str) -> None:
        self.stats.count(counter)
        # Throttled per cause (rclpy throttles per call site, which would let one cause hide
        # another): the first occurrence of each is shown at once.
        now = time.monotonic()
        if now - self._grid_logged.get(counter, -1e18) >= LOG_THROTTLE_S:
            self._grid_logged[counter] = now
            self.get_logger().warning(f"no ~/drivable_grid: {message}")

    def _current_camera(self) -> bev.CameraModel | None:
        info = self._camera_info
        if info is None:
            self._grid_problem("grid_no_camera_info", f"no CameraInfo received on "
                               f"{self._camera_info_subscription.topic_name} yet (remap "
                               "camera_info or set camera_info_topic)")
            return None
        if self._camera_model is not None and self._camera_model[0] is info:
            return self._camera_model[1]
        try:
            model = bev.CameraModel.from_camera_info(info,
                                                     rectified=self.grid_options.rectified_input)
        except bev.BevError as err:
            self._grid_problem("grid_invalid", f"CameraInfo on "
                               f"{self._camera_info_subscription.topic_name}: {err}")
            return None
        self._camera_model = (info, model)
        return model

    def publish_grid(self, header: Any, labels: np.ndarray, frame_shape: tuple[int, ...]) -> bool:
        """Project ``labels`` (of a camera frame of ``frame_shape``) onto the ground and publish
        ``~/drivable_grid``; False (logged, counted in diagnostics) without CameraInfo, transform
        or usable geometry."""
        camera = self._current_camera()
        if camera is None:
            return False
        pose, problem = self._camera_poses.pose(header.frame_id, stamp_to_ns(header.stamp))
        if pose is None:
            self._grid_problem("grid_no_transform", str(problem))
            return False
        try:
            labels = np.asarray(labels)
            window = bev.label_window(frame_shape, labels.shape, self.config.resize)
            values = self._bev(labels, camera, pose, window=window)
        except bev.BevError as err:
            self._grid_problem("grid_invalid", str(err))
            return False
        fields = bev.occupancy_grid_fields(values, self._bev.grid)
        msg = OccupancyGrid()
        msg.header.stamp = header.stamp
        msg.header.frame_id = self._bev.grid.frame_id
        msg.info.map_load_time = header.stamp
        msg.info.resolution = fields["resolution"]
        msg.info.width, msg.info.height = fields["width"], fields["height"]
        position, orientation = msg.info.origin.position, msg.info.origin.orientation
        position.x, position.y, position.z = fields["origin_position"]
        orientation.x, orientation.y, orientation.z, orientation.w = fields["origin_orientation"]
        msg.data = self._pixels(fields["data"], "b")  # int8[]: array.array('b'), as uint8[] takes 'B'
        self._grid_publisher.publish(msg)
        self.stats.count("grid_published")
        return True

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
        """Stop the worker threads, then destroy the node."""
        slot, worker = getattr(self, "_slot", None), getattr(self, "_worker", None)
        if slot is not None:
            slot.close()
        if worker is not None and worker.is_alive() and worker is not threading.current_thread():
            worker.join(timeout=5.0)
        visualization = getattr(self, "_visualization", None)
        if visualization is not None:
            visualization.close()
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
