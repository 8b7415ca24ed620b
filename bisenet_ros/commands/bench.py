"""``bisenet-ros bench``: backends and post-processing against the reference pipeline, in one run.

    bisenet-ros bench --variants bisenetv2,stdc1 --backends onnxruntime,openvino --markdown table.md
    bisenet-ros bench --cameras 2,4 --variants stdc1,bisenetv2 --precisions fp32,int8 --camera 1024x512

What is measured and how: :mod:`bisenet_ros.benchmark`; with ``--cameras``, N separate
single-camera processes against one batched process: :mod:`bisenet_ros.benchmark_multicam`.
Results: a table on stdout, JSON (``--output``) and optionally a markdown table (``--markdown``).
"""
from __future__ import annotations

import argparse
import json
import os

from bisenet_ros.benchmark import BenchOptions, format_table, run_benchmark
from bisenet_ros.benchmark_multicam import MulticamOptions, format_multicam_table, run_multicam
from bisenet_ros.config import parse_resolution

DEFAULT_OUTPUT = os.path.join("bench_results", "bench.json")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``bisenet-ros bench``."""
    parser.add_argument("--variants", default=None,
                        help="comma-separated model variants (default: the --weights file's, else bisenetv2)")
    parser.add_argument("--backends", default="torch,onnxruntime,openvino", help="comma-separated backends")
    parser.add_argument("--precisions", default=None,
                        help="comma-separated precisions; combinations a backend/CPU lacks are reported "
                             "as unavailable (default fp32,bf16,int8; with --cameras fp32,int8)")
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
    multicam = parser.add_argument_group(
        "several cameras (--cameras)", "N separate single-camera processes against one batched process; "
        "uses --variants, --precisions (fp32, int8), --weights, --int8, --camera, --resolution, --rounds "
        "and the first ONNX backend of --backends (onnxruntime or openvino)")
    multicam.add_argument("--cameras", default=None, metavar="N[,N...]",
                          help="compare at these camera counts, e.g. 2,4 (instead of the backend table)")
    multicam.add_argument("--rate", type=float, default=10.0,
                          help="frames/s every camera publishes; above what the machine processes (default 10)")
    multicam.add_argument("--duration", type=float, default=20.0, help="seconds counted per side (default 20)")
    multicam.add_argument("--settle", type=float, default=5.0,
                          help="seconds of publishing before counting (warm-up; default 5)")
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


def _onnx_backend(value: str) -> str:
    # The default list starts with torch, which cannot run side by side in one process.
    names = _names(value)
    return next((name for name in names if name != "torch"), names[0] if names else "")


def _camera_counts(value: str) -> list[int]:
    try:
        return [int(name) for name in _names(value)]
    except ValueError:
        raise ValueError(f"--cameras {value!r}: expected camera counts, e.g. 2,4") from None


def run(args: argparse.Namespace) -> int:
    """Entry point of ``bisenet-ros bench``."""
    if args.cameras is not None:
        return _run_multicam(args)
    variants, network = _model(args)
    options = BenchOptions(
        variants=variants, backends=_names(args.backends), precisions=_names(args.precisions or "fp32,bf16,int8"),
        device=args.device, weights=args.weights, camera=parse_resolution(args.camera),
        network=network, resize=args.resize, frames=args.frames,
        warmup=args.warmup, rounds=args.rounds, num_threads=args.num_threads, baseline=args.baseline,
        int8=args.int8)
    report = run_benchmark(options)
    return _write(report, format_table(report), args)


def _run_multicam(args: argparse.Namespace) -> int:
    variants, network = _model(args)
    options = MulticamOptions(
        cameras=_camera_counts(args.cameras), variants=variants,
        precisions=_names(args.precisions or ("fp32,int8" if args.device == "cpu" else "fp32")),
        backend=_onnx_backend(args.backends), device=args.device, weights=args.weights,
        int8=args.int8, camera=parse_resolution(args.camera), network=network,
        rate_hz=args.rate, settle_s=args.settle, duration_s=args.duration, rounds=args.rounds)
    report = run_multicam(options)
    return _write(report, format_multicam_table(report), args)


def _write(report: dict, table: str, args: argparse.Namespace) -> int:
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    with open(args.output, "w", encoding="utf-8") as stream:
        json.dump(report, stream, indent=2)
    print(table)
    print(f"wrote {args.output}")
    if args.markdown:
        with open(args.markdown, "w", encoding="utf-8") as stream:
            stream.write(table + "\n")
        print(f"wrote {args.markdown}")
    return 0
