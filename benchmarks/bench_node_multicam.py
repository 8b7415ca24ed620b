"""The multi-camera node (``cameras``): fairness and per-camera latency of its batch scheduler.

Issue 19's target here: with every camera publishing at the same rate, above what the engine can
serve, each camera's share of the processed frames is within +-10% of the others'. And with a
camera flooding at 10x the rate, one stopped and one sending malformed frames, no live camera
is starved.

ROS 2 cannot run here, so this runs the real ``SegmentationNode`` with ``cameras`` on the rclpy
test double (``test/ros_double``; ``Publisher.publish`` copies and CDR-serializes the payload as
rclpy would, see ``bench_visualization.py``). One thread per camera builds and publishes
640x480 bgr8 frames at its rate. The engine is the real ``Segmenter`` (preprocessing to
1024x512, post-processing at camera resolution) whose network sleeps ``--engine-ms`` per engine
call (a GPU's time, no CPU), so the node saturates and the scheduler decides who goes next.
Latency is camera publish -> ``/<C>/segmentation/mask`` received, per camera.

    nice .venv/bin/python benchmarks/bench_node_multicam.py --json benchmarks/results/node_multicam.json

Not a test: it prints the CPU, its flags and the load average; the machine may be shared.
"""
from __future__ import annotations

import argparse
import array
import json
import os
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
for path in (ROOT, ROOT / "test", Path(__file__).resolve().parent):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

from bench_publish import cpu_description, scene  # noqa: E402
from bench_visualization import gpu_like_engine, install_double  # noqa: E402
from ros_double import rclpy_double  # noqa: E402
from ros_double.messages import rclpy_style_class  # noqa: E402

WIDTH, HEIGHT = 640, 480


def run_scenario(node_module: Any, frame: np.ndarray, engine: Any, rates: dict[str, float], *,
                 seconds: float, malformed: tuple[str, ...] = (),
                 stopped: tuple[str, ...] = ()) -> dict[str, Any]:
    """Run the node with one publisher thread per camera for ``seconds``; per-camera figures."""
    rclpy = sys.modules["rclpy"]
    rclpy.init()
    Parameter = rclpy_double.Parameter
    cameras = list(rates)
    node = node_module.SegmentationNode(segmenter_factory=engine, parameter_overrides=[
        Parameter("resolution", value="1024x512"), Parameter("max_frame_age", value=0.0),
        Parameter("cameras", value=cameras)])
    for publisher in node.publishers:
        publisher.serialize = True
    qos = sys.modules["rclpy.qos"]
    viewer = rclpy_double.Node("viewer")
    received: dict[str, dict[str, float]] = {c: {} for c in cameras}
    for camera in cameras:
        viewer.create_subscription(
            rclpy_style_class("sensor_msgs/msg/Image"), f"/{camera}/segmentation/mask",
            lambda msg, c=camera: received[c].setdefault(msg.header.frame_id, time.perf_counter()),
            qos.QoSProfile(depth=10))
    Image = rclpy_style_class("sensor_msgs/msg/Image")
    sent: dict[str, float] = {}
    pixels = frame.tobytes()
    stop = threading.Event()

    def drive(camera: str) -> None:
        publisher = viewer.create_publisher(Image, f"/{camera}/image_raw", qos.QoSProfile(
            depth=1, reliability=qos.ReliabilityPolicy.BEST_EFFORT))
        period, start, i = 1.0 / rates[camera], time.perf_counter(), 0
        while not stop.is_set() and not (camera in stopped and i == 1):
            time.sleep(max(0.0, start + i * period - time.perf_counter()))
            bad = camera in malformed and i % 2 == 0
            msg = Image(height=HEIGHT, width=WIDTH, encoding="bgr9" if bad else "bgr8",
                        step=WIDTH * 3)
            msg.header.frame_id = f"{camera}/{i}"
            msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(time.time_ns(), 1_000_000_000)
            data = array.array("B")
            data.frombytes(pixels)  # the executor's copy of a received message
            msg.data = data
            sent[msg.header.frame_id] = time.perf_counter()
            publisher.publish(msg)
            i += 1

    threads = [threading.Thread(target=drive, args=(c,)) for c in cameras]
    load_before = os.getloadavg()[0]
    for thread in threads:
        thread.start()
    time.sleep(seconds)
    stop.set()
    for thread in threads:
        thread.join()
    time.sleep(1.0)  # the last batch
    streams = {c.stream.name: c.stream.snapshot() for c in node.cameras}
    engine_stats = dict(node.engine_stats.diagnostic()[2])
    node.destroy_node()
    viewer.destroy_node()
    rclpy.try_shutdown()
    per_camera = {}
    for camera in cameras:
        latency = [(t - sent[k]) * 1e3 for k, t in received[camera].items()]
        per_camera[camera] = {
            "rate_hz": rates[camera], "published": streams[camera]["frames_received"],
            "processed": len(received[camera]),
            "superseded": streams[camera]["dropped_superseded"],
            "malformed": streams[camera]["malformed"],
            "latency_p50_ms": statistics.median(latency) if latency else None,
            "latency_p99_ms": float(np.percentile(latency, 99)) if latency else None,
        }
    live = [c for c in cameras if c not in stopped]
    counts = [per_camera[c]["processed"] for c in live if c not in malformed]
    mean = statistics.mean(counts)
    return {
        "seconds": seconds, "cameras": per_camera, "load_average_1min": load_before,
        "total_processed_per_s": sum(p["processed"] for p in per_camera.values()) / seconds,
        "mean_batch_size": float(engine_stats["mean_batch_size"]),
        "largest_deviation_from_mean (well-formed live cameras)":
            max(abs(n - mean) / mean for n in counts) if mean else None,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="per scenario")
    parser.add_argument("--rate", type=float, default=15.0, help="each camera's rate, Hz")
    parser.add_argument("--engine-ms", type=float, default=40.0, help="per engine call (sleep)")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)

    cpu = cpu_description()
    load = os.getloadavg()
    print(f"CPU: {cpu['name']} ({cpu['cores']} cores usable); flags: "
          f"{' '.join(cpu['flags_of_interest'])}; load average {load[0]:.2f} {load[1]:.2f} "
          f"{load[2]:.2f}")
    frame, labels_net, _ = scene(WIDTH, HEIGHT)
    engine = gpu_like_engine(args.engine_ms, labels_net)
    node_module = install_double()
    scenarios = {
        "4 cameras, same rate": run_scenario(
            node_module, frame, engine, {c: args.rate for c in ("front", "rear", "left", "right")},
            seconds=args.seconds),
        "flood 10x, stopped, malformed": run_scenario(
            node_module, frame, engine, {"steady": args.rate, "flood": 10 * args.rate,
                                         "stopped": args.rate, "broken": args.rate},
            seconds=args.seconds, malformed=("broken",), stopped=("stopped",)),
    }
    for name, result in scenarios.items():
        print(f"\n{name}: {result['total_processed_per_s']:.1f} frames/s processed, mean batch "
              f"{result['mean_batch_size']:.2f}, largest deviation from the mean share "
              f"{result['largest_deviation_from_mean (well-formed live cameras)']:.1%} "
              f"(target <= 10%), load average {result['load_average_1min']:.2f}")
        for camera, row in result["cameras"].items():
            p50, p99 = row["latency_p50_ms"], row["latency_p99_ms"]
            print(f"  {camera:<8} {row['rate_hz']:6.1f} Hz  published {row['published']:5d}  "
                  f"processed {row['processed']:4d}  superseded {row['superseded']:5d}  malformed "
                  f"{row['malformed']:3d}  latency p50 {p50 or 0:7.1f} ms  p99 {p99 or 0:7.1f} ms")
    if args.json:
        from bisenet_ros.fileio import write_atomic

        write_atomic(args.json, json.dumps({
            "cpu": cpu, "camera": [WIDTH, HEIGHT], "network": [1024, 512],
            "engine_ms": args.engine_ms, "rate_hz": args.rate, "scenarios": scenarios},
            indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
