"""The replay pipeline: read + decode, inference, encode + write, overlapped in three threads.

::

    reader thread            main thread                      writer thread
    bag -> deserialize ->    frames of the cameras ->         outputs fields -> serialize -> output bag
    codec.decode      [q_in] FrameBatcher (the scheduler) ->  metrics, ground truth, samples, grid,
                             engine.segment_batch   [q_out]   progress

:class:`_Run` holds what the threads share, grouped the same way. The queues are bounded, so
memory stays flat on any bag length, and decoding/writing run while the engine works on the
next batch (the engine releases the GIL in torch/OpenCV). Inference runs on the main thread so
that a signal handler can run between batches. A single-camera replay runs batches of one frame;
with several cameras (``--cameras``) a batch holds the waiting frame of each camera
(:class:`FrameBatcher`), and each camera's outputs go to its own topics.

Nothing is lost silently: undecodable messages are counted with their reason; a damaged input
bag is read as far as possible; SIGINT/SIGTERM stop reading, every frame already inferred is
written, and the output bag is closed properly (the ``rosbags`` writer writes its index and
``metadata.yaml`` only on close).
"""
from __future__ import annotations

import contextlib
import dataclasses
import queue
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Protocol, Sequence, TextIO

import numpy as np

from bisenet_ros import codec, outputs as node_outputs
from bisenet_ros.fileio import NewOutputs
from bisenet_ros.inference.frames import sample_indices
from bisenet_ros.inference.segmenter import engine_provenance
from bisenet_ros.labels import class_indices
from bisenet_ros.replay import metrics as M
from bisenet_ros.replay.bag import BagError, InputBag, TopicInfo
from bisenet_ros.replay.cameras import (
    CameraResult, FrameBatcher, labels_camera, resolve_cameras,
)
from bisenet_ros.replay.grid import GRID_OUTPUT
from bisenet_ros.replay.groundtruth import FolderLabels, StampMatcher
from bisenet_ros.replay.messages import (
    COMPRESSED_IMAGE, IMAGE, deserialize, make_image, make_label_info, stamp_to_ns,
    typestore,
)
from bisenet_ros.replay.progress import Progress
from bisenet_ros.runtime import UserError
from bisenet_ros.streams import segment_frames
from bisenet_ros.replay.writer import DEFAULT_NODE_NAME, OutputBag, prepare_output_path

# Exit statuses of a replay.
EXIT_OK = 0
EXIT_FAILED = 1  # damaged input bag or a fatal error: the output holds what could be processed
EXIT_USAGE = 2
EXIT_SIGNAL_BASE = 128  # + signal number, as a shell reports a process ended by that signal

DEFAULT_OUTPUTS = ("mask", "color_mask", "overlay", "drivable_mask")


class OutputError(RuntimeError, UserError):
    """The output bag cannot be created (permissions, disk, path)."""


class Engine(Protocol):
    """What the replay needs from :class:`bisenet_ros.inference.Segmenter` (the test seam)."""

    class_names: Sequence[str]

    def __call__(self, frame: np.ndarray, color_order: str = "bgr",
                 outputs: set[str] | None = None) -> Any: ...

    # Optional, and used when present: ``segment_batch(frames, color_orders, outputs)`` -> one
    # result per frame, in order (Segmenter runs them as one batch; see
    # :func:`bisenet_ros.streams.segment_frames`, which the node uses too).


@dataclasses.dataclass
class ReplayOptions:
    """Everything about a replay except the engine (whose options live in SegmenterConfig).

    Attributes:
        input: Input bag (directory or .mcap/.db3 file).
        output: Output bag directory to create (None: write no bag, evaluate only).
        image_topic: Camera topic (None: the bag's only image topic).
        cameras: Camera names of a multi-camera replay: topics ``/<C>/image_raw`` (or
            ``/<C>/image_raw/compressed``), outputs ``<namespace>/<C>/<node_name>/<output>``
            (:mod:`bisenet_ros.replay.cameras`).
        image_topics: The camera topics of a multi-camera replay, instead of ``cameras`` (each
            camera named after its topic's namespace).
        storage: Output storage, ``"mcap"`` or ``"sqlite3"``.
        namespace: Namespace of the simulated node.
        node_name: Name of the simulated node (its topics are ``<ns>/<node_name>/<output>``).
        outputs: Image outputs to write; ``mask`` is always written.
        color_encoding: ``bgr8`` or ``rgb8`` for color_mask and overlay (node: color_mask_encoding).
        confidence_encoding: ``32FC1`` or ``mono8``.
        copy_topics: Input topics copied to the output unchanged (``["*"]``: all topics).
        labels_topic: Ground truth topic (mono8 trainId masks).
        labels_topics: Several cameras: more ground-truth topics, each for the camera whose
            namespace holds it (``/front/labels`` -> ``front``).
        labels_camera: The camera ``labels_topic`` / ``labels_dir`` belong to in a multi-camera
            replay (None: the camera whose namespace holds the labels topic, or the only one).
        labels_dir: Ground truth folder (Cityscapes-style).
        labels_match: ``auto``, ``timestamp`` or ``order`` for ``labels_dir``.
        label_tolerance_ms: Largest stamp difference for timestamp matching of ``labels_dir``.
        report_dir: Where the report goes (None: no report).
        overwrite: Replace an existing output bag / report.
        max_frames: Stop after this many image messages (None: all).
        progress: Show the progress bar (None: when stderr is a terminal).
        queue_size: Bound of each inter-thread queue (frames).
        samples: Number of sample overlays kept for the report.
        drivable_ids: Class ids counted as drivable (None: from the engine config).
        grid: The bird's-eye grid (:class:`bisenet_ros.bev.GridSpec`; None: the node's default).
        write_grid: Write ``drivable_grid`` when a camera model and pose are found
            (:mod:`bisenet_ros.replay.grid`).
        camera_info_yaml: A ``camera_calibration`` YAML file (wins over the bag's camera_info).
        camera_pose: ``(x, y, z, roll, pitch, yaw)`` of the camera body in the grid frame
            (wins over the bag's tf).
        rectified_input: The images are rectified: project with CameraInfo P.
        grid_max_age_ms: Several cameras: a camera's latest frame older than this before a
            batch's newest frame is left out of the fused grid (a camera that stopped).
    """

    input: Path
    output: Path | None
    image_topic: str | None = None
    cameras: tuple[str, ...] = ()
    image_topics: tuple[str, ...] = ()
    storage: str = "mcap"
    namespace: str = ""
    node_name: str = DEFAULT_NODE_NAME
    outputs: tuple[str, ...] = DEFAULT_OUTPUTS
    color_encoding: str = "bgr8"
    confidence_encoding: str = "32FC1"
    copy_topics: tuple[str, ...] = ()
    labels_topic: str | None = None
    labels_topics: tuple[str, ...] = ()
    labels_camera: str | None = None
    labels_dir: Path | None = None
    labels_match: str = "auto"
    label_tolerance_ms: float = 1.0
    report_dir: Path | None = None
    overwrite: bool = False
    max_frames: int | None = None
    progress: bool | None = None
    queue_size: int = 4
    samples: int = 6
    drivable_ids: tuple[int, ...] | None = None
    grid: Any = None
    write_grid: bool = True
    camera_info_yaml: Path | None = None
    camera_pose: tuple[float, ...] | None = None
    rectified_input: bool = False
    grid_max_age_ms: float = 500.0

    @property
    def ground_truth_topics(self) -> tuple[str, ...]:
        """Every ground-truth topic (``labels_topic`` first)."""
        return ((self.labels_topic,) if self.labels_topic else ()) + tuple(self.labels_topics)

    @property
    def multi_camera(self) -> bool:
        """Cameras named or several topics given: per-camera outputs, figures and a fused grid."""
        return bool(self.cameras or self.image_topics)


@dataclasses.dataclass
class FrameRecord:
    """Per-frame values kept for the report."""

    index: int  # position in the image topic (corrupt messages included)
    stamp_ns: int
    bag_ns: int
    timings: dict[str, float]
    shares: np.ndarray
    drivable_fraction: float
    change_fraction: float | None
    camera: str = ""  # "" in a single-camera replay
    batch_size: int = 1  # frames in the engine batch it ran in (engine_call is the batch's time)


@dataclasses.dataclass
class ReplayResult:
    """What a replay did; :func:`bisenet_ros.replay.report.write_report` renders it."""

    options: ReplayOptions
    image_topic: TopicInfo | None = None  # single-camera replay (see cameras)
    cameras: list[CameraResult] = dataclasses.field(default_factory=list)  # each camera's share
    input_storage: str = ""
    class_names: list[str] = dataclasses.field(default_factory=list)
    drivable_ids: list[int] = dataclasses.field(default_factory=list)
    config: dict[str, Any] = dataclasses.field(default_factory=dict)
    engine: dict[str, Any] = dataclasses.field(default_factory=dict)  # what actually ran
    frames_read: int = 0
    unnormalized_stamps: int = 0  # image headers with nanosec outside 0..1e9-1, copied unchanged
    frames: list[FrameRecord] = dataclasses.field(default_factory=list)
    corrupt: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    corrupt_labels: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    damage: list[str] = dataclasses.field(default_factory=list)
    warnings: list[str] = dataclasses.field(default_factory=list)
    interrupted: str | None = None
    fatal: str | None = None
    output_counts: dict[str, int] = dataclasses.field(default_factory=dict)
    output_closed: bool = False
    wall_s: float = 0.0
    confusion: M.ConfusionMatrix | None = None
    unmatched_predictions: int = 0
    unmatched_labels: int = 0
    samples: list[tuple[int, bytes]] = dataclasses.field(default_factory=list)  # (index, JPEG)
    palette: np.ndarray | None = None  # N x 3 RGB, for the report's plots
    hard_stop: bool = False  # a second signal: the caller skips the report
    grid: Any = None  # bisenet_ros.replay.grid.GridStage (fused: FusedGridStage) when written

    @property
    def frames_processed(self) -> int:
        return len(self.frames)

    @property
    def messages_in_topics(self) -> int:
        """Messages in the camera topics (all cameras)."""
        return sum(camera.image_topic.count for camera in self.cameras)

    def camera_frames(self, camera: str) -> list[FrameRecord]:
        """The processed frames of one camera."""
        return [f for f in self.frames if f.camera == camera]

    @property
    def exit_code(self) -> int:
        if self.interrupted:
            return EXIT_SIGNAL_BASE + int(getattr(signal, self.interrupted, signal.SIGINT))
        if self.fatal or self.damage or not self.output_closed:
            return EXIT_FAILED
        if self.frames_read and not self.frames:
            return EXIT_FAILED  # every frame undecodable: a wrong topic or encoding, not a blip
        return EXIT_OK

    def throughput_fps(self) -> float | None:
        return self.frames_processed / self.wall_s if self.wall_s > 0 and self.frames else None

    def bag_fps(self) -> float | None:
        """Camera messages per second of the bag (all cameras together)."""
        return M.frame_rate([t for camera in self.cameras for t in camera.bag_times])

    def real_time_factor(self) -> float | None:
        """Replay speed over the bag's own frame rate (> 1: faster than the camera)."""
        fps, bag = self.throughput_fps(), self.bag_fps()
        return fps / bag if fps and bag else None


# Queue items ---------------------------------------------------------------------------------
@dataclasses.dataclass
class _Frame:
    index: int
    bag_ns: int
    stamp_ns: int
    header: Any  # the input message's std_msgs/Header, copied onto every output as the node does
    image: np.ndarray
    color_order: str
    decode_ms: float
    camera: str = ""

    @property
    def frame_id(self) -> str:
        return str(self.header.frame_id)


@dataclasses.dataclass
class _Label:
    index: int
    stamp_ns: int
    mask: np.ndarray
    camera: str = ""


@dataclasses.dataclass
class _Copy:
    topic: str
    bag_ns: int
    data: Any


@dataclasses.dataclass
class _Done:
    frame: _Frame
    result: Any
    timings: dict[str, float]
    batch_size: int = 1


@dataclasses.dataclass
class _Batch:
    """The frames of one engine batch (one per camera at most), for the writer."""

    done: list[_Done]


_END = object()

# on_ground_truth(engine result, ground-truth trainId mask) of :func:`replay`.
GroundTruthHook = Callable[[Any, np.ndarray], None]


class _Stop:
    """Cooperative stop flag with the reason (the signal name or a fatal error)."""

    def __init__(self) -> None:
        self.event = threading.Event()
        self.signal_name: str | None = None
        self.hard = False
        self.finishing = False  # the output bag is being closed: never interrupt that

    def is_set(self) -> bool:
        return self.event.is_set()


@dataclasses.dataclass
class _Run:
    """One run of the pipeline: what its three threads share, grouped as the module diagram
    reads from left to right (reader, main, writer), then what all of them use.
    """

    # reader thread: bag -> deserialize -> codec.decode -> [q_in]
    bag: InputBag
    cameras: dict[str, CameraResult]  # by name; one named "" in a single-camera replay
    labels: dict[str, str]  # ground-truth topic -> its camera
    folder_camera: str | None  # the camera the ground-truth folder belongs to
    copy: list[str]  # input topics copied to the output unchanged
    q_in: "queue.Queue[Any]"
    # main thread: frames -> FrameBatcher (the scheduler) -> engine.segment_batch -> [q_out]
    engine: Engine
    engine_outputs: set[str]  # what the engine computes for the topics written
    batches: FrameBatcher  # frames of the cameras -> engine batches (the shared scheduler)
    q_out: "queue.Queue[Any]"
    # writer thread: outputs fields -> serialize -> output bag; metrics, ground truth, samples
    topics: list[str]  # image outputs written, "mask" first
    folder: FolderLabels | None
    on_ground_truth: GroundTruthHook | None
    progress: Progress
    opened: threading.Event  # set once the writer opened the output bag (or failed to)
    writer_errors: list[BaseException]
    # shared
    options: ReplayOptions
    result: ReplayResult
    stop: _Stop


def resolve_drivable_ids(entries: Sequence[Any], class_names: Sequence[str]) -> list[int]:
    """Class ids for ``drivable_classes`` entries (names or ids), by the engine's rule
    (:func:`bisenet_ros.labels.class_index`: case-insensitive names, closest name on a typo)."""
    return class_indices(entries, class_names)


def replay(options: ReplayOptions, engine: Engine, *, config: Any = None,
           stream: TextIO | None = None, stop: _Stop | None = None,
           install_signal_handlers: bool = True, bag: InputBag | None = None,
           on_ground_truth: GroundTruthHook | None = None) -> ReplayResult:
    """Replay ``options.input`` through ``engine`` and write ``options.output``.

    Args:
        options: What to read and write.
        engine: A :class:`bisenet_ros.inference.Segmenter` or any object with the same call
            signature and ``class_names`` (tests inject a deterministic fake here).
        config: The engine's :class:`SegmenterConfig` (for drivable classes and the report);
            defaults to ``engine.config`` when present.
        stream: Where progress and messages go (default: stderr).
        stop: A stop flag to share (tests); a fresh one by default.
        install_signal_handlers: Turn SIGINT/SIGTERM into a graceful stop (main thread only).
        bag: The input bag, already opened by :func:`open_input` (the caller closes it); by
            default it is opened (and closed) here.
        on_ground_truth: Called in the writer thread as ``on_ground_truth(result, truth)`` for
            every frame paired with its ground truth (``result``: the engine's result for that
            frame; ``truth``: ``H x W`` uint8 trainIds), e.g. to score a second model's
            prediction that the result carries (``bisenet-ros evaluate --compare``).

    Returns:
        The :class:`ReplayResult`; :attr:`ReplayResult.exit_code` is the process exit status.

    Raises:
        BagError: The input bag or the image topic cannot be used (nothing was written).
        OutputExistsError: The output exists and ``overwrite`` is False.
    """
    stream = stream or sys.stderr
    stop = stop or _Stop()
    config = config if config is not None else getattr(engine, "config", None)
    result = ReplayResult(options=options)
    result.class_names = [str(n) for n in engine.class_names]
    palette = getattr(engine, "palette", None)
    result.palette = None if palette is None else np.asarray(palette, dtype=np.uint8)
    if options.drivable_ids is not None:
        result.drivable_ids = list(options.drivable_ids)
    elif config is not None:
        result.drivable_ids = resolve_drivable_ids(config.drivable_classes, result.class_names)
    if config is not None and hasattr(config, "to_dict"):
        result.config = config.to_dict()
    # Provenance from the engine that was built (an .onnx file overrides the configured variant,
    # size and classes), never from the options it was asked for.
    result.engine = engine_provenance(engine)
    for name in options.outputs:
        if name not in node_outputs.OUTPUT_TOPICS:
            raise ValueError(f"output {name!r}: expected some of {', '.join(node_outputs.OUTPUT_TOPICS)}")
    topics = ["mask"] + [t for t in node_outputs.OUTPUT_TOPICS if t in options.outputs and t != "mask"]
    engine_outputs = node_outputs.engine_outputs_for(topics)
    folder = None
    if options.labels_dir is not None:
        folder = FolderLabels(options.labels_dir, match=options.labels_match,
                              tolerance_ns=int(options.label_tolerance_ms * 1e6))

    owned = bag is None
    if bag is None:
        bag = InputBag(options.input)
        bag.open()
    try:
        cameras, copy, labels, folder_camera = _check_topics(bag, options)
        result.cameras = [CameraResult(name, topic) for name, topic in cameras]
        if not options.multi_camera:
            result.image_topic = cameras[0][1]
        _setup_grid(bag, options, result)
        if options.output is not None:
            prepare_output_path(options.output, overwrite=options.overwrite)
        result.input_storage = bag.storage
        typestore()  # build the (cached) typestore once, before the threads share it
        total = sum(_expected(camera.image_topic, options) for camera in result.cameras)
        show = options.progress if options.progress is not None else stream.isatty()
        run = _Run(bag=bag, cameras={camera.name: camera for camera in result.cameras},
                   labels=labels, folder_camera=folder_camera, copy=copy,
                   q_in=queue.Queue(maxsize=options.queue_size), engine=engine,
                   engine_outputs=engine_outputs,
                   batches=FrameBatcher([name for name, _ in cameras], depth=options.queue_size),
                   q_out=queue.Queue(maxsize=options.queue_size),
                   topics=topics, folder=folder, on_ground_truth=on_ground_truth,
                   progress=Progress(total, stream=stream, enabled=bool(show)),
                   opened=threading.Event(), writer_errors=[], options=options, result=result,
                   stop=stop)
        with _signals(stop, stream, enabled=install_signal_handlers):
            _run(run)
    finally:
        if owned:
            bag.close()
    result.damage = list(bag.damage) + result.damage
    if result.grid is not None:
        result.warnings.extend(result.grid.warnings())
    if result.unnormalized_stamps:
        result.warnings.append(
            f"{result.unnormalized_stamps} image message(s) carry a header stamp with nanosec outside "
            "0..999999999 (not normalized by their recorder); the outputs copy them unchanged, as the "
            "node does, so consumers can still pair them by exact stamp")
    result.warnings = list(dict.fromkeys(list(bag.warnings) + result.warnings))  # once each
    return result


def pick_image_topic(bag: InputBag, options: ReplayOptions) -> TopicInfo:
    """The camera topic the replay reads: ``options.image_topic``, or the bag's only image topic
    other than the labels topic.

    Raises:
        BagError: The topic is missing, or there is no or more than one image topic to choose.
    """
    return bag.pick_image_topic(options.image_topic, exclude=options.ground_truth_topics)


def camera_topics(bag: InputBag, options: ReplayOptions) -> list[TopicInfo]:
    """The camera topics the replay reads (one, or one per camera of a multi-camera replay).

    Raises:
        BagError: As :func:`open_input`.
    """
    return [topic for _, topic in _check_topics(bag, options)[0]]


def _check_topics(bag: InputBag, options: ReplayOptions
                  ) -> tuple[list[tuple[str, TopicInfo]], list[str], dict[str, str], str | None]:
    """``(cameras as (name, topic), topics to copy, ground-truth topic -> camera, the camera
    of the ground-truth folder)``.

    Raises:
        BagError: A topic is missing or ambiguous, or the cameras or the ground truth's camera
            are given wrongly.
    """
    gt_topics = options.ground_truth_topics
    if len(gt_topics) > 1 and not options.multi_camera:
        raise BagError("several labels topics need several cameras (--cameras); one camera has "
                       "one ground truth")
    if options.multi_camera:
        if options.image_topic:
            raise BagError("give the camera topics either as one image_topic or as several "
                           "image_topics / cameras, not both")
        cameras = resolve_cameras(bag, cameras=options.cameras, image_topics=options.image_topics)
    else:
        cameras = [("", pick_image_topic(bag, options))]
    for topic in gt_topics:
        if topic not in bag.topics:
            raise BagError(f"labels topic {topic!r} is not in {options.input}; "
                           f"topics: {', '.join(bag.topics)}")
    if options.labels_camera is not None and (len(gt_topics) > 1 or not (
            gt_topics or options.labels_dir is not None)):
        raise BagError("--labels-camera names the camera of one ground truth (one --labels-topic "
                       "or --labels-dir); several labels topics go to the cameras whose "
                       "namespace holds them")
    names = [name for name, _ in cameras]

    def owner(topic: str | None) -> str:
        return labels_camera(topic, options.labels_camera, names) if options.multi_camera else ""

    labels = {topic: owner(topic) for topic in gt_topics}
    twice = [c for c in set(labels.values()) if list(labels.values()).count(c) > 1]
    if twice:
        raise BagError(f"camera {twice[0]!r} has several labels topics "
                       f"({', '.join(t for t, c in labels.items() if c == twice[0])}); one each")
    folder_camera = owner(None) if options.labels_dir is not None else None
    copy = list(bag.topics) if "*" in options.copy_topics else list(options.copy_topics)
    missing = [t for t in copy if t not in bag.topics]
    if missing:
        raise BagError(f"--copy-topic {missing[0]!r} is not in {options.input}; "
                       f"topics: {', '.join(bag.topics)}")
    return cameras, copy, labels, folder_camera


def _expected(topic: TopicInfo, options: ReplayOptions) -> int:
    """Messages the replay reads from a camera topic."""
    return topic.count if options.max_frames is None else min(topic.count, options.max_frames)


def _setup_grid(bag: InputBag, options: ReplayOptions, result: ReplayResult) -> None:
    """Find each camera's model and pose in the bag or the options (a warning when none); with
    several cameras, their grids are fused into one."""
    if not options.write_grid:
        return
    from bisenet_ros import bev
    from bisenet_ros.replay.grid import GridStage, load_grid_sources

    grid = options.grid or bev.GridSpec()
    try:  # one pass over the bag for every camera's CameraInfo and the transforms
        sources = load_grid_sources(
            bag, [camera.image_topic.name for camera in result.cameras], grid=grid,
            camera_info_yaml=options.camera_info_yaml, camera_pose=options.camera_pose,
            rectified=options.rectified_input)
    except bev.BevError as err:
        raise ValueError(str(err)) from err
    for camera, (source, problem) in zip(result.cameras, sources):
        if source is None:
            result.warnings.append(f"camera {camera.name}: {problem}" if camera.name
                                   else str(problem))
        else:
            camera.grid = GridStage(source, result.drivable_ids,
                                    resize=str(result.config.get("resize", "stretch")))
    if not options.multi_camera:
        result.grid = result.cameras[0].grid
    elif any(camera.grid is not None for camera in result.cameras):
        from bisenet_ros.replay.grid import FusedGridStage

        result.grid = FusedGridStage(grid, result.cameras, result.drivable_ids,
                                     max_age_ms=options.grid_max_age_ms)


def open_input(options: ReplayOptions) -> InputBag:
    """Open the input bag and check its topics, without an engine (so a wrong topic is
    reported before a model is loaded). Pass the bag on to :func:`replay`; close it after.

    Raises:
        BagError: The bag cannot be opened, or a topic is missing or ambiguous.
    """
    bag = InputBag(options.input)
    bag.open()
    try:
        _check_topics(bag, options)
    except BaseException:
        bag.close()
        raise
    return bag


@contextlib.contextmanager
def _signals(stop: _Stop, stream: TextIO, *, enabled: bool) -> Iterator[None]:
    if not enabled or threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, _frame: Any) -> None:
        name = signal.Signals(signum).name
        if stop.is_set() and stop.signal_name:
            # A second signal: stop waiting for the current frame and skip the report. Never
            # while the output bag is being closed, which would leave it without an index.
            stop.hard = True
            if not stop.finishing:
                raise KeyboardInterrupt
            stream.write(f"\n{name}: still closing the output bag, one moment\n")
            return
        stop.signal_name = name
        stop.event.set()
        stream.write(f"\n{name}: stopping; writing the frames processed so far and closing the "
                     "output bag (send again to skip the report)\n")
        stream.flush()

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def _put(q: "queue.Queue[Any]", item: Any, stop: _Stop) -> bool:
    """Put unless stopping; False when the stop flag ended the wait."""
    while True:
        try:
            q.put(item, timeout=0.1)
            return True
        except queue.Full:
            if stop.is_set():
                return False


def _run(run: _Run) -> None:
    """Start the writer, then the reader, and run the engine on the main thread until the
    reader's end marker or a stop; always hand the writer its end marker and wait for it."""
    writer = threading.Thread(target=_write, name="replay-writer", daemon=True, args=(run,))
    reader = threading.Thread(target=_read, name="replay-reader", daemon=True, args=(run,))
    writer.start()
    run.opened.wait()
    if run.writer_errors:
        writer.join()
        err = run.writer_errors[0]
        raise OutputError(f"cannot create the output bag {run.options.output}: "
                          f"{type(err).__name__}: {err}") from err
    result, stop = run.result, run.stop
    started = time.perf_counter()
    reader.start()
    try:
        while not stop.is_set():
            try:
                item = run.q_in.get(timeout=0.1)
            except queue.Empty:
                continue
            if item is _END:
                # The reader is done: what waits for a batch runs now, camera by camera.
                while len(run.batches) and not stop.is_set():
                    if not _infer(run, run.batches.pop()):
                        break
                break
            if isinstance(item, _Frame):
                run.batches.push(item.camera, item, item.stamp_ns)
                if not _infer_due(run):
                    break
            else:
                run.q_out.put(item)
    except KeyboardInterrupt:
        stop.hard = True
        stop.event.set()
        if stop.signal_name is None:
            stop.signal_name = "SIGINT"
    finally:
        stop.finishing = True
        # Always hand the writer the end marker (it drains everything queued before it), and
        # wait for it: the output bag is only valid once the writer thread has closed it.
        run.q_out.put(_END)
        writer.join()
        result.wall_s = time.perf_counter() - started
        stop.event.set()  # release a reader still blocked on a full queue
        reader.join(timeout=5.0)
        run.progress.finish()
    result.interrupted = stop.signal_name
    result.hard_stop = stop.hard
    # reader and engine both add to it
    result.corrupt.sort(key=lambda c: (c.get("camera", ""), c["index"]))
    if run.writer_errors and result.fatal is None:
        err = run.writer_errors[0]
        result.fatal = f"writing the output bag failed: {type(err).__name__}: {err}"


def _infer_due(run: _Run) -> bool:
    """Run every batch that is due (see :class:`FrameBatcher`); False: a fatal error.

    A camera sends nothing more once each of its messages arrived here or was undecodable, so
    the batches depend on the bag alone, not on how far ahead the reader thread is.
    """
    finished = {c.name for c in run.cameras.values()
                if run.batches.received(c.name) + c.undecodable >= _expected(c.image_topic, run.options)}
    while run.batches.ready(finished):
        if not _infer(run, run.batches.pop()):
            return False
    return True


def _infer(run: _Run, frames: list[_Frame]) -> bool:
    """Run the engine on one batch and queue the results for the writer; False: a fatal error.

    A frame the engine rejects (``ValueError``) is counted and skipped; the node's
    :func:`~bisenet_ros.streams.segment_frames` then runs the batch frame by frame, so the
    other frames still count. Any other error is fatal for the run.
    """
    t0 = time.perf_counter()
    try:
        outs: list[Any] = segment_frames(run.engine, [f.image for f in frames],
                                         [f.color_order for f in frames], run.engine_outputs)
    except Exception as err:  # noqa: BLE001 - the batch call failed, not on a bad frame
        outs = [err] * len(frames)
    call_ms = (time.perf_counter() - t0) * 1e3
    done, fatal = [], None
    for frame, out in zip(frames, outs):
        if isinstance(out, ValueError):  # the engine's "bad frame" error: skip, count, report
            run.result.corrupt.append(_corrupt(frame.camera, frame.index, frame.bag_ns,
                                               f"engine rejected the frame: {out}"))
        elif isinstance(out, Exception):
            fatal = fatal or (frame, out)
        else:
            timings = {"decode": frame.decode_ms}
            # Stages in ms; a batch's size (Segmenter's "batch" entry) is FrameRecord.batch_size.
            timings.update({str(k): float(v)
                            for k, v in (getattr(out, "timings", None) or {}).items()
                            if k != "batch"})
            timings["engine_call"] = call_ms  # every frame of a batch waits for the whole batch
            done.append(_Done(frame, out, timings, len(frames)))
    if done:
        run.q_out.put(_Batch(done))
    if fatal is not None:
        frame, err = fatal
        where = f"frame {frame.index}" + (f" of camera {frame.camera}" if frame.camera else "")
        run.result.fatal = f"inference failed on {where}: {type(err).__name__}: {err}"
        run.stop.event.set()
        return False
    return True


def _corrupt(camera: str, index: int, bag_ns: int, reason: str) -> dict[str, Any]:
    """A skipped message for the report (the camera named only in a multi-camera replay)."""
    entry: dict[str, Any] = {"index": index, "bag_ns": bag_ns, "reason": reason}
    if camera:
        entry["camera"] = camera
    return entry


def _read(run: _Run) -> None:
    """Reader thread: raw messages -> decoded frames, label masks and copied messages."""
    copy, options, result, q_in, stop = run.copy, run.options, run.result, run.q_in, run.stop
    cameras = {camera.image_topic.name: camera for camera in run.cameras.values()}
    wanted = {*cameras, *copy, *run.labels}
    label_index = dict.fromkeys(run.labels, 0)
    try:
        for raw in run.bag.messages(wanted):
            if stop.is_set():
                break
            item: Any = None
            camera = cameras.get(raw.topic)
            if (camera is not None and options.max_frames is not None
                    and camera.frames_read >= options.max_frames):
                if all(c.frames_read >= options.max_frames for c in cameras.values()):
                    break
                continue
            if raw.topic in copy:
                if not _put(q_in, _Copy(raw.topic, raw.timestamp, bytes(raw.data)), stop):
                    break
            if camera is not None:
                item = _decode(raw, camera, result)
                camera.frames_read += 1
            elif raw.topic in run.labels:
                index, owner = label_index[raw.topic], run.labels[raw.topic]
                try:
                    msg = deserialize(raw.data, IMAGE)
                    mask = codec.image_to_array(msg)
                    if mask.ndim != 2 or mask.dtype != np.uint8:
                        raise codec.CodecError(f"labels must be mono8 trainId masks, got {msg.encoding}")
                    item = _Label(index, stamp_to_ns(msg.header.stamp), np.array(mask), owner)
                except Exception as err:  # noqa: BLE001
                    result.corrupt_labels.append(_corrupt(owner, index, raw.timestamp, _reason(err)))
                label_index[raw.topic] += 1
            if item is not None and not _put(q_in, item, stop):
                break
    except Exception as err:  # noqa: BLE001 - InputBag.messages already salvages; belt and braces
        result.damage.append(f"reading stopped: {_reason(err)}")
    finally:
        result.frames_read = sum(camera.frames_read for camera in cameras.values())
        _put(q_in, _END, stop)


def _decode(raw: Any, camera: CameraResult, result: ReplayResult) -> _Frame | None:
    """A camera message as a frame; None when it cannot be decoded (counted with the reason)."""
    index, topic = camera.frames_read, camera.image_topic
    camera.bag_times.append(raw.timestamp)
    t0 = time.perf_counter()
    try:
        msg = deserialize(raw.data, topic.msgtype)
        if topic.msgtype == COMPRESSED_IMAGE:
            image, order = codec.decode_compressed(msg)
        else:
            image, order = codec.decode_image(msg)
        frame = _Frame(index, raw.timestamp, stamp_to_ns(msg.header.stamp), msg.header, image,
                       order, (time.perf_counter() - t0) * 1e3, camera.name)
        if not 0 <= msg.header.stamp.nanosec < 1_000_000_000:
            result.unnormalized_stamps += 1
        return frame
    except Exception as err:  # noqa: BLE001 - a bad message never aborts the run
        result.corrupt.append(_corrupt(camera.name, index, raw.timestamp, _reason(err)))
        camera.undecodable += 1
        return None


def _reason(err: BaseException) -> str:
    return f"{type(err).__name__}: {err}"


def _write(run: _Run) -> None:
    """Writer thread: owns the output bag (sqlite3 connections are thread-bound)."""
    options, result = run.options, run.result
    out: OutputBag | None = None
    if options.output is None:
        # Evaluation only: no bag to open or close, so nothing can be left half-written.
        result.output_closed = True
        run.opened.set()
        _drain(run, _Sink(run, None))
        return
    created = NewOutputs(options.output)  # the bag folder (prepare_output_path: new)
    try:
        out = OutputBag(options.output, storage=options.storage, namespace=options.namespace,
                        node_name=options.node_name)
        grid = [GRID_OUTPUT] if result.grid is not None else []
        if options.multi_camera:  # per camera its images and label_info, one fused grid
            out.open(run.topics + ["label_info"], cameras=list(run.cameras), shared=grid)
        else:
            out.open(run.topics + ["label_info"] + grid)
        copied = []
        for topic in dict.fromkeys(run.copy):  # each once
            if topic in out.counts:
                # e.g. --copy-input on a replay's own output bag: a second connection would mix
                # the old outputs into the new ones on one topic.
                result.warnings.append(f"--copy-topic {topic}: the replay writes this topic itself; "
                                       "not copied")
            elif out.add_copy_topic(run.bag.topics[topic]):
                copied.append(topic)
            else:
                result.warnings.append(f"--copy-topic {topic}: type {run.bag.topics[topic].msgtype} "
                                       "is unknown and the bag has no definition for it; not copied")
        run.copy[:] = copied  # the reader, started once the bag is open, reads only these
    except BaseException as err:  # noqa: BLE001 - reported by the main thread
        run.writer_errors.append(err)
        run.opened.set()  # never leave the main thread waiting (it joins this thread next)
        if out is not None:
            with contextlib.suppress(Exception):
                out.close()
        created.remove()  # a bag that could not be set up is not left behind, empty or partial
        return
    run.opened.set()
    try:
        _drain(run, _Sink(run, out))
    finally:
        try:
            out.close()
            result.output_closed = True
        except Exception as err:  # noqa: BLE001
            run.writer_errors.append(err)
        result.output_counts = dict(out.counts)


def _drain(run: _Run, sink: "_Sink") -> None:
    """Hand every queued item to ``sink`` until the end marker (the writer thread's loop)."""
    failed = False
    try:
        while True:
            item = run.q_out.get()
            if item is _END:
                break
            if failed:
                continue  # keep draining so the main thread never blocks on a full queue
            try:
                if isinstance(item, _Batch):
                    sink.batch(item)
                    run.progress.update(len(run.result.frames))
                elif isinstance(item, _Label):
                    sink.label(item)
                elif isinstance(item, _Copy):
                    sink.copy(item)
            except Exception as err:  # noqa: BLE001 - e.g. disk full: stop the run, keep the bag
                run.writer_errors.append(err)
                failed = True
                run.stop.event.set()
    finally:
        sink.finish()


class _CameraSink:
    """What the writer keeps per camera between its frames."""

    def __init__(self, camera: CameraResult, frames: int, samples: int) -> None:
        self.camera = camera
        self.matcher = StampMatcher(window=32)
        self.previous: np.ndarray | None = None  # the last labels, for the change fraction
        self.label_info_written = False
        self.samples = samples
        self.sample_at = set(sample_indices(frames, samples))
        self.last_overlay: tuple[int, np.ndarray] | None = None


class _Sink:
    """Per-frame work of the writer thread: messages, metrics, ground truth, samples."""

    def __init__(self, run: _Run, out: OutputBag | None) -> None:
        self.out = out
        self.on_ground_truth = run.on_ground_truth
        self.options = options = run.options
        self.topics = run.topics
        self.folder = run.folder
        self.folder_camera = run.folder_camera
        self.result = result = run.result
        self.num_classes = max(len(result.class_names), 1)
        self.cameras: dict[str, _CameraSink] = {}
        # Sample overlays: the run's number, spread over the cameras.
        samples = -(-options.samples // len(run.cameras)) if options.samples > 0 else 0
        for name, camera in run.cameras.items():
            self.cameras[name] = _CameraSink(camera, _expected(camera.image_topic, options), samples)
        sources = {camera: f"topic {topic}" for topic, camera in run.labels.items()}
        if run.folder_camera is not None:
            sources[run.folder_camera] = f"folder {options.labels_dir}"
        for camera, source in sources.items():
            self.cameras[camera].camera.confusion = M.ConfusionMatrix(
                self.num_classes, result.drivable_ids)
            self.cameras[camera].camera.ground_truth = source
        if sources:  # the total over the cameras with ground truth
            result.confusion = M.ConfusionMatrix(self.num_classes, result.drivable_ids)
        self.drivable_lut = np.zeros(256, dtype=bool)
        self.drivable_lut[[i for i in result.drivable_ids if 0 <= i < 256]] = True

    def batch(self, batch: _Batch) -> None:
        """One engine batch: each frame's outputs, then (several cameras) the fused grid."""
        for done in batch.done:
            self.frame(done)
        fused = self.result.grid if self.options.multi_camera else None
        if fused is not None:
            t0 = time.perf_counter()
            msg = fused.fuse([(d.frame.camera, d.frame.stamp_ns, d.frame.frame_id,
                               np.asarray(d.result.labels), d.frame.image.shape)
                              for d in batch.done])
            if msg is not None and self.out is not None:
                self.out.write(GRID_OUTPUT, msg, max(d.frame.bag_ns for d in batch.done))
            ms = (time.perf_counter() - t0) * 1e3
            for done in batch.done:
                done.timings["grid"] = ms

    def frame(self, done: _Done) -> None:
        frame, res = done.frame, done.result
        sink = self.cameras[frame.camera]
        if self.out is not None:
            self._write_messages(sink, frame, res, done.timings)
        labels = np.asarray(res.labels)
        stage = sink.camera.grid
        if stage is not None and not self.options.multi_camera:  # several: fused per batch
            t0 = time.perf_counter()
            grid_msg = stage.frame(frame.stamp_ns, frame.frame_id, labels, frame.image.shape)
            if grid_msg is not None and self.out is not None:
                self.out.write(GRID_OUTPUT, grid_msg, frame.bag_ns)
            done.timings["grid"] = (time.perf_counter() - t0) * 1e3
        drivable = (np.count_nonzero(res.drivable) / max(res.drivable.size, 1)
                    if getattr(res, "drivable", None) is not None
                    else float(self.drivable_lut[labels].mean()))
        self.result.frames.append(FrameRecord(
            frame.index, frame.stamp_ns, frame.bag_ns, done.timings,
            M.class_shares(labels, self.num_classes), float(drivable),
            M.change_fraction(sink.previous, labels), frame.camera, done.batch_size))
        sink.previous = labels
        self._keep_sample(sink, frame, res)
        if sink.camera.confusion is not None:
            # The engine's result travels with its labels only when a hook wants it (it may
            # hold full-size colour images; the matcher keeps up to its window of them).
            prediction = (labels, res if self.on_ground_truth is not None else None)
            if self.folder is not None and frame.camera == self.folder_camera:
                mask = self.folder.load(frame.index, frame.stamp_ns)
                if mask is None:
                    sink.camera.unmatched_predictions += 1
                else:
                    self._evaluate(sink, prediction, mask, frame.stamp_ns)
            else:
                mask = sink.matcher.add_prediction(frame.stamp_ns, prediction)
                if mask is not None:
                    self._evaluate(sink, prediction, mask, frame.stamp_ns)

    def copy(self, item: _Copy) -> None:
        if self.out is not None:  # only topics the output bag declared are read (see _write)
            self.out.write_raw(item.topic, item.data, item.bag_ns)

    def _write_messages(self, sink: _CameraSink, frame: _Frame, res: Any,
                        timings: dict[str, float]) -> None:
        assert self.out is not None
        t0 = time.perf_counter()
        # The input header bit for bit, as the node copies it: consumers pair the outputs with the
        # camera image by exact stamp (message_filters ExactTime), so even a stamp that is not
        # normalized (nanosec >= 1e9, as some recorders write) must come out unchanged.
        header = frame.header
        if not sink.label_info_written:
            # The node publishes the class map once, latched; a recording of it holds one message.
            info = node_outputs.label_info_fields(self.result.class_names)
            self.out.write("label_info", make_label_info(header, info["class_map"], info["threshold"]),
                           frame.bag_ns, frame.camera)
            sink.label_info_written = True
        fields = node_outputs.result_to_image_fields(
            res, frame.color_order, color_encoding=self.options.color_encoding,
            confidence_encoding=self.options.confidence_encoding, topics=self.topics)
        for topic in self.topics:
            if topic in fields:
                self.out.write(topic, make_image(header, fields[topic]), frame.bag_ns, frame.camera)
        timings["write"] = (time.perf_counter() - t0) * 1e3

    def label(self, item: _Label) -> None:
        sink = self.cameras[item.camera]
        if sink.camera.confusion is None:
            return
        pred = sink.matcher.add_label(item.stamp_ns, item.mask)
        if pred is not None:
            self._evaluate(sink, pred, item.mask, item.stamp_ns)

    def _evaluate(self, sink: _CameraSink, prediction: tuple[np.ndarray, Any], truth: np.ndarray,
                  stamp_ns: int) -> None:
        camera = sink.camera
        assert camera.confusion is not None and self.result.confusion is not None
        if camera.grid is not None:  # the bird's-eye IoU: truth grid vs predicted grid
            camera.grid.evaluate(stamp_ns, truth)
        labels, res = prediction
        at_truth = labels_at(labels, truth.shape)
        camera.confusion.update(at_truth, truth)
        self.result.confusion.update(at_truth, truth)
        if self.on_ground_truth is not None:
            self.on_ground_truth(res, truth)

    def _keep_sample(self, sink: _CameraSink, frame: _Frame, res: Any) -> None:
        image = getattr(res, "overlay", None)
        if image is None:
            image = getattr(res, "color", None)
        if image is None:
            return
        bgr = image if frame.color_order == "bgr" else image[:, :, ::-1]
        sink.last_overlay = (frame.index, bgr)
        if frame.index in sink.sample_at:
            sink.camera.samples.append((frame.index, _jpeg(bgr)))

    def finish(self) -> None:
        result = self.result
        for sink in self.cameras.values():
            camera = sink.camera
            sink.matcher.finish()
            camera.unmatched_predictions += sink.matcher.unmatched_predictions
            camera.unmatched_labels += sink.matcher.unmatched_labels
            # An interrupted run may end before the planned sample frames: show its last frame.
            if sink.last_overlay is not None and all(i != sink.last_overlay[0]
                                                     for i, _ in camera.samples):
                if len(camera.samples) < max(sink.samples, 1):
                    camera.samples.append((sink.last_overlay[0], _jpeg(sink.last_overlay[1])))
        result.unmatched_predictions = sum(c.unmatched_predictions for c in result.cameras)
        result.unmatched_labels = sum(c.unmatched_labels for c in result.cameras)
        result.samples = [sample for c in result.cameras for sample in c.samples]


def labels_at(labels: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """``labels`` (H x W class ids) at the ground truth's ``shape`` (nearest neighbour), e.g.
    when the engine publishes at network resolution (``output_resolution=network``)."""
    if labels.shape == tuple(shape[:2]):
        return labels
    import cv2

    return cv2.resize(labels, (shape[1], shape[0]), interpolation=cv2.INTER_NEAREST)


def _jpeg(bgr: np.ndarray, max_width: int = 640) -> bytes:
    import cv2

    height, width = bgr.shape[:2]
    if width > max_width:
        bgr = cv2.resize(bgr, (max_width, max(1, round(height * max_width / width))),
                         interpolation=cv2.INTER_AREA)
    ok, buf = cv2.imencode(".jpg", np.ascontiguousarray(bgr), [cv2.IMWRITE_JPEG_QUALITY, 85])
    return buf.tobytes() if ok else b""

