"""Issue 19's multi-camera comparison on this machine: N separate single-camera processes against
one batched process, for N = 2 and 4, STDC1 and BiSeNetV2 at 1024x512, onnxruntime fp32 and int8.

What is measured and how: :mod:`bisenet_ros.benchmark_multicam` (``bisenet-ros bench --cameras``).
This script runs the issue's matrix in one run, prints the CPU flags and load average, and writes
the JSON and markdown table to ``benchmarks/results/`` (the table also goes into
``benchmarks/README.md`` by hand). Not a test: run it by hand, on a machine as idle as you can get
(other processes take CPU time per thread, which favours the side with more threads)::

    .venv/bin/python benchmarks/bench_multicam.py                 # about 10 minutes on 2 cores
    .venv/bin/python benchmarks/bench_multicam.py --cameras 4 --variants stdc1 --precisions fp32 --duration 10

Targets (issue 19, N = 4, 2-core CPU): total frames/s batched / separate >= 1.1, total RSS <= 45%,
per-camera p99 latency no worse, processed frames per camera within +-10% of each other.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run from a clone without installing
    sys.path.insert(0, str(ROOT))


def main(argv: list[str] | None = None) -> int:
    from bisenet_ros.benchmark_multicam import MulticamOptions, format_multicam_table, run_multicam
    from bisenet_ros.config import parse_resolution

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cameras", default="2,4")
    parser.add_argument("--variants", default="stdc1,bisenetv2")
    parser.add_argument("--precisions", default="fp32,int8")
    parser.add_argument("--backend", default="onnxruntime")
    parser.add_argument("--camera", default="1024x512", help="camera frame WIDTHxHEIGHT")
    parser.add_argument("--resolution", default="1024x512", help="network input WIDTHxHEIGHT")
    parser.add_argument("--rate", type=float, default=15.0,
                        help="frames/s per camera: above what this machine processes for every configuration")
    parser.add_argument("--settle", type=float, default=5.0)
    parser.add_argument("--duration", type=float, default=20.0)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--name", default="bench_multicam", help="results file stem in benchmarks/results")
    args = parser.parse_args(argv)
    options = MulticamOptions(
        cameras=[int(n) for n in args.cameras.split(",")], variants=args.variants.split(","),
        precisions=args.precisions.split(","), backend=args.backend, camera=parse_resolution(args.camera),
        network=parse_resolution(args.resolution), rate_hz=args.rate, settle_s=args.settle,
        duration_s=args.duration, rounds=args.rounds)
    report = run_multicam(options)
    table = format_multicam_table(report)
    results = ROOT / "benchmarks" / "results"
    results.mkdir(parents=True, exist_ok=True)
    (results / f"{args.name}.json").write_text(json.dumps(report, indent=2) + "\n")
    (results / f"{args.name}.md").write_text(table + "\n")
    print(table)
    print(f"wrote {results / args.name}.json and .md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
