"""``bisenet-ros bench``: backends and post-processing against the reference pipeline, in one run.

    bisenet-ros bench --variants bisenetv2,stdc1 --backends onnxruntime,openvino --markdown table.md

What is measured and how: :mod:`bisenet_ros.benchmark`. Results: a table on stdout, JSON
(``--output``) and optionally a markdown table (``--markdown``).
"""
from __future__ import annotations

import argparse
import json
import os
import sys

from bisenet_ros.benchmark import BenchOptions, format_table, run_benchmark
from bisenet_ros.config import parse_resolution
from bisenet_ros.runtime import USER_ERROR_STATUS

DEFAULT_OUTPUT = os.path.join("bench_results", "bench.json")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``bisenet-ros bench``."""
    parser.add_argument("--variants", default=None,
                        help="comma-separated model variants (default: the --weights file's, else bisenetv2)")
    parser.add_argument("--backends", default="torch,onnxruntime,openvino", help="comma-separated backends")
    parser.add_argument("--precisions", default="fp32,bf16,int8",
                        help="comma-separated precisions; combinations a backend/CPU lacks are reported "
                             "as unavailable (default fp32,bf16,int8)")
    parser.add_argument("--int8", default=None, metavar="FILE",
                        help="int8 .onnx (bisenet-ros quantize) for the int8 rows of a single variant; default: "
                             "quantize the benchmarked weights on the fly on generated frames")
    parser.add_argument("--device", default="cpu", help="device for all backends (default cpu)")
    parser.add_argument("--weights", default=None,
                        help="checkpoint (.pth) for the (single) variant; a training checkpoint supplies its "
                        "variant and network size; default random weights")
    parser.add_argument("--camera", default="1920x1080", help="camera frame size WIDTHxHEIGHT (default 1920x1080)")
    parser.add_argument("--resolution", default=None,
                        help="network input WIDTHxHEIGHT (default: the --weights file's size, else 1024x512)")
    parser.add_argument("--resize", default="stretch", choices=("stretch", "letterbox"))
    parser.add_argument("--frames", type=int, default=8, help="timed frames per configuration (default 8)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed frames per process first (default 2)")
    parser.add_argument("--rounds", type=int, default=2,
                        help="split the frames over this many rounds of all configurations, in "
                             "alternating order, against load drift (default 2)")
    parser.add_argument("--num-threads", dest="num_threads", type=int, default=0,
                        help="CPU threads per backend; 0 = backend default")
    parser.add_argument("--no-baseline", dest="baseline", action="store_false", help="skip the reference pipeline")
    parser.add_argument("--output", default=DEFAULT_OUTPUT, help=f"JSON results (default {DEFAULT_OUTPUT})")
    parser.add_argument("--markdown", default=None, help="also write the table as markdown to this file")


def _names(value: str) -> list[str]:
    return [name.strip() for name in value.split(",") if name.strip()]


def _model(args: argparse.Namespace) -> tuple[list[str], tuple[int, int]]:
    """The variants and network size: as given, else the --weights file's, else the defaults.

    Raises:
        ValueError: An option contradicts the weights file, or the file is an .onnx.
    """
    from bisenet_ros.config import SegmenterConfig
    from bisenet_ros.inference.weights import is_onnx, resolve_config

    variants = _names(args.variants) if args.variants else None
    if args.weights:
        if is_onnx(args.weights):
            raise ValueError(f"--weights {args.weights}: bench measures every backend, torch included, from a "
                             ".pth checkpoint (it exports the .onnx itself); give the checkpoint the file "
                             "was exported from")
        given = {"weights": args.weights, "resolution": args.resolution,
                 "variant": variants[0] if variants and len(variants) == 1 else None}
        config = resolve_config(SegmenterConfig.from_dict({k: v for k, v in given.items() if v is not None}))
        return variants or [config.variant], tuple(config.resolution)  # type: ignore[return-value]
    return variants or ["bisenetv2"], parse_resolution(args.resolution or "1024x512")


def run(args: argparse.Namespace) -> int:
    """Entry point of ``bisenet-ros bench``."""
    try:
        variants, network = _model(args)
        options = BenchOptions(
            variants=variants, backends=_names(args.backends), precisions=_names(args.precisions),
            device=args.device, weights=args.weights, camera=parse_resolution(args.camera),
            network=network, resize=args.resize, frames=args.frames,
            warmup=args.warmup, rounds=args.rounds, num_threads=args.num_threads, baseline=args.baseline,
            int8=args.int8)
    except ValueError as exc:
        print(f"bisenet-ros bench: error: {exc}", file=sys.stderr)
        return USER_ERROR_STATUS
    report = run_benchmark(options)
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    with open(args.output, "w", encoding="utf-8") as stream:
        json.dump(report, stream, indent=2)
    table = format_table(report)
    print(table)
    print(f"wrote {args.output}")
    if args.markdown:
        with open(args.markdown, "w", encoding="utf-8") as stream:
            stream.write(table + "\n")
        print(f"wrote {args.markdown}")
    return 0
