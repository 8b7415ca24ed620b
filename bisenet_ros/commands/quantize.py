"""``bisenet-ros quantize``: a static int8 (QDQ) model calibrated on your own data.

    bisenet-ros quantize stdc1_1024x512.onnx --calibration drive_bag -o stdc1_int8.onnx
    bisenet-ros quantize model.pth --variant stdc1 --resolution 1024x512 --calibration images/ -o stdc1_int8.onnx
    bisenet-ros quantize runs/camvid/best.pth --calibration images/ -o camvid_int8.onnx   # a training checkpoint

The workflow (sources, held-out quality check, method choice) is :mod:`bisenet_ros.calibration`;
the quantization itself :mod:`bisenet_ros.inference.quantize`.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile

from bisenet_ros.inference.quantize import ACTIVATION_TYPES, CALIBRATION_METHODS
from bisenet_ros.runtime import USER_ERROR_STATUS


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``bisenet-ros quantize``."""
    parser.add_argument("model", help="fp32 .onnx exported by bisenet-ros export, or a .pth checkpoint "
                        "(exported first; a training checkpoint supplies its variant and size, a "
                        "published one needs --variant and --resolution)")
    parser.add_argument("--calibration", required=True, metavar="SOURCE",
                        help="rosbag2 bag, folder of images, or Cityscapes-layout root (ROOT/leftImg8bit/...)")
    parser.add_argument("-o", "--output", required=True, help="int8 .onnx to write (and <stem>.quality.json)")
    parser.add_argument("--frames", type=int, default=200,
                        help="frames sampled evenly over the source, a fifth held out for the quality "
                        "check (default 200)")
    parser.add_argument("--image-topic", dest="image_topic", help="the bag's camera topic (if it has several)")
    parser.add_argument("--labels-topic", dest="labels_topic",
                        help="bag topic with mono8 trainId ground truth: adds the fp32/int8 mIoU to the check")
    parser.add_argument("--check", metavar="SOURCE",
                        help="run the quality check on this source (e.g. a Cityscapes root's validation "
                        "split, see --split) instead of frames held out from --calibration")
    parser.add_argument("--check-frames", dest="check_frames", type=int, default=100,
                        help="frames sampled from --check (default 100)")
    parser.add_argument("--split", help="Cityscapes-layout roots: use this split only (e.g. val); default all")
    parser.add_argument("--method", default="auto", choices=("auto",) + CALIBRATION_METHODS,
                        help="calibration method; auto tries each and keeps the one whose labels agree best "
                        "with fp32 on the check frames")
    parser.add_argument("--activations", default="uint8", choices=ACTIVATION_TYPES,
                        help="uint8 (asymmetric, fastest on x86 CPUs) or int8 (symmetric: needed for TensorRT)")
    parser.add_argument("--resize", default="stretch", choices=("stretch", "letterbox"),
                        help="the engine's resize policy the model will run with (default stretch)")
    parser.add_argument("--variant", help="architecture of a .pth checkpoint (default: the checkpoint's own, "
                        "else bisenetv2)")
    parser.add_argument("--resolution", help="network input WIDTHxHEIGHT for a .pth checkpoint (default: the "
                        "checkpoint's own size, else 1024x512)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output")


def run(args: argparse.Namespace) -> int:
    """Entry point of ``bisenet-ros quantize``."""
    from bisenet_ros.calibration import MIN_FRAMES, CalibrationSource, QuantizeJob, run_quantize

    try:
        if args.frames < MIN_FRAMES:
            raise ValueError(f"--frames {args.frames}: expected at least {MIN_FRAMES} "
                             f"({MIN_FRAMES - 1} to calibrate, 1 to check)")
        source = CalibrationSource(args.calibration, image_topic=args.image_topic, labels_topic=args.labels_topic,
                                   split=args.split)
        check = CalibrationSource(args.check, split=args.split) if args.check else None
        with tempfile.TemporaryDirectory(prefix="bisenet_quantize_") as tmp:
            model = _fp32_onnx(args, tmp)
            run_quantize(QuantizeJob(model=model, source=source, output=args.output, frames=args.frames,
                                     method=args.method, activations=args.activations, resize=args.resize,
                                     overwrite=args.overwrite, check=check, check_frames=args.check_frames))
    except (ValueError, OSError) as exc:  # CalibrationError, CheckpointError included
        print(f"bisenet-ros quantize: error: {exc}", file=sys.stderr)
        return USER_ERROR_STATUS
    return 0


def _fp32_onnx(args: argparse.Namespace, tmp: str) -> str:
    """The model as an fp32 export: the .onnx itself, or a .pth exported into ``tmp``."""
    if args.model.endswith(".onnx"):
        if args.variant or args.resolution:
            raise ValueError("--variant/--resolution are for a .pth checkpoint; an .onnx file carries them")
        if not os.path.isfile(args.model):
            raise ValueError(f"{args.model}: no such ONNX file")
        return args.model
    if not args.model.endswith((".pth", ".pt")):
        raise ValueError(f"{args.model}: expected an exported .onnx or a .pth checkpoint")
    from bisenet_ros.config import SegmenterConfig
    from bisenet_ros.inference.segmenter import export_checkpoint

    options = {"weights": args.model, "variant": args.variant, "resolution": args.resolution}
    config = SegmenterConfig.from_dict({k: v for k, v in options.items() if v is not None})
    return export_checkpoint(config, os.path.join(tmp, "fp32.onnx"))
