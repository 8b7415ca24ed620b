"""The visualization worker against issue 17's targets, at 1080p, with the node itself.

Targets (1080p camera, every output subscribed: ``~/mask``, ``~/drivable_mask``,
``~/color_mask``, ``~/overlay`` and both ``/compressed``):

1. the inference loop's time beyond the engine (``latency_total_ms - latency_engine_ms``:
   decode, planner outputs, hand-over) <= 10 ms;
2. median mask latency (camera publish -> ``~/mask`` received) with every output subscribed
   <= the same with only the planner outputs subscribed + 5 ms;
3. one overlay per frame while the camera is slower than ``visualization_rate``.

ROS 2 cannot run here, so this runs the real ``SegmentationNode`` on the rclpy test double
(``test/ros_double``), whose ``Publisher.publish`` is made to do what rclpy's does with the
payload: one copy of the data and CDR serialization, here by the rosbags typestore's
``serialize_cdr`` on the same message (a Python serializer, slower than rclpy's C one: the
figures are an upper bound), before delivering to the subscribers. A camera thread builds each
1920x1080 bgr8 message (one 6.2 MB copy, what rclpy's conversion of a received message costs
the executor) and publishes it at ``--rate``. The engine stands for a GPU engine as in the issue's
measurement (``latency_engine_ms`` 5.9): the real ``Segmenter`` (1080p -> 1024x512
preprocessing, post-processing at camera resolution, colour outputs deferred to their first
read) whose backend sleeps ``--engine-ms`` (the GPU's time, no CPU) and returns a region-like
1024x512 label map.

Scenarios, interleaved over ``--rounds`` in one process so that the ratios share the machine's
load: planner outputs only; everything subscribed (visualization worker); everything subscribed
with the visualization built and published on the inference thread as before issue 17
("inline": the colour outputs and their messages built on the inference thread, for
reference); everything subscribed with the camera faster than
``visualization_rate``.

    nice .venv/bin/python benchmarks/bench_visualization.py --json benchmarks/results/visualization.json

Not a test: it prints the CPU, its flags and the load average; the machine may be shared.
"""
from __future__ import annotations

import argparse
import array
import importlib
import json
import os
import statistics
import sys
import threading
import time
import warnings
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
for path in (ROOT, ROOT / "test", Path(__file__).resolve().parent):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

from bench_publish import cpu_description, scene  # noqa: E402
from bisenet_ros.inference import Segmenter  # noqa: E402
from bisenet_ros.inference.backends.base import Backend, NetworkOutput  # noqa: E402
from ros_double import rclpy_double  # noqa: E402
from ros_double.messages import rclpy_style_class, to_store_message, typestore  # noqa: E402

WIDTH, HEIGHT = 1920, 1080
ALL_TOPICS = ("mask", "drivable_mask", "color_mask", "overlay", "overlay/compressed",
              "color_mask/compressed")
PLANNER_TOPICS = ("mask", "drivable_mask")


class SleepBackend(Backend):
    """A GPU-like backend: ``engine_ms`` of sleep (the GPU's time, no CPU), then fixed
    network-resolution labels (a fresh copy, as real backends return)."""

    name = "gpu-like"

    def __init__(self, engine_ms: float, labels_net: np.ndarray) -> None:
        super().__init__("cuda", "fp16", computes_confidence=False)
        self.engine_ms, self.labels_net = engine_ms, labels_net

    def run(self, blob: np.ndarray) -> NetworkOutput:
        time.sleep(self.engine_ms / 1e3)
        return NetworkOutput(self.labels_net.copy(), None)


def gpu_like_engine(engine_ms: float, labels_net: np.ndarray) -> Callable[[Any], Any]:
    """A factory of real ``Segmenter``s (preprocessing, post-processing, deferred colour outputs)
    whose network runs on a :class:`SleepBackend`."""

    def build(config: Any) -> Any:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # random weights: the network never runs
            engine = Segmenter(config.replace(resize="stretch"))
        engine.backend = SleepBackend(engine_ms, labels_net)
        return engine

    return build


def install_double() -> Any:
    """The rclpy double in sys.modules, with rclpy's copy + CDR serialization in publish."""
    rclpy_double.install(SimpleNamespace(setitem=lambda mapping, key, value: mapping.__setitem__(key, value)))
    store = typestore()
    deliver = rclpy_double.Publisher.publish

    def publish(self: Any, msg: Any) -> None:
        if getattr(self, "serialize", False):
            bytes(msg.data)  # rclpy's C conversion copies the payload once
            store.serialize_cdr(to_store_message(msg), msg.__msgtype__)
        deliver(self, msg)

    rclpy_double.Publisher.publish = publish
    sys.modules.pop("bisenet_ros.node", None)
    return importlib.import_module("bisenet_ros.node")


def run_scenario(node_module: Any, frame: np.ndarray, engine: Callable[[Any], Any], *,
                 topics: tuple[str, ...], rate_hz: float, frames: int, inline: bool = False,
                 visualization_rate: float = 10.0) -> dict[str, Any]:
    rclpy = sys.modules["rclpy"]
    rclpy.init()
    Parameter = rclpy_double.Parameter
    node = node_module.SegmentationNode(segmenter_factory=engine, parameter_overrides=[
        Parameter("resolution", value="1024x512"), Parameter("max_frame_age", value=0.0),
        Parameter("visualization_rate", value=visualization_rate)])
    for publisher in node.publishers:
        publisher.serialize = True
    if inline:  # before issue 17: colours built, messages built and published on the inference
        # thread (reading the deferred outputs right after the engine call builds them there)
        def publish_inline(job: Any) -> None:
            job[1].overlay, job[1].color  # noqa: B018 - build them now, as the engine did
            node._publish_visualization(job)

        node._visualization.submit = publish_inline
    qos = sys.modules["rclpy.qos"]
    viewer = rclpy_double.Node("viewer")
    received: dict[str, dict[str, float]] = {t: {} for t in topics}
    for topic in topics:
        kind = "CompressedImage" if topic.endswith("compressed") else "Image"
        viewer.create_subscription(
            rclpy_style_class(f"sensor_msgs/msg/{kind}"), f"/segmentation/{topic}",
            lambda msg, t=topic: received[t].setdefault(msg.header.frame_id, time.perf_counter()),
            qos.QoSProfile(depth=10))
    Image = rclpy_style_class("sensor_msgs/msg/Image")
    camera = viewer.create_publisher(Image, "/image", qos.QoSProfile(
        depth=1, reliability=qos.ReliabilityPolicy.BEST_EFFORT))
    sent: dict[str, float] = {}
    pixels = frame.tobytes()

    def drive() -> None:
        period, start = 1.0 / rate_hz, time.perf_counter()
        for i in range(frames):
            time.sleep(max(0.0, start + i * period - time.perf_counter()))
            sent[str(i)] = time.perf_counter()
            msg = Image(height=HEIGHT, width=WIDTH, encoding="bgr8", step=WIDTH * 3)
            msg.header.frame_id = str(i)
            now = time.time_ns()
            msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(now, 1_000_000_000)
            data = array.array("B")
            data.frombytes(pixels)  # the executor's copy of a received message
            msg.data = data
            camera.publish(msg)

    thread = threading.Thread(target=drive)
    thread.start()
    thread.join()
    deadline = time.monotonic() + 30
    while len(received["mask"]) + node.stats.counters["dropped_superseded"] < frames:
        if time.monotonic() > deadline:
            break
        time.sleep(0.01)
    node._visualization.wait_idle(30)
    snapshot = node.stats.snapshot()
    node.destroy_node()
    viewer.destroy_node()  # its subscriptions must not reach the next scenario's node
    rclpy.try_shutdown()
    latency = {t: [(got - sent[k]) * 1e3 for k, got in received[t].items()] for t in topics}
    ms = snapshot["latency_ms"]
    return {
        "frames": frames, "camera_hz": rate_hz, "inline": inline, "topics": list(topics),
        "received": {t: len(received[t]) for t in topics},
        "latency_ms": {t: {"median": statistics.median(v), "p90": float(np.percentile(v, 90))}
                       for t, v in latency.items() if v},
        "beyond_engine_ms": ms["total"] - ms["engine"],
        "stages_ms": ms,
        "visualization_published": snapshot["visualization_published"],
        "visualization_skipped": snapshot["visualization_skipped"],
        "dropped_superseded": snapshot["dropped_superseded"],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=40, help="frames per scenario and round")
    parser.add_argument("--rate", type=float, default=5.0, help="camera rate (below 10 Hz)")
    parser.add_argument("--fast-rate", type=float, default=20.0, help="a camera above 10 Hz")
    parser.add_argument("--engine-ms", type=float, default=6.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)

    cpu = cpu_description()
    load_before = os.getloadavg()
    print(f"CPU: {cpu['name']} ({cpu['cores']} cores usable); flags: "
          f"{' '.join(cpu['flags_of_interest'])}; OpenCV {cv2.__version__}; load average "
          f"{load_before[0]:.2f} {load_before[1]:.2f} {load_before[2]:.2f}")
    frame, labels_net, _ = scene(WIDTH, HEIGHT)
    engine = gpu_like_engine(args.engine_ms, labels_net)
    node_module = install_double()
    scenarios = {
        "planner only": dict(topics=PLANNER_TOPICS, rate_hz=args.rate),
        "all, worker": dict(topics=ALL_TOPICS, rate_hz=args.rate),
        "all, inline (before)": dict(topics=ALL_TOPICS, rate_hz=args.rate, inline=True),
        f"all, worker, camera {args.fast_rate:g} Hz": dict(topics=ALL_TOPICS, rate_hz=args.fast_rate),
    }
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in scenarios}
    for round_index in range(args.rounds):
        for name, kwargs in scenarios.items():
            result = run_scenario(node_module, frame, engine, frames=args.frames, **kwargs)
            runs[name].append(result)
            print(f"round {round_index + 1} {name:<32} mask median "
                  f"{result['latency_ms']['mask']['median']:6.2f} ms, beyond engine "
                  f"{result['beyond_engine_ms']:5.2f} ms, overlays {result['received'].get('overlay', '-')}"
                  f"/{result['frames']}, skipped {result['visualization_skipped']}")

    def merged(name: str, key: str) -> float:
        return statistics.median(r[key] for r in runs[name])

    def mask_median(name: str) -> float:
        return statistics.median(r["latency_ms"]["mask"]["median"] for r in runs[name])

    summary = {
        "beyond_engine_all_ms (target <= 10)": merged("all, worker", "beyond_engine_ms"),
        "beyond_engine_inline_before_ms": merged("all, inline (before)", "beyond_engine_ms"),
        "mask_median_planner_only_ms": mask_median("planner only"),
        "mask_median_all_ms (target <= planner only + 5)": mask_median("all, worker"),
        "mask_median_all_inline_before_ms": mask_median("all, inline (before)"),
        "overlay_median_all_ms": statistics.median(
            r["latency_ms"]["overlay"]["median"] for r in runs["all, worker"]),
        "visualization_worker_ms": statistics.median(
            r["stages_ms"]["visualization"] for r in runs["all, worker"]),
        f"overlays per frame at {args.rate:g} Hz (target 1)": min(
            r["received"]["overlay"] / r["frames"] for r in runs["all, worker"]),
        f"overlays per s at {args.fast_rate:g} Hz (limit 10)": statistics.median(
            r["received"]["overlay"] * args.fast_rate / r["frames"]
            for r in runs[f"all, worker, camera {args.fast_rate:g} Hz"]),
    }
    load_after = os.getloadavg()
    print(f"\n1080p, engine {args.engine_ms:g} ms (sleep) + CPU post-processing, camera "
          f"{args.rate:g} Hz, {args.frames} frames x {args.rounds} rounds; load average after "
          f"{load_after[0]:.2f} {load_after[1]:.2f} {load_after[2]:.2f}")
    for key, value in summary.items():
        print(f"  {key:<52} {value:7.2f}")
    if args.json:
        from bisenet_ros.fileio import write_atomic

        write_atomic(args.json, json.dumps({
            "cpu": cpu, "load_average_before": load_before, "load_average_after": load_after,
            "camera": [WIDTH, HEIGHT], "network": [1024, 512], "engine_ms": args.engine_ms,
            "frames": args.frames, "rounds": args.rounds, "summary": summary, "runs": runs},
            indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
