"""What the node spends per frame beyond the engine: building every output message.

Targets (issue 10, measured in a real ROS graph with a 1920x1080 camera and a trivial engine):
node time beyond the engine <= 10 ms per frame with ``~/mask`` and ``~/drivable_mask``
subscribed, <= 25 ms with every output subscribed and the visualization compressed. ROS 2 cannot
be installed here, so this times what the node itself does, with the same code path
(``bisenet_ros.outputs`` then the message construction of ``SegmentationNode``): the fields, the
message objects (the rclpy-style message classes of the test double, built from the rosbags
typestore's real definitions, with rclpy's ``array.array('B')`` data rule) and the JPEG/PNG
encodes. What rclpy does in ``publish`` (its C conversion copies ``data`` once, then CDR
serialization and the DDS write) is estimated by a separate column: one ``memcpy`` of the payload
plus the rosbags CDR serializer on the same message (a Python serializer: an upper bound for
rclpy's C one).

Also timed: the engine's share of the visualization (colour LUT, resize to the camera, blend),
only spent when somebody subscribes to a visualization topic (since issue 17 on the node's
visualization worker, see ``bench_visualization.py``), and all of it with
``visualization_resolution: network``.

Inputs: a rendered street frame (``bisenet_ros.inference.frames.street_frame``) at each camera
size and a region-like label map at the network size (1024x512) derived from it (a trained
model's maps are as smooth; random labels would make PNG far slower than real use).

    nice .venv/bin/python benchmarks/bench_publish.py --json benchmarks/results/publish.json

Not a test: run it by hand; it prints the CPU and its flags, and every figure is a median (and
minimum) of ``--repeats`` runs in this one process.
"""
from __future__ import annotations

import argparse
import array
import json
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
for path in (ROOT, ROOT / "test"):  # run from a clone; the message classes of the test double
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

from bisenet_ros import outputs  # noqa: E402
from bisenet_ros.inference import postprocess as post  # noqa: E402
from bisenet_ros.inference.frames import street_frame  # noqa: E402
from bisenet_ros.inference.preprocess import fit_frame, fit_geometry  # noqa: E402
from ros_double.messages import rclpy_style_class, to_store_message, typestore  # noqa: E402

CAMERAS = {"720p": (1280, 720), "1080p": (1920, 1080)}
NETWORK = (1024, 512)
CPU_FLAGS_OF_INTEREST = ("sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw",
                         "avx512_vnni", "avx512_bf16", "amx_tile", "amx_bf16", "neon", "asimd")


def cpu_description() -> dict[str, Any]:
    name, flags = platform.processor() or platform.machine(), []
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
            elif line.startswith(("flags", "Features")) and not flags:
                flags = line.split(":", 1)[1].split()
    except OSError:
        pass
    return {"name": name, "cores": len(__import__("os").sched_getaffinity(0)),
            "flags_of_interest": [f for f in CPU_FLAGS_OF_INTEREST if f in flags],
            "flags_all": flags}


def timed(function: Callable[[], Any], repeats: int) -> dict[str, float]:
    function()  # warm caches and lazy imports
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        samples.append((time.perf_counter() - start) * 1e3)
    return {"median_ms": statistics.median(samples), "min_ms": min(samples)}


def scene(width: int, height: int) -> tuple[np.ndarray, np.ndarray, Any]:
    """Camera frame (BGR), network-size labels with smooth regions, and the fit geometry."""
    frame = street_frame(width, height, seed=1)
    geometry = fit_geometry((width, height), NETWORK, "stretch")
    small = cv2.GaussianBlur(fit_frame(frame, geometry, 0), (0, 0), 4)
    labels = ((small.astype(np.uint16).sum(axis=2) // 60) % 19).astype(np.uint8)
    return frame, labels, geometry


class Result:
    """A SegmentationResult-shaped object (what the node gets from the engine)."""

    def __init__(self, labels, color, overlay, drivable) -> None:
        self.labels, self.color, self.overlay, self.drivable = labels, color, overlay, drivable
        self.confidence = None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--jpeg-quality", type=int, default=80)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)

    cpu = cpu_description()
    print(f"CPU: {cpu['name']} ({cpu['cores']} cores usable); flags: "
          f"{' '.join(cpu['flags_of_interest'])}; OpenCV {cv2.__version__} "
          f"({cv2.getNumThreads()} threads), NumPy {np.__version__}")
    Image = rclpy_style_class("sensor_msgs/msg/Image")
    Compressed = rclpy_style_class("sensor_msgs/msg/CompressedImage")
    header = rclpy_style_class("std_msgs/msg/Header")(frame_id="camera")
    store = typestore()
    palette = np.random.default_rng(0).integers(0, 256, (19, 3), dtype=np.uint8)
    lut = np.zeros((256, 1, 3), np.uint8)
    lut[:19, 0] = palette[:, ::-1]
    drivable_lut = np.where(np.arange(256) == 0, 255, 0).astype(np.uint8)

    def pixels(buffer: Any) -> array.array:  # SegmentationNode._pixels
        data = array.array("B")
        data.frombytes(buffer)
        return data

    def image_msg(fields: dict) -> Any:  # SegmentationNode._image_message
        msg = Image(header=header, height=fields["height"], width=fields["width"],
                    encoding=fields["encoding"], is_bigendian=fields["is_bigendian"],
                    step=fields["step"])
        msg.data = pixels(fields["data"])
        return msg

    def compressed_msg(fields: dict) -> Any:  # SegmentationNode._compressed_message
        msg = Compressed(header=header, format=fields["format"])
        msg.data = pixels(fields["data"])
        return msg

    report: dict[str, Any] = {"cpu": cpu, "network": list(NETWORK), "repeats": args.repeats,
                              "jpeg_quality": args.jpeg_quality, "cameras": {}}
    for camera, (width, height) in CAMERAS.items():
        frame, labels_net, geometry = scene(width, height)
        labels = post.to_camera(labels_net, geometry)
        color_cam = post.to_camera(post.colorize(labels_net, lut), geometry)
        overlay_cam = post.blend(frame, color_cam, 0.5)
        color_net = post.colorize(labels_net, lut)
        fitted = fit_frame(frame, geometry, 0)
        overlay_net = post.blend(fitted, color_net, 0.5)
        drivable = post.binary_mask(labels, drivable_lut)
        results = {"camera": Result(labels, color_cam, overlay_cam, drivable),
                   "network": Result(labels, color_net, overlay_net, drivable)}
        rows: dict[str, dict[str, float]] = {}

        def image_topics(result: Result, topics: list[str]) -> list:
            return [image_msg(f) for f in outputs.result_to_image_fields(
                result, "bgr", topics=topics).values()]

        def compressed_topics(result: Result, topics: list[str]) -> list:
            return [compressed_msg(f) for f in outputs.result_to_compressed_fields(
                result, "bgr", jpeg_quality=args.jpeg_quality, topics=topics).values()]

        def publish_estimate(msgs: list, msgtype: str) -> None:
            for msg in msgs:  # rclpy's C conversion copies data once, then serializes
                bytes(msg.data)
                store.serialize_cdr(to_store_message(msg), msgtype)

        res = results["camera"]
        planner = image_topics(res, ["mask", "drivable_mask"])
        rows["mask: fields + message"] = timed(lambda: image_topics(res, ["mask"]), args.repeats)
        rows["drivable_mask: fields + message"] = timed(
            lambda: image_topics(res, ["drivable_mask"]), args.repeats)
        rows["mask + drivable_mask: fields + messages"] = timed(
            lambda: image_topics(res, ["mask", "drivable_mask"]), args.repeats)
        rows["mask + drivable_mask: publish estimate (copy + CDR)"] = timed(
            lambda: publish_estimate(planner, "sensor_msgs/msg/Image"), args.repeats)
        for resolution in ("camera", "network"):
            res_v = results[resolution]
            raw = image_topics(res_v, ["overlay", "color_mask"])
            packed = compressed_topics(res_v, ["overlay/compressed", "color_mask/compressed"])
            tag = f"[{resolution} res]"
            # (the network-sized frame is the engine's preprocessing output, already there)
            rows[f"engine share of visualization (colour LUT, resize, blend) {tag}"] = timed(
                (lambda: post.blend(frame, post.to_camera(post.colorize(labels_net, lut), geometry), 0.5))
                if resolution == "camera" else
                (lambda: post.blend(fitted, post.colorize(labels_net, lut), 0.5)), args.repeats)
            rows[f"overlay raw: fields + message {tag}"] = timed(
                lambda: image_topics(res_v, ["overlay"]), args.repeats)
            rows[f"color_mask raw: fields + message {tag}"] = timed(
                lambda: image_topics(res_v, ["color_mask"]), args.repeats)
            rows[f"overlay/compressed JPEG q{args.jpeg_quality}: encode + message {tag}"] = timed(
                lambda: compressed_topics(res_v, ["overlay/compressed"]), args.repeats)
            rows[f"color_mask/compressed PNG: encode + message {tag}"] = timed(
                lambda: compressed_topics(res_v, ["color_mask/compressed"]), args.repeats)
            rows[f"raw visualization: publish estimate (copy + CDR) {tag}"] = timed(
                lambda: publish_estimate(raw, "sensor_msgs/msg/Image"), args.repeats)
            rows[f"compressed visualization: publish estimate (copy + CDR) {tag}"] = timed(
                lambda: publish_estimate(packed, "sensor_msgs/msg/CompressedImage"), args.repeats)
            # result_to_compressed_fields yields its topics sorted: color_mask, then overlay
            rows[f"message sizes MB {tag}"] = {
                "overlay_raw": len(raw[0].data) / 1e6, "overlay_jpeg": len(packed[1].data) / 1e6,
                "color_mask_png": len(packed[0].data) / 1e6}

        def total(keys: list[str]) -> float:
            return sum(rows[k]["median_ms"] for k in keys)

        planner_keys = ["mask + drivable_mask: fields + messages",
                        "mask + drivable_mask: publish estimate (copy + CDR)"]
        summary = {"planner_ms (target <= 10)": total(planner_keys)}
        for resolution in ("camera", "network"):
            tag = f"[{resolution} res]"
            summary[f"all, compressed visualization {tag} (target <= 25)"] = total(planner_keys + [
                f"overlay/compressed JPEG q{args.jpeg_quality}: encode + message {tag}",
                f"color_mask/compressed PNG: encode + message {tag}",
                f"compressed visualization: publish estimate (copy + CDR) {tag}"])
            summary[f"  + engine share of visualization {tag}"] = rows[
                f"engine share of visualization (colour LUT, resize, blend) {tag}"]["median_ms"]
            summary[f"all, raw visualization {tag}"] = total(planner_keys + [
                f"overlay raw: fields + message {tag}", f"color_mask raw: fields + message {tag}",
                f"raw visualization: publish estimate (copy + CDR) {tag}"])
        report["cameras"][camera] = {"size": [width, height], "rows": rows, "summary": summary}

        print(f"\n{camera} ({width}x{height}), network {NETWORK[0]}x{NETWORK[1]}: median (min) ms")
        for key, value in rows.items():
            if "median_ms" in value:
                print(f"  {key:<78} {value['median_ms']:7.2f} ({value['min_ms']:.2f})")
            else:
                print(f"  {key:<78} " + ", ".join(f"{k} {v:.2f}" for k, v in value.items()))
        for key, value in summary.items():
            print(f"  = {key:<76} {value:7.2f}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        tmp = args.json.with_suffix(".tmp")
        tmp.write_text(json.dumps(report, indent=1))
        tmp.replace(args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
