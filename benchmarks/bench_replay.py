"""Replay throughput against the engine's own end-to-end throughput on the same frames.

The target (issue 5): ``bisenet-ros replay`` runs at >= 90% of the engine's throughput, because
bag reading, message decoding, output encoding and bag writing overlap with inference (three
threads, bounded queues) instead of adding to it.

Method: a bag of ``--frames`` synthetic camera frames is written once. Then, alternately (so a
noisy shared machine affects both sides alike), ``--repeats`` times:

* engine: the frames, already decoded in memory, through ``Segmenter(frame, color_order,
  outputs)`` one after the other, asking for exactly what the replay asks for;
* replay: :func:`bisenet_ros.replay.pipeline.replay` on the bag with the same Segmenter
  instance, writing a fresh output bag.

Both are timed wall-clock from the first frame to the last (for the replay including closing
the output bag). The ratio replay_fps / engine_fps per pair and its median are reported, plus
the serial estimate (decode + engine + write per frame, what a loop without overlap would
take), and the process CPU time per frame of both sides (on a machine shared with other jobs the
wall-clock figures are noisy; the CPU ratio shows the replay's own extra work). Not a test: run it
by hand.

    .venv/bin/python benchmarks/bench_replay.py --frames 40 --camera 1280x720 \\
        --resolution 1024x512 --variant bisenetv2 --json benchmarks/results/replay.json
"""
from __future__ import annotations

import argparse
import json
import platform
import shutil
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run from a clone without installing
    sys.path.insert(0, str(ROOT))


def synthetic_drive(count: int, width: int, height: int, seed: int = 0) -> list[np.ndarray]:
    """Road-scene-like BGR frames (sky, buildings, road, moving blobs); cheap to make."""
    import cv2

    rng = np.random.default_rng(seed)
    frames = []
    base = np.zeros((height, width, 3), np.uint8)
    base[: height // 3] = (235, 206, 135)  # sky
    base[height // 3: height // 2] = (90, 90, 100)  # buildings
    base[height // 2:] = (128, 64, 128)  # road
    noise = rng.integers(0, 40, (height, width, 3), dtype=np.uint8)
    for i in range(count):
        frame = cv2.add(base, noise)
        x = int((i * 37) % width)
        cv2.circle(frame, (x, height * 2 // 3), height // 10, (30, 30, 200), -1)
        cv2.rectangle(frame, ((x * 3) % width, height // 3), ((x * 3) % width + width // 10,
                      height // 2), (40, 160, 40), -1)
        frames.append(frame)
    return frames


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=40)
    parser.add_argument("--camera", default="1280x720", help="camera frame WIDTHxHEIGHT")
    parser.add_argument("--resolution", default="1024x512", help="network input WIDTHxHEIGHT")
    parser.add_argument("--variant", default="bisenetv2")
    parser.add_argument("--backend", default="torch")
    parser.add_argument("--weights", default=None)
    parser.add_argument("--compressed", choices=("jpeg", "png"), default=None,
                        help="store CompressedImage (decode cost moves into the replay)")
    parser.add_argument("--storage", choices=("mcap", "sqlite3"), default="mcap",
                        help="output storage")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    parser.add_argument("--workdir", type=Path, default=None,
                        help="where the bags go (default: a temporary folder, removed after)")
    args = parser.parse_args(argv)

    from bisenet_ros import codec
    from bisenet_ros.config import SegmenterConfig, parse_resolution
    from bisenet_ros.inference import Segmenter
    from bisenet_ros.outputs import engine_outputs_for
    from bisenet_ros.replay.bagtools import write_image_bag
    from bisenet_ros.replay.messages import deserialize
    from bisenet_ros.replay.pipeline import DEFAULT_OUTPUTS, ReplayOptions, replay

    width, height = parse_resolution(args.camera)
    config = SegmenterConfig.from_dict({"variant": args.variant, "resolution": args.resolution,
                                        "backend": args.backend, "weights": args.weights})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "random weights" is expected in a benchmark
        engine = Segmenter(config)
    outputs = engine_outputs_for(("mask",) + DEFAULT_OUTPUTS)

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="bench_replay_"))
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        frames = synthetic_drive(args.frames, width, height)
        bag = workdir / "input"
        shutil.rmtree(bag, ignore_errors=True)
        write_image_bag(bag, frames, compressed=args.compressed, fps=10.0)
        # The engine side gets the frames exactly as the replay decodes them (same codec).
        from bisenet_ros.replay.bag import InputBag

        decoded = []
        with InputBag(bag) as reader:
            topic = reader.pick_image_topic(None)
            for raw in reader.messages([topic.name]):
                msg = deserialize(raw.data, topic.msgtype)
                decoded.append(codec.decode_compressed(msg) if args.compressed
                               else codec.decode_image(msg))
        engine(*decoded[0], outputs=outputs)  # warm-up: lazy initialisation out of the timings
        engine(*decoded[0], outputs=outputs)

        pairs = []
        last = None
        for repeat in range(args.repeats):
            c0, t0 = time.process_time(), time.perf_counter()
            for frame, order in decoded:
                engine(frame, color_order=order, outputs=outputs)
            engine_s, engine_cpu = time.perf_counter() - t0, time.process_time() - c0
            out = workdir / f"output_{repeat}"
            shutil.rmtree(out, ignore_errors=True)
            c0 = time.process_time()
            result = replay(ReplayOptions(input=bag, output=out, storage=args.storage,
                                          progress=False), engine, config=config,
                            install_signal_handlers=False)
            replay_cpu = time.process_time() - c0  # all threads of this process
            assert result.exit_code == 0 and result.frames_processed == len(decoded), result.exit_code
            engine_fps = len(decoded) / engine_s
            replay_fps = result.throughput_fps() or 0.0
            pairs.append({"engine_fps": engine_fps, "replay_fps": replay_fps,
                          "ratio": replay_fps / engine_fps,
                          "engine_cpu_s_per_frame": engine_cpu / len(decoded),
                          "replay_cpu_s_per_frame": replay_cpu / len(decoded),
                          "cpu_ratio": engine_cpu / replay_cpu})
            print(f"repeat {repeat + 1}/{args.repeats}: engine {engine_fps:.3f} frames/s, "
                  f"replay {replay_fps:.3f} frames/s, ratio {replay_fps / engine_fps:.3f}; "
                  f"CPU s/frame engine {engine_cpu / len(decoded):.3f} replay "
                  f"{replay_cpu / len(decoded):.3f} (ratio {engine_cpu / replay_cpu:.3f})",
                  flush=True)
            shutil.rmtree(out, ignore_errors=True)
            last = result
        assert last is not None
        stage = {}
        for name in ("decode", "engine_call", "write"):
            values = [f.timings[name] for f in last.frames if name in f.timings]
            stage[name] = statistics.median(values) if values else None
        serial_ms = sum(v for v in stage.values() if v)
        summary = {
            "config": {"frames": len(decoded), "camera": [width, height],
                       "resolution": list(config.resolution), "variant": config.variant,
                       "backend": config.backend, "compressed": args.compressed,
                       "output_storage": args.storage, "outputs": sorted(outputs)},
            "machine": {"python": platform.python_version(), "cpu_count": __import__("os").cpu_count(),
                        "platform": platform.platform()},
            "pairs": pairs,
            "engine_fps_median": statistics.median(p["engine_fps"] for p in pairs),
            "replay_fps_median": statistics.median(p["replay_fps"] for p in pairs),
            "ratio_median": statistics.median(p["ratio"] for p in pairs),
            "ratio_min": min(p["ratio"] for p in pairs),
            "cpu_ratio_median": statistics.median(p["cpu_ratio"] for p in pairs),
            "stage_median_ms": stage,
            "serial_estimate_fps": 1000.0 / serial_ms if serial_ms else None,
        }
    finally:
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)

    print()
    print(f"{'':28s}{'frames/s':>10s}")
    print(f"{'engine alone (median)':28s}{summary['engine_fps_median']:10.3f}")
    print(f"{'replay (median)':28s}{summary['replay_fps_median']:10.3f}")
    if summary["serial_estimate_fps"]:
        print(f"{'serial estimate (no overlap)':28s}{summary['serial_estimate_fps']:10.3f}")
    print(f"replay / engine: median {summary['ratio_median']:.3f}, worst {summary['ratio_min']:.3f} "
          f"(target >= 0.90)")
    print(f"CPU time engine / replay per frame: median {summary['cpu_ratio_median']:.3f} (the "
          "replay's extra work; the wall-clock ratio is what counts on a dedicated machine)")
    print("median per frame (ms): " + ", ".join(f"{k} {v:.1f}" for k, v in stage.items() if v))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(summary, indent=2) + "\n")
        print(f"written {args.json}")
    return 0 if summary["ratio_median"] >= 0.9 else 1


if __name__ == "__main__":
    sys.exit(main())
