"""One bag's share of a fleet evaluation: the replay pipeline without an output bag, model A
(and model B on the very same decoded frames), and a small picklable result.

Everything here runs the same way in the driver, in a local worker process or in a Ray task:
:func:`evaluate_bag` takes a :class:`BagTask` and engines and returns a :class:`BagResult` whose
counts are integers (confusion matrices, disagreement pixels), so summing them over bags is
exact and independent of where each bag ran.
"""
from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import time
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from bisenet_ros.config import SegmenterConfig
from bisenet_ros.inference.segmenter import file_digest
from bisenet_ros.replay import metrics as M
from bisenet_ros.replay.pipeline import labels_at

# Config fields that change a model's label maps (the rest, e.g. num_threads or overlay_alpha,
# only change speed or pictures): with the weights' content they key the cached results.
OUTPUT_FIELDS = ("variant", "num_classes", "class_set", "resolution", "resize", "backend", "device",
                 "precision", "drivable_classes", "output_resolution")
# The disagreement heat map is kept on this grid (rows, columns) over the image, whatever
# each bag's camera resolution, so maps of different bags add up.
HEATMAP_SHAPE = (48, 64)
# A worker reports its frame count at most this often (seconds).
TICK_INTERVAL_S = 0.5

EngineFactory = Callable[[SegmenterConfig], Any]
Tick = Callable[[int], None]


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """A model to evaluate, as a worker rebuilds it (picklable).

    Attributes:
        name: Shown in the report (``A``/``B`` plus the weights' file name).
        config: The engine's configuration (``num_threads`` already set for the worker).
        key: Identifies the predictions: weights content and output-relevant options.
        factory: Builds the engine from ``config`` (None: :class:`bisenet_ros.inference.Segmenter`);
            must be importable by name in the workers (tests pass a module-level fake).
    """

    name: str
    config: SegmenterConfig
    key: str
    factory: EngineFactory | None = None

    def build(self) -> Any:
        if self.factory is None:
            from bisenet_ros.inference import Segmenter

            return Segmenter(self.config)
        return self.factory(self.config)


def model_key(config: SegmenterConfig, factory: EngineFactory | None = None) -> str:
    """Key of a model's predictions: SHA-256 of the weights file plus :data:`OUTPUT_FIELDS`.

    Raises:
        OSError: The weights (or class-set) file cannot be read.
    """
    values = config.to_dict()
    parts: dict[str, Any] = {name: values[name] for name in OUTPUT_FIELDS}
    parts["weights"] = file_digest(config.weights, length=64) if config.weights else None
    if str(config.class_set).endswith((".yaml", ".yml")):
        parts["class_set"] = file_digest(config.class_set, length=64)
    if factory is not None:
        parts["factory"] = f"{factory.__module__}.{getattr(factory, '__qualname__', factory)}"
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:24]


@dataclasses.dataclass(frozen=True)
class EvalSettings:
    """What is read from each bag and how ground truth is found (the replay's options).

    Attributes:
        image_topic: Camera topic (None: each bag's only image topic).
        cameras: Camera names of multi-camera bags (see ``ReplayOptions.cameras``).
        image_topics: Camera topics of multi-camera bags, instead of ``cameras``.
        labels_camera: The camera the ground truth belongs to (multi-camera bags).
        labels_topic: Ground-truth topic (mono8 trainId masks).
        labels_topics: Several cameras: more ground-truth topics (see ``ReplayOptions``).
        labels_dir: Ground-truth folder template (see :func:`~bisenet_ros.evaluation.bags.labels_dir_for`).
        labels_match: ``auto``, ``timestamp`` or ``order`` for folders.
        label_tolerance_ms: Largest stamp difference for timestamp matching.
        max_frames: Camera messages read per bag (None: all).
        queue_size: Frames buffered between the replay's threads.
        output_dir: Write each bag's output bag (model A's topics) here (None: no bags).
        replay: More :class:`~bisenet_ros.replay.pipeline.ReplayOptions` fields for output bags
            (storage, namespace, node_name, outputs, encodings, copy_topics).
    """

    image_topic: str | None = None
    cameras: tuple[str, ...] = ()
    image_topics: tuple[str, ...] = ()
    labels_camera: str | None = None
    labels_topic: str | None = None
    labels_topics: tuple[str, ...] = ()
    labels_dir: str | None = None
    labels_match: str = "auto"
    label_tolerance_ms: float = 1.0
    max_frames: int | None = None
    queue_size: int = 4
    output_dir: str | None = None
    replay: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    def key(self) -> dict[str, Any]:
        """The settings that change a bag's figures (part of the cache key)."""
        key = {"image_topic": self.image_topic, "labels_topic": self.labels_topic,
               "labels_dir": self.labels_dir, "labels_match": self.labels_match,
               "label_tolerance_ms": self.label_tolerance_ms, "max_frames": self.max_frames}
        if self.cameras or self.image_topics:  # single-camera keys stay as they were
            key.update(cameras=list(self.cameras), image_topics=list(self.image_topics),
                       labels_topics=list(self.labels_topics), labels_camera=self.labels_camera)
        return key

    def replay_options(self, bag: Path, labels_dir: Path | None, output: Path | None) -> Any:
        from bisenet_ros.replay.pipeline import ReplayOptions

        extra = dict(self.replay)
        extra.setdefault("write_grid", False)  # the bird's-eye grid is no part of the evaluation
        if output is None:
            extra["outputs"] = ("mask",)  # labels only: the engine skips colour and overlay
        return ReplayOptions(
            input=bag, output=output, image_topic=self.image_topic, cameras=self.cameras,
            image_topics=self.image_topics, labels_camera=self.labels_camera,
            labels_topic=self.labels_topic, labels_topics=self.labels_topics,
            labels_dir=labels_dir, labels_match=self.labels_match,
            label_tolerance_ms=self.label_tolerance_ms, max_frames=self.max_frames,
            queue_size=self.queue_size, progress=False, samples=0, **extra)


@dataclasses.dataclass(frozen=True)
class BagTask:
    """One bag to evaluate (picklable)."""

    index: int  # position in the sorted bag list (the summation order)
    bag: Path
    key: str  # bag content + models + settings: the cached result's name
    labels_dir: Path | None = None
    output: Path | None = None


@dataclasses.dataclass
class ModelFigures:
    """One model's counts on one bag."""

    confusion: M.ConfusionMatrix | None
    engine_ms: float | None  # mean engine time per frame

    def to_json(self) -> dict[str, Any]:
        return {"confusion": None if self.confusion is None else self.confusion.state(),
                "engine_ms": self.engine_ms}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> "ModelFigures":
        cm = data.get("confusion")
        return cls(None if cm is None else M.ConfusionMatrix.from_state(cm), data.get("engine_ms"))


@dataclasses.dataclass
class Disagreement:
    """Where models A and B give different labels, over every processed frame.

    Attributes:
        pixels: Pixels compared.
        differing: Pixels whose labels differ.
        heat_sum: Sum over frames of the per-cell share of differing pixels, on
            :data:`HEATMAP_SHAPE` (float64; divide by ``frames`` for the mean map).
        frames: Frames compared.
    """

    pixels: int = 0
    differing: int = 0
    heat_sum: np.ndarray = dataclasses.field(
        default_factory=lambda: np.zeros(HEATMAP_SHAPE, np.float64))
    frames: int = 0

    def add_frame(self, a: np.ndarray, b: np.ndarray) -> None:
        import cv2

        b = labels_at(b, a.shape)
        differ = a != b
        self.pixels += differ.size
        self.differing += int(np.count_nonzero(differ))
        # INTER_AREA averages the mask over each cell: the cell's share of differing pixels.
        cells = cv2.resize(differ.astype(np.float32), HEATMAP_SHAPE[::-1], interpolation=cv2.INTER_AREA)
        self.heat_sum += cells
        self.frames += 1

    def merge(self, other: "Disagreement") -> None:
        self.pixels += other.pixels
        self.differing += other.differing
        self.heat_sum += other.heat_sum
        self.frames += other.frames

    def rate(self) -> float | None:
        return self.differing / self.pixels if self.pixels else None

    def heatmap(self) -> np.ndarray | None:
        return self.heat_sum / self.frames if self.frames else None

    def to_json(self) -> dict[str, Any]:
        # repr() of a float64 round-trips exactly, so a cached result sums bit for bit.
        return {"pixels": self.pixels, "differing": self.differing, "frames": self.frames,
                "heat_sum": self.heat_sum.tolist()}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> "Disagreement":
        return cls(int(data["pixels"]), int(data["differing"]),
                   np.asarray(data["heat_sum"], dtype=np.float64), int(data["frames"]))


# Status of a bag's result.
OK, DAMAGED, FAILED, INTERRUPTED = "ok", "damaged", "failed", "interrupted"


@dataclasses.dataclass
class BagResult:
    """What one bag contributed (JSON round-trip exact: the resumable cache stores these).

    ``status``: ``ok``; ``damaged`` (read up to the damage, the frames read count); ``failed``
    (nothing counts; ``reason`` says why); ``interrupted`` (stopped by a signal; not counted
    and not cached).
    """

    bag: str
    key: str
    status: str
    reason: str | None = None
    frames_in_topic: int = 0
    frames_read: int = 0
    frames_processed: int = 0
    corrupt: int = 0
    unmatched: int = 0
    wall_s: float = 0.0
    damage: list[str] = dataclasses.field(default_factory=list)
    warnings: list[str] = dataclasses.field(default_factory=list)
    models: list[ModelFigures] = dataclasses.field(default_factory=list)
    disagreement: Disagreement | None = None
    attempts: int = 1
    started_at: float = 0.0  # wall clock (Unix time, s) when the bag's first frame was read
    finished_at: float = 0.0  # ... and when its last frame was done
    cached: bool = False  # filled in by the driver, not stored

    @property
    def counts(self) -> bool:
        """Whether this bag's figures enter the aggregate."""
        return self.status in (OK, DAMAGED)

    def throughput_fps(self) -> float | None:
        return self.frames_processed / self.wall_s if self.wall_s > 0 and self.frames_processed else None

    def to_json(self) -> dict[str, Any]:
        data = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                if f.name not in ("models", "disagreement", "cached")}
        data["models"] = [m.to_json() for m in self.models]
        data["disagreement"] = None if self.disagreement is None else self.disagreement.to_json()
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> "BagResult":
        values = dict(data)
        values["models"] = [ModelFigures.from_json(m) for m in data.get("models", [])]
        d = data.get("disagreement")
        values["disagreement"] = None if d is None else Disagreement.from_json(d)
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in names})

    @classmethod
    def failure(cls, task: BagTask, reason: str, *, status: str = FAILED,
                attempts: int = 1) -> "BagResult":
        return cls(bag=str(task.bag), key=task.key, status=status, reason=reason, attempts=attempts)


def drivable_ids(engine: Any, class_names: list[str]) -> list[int]:
    """Ids of ``engine``'s drivable classes among ``class_names`` (none for a config-less engine)."""
    from bisenet_ros.replay.pipeline import resolve_drivable_ids

    config = getattr(engine, "config", None)
    return resolve_drivable_ids(config.drivable_classes, class_names) if config is not None else []


class _Paired:
    """Model A's result with model B's labels for the same frame (what the replay sees)."""

    def __init__(self, a: Any, b_labels: np.ndarray, timings: dict[str, float]) -> None:
        self._a = a
        self.b_labels = b_labels
        self.timings = timings

    def __getattr__(self, name: str) -> Any:  # labels, color, overlay, drivable, ... of A
        return getattr(self._a, name)


class _FleetEngine:
    """The engine the replay drives: model A, model B on the same frame, a frame counter."""

    def __init__(self, engines: Sequence[Any], tick: Tick | None) -> None:
        self.engines = list(engines)
        first = self.engines[0]
        self.class_names = list(first.class_names)
        self.palette = getattr(first, "palette", None)
        self.config = getattr(first, "config", None)
        self.tick = tick
        self.frames = 0
        self.engine_ms = [0.0] * len(self.engines)
        self.disagreement = Disagreement() if len(self.engines) > 1 else None
        self._last_tick = 0.0

    def __call__(self, frame: np.ndarray, color_order: str = "bgr", outputs: Any = None) -> Any:
        return self.segment_batch([frame], [color_order], outputs=outputs)[0]

    def segment_batch(self, frames: Sequence[np.ndarray], color_orders: Sequence[str],
                      outputs: Any = None) -> list[Any]:
        """Model A's results for a batch (B's labels riding along with --compare).

        Raises:
            ValueError: A model rejected a frame (the replay then runs the frames one by one).
        """
        t0 = time.perf_counter()
        results = _segment(self.engines[0], frames, color_orders, outputs)
        t1 = time.perf_counter()
        self.engine_ms[0] += (t1 - t0) * 1e3
        if self.disagreement is not None:
            others = _segment(self.engines[1], frames, color_orders, set())
            t2 = time.perf_counter()
            self.engine_ms[1] += (t2 - t1) * 1e3
            paired = []
            for result, other in zip(results, others):
                b_labels = np.asarray(other.labels)
                self.disagreement.add_frame(np.asarray(result.labels), b_labels)
                timings = dict(getattr(result, "timings", None) or {})
                timings.update({"model_a": (t1 - t0) * 1e3, "model_b": (t2 - t1) * 1e3})
                paired.append(_Paired(result, b_labels, timings))
            results = paired
        self.frames += len(frames)
        now = time.perf_counter()
        if self.tick is not None and now - self._last_tick >= TICK_INTERVAL_S:
            self._last_tick = now
            self.tick(self.frames)
        return results


def _segment(engine: Any, frames: Sequence[np.ndarray], color_orders: Sequence[str],
             outputs: Any) -> list[Any]:
    """One model's results for a batch (:func:`bisenet_ros.streams.segment_frames`), raising the
    first frame's error as the engine itself would."""
    from bisenet_ros.streams import segment_frames

    results = segment_frames(engine, frames, color_orders, outputs)
    for result in results:
        if isinstance(result, Exception):
            raise result
    return results


def evaluate_bag(task: BagTask, settings: EvalSettings, engines: Sequence[Any], *,
                 tick: Tick | None = None) -> BagResult:
    """Evaluate model A (and B, on the same frames) on one bag; never raises for a bad bag.

    Args:
        task: The bag.
        settings: Topics and ground truth.
        engines: ``[A]`` or ``[A, B]`` (built engines; B must have A's classes).
        tick: Called with the bag's frames done so far (throttled), for the progress line.

    Returns:
        The bag's :class:`BagResult` (``failed`` with the reason when the bag cannot be used).
    """
    from bisenet_ros.replay.bag import BagError
    from bisenet_ros.replay.pipeline import open_input, replay

    options = settings.replay_options(task.bag, task.labels_dir, task.output)
    try:
        bag = open_input(options)
    except (BagError, OSError, ValueError) as err:
        return BagResult.failure(task, str(err))
    engine = _FleetEngine(engines, tick)
    second: M.ConfusionMatrix | None = None
    hook = None
    if len(engines) > 1 and (settings.labels_topic or task.labels_dir):
        second = M.ConfusionMatrix(len(engine.class_names), drivable_ids(engines[1], engine.class_names))

        def hook(result: Any, truth: np.ndarray) -> None:
            assert second is not None
            second.update(labels_at(result.b_labels, truth.shape), truth)
    started_at = time.time()
    try:
        result = replay(options, engine, stream=io.StringIO(), install_signal_handlers=False,
                        bag=bag, on_ground_truth=hook)
    except (BagError, OSError, ValueError) as err:
        return BagResult.failure(task, str(err))
    finally:
        bag.close()
    if tick is not None:
        tick(engine.frames)
    out = BagResult(
        bag=str(task.bag), key=task.key, status=OK,
        frames_in_topic=result.messages_in_topics,
        frames_read=result.frames_read, frames_processed=result.frames_processed,
        corrupt=len(result.corrupt), unmatched=result.unmatched_predictions, wall_s=result.wall_s,
        damage=list(result.damage), warnings=list(result.warnings),
        disagreement=engine.disagreement, started_at=started_at, finished_at=time.time())
    frames = max(result.frames_processed, 1)
    out.models = [ModelFigures(result.confusion, engine.engine_ms[0] / frames if result.frames else None)]
    if len(engines) > 1:
        out.models.append(ModelFigures(second, engine.engine_ms[1] / frames if result.frames else None))
    if result.interrupted:
        out.status, out.reason = INTERRUPTED, f"stopped by {result.interrupted}"
    elif result.fatal:
        out.status, out.reason = FAILED, result.fatal
    elif result.frames_read and not result.frames:
        out.status, out.reason = FAILED, ("none of the camera messages could be decoded; check "
                                          "--image-topic and the camera's encoding")
    elif not result.frames_read:
        out.status, out.reason = FAILED, "the camera topic holds no message"
    elif result.damage:
        out.status, out.reason = DAMAGED, "; ".join(result.damage)
    return out


# -- engines kept by a worker process ----------------------------------------------------------
_ENGINES: dict[str, Any] = {}


def worker_engines(models: Sequence[ModelSpec]) -> list[Any]:
    """The models' engines, built once per process and reused for every bag it evaluates."""
    engines = []
    for spec in models:
        if spec.key not in _ENGINES:
            engine = spec.build()
            warmup = getattr(engine, "warmup", None)
            if callable(warmup):
                warmup()  # the backend's lazy initialisation stays out of the first bag's timing
            _ENGINES[spec.key] = engine
        engines.append(_ENGINES[spec.key])
    return engines


def limit_threads(num_threads: int) -> None:
    """Keep OpenCV's pool (decoding, resizing) within the worker's share of the cores."""
    if num_threads > 0:
        import cv2

        cv2.setNumThreads(num_threads)
