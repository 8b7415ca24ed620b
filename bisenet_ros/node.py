"""ROS 2 semantic segmentation node (``ros2 run bisenet_ros segmentation_node``).

The only module of the package that imports rclpy and ROS message packages. It is a thin adapter:
message -> array (:mod:`bisenet_ros.codec`) -> engine (:class:`bisenet_ros.inference.Segmenter`)
-> arrays -> messages (:mod:`bisenet_ros.outputs`), with the input header copied onto every
output. Parameter validation and statistics live in the ROS-free :mod:`bisenet_ros.pipeline`,
frame scheduling in :mod:`bisenet_ros.scheduler`, each camera's state in :mod:`bisenet_ros.streams`
and grid fusion in :mod:`bisenet_ros.fusion`; this module wires them (:class:`CameraIO` per camera,
:class:`SurroundGridIO` for the fused grid).

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

With ``cameras`` (several cameras, one engine) the same topics exist per camera ``C``: input
``/C/<image_suffix>`` (or ``image_topics``), outputs under ``/C/segmentation/``, one
``/diagnostics`` entry per camera plus one for the engine, and ``~/drivable_grid`` fuses them all.

Latency never builds up: the subscription callbacks only store each camera's newest message, and
a worker thread runs the newest frame of every camera that has one, as one batch, whenever it is
free (no sync barrier; round-robin under ``max_batch_size``). Frames replaced before inference,
frames older than ``max_frame_age`` and malformed messages are counted per camera in
``/diagnostics``; the node never dies on input.
"""
from __future__ import annotations

import array
import os
import sys
import threading
import time
import warnings
from typing import Any, Callable, NamedTuple

import numpy as np
import rclpy
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from nav_msgs.msg import OccupancyGrid
from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor
from rclpy.exceptions import InvalidParameterTypeException, InvalidParameterValueException
from rclpy.executors import ExternalShutdownException
from rclpy.node import Node
from rclpy.parameter import Parameter
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from rclpy.time import Time
from sensor_msgs.msg import CameraInfo, CompressedImage, Image
from tf2_ros import TransformException
from tf2_ros.buffer import Buffer
from tf2_ros.transform_listener import TransformListener
from vision_msgs.msg import LabelInfo, VisionClass

from bisenet_ros import bev, outputs
from bisenet_ros.codec import CodecError, decode_compressed, decode_image
from bisenet_ros.fusion import CameraStatus, GridFuser
from bisenet_ros.labels import make_class_set
from bisenet_ros.pipeline import (
    NodeOptions, ParameterSpec, all_parameters, choose_camera_info_topic, config_from_parameters,
    frame_age_s, grid_options_from_parameters, node_options_from_parameters, stamp_to_ns)
from bisenet_ros.runtime import prefer_passive_openmp
from bisenet_ros.scheduler import Batch, BatchScheduler, CameraTopics, camera_topics
from bisenet_ros.streams import CameraStream, EngineStats, segment_frames
from bisenet_ros.transport import DDS_DOCS, dds_config_problems
from bisenet_ros.visualization import VisualizationWorker

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


def output_qos() -> QoSProfile:
    """The outputs' QoS (images, grids). Reliable keep-last matches reliable and best-effort
    subscribers (rviz, planners); a depth of 1 never queues old results."""
    return QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=1,
                      reliability=ReliabilityPolicy.RELIABLE)


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


class CameraIO:
    """The ROS wiring of one camera: its subscriptions and publishers around a ROS-free
    :class:`bisenet_ros.streams.CameraStream` (statistics, rate limit, CameraInfo, throttles).

    Args:
        node: The node that owns the subscriptions and publishers.
        stream: The camera's state.
        input_topic: Image (or CompressedImage) topic, as given (resolved by the node).
        output: Namespace of the outputs: ``"~"`` (one camera) or ``/<C>/segmentation``.
        diagnostic_name: Name of the camera's ``/diagnostics`` entry.
        grid_topic: Where this camera's own grid goes, or None for none.
        info_hint: How to fix a missing CameraInfo (for the log).
    """

    def __init__(self, node: "SegmentationNode", stream: CameraStream, *, input_topic: str,
                 output: str, diagnostic_name: str, grid_topic: str | None,
                 info_hint: str) -> None:
        self.node, self.stream, self.diagnostic_name = node, stream, diagnostic_name
        options = node.options
        out_qos = output_qos()
        topics = [t for t in outputs.OUTPUT_TOPICS if t != "confidence" or options.publish_confidence]
        self.publishers = {t: node.create_publisher(Image, f"{output}/{t}", out_qos) for t in topics}
        # image_transport "compressed" names (<topic>/compressed): rviz and image_transport
        # subscribers pick them up as the compressed transport of ~/overlay and ~/color_mask.
        self.publishers.update({t: node.create_publisher(CompressedImage, f"{output}/{t}", out_qos)
                                for t in outputs.COMPRESSED_TOPICS})
        # Transient local: a subscriber starting later still receives the class map.
        latched = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=1,
                             reliability=ReliabilityPolicy.RELIABLE,
                             durability=DurabilityPolicy.TRANSIENT_LOCAL)
        node.create_publisher(LabelInfo, f"{output}/label_info", latched).publish(node.label_info())
        self.grid_publisher = None if grid_topic is None else node.create_publisher(
            OccupancyGrid, grid_topic, out_qos)
        self.visualization: VisualizationWorker[Any] = VisualizationWorker(
            self._publish_visualization, stream.stats, on_error=self._on_visualization_error,
            name=f"visualization {stream.name}".strip())
        qos = input_qos(options)
        self.msg_type = CompressedImage if options.use_compressed else Image
        self.subscription = node.create_subscription(self.msg_type, input_topic, self._on_image, qos)
        info_topic, self.camera_info_reason = node.camera_info_topic(self.subscription.topic_name)
        self.camera_info_subscription = node.create_subscription(
            CameraInfo, info_topic, self._on_camera_info, qos)
        self._info_hint = info_hint
        self.grid_status: CameraStatus | None = None  # its place in the fused grid

    def _on_image(self, msg: Any) -> None:
        """Subscription callback: count, keep only the newest message, decode nothing here."""
        stamp_ns = stamp_to_ns(msg.header.stamp)
        gap = self.stream.received(stamp_ns)
        gaps = self.stream.gaps
        if gap is not None and gaps.loss_warning:  # >= 20% of the recent frames
            self.warn("transport", f"{gap.missing} camera frame(s) never reached this node "
                      f"({gaps.recent_loss_fraction:.0%} of the recent ones, from the header "
                      f"stamps: camera period {gap.period_s * 1e3:.0f} ms, last gap "
                      f"{gap.gap_s * 1e3:.0f} ms): large images are being dropped by the DDS "
                      f"transport (or the driver); see {DDS_DOCS} (config/cyclonedds.xml, "
                      "net.core.rmem_max)", TRANSPORT_LOG_THROTTLE_S)
        if self.node.scheduler.put(self.stream.name, msg, stamp_ns):
            self.stream.stats.count("dropped_superseded")

    def _on_camera_info(self, msg: Any) -> None:
        self.stream.camera_info = msg  # one reference assignment: safe against the worker thread

    def warn(self, cause: str, message: str, period_s: float | None = None) -> None:
        """Log a warning about this camera, at most once per ``period_s`` per cause (None: the
        stream's ``log_period_s``)."""
        if self.stream.should_log(cause, period_s):
            self.node.get_logger().warning(self.stream.prefix + message)

    def error(self, message: str) -> None:
        """Count an error of this camera and log it (throttled)."""
        self.stream.stats.record_error(message)
        if self.stream.should_log("error"):
            self.node.get_logger().error(self.stream.prefix + message)

    def decode(self, msg: Any) -> tuple[np.ndarray, str] | None:
        """The frame and its colour order, or None (counted, logged) for a malformed message."""
        try:
            return (decode_compressed if self.msg_type is CompressedImage else decode_image)(msg)
        except CodecError as err:
            self.stream.stats.count("malformed")
            self.warn("malformed", f"skipping a malformed image message: {err}")
            return None

    def wanted_topics(self) -> tuple[list[str], list[str]]:
        """Planner and visualization topics to build for this camera's frame now."""
        return self.stream.wanted_topics(
            {t: p.get_subscription_count() for t, p in self.publishers.items()})

    def publish(self, job: "_Job", result: Any) -> bool:
        """Publish one result: planner topics (and this camera's grid), then hand the
        visualization to its worker; record the frame's timings. False when ``result`` is the
        frame's error instead (counted, logged)."""
        msg = job.msg
        if isinstance(result, ValueError):  # the engine's "bad frame" error (empty, huge image)
            self.stream.stats.count("malformed")
            self.warn("malformed", f"skipping a frame the engine rejects: {result}")
            return False
        if isinstance(result, Exception):  # the node must outlive a backend failure
            self.error(f"inference failed: {type(result).__name__}: {result}")
            return False
        started = time.perf_counter()
        for topic, fields in outputs.result_to_image_fields(
                result, job.color_order, topics=job.planner, **self.node.image_options).items():
            self.publishers[topic].publish(self.node.image_message(msg.header, fields))
        planned = time.perf_counter()
        grid_ms: dict[str, float] = {}
        if self.grid_publisher is not None and self.grid_publisher.get_subscription_count() > 0:
            values = self.grid_values(msg.header, result.labels, job.frame.shape)
            if values is not None:
                self.grid_publisher.publish(self.node.grid_message(msg.header.stamp, values))
                self.stream.stats.count("grid_published")
                grid_ms["grid"] = (time.perf_counter() - planned) * 1e3
        if job.visual:
            # Built and published on the visualization worker: only references cross over.
            self.visualization.submit((msg.header, result, job.color_order, tuple(job.visual)))
        done = time.perf_counter()
        engine = dict(getattr(result, "timings", None) or {})
        if "total" in engine:  # 'total' below is the node's (decode to publish)
            engine["engine"] = engine.pop("total")
        engine.pop("batch", None)  # segment_batch's batch size, not a time (the engine's entry has it)
        timings = {"decode": (job.decoded - job.start) * 1e3, **engine, **grid_ms,
                   "publish_planner": (planned - started) * 1e3,
                   "publish": (done - started) * 1e3, "total": (done - job.start) * 1e3}
        age = frame_age_s(stamp_to_ns(msg.header.stamp), self.node.get_clock().now().nanoseconds)
        self.stream.stats.record_frame(timings, None if age is None else age * 1e3)
        return True

    def _publish_visualization(self, job: tuple[Any, Any, str, tuple[str, ...]]) -> None:
        """The visualization worker's job: overlay, colour mask and their ``/compressed`` for
        one result (raw first, as subscribers of both expect)."""
        header, result, color_order, topics = job
        options = self.node.options
        for topic, fields in outputs.result_to_image_fields(
                result, color_order, topics=topics, **self.node.image_options).items():
            self.publishers[topic].publish(self.node.image_message(header, fields))
        for topic, fields in outputs.result_to_compressed_fields(
                result, color_order, color_encoding=options.color_mask_encoding,
                jpeg_quality=options.jpeg_quality, topics=topics).items():
            msg = CompressedImage(header=header, format=fields["format"])
            msg.data = _pixels(fields["data"])
            self.publishers[topic].publish(msg)

    def _on_visualization_error(self, err: BaseException) -> None:
        if not self.node.stopping:  # publishing on a context shut down is the end, not an error
            self.error(f"publishing the visualization failed: {type(err).__name__}: {err}")

    def grid_inputs(self, header: Any) -> tuple[bev.CameraModel | None, bev.Pose | None, str]:
        """This camera's model (CameraInfo) and pose (tf) for the frame of ``header``:
        ``(camera, pose, "")``, or a None and why (counted in its diagnostics, logged)."""
        camera, counter, problem = self.stream.camera_model()
        topic = self.camera_info_subscription.topic_name
        if camera is None:
            problem = (f"no CameraInfo received on {topic} yet ({self._info_hint})"
                       if counter == "grid_no_camera_info" else f"{problem} (on {topic})")
            self.grid_problem(counter, problem)
            return None, None, problem
        pose, why = self.node.camera_poses.pose(header.frame_id, stamp_to_ns(header.stamp))
        if pose is None:
            self.grid_problem("grid_no_transform", str(why))
        return camera, pose, str(why or "")

    def grid_values(self, header: Any, labels: np.ndarray,
                    frame_shape: tuple[int, ...]) -> np.ndarray | None:
        """This camera's labels projected onto the ground (the grid's int8 values), or None
        (counted in its diagnostics, logged) without CameraInfo, transform or usable geometry."""
        camera, pose, _ = self.grid_inputs(header)
        if camera is None or pose is None:
            return None
        try:
            labels = np.asarray(labels)
            window = bev.label_window(frame_shape, labels.shape, self.node.config.resize)
            return self.node.bev(labels, camera, pose, window=window)
        except bev.BevError as err:
            self.grid_problem("grid_invalid", str(err))
            return None

    def grid_problem(self, counter: str, message: str) -> None:
        """Count and log (throttled per cause) why this frame adds nothing to the grid."""
        self.stream.stats.count(counter)
        # Throttled per cause: one cause must not hide another.
        self.warn(counter, f"no {'~/drivable_grid' if self.stream.prefix == '' else 'grid'}: "
                  f"{message}")

    def diagnostic_status(self, engine_info: dict[str, Any] | None) -> DiagnosticStatus:
        """This camera's ``/diagnostics`` entry (with the engine's provenance when given; with
        several cameras, its place in the fused grid as ``grid_state`` and ``grid_problem``)."""
        snapshot = self.stream.snapshot()
        level, message = outputs.diagnostic_level(snapshot)
        values = outputs.diagnostic_values(snapshot, engine_info)
        if self.grid_status is not None:
            values += [("grid_state", self.grid_status.state),
                       ("grid_problem", self.grid_status.message)]
        return self.node.diagnostic_status(self.diagnostic_name, level, message, values)


class SurroundGridIO:
    """The ROS wiring of the fused ``~/drivable_grid`` of several cameras, around the ROS-free
    :class:`bisenet_ros.fusion.GridFuser` (the overlap rule is documented there).

    After each batch, every camera of the batch gives the fuser its labels with its CameraInfo
    model and tf pose (or why it has none: its cells stay unknown unless another camera sees
    them, and its diagnostics say why); the grid of every camera's latest votes is published,
    stamped with the batch's newest frame. Votes older than ``max_frame_age`` are left out. With
    ``per_camera_grids``, each camera's own grid goes to ``/<C>/segmentation/drivable_grid``.

    Args:
        node: The node.
        drivable_ids: Class ids counted as drivable.
        topics: The cameras' topics (for the per-camera grid names).
    """

    def __init__(self, node: "SegmentationNode", drivable_ids: list[int],
                 topics: tuple[CameraTopics, ...]) -> None:
        self.node = node
        self.fuser = GridFuser(node.grid_options.grid, drivable_ids,
                               cameras=[t.name for t in topics])
        qos = output_qos()
        self.publisher = node.create_publisher(OccupancyGrid, "~/drivable_grid", qos)
        self.camera_publishers = {t.name: node.create_publisher(
            OccupancyGrid, t.output("drivable_grid"), qos) for t in topics
        } if node.grid_options.per_camera_grids else {}
        age = node.options.max_frame_age
        self.max_age_ns = int(age * 1e9) if age > 0 else None

    def wanted(self) -> bool:
        """Whether anybody listens to a grid (nothing is projected otherwise)."""
        return any(p.get_subscription_count() > 0
                   for p in [self.publisher, *self.camera_publishers.values()])

    def publish(self, done: list[tuple["_Job", Any]]) -> None:
        """Fuse the batch's label maps (``(job, result)`` pairs) and publish the grids."""
        for job, result in done:
            camera = job.camera
            header = job.msg.header
            model, pose, problem = camera.grid_inputs(header)
            labels = np.asarray(result.labels)
            status = self.fuser.update(
                camera.stream.name, labels, model, pose, stamp_ns=stamp_to_ns(header.stamp),
                window=bev.label_window(job.frame.shape, labels.shape, self.node.config.resize),
                problem=problem or None)
            if status.state in ("outside_extent", "invalid"):  # e.g. a view that misses the extent
                camera.grid_problem("grid_invalid", status.message)
        stamp_ns = max(stamp_to_ns(job.msg.header.stamp) for job, _ in done)
        fused = self.fuser.fuse(stamp_ns=stamp_ns, max_age_ns=self.max_age_ns)
        self.publisher.publish(self.node.grid_message(Time(nanoseconds=stamp_ns).to_msg(),
                                                      fused.values))
        for job, _ in done:
            camera = job.camera
            camera.grid_status = fused.cameras[camera.stream.name]
            if not camera.grid_status.fused:
                continue
            camera.stream.stats.count("grid_published")
            # A camera's own grid is a full grid built from its votes: only for a listener.
            publisher = self.camera_publishers.get(camera.stream.name)
            if publisher is None or publisher.get_subscription_count() == 0:
                continue
            values = fused.camera_grid(camera.stream.name)
            if values is not None:
                publisher.publish(self.node.grid_message(job.msg.header.stamp, values))


class _Job(NamedTuple):
    """One decoded frame of a batch, with what its camera wants published."""

    camera: CameraIO
    msg: Any
    frame: np.ndarray
    color_order: str
    planner: list[str]
    visual: list[str]
    start: float
    decoded: float


def _pixels(buffer: Any, typecode: str = "B") -> array.array:
    # rclpy's generated setter takes array.array('B') as is (a NumPy array is rejected, a list
    # or bytes is checked element by element); frombytes is a single memcpy, the one copy of
    # the pixels this node makes (rclpy's C conversion at publish makes its own).
    data = array.array(typecode)
    data.frombytes(buffer)
    return data


class SegmentationNode(Node):
    """Semantic segmentation of one camera stream, or of several on one batched engine
    (``cameras``), with BiSeNet V1/V2 or STDC.

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
            # rclpy checks an override's type against the default's, and ranges, right here. An
            # empty list default is declared by type: rclpy cannot tell the type of [].
            values = {spec.name: self.declare_parameter(
                spec.name, spec.default if spec.default != [] else Parameter.Type.STRING_ARRAY,
                _descriptor(spec)).value for spec in all_parameters()}
        except (InvalidParameterTypeException, InvalidParameterValueException) as err:
            self.get_logger().fatal(
                f"invalid parameter: {err} (`ros2 param describe` lists types and ranges; see "
                "config/*.yaml)")
            raise ParameterError(str(err)) from err
        try:
            self.options = node_options_from_parameters(values)
            self.grid_options = grid_options_from_parameters(
                values, cameras=max(1, len(self.options.cameras)))
            self.config = config_from_parameters(
                values, publish_confidence=self.options.publish_confidence)
            topics = camera_topics(self.options.cameras, image_suffix=self.options.image_suffix,
                                   image_topics=self.options.image_topics,
                                   compressed=self.options.use_compressed,
                                   namespace=self.get_namespace()
                                   ) if self.options.cameras else ()
        except ValueError as err:
            self.get_logger().fatal(f"invalid parameter: {err}")
            raise ParameterError(str(err)) from err

        from bisenet_ros.inference.segmenter import (
            RandomWeightsWarning, engine_provenance, model_summary)

        if segmenter_factory is None:
            from bisenet_ros.inference import Segmenter as segmenter_factory
        # A weights file that describes itself supplies variant, classes and size: the engine
        # line below ("engine: ...") says what was loaded.
        self.get_logger().info(
            f"loading {self.config.weights or f'random {self.config.variant} weights'} on "
            f"{self.config.device}")
        if not self.config.weights:
            self.get_logger().warning(
                "no 'weights' given: the model is randomly initialised and its output is "
                "meaningless (set weights:=/path/to/model.pth or .onnx)")
        # Python warnings of the engine go to the ROS log (once each); the random-weights one
        # was just said in the node's words.
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("default")
            warnings.simplefilter("ignore", RandomWeightsWarning)
            try:
                self._build_engine(segmenter_factory)
            finally:
                for item in caught:
                    self.get_logger().warning(f"engine: {item.message}")

        # What actually runs (an .onnx file's own variant, size and classes win over the
        # parameters): diagnostics report this, never the parameter defaults.
        self.engine_info = engine_provenance(self.segmenter)
        self.get_logger().info(f"engine: {model_summary(self.engine_info)}")
        self.engine_stats = EngineStats()
        self.image_options = {"color_encoding": self.options.color_mask_encoding,
                              "confidence_encoding": self.options.confidence_encoding}
        self._diagnostics_publisher = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        # The newest frame of each camera, in batches (one camera: a batch of one).
        names = [t.name for t in topics] or ["camera"]
        self.scheduler: BatchScheduler[Any] = BatchScheduler(
            names, max_batch=self.options.max_batch_size,
            max_batch_wait_ms=self.options.max_batch_wait_ms,
            max_frame_age_s=self.options.max_frame_age,
            now_ns=lambda: self.get_clock().now().nanoseconds)
        self.cameras = [CameraIO(
            self, CameraStream(t.name, visualization_rate=self.options.visualization_rate,
                               rectified=self.grid_options.rectified_input),
            input_topic=t.input_topic, output=t.output_namespace,
            diagnostic_name=f"{t.output_namespace}: segmentation", grid_topic=None,
            info_hint=f"publish it beside {t.image_topic} or set image_topics") for t in topics]
        if not topics:  # one camera: the topics and names the node has always had
            self.cameras = [CameraIO(
                self, CameraStream("camera", visualization_rate=self.options.visualization_rate,
                                   rectified=self.grid_options.rectified_input,
                                   named_in_logs=False),
                input_topic=self.options.input_topic, output="~",
                diagnostic_name=f"{self.get_fully_qualified_name()}: segmentation",
                grid_topic="~/drivable_grid",
                info_hint="remap camera_info or set camera_info_topic")]
            only = self.cameras[0]
            self.stats = only.stream.stats
            self._subscription, self._image_publishers = only.subscription, only.publishers
            self._camera_info_subscription = only.camera_info_subscription
            self._visualization = only.visualization
        self._by_name = {c.stream.name: c for c in self.cameras}
        self._setup_grid(topics)
        self._diagnostics_timer = self.create_timer(
            self.options.diagnostics_period, self._publish_diagnostics)
        self._worker = threading.Thread(target=self._run_worker, name="segmentation", daemon=True)
        self._worker.start()
        for camera in self.cameras:
            # Resolved names (namespace and remapping applied): what `ros2 topic list` shows.
            self.get_logger().info(
                f"{camera.stream.prefix}segmenting {camera.subscription.topic_name} "
                f"({camera.msg_type.__name__}, QoS {self.options.qos}, depth "
                f"{self.options.qos_depth}); max frame age {self.options.max_frame_age} s; "
                f"CameraInfo {camera.camera_info_subscription.topic_name} "
                f"({camera.camera_info_reason}); outputs "
                + ", ".join(p.topic_name for p in camera.publishers.values()))

    def camera_info_topic(self, image_topic: str) -> tuple[str, str]:
        """The CameraInfo topic beside a camera's resolved image topic, and why. One camera:
        the ``camera_info_topic`` parameter or a remap of ``camera_info`` win."""
        if self.options.cameras:
            return choose_camera_info_topic(image_topic, compressed=self.options.use_compressed)
        remapped = self.resolve_topic_name("camera_info")
        return choose_camera_info_topic(
            image_topic, compressed=self.options.use_compressed,
            parameter=self.grid_options.camera_info_topic,
            remapped=remapped if remapped != self.resolve_topic_name(
                "camera_info", only_expand=True) else None)

    def _build_engine(self, segmenter_factory: Callable[[Any], Any]) -> None:
        try:
            self.segmenter = segmenter_factory(self.config)
        except (ImportError, OSError, ValueError, RuntimeError) as err:
            self.get_logger().fatal(f"cannot build the segmentation engine: {err}")
            raise StartupError(str(err)) from err
        warmup = getattr(self.segmenter, "warmup", None)
        if warmup is None:
            return
        # Lazy initialisation (cuDNN autotuning, TensorRT engine build: minutes on a Jetson on
        # the first run, cached afterwards) happens here rather than on the first camera frame.
        self.get_logger().info(
            "warming up the engine" + (" (a first TensorRT run builds its engine: minutes on a "
                                       "Jetson, cached afterwards)"
                                       if self.config.device == "tensorrt" else ""))
        try:
            warmup(frame_size=tuple(self.config.resolution))
        except Exception as err:  # noqa: BLE001 - report like a construction error
            self.get_logger().fatal(f"the segmentation engine fails on a blank frame: {err}")
            raise StartupError(str(err)) from err

    # -- processing -------------------------------------------------------------------------

    @property
    def stopping(self) -> bool:
        """Whether the node is ending: :meth:`destroy_node` began, or the ROS context was shut
        down (SIGTERM, ``rclpy.shutdown()``: what ends ``rclpy.spin`` with
        ``ExternalShutdownException`` while the worker threads still run). Every publish fails
        from then on; that is no error to count or log."""
        return self.scheduler.closed or not self.context.ok()

    def _run_worker(self) -> None:
        while not self.stopping:
            batch = self.scheduler.next_batch(timeout=0.5)
            if batch is None:
                continue
            try:
                self.process_batch(batch)
            except Exception as err:  # noqa: BLE001 - e.g. publishing while the node ends
                if self.stopping:
                    break
                for frame in batch.frames:
                    self._by_name[frame.camera].error(
                        f"processing a frame failed: {type(err).__name__}: {err}")

    def process_batch(self, batch: Batch[Any]) -> None:
        """Segment one batch (the newest frame of each camera that has one) in one engine call
        and publish every camera's outputs with its own header.

        Per camera, ``mask`` and ``drivable_mask`` are published here and the visualization is
        handed to the camera's visualization worker. Never raises on bad input: stale,
        malformed and failing frames are logged (throttled, per camera) and counted in that
        camera's ``/diagnostics`` entry; the other cameras of the batch go on.
        """
        for frame in batch.stale:
            camera = self._by_name[frame.camera]
            camera.stream.stats.count("dropped_stale")
            camera.warn("stale", f"dropping a frame {self.scheduler.frame_age_s(frame):.3f} s old "
                        f"(max_frame_age {self.options.max_frame_age} s): inference is slower "
                        "than the camera or the clocks differ (use_sim_time with a bag?)")
        jobs = []
        for frame in batch.frames:
            camera, start = self._by_name[frame.camera], time.perf_counter()
            decoded = camera.decode(frame.item)
            if decoded is not None:
                jobs.append(_Job(camera, frame.item, *decoded, *camera.wanted_topics(), start,
                                 time.perf_counter()))
        if not jobs:
            return
        wanted = set().union(*(outputs.engine_outputs_for(j.planner + j.visual) for j in jobs))
        started = time.perf_counter()
        try:
            results = segment_frames(self.segmenter, [j.frame for j in jobs],
                                     [j.color_order for j in jobs], wanted)
        except Exception as err:  # noqa: BLE001 - a backend failure fails this batch only
            results = [err] * len(jobs)
        inferred = time.perf_counter()
        failed = next((r for r in results if isinstance(r, Exception)
                       and not isinstance(r, ValueError)), None)
        self.engine_stats.record_batch(len(jobs), (inferred - started) * 1e3, None if failed is None
                                       else f"{type(failed).__name__}: {failed}")
        done = []
        for job, result in zip(jobs, results):
            try:
                if job.camera.publish(job, result):
                    done.append((job, result))
            except Exception as err:  # noqa: BLE001 - one camera's publisher must not stop others
                if self.stopping:
                    return
                job.camera.error(f"processing a frame failed: {type(err).__name__}: {err}")
        if done and self.surround is not None and self.surround.wanted():
            self.surround.publish(done)

    # -- messages ---------------------------------------------------------------------------

    def image_message(self, header: Any, fields: dict[str, Any]) -> Image:
        """A sensor_msgs/Image with ``header`` (the input's, bit for bit) and ``fields``."""
        msg = Image(header=header, height=fields["height"], width=fields["width"],
                    encoding=fields["encoding"], is_bigendian=fields["is_bigendian"],
                    step=fields["step"])
        msg.data = _pixels(fields["data"])
        return msg

    def label_info(self) -> LabelInfo:
        """The class map of the running engine (vision_msgs/LabelInfo)."""
        info = outputs.label_info_fields(self.segmenter.class_names)
        msg = LabelInfo()
        msg.header.stamp = self.get_clock().now().to_msg()
        msg.class_map = [VisionClass(class_id=i, class_name=name) for i, name in info["class_map"]]
        msg.threshold = info["threshold"]
        return msg

    # -- bird's-eye drivable grid -------------------------------------------------------------

    def _setup_grid(self, topics: tuple[CameraTopics, ...]) -> None:
        opts = self.grid_options
        try:
            class_set = make_class_set(self.segmenter.class_names)
            drivable = np.flatnonzero(class_set.mask_lut(self.config.drivable_classes))
        except ValueError as err:  # the engine resolves the same names; only a stand-in can differ
            self.get_logger().warning(f"drivable_classes cannot be resolved for the grid: {err}")
            drivable = np.zeros(0, dtype=np.int64)
        self.bev = bev.BevProjector(opts.grid, drivable.tolist())
        self.camera_poses = CameraPoseLookup(self, opts.grid.frame_id, opts.static_pose)
        # Several cameras: one fused grid (the surround extent unless the parameters set one).
        self.surround = SurroundGridIO(self, drivable.tolist(), topics) if topics else None

    def grid_message(self, stamp: Any, values: np.ndarray) -> OccupancyGrid:
        """The OccupancyGrid of grid ``values`` (int8, ``bev`` layout) stamped ``stamp``."""
        fields = bev.occupancy_grid_fields(values, self.bev.grid)
        msg = OccupancyGrid()
        msg.header.stamp = stamp
        msg.header.frame_id = self.bev.grid.frame_id
        msg.info.map_load_time = stamp
        msg.info.resolution = fields["resolution"]
        msg.info.width, msg.info.height = fields["width"], fields["height"]
        position, orientation = msg.info.origin.position, msg.info.origin.orientation
        position.x, position.y, position.z = fields["origin_position"]
        orientation.x, orientation.y, orientation.z, orientation.w = fields["origin_orientation"]
        msg.data = _pixels(fields["data"], "b")  # int8[]: array.array('b'), as uint8[] takes 'B'
        return msg

    # -- diagnostics --------------------------------------------------------------------------

    def diagnostic_status(self, name: str, level: int, message: str,
                          values: list[tuple[str, str]]) -> DiagnosticStatus:
        """One ``/diagnostics`` entry (``level``: an :mod:`bisenet_ros.outputs` level)."""
        levels = {outputs.OK: DiagnosticStatus.OK, outputs.WARN: DiagnosticStatus.WARN,
                  outputs.ERROR: DiagnosticStatus.ERROR}
        return DiagnosticStatus(
            level=levels[level], name=name, message=message,
            hardware_id=str(self.engine_info.get("device") or self.config.device),
            values=[KeyValue(key=k, value=v) for k, v in values])

    def _publish_diagnostics(self) -> None:
        """One entry per camera; with several cameras, one more for the shared engine."""
        msg = DiagnosticArray()
        msg.header.stamp = self.get_clock().now().to_msg()
        if not self.options.cameras:
            msg.status = [self.cameras[0].diagnostic_status(self.engine_info)]
        else:
            level, message, values = self.engine_stats.diagnostic(self.engine_info)
            msg.status = [c.diagnostic_status(None) for c in self.cameras] + [
                self.diagnostic_status(f"{self.get_fully_qualified_name()}: engine", level,
                                       message, values)]
        self._diagnostics_publisher.publish(msg)

    def destroy_node(self) -> None:
        """Stop the worker threads, then destroy the node."""
        scheduler, worker = getattr(self, "scheduler", None), getattr(self, "_worker", None)
        if scheduler is not None:
            scheduler.close()
        if worker is not None and worker.is_alive() and worker is not threading.current_thread():
            worker.join(timeout=5.0)
        for camera in getattr(self, "cameras", []):
            camera.visualization.close()
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
