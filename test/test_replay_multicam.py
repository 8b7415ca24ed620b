"""Multi-camera replay and evaluate: a 3-camera bag made here (different resolutions,
encodings and rates per camera, ground truth on one camera, camera_info and tf for two) goes
through ``bisenet-ros replay --cameras`` and ``bisenet-ros evaluate``.

The engine is :class:`BatchEngine`, KnownEngine with ``segment_batch``: its prediction is a fixed
function of the pixels, so every output, figure and grid is known exactly.
"""
from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pytest

from rosbags.rosbag2 import Reader

from bisenet_ros import bev, codec, outputs
from bisenet_ros.commands import evaluate as evaluate_cli
from bisenet_ros.replay.bagtools import BagMessage, encode_frame, image_messages, write_bag
from bisenet_ros.replay.messages import (
    IMAGE, deserialize, make_camera_info, make_header, make_image, make_tf_message, stamp_to_ns,
)
from test_replay import KnownEngine, known_labels, read_bag, run_cli

START = 1_700_000_000_000_000_000


class BatchEngine(KnownEngine):
    """KnownEngine with the batched call of Segmenter; records the size of every batch."""

    batches: list[int] = []

    def segment_batch(self, frames: Sequence[np.ndarray], color_orders: Sequence[str] | str = "bgr",
                      outputs: Any = None) -> list[Any]:
        orders = [color_orders] * len(frames) if isinstance(color_orders, str) else color_orders
        BatchEngine.batches.append(len(frames))
        return [self(frame, order, outputs) for frame, order in zip(frames, orders)]


# name: (width, height, encoding or "png" = compressed, frames, fps, stamp offset ns, mount)
CAMERAS = {
    "front": (128, 64, "bgr8", 4, 10.0, 0, ((1.0, 0.0, 1.5), (0.0, 0.15, 0.0))),
    "rear": (48, 32, "rgb8", 3, 10.0, 3_000_000, ((-1.0, 0.0, 1.5), (0.0, 0.15, math.pi))),
    "left": (40, 24, "png", 6, 20.0, 5_000_000, None),  # no camera_info: no grid of its own
}


def intrinsics(width: int, height: int) -> list[float]:
    f = width / 2.0
    return [f, 0.0, width / 2.0, 0.0, f, height / 3.0, 0.0, 0.0, 1.0]


def ground_labels(name: str, half_width: float) -> np.ndarray:
    """Ray-cast labels of a camera: road (0) within ``half_width`` m of its axis on the ground,
    sidewalk (1) elsewhere on the ground, building (2) above the horizon."""
    width, height, _, _, _, _, mount = CAMERAS[name]
    k = intrinsics(width, height)
    xyz, rpy = mount if mount else ((0.0, 1.0, 1.5), (0.0, 0.15, math.pi / 2))
    pose = bev.Pose.from_mount(*xyz, *rpy)
    v, u = np.mgrid[0:height, 0:width].astype(np.float64)
    rays = np.stack([(u - k[2]) / k[0], (v - k[5]) / k[4], np.ones_like(u)], -1) @ pose.rotation.T
    down = rays[..., 2] < 0
    t = np.where(down, -pose.translation[2] / np.where(down, rays[..., 2], -1), 0)
    lateral = (rays[..., 1] * t) if abs(rpy[2]) < 1 or abs(rpy[2]) > 3 else (rays[..., 0] * t)
    return np.where(down, np.where(np.abs(lateral) < half_width, 0, 1), 2).astype(np.uint8)


def frame_for(labels: np.ndarray, seed: int) -> np.ndarray:
    frame = np.random.default_rng(seed).integers(0, 256, (*labels.shape, 3), dtype=np.uint8)
    frame[:, :, 0] = labels * 64 + 10  # KnownEngine: class = blue // 64
    return frame


def stamps(name: str) -> list[int]:
    _, _, _, count, fps, offset, _ = CAMERAS[name]
    return [START + offset + round(i * 1e9 / fps) for i in range(count)]


def make_bag(path: Path) -> Path:
    """front (bgr8 128x64, 4 frames, ground truth), rear (rgb8 48x32, 3 frames, ground truth
    equal to the prediction), left (PNG
    CompressedImage 40x24, 6 frames at twice the rate, no camera_info); tf for front and rear."""
    messages: list[BagMessage] = []
    transforms = []
    for name, (width, height, encoding, count, fps, offset, mount) in CAMERAS.items():
        frames = [frame_for(ground_labels(name, 2.0), seed=i) for i in range(count)]
        topic = f"/{name}/image_raw" + ("/compressed" if encoding == "png" else "")
        messages += image_messages(frames, topic=topic, encoding="bgr8" if encoding == "png" else encoding,
                                   compressed="png" if encoding == "png" else None, fps=fps,
                                   start_ns=START + offset, frame_id=f"{name}_optical")
        if mount is not None:
            transforms.append(("base_link", f"{name}_link", mount[0],
                               bev.matrix_to_quaternion(bev.rpy_to_matrix(*mount[1]))))
            transforms.append((f"{name}_link", f"{name}_optical", (0.0, 0.0, 0.0),
                               bev.matrix_to_quaternion(bev.OPTICAL_IN_BODY)))
            messages += [BagMessage(f"/{name}/camera_info", "sensor_msgs/msg/CameraInfo", stamp + 1,
                                    make_camera_info(make_header(stamp, f"{name}_optical"),
                                                     width=width, height=height,
                                                     k=intrinsics(width, height)))
                         for stamp in stamps(name)]
    # Ground truth on the front camera only: road narrower than predicted (a known error).
    truth = ground_labels("front", 1.0)
    messages += [BagMessage("/front/labels", IMAGE, stamp + 8_000_000,
                            make_image(make_header(stamp, "front_optical"), encode_frame(truth, "mono8")))
                 for stamp in stamps("front")]
    # ... and on the rear camera, equal to the prediction (for the two-camera test).
    rear = ground_labels("rear", 2.0)
    messages += [BagMessage("/rear/labels", IMAGE, stamp + 8_000_000,
                            make_image(make_header(stamp, "rear_optical"), encode_frame(rear, "mono8")))
                 for stamp in stamps("rear")]
    messages.append(BagMessage("/tf_static", "tf2_msgs/msg/TFMessage", START - 1,
                               make_tf_message(transforms)))
    messages.sort(key=lambda m: m.timestamp)
    return write_bag(path, messages)


def project(name: str, spec: bev.GridSpec, labels: np.ndarray | None = None) -> np.ndarray:
    """The grid of a camera's labels (default: its predicted ones), computed here from its
    mount and intrinsics."""
    width, height, _, _, _, _, mount = CAMERAS[name]
    camera = bev.CameraModel.from_camera_info({"width": width, "height": height,
                                               "k": intrinsics(width, height), "d": [0.0] * 5})
    labels = ground_labels(name, 2.0) if labels is None else labels
    return bev.BevProjector(spec, [0])(labels, camera,
                                       bev.Pose.from_mount(*mount[0], *mount[1]))


@pytest.fixture(scope="module")
def bag(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_bag(tmp_path_factory.mktemp("multicam") / "drive")


GRID = ["--grid-resolution", "0.5", "--grid-max-range", "18"]  # the surround extent by default


def test_three_cameras_replay_through_one_batched_engine(bag: Path, tmp_path: Path) -> None:
    BatchEngine.batches = []
    report = tmp_path / "report"
    assert run_cli([str(bag), "-o", str(tmp_path / "out"), "--cameras", "front,rear,left",
                    "--labels-topic", "/front/labels", "--report", str(report), "--no-progress",
                    "--drivable-classes", "road", *GRID], engine_factory=BatchEngine) == 0
    # One engine, batches of several cameras; every frame of every camera processed once.
    # Bag order gives batches (front, rear, left) x 3, then front 3 with left 3, then left 4
    # and left 5 alone (a batch of one is a plain engine call).
    assert BatchEngine.batches == [3, 3, 3, 2]
    out = read_bag(tmp_path / "out")
    for name, (width, height, encoding, count, _, _, _) in CAMERAS.items():
        masks = out[f"/{name}/segmentation/mask"]
        assert len(masks) == count
        assert len(out[f"/{name}/segmentation/label_info"]) == 1
        assert len(out[f"/{name}/segmentation/overlay"]) == count
        # Each camera's outputs carry its own header (stamp and frame), in its own order.
        assert [stamp_to_ns(m.header.stamp) for _, m in masks] == stamps(name)
        assert {m.header.frame_id for _, m in masks} == {f"{name}_optical"}
        expected = known_labels(frame_for(ground_labels(name, 2.0), seed=0))
        first = masks[0][1]
        assert (first.width, first.height) == (width, height)
        np.testing.assert_array_equal(np.asarray(first.data).reshape(height, width), expected)
    assert "/segmentation/mask" not in out  # no single-camera topics

    # The fused grid, one per batch whose frames gave votes (front and rear; left has no
    # camera_info): front sees ahead (x > 0), rear behind (x < 0): 4 grids, none for the
    # batches of left alone.
    grids = out["/segmentation/drivable_grid"]
    assert len(grids) == 4
    spec = bev.surround_grid(bev.GridSpec(resolution=0.5, max_range=18))  # several cameras
    assert (grids[0][1].info.width, grids[0][1].info.origin.position.x) == (spec.width, -18.0)
    x = spec.x_min + (np.arange(spec.width) + 0.5) * spec.resolution
    front = project("front", spec)
    rear = project("rear", spec)
    for index, (_, msg) in enumerate(grids):
        assert msg.header.frame_id == "base_link"
        values = np.asarray(msg.data).reshape(spec.height, spec.width)
        # A cell seen by one camera only has that camera's value; no camera sees under the car.
        np.testing.assert_array_equal(values[:, x > 1], front[:, x > 1])
        np.testing.assert_array_equal(values[:, x < -1], rear[:, x < -1])
        assert (values[:, np.abs(x) < 1] == bev.UNKNOWN).all()
        assert (values[:, x > 1] == bev.FREE).any() and (values[:, x < -1] == bev.FREE).any()
        # Stamped with the newest votes: rear's (3 ms after front's), then front's last; the
        # fourth grid keeps rear's last frame (97 ms old, within --grid-max-age-ms 500).
        newest = stamps("rear")[index] if index < 3 else stamps("front")[3]
        assert stamp_to_ns(msg.header.stamp) == newest

    data = json.loads((report / "metrics.json").read_text())
    cams = data["cameras"]
    assert {n: c["frames"]["processed"] for n, c in cams.items()} == {"front": 4, "rear": 3, "left": 6}
    assert data["frames"]["processed"] == 13 and data["frames"]["read"] == 13
    assert data["input"]["image_topics"] == ["/front/image_raw", "/rear/image_raw",
                                             "/left/image_raw/compressed"]
    assert cams["left"]["image_type"] == "sensor_msgs/msg/CompressedImage"
    assert cams["left"]["frame_rate_hz"] == pytest.approx(20.0)
    # The bag's rate counts every camera's messages: 13 within 300 ms (front's first to last).
    assert data["input"]["frame_rate_hz"] == pytest.approx(12 / 0.3)
    # Ground truth on the front camera: its accuracy is the known error, and the total's.
    pred, truth = ground_labels("front", 2.0), ground_labels("front", 1.0)
    assert cams["front"]["evaluation"]["pixel_accuracy"] == pytest.approx(np.mean(pred == truth))
    assert cams["front"]["evaluation"]["frames_evaluated"] == 4
    assert cams["rear"]["evaluation"] is None and cams["left"]["evaluation"] is None
    assert data["evaluation"]["confusion_matrix"] == cams["front"]["evaluation"]["confusion_matrix"]
    assert cams["front"]["birds_eye"]["grids"] == 4 and cams["left"]["birds_eye"] is None
    # The bird's-eye IoU of the camera with ground truth: its own grid against the truth's.
    truth_grid = project("front", spec, ground_labels("front", 1.0))
    known = truth_grid != bev.UNKNOWN
    inter = np.count_nonzero((front == bev.FREE) & (truth_grid == bev.FREE))
    union = np.count_nonzero(((front == bev.FREE) & known) | (truth_grid == bev.FREE))
    assert cams["front"]["birds_eye"]["drivable_iou"] == pytest.approx(inter / union)
    assert data["birds_eye"]["drivable_iou"] == pytest.approx(inter / union)
    assert data["birds_eye"]["fused"] and data["birds_eye"]["topic_messages"] == len(grids)
    assert any("camera left" in w and "camera_info" in w for w in data["status"]["warnings"])
    with (report / "frames.csv").open() as stream:
        rows = list(csv.DictReader(stream))
    assert sorted({r["camera"] for r in rows}) == ["front", "left", "rear"] and len(rows) == 13
    page = (report / "report.html").read_text()
    assert "<h2>Cameras</h2>" in page and "/left/image_raw/compressed" in page


def test_repeated_image_topic_names_cameras_and_a_camera_outside_the_extent_warns(
        bag: Path, tmp_path: Path) -> None:
    report = tmp_path / "report"
    assert run_cli([str(bag), "-o", str(tmp_path / "out"), "--image-topic", "/front/image_raw",
                    "--image-topic", "/rear/image_raw", "--report", str(report), "--no-progress",
                    "--drivable-classes", "road", "--grid-extent", "0", "20", "-10", "10"],
                   engine_factory=BatchEngine) == 0
    out = read_bag(tmp_path / "out")
    assert len(out["/front/segmentation/mask"]) == 4 and len(out["/rear/segmentation/mask"]) == 3
    assert "/left/segmentation/mask" not in out
    data = json.loads((report / "metrics.json").read_text())
    assert set(data["cameras"]) == {"front", "rear"}
    # The rear camera looks away from the extent ahead of the car: said, never silent.
    warnings = [w for w in data["status"]["warnings"] if w.startswith("camera 'rear'")]
    assert len(warnings) == 1 and "left out of 4 of 4 fused grid(s) (outside_extent)" in warnings[0]
    assert data["cameras"]["rear"]["birds_eye"]["grids"] == 0
    assert data["cameras"]["front"]["birds_eye"]["grids"] == 4


def test_the_grid_set_up_reads_the_bag_once_for_every_camera(bag: Path, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    from bisenet_ros.replay.bag import InputBag

    passes: list[set[str]] = []
    messages = InputBag.messages

    def counted(self: InputBag, topics: Any) -> Any:
        passes.append(set(topics))
        return messages(self, topics)

    monkeypatch.setattr(InputBag, "messages", counted)
    assert run_cli([str(bag), "-o", str(tmp_path / "out"), "--cameras", "front,rear,left",
                    "--no-progress", *GRID], engine_factory=BatchEngine) == 0
    # One pass for the CameraInfo of both calibrated cameras and the transforms, one replay pass.
    grid_passes = [p for p in passes if "/tf_static" in p]
    assert grid_passes == [{"/front/camera_info", "/rear/camera_info", "/tf_static"}]
    assert len(passes) == 2
    assert len(read_bag(tmp_path / "out")["/segmentation/drivable_grid"]) > 0


def test_ground_truth_on_two_cameras_is_scored_per_camera_and_summed(bag: Path, tmp_path: Path) -> None:
    report = tmp_path / "report"
    assert run_cli([str(bag), "-o", str(tmp_path / "out"), "--cameras", "front,rear,left",
                    "--labels-topic", "/front/labels", "--labels-topic", "/rear/labels", "--no-grid",
                    "--outputs", "mask", "--report", str(report), "--no-progress"],
                   engine_factory=BatchEngine) == 0
    data = json.loads((report / "metrics.json").read_text())
    front, rear = (data["cameras"][n]["evaluation"] for n in ("front", "rear"))
    assert front["ground_truth"] == "topic /front/labels" and front["frames_evaluated"] == 4
    assert rear["ground_truth"] == "topic /rear/labels" and rear["frames_evaluated"] == 3
    assert rear["pixel_accuracy"] == 1.0
    pred, truth = ground_labels("front", 2.0), ground_labels("front", 1.0)
    assert front["pixel_accuracy"] == pytest.approx(np.mean(pred == truth))
    total = data["evaluation"]
    assert total["frames_evaluated"] == 7
    assert total["confusion_matrix"] == (np.array(front["confusion_matrix"])
                                         + np.array(rear["confusion_matrix"])).tolist()
    assert data["cameras"]["left"]["evaluation"] is None


@pytest.mark.parametrize("argv, message", [
    (["--cameras", "front,rear", "--labels-topic", "/front/labels", "--labels-topic",
      "/rear/labels", "--labels-camera", "front"], "names the camera of one ground truth"),
    (["--labels-topic", "/front/labels", "--labels-topic", "/rear/labels"], "several cameras"),
    (["--cameras", "front,front"], "named twice: front"),
    (["--cameras", "front,,rear"], "entry 1 (counting from 0) empty"),
    (["--image-topic", "/front/image_raw", "--image-topic", "/front/image_raw"], "named twice"),
    (["--cameras", "front,back"], "camera 'back'"),
    (["--cameras", "front,rear", "--labels-dir", "x"], "--labels-camera"),
])
def test_bad_cameras_are_one_line_usage_errors(bag: Path, tmp_path: Path, argv: list[str],
                                               message: str, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "a.png").write_bytes(b"")
    argv = [a if a != "x" else str(tmp_path / "x") for a in argv]
    assert run_cli([str(bag), "-o", str(tmp_path / "out"), "--no-progress", *argv]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_evaluate_scores_the_camera_with_ground_truth(bag: Path, tmp_path: Path) -> None:
    weights = tmp_path / "a.pth"
    weights.write_bytes(b"a" * 32)
    report = tmp_path / "report"
    assert evaluate_cli.main([str(bag), "--cameras", "front,rear,left", "--labels-topic",
                              "/front/labels", "--weights", str(weights), "--report", str(report),
                              "--drivable-classes", "road", "--no-progress"],
                             engine_factory=BatchEngine) == 0
    data = json.loads((report / "metrics.json").read_text())
    pred, truth = ground_labels("front", 2.0), ground_labels("front", 1.0)
    bag_figures = data["per_bag"][0]
    assert bag_figures["models"][0]["pixel_accuracy"] == pytest.approx(np.mean(pred == truth))
    assert bag_figures["models"][0]["frames_evaluated"] == 4  # the front camera's frames
    assert bag_figures["frames_in_topic"] == 13 and bag_figures["frames_processed"] == 13


class RejectingEngine(BatchEngine):
    """BatchEngine that rejects (ValueError, as Segmenter for a bad frame) any batch holding a
    frame marked with green 7 at its corner."""

    def __call__(self, frame: np.ndarray, color_order: str = "bgr", outputs: Any = None) -> Any:
        if frame[0, 0, 1] == 7:
            raise ValueError("bad frame")
        return super().__call__(frame, color_order, outputs)

    def segment_batch(self, frames: Sequence[np.ndarray], color_orders: Sequence[str] | str = "bgr",
                      outputs: Any = None) -> list[Any]:
        if any(frame[0, 0, 1] == 7 for frame in frames):
            raise ValueError("bad frame in the batch")
        return super().segment_batch(frames, color_orders, outputs)


def test_bad_messages_of_one_camera_are_skipped_and_the_others_processed(tmp_path: Path) -> None:
    frames = [frame_for(np.zeros((16, 32), np.uint8), seed=i) for i in range(4)]
    frames[1][0, 0, 1] = 7  # the engine rejects this one (in a batch with the other camera's)
    messages = image_messages(frames, topic="/a/image_raw", start_ns=START)
    messages += image_messages(frames[:1] * 4, topic="/b/image_raw", start_ns=START + 1000)
    garbage = BagMessage("/b/image_raw", IMAGE, messages[-1].timestamp + 1, raw=b"\x00\x01\x00\x00")
    bag = write_bag(tmp_path / "in", sorted(messages + [garbage], key=lambda m: m.timestamp))
    report = tmp_path / "report"
    assert run_cli([str(bag), "-o", str(tmp_path / "out"), "--cameras", "a,b", "--no-grid",
                    "--report", str(report), "--no-progress"], engine_factory=RejectingEngine) == 0
    data = json.loads((report / "metrics.json").read_text())
    assert {n: c["frames"] for n, c in data["cameras"].items()} == {
        "a": {"read": 4, "processed": 3, "skipped_corrupt": 1},
        "b": {"read": 5, "processed": 4, "skipped_corrupt": 1}}
    reasons = {(c["camera"], c["index"]): c["reason"] for c in data["frames"]["corrupt"]}
    assert set(reasons) == {("a", 1), ("b", 4)} and "engine rejected" in reasons[("a", 1)]
    out = read_bag(tmp_path / "out")
    assert [stamp_to_ns(m.header.stamp) for _, m in out["/a/segmentation/mask"]] == [
        messages[i].msg.header.stamp.sec * 10**9 + messages[i].msg.header.stamp.nanosec
        for i in (0, 2, 3)]
    assert len(out["/b/segmentation/mask"]) == 4


def test_the_real_segmenter_gives_each_camera_what_it_gives_the_frame_alone(
        bag: Path, tmp_path: Path) -> None:
    from bisenet_ros.inference import Segmenter

    class Counting(Segmenter):
        batches: list[int] = []

        def segment_batch(self, frames: Any, color_orders: Any = "bgr", outputs: Any = None) -> Any:
            self.batches.append(len(frames))
            return super().segment_batch(frames, color_orders, outputs)

    engines: list[Segmenter] = []

    def factory(config: Any) -> Segmenter:
        engines.append(Counting(config))
        return engines[-1]

    with pytest.warns(UserWarning, match="random"):
        assert run_cli([str(bag), "-o", str(tmp_path / "out"), "--cameras", "front,rear,left",
                        "--resolution", "64x32", "--max-frames", "2", "--no-grid",
                        "--report", str(tmp_path / "report"), "--no-progress"],
                       engine_factory=factory) == 0
    assert Counting.batches == [3, 3]  # the three cameras' frames as one batch, twice
    latency = json.loads((tmp_path / "report" / "metrics.json").read_text())["timing"]["latency_ms"]
    assert {"inference", "engine_call"} <= set(latency) and "batch" not in latency
    out = read_bag(tmp_path / "out")
    engine = engines[0]
    with Reader(bag) as reader:
        inputs: dict[str, list[Any]] = {}
        for conn, _, raw in reader.messages():
            if conn.topic.endswith(("image_raw", "compressed")):
                inputs.setdefault(conn.topic.split("/")[1], []).append(deserialize(raw, conn.msgtype))
    for name in CAMERAS:
        for index, msg in enumerate(inputs[name][:2]):
            decode = codec.decode_compressed if name == "left" else codec.decode_image
            frame, order = decode(msg)
            fields = outputs.result_to_image_fields(engine(frame, color_order=order), order)
            for topic in ("mask", "overlay"):
                written = out[f"/{name}/segmentation/{topic}"][index][1]
                assert written.header.frame_id == msg.header.frame_id
                np.testing.assert_array_equal(np.asarray(written.data), fields[topic]["data"],
                                              err_msg=f"{name} {topic} {index}")


def test_frame_batcher_keeps_every_frame_in_order_through_the_scheduler() -> None:
    from bisenet_ros.replay.cameras import FrameBatcher

    batcher = FrameBatcher(["a", "b"], depth=3)
    for i in range(3):
        batcher.push("a", f"a{i}")
        assert batcher.ready(set()) == (i == 2)  # b has nothing yet: wait, up to depth frames
    assert batcher.scheduler.pending("a") and not batcher.scheduler.pending("b")
    assert batcher.pop() == ["a0"]  # a flooding camera's backlog is never replaced
    batcher.push("b", "b0")
    assert batcher.ready(set()) and sorted(batcher.pop()) == ["a1", "b0"]
    assert not batcher.ready(set())  # a2 waits for b ...
    assert batcher.ready({"b"}) and batcher.pop() == ["a2"]  # ... until b sends nothing more
    assert len(batcher) == 0 and batcher.received("a") == 3
    counters = batcher.scheduler.counters()
    assert (counters["a"].scheduled, counters["a"].replaced, counters["b"].scheduled) == (3, 0, 1)
