"""A fleet evaluation: many bags, one or two models, one exact aggregate.

:func:`evaluate_fleet` plans the run (finds the bags, keys each by its content and the models,
takes finished bags from the report folder's cache, checks the others open), runs the rest
sequentially, in local worker processes or on Ray, and sums the per-bag integer counts in bag
order. The aggregate is therefore identical, bit for bit, however the work was spread.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import sys
import time
from pathlib import Path
from typing import Any, Sequence, TextIO

import numpy as np

from bisenet_ros.evaluation import runners
from bisenet_ros.evaluation.bags import bag_digest, bag_name, find_bags, labels_dir_for
from bisenet_ros.evaluation.job import (
    FAILED, INTERRUPTED, BagResult, BagTask, Disagreement, EvalSettings, ModelSpec, drivable_ids,
)
from bisenet_ros.fileio import write_atomic
from bisenet_ros.inference.segmenter import engine_provenance
from bisenet_ros.replay import metrics as M

CACHE_DIR = "bags"  # per-bag results inside the report folder
DEFAULT_REGRESSION_POINTS = 1.0

# Exit statuses of ``bisenet-ros evaluate``.
EXIT_OK = 0
EXIT_BAG_FAILED = 1  # some bags could not be evaluated (the report covers the others)
EXIT_USAGE = 2
EXIT_REGRESSION = 3  # --fail-on-regression: model B is worse than A beyond the threshold
EXIT_INTERRUPTED = 130


class EngineError(RuntimeError):
    """A model's engine cannot be built (weights, options, backend package)."""


class ClassSetMismatch(ValueError):
    """Models A and B predict different classes: their IoUs cannot be compared."""


@dataclasses.dataclass
class FleetOptions:
    """How to run a fleet evaluation.

    Attributes:
        bags: Paths, glob patterns and ``.txt`` lists.
        settings: Topics, ground truth, output bags.
        report_dir: Where the report and the per-bag cache go (None: nothing written).
        jobs: Local worker processes (1: in this process).
        ray: Use Ray; ``ray_address`` None starts a local cluster.
        ray_address: ``auto`` or ``HOST:PORT`` of a running cluster.
        threads: Engine threads per worker (0: cores / workers).
        regression_points: A drop of B against A larger than this (IoU points) is a regression.
        progress: Show the progress line (None: when the stream is a terminal).
    """

    bags: Sequence[str]
    settings: EvalSettings = dataclasses.field(default_factory=EvalSettings)
    report_dir: Path | None = None
    jobs: int = 1
    ray: bool = False
    ray_address: str | None = None
    threads: int = 0
    regression_points: float = DEFAULT_REGRESSION_POINTS
    progress: bool | None = None


@dataclasses.dataclass
class ModelSummary:
    """One model over the whole fleet."""

    name: str
    config: dict[str, Any]
    provenance: dict[str, Any]
    confusion: M.ConfusionMatrix | None
    engine_ms: float | None


@dataclasses.dataclass
class FleetResult:
    """The aggregate of a fleet evaluation (the report renders it)."""

    bags: list[BagResult]
    class_names: list[str]
    palette: np.ndarray | None
    models: list[ModelSummary]
    disagreement: Disagreement | None
    runner: str
    threads: int
    wall_s: float
    regression_points: float
    interrupted: bool = False

    @property
    def counted(self) -> list[BagResult]:
        return [b for b in self.bags if b.counts]

    @property
    def failed(self) -> list[BagResult]:
        return [b for b in self.bags if b.status == FAILED]

    def frames_processed(self, *, fresh_only: bool = False) -> int:
        return sum(b.frames_processed for b in self.counted if not (fresh_only and b.cached))

    def throughput_fps(self) -> float | None:
        """Frames per second of this run's wall time (cached bags excluded)."""
        frames = self.frames_processed(fresh_only=True)
        return frames / self.wall_s if self.wall_s > 0 and frames else None

    def processing_span_s(self) -> float | None:
        """From the first bag's start to the last bag's end, as stamped where they ran: the
        run's wall time without starting workers and building their engines before it."""
        fresh = [b for b in self.counted if not b.cached and b.started_at and b.finished_at]
        return max(b.finished_at for b in fresh) - min(b.started_at for b in fresh) if fresh else None

    def comparison(self) -> dict[str, Any] | None:
        """Deltas of B against A (IoU points: 100 x difference) and the regressions beyond the
        threshold; None without a second model."""
        if len(self.models) < 2:
            return None
        a, b = self.models[0].confusion, self.models[1].confusion
        out: dict[str, Any] = {"threshold_points": self.regression_points}
        d = self.disagreement
        out["disagreement"] = {"rate": d.rate() if d else None, "pixels": d.pixels if d else 0,
                               "differing_pixels": d.differing if d else 0,
                               "frames": d.frames if d else 0}
        if a is None or b is None:
            out.update(overall={}, per_class={}, per_bag={}, regressions=[])
            return out
        overall = {name: _delta(fa(), fb()) for name, fa, fb in (
            ("miou", a.miou, b.miou), ("pixel_accuracy", a.pixel_accuracy, b.pixel_accuracy),
            ("drivable_iou", a.drivable_iou, b.drivable_iou))}
        per_class = {name: _delta(va, vb) for name, va, vb in zip(self.class_names, a.iou(), b.iou())}
        per_bag = {}
        for bag in self.counted:
            ca, cb = (m.confusion for m in bag.models[:2])
            if ca is not None and cb is not None:
                per_bag[bag.bag] = _delta(ca.miou(), cb.miou())
        regressions = [f"{name}: {v['a']:.4f} -> {v['b']:.4f} ({v['delta_points']:+.2f} points)"
                       for name, v in list(overall.items()) + list(per_class.items())
                       if v["delta_points"] is not None and v["delta_points"] < -self.regression_points]
        out.update(overall=overall, per_class=per_class, per_bag=per_bag, regressions=regressions)
        return out

    def exit_code(self, *, fail_on_regression: bool = False) -> int:
        if self.interrupted:
            return EXIT_INTERRUPTED
        comparison = self.comparison()
        if fail_on_regression and comparison and comparison["regressions"]:
            return EXIT_REGRESSION
        return EXIT_BAG_FAILED if self.failed or not self.counted else EXIT_OK


def _delta(a: float | None, b: float | None) -> dict[str, Any]:
    return {"a": a, "b": b, "delta_points": None if a is None or b is None else (b - a) * 100.0}


def _aggregate(bags: Sequence[BagResult], model: int, num_classes: int,
               drivable_ids: Sequence[int]) -> tuple[M.ConfusionMatrix | None, float | None]:
    """Sum one model's confusion matrices over the counted bags, in bag order."""
    total: M.ConfusionMatrix | None = None
    ms, frames = 0.0, 0
    for bag in bags:
        if not bag.counts or len(bag.models) <= model:
            continue
        figures = bag.models[model]
        if figures.confusion is not None:
            if total is None:
                total = M.ConfusionMatrix(num_classes, drivable_ids)
            total.merge(figures.confusion)
        if figures.engine_ms is not None:
            ms += figures.engine_ms * bag.frames_processed
            frames += bag.frames_processed
    return total, (ms / frames if frames else None)


def check_class_sets(a: Any, b: Any) -> None:
    """Refuse to compare models whose classes differ (names and order).

    Raises:
        ClassSetMismatch: With both class lists' differences.
    """
    names_a, names_b = list(a.class_names), list(b.class_names)
    # Class names match case-insensitively everywhere (bisenet_ros.labels.class_index).
    if [n.lower() for n in names_a] != [n.lower() for n in names_b]:
        raise ClassSetMismatch(
            f"--compare: model B predicts {len(names_b)} classes ({', '.join(names_b[:4])}...) "
            f"and model A {len(names_a)} ({', '.join(names_a[:4])}...); IoUs of different class "
            "sets cannot be compared: compare models trained on the same class set")


def provenance(engine: Any, spec: ModelSpec) -> dict[str, Any]:
    """What the report says about a model: what the engine built actually runs
    (:func:`bisenet_ros.inference.engine_provenance`), and the model's cache key."""
    return {**engine_provenance(engine), "model_key": spec.key}


def _engine_config(engine: Any, spec: ModelSpec) -> dict[str, Any]:
    # The engine's config is the one in effect (an .onnx file sets its variant, classes, size).
    config = getattr(engine, "config", None)
    return config.to_dict() if hasattr(config, "to_dict") else spec.config.to_dict()


def evaluate_fleet(options: FleetOptions, models: Sequence[ModelSpec], *,
                   engines: Sequence[Any] | None = None, stream: TextIO | None = None) -> FleetResult:
    """Evaluate ``models`` (A, optionally B) on every bag of ``options``.

    Args:
        options: Bags, settings and how to run.
        models: ``[A]`` or ``[A, B]``.
        engines: The models' engines built in this process (built here when None); used for
            the class names and the report, and for the bags themselves when ``jobs == 1``.
        stream: Progress and messages (default stderr).

    Raises:
        NoBagsError, FileNotFoundError: No bag matched, or a named bag does not exist.
        ClassSetMismatch: A and B predict different classes.
        EngineError: A model's engine cannot be built.
        runners.RayError: Ray is missing or its cluster does not answer.
    """
    stream = stream or sys.stderr
    paths = find_bags(options.bags)
    # Connect first: a cluster that does not answer is reported before any work.
    ray, owned = (runners.connect_ray(options.ray_address,
                                      num_cpus=options.jobs if options.jobs > 1 else None)
                  if options.ray else (None, False))
    try:
        return _evaluate(options, models, paths, engines, stream, ray)
    finally:
        if owned:
            ray.shutdown()


def _evaluate(options: FleetOptions, models: Sequence[ModelSpec], paths: Sequence[Path],
              engines: Sequence[Any] | None, stream: TextIO, ray: Any) -> FleetResult:
    engines = list(engines) if engines is not None else [_build(m) for m in models]
    if len(engines) > 1:
        check_class_sets(engines[0], engines[1])
    class_names = [str(n) for n in engines[0].class_names]
    palette = getattr(engines[0], "palette", None)
    summaries = [ModelSummary(spec.name, _engine_config(engine, spec), provenance(engine, spec), None, None)
                 for spec, engine in zip(models, engines)]

    cache = Path(options.report_dir) / CACHE_DIR if options.report_dir else None
    results: dict[int, BagResult] = {}
    tasks, total_frames = _plan(paths, options, models, cache, results)
    progress = runners.FleetProgress(total_frames, stream=stream, enabled=bool(
        options.progress if options.progress is not None else stream.isatty()))

    index_of = {(t.key, str(t.bag)): t.index for t in tasks}
    drivable = drivable_ids(engines[0], class_names)

    def on_result(result: BagResult) -> None:
        index = index_of[(result.key, result.bag)]
        results[index] = result
        progress.set(index, result.frames_processed)
        if cache is not None and result.counts:
            _store(cache / f"{result.key}.json", result)

    # Engine threads: workers x threads <= cores for local workers; one CPU share (one thread)
    # per Ray task unless told otherwise; in process, the config's choice.
    if options.ray:
        threads = options.threads or 1
    elif options.jobs > 1:
        threads = runners.threads_per_worker(options.jobs, options.threads)
    else:
        threads = models[0].config.num_threads
    if options.ray or options.jobs > 1:
        models = [m if m.config.num_threads else
                  dataclasses.replace(m, config=m.config.replace(num_threads=threads)) for m in models]
    interrupted = False
    started = time.perf_counter()
    try:
        if tasks and options.ray:
            runners.run_ray(ray, tasks, options.settings, models, threads=threads,
                            on_result=on_result, progress=progress)
        elif tasks and options.jobs > 1:
            runners.run_local(tasks, options.settings, models, options.jobs, threads=threads,
                              on_result=on_result, progress=progress)
        elif tasks:
            runners.run_sequential(tasks, options.settings, engines, on_result=on_result,
                                   progress=progress)
    except KeyboardInterrupt:
        interrupted = True
    finally:
        progress.finish()
    wall = time.perf_counter() - started
    interrupted = interrupted or any(r.status == INTERRUPTED for r in results.values())
    ordered = [results[i] for i in sorted(results)]
    for i, summary in enumerate(summaries):
        summary.confusion, summary.engine_ms = _aggregate(ordered, i, len(class_names), drivable)
    disagreement = None
    if len(models) > 1:
        disagreement = Disagreement()
        for bag in ordered:
            if bag.counts and bag.disagreement is not None:
                disagreement.merge(bag.disagreement)
    runner = ("ray " + (options.ray_address or "local cluster") if options.ray
              else f"{options.jobs} local worker processes" if options.jobs > 1 else "in process")
    return FleetResult(ordered, class_names, None if palette is None else np.asarray(palette, np.uint8),
                       summaries, disagreement, runner, threads, wall, options.regression_points,
                       interrupted)


def _build(spec: ModelSpec) -> Any:
    try:
        return spec.build()
    except (ImportError, OSError, ValueError, RuntimeError) as err:
        raise EngineError(f"cannot build the segmentation engine of model {spec.name}: {err}") from err


def _plan(paths: Sequence[Path], options: FleetOptions, models: Sequence[ModelSpec],
          cache: Path | None, results: dict[int, BagResult]) -> tuple[list[BagTask], int]:
    """Key every bag, take cached results, check the rest open; returns the bags to run and
    their frames (for the progress line). Unusable bags go straight into ``results``."""
    from bisenet_ros.replay.bag import BagError
    from bisenet_ros.replay.pipeline import open_input, pick_image_topic

    settings = options.settings
    model_keys = [m.key for m in models]
    tasks: list[BagTask] = []
    total = 0
    for index, path in enumerate(paths):
        labels = labels_dir_for(settings.labels_dir, path)
        output = None
        if settings.output_dir:
            output = Path(settings.output_dir) / bag_name(path)
        try:
            # The content digest keys the per-bag results kept in the report folder; without
            # one, the path tells bags apart and no bag is read twice just to hash it.
            digest = bag_digest(path) if cache is not None else str(path.resolve())
        except OSError as err:
            results[index] = BagResult(bag=str(path), key="", status=FAILED,
                                       reason=f"cannot read the bag: {err}")
            continue
        key = hashlib.sha256(json.dumps(
            {"bag": digest, "models": model_keys, "settings": settings.key()},
            sort_keys=True).encode()).hexdigest()[:32]
        task = BagTask(index, path, key, labels, output)
        cached = _load(cache / f"{key}.json") if cache is not None and output is None else None
        if cached is not None:
            cached.bag, cached.cached = str(path), True
            results[index] = cached
            continue
        try:
            options = settings.replay_options(path, labels, output)
            bag = open_input(options)
        except (BagError, OSError, ValueError) as err:
            results[index] = BagResult.failure(task, str(err))
            continue
        try:
            count = pick_image_topic(bag, options).count
        finally:
            bag.close()
        total += min(count, settings.max_frames) if settings.max_frames else count
        tasks.append(task)
    return tasks, total


def _load(path: Path) -> BagResult | None:
    try:
        return BagResult.from_json(json.loads(path.read_text(encoding="utf-8")))
    except (OSError, ValueError, KeyError, TypeError):
        return None  # absent or unreadable: evaluate the bag again


def _store(path: Path, result: BagResult) -> None:
    """Write a per-bag result atomically (an interrupted write never leaves a truncated file)."""
    write_atomic(path, json.dumps(result.to_json()) + "\n")
