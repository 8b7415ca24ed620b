"""How long `bisenet-ros quantize` takes on a 200-frame bag (issue 11 target: under 3 minutes on 2 cores).

    .venv/bin/python benchmarks/quantize_time.py --json benchmarks/results/quantize_200_frames.json

Writes a bag of generated street frames (``--camera``, default 512x256 like the synthetic drive),
exports a random-weight model at ``--resolution``, then times the whole command's work
(:func:`bisenet_ros.calibration.run_quantize`: read and pre-process the frames, calibrate with each
method of ``--method auto``, quantize, the quality check on the held-out frames, write the file).
Prints and stores wall and CPU time, per-method times, the CPU flags and the load average.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time
import warnings


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=200)
    parser.add_argument("--variant", default="stdc1")
    parser.add_argument("--resolution", default="1024x512", help="network input WIDTHxHEIGHT")
    parser.add_argument("--camera", default="512x256", help="bag frame size WIDTHxHEIGHT")
    parser.add_argument("--method", default="auto")
    parser.add_argument("--json", help="write the figures here")
    args = parser.parse_args(argv)

    import torch

    from bisenet_ros.calibration import CalibrationSource, QuantizeJob, run_quantize
    from bisenet_ros.config import parse_resolution
    from bisenet_ros.inference.export import export_onnx
    from bisenet_ros.inference.frames import street_frame
    from bisenet_ros.inference.precision import cpu_flags, relevant_flags
    from bisenet_ros.labels import load_class_set
    from bisenet_ros.models import build_model
    from bisenet_ros.replay.bagtools import write_image_bag

    network, camera = parse_resolution(args.resolution), parse_resolution(args.camera)
    with tempfile.TemporaryDirectory(prefix="quantize_time_") as tmp:
        torch.manual_seed(0)
        model_path = os.path.join(tmp, "fp32.onnx")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            export_onnx(build_model(args.variant), model_path, resolution=network,
                        class_set=load_class_set("cityscapes", 19))
        frames = [street_frame(*camera, seed=i) for i in range(args.frames)]
        bag = write_image_bag(os.path.join(tmp, "bag"), frames)
        del frames
        load_before = os.getloadavg()[0]
        cpu_before = resource.getrusage(resource.RUSAGE_SELF)
        start = time.perf_counter()
        quality = run_quantize(QuantizeJob(model=model_path, source=CalibrationSource(bag),
                                           output=os.path.join(tmp, "int8.onnx"), frames=args.frames,
                                           method=args.method))
        wall = time.perf_counter() - start
        cpu_after = resource.getrusage(resource.RUSAGE_SELF)
    cpu_s = (cpu_after.ru_utime - cpu_before.ru_utime) + (cpu_after.ru_stime - cpu_before.ru_stime)
    figures = {
        "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "cpus": os.cpu_count(),
        "cpu_flags": relevant_flags(cpu_flags()), "variant": args.variant, "network": list(network),
        "camera": list(camera), "bag_frames": args.frames, "method": args.method,
        "wall_s": wall, "cpu_s": cpu_s, "target_s": 180, "met": wall < 180,
        "per_method_s": {m: v["quantize_s"] for m, v in quality["methods"].items()},
        "chosen_method": quality["chosen_method"], "agreement_held_out": quality["agreement"],
        "load_average_before_after": [round(load_before, 2), round(os.getloadavg()[0], 2)],
        "weights": "random (seeded); timing does not depend on them",
    }
    print(json.dumps(figures, indent=2))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as stream:
            json.dump(figures, stream, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
