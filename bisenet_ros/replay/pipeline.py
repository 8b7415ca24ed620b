"""The replay pipeline: read + decode, inference, encode + write, overlapped in three threads.

::

    reader thread            main thread               writer thread
    bag -> deserialize ->    engine(frame) ->          outputs fields -> serialize -> output bag
    codec.decode      [q_in] (the Segmenter)   [q_out] metrics, ground truth, samples, progress

The queues are bounded, so memory stays flat on any bag length, and decoding/writing run while
the engine works on the next frame (the engine releases the GIL in torch/OpenCV). Inference
runs on the main thread so that a signal handler can run between frames.

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
from bisenet_ros.inference.frames import sample_indices
from bisenet_ros.inference.segmenter import engine_provenance
from bisenet_ros.labels import class_indices
from bisenet_ros.replay import metrics as M
from bisenet_ros.replay.bag import BagError, InputBag, TopicInfo
from bisenet_ros.replay.groundtruth import FolderLabels, StampMatcher
from bisenet_ros.replay.messages import (
    COMPRESSED_IMAGE, IMAGE, deserialize, make_image, make_label_info, stamp_to_ns,
    typestore,
)
from bisenet_ros.replay.progress import Progress
from bisenet_ros.runtime import UserError
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


@dataclasses.dataclass
class ReplayOptions:
    """Everything about a replay except the engine (whose options live in SegmenterConfig).

    Attributes:
        input: Input bag (directory or .mcap/.db3 file).
        output: Output bag directory to create (None: write no bag, evaluate only).
        image_topic: Camera topic (None: the bag's only image topic).
        storage: Output storage, ``"mcap"`` or ``"sqlite3"``.
        namespace: Namespace of the simulated node.
        node_name: Name of the simulated node (its topics are ``<ns>/<node_name>/<output>``).
        outputs: Image outputs to write; ``mask`` is always written.
        color_encoding: ``bgr8`` or ``rgb8`` for color_mask and overlay (node: color_mask_encoding).
        confidence_encoding: ``32FC1`` or ``mono8``.
        copy_topics: Input topics copied to the output unchanged (``["*"]``: all topics).
        labels_topic: Ground truth topic (mono8 trainId masks).
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
    """

    input: Path
    output: Path | None
    image_topic: str | None = None
    storage: str = "mcap"
    namespace: str = ""
    node_name: str = DEFAULT_NODE_NAME
    outputs: tuple[str, ...] = DEFAULT_OUTPUTS
    color_encoding: str = "bgr8"
    confidence_encoding: str = "32FC1"
    copy_topics: tuple[str, ...] = ()
    labels_topic: str | None = None
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


@dataclasses.dataclass
class ReplayResult:
    """What a replay did; :func:`bisenet_ros.replay.report.write_report` renders it."""

    options: ReplayOptions
    image_topic: TopicInfo | None = None
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
    image_bag_times: list[int] = dataclasses.field(default_factory=list)
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
    grid: Any = None  # bisenet_ros.replay.grid.GridStage when a drivable grid is written

    @property
    def frames_processed(self) -> int:
        return len(self.frames)

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
        return M.frame_rate(self.image_bag_times)

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

    @property
    def frame_id(self) -> str:
        return str(self.header.frame_id)


@dataclasses.dataclass
class _Label:
    index: int
    stamp_ns: int
    mask: np.ndarray


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
        image_topic, copy = _check_topics(bag, options)
        _setup_grid(bag, image_topic, options, result)
        if options.output is not None:
            prepare_output_path(options.output, overwrite=options.overwrite)
        result.image_topic = image_topic
        result.input_storage = bag.storage
        typestore()  # build the (cached) typestore once, before the threads share it
        with _signals(stop, stream, enabled=install_signal_handlers):
            _run(bag, image_topic, copy, topics, engine_outputs, folder, options, engine, result,
                 stop, stream, on_ground_truth)
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
    return bag.pick_image_topic(options.image_topic,
                                exclude=[options.labels_topic] if options.labels_topic else [])


def _check_topics(bag: InputBag, options: ReplayOptions) -> tuple[TopicInfo, list[str]]:
    image_topic = pick_image_topic(bag, options)
    if options.labels_topic and options.labels_topic not in bag.topics:
        raise BagError(f"labels topic {options.labels_topic!r} is not in {options.input}; "
                       f"topics: {', '.join(bag.topics)}")
    copy = list(bag.topics) if "*" in options.copy_topics else list(options.copy_topics)
    missing = [t for t in copy if t not in bag.topics]
    if missing:
        raise BagError(f"--copy-topic {missing[0]!r} is not in {options.input}; "
                       f"topics: {', '.join(bag.topics)}")
    return image_topic, copy


def _setup_grid(bag: InputBag, image_topic: TopicInfo, options: ReplayOptions,
                result: ReplayResult) -> None:
    """Find the grid's camera model and pose in the bag or the options (a warning when none)."""
    if not options.write_grid:
        return
    from bisenet_ros import bev
    from bisenet_ros.replay.grid import GridStage, load_grid_source

    try:
        source, problem = load_grid_source(
            bag, image_topic.name, grid=options.grid or bev.GridSpec(),
            camera_info_yaml=options.camera_info_yaml, camera_pose=options.camera_pose,
            rectified=options.rectified_input)
    except bev.BevError as err:
        raise ValueError(str(err)) from err
    if source is None:
        result.warnings.append(str(problem))
    else:
        result.grid = GridStage(source, result.drivable_ids,
                                resize=str(result.config.get("resize", "stretch")))


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


def _run(bag: InputBag, image_topic: TopicInfo, copy: list[str], topics: list[str],
         engine_outputs: set[str], folder: FolderLabels | None, options: ReplayOptions,
         engine: Engine, result: ReplayResult, stop: _Stop, stream: TextIO,
         on_ground_truth: GroundTruthHook | None = None) -> None:
    q_in: "queue.Queue[Any]" = queue.Queue(maxsize=options.queue_size)
    q_out: "queue.Queue[Any]" = queue.Queue(maxsize=options.queue_size)
    total = image_topic.count
    if options.max_frames is not None:
        total = min(total, options.max_frames)
    show = options.progress if options.progress is not None else stream.isatty()
    progress = Progress(total, stream=stream, enabled=bool(show))
    opened = threading.Event()
    writer_error: list[BaseException] = []

    reader = threading.Thread(target=_read, name="replay-reader", daemon=True,
                              args=(bag, image_topic, copy, options, q_in, result, stop))
    writer = threading.Thread(
        target=_write, name="replay-writer", daemon=True,
        args=(q_out, options, topics, copy, bag, folder, result, progress, stop, opened,
              writer_error, on_ground_truth))
    writer.start()
    opened.wait()
    if writer_error:
        writer.join()
        err = writer_error[0]
        raise OutputError(f"cannot create the output bag {options.output}: "
                          f"{type(err).__name__}: {err}") from err
    started = time.perf_counter()
    reader.start()
    try:
        while not stop.is_set():
            try:
                item = q_in.get(timeout=0.1)
            except queue.Empty:
                continue
            if item is _END:
                break
            if isinstance(item, _Frame):
                t0 = time.perf_counter()
                try:
                    out = engine(item.image, color_order=item.color_order, outputs=engine_outputs)
                except ValueError as err:  # the engine's "bad frame" error: skip, count, report
                    result.corrupt.append({"index": item.index, "bag_ns": item.bag_ns,
                                           "reason": f"engine rejected the frame: {err}"})
                    continue
                except Exception as err:  # noqa: BLE001 - anything else is fatal for the run
                    result.fatal = f"inference failed on frame {item.index}: {type(err).__name__}: {err}"
                    stop.event.set()
                    break
                call_ms = (time.perf_counter() - t0) * 1e3
                timings = {"decode": item.decode_ms}
                timings.update({str(k): float(v) for k, v in (getattr(out, "timings", None) or {}).items()})
                timings["engine_call"] = call_ms
                q_out.put(_Done(item, out, timings))
            else:
                q_out.put(item)
    except KeyboardInterrupt:
        stop.hard = True
        stop.event.set()
        if stop.signal_name is None:
            stop.signal_name = "SIGINT"
    finally:
        stop.finishing = True
        # Always hand the writer the end marker (it drains everything queued before it), and
        # wait for it: the output bag is only valid once the writer thread has closed it.
        q_out.put(_END)
        writer.join()
        result.wall_s = time.perf_counter() - started
        stop.event.set()  # release a reader still blocked on a full queue
        reader.join(timeout=5.0)
        progress.finish()
    result.interrupted = stop.signal_name
    result.hard_stop = stop.hard
    result.corrupt.sort(key=lambda c: c["index"])  # reader and engine both add to it
    if writer_error and result.fatal is None:
        err = writer_error[0]
        result.fatal = f"writing the output bag failed: {type(err).__name__}: {err}"


def _read(bag: InputBag, image_topic: TopicInfo, copy: list[str], options: ReplayOptions,
          q_in: "queue.Queue[Any]", result: ReplayResult, stop: _Stop) -> None:
    """Reader thread: raw messages -> decoded frames, label masks and copied messages."""
    wanted = {image_topic.name, *copy}
    if options.labels_topic:
        wanted.add(options.labels_topic)
    index = 0
    label_index = 0
    try:
        for raw in bag.messages(wanted):
            if stop.is_set():
                break
            item: Any = None
            if (raw.topic == image_topic.name and options.max_frames is not None
                    and index >= options.max_frames):
                break
            if raw.topic in copy:
                if not _put(q_in, _Copy(raw.topic, raw.timestamp, bytes(raw.data)), stop):
                    break
            if raw.topic == image_topic.name:
                result.image_bag_times.append(raw.timestamp)
                t0 = time.perf_counter()
                try:
                    msg = deserialize(raw.data, image_topic.msgtype)
                    if image_topic.msgtype == COMPRESSED_IMAGE:
                        image, order = codec.decode_compressed(msg)
                    else:
                        image, order = codec.decode_image(msg)
                    item = _Frame(index, raw.timestamp, stamp_to_ns(msg.header.stamp),
                                  msg.header, image, order, (time.perf_counter() - t0) * 1e3)
                    if not 0 <= msg.header.stamp.nanosec < 1_000_000_000:
                        result.unnormalized_stamps += 1
                except Exception as err:  # noqa: BLE001 - a bad message never aborts the run
                    result.corrupt.append({"index": index, "bag_ns": raw.timestamp,
                                           "reason": _reason(err)})
                index += 1
            elif raw.topic == options.labels_topic:
                try:
                    msg = deserialize(raw.data, IMAGE)
                    mask = codec.image_to_array(msg)
                    if mask.ndim != 2 or mask.dtype != np.uint8:
                        raise codec.CodecError(f"labels must be mono8 trainId masks, got {msg.encoding}")
                    item = _Label(label_index, stamp_to_ns(msg.header.stamp), np.array(mask))
                except Exception as err:  # noqa: BLE001
                    result.corrupt_labels.append({"index": label_index, "bag_ns": raw.timestamp,
                                                  "reason": _reason(err)})
                label_index += 1
            if item is not None and not _put(q_in, item, stop):
                break
    except Exception as err:  # noqa: BLE001 - InputBag.messages already salvages; belt and braces
        result.damage.append(f"reading stopped: {_reason(err)}")
    finally:
        result.frames_read = index
        _put(q_in, _END, stop)


def _reason(err: BaseException) -> str:
    return f"{type(err).__name__}: {err}"


def _write(q_out: "queue.Queue[Any]", options: ReplayOptions, topics: list[str], copy: list[str],
           bag: InputBag, folder: FolderLabels | None, result: ReplayResult, progress: Progress,
           stop: _Stop, opened: threading.Event, errors: list[BaseException],
           on_ground_truth: GroundTruthHook | None = None) -> None:
    """Writer thread: owns the output bag (sqlite3 connections are thread-bound)."""
    out: OutputBag | None = None
    if options.output is None:
        # Evaluation only: no bag to open or close, so nothing can be left half-written.
        result.output_closed = True
        opened.set()
        _drain(q_out, _Sink(None, options, topics, folder, result, on_ground_truth), result,
               progress, stop, errors)
        return
    try:
        out = OutputBag(options.output, storage=options.storage, namespace=options.namespace,
                        node_name=options.node_name)
        out.open(topics + ["label_info"] + (["drivable_grid"] if result.grid is not None else []))
        for topic in copy:
            if not out.add_copy_topic(bag.topics[topic]):
                result.warnings.append(f"--copy-topic {topic}: type {bag.topics[topic].msgtype} "
                                       "is unknown and the bag has no definition for it; not copied")
    except BaseException as err:  # noqa: BLE001 - reported by the main thread
        errors.append(err)
        opened.set()  # never leave the main thread waiting
        if out is not None:
            with contextlib.suppress(Exception):
                out.close()
        return
    opened.set()
    try:
        _drain(q_out, _Sink(out, options, topics, folder, result, on_ground_truth), result,
               progress, stop, errors)
    finally:
        try:
            out.close()
            result.output_closed = True
        except Exception as err:  # noqa: BLE001
            errors.append(err)
        result.output_counts = dict(out.counts)


def _drain(q_out: "queue.Queue[Any]", sink: "_Sink", result: ReplayResult, progress: Progress,
           stop: _Stop, errors: list[BaseException]) -> None:
    """Hand every queued item to ``sink`` until the end marker (the writer thread's loop)."""
    failed = False
    try:
        while True:
            item = q_out.get()
            if item is _END:
                break
            if failed:
                continue  # keep draining so the main thread never blocks on a full queue
            try:
                if isinstance(item, _Done):
                    sink.frame(item)
                    progress.update(len(result.frames))
                elif isinstance(item, _Label):
                    sink.label(item)
                elif isinstance(item, _Copy):
                    sink.copy(item)
            except Exception as err:  # noqa: BLE001 - e.g. disk full: stop the run, keep the bag
                errors.append(err)
                failed = True
                stop.event.set()
    finally:
        sink.finish()


class _Sink:
    """Per-frame work of the writer thread: messages, metrics, ground truth, samples."""

    def __init__(self, out: OutputBag | None, options: ReplayOptions, topics: list[str],
                 folder: FolderLabels | None, result: ReplayResult,
                 on_ground_truth: GroundTruthHook | None = None) -> None:
        self.out = out
        self.on_ground_truth = on_ground_truth
        self.options = options
        self.topics = topics
        self.folder = folder
        self.result = result
        self.num_classes = max(len(result.class_names), 1)
        self.matcher = StampMatcher(window=32)
        if options.labels_topic or folder is not None:
            result.confusion = M.ConfusionMatrix(self.num_classes, result.drivable_ids)
        self.previous: np.ndarray | None = None
        self.label_info_written = False
        self.drivable_lut = np.zeros(256, dtype=bool)
        self.drivable_lut[[i for i in result.drivable_ids if 0 <= i < 256]] = True
        expected = result.image_topic.count if result.image_topic else 0
        if options.max_frames is not None:
            expected = min(expected, options.max_frames)
        self.sample_at = set(sample_indices(expected, options.samples))
        self.last_overlay: tuple[int, np.ndarray] | None = None

    def frame(self, done: _Done) -> None:
        frame, res = done.frame, done.result
        if self.out is not None:
            self._write_messages(frame, res, done.timings)
        labels = np.asarray(res.labels)
        if self.result.grid is not None:
            t0 = time.perf_counter()
            grid_msg = self.result.grid.frame(frame.stamp_ns, frame.frame_id, labels,
                                              frame.image.shape)
            if grid_msg is not None and self.out is not None:
                self.out.write("drivable_grid", grid_msg, frame.bag_ns)
            done.timings["grid"] = (time.perf_counter() - t0) * 1e3
        drivable = (np.count_nonzero(res.drivable) / max(res.drivable.size, 1)
                    if getattr(res, "drivable", None) is not None
                    else float(self.drivable_lut[labels].mean()))
        self.result.frames.append(FrameRecord(
            frame.index, frame.stamp_ns, frame.bag_ns, done.timings,
            M.class_shares(labels, self.num_classes), float(drivable),
            M.change_fraction(self.previous, labels)))
        self.previous = labels
        self._keep_sample(frame, res)
        if self.result.confusion is not None:
            # The engine's result travels with its labels only when a hook wants it (it may
            # hold full-size colour images; the matcher keeps up to its window of them).
            prediction = (labels, res if self.on_ground_truth is not None else None)
            if self.folder is not None:
                mask = self.folder.load(frame.index, frame.stamp_ns)
                if mask is None:
                    self.result.unmatched_predictions += 1
                else:
                    self._evaluate(prediction, mask, frame.stamp_ns)
            else:
                mask = self.matcher.add_prediction(frame.stamp_ns, prediction)
                if mask is not None:
                    self._evaluate(prediction, mask, frame.stamp_ns)

    def copy(self, item: _Copy) -> None:
        if self.out is not None and item.topic in self.out.counts:
            self.out.write_raw(item.topic, item.data, item.bag_ns)

    def _write_messages(self, frame: _Frame, res: Any, timings: dict[str, float]) -> None:
        assert self.out is not None
        t0 = time.perf_counter()
        # The input header bit for bit, as the node copies it: consumers pair the outputs with the
        # camera image by exact stamp (message_filters ExactTime), so even a stamp that is not
        # normalized (nanosec >= 1e9, as some recorders write) must come out unchanged.
        header = frame.header
        if not self.label_info_written:
            # The node publishes the class map once, latched; a recording of it holds one message.
            info = node_outputs.label_info_fields(self.result.class_names)
            self.out.write("label_info", make_label_info(header, info["class_map"], info["threshold"]),
                           frame.bag_ns)
            self.label_info_written = True
        fields = node_outputs.result_to_image_fields(
            res, frame.color_order, color_encoding=self.options.color_encoding,
            confidence_encoding=self.options.confidence_encoding, topics=self.topics)
        for topic in self.topics:
            if topic in fields:
                self.out.write(topic, make_image(header, fields[topic]), frame.bag_ns)
        timings["write"] = (time.perf_counter() - t0) * 1e3

    def label(self, item: _Label) -> None:
        if self.result.confusion is None:
            return
        pred = self.matcher.add_label(item.stamp_ns, item.mask)
        if pred is not None:
            self._evaluate(pred, item.mask, item.stamp_ns)

    def _evaluate(self, prediction: tuple[np.ndarray, Any], truth: np.ndarray, stamp_ns: int) -> None:
        assert self.result.confusion is not None
        if self.result.grid is not None:  # the bird's-eye IoU: truth grid vs predicted grid
            self.result.grid.evaluate(stamp_ns, truth)
        labels, res = prediction
        self.result.confusion.update(labels_at(labels, truth.shape), truth)
        if self.on_ground_truth is not None:
            self.on_ground_truth(res, truth)

    def _keep_sample(self, frame: _Frame, res: Any) -> None:
        image = getattr(res, "overlay", None)
        if image is None:
            image = getattr(res, "color", None)
        if image is None:
            return
        bgr = image if frame.color_order == "bgr" else image[:, :, ::-1]
        self.last_overlay = (frame.index, bgr)
        if frame.index in self.sample_at:
            self.result.samples.append((frame.index, _jpeg(bgr)))

    def finish(self) -> None:
        self.matcher.finish()
        self.result.unmatched_predictions += self.matcher.unmatched_predictions
        self.result.unmatched_labels += self.matcher.unmatched_labels
        # An interrupted run may end before the planned sample frames: show its last frame.
        if self.last_overlay is not None and all(i != self.last_overlay[0]
                                                 for i, _ in self.result.samples):
            if len(self.result.samples) < max(self.options.samples, 1):
                self.result.samples.append((self.last_overlay[0], _jpeg(self.last_overlay[1])))


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

