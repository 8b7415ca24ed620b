"""``bisenet-ros export``: export a model to ONNX with its metadata embedded.

    bisenet-ros export --variant stdc1 --weights model_maxmIOU50.pth --resolution 1024x512 -o stdc1.onnx
    bisenet-ros export --weights runs/camvid/best.pth -o camvid.onnx   # the run's variant, classes, size
    bisenet-ros export --variant stdc1 --weights model_maxmIOU50.pth --batch dynamic --max-batch 4

The file format (metadata, graph outputs) is described in :mod:`bisenet_ros.inference.export`.
"""
from __future__ import annotations

import argparse
import sys

from bisenet_ros.fileio import write_atomic
from bisenet_ros.inference.export import DEFAULT_MAX_BATCH, DEFAULT_OPSET, export_onnx_bytes, verify_export


def parse_batch(text: str) -> int | None:
    """``--batch``: a frame count >= 1, or ``dynamic`` (None)."""
    if text.strip().lower() == "dynamic":
        return None
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a frame count >= 1 or 'dynamic', got {text!r}")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``bisenet-ros export``."""
    from bisenet_ros.config import SegmenterConfig

    helps = {f: SegmenterConfig.__dataclass_fields__[f].metadata["help"]
             for f in ("variant", "weights", "num_classes", "class_set", "resolution")}
    parser.add_argument("--config", help="YAML file with segmenter options (variant, weights, ...)")
    parser.add_argument("--variant", help=helps["variant"] + " (default: bisenetv2)")
    parser.add_argument("--weights", help=helps["weights"].replace(" or exported .onnx file", ""))
    parser.add_argument("--num-classes", dest="num_classes", help=helps["num_classes"])
    parser.add_argument("--class-set", dest="class_set", help=helps["class_set"])
    parser.add_argument("--resolution", help=helps["resolution"] + " Fixed in the exported file "
                        "unless --dynamic (default: a training checkpoint's own size, else 1024x512)")
    parser.add_argument("-o", "--output", help="output .onnx file (default: <variant>_<W>x<H>.onnx)")
    parser.add_argument("--no-argmax", dest="argmax", action="store_false",
                        help="output the logits instead of uint8 labels (slower: argmax on the host)")
    parser.add_argument("--confidence", action="store_true",
                        help="also output the per-pixel confidence (max softmax probability)")
    parser.add_argument("--dynamic", action="store_true",
                        help="dynamic input height/width (TensorRT and OpenVINO run fastest with fixed sizes)")
    parser.add_argument("--batch", type=parse_batch, default=1, metavar="N|dynamic",
                        help="frames per run: a fixed N (e.g. the number of cameras) or 'dynamic' "
                             "(any batch; TensorRT builds for 1 to --max-batch). Default 1")
    parser.add_argument("--max-batch", dest="max_batch", type=int,
                        help="with --batch dynamic: the largest batch meant, the TensorRT optimization "
                             f"profile's opt and max (default {DEFAULT_MAX_BATCH})")
    parser.add_argument("--opset", type=int, default=DEFAULT_OPSET, help=f"ONNX opset (default {DEFAULT_OPSET})")
    parser.add_argument("--no-verify", dest="verify", action="store_false",
                        help="skip comparing ONNX Runtime with PyTorch after export")


def run(args: argparse.Namespace) -> int:
    """Entry point of ``bisenet-ros export``."""
    from bisenet_ros.config import SegmenterConfig
    from bisenet_ros.inference.segmenter import load_torch_model, resolve_class_set
    from bisenet_ros.inference.weights import is_onnx, resolve_config

    overrides = {k: getattr(args, k) for k in ("variant", "weights", "num_classes", "class_set", "resolution")
                 if getattr(args, k, None) is not None}
    if args.config:
        config = SegmenterConfig.from_yaml(args.config, **overrides)
    else:
        config = SegmenterConfig.from_dict(overrides)
    if is_onnx(config.weights):
        raise ValueError(f"--weights {config.weights}: already an ONNX file; give a .pth checkpoint")
    # A training checkpoint supplies its variant, classes and size (unless given).
    config = resolve_config(config)
    model = load_torch_model(config)
    class_set = resolve_class_set(config, model)
    data, info = export_onnx_bytes(model, resolution=config.resolution, class_set=class_set,
                                   argmax=args.argmax, confidence=args.confidence,
                                   dynamic=args.dynamic, batch=args.batch, max_batch=args.max_batch,
                                   opset=args.opset)
    width, height = config.resolution
    output = args.output or f"{config.variant}_{width}x{height}.onnx"
    if args.verify:
        # Checked before anything is written: a file that does not reproduce PyTorch is never left.
        score = verify_export(model, data, info)
        if info.argmax_in_graph:
            print(f"verified with onnxruntime: labels agree with PyTorch on {score * 100:.3f}% of pixels")
            ok = score >= 0.999
        else:
            print(f"verified with onnxruntime: max |logits difference| vs PyTorch = {score:.2e}")
            ok = score <= 1e-3
        if not ok:
            print(f"bisenet-ros export: error: ONNX Runtime does not reproduce PyTorch; {output} was "
                  "not written", file=sys.stderr)
            return 1
    write_atomic(output, data)  # an interrupted export never leaves a truncated .onnx behind
    batch = f"dynamic batch (up to {info.max_batch})" if info.batch is None else f"batch {info.batch}"
    print(f"wrote {output} ({len(data) / 1e6:.1f} MB): {info.variant}, {info.num_classes} classes, "
          f"input {'dynamic' if info.input_size is None else f'{width}x{height}'}, {batch}, "
          f"outputs {', '.join(info.outputs)}")
    return 0
