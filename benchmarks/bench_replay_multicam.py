"""Multi-camera replay: one replay of N cameras through one batched engine against N
single-camera replays of the same frames, one after the other, with the same engine.

Method: a bag with ``--cameras`` camera topics (``/cam<i>/image_raw``, synthetic frames, the
same rate) is written once. Then, alternately (so a noisy shared machine affects both sides
alike), ``--repeats`` times:

* batched: :func:`bisenet_ros.replay.pipeline.replay` with ``cameras=(cam0, ...)``: every
  camera's frames through the shared scheduler and ``Segmenter.segment_batch``, one output bag;
* separate: one single-camera replay per camera topic (``image_topic=/cam<i>/image_raw``),
  each writing its own output bag.

Both are timed wall-clock from the first replay's start to the last one's end; the figure is
total frames per second (all cameras) and the ratio batched / separate. CPU flags and the load
average are printed with the figures. Not a test: run it by hand.

    .venv/bin/python benchmarks/bench_replay_multicam.py --cameras 3 --frames 12 \\
        --camera 640x480 --resolution 512x256 --variant stdc1
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
for path in (ROOT, ROOT / "benchmarks"):
    if str(path) not in sys.path:  # run from a clone without installing
        sys.path.insert(0, str(path))

from bench_replay import synthetic_drive  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cameras", type=int, default=3)
    parser.add_argument("--frames", type=int, default=12, help="frames per camera")
    parser.add_argument("--camera", default="640x480", help="camera frame WIDTHxHEIGHT")
    parser.add_argument("--resolution", default="512x256", help="network input WIDTHxHEIGHT")
    parser.add_argument("--variant", default="stdc1")
    parser.add_argument("--backend", default="torch")
    parser.add_argument("--weights", default=None)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = parser.parse_args(argv)

    from bisenet_ros.config import SegmenterConfig, parse_resolution
    from bisenet_ros.inference import Segmenter
    from bisenet_ros.inference.precision import cpu_flags, relevant_flags
    from bisenet_ros.replay.bagtools import image_messages, write_bag
    from bisenet_ros.replay.pipeline import ReplayOptions, replay

    width, height = parse_resolution(args.camera)
    config = SegmenterConfig.from_dict({"variant": args.variant, "resolution": args.resolution,
                                        "backend": args.backend, "weights": args.weights})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "random weights" is expected in a benchmark
        engine = Segmenter(config)
    names = [f"cam{i}" for i in range(args.cameras)]
    workdir = Path(tempfile.mkdtemp(prefix="bench_replay_multicam_"))
    try:
        messages = []
        for i, name in enumerate(names):
            frames = synthetic_drive(args.frames, width, height, seed=i)
            messages += image_messages(frames, topic=f"/{name}/image_raw", fps=10.0,
                                       start_ns=1_700_000_000_000_000_000 + i * 1_000_000)
        bag = write_bag(workdir / "input", sorted(messages, key=lambda m: m.timestamp))
        total = args.cameras * args.frames
        engine(synthetic_drive(1, width, height)[0])  # warm-up: lazy initialisation out of timings

        def run(options: ReplayOptions) -> int:
            shutil.rmtree(options.output, ignore_errors=True)
            result = replay(options, engine, config=config, install_signal_handlers=False)
            assert result.exit_code == 0, result.fatal
            return result.frames_processed

        rows = []
        for repeat in range(args.repeats):
            t0 = time.perf_counter()
            done = run(ReplayOptions(input=bag, output=workdir / "batched", cameras=tuple(names),
                                     progress=False, write_grid=False))
            batched = done / (time.perf_counter() - t0)
            t0 = time.perf_counter()
            done = sum(run(ReplayOptions(input=bag, output=workdir / f"separate_{name}",
                                         image_topic=f"/{name}/image_raw", progress=False,
                                         write_grid=False)) for name in names)
            separate = done / (time.perf_counter() - t0)
            assert done == total
            rows.append({"batched_fps": batched, "separate_fps": separate,
                         "ratio": batched / separate})
            print(f"repeat {repeat + 1}/{args.repeats}: batched {batched:.2f} frames/s, "
                  f"separate {separate:.2f} frames/s, ratio {batched / separate:.3f}", flush=True)
        summary = {
            "config": {"cameras": args.cameras, "frames_per_camera": args.frames,
                       "camera": [width, height], "resolution": list(config.resolution),
                       "variant": config.variant, "backend": config.backend,
                       "batched_call": hasattr(engine, "segment_batch")},
            "machine": {"python": platform.python_version(), "cpu_count": os.cpu_count(),
                        "cpu_flags": relevant_flags(cpu_flags()),
                        "load_average": list(os.getloadavg())},
            "repeats": rows,
            "ratio_median": statistics.median(r["ratio"] for r in rows),
        }
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print(f"\nCPU flags: {' '.join(summary['machine']['cpu_flags'])}; {os.cpu_count()} cores; "
          f"load average {' '.join(f'{v:.2f}' for v in summary['machine']['load_average'])}")
    print(f"batched / separate total frames/s: median {summary['ratio_median']:.3f} over "
          f"{args.repeats} repeats (engine has segment_batch: {summary['config']['batched_call']})")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(summary, indent=2) + "\n")
        print(f"written {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
