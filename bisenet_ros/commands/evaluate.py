"""``bisenet-ros evaluate BAG... --weights W [--compare W2] [--jobs N | --ray [ADDRESS]] --report DIR``:
evaluate a model over many bags, optionally against a second model.

Examples::

    # every drive of a fleet, ground truth in the bags, 2 local workers
    bisenet-ros evaluate 'drives/**/*.mcap' --weights stdc1.pth --variant stdc1 \\
        --labels-topic /camera/labels --jobs 2 --report fleet_report

    # fp32 against int8 on the same frames; exit status 3 if int8 loses more than 1 IoU point
    bisenet-ros evaluate drives.txt --weights fp32.onnx --backend onnxruntime \\
        --compare int8.onnx --labels-topic /camera/labels --report cmp --fail-on-regression 1

    # on a running Ray cluster (bag paths must be readable on every node)
    bisenet-ros evaluate /shared/drives/*.mcap --weights stdc1.pth --report r --ray auto

Bags: paths, glob patterns, or .txt files listing them. ``--labels-dir`` may hold ``{bag}``
(the bag's name), e.g. ``labels/{bag}``; without it, ``DIR/<bag name>`` is used when present.
Per-bag results are kept in ``DIR/bags/`` keyed by the bag's content and the models: running
the same command again (after an interruption, or with more bags) evaluates only what is new.

Exit status: 0 done; 1 some bags could not be evaluated (reported; the others count);
2 a user error (options, bags, weights, class names: the same status as every
command; nothing is left behind); 3 ``--fail-on-regression``: model B is worse than A beyond the threshold;
130 interrupted by Ctrl-C or SIGTERM (finished bags are kept for the next run).
"""
from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path
from typing import Any, Callable, Sequence

from bisenet_ros.commands.replay import (
    add_bag_arguments, add_engine_arguments, add_ground_truth_arguments, add_run_arguments,
    check_run_arguments, metrics_text, output_bag_fields,
)
from bisenet_ros.config import BACKENDS, PRECISIONS, SegmenterConfig, config_from_args
from bisenet_ros.runtime import USER_ERROR_STATUS

LOCAL_RAY = "local"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Declare the evaluate command's options (most shared with ``bisenet-ros replay``)."""
    parser.add_argument("bags", nargs="+", metavar="BAG",
                        help="bags: rosbag2 directories, .mcap/.db3 files, glob patterns (quoted) "
                        "or .txt files listing them")
    parser.add_argument("--output-dir", metavar="DIR",
                        help="also write each bag's output bag (model A's topics) into DIR/<bag>; "
                        "default: write nothing but the report")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace output bags already in --output-dir")
    add_bag_arguments(parser)
    gt = parser.add_argument_group("evaluation")
    gt.add_argument("--report", metavar="DIR",
                    help="write report.html and metrics.json into DIR, and keep per-bag results "
                    "in DIR/bags/ so that a re-run evaluates only new bags")
    add_ground_truth_arguments(gt)
    cmp = parser.add_argument_group("model B (--compare)")
    cmp.add_argument("--compare", metavar="WEIGHTS",
                     help="second model (.pth or .onnx, e.g. an int8 export) run on exactly the same "
                     "frames; its other options are model A's unless given below")
    cmp.add_argument("--compare-backend", choices=BACKENDS, help="model B's backend (default: A's)")
    cmp.add_argument("--compare-precision", choices=PRECISIONS, help="model B's precision (default: A's)")
    cmp.add_argument("--compare-variant", help="model B's variant, for .pth weights (default: A's)")
    cmp.add_argument("--regression-threshold", type=float, default=None, metavar="POINTS",
                     help="flag a drop of B against A larger than this many IoU points (mIoU, pixel "
                     "accuracy, drivable IoU or any class; default 1)")
    cmp.add_argument("--fail-on-regression", type=float, default=None, metavar="POINTS",
                     help="exit with status 3 when B is worse than A by more than POINTS IoU "
                     "points (sets the threshold too): a release gate")
    run_group = parser.add_argument_group("run")
    add_run_arguments(run_group)
    run_group.add_argument("--jobs", "-j", type=int, default=1,
                           help="local worker processes, each building its engine once; engine "
                           "threads per worker default to cores / jobs (default 1: in process)")
    run_group.add_argument("--ray", nargs="?", const=LOCAL_RAY, default=None, metavar="ADDRESS",
                           help="run the bags as Ray tasks: no value starts a local cluster "
                           "(127.0.0.1 only, no dashboard, no usage statistics; --jobs CPUs); "
                           "'auto' joins the cluster this runs in; HOST:PORT a running one "
                           "(answering within 10 s). Put it after the bags.")
    add_engine_arguments(parser)


def _interrupt(signum: int, _frame: Any) -> None:
    raise KeyboardInterrupt


def _error(message: str) -> int:
    print(f"bisenet-ros evaluate: error: {message}", file=sys.stderr)
    return USER_ERROR_STATUS


def _ray_address(value: str | None) -> str | None:
    if value in (None, LOCAL_RAY):
        return None
    if value == "auto" or (":" in value and not Path(value).exists()):
        return value
    raise ValueError(f"--ray {value!r}: expected nothing (local cluster), 'auto' or HOST:PORT; "
                     "put --ray after the bags so that it does not take a bag as its address")


def build_models(args: argparse.Namespace, config: SegmenterConfig,
                 factory: Callable[[SegmenterConfig], Any] | None) -> list[Any]:
    """Model A (and B with --compare) as :class:`~bisenet_ros.evaluation.job.ModelSpec`.

    Raises:
        ValueError: No weights (random weights differ in every worker), or a bad B option.
        OSError: A weights file cannot be read.
    """
    from bisenet_ros.evaluation.job import ModelSpec, model_key
    from bisenet_ros.inference.weights import resolve_config

    if factory is None and not config.weights:
        raise ValueError("evaluate needs --weights (or weights in --config): random weights differ "
                         "in every worker process, so their figures would mean nothing")
    for weights in (config.weights, args.compare):
        if weights and not Path(weights).is_file():
            raise ValueError(f"weights file {weights} does not exist")
    # Each file supplies what it describes (an .onnx also its backend unless one is given), so
    # `--weights fp32.onnx --compare int8.onnx` works as written; B takes A's options, not the
    # values A's file supplied. An injected factory builds its engines from the options as given.
    resolve = resolve_config if factory is None else (lambda given: given)
    config_a = resolve(config)
    models = [ModelSpec(f"A ({Path(config.weights).name if config.weights else 'engine'})", config_a,
                        model_key(config_a, factory), factory)]
    if args.compare:
        changes = {"weights": args.compare, "backend": args.compare_backend,
                   "precision": args.compare_precision, "variant": args.compare_variant}
        config_b = resolve(config.replace(**{k: v for k, v in changes.items() if v is not None}))
        models.append(ModelSpec(f"B ({Path(args.compare).name})", config_b,
                                model_key(config_b, factory), factory))
    return models


def run(args: argparse.Namespace, *, engine_factory: Callable[[SegmenterConfig], Any] | None = None) -> int:
    """Run the evaluation; returns the exit status (see the module docstring).

    Args:
        args: Parsed arguments from :func:`add_arguments`.
        engine_factory: Builds an engine from a config (default: :class:`bisenet_ros.inference.Segmenter`);
            tests inject a module-level fake here (it must be importable by the worker processes).
    """
    from bisenet_ros.evaluation.bags import NoBagsError
    from bisenet_ros.evaluation.fleet import (
        DEFAULT_REGRESSION_POINTS, EngineError, FleetOptions, evaluate_fleet,
    )
    from bisenet_ros.evaluation.job import EvalSettings
    from bisenet_ros.evaluation.runners import RayError

    try:
        config = config_from_args(args)
        fields, config = output_bag_fields(args, config)
        check_run_arguments(args)
        if args.jobs < 1:
            raise ValueError(f"--jobs {args.jobs}: expected 1 or more")
        address = _ray_address(args.ray)
        models = build_models(args, config, engine_factory)
    except (ValueError, OSError) as err:
        return _error(str(err))
    settings = EvalSettings(
        image_topic=args.image_topic, labels_topic=args.labels_topic, labels_dir=args.labels_dir,
        labels_match=args.labels_match, label_tolerance_ms=args.label_tolerance_ms,
        max_frames=args.max_frames, queue_size=args.queue_size, output_dir=args.output_dir,
        replay=dict(fields, overwrite=args.overwrite) if args.output_dir else {})
    threshold = (args.fail_on_regression if args.fail_on_regression is not None
                 else args.regression_threshold if args.regression_threshold is not None
                 else DEFAULT_REGRESSION_POINTS)
    options = FleetOptions(
        bags=args.bags, settings=settings, report_dir=Path(args.report) if args.report else None,
        jobs=args.jobs, ray=args.ray is not None, ray_address=address, threads=config.num_threads,
        regression_points=threshold, progress=args.progress)
    # SIGTERM (a job scheduler's stop) ends the run as Ctrl-C does: workers stopped, finished
    # bags kept for the next run, the report written for them.
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        result = evaluate_fleet(options, models)
    except (NoBagsError, FileNotFoundError, ValueError, EngineError, RayError) as err:
        # ClassSetMismatch and unknown drivable class names are ValueErrors: user errors found
        # before any bag ran, so nothing was written.
        return _error(str(err))
    finally:
        signal.signal(signal.SIGTERM, previous)
    if options.report_dir is not None:
        from bisenet_ros.evaluation.report import write_report

        print(f"report: {write_report(result, options.report_dir)}")
    print_summary(result)
    return result.exit_code(fail_on_regression=args.fail_on_regression is not None)


def print_summary(result: Any) -> None:
    """The console summary: aggregate figures, failed bags, regressions."""
    from bisenet_ros.evaluation.report import threads_text

    fps = result.throughput_fps()
    cached = sum(b.cached for b in result.bags)
    print(f"bags: {len(result.counted)} counted, {len(result.failed)} failed"
          + (f", {cached} from an earlier run" if cached else "")
          + f"; {result.frames_processed()} frames" + (f"; {fps:.2f} frames/s" if fps else "")
          + f" ({result.runner}, {threads_text(result.threads)})")
    for summary in result.models:
        cm = summary.confusion
        if cm is None and result.counted:
            print(f"model {summary.name}: no ground truth (give --labels-topic or --labels-dir)")
            continue
        if cm is None:
            continue
        print(f"model {summary.name}: {metrics_text(cm)}")
    comparison = result.comparison()
    if comparison is not None:
        d = comparison["disagreement"]
        if d["rate"] is not None:
            print(f"A and B disagree on {d['rate'] * 100:.3f}% of the pixels")
        for line in comparison["regressions"]:
            print(f"regression: {line}", file=sys.stderr)
    for bag in result.bags:
        if bag.status == "damaged":
            print(f"damaged bag {bag.bag} (counted up to the damage): {bag.reason}", file=sys.stderr)
        elif not bag.counts:
            print(f"not evaluated: {bag.bag}: {bag.reason}", file=sys.stderr)
    if result.interrupted:
        print("interrupted: run the same command again to evaluate the remaining bags",
              file=sys.stderr)


def main(argv: Sequence[str] | None = None, **kwargs: Any) -> int:
    """Entry point for ``python -m bisenet_ros.commands.evaluate`` (same as ``bisenet-ros evaluate``)."""
    parser = argparse.ArgumentParser(prog="bisenet-ros evaluate", description=__doc__.splitlines()[0])
    add_arguments(parser)
    return run(parser.parse_args(argv), **kwargs)


if __name__ == "__main__":
    sys.exit(main())
