"""ROS-free logic of the segmentation node: newest-frame slot, stale-frame policy, statistics.

The node is a thin adapter around these pieces so that they are tested without ROS:

* :class:`LatestFrameSlot` keeps only the newest frame. The subscription callback overwrites it
  and the worker thread takes it, so when the camera is faster than the model, old frames are
  replaced (counted as ``dropped_superseded``) instead of queueing up: latency stays bounded.
* :func:`frame_age_s` / :func:`is_stale` implement the ``max_frame_age`` policy.
* :class:`PipelineStats` counts frames and keeps rates and per-stage latencies for
  ``/diagnostics`` (formatted by :func:`bisenet_ros.outputs.diagnostic_values`).
* :data:`NODE_PARAMETERS` and :func:`config_parameters` describe every ROS parameter (type,
  default, help, constraints); :func:`node_options_from_parameters` and
  :func:`config_from_parameters` validate the values at start-up.
"""
from __future__ import annotations

import collections
import dataclasses
import math
import threading
import time
from dataclasses import dataclass
from typing import Any, Deque, Generic, Mapping, TypeVar

__all__ = [
    "LatestFrameSlot", "RateLimiter", "RateMeter", "PipelineStats", "stamp_to_ns", "frame_age_s", "is_stale",
    "ParameterSpec", "NODE_PARAMETERS", "QOS_PROFILES", "NodeOptions", "config_parameters",
    "all_parameters", "node_options_from_parameters", "config_from_parameters",
    "COUNTERS", "GRID_COUNTERS", "VISUALIZATION_COUNTERS", "GRID_PARAMETERS", "GridOptions", "grid_options_from_parameters", "camera_info_topic",
    "choose_camera_info_topic", "GRID_EXTENT_PARAMETERS",
]

T = TypeVar("T")


class LatestFrameSlot(Generic[T]):
    """A thread-safe slot holding only the newest item (a one-element queue that overwrites)."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._item: T | None = None
        self._closed = False

    def put(self, item: T) -> bool:
        """Store ``item``, replacing any item not yet taken.

        Returns:
            True when an untaken item was replaced (a frame dropped in favour of a newer one).
        """
        with self._cond:
            replaced = self._item is not None
            self._item = item
            self._cond.notify()
            return replaced

    def take(self, timeout: float | None = None) -> T | None:
        """Remove and return the newest item, waiting up to ``timeout`` s (None: forever).

        Returns:
            The item, or None on timeout or once :meth:`close` was called.
        """
        with self._cond:
            self._cond.wait_for(lambda: self._item is not None or self._closed, timeout)
            item, self._item = self._item, None
            return None if self._closed else item

    def close(self) -> None:
        """Wake up and release every waiting :meth:`take` (used at shutdown)."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def empty(self) -> bool:
        """Whether no item waits to be taken."""
        with self._cond:
            return self._item is None


def stamp_to_ns(stamp: Any) -> int:
    """Nanoseconds of a ``builtin_interfaces/Time`` (``sec``, ``nanosec``)."""
    return int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec)


def frame_age_s(stamp_ns: int, now_ns: int) -> float | None:
    """Age of a frame in seconds, or None when the stamp is unset (0: driver without stamps)."""
    if stamp_ns <= 0:
        return None
    return (now_ns - stamp_ns) / 1e9


def is_stale(stamp_ns: int, now_ns: int, max_age_s: float) -> bool:
    """Whether a frame is older than ``max_age_s`` (0 or less disables the check).

    A frame without a stamp is never stale: there is nothing to compare, and dropping every frame
    of such a camera would be worse than processing them.
    """
    if max_age_s <= 0:
        return False
    age = frame_age_s(stamp_ns, now_ns)
    return age is not None and age > max_age_s


class RateLimiter:
    """Lets events through at most ``rate_hz`` times per second, on an even grid.

    A 30 Hz camera with a 10 Hz limit passes every third frame. A frame arriving slightly early
    (a tenth of the period, camera jitter) still passes, so jitter does not halve the rate; a
    source slower than the limit passes every event.

    Args:
        rate_hz: the most events per second (> 0).
    """

    def __init__(self, rate_hz: float) -> None:
        if not rate_hz > 0:
            raise ValueError(f"rate {rate_hz!r} Hz: expected > 0")
        self.period_s = 1.0 / rate_hz
        self._slack_s = 0.1 * self.period_s
        self._next_s: float | None = None

    def ready(self, now_s: float | None = None) -> bool:
        """Whether an event at ``now_s`` (seconds, monotonic; default now) may go through."""
        now = time.monotonic() if now_s is None else now_s
        if self._next_s is not None and now + self._slack_s < self._next_s:
            return False
        # Keep the grid while events come regularly (no drift from late ones); restart it after
        # a pause, so a pause never saves up a burst.
        restart = self._next_s is None or now > self._next_s + self.period_s
        self._next_s = (now if restart else self._next_s) + self.period_s
        return True


class RateMeter:
    """Events per second over a sliding time window."""

    def __init__(self, window_s: float = 5.0) -> None:
        self.window_s = window_s
        self._times: Deque[float] = collections.deque()

    def tick(self, now: float | None = None) -> None:
        self._times.append(time.monotonic() if now is None else now)

    def rate(self, now: float | None = None) -> float:
        now = time.monotonic() if now is None else now
        while self._times and self._times[0] < now - self.window_s:
            self._times.popleft()
        if len(self._times) < 2:
            return 0.0
        span = now - self._times[0]
        # n events spread over `span` seconds; use (n - 1) intervals for short bursts.
        return (len(self._times) - 1) / span if span > 0 else 0.0


#: Counters of the drivable grid: grids published, frames without one and why.
GRID_COUNTERS = ("grid_published", "grid_no_camera_info", "grid_no_transform", "grid_invalid")
#: Counters of the visualization worker (bisenet_ros.visualization): overlays/colour masks
#: published, and results replaced by a newer one before the worker got to them.
VISUALIZATION_COUNTERS = ("visualization_published", "visualization_skipped")
COUNTERS = ("frames_received", "frames_processed", "dropped_stale", "dropped_superseded",
            "malformed", "errors") + GRID_COUNTERS + VISUALIZATION_COUNTERS


class PipelineStats:
    """Counters, rates and latencies of the node, safe to update from several threads.

    Args:
        window: number of recent frames the latency means are taken over.
        rate_window_s: window of the input/output rates, in seconds.
    """

    def __init__(self, window: int = 30, rate_window_s: float = 5.0) -> None:
        self._lock = threading.Lock()
        self.counters = {name: 0 for name in COUNTERS}
        self._since_snapshot = {name: 0 for name in COUNTERS}
        self._latency: dict[str, Deque[float]] = {}
        self._window = window
        self.input_rate = RateMeter(rate_window_s)
        self.output_rate = RateMeter(rate_window_s)
        self.last_age_ms: float | None = None
        self.last_error: str | None = None

    def count(self, name: str, n: int = 1) -> None:
        """Increment a counter (one of ``frames_received``, ``dropped_stale``, ...)."""
        with self._lock:
            self.counters[name] += n
            self._since_snapshot[name] += n
            if name == "frames_received":
                self.input_rate.tick()

    def record_frame(self, timings_ms: Mapping[str, float], age_ms: float | None = None) -> None:
        """Record one processed frame with its per-stage timings (ms)."""
        self.record_timings(timings_ms)
        with self._lock:
            self.counters["frames_processed"] += 1
            self._since_snapshot["frames_processed"] += 1
            self.output_rate.tick()
            self.last_age_ms = age_ms
            self.last_error = None

    def record_timings(self, timings_ms: Mapping[str, float]) -> None:
        """Record stage timings (ms) of work done apart from a frame's own path (the
        visualization worker's), without counting a processed frame."""
        with self._lock:
            for stage, ms in timings_ms.items():
                self._latency.setdefault(stage, collections.deque(maxlen=self._window)).append(
                    float(ms))

    def record_error(self, message: str) -> None:
        with self._lock:
            self.counters["errors"] += 1
            self._since_snapshot["errors"] += 1
            self.last_error = message

    def snapshot(self) -> dict[str, Any]:
        """Current values; ``recent`` holds counts since the previous snapshot."""
        with self._lock:
            recent = dict(self._since_snapshot)
            self._since_snapshot = {name: 0 for name in COUNTERS}
            return {
                **self.counters,
                "recent": recent,
                "input_rate_hz": self.input_rate.rate(),
                "output_rate_hz": self.output_rate.rate(),
                "latency_ms": {stage: sum(v) / len(v) for stage, v in self._latency.items() if v},
                "age_ms": self.last_age_ms,
                "last_error": self.last_error,
            }


# ---------------------------------------------------------------------------------------------
# Parameters of the node, ROS-free: the node declares exactly these (see docs/node.md).
# ---------------------------------------------------------------------------------------------

QOS_PROFILES = ("sensor_data", "reliable", "system_default")


@dataclass(frozen=True)
class ParameterSpec:
    """One ROS parameter of the node: its ROS-typed default, help text and constraints.

    ``default`` has the type the ROS parameter is declared with (str, int, float, bool,
    list[str] or list[float]); rclpy rejects an override of another type at launch. An empty
    list is a string array declared by its type alone (rclpy cannot type an empty list; the
    node reads the unset value as empty).
    """

    name: str
    default: Any
    description: str
    choices: tuple[str, ...] = ()
    int_range: tuple[int, int] | None = None
    float_range: tuple[float, float] | None = None

    @property
    def constraints(self) -> str:
        """Human-readable constraint text (``ParameterDescriptor.additional_constraints``)."""
        if self.choices:
            return "one of: " + ", ".join(self.choices)
        if self.int_range:
            return f"integer in {self.int_range[0]}..{self.int_range[1]}"
        if self.float_range:
            return f"number in {self.float_range[0]}..{self.float_range[1]}"
        return ""


#: Parameters of the node that are not segmenter options (keep in sync with
#: ``bisenet_ros.config._NODE_ONLY_KEYS``; a test checks it).
NODE_PARAMETERS: tuple[ParameterSpec, ...] = (
    ParameterSpec("image_topic", "image",
                  "Input sensor_msgs/Image topic (relative names resolve in the node's namespace; "
                  "remapping 'image' works as well)."),
    ParameterSpec("use_compressed", False,
                  "Subscribe to sensor_msgs/CompressedImage (JPEG/PNG) on 'compressed_topic' "
                  "instead of the raw image topic."),
    ParameterSpec("compressed_topic", "",
                  "CompressedImage topic; empty: '<image_topic>/compressed' (image_transport "
                  "convention)."),
    ParameterSpec("qos", "sensor_data",
                  "Input QoS: 'sensor_data' (best effort, keep last: matches every camera "
                  "driver and never queues), 'reliable' or 'system_default'.",
                  choices=QOS_PROFILES),
    ParameterSpec("qos_depth", 1,
                  "Input queue depth. 1 keeps only the newest frame: latency stays bounded when "
                  "the camera is faster than the model.", int_range=(1, 100)),
    ParameterSpec("max_frame_age", 0.5,
                  "Drop (and count) a frame whose header stamp is older than this many seconds "
                  "when inference starts; 0 disables the check. Frames with a zero stamp are "
                  "never dropped.", float_range=(0.0, 3600.0)),
    ParameterSpec("publish_confidence", False,
                  "Publish ~/confidence (max softmax probability per pixel); implies the "
                  "engine's 'confidence' option."),
    ParameterSpec("confidence_encoding", "32FC1",
                  "Encoding of ~/confidence: 32FC1 (0..1) or mono8 (0..255).",
                  choices=("32FC1", "mono8")),
    ParameterSpec("color_mask_encoding", "bgr8",
                  "Encoding of ~/color_mask and ~/overlay: bgr8 or rgb8.", choices=("bgr8", "rgb8")),
    ParameterSpec("diagnostics_period", 1.0,
                  "Seconds between /diagnostics messages.", float_range=(0.05, 60.0)),
    ParameterSpec("visualization_rate", 10.0,
                  "Most messages per second on the visualization topics (~/overlay, "
                  "~/color_mask and their /compressed); must be > 0. ~/mask and "
                  "~/drivable_mask are never limited."),
    ParameterSpec("jpeg_quality", 80,
                  "JPEG quality of ~/overlay/compressed (1..100).", int_range=(1, 100)),
    # Several cameras on one engine (bisenet_ros.scheduler); empty: the one camera above.
    ParameterSpec("cameras", [],
                  "Camera names served by this node on one batched engine, e.g. [front, rear]: "
                  "camera C is read from /C/<image_suffix> and published under "
                  "/C/segmentation/... (as multi_camera.launch.py mode:=separate names it). "
                  "Empty: one camera on 'image_topic', outputs under ~/."),
    ParameterSpec("image_suffix", "image_raw",
                  "With 'cameras': the image topic inside each camera's namespace."),
    ParameterSpec("image_topics", [],
                  "With 'cameras': one image topic per camera, in the same order, instead of "
                  "/<camera>/<image_suffix>; with use_compressed, '<topic>/compressed' is read."),
    ParameterSpec("max_batch_size", 0,
                  "With 'cameras': most frames per engine call; 0: one per camera with a new "
                  "frame. Cameras waiting longest go first (round-robin).", int_range=(0, 64)),
    ParameterSpec("max_batch_wait_ms", 0.0,
                  "With 'cameras': how long a first frame may wait for the other live cameras' "
                  "frames to share its batch (ms); 0 never waits. A camera that stopped is "
                  "never waited for.", float_range=(0.0, 1000.0)),
)

_CONFIG_CHOICES = {
    "resize": "RESIZE_POLICIES", "backend": "BACKENDS", "precision": "PRECISIONS",
    "output_resolution": "OUTPUT_RESOLUTIONS", "visualization_resolution": "OUTPUT_RESOLUTIONS",
}
_CONFIG_INT_RANGES = {"num_classes": (1, 255), "num_threads": (0, 1024)}
_CONFIG_FLOAT_RANGES = {"overlay_alpha": (0.0, 1.0)}


def config_parameters() -> tuple[ParameterSpec, ...]:
    """One :class:`ParameterSpec` per :class:`SegmenterConfig` field, from its metadata.

    ROS parameter types: ``resolution`` is a string ``"WIDTHxHEIGHT"`` (what a launch argument
    gives), ``drivable_classes`` a string array, optional paths are ``""`` when unset.
    """
    from bisenet_ros import config as config_module  # pure Python, no torch

    defaults = config_module.SegmenterConfig()
    specs = []
    for f in dataclasses.fields(config_module.SegmenterConfig):
        value = getattr(defaults, f.name)
        if f.name == "resolution":
            value = "x".join(str(v) for v in value)
        elif isinstance(value, tuple):
            value = [str(v) for v in value]
        elif value is None:
            value = ""
        choices = tuple(getattr(config_module, _CONFIG_CHOICES[f.name])) if (
            f.name in _CONFIG_CHOICES) else ()
        specs.append(ParameterSpec(f.name, value, f.metadata["help"], choices=choices,
                                   int_range=_CONFIG_INT_RANGES.get(f.name),
                                   float_range=_CONFIG_FLOAT_RANGES.get(f.name)))
    return tuple(specs)


def all_parameters() -> tuple[ParameterSpec, ...]:
    """Every parameter the node declares: segmenter options, node options, then the grid's."""
    return config_parameters() + NODE_PARAMETERS + GRID_PARAMETERS


@dataclass(frozen=True)
class NodeOptions:
    """Validated node-only options (see :data:`NODE_PARAMETERS`)."""

    image_topic: str = "image"
    use_compressed: bool = False
    compressed_topic: str = ""
    qos: str = "sensor_data"
    qos_depth: int = 1
    max_frame_age: float = 0.5
    publish_confidence: bool = False
    confidence_encoding: str = "32FC1"
    color_mask_encoding: str = "bgr8"
    diagnostics_period: float = 1.0
    visualization_rate: float = 10.0
    jpeg_quality: int = 80
    cameras: tuple[str, ...] = ()
    image_suffix: str = "image_raw"
    image_topics: tuple[str, ...] = ()
    max_batch_size: int = 0
    max_batch_wait_ms: float = 0.0

    @property
    def input_topic(self) -> str:
        if not self.use_compressed:
            return self.image_topic
        return self.compressed_topic or self.image_topic.rstrip("/") + "/compressed"


def _check(spec: ParameterSpec, value: Any) -> None:
    if spec.choices and value not in spec.choices:
        raise ValueError(f"parameter {spec.name}={value!r}: expected {spec.constraints}")
    for bounds in (spec.int_range, spec.float_range):
        if bounds and not (bounds[0] <= value <= bounds[1]):
            raise ValueError(f"parameter {spec.name}={value!r}: expected {spec.constraints}")


def node_options_from_parameters(values: Mapping[str, Any]) -> NodeOptions:
    """Validate the node-only parameter values (a mapping name -> value).

    Raises:
        ValueError: naming the parameter, the bad value and what is expected.
    """
    kwargs = {}
    for spec in NODE_PARAMETERS:
        value = values.get(spec.name, spec.default)
        if isinstance(spec.default, list) and not spec.default:
            value = tuple(value or ())  # an unset string array reads as None (see ParameterSpec)
        _check(spec, value)
        kwargs[spec.name] = value
    rate = kwargs["visualization_rate"]
    if not (rate > 0 and math.isfinite(rate)):
        raise ValueError(f"parameter visualization_rate={rate!r}: expected a rate in Hz > 0 "
                         "(e.g. 10.0); to stop a visualization topic, do not subscribe to it")
    if not str(kwargs["image_topic"]).strip():
        raise ValueError("parameter image_topic is empty: name the camera topic, e.g. "
                         "'/camera/image_raw' (or remap 'image')")
    return NodeOptions(**kwargs)


def config_from_parameters(values: Mapping[str, Any], *, publish_confidence: bool = False) -> Any:
    """The validated :class:`SegmenterConfig` from ROS parameter values.

    Args:
        values: parameter name -> value; names that are not config fields are ignored.
        publish_confidence: the node option; turns the engine's ``confidence`` on.

    Raises:
        ValueError: from :meth:`SegmenterConfig.validate`, naming the option and the fix.
    """
    from bisenet_ros.config import SegmenterConfig, non_default_options

    specs = {spec.name: spec for spec in config_parameters()}
    options = {}
    for name, spec in specs.items():
        value = values.get(name, spec.default)
        _check(spec, value)
        options[name] = value
    if publish_confidence:
        options["confidence"] = True
    # rclpy cannot tell a parameter file's or the launch file's default from a value the user
    # set: a value equal to the default is a default, and a weights file describing itself wins.
    return SegmenterConfig.from_dict(options, explicit=non_default_options(options))


# ---------------------------------------------------------------------------------------------
# The bird's-eye drivable grid (~/drivable_grid, see bisenet_ros.bev and docs/node.md).
# ---------------------------------------------------------------------------------------------

_METRES = (-10000.0, 10000.0)

#: Parameters of the drivable grid (keep in sync with ``bisenet_ros.config._NODE_ONLY_KEYS``).
GRID_PARAMETERS: tuple[ParameterSpec, ...] = (
    ParameterSpec("camera_info_topic", "",
                  "sensor_msgs/CameraInfo topic of the camera; empty: 'camera_info' beside the "
                  "image subscription's resolved (remapped) name, as image_transport names it "
                  "(an explicit remap of 'camera_info' works too)."),
    ParameterSpec("rectified_input", False,
                  "The images are rectified (image_rect): project with CameraInfo P, no "
                  "distortion. False: raw images, K and D."),
    ParameterSpec("grid_frame", "base_link",
                  "Frame of ~/drivable_grid (x forward, y left, z up); the camera pose is looked "
                  "up in tf from the image's frame_id to this frame."),
    ParameterSpec("grid_resolution", 0.1, "Cell size of ~/drivable_grid, metres.",
                  float_range=(0.01, 10.0)),
    ParameterSpec("grid_x_min", 0.0, "Rear edge of the grid in grid_frame (x of its origin), m.",
                  float_range=_METRES),
    ParameterSpec("grid_x_max", 40.0, "Front edge of the grid in grid_frame, metres.",
                  float_range=_METRES),
    ParameterSpec("grid_y_min", -20.0, "Right edge of the grid in grid_frame (y of its origin), m.",
                  float_range=_METRES),
    ParameterSpec("grid_y_max", 20.0, "Left edge of the grid in grid_frame, metres.",
                  float_range=_METRES),
    ParameterSpec("grid_max_range", 30.0,
                  "Cells farther than this from the point below the camera are unknown (-1), m.",
                  float_range=(0.1, 10000.0)),
    ParameterSpec("grid_ground_height", 0.0, "Height of the ground plane in grid_frame, metres.",
                  float_range=(-100.0, 100.0)),
    ParameterSpec("use_static_camera_pose", False,
                  "When tf has no transform from the image frame to grid_frame, use "
                  "static_camera_pose instead of publishing no grid."),
    ParameterSpec("static_camera_pose", [0.0, 0.0, 1.5, 0.0, 0.0, 0.0],
                  "Fallback camera mount in grid_frame: [x, y, z, roll, pitch, yaw] (metres, "
                  "radians; pitch > 0 looks down) of the camera body (x forward, y left, z up); "
                  "the optical frame is derived from it as REP-103 defines."),
    ParameterSpec("per_camera_grids", False,
                  "With 'cameras': also publish each camera's own grid on "
                  "/<camera>/segmentation/drivable_grid (~/drivable_grid fuses them all)."),
)


@dataclass(frozen=True)
class GridOptions:
    """Validated grid parameters (see :data:`GRID_PARAMETERS`).

    Attributes:
        grid: The :class:`bisenet_ros.bev.GridSpec`.
        camera_info_topic: The ``camera_info_topic`` parameter ("": beside the image topic,
            see :func:`choose_camera_info_topic`).
        rectified_input: Project with P (rectified images).
        static_pose: The fallback :class:`bisenet_ros.bev.Pose` of the optical frame, or None.
        per_camera_grids: With several cameras, publish each camera's grid too.
    """

    grid: Any
    camera_info_topic: str
    rectified_input: bool
    static_pose: Any
    per_camera_grids: bool = False


def camera_info_topic(image_topic: str, *, compressed: bool = False) -> str:
    """The CameraInfo topic beside ``image_topic``, by image_transport's rule
    (``getCameraInfoTopic``): the last token of the image topic replaced by ``camera_info``.

    Args:
        image_topic: The image topic, best fully resolved (after namespaces and remapping), e.g.
            ``/cam/image_raw`` -> ``/cam/camera_info``.
        compressed: ``image_topic`` is a CompressedImage topic: a trailing transport token
            (``/cam/image_raw/compressed``) is dropped first, as image_transport names its
            transports below the base topic.
    """
    topic = image_topic.rstrip("/")
    if compressed and topic.endswith("/compressed"):
        topic = topic[: -len("/compressed")]
    head, _, _ = topic.rpartition("/")
    return f"{head}/camera_info" if head or topic.startswith("/") else "camera_info"


def choose_camera_info_topic(image_topic: str, *, compressed: bool = False, parameter: str = "",
                             remapped: str | None = None) -> tuple[str, str]:
    """The CameraInfo topic the node subscribes to, and why (for the start log).

    Precedence: the ``camera_info_topic`` parameter; then an explicit remap of the node's
    ``camera_info`` name (``-r camera_info:=/cam/camera_info``); otherwise the topic beside the
    image subscription's resolved name (:func:`camera_info_topic`), so remapping or setting only
    the image topic is enough, as with image_transport.

    Args:
        image_topic: The image subscription's fully resolved name.
        compressed: The subscription is a CompressedImage one.
        parameter: The ``camera_info_topic`` parameter ("" when unset).
        remapped: Where a remap rule sends ``camera_info``, or None when no rule does.

    Returns:
        ``(topic, reason)``.
    """
    if parameter.strip():
        return parameter.strip(), "camera_info_topic parameter"
    if remapped:
        return remapped, "remapped camera_info"
    return camera_info_topic(image_topic, compressed=compressed), f"beside {image_topic}"


#: The grid extent parameters and the :class:`bisenet_ros.bev.GridSpec` field each sets.
GRID_EXTENT_PARAMETERS = {"grid_x_min": "x_min", "grid_x_max": "x_max", "grid_y_min": "y_min",
                          "grid_y_max": "y_max"}


def grid_options_from_parameters(values: Mapping[str, Any], *, cameras: int = 1) -> GridOptions:
    """Validate the grid parameters.

    Args:
        values: parameter name -> value (missing names take their defaults).
        cameras: How many cameras the grid fuses. With several, each extent parameter
            (:data:`GRID_EXTENT_PARAMETERS`) missing or left at its single-camera default takes
            the surround extent's value instead (:func:`bisenet_ros.bev.surround_grid`: x and y
            from -grid_max_range to +grid_max_range around grid_frame), so a rear camera is in
            the grid; one camera keeps today's defaults.

    Raises:
        ValueError: naming the parameter and what is expected (``BevError`` is a ValueError).
    """
    from bisenet_ros import bev

    merged = {}
    for spec in GRID_PARAMETERS:
        value = values.get(spec.name, spec.default)
        _check(spec, value)
        merged[spec.name] = value
    grid = bev.GridSpec(
        frame_id=str(merged["grid_frame"]), resolution=float(merged["grid_resolution"]),
        x_min=float(merged["grid_x_min"]), x_max=float(merged["grid_x_max"]),
        y_min=float(merged["grid_y_min"]), y_max=float(merged["grid_y_max"]),
        max_range=float(merged["grid_max_range"]),
        ground_height=float(merged["grid_ground_height"]))
    defaults = {spec.name: spec.default for spec in GRID_PARAMETERS}
    unset = [field for name, field in GRID_EXTENT_PARAMETERS.items()
             if float(merged[name]) == float(defaults[name])]
    if cameras > 1 and unset:
        surround = bev.surround_grid(grid)
        grid = dataclasses.replace(grid, **{field: getattr(surround, field) for field in unset})
    static_pose = None
    if merged["use_static_camera_pose"] and cameras > 1:
        raise ValueError("parameter use_static_camera_pose=true with several cameras: one "
                         "static_camera_pose cannot place them all; publish each camera's mount "
                         "on /tf_static (robot_state_publisher or static_transform_publisher)")
    if merged["use_static_camera_pose"]:
        mount = [float(v) for v in merged["static_camera_pose"]]
        if len(mount) != 6:
            raise ValueError(f"parameter static_camera_pose={mount}: expected [x, y, z, roll, "
                             "pitch, yaw] (6 numbers, metres and radians)")
        static_pose = bev.Pose.from_mount(*mount)
    return GridOptions(grid, str(merged["camera_info_topic"]).strip(),
                       bool(merged["rectified_input"]), static_pose,
                       bool(merged["per_camera_grids"]))
