"""``bisenet-ros replay INPUT_BAG --output OUTPUT_BAG [options]``: replay a bag through the engine.

Examples::

    # Humble (.db3) or Iron+ (.mcap) bag in, MCAP bag with the node's topics out
    bisenet-ros replay drive_bag --output drive_seg --variant stdc1 --weights stdc1.pth \\
        --resolution 1024x512 --report drive_report

    # the node's own parameter file, ground truth in the bag, Humble output
    bisenet-ros replay drive_bag -o drive_seg --config config/stdc1.yaml \\
        --labels-topic /camera/labels --storage sqlite3 --report drive_report

Exit status: 0 done; 1 the input bag is damaged (everything readable was processed and the
output bag is valid), a fatal error stopped the run, or no camera message could be decoded;
2 a user error (options, paths, topics, weights, class names: the same status
as every command; nothing is left behind);
128 + N when stopped by signal N (130 for Ctrl-C, 143 for SIGTERM), with the output bag closed
and holding every frame processed until then.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Callable, Sequence

from bisenet_ros.config import SegmenterConfig, add_config_arguments, config_from_args
from bisenet_ros.runtime import USER_ERROR_STATUS

COLOR_ENCODINGS = ("bgr8", "rgb8")
CONFIDENCE_ENCODINGS = ("32FC1", "mono8")
IMAGE_OUTPUTS = ("mask", "color_mask", "overlay", "drivable_mask", "confidence")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Declare the replay's options (the engine's come from :mod:`bisenet_ros.config`)."""
    parser.add_argument("input", metavar="INPUT_BAG",
                        help="input bag: a rosbag2 directory (sqlite3 or MCAP) or a .db3/.mcap file")
    parser.add_argument("--output", "-o", required=True, metavar="OUTPUT_BAG",
                        help="output bag directory to create")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an existing output bag and report")
    add_bag_arguments(parser)
    gt = parser.add_argument_group("evaluation")
    gt.add_argument("--report", metavar="DIR",
                    help="write report.html, metrics.json and frames.csv into DIR")
    add_ground_truth_arguments(gt)
    add_grid_arguments(parser)
    run_group = parser.add_argument_group("run")
    add_run_arguments(run_group)
    run_group.add_argument("--samples", type=int, default=6,
                           help="sample overlays in the report (default 6)")
    add_engine_arguments(parser)


def add_bag_arguments(parser: argparse.ArgumentParser) -> None:
    """The camera topic and what an output bag holds (shared with ``bisenet-ros evaluate``)."""
    parser.add_argument("--image-topic", help="camera topic (sensor_msgs/Image or CompressedImage); "
                        "default: the bag's only image topic")
    parser.add_argument("--storage", choices=("mcap", "sqlite3"), default="mcap",
                        help="output storage: mcap (default; ROS 2 Iron and later) or sqlite3 "
                        "(Humble's default)")
    parser.add_argument("--namespace", default="", help="namespace of the simulated node, e.g. /front")
    parser.add_argument("--node-name", default=None,
                        help="name of the simulated node (default: segmentation, as the node); "
                        "topics are <namespace>/<node-name>/<output>")
    parser.add_argument("--outputs", default=None,
                        help="comma-separated image outputs to write, from "
                        f"{', '.join(IMAGE_OUTPUTS)} (default: all but confidence; mask always)")
    parser.add_argument("--publish-confidence", action="store_true", default=None,
                        help="also write ~/confidence (turns the engine's confidence on), "
                        "as the node's publish_confidence")
    parser.add_argument("--color-mask-encoding", choices=COLOR_ENCODINGS, default=None,
                        help="encoding of color_mask and overlay (default bgr8, as the node)")
    parser.add_argument("--confidence-encoding", choices=CONFIDENCE_ENCODINGS, default=None,
                        help="encoding of confidence (default 32FC1, as the node)")
    parser.add_argument("--copy-input", action="store_true",
                        help="copy every input topic to the output bag unchanged")
    parser.add_argument("--copy-topic", action="append", default=[], metavar="TOPIC",
                        help="copy this input topic to the output bag (repeatable)")


def add_ground_truth_arguments(group: Any) -> None:
    """Where the ground truth comes from (shared with ``bisenet-ros evaluate``)."""
    group.add_argument("--labels-topic", help="ground truth topic: mono8 trainId masks (255 = ignore) "
                       "with the camera frames' header stamps")
    group.add_argument("--labels-dir", help="ground truth folder (Cityscapes-style "
                       "*_gtFine_labelTrainIds.png, or trainId PNGs)")
    group.add_argument("--labels-match", choices=("auto", "timestamp", "order"), default="auto",
                       help="how --labels-dir files are matched to frames (auto: by the timestamp in "
                       "the file names when they all have one, else by order)")
    group.add_argument("--label-tolerance-ms", type=float, default=1.0,
                       help="largest stamp difference for timestamp matching (default 1 ms)")


def add_run_arguments(group: Any) -> None:
    """Frames, progress and buffering (shared with ``bisenet-ros evaluate``)."""
    group.add_argument("--max-frames", type=int, default=None,
                       help="stop after this many camera messages")
    group.add_argument("--progress", dest="progress", action="store_true", default=None,
                       help="show the progress bar (default: when stderr is a terminal)")
    group.add_argument("--no-progress", dest="progress", action="store_false")
    group.add_argument("--queue-size", type=int, default=4,
                       help="frames buffered between the reader, engine and writer threads")


def add_engine_arguments(parser: argparse.ArgumentParser) -> None:
    engine = parser.add_argument_group(
        "engine (the node's parameters; --config reads the node's YAML parameter file)")
    add_config_arguments(engine)


def add_grid_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of the bird's-eye drivable grid (``.../drivable_grid``; see docs/replay.md)."""
    group = parser.add_argument_group(
        "drivable grid (written whenever the bag's camera_info and tf, or these options, give a "
        "camera model and pose; grid_* keys of --config are read too)")
    group.add_argument("--camera-info", metavar="YAML", type=Path,
                       help="camera_calibration YAML file (wins over the bag's camera_info)")
    group.add_argument("--camera-pose", nargs=6, type=float,
                       metavar=("X", "Y", "Z", "ROLL", "PITCH", "YAW"),
                       help="camera body pose in the grid frame, metres and radians (pitch > 0 "
                       "looks down; wins over the bag's /tf_static and /tf)")
    group.add_argument("--grid-frame", help="grid frame (default base_link)")
    group.add_argument("--grid-resolution", type=float, help="cell size, m (default 0.1)")
    group.add_argument("--grid-extent", nargs=4, type=float,
                       metavar=("X_MIN", "X_MAX", "Y_MIN", "Y_MAX"),
                       help="grid extent in the grid frame, m (default 0 40 -20 20)")
    group.add_argument("--grid-max-range", type=float, help="unknown beyond this range, m "
                       "(default 30)")
    group.add_argument("--grid-ground-height", type=float, help="ground plane z, m (default 0)")
    group.add_argument("--rectified", action="store_true", default=None,
                       help="the images are rectified: project with CameraInfo P")
    group.add_argument("--no-grid", action="store_true", help="write no drivable grid")


def _grid_options(args: argparse.Namespace) -> Any:
    """The grid parameters: the node's (``--config``) with the command line winning."""
    from bisenet_ros.pipeline import GRID_PARAMETERS, grid_options_from_parameters

    values = _config_file_values(args, [spec.name for spec in GRID_PARAMETERS])
    extent = getattr(args, "grid_extent", None) or [None] * 4
    for key, value in (("grid_frame", args.grid_frame), ("grid_resolution", args.grid_resolution),
                       ("grid_x_min", extent[0]), ("grid_x_max", extent[1]),
                       ("grid_y_min", extent[2]), ("grid_y_max", extent[3]),
                       ("grid_max_range", args.grid_max_range),
                       ("grid_ground_height", args.grid_ground_height),
                       ("rectified_input", args.rectified)):
        if value is not None:
            values[key] = value
    values["use_static_camera_pose"] = False  # the replay's pose fallback is --camera-pose
    return grid_options_from_parameters(values)


def _config_file_values(args: argparse.Namespace, keys: list[str]) -> dict[str, Any]:
    """The values of ``keys`` in the --config file (a node parameter file), if any."""
    if not getattr(args, "config", None):
        return {}
    import yaml

    from bisenet_ros.config import unwrap_ros_parameters

    with open(args.config, encoding="utf-8") as stream:
        data = yaml.safe_load(stream) or {}
    if not isinstance(data, dict):
        return {}
    data = unwrap_ros_parameters(data)
    return {key: data[key] for key in keys if key in data}


def _node_options(args: argparse.Namespace) -> dict[str, Any]:
    """Node-only options from --config (a node parameter file) with the command line winning."""
    values = _config_file_values(
        args, ["publish_confidence", "color_mask_encoding", "confidence_encoding"])
    for key in ("publish_confidence", "color_mask_encoding", "confidence_encoding", "node_name"):
        if getattr(args, key, None) is not None:
            values[key] = getattr(args, key)
    return values


def output_bag_fields(args: argparse.Namespace,
                      config: SegmenterConfig) -> tuple[dict[str, Any], SegmenterConfig]:
    """The :class:`ReplayOptions` fields of the output bag (from :func:`add_bag_arguments`),
    and the config with confidence turned on when the bag gets ~/confidence.

    Raises:
        ValueError: An option value is invalid.
    """
    from bisenet_ros.replay.pipeline import DEFAULT_OUTPUTS
    from bisenet_ros.replay.writer import DEFAULT_NODE_NAME

    node = _node_options(args)
    publish_confidence = bool(node.get("publish_confidence", False))
    if args.outputs:
        outputs = tuple(o.strip() for o in args.outputs.split(",") if o.strip())
        unknown = [o for o in outputs if o not in IMAGE_OUTPUTS]
        if unknown:
            raise ValueError(f"--outputs: unknown {', '.join(unknown)}; choose from "
                             f"{', '.join(IMAGE_OUTPUTS)}")
    else:
        outputs = DEFAULT_OUTPUTS + (("confidence",) if publish_confidence else ())
    if "confidence" in outputs and not config.confidence:
        config = config.replace(confidence=True)
    color = str(node.get("color_mask_encoding", "bgr8"))
    confidence_encoding = str(node.get("confidence_encoding", "32FC1"))
    if color not in COLOR_ENCODINGS:
        raise ValueError(f"color_mask_encoding={color!r}: expected bgr8 or rgb8")
    if confidence_encoding not in CONFIDENCE_ENCODINGS:
        raise ValueError(f"confidence_encoding={confidence_encoding!r}: expected 32FC1 or mono8")
    copy: tuple[str, ...] = ("*",) if args.copy_input else tuple(args.copy_topic)
    return {"storage": args.storage, "namespace": args.namespace,
            "node_name": str(node.get("node_name") or DEFAULT_NODE_NAME), "outputs": outputs,
            "color_encoding": color, "confidence_encoding": confidence_encoding,
            "copy_topics": copy}, config


def check_run_arguments(args: argparse.Namespace) -> None:
    """Check the ground-truth and run options (:func:`add_ground_truth_arguments`,
    :func:`add_run_arguments`).

    Raises:
        ValueError: An option value is invalid.
    """
    if args.labels_topic and args.labels_dir:
        raise ValueError("give either --labels-topic or --labels-dir, not both")
    if args.queue_size < 1:
        raise ValueError(f"--queue-size {args.queue_size}: expected 1 or more")
    if args.max_frames is not None and args.max_frames < 1:
        raise ValueError(f"--max-frames {args.max_frames}: expected 1 or more")


def build_options(args: argparse.Namespace, config: SegmenterConfig) -> tuple[Any, SegmenterConfig]:
    """Turn parsed arguments into :class:`ReplayOptions` (and the config, confidence applied).

    Raises:
        ValueError: An option value is invalid (the message says which and how to fix it).
    """
    from bisenet_ros.replay.pipeline import ReplayOptions

    fields, config = output_bag_fields(args, config)
    check_run_arguments(args)
    grid = _grid_options(args)
    options = ReplayOptions(
        input=Path(args.input), output=Path(args.output), image_topic=args.image_topic, **fields,
        labels_topic=args.labels_topic, labels_dir=Path(args.labels_dir) if args.labels_dir else None,
        labels_match=args.labels_match, label_tolerance_ms=args.label_tolerance_ms,
        report_dir=Path(args.report) if args.report else None, overwrite=args.overwrite,
        max_frames=args.max_frames, progress=args.progress, queue_size=args.queue_size,
        samples=args.samples, grid=grid.grid, write_grid=not args.no_grid,
        camera_info_yaml=args.camera_info,
        camera_pose=tuple(args.camera_pose) if args.camera_pose else None,
        rectified_input=grid.rectified_input)
    return options, config


def _error(message: str) -> int:
    print(f"bisenet-ros replay: error: {message}", file=sys.stderr)
    return USER_ERROR_STATUS


def run(args: argparse.Namespace, *, engine_factory: Callable[[SegmenterConfig], Any] | None = None) -> int:
    """Run the replay; returns the exit status (see the module docstring).

    Args:
        args: Parsed arguments from :func:`add_arguments`.
        engine_factory: Builds the engine from the config (default:
            :class:`bisenet_ros.inference.Segmenter`); tests inject a fake here.
    """
    from bisenet_ros.inference.weights import resolve_config
    from bisenet_ros.replay.bag import BagError
    from bisenet_ros.replay.pipeline import open_input

    try:
        # The weights file's own variant, classes and size unless given (cheap: no model built).
        config = resolve_config(config_from_args(args))
        options, config = build_options(args, config)
    except (ValueError, OSError) as err:
        return _error(str(err))
    # Refuse existing outputs before spending time on loading a model.
    if (options.output.exists() or options.output.is_symlink()) and not options.overwrite:
        return _error(f"output {options.output} exists already; pass --overwrite to replace it, "
                      "or choose another path")
    try:
        bag = open_input(options)  # a wrong topic is reported before seconds of model loading
    except (BagError, FileNotFoundError) as err:
        return _error(str(err))
    try:
        return _run_with_bag(options, config, bag, engine_factory)
    finally:
        bag.close()


def _run_with_bag(options: Any, config: SegmenterConfig, bag: Any,
                  engine_factory: Callable[[SegmenterConfig], Any] | None) -> int:
    from bisenet_ros.replay.bag import BagError
    from bisenet_ros.replay.pipeline import OutputError, replay
    from bisenet_ros.replay.report import prepare_report_dir, write_report
    from bisenet_ros.replay.writer import OutputExistsError

    if options.report_dir is not None:
        try:
            prepare_report_dir(options.report_dir, overwrite=options.overwrite)
        except OutputExistsError as err:
            return _error(str(err))
    if engine_factory is None:
        from bisenet_ros.inference import Segmenter as engine_factory  # noqa: N813
    try:
        engine = engine_factory(config)
    except (ImportError, OSError, ValueError, RuntimeError) as err:
        return _error(f"cannot build the segmentation engine: {err}")
    except KeyboardInterrupt:
        print("bisenet-ros replay: interrupted while loading the model; nothing was written",
              file=sys.stderr)
        return 130
    try:
        # The first call initialises the backend lazily (seconds); keep that out of the timings.
        warmup = getattr(engine, "warmup", None)
        if callable(warmup):
            warmup()
        result = replay(options, engine, config=config, bag=bag)
    except (BagError, OutputExistsError, FileNotFoundError, ValueError) as err:
        return _error(str(err))
    except OutputError as err:
        print(f"bisenet-ros replay: error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # before the pipeline started (it handles signals itself)
        print("bisenet-ros replay: interrupted before any frame was processed", file=sys.stderr)
        return 130

    if options.report_dir is not None and not result.hard_stop:
        path = write_report(result, options.report_dir)
        print(f"report: {path}")
    _print_summary(result)
    return result.exit_code


def metrics_text(cm: Any) -> str:
    """mIoU, pixel accuracy and drivable IoU of a confusion matrix, for the console."""
    return ", ".join(f"{k} {v:.4f}" if v is not None else f"{k} n/a"
                     for k, v in (("mIoU", cm.miou()), ("pixel accuracy", cm.pixel_accuracy()),
                                  ("drivable IoU", cm.drivable_iou()))) + f" over {cm.frames} frames"


def _print_summary(result: Any) -> None:
    fps, rtf = result.throughput_fps(), result.real_time_factor()
    print(f"frames: {result.frames_processed} processed of {result.frames_read} read, "
          f"{len(result.corrupt)} corrupt skipped"
          + (f"; {fps:.2f} frames/s" if fps else "")
          + (f", real-time factor {rtf:.2f}x" if rtf else ""))
    if result.confusion is not None:
        print(f"evaluation: {metrics_text(result.confusion)}")
    if result.grid is not None and result.grid.iou() is not None:
        print(f"bird's-eye drivable IoU {result.grid.iou():.4f} over {result.grid.evaluated} frames "
              f"({result.grid.source.grid.resolution:g} m cells in {result.grid.source.grid.frame_id})")
    print(f"output: {result.options.output} ({result.options.storage}"
          + (", closed" if result.output_closed else ", NOT closed") + ")")
    for topic, count in result.output_counts.items():
        print(f"  {topic}: {count}")
    for corrupt in result.corrupt[:5]:
        print(f"skipped image message #{corrupt['index']}: {corrupt['reason']}", file=sys.stderr)
    if len(result.corrupt) > 5:
        print(f"... and {len(result.corrupt) - 5} more (see the report)", file=sys.stderr)
    for warning in result.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    if result.damage:
        print("error: the input bag is damaged; every readable message was processed and the "
              "output bag is valid:", file=sys.stderr)
        for line in result.damage:
            print(f"  {line}", file=sys.stderr)
    if result.fatal:
        print(f"error: {result.fatal}", file=sys.stderr)
    if result.frames_read and not result.frames and not result.interrupted:
        print("error: none of the camera messages could be decoded (see the reasons above); "
              "check --image-topic and the camera's encoding", file=sys.stderr)
    if result.interrupted:
        print(f"stopped by {result.interrupted}: the output bag holds the "
              f"{result.frames_processed} frames processed so far", file=sys.stderr)


def main(argv: Sequence[str] | None = None, **kwargs: Any) -> int:
    """Entry point for ``python -m bisenet_ros.commands.replay`` (same as ``bisenet-ros replay``)."""
    parser = argparse.ArgumentParser(prog="bisenet-ros replay", description=__doc__.splitlines()[0])
    add_arguments(parser)
    return run(parser.parse_args(argv), **kwargs)


if __name__ == "__main__":
    sys.exit(main())
