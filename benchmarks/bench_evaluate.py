"""Fleet evaluation throughput: ``--jobs 1`` against ``--jobs 2`` against a local Ray cluster.

Targets (issue 13), on a 2-core machine with 6 bags: ``--jobs 2`` reaches at least 1.6x the
throughput of ``--jobs 1`` with inference on one thread per worker, and a local Ray cluster
(2 CPUs) is within 15% of ``--jobs 2``; the aggregated metrics are identical, bit for bit.

Method: 6 bags of ``--frames`` synthetic camera frames with ground truth and a random-weight
checkpoint are written once. ``bisenet-ros evaluate`` (its library entry point) then runs the
three ways, one after the other, all with ``--num-threads 1`` (one engine thread per worker;
in process the replay's reader and writer threads still overlap with inference). Two throughputs
per way, both frames / seconds:

* end to end: the run phase's wall time (first bag dispatched to last result), which includes
  starting the worker processes, importing torch and building the engine in each worker (a
  constant of a few seconds per run, whatever the fleet's size); it excludes planning (hashing
  and opening the bags, the same for all three);
* processing: from the first bag's start to the last bag's end as stamped by the workers (the
  steady state a fleet of hundreds of bags sees). The targets are judged on this one; both are
  recorded.

The Ray cluster is started before its run, as ``--ray ADDRESS`` finds a running one; its start
time is reported apart. The load average before and after is recorded: other processes on the
machine take cores from the workers. Not a test: run it by hand on an otherwise idle machine.

    nice .venv/bin/python benchmarks/bench_evaluate.py --frames 80 \\
        --json benchmarks/results/evaluate_jobs_ray.json
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run from a clone without installing
    sys.path.insert(0, str(ROOT))

from bench_replay import synthetic_drive  # noqa: E402  (beside this file)

CPU_FLAGS = ("sse4_2", "avx", "avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile",
             "avx_vnni")


def cpu_flags() -> tuple[str, list[str]]:
    """CPU model name and the SIMD flags that matter for inference speed."""
    name, flags = platform.processor() or platform.machine(), set()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as stream:
            for line in stream:
                if line.startswith("model name"):
                    name = line.split(":", 1)[1].strip()
                elif line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    break
    except OSError:
        pass
    return name, [f for f in CPU_FLAGS if f in flags]


def make_fleet(folder: Path, bags: int, frames: int, camera: tuple[int, int], classes: int) -> list[str]:
    from bisenet_ros.replay.bagtools import write_image_bag

    paths = []
    for i in range(bags):
        images = synthetic_drive(frames, *camera, seed=i)
        truth = [np.full(camera[::-1], k % classes, np.uint8) for k in range(frames)]
        paths.append(str(write_image_bag(folder / f"drive_{i}", images, labels=truth)))
    return paths


def make_weights(path: Path, variant: str, classes: int) -> Path:
    import torch

    from bisenet_ros.models import build_model, make_checkpoint

    torch.manual_seed(0)
    model = build_model(variant, num_classes=classes).eval()
    names = [f"class{i}" for i in range(classes)]
    names[0] = "road"
    torch.save(make_checkpoint(model, class_names=names,
                               palette=[[i * 40 % 256] * 3 for i in range(classes)]), path)
    return path


def run(argv: list[str], report: Path) -> dict[str, Any]:
    from bisenet_ros.commands import evaluate

    rc = evaluate.main(argv + ["--report", str(report), "--no-progress"])
    if rc != 0:
        raise SystemExit(f"bisenet-ros evaluate exited with {rc}")
    return json.loads((report / "metrics.json").read_text())


def report_line(name: str, data: dict[str, Any], extra: str = "") -> None:
    run_ = data["run"]
    frames = data["bags"]["frames_processed"]
    print(f"{name}: end to end {run_['throughput_fps']:.2f} frames/s ({run_['wall_s']:.1f} s), "
          f"processing {frames / run_['processing_span_s']:.2f} frames/s "
          f"({run_['processing_span_s']:.1f} s){extra}")


def main(args: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bags", type=int, default=6)
    parser.add_argument("--frames", type=int, default=80, help="frames per bag")
    parser.add_argument("--camera", default="640x360", help="camera frame size WxH")
    parser.add_argument("--resolution", default="512x256", help="network input WxH")
    parser.add_argument("--variant", default="stdc1")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    opts = parser.parse_args(args)
    warnings.filterwarnings("ignore")
    from bisenet_ros.evaluation.runners import available_cores, connect_ray

    cpu, flags = cpu_flags()
    load_before = os.getloadavg()
    print(f"CPU: {cpu}; {available_cores()} cores; flags: {' '.join(flags)}; load average "
          f"{load_before[0]:.2f} (other processes take cores from the workers)")
    camera = tuple(int(v) for v in opts.camera.split("x"))
    with tempfile.TemporaryDirectory(prefix="bench_evaluate_") as tmp:
        folder = Path(tmp)
        bags = make_fleet(folder / "bags", opts.bags, opts.frames, camera, 4)  # type: ignore[arg-type]
        weights = make_weights(folder / "model.pth", opts.variant, 4)
        base = bags + ["--weights", str(weights), "--variant", opts.variant, "--num-classes", "4",
                       "--resolution", opts.resolution, "--num-threads", "1",
                       "--labels-topic", "/camera/labels"]
        runs: dict[str, dict[str, Any]] = {}
        for name, extra in (("jobs1", []), ("jobs2", ["--jobs", "2"])):
            runs[name] = run(base + extra, folder / name)
            report_line(name, runs[name])
        t0 = time.perf_counter()
        ray, started = connect_ray(None, num_cpus=2)
        ray_start_s = time.perf_counter() - t0
        try:
            runs["ray"] = run(base + ["--ray"], folder / "ray")
        finally:
            if started:
                ray.shutdown()
        report_line("ray", runs["ray"], f"; cluster start {ray_start_s:.1f} s, not counted")
    fps = {name: data["run"]["throughput_fps"] for name, data in runs.items()}
    frames = runs["jobs1"]["bags"]["frames_processed"]
    processing = {name: frames / data["run"]["processing_span_s"] for name, data in runs.items()}
    evaluations = [data["models"][0]["evaluation"] for data in runs.values()]
    identical = all(e == evaluations[0] for e in evaluations)
    summary = {
        "benchmark": "bench_evaluate", "cpu": cpu, "cpu_flags": flags, "cores": available_cores(),
        "bags": opts.bags, "frames_per_bag": opts.frames, "camera": opts.camera,
        "network": f"{opts.variant} {opts.resolution} torch fp32, random weights",
        "threads": "1 engine thread per worker (--num-threads 1); jobs1 in process, jobs2 two "
                   "spawned workers, ray a local 2-CPU cluster with one task per CPU",
        "end_to_end_fps": fps, "wall_s": {n: d["run"]["wall_s"] for n, d in runs.items()},
        "processing_fps": processing,
        "processing_span_s": {n: d["run"]["processing_span_s"] for n, d in runs.items()},
        "ray_cluster_start_s": ray_start_s,
        "load_average_1min": {"before": load_before[0], "after": os.getloadavg()[0]},
        "ratio_jobs2_over_jobs1": processing["jobs2"] / processing["jobs1"],
        "ratio_ray_over_jobs2": processing["ray"] / processing["jobs2"],
        "end_to_end_ratio_jobs2_over_jobs1": fps["jobs2"] / fps["jobs1"],
        "end_to_end_ratio_ray_over_jobs2": fps["ray"] / fps["jobs2"],
        "metrics_bit_identical": identical,
        "targets": {"jobs2_over_jobs1_at_least": 1.6, "ray_within_of_jobs2": 0.15},
    }
    summary["met"] = {"jobs2": summary["ratio_jobs2_over_jobs1"] >= 1.6,
                      "ray": abs(1 - summary["ratio_ray_over_jobs2"]) <= 0.15,
                      "identical": identical}
    print(f"processing: jobs2 / jobs1 {summary['ratio_jobs2_over_jobs1']:.2f}x (target >= 1.6); "
          f"ray / jobs2 {summary['ratio_ray_over_jobs2']:.2f} (target within 15%)")
    print(f"end to end: jobs2 / jobs1 {summary['end_to_end_ratio_jobs2_over_jobs1']:.2f}x; ray / "
          f"jobs2 {summary['end_to_end_ratio_ray_over_jobs2']:.2f}; metrics bit-identical: {identical}")
    if opts.json:
        opts.json.parent.mkdir(parents=True, exist_ok=True)
        opts.json.write_text(json.dumps(summary, indent=2) + "\n")
        print(f"written {opts.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
