"""``python -m training export``: a trained run -> the ONNX file the inference engine runs.

The export itself is :func:`bisenet_ros.inference.export.export_onnx` (metadata embedded: variant,
classes, palette, normalization, input size), so the file is exactly what ``bisenet-ros export``
writes; this command only knows where a run keeps its checkpoint and class list.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from training.evaluate import resolve_checkpoint


def export_run(target: str | Path, output: str | Path, *, size: tuple[int, int] | None = None,
               argmax: bool = True, confidence: bool = False, dynamic: bool = False, verify: bool = True
               ) -> dict[str, Any]:
    """Export a run directory (best.pth, else last.pth) or a training checkpoint to ONNX.

    Args:
        target: run directory or checkpoint file.
        output: the .onnx file to write.
        size: network input (width, height); default: the checkpoint's ``input_size`` (the size the
            run is evaluated at), else the training crop.
        argmax, confidence, dynamic: as in :func:`bisenet_ros.inference.export.export_onnx_bytes`.
        verify: compare ONNX Runtime with torch on a random input (raises if labels disagree).

    Returns:
        ``{"checkpoint", "output", "size", "agreement"}``.
    """
    from bisenet_ros.fileio import write_atomic
    from bisenet_ros.inference.export import export_onnx_bytes, verify_export
    from bisenet_ros.labels import cityscapes, make_class_set
    from bisenet_ros.models import build_model, read_checkpoint

    ckpt_path = resolve_checkpoint(target)
    ckpt = read_checkpoint(ckpt_path)
    if not isinstance(ckpt, dict) or ckpt.get("format") != "bisenet_ros":
        raise ValueError(f"{ckpt_path}: not a bisenet_ros checkpoint; use `bisenet-ros export` for published files")
    model = build_model(ckpt["variant"], int(ckpt["num_classes"]), weights=ckpt_path)
    if ckpt.get("class_names"):
        class_set = make_class_set(ckpt["class_names"], ckpt.get("palette"), name=Path(ckpt_path).parent.name)
    else:
        class_set = cityscapes()
    if size is None and ckpt.get("input_size"):
        size = (int(ckpt["input_size"][0]), int(ckpt["input_size"][1]))  # the size the run was scored at
    if size is None:  # checkpoints written before input_size: the training crop
        crop = (ckpt.get("config") or {}).get("data", {}).get("crop") or [512, 1024]
        size = (int(crop[1]), int(crop[0]))
    data, info = export_onnx_bytes(model, resolution=size, class_set=class_set, argmax=argmax,
                                   confidence=confidence, dynamic=dynamic)
    agreement = None
    if verify:
        agreement = verify_export(model, data, info)
        if argmax and agreement < 0.999:
            raise SystemExit(f"export check failed: ONNX Runtime agrees with torch on only {100 * agreement:.2f}% "
                             "of the pixels")
    output = Path(output)
    write_atomic(output, data)  # as `bisenet-ros export`: an interrupted export leaves no truncated .onnx
    return {"checkpoint": str(ckpt_path), "output": str(output), "size": list(size), "agreement": agreement}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``python -m training export``."""
    parser.add_argument("target", help="run directory (uses best.pth, else last.pth) or checkpoint file")
    parser.add_argument("-o", "--out", required=True, help="output .onnx file")
    parser.add_argument("--size", help="network input WIDTHxHEIGHT (default: the size the run is evaluated at, "
                        "stored in the checkpoint as input_size)")
    parser.add_argument("--no-argmax", dest="argmax", action="store_false",
                        help="output logits instead of uint8 labels")
    parser.add_argument("--confidence", action="store_true", help="also output the max softmax probability")
    parser.add_argument("--dynamic", action="store_true", help="dynamic input height/width")
    parser.add_argument("--no-verify", dest="verify", action="store_false",
                        help="skip the ONNX Runtime vs torch comparison")


def run(args: argparse.Namespace) -> int:
    """Entry point of ``python -m training export``."""
    from training.synth import parse_size

    size = parse_size(args.size) if args.size else None
    result = export_run(args.target, args.out, size=size, argmax=args.argmax, confidence=args.confidence,
                        dynamic=args.dynamic, verify=args.verify)
    check = "" if result["agreement"] is None else f"; ONNX Runtime agrees on {100 * result['agreement']:.2f}% of pixels"
    print(f"exported {result['checkpoint']} at {result['size'][0]}x{result['size'][1]} to {result['output']}{check}",
          file=sys.stderr)
    return 0
