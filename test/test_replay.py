"""Rosbag replay: bags made here (sqlite3 and MCAP, raw and compressed, with and without labels)
go through ``bisenet-ros replay``; the output bags are read back with ``rosbags``.

Most tests inject :class:`KnownEngine` through the replay's engine seam: its prediction is a
fixed function of the pixels, so output content and accuracy figures are known exactly. One
test runs the real :class:`bisenet_ros.inference.Segmenter`.
"""
from __future__ import annotations

import dataclasses
import json
import signal
import subprocess
import sys
import time
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from bisenet_ros.commands import replay as cli
from bisenet_ros.replay.bag import BagError, InputBag, detect_storage
from bisenet_ros.replay.bagtools import (
    BagMessage, frame_stamp, image_messages, write_bag, write_image_bag,
)
from bisenet_ros.replay.messages import IMAGE, deserialize, serialize, stamp_to_ns
from bisenet_ros.replay.pipeline import ReplayOptions, replay

H, W = 64, 128
NAMES = ["road", "sidewalk", "building", "wall"]
PALETTE = np.array([[128, 64, 128], [244, 35, 232], [70, 70, 70], [102, 102, 156]], np.uint8)
TEST_DIR = Path(__file__).resolve().parent
ROOT = TEST_DIR.parent


@dataclasses.dataclass
class FakeResult:
    labels: np.ndarray
    color: np.ndarray | None = None
    overlay: np.ndarray | None = None
    drivable: np.ndarray | None = None
    confidence: np.ndarray | None = None
    timings: dict[str, float] = dataclasses.field(default_factory=dict)


def known_labels(bgr: np.ndarray) -> np.ndarray:
    """KnownEngine's prediction: class = blue channel // 64 (0..3)."""
    return (bgr[:, :, 0] // 64).astype(np.uint8)


class KnownEngine:
    """Deterministic stand-in for Segmenter (same call signature and attributes).

    Args:
        delay: Seconds per frame (to make a run long enough to interrupt).
        marker: File created once ``marker_after`` frames were segmented.
    """

    class_names = NAMES
    palette = PALETTE

    def __init__(self, config: Any = None, *, delay: float = 0.0, marker: str | None = None,
                 marker_after: int = 5) -> None:
        self.config = config
        self.delay = delay
        self.marker = marker
        self.marker_after = marker_after
        self.calls = 0

    def __call__(self, frame: np.ndarray, color_order: str = "bgr",
                 outputs: Any = None) -> FakeResult:
        if self.delay:
            time.sleep(self.delay)
        self.calls += 1
        if self.marker and self.calls == self.marker_after:
            Path(self.marker).touch()
        bgr = frame if color_order == "bgr" else frame[:, :, ::-1]
        labels = known_labels(bgr)
        rgb = PALETTE[labels]
        color = rgb if color_order == "rgb" else rgb[:, :, ::-1]
        wanted = set(outputs or ())
        return FakeResult(
            labels=labels,
            color=np.ascontiguousarray(color) if "color" in wanted else None,
            overlay=(frame // 2 + color // 2).astype(np.uint8) if "overlay" in wanted else None,
            drivable=np.where(labels == 0, 255, 0).astype(np.uint8) if "drivable" in wanted else None,
            confidence=np.full(labels.shape, 0.75, np.float32) if "confidence" in wanted else None,
            timings={"inference": 1.0, "total": 1.5})


def split_frame(k: int, seed: int = 0) -> np.ndarray:
    """A frame KnownEngine splits into class 0 (left) and 1 (right), with the boundary moved
    ``k`` columns right; green/red channels random (they do not affect the prediction)."""
    rng = np.random.default_rng(seed)
    frame = rng.integers(0, 256, (H, W, 3), dtype=np.uint8)
    frame[:, :, 0] = 100  # class 1
    frame[:, :W // 2 + k, 0] = 10  # class 0
    return frame


def split_truth() -> np.ndarray:
    truth = np.ones((H, W), np.uint8)
    truth[:, :W // 2] = 0
    truth[:4] = 255  # ignored rows
    return truth


def read_bag(path: Path) -> dict[str, list[tuple[int, Any]]]:
    """topic -> [(bag timestamp, message)] of a bag, read with rosbags."""
    from rosbags.rosbag2 import Reader

    out: dict[str, list[tuple[int, Any]]] = {}
    with Reader(path) as reader:
        for conn, timestamp, raw in reader.messages():
            out.setdefault(conn.topic, []).append((timestamp, deserialize(raw, conn.msgtype)))
    return out


def bag_types(path: Path) -> dict[str, str]:
    from rosbags.rosbag2 import Reader

    with Reader(path) as reader:
        return {c.topic: c.msgtype for c in reader.connections}


def run_cli(argv: list[str], **kwargs: Any) -> int:
    kwargs.setdefault("engine_factory", KnownEngine)
    return cli.main(argv, **kwargs)


# -- bag discovery -----------------------------------------------------------------------------
@pytest.mark.parametrize("storage", ["mcap", "sqlite3"])
def test_discovery_detects_storage_topics_and_the_camera(tmp_path: Path, storage: str) -> None:
    frames = [split_frame(0, i) for i in range(3)]
    bag = write_image_bag(tmp_path / "in", frames, labels=[split_truth()] * 3, storage=storage)
    assert detect_storage(bag) == storage
    suffix = ".mcap" if storage == "mcap" else ".db3"
    assert detect_storage(next(bag.glob(f"*{suffix}"))) == storage
    with InputBag(bag) as reader:
        assert {t.name: (t.msgtype, t.count) for t in reader.topics.values()} == {
            "/camera/image_raw": (IMAGE, 3), "/camera/labels": (IMAGE, 3)}
        # Two image topics: ambiguous unless the labels topic is excluded.
        with pytest.raises(BagError, match="2 image topics.*--image-topic") as err:
            reader.pick_image_topic(None)
        assert "/camera/image_raw" in str(err.value) and "/camera/labels" in str(err.value)
        assert reader.pick_image_topic(None, exclude=["/camera/labels"]).name == "/camera/image_raw"
        with pytest.raises(BagError, match="not in"):
            reader.pick_image_topic("/front/image")
        assert not reader.damage


def test_reading_no_topic_of_the_bag_reads_nothing(tmp_path: Path) -> None:
    bag = write_image_bag(tmp_path / "in", [split_frame(0)], labels=[split_truth()])
    with InputBag(bag) as reader:
        assert list(reader.messages([])) == [] and list(reader.messages(["/not/there"])) == []
        assert [m.topic for m in reader.messages(["/camera/labels", "/not/there"])] == [
            "/camera/labels"]
        assert not reader.damage


def test_a_camera_recorded_raw_and_compressed_replays_the_raw_topic(tmp_path: Path) -> None:
    frames = [split_frame(0, seed=i) for i in range(2)]
    messages = image_messages(frames, topic="/cam/image_raw")
    messages += image_messages(frames, topic="/cam/image_raw/compressed", compressed="jpeg")
    with InputBag(write_bag(tmp_path / "in", messages)) as bag:
        assert bag.pick_image_topic(None).name == "/cam/image_raw"
        assert any("raw and compressed" in w for w in bag.warnings)


def test_cli_lists_image_topics_when_the_camera_is_ambiguous(tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    messages = image_messages([split_frame(0)], topic="/left/image_raw")
    messages += image_messages([split_frame(0)], topic="/right/image", compressed="jpeg")
    write_bag(tmp_path / "in", messages)
    assert run_cli([str(tmp_path / "in"), "-o", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "--image-topic" in err and "/left/image_raw" in err and "/right/image" in err
    assert "CompressedImage" in err
    assert not (tmp_path / "out").exists()


# -- output topics, types, encodings, stamps ---------------------------------------------------
CASES = [  # (input storage, output storage, compressed, raw encoding)
    ("sqlite3", "mcap", None, "bgr8"),
    ("mcap", "sqlite3", "png", "bgr8"),
    ("mcap", "mcap", "jpeg", "bgr8"),
    ("sqlite3", "sqlite3", None, "rgb8"),
]


@pytest.mark.parametrize("in_storage,out_storage,compressed,encoding", CASES)
def test_output_bag_has_the_node_topics_types_encodings_and_stamps(
        tmp_path: Path, in_storage: str, out_storage: str, compressed: str | None,
        encoding: str) -> None:
    frames = [split_frame(4 * i, seed=i) for i in range(5)]
    bag = write_image_bag(tmp_path / "in", frames, storage=in_storage, compressed=compressed,
                          encoding=encoding, topic="/cam/image")
    out = tmp_path / "out"
    rc = run_cli([str(bag), "-o", str(out), "--storage", out_storage, "--namespace", "/front",
                  "--publish-confidence", "--copy-input", "--no-progress",
                  "--drivable-classes", "road"])
    assert rc == 0
    assert detect_storage(out) == out_storage
    node = "/front/segmentation"
    expected_types = {f"{node}/{t}": IMAGE for t in
                      ("mask", "color_mask", "overlay", "drivable_mask", "confidence")}
    expected_types[f"{node}/label_info"] = "vision_msgs/msg/LabelInfo"
    expected_types["/cam/image"] = "sensor_msgs/msg/CompressedImage" if compressed else IMAGE
    assert bag_types(out) == expected_types

    data = read_bag(out)
    inputs = data["/cam/image"]  # copied through unchanged
    assert len(inputs) == 5
    in_stamps = [stamp_to_ns(m.header.stamp) for _, m in inputs]
    in_times = [t for t, _ in inputs]
    assert in_stamps == [frame_stamp(i) for i in range(5)]
    encodings = {"mask": "mono8", "color_mask": "bgr8", "overlay": "bgr8",
                 "drivable_mask": "mono8", "confidence": "32FC1"}
    for name, enc in encodings.items():
        messages = data[f"{node}/{name}"]
        assert [t for t, _ in messages] == in_times, name  # bag timestamps preserved
        assert [stamp_to_ns(m.header.stamp) for _, m in messages] == in_stamps, name
        assert all(m.header.frame_id == "camera" for _, m in messages)
        assert all((m.encoding, m.height, m.width) == (enc, H, W) for _, m in messages), name
    if compressed != "jpeg":  # lossless input: the prediction is known pixel for pixel
        for i, (_, mask) in enumerate(data[f"{node}/mask"]):
            expected = known_labels(frames[i])
            np.testing.assert_array_equal(np.asarray(mask.data).reshape(H, W), expected)
            color = np.asarray(data[f"{node}/color_mask"][i][1].data).reshape(H, W, 3)
            np.testing.assert_array_equal(color, PALETTE[expected][:, :, ::-1])  # bgr8
            drivable = np.asarray(data[f"{node}/drivable_mask"][i][1].data).reshape(H, W)
            np.testing.assert_array_equal(drivable, np.where(expected == 0, 255, 0))
    confidence = np.asarray(data[f"{node}/confidence"][0][1].data).view(np.float32)
    assert np.all(confidence == np.float32(0.75))
    ((info_time, info),) = data[f"{node}/label_info"]
    assert info_time == in_times[0]
    assert [(c.class_id, c.class_name) for c in info.class_map] == list(enumerate(NAMES))


def test_label_info_is_latched_like_the_node(tmp_path: Path) -> None:
    from rosbags.interfaces import QosDurability
    from rosbags.rosbag2 import Reader

    bag = write_image_bag(tmp_path / "in", [split_frame(0)])
    assert run_cli([str(bag), "-o", str(tmp_path / "out"), "--no-progress"]) == 0
    with Reader(tmp_path / "out") as reader:
        qos = {c.topic: c.ext.offered_qos_profiles[0].durability for c in reader.connections}
    assert qos["/segmentation/label_info"] == QosDurability.TRANSIENT_LOCAL
    assert qos["/segmentation/mask"] == QosDurability.VOLATILE
    assert "/segmentation/confidence" not in qos  # only with --publish-confidence, as the node


# -- accuracy against ground truth -------------------------------------------------------------
SHIFTS = [0, 4, 8, 12]


def expected_scores() -> dict[str, float]:
    # Columns W/2 .. W/2+k of the right half (truth: class 1) are predicted class 0.
    rows, half, moved = H - 4, W // 2, sum(SHIFTS)
    n = len(SHIFTS)
    iou0 = Fraction(rows * half * n, rows * half * n + rows * moved)
    iou1 = Fraction(rows * (half * n - moved), rows * half * n)
    return {"iou0": float(iou0), "iou1": float(iou1), "miou": float((iou0 + iou1) / 2),
            "acc": float(Fraction(W * n - moved, W * n))}


def _assert_scores(metrics: dict[str, Any]) -> None:
    want = expected_scores()
    ev = metrics["evaluation"]
    assert ev["frames_evaluated"] == len(SHIFTS)
    assert ev["pixels_evaluated"] == (H - 4) * W * len(SHIFTS)
    assert ev["per_class_iou"]["road"] == pytest.approx(want["iou0"], abs=1e-12)
    assert ev["per_class_iou"]["sidewalk"] == pytest.approx(want["iou1"], abs=1e-12)
    assert ev["per_class_iou"]["building"] is None  # neither in truth nor predicted
    assert ev["miou"] == pytest.approx(want["miou"], abs=1e-12)
    assert ev["pixel_accuracy"] == pytest.approx(want["acc"], abs=1e-12)
    assert ev["drivable_iou"] == pytest.approx(want["iou0"], abs=1e-12)  # drivable = road
    cm = np.array(ev["confusion_matrix"])
    assert cm[1, 0] == (H - 4) * sum(SHIFTS) and cm[0, 1] == 0


@pytest.mark.parametrize("storage", ["mcap", "sqlite3"])
def test_miou_from_a_labels_topic_is_exact(tmp_path: Path, storage: str) -> None:
    frames = [split_frame(k, seed=i) for i, k in enumerate(SHIFTS)]
    bag = write_image_bag(tmp_path / "in", frames, labels=[split_truth()] * len(frames),
                          storage=storage)
    report = tmp_path / "report"
    assert run_cli([str(bag), "-o", str(tmp_path / "out"), "--labels-topic", "/camera/labels",
                    "--report", str(report), "--no-progress", "--drivable-classes", "road"]) == 0
    metrics = json.loads((report / "metrics.json").read_text())
    _assert_scores(metrics)
    # Temporal stability: the boundary moves 4 columns per frame.
    change = metrics["content"]["label_change_fraction"]
    assert change["count"] == len(SHIFTS) - 1
    assert change["max"] == pytest.approx(4 / W) and change["mean"] == pytest.approx(4 / W)
    shares = metrics["content"]["class_share_mean"]
    assert shares["road"] == pytest.approx(np.mean([(W // 2 + k) / W for k in SHIFTS]))
    assert metrics["content"]["drivable_fraction"]["mean"] == pytest.approx(shares["road"])
    page = (report / "report.html").read_text()
    assert "data:image/png;base64," in page and "data:image/jpeg;base64," in page
    assert "mIoU" in page and "Latency per stage" in page
    assert len((report / "frames.csv").read_text().strip().splitlines()) == 1 + len(SHIFTS)


@pytest.mark.parametrize("match", ["timestamp", "order"])
def test_miou_from_a_cityscapes_folder_is_exact(tmp_path: Path, match: str) -> None:
    import cv2

    frames = [split_frame(k, seed=i) for i, k in enumerate(SHIFTS)]
    bag = write_image_bag(tmp_path / "in", frames)
    city = tmp_path / "gtFine" / "val" / "drive"
    city.mkdir(parents=True)
    for i in range(len(frames)):
        name = f"drive_{frame_stamp(i)}" if match == "timestamp" else f"drive_{i:06d}"
        cv2.imwrite(str(city / f"{name}_gtFine_labelTrainIds.png"), split_truth())
        cv2.imwrite(str(city / f"{name}_gtFine_color.png"), np.zeros((H, W, 3), np.uint8))
    report = tmp_path / "report"
    assert run_cli([str(bag), "-o", str(tmp_path / "out"), "--labels-dir", str(tmp_path / "gtFine"),
                    "--labels-match", match, "--report", str(report), "--no-progress",
                    "--drivable-classes", "road"]) == 0
    _assert_scores(json.loads((report / "metrics.json").read_text()))


def test_confusion_matrix_counts_ignore_and_unassigned_pixels() -> None:
    from bisenet_ros.replay.metrics import ConfusionMatrix, percentiles

    cm = ConfusionMatrix(3, drivable_ids=[0])
    truth = np.array([[0, 0, 1, 255], [2, 2, 1, 1]], np.uint8)
    pred = np.array([[0, 1, 1, 0], [2, 255, 1, 0]], np.uint8)
    cm.update(pred, truth)
    assert cm.matrix.tolist() == [[1, 1, 0], [1, 2, 0], [0, 0, 1]]
    assert cm.unassigned.tolist() == [0, 0, 1]  # a 255 prediction is a miss, not dropped
    assert cm.iou() == [pytest.approx(1 / 3), pytest.approx(2 / 4), pytest.approx(1 / 2)]
    assert cm.pixel_accuracy() == pytest.approx(4 / 7)
    assert cm.drivable_iou() == pytest.approx(1 / 3)  # pred road {(0,0),(1,3)}, truth {(0,0),(0,1)}
    with pytest.raises(ValueError, match="differ in size"):
        cm.update(pred[:, :2], truth)
    p = percentiles(list(range(1, 101)))
    assert (p["p50"], p["p90"], p["p99"], p["max"]) == (50, 90, 99, 100)


# -- robustness --------------------------------------------------------------------------------
@pytest.mark.parametrize("storage,compressed", [("mcap", None), ("sqlite3", "jpeg")])
def test_corrupt_messages_are_skipped_counted_and_reported(tmp_path: Path, storage: str,
                                                           compressed: str | None) -> None:
    frames = [split_frame(0, seed=i) for i in range(6)]
    messages = image_messages(frames, compressed=compressed)
    msgtype = messages[0].msgtype
    # #2: bytes that are not CDR at all; #4: a well-formed message with broken image data.
    messages[2] = BagMessage(messages[2].topic, msgtype, messages[2].timestamp, raw=b"\x00\x01garbage")
    bad = deserialize(serialize(messages[4].msg), msgtype)
    if compressed:
        bad.data = np.frombuffer(b"this is not a JPEG", np.uint8)
    else:
        bad.data = bad.data[: len(bad.data) // 3]
    messages[4] = BagMessage(messages[4].topic, msgtype, messages[4].timestamp, bad)
    bag = write_bag(tmp_path / "in", messages, storage=storage)
    options = ReplayOptions(input=bag, output=tmp_path / "out", progress=False,
                            report_dir=tmp_path / "report")
    result = replay(options, KnownEngine(), install_signal_handlers=False)
    assert result.exit_code == 0 and result.output_closed
    assert [c["index"] for c in result.corrupt] == [2, 4]
    assert all(c["reason"] for c in result.corrupt)
    assert result.frames_read == 6 and result.frames_processed == 4
    masks = read_bag(tmp_path / "out")["/segmentation/mask"]
    assert [stamp_to_ns(m.header.stamp) for _, m in masks] == [frame_stamp(i) for i in (0, 1, 3, 5)]
    from bisenet_ros.replay.report import write_report

    write_report(result, tmp_path / "report")
    metrics = json.loads((tmp_path / "report" / "metrics.json").read_text())
    assert metrics["frames"]["skipped_corrupt"] == 2
    assert "Skipped messages" in (tmp_path / "report" / "report.html").read_text()


@pytest.mark.parametrize("storage", ["mcap", "sqlite3"])
def test_truncated_bag_is_processed_as_far_as_readable(tmp_path: Path, storage: str,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    frames = [split_frame(0, seed=i) for i in range(30)]
    bag = write_image_bag(tmp_path / "in", frames, storage=storage)
    (storage_file,) = [p for p in bag.iterdir() if p.suffix in (".mcap", ".db3")]
    with storage_file.open("r+b") as stream:
        stream.truncate(int(storage_file.stat().st_size * 0.6))
    out = tmp_path / "out"
    rc = run_cli([str(bag), "-o", str(out), "--no-progress", "--report", str(tmp_path / "report")])
    captured = capsys.readouterr()
    assert rc == 1
    assert "input bag is damaged" in captured.err
    masks = read_bag(out)["/segmentation/mask"]  # a valid, readable bag
    assert 10 <= len(masks) < 30
    # Every recovered frame, in order, without gaps.
    assert [stamp_to_ns(m.header.stamp) for _, m in masks] == [frame_stamp(i) for i in range(len(masks))]
    metrics = json.loads((tmp_path / "report" / "metrics.json").read_text())
    assert metrics["status"]["exit_code"] == 1 and metrics["status"]["input_damage"]
    assert metrics["frames"]["processed"] == len(masks)


def test_bag_without_metadata_is_read_from_its_storage_file(tmp_path: Path) -> None:
    bag = write_image_bag(tmp_path / "in", [split_frame(0, seed=i) for i in range(3)])
    (bag / "metadata.yaml").unlink()  # a recorder that was killed
    result = replay(ReplayOptions(input=bag, output=tmp_path / "out", progress=False),
                    KnownEngine(), install_signal_handlers=False)
    assert result.exit_code == 0 and result.frames_processed == 3
    assert any("metadata.yaml" in w for w in result.warnings)


INTERRUPT_SCRIPT = """
import sys
sys.path.insert(0, {test_dir!r})
from test_replay import KnownEngine
from bisenet_ros.commands.replay import main
sys.exit(main(sys.argv[1:], engine_factory=lambda cfg: KnownEngine(cfg, delay=0.03, marker={marker!r})))
"""


def _start_interruptible_replay(tmp_path: Path, *args: str) -> tuple[subprocess.Popen, Path, Path]:
    """Start a 300-frame replay in a subprocess and wait until it is processing frames."""
    bag = write_image_bag(tmp_path / "in", [split_frame(0, seed=i % 7) for i in range(300)])
    marker = tmp_path / "started"
    script = INTERRUPT_SCRIPT.format(test_dir=str(TEST_DIR), marker=str(marker))
    out, report = tmp_path / "out", tmp_path / "report"
    proc = subprocess.Popen(
        [sys.executable, "-c", script, str(bag), "-o", str(out), *args, "--report", str(report),
         "--no-progress"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not marker.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"replay did not start: {proc.communicate()}")
        time.sleep(0.05)
    return proc, out, report


@pytest.mark.parametrize("sig,storage", [(signal.SIGINT, "mcap"), (signal.SIGTERM, "sqlite3")])
def test_interrupted_run_closes_the_output_bag_with_every_processed_frame(
        tmp_path: Path, sig: signal.Signals, storage: str) -> None:
    proc, out, report = _start_interruptible_replay(tmp_path, "--storage", storage)
    try:
        proc.send_signal(sig)
        _, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 128 + sig, stderr
    assert f"stopped by {sig.name}" in stderr
    masks = read_bag(out)["/segmentation/mask"]  # closed properly: rosbags reads it
    assert 5 <= len(masks) < 300
    assert [stamp_to_ns(m.header.stamp) for _, m in masks] == [frame_stamp(i) for i in range(len(masks))]
    metrics = json.loads((report / "metrics.json").read_text())
    assert metrics["status"]["interrupted"] == sig.name
    assert metrics["frames"]["processed"] == len(masks)
    assert metrics["output"]["messages"]["/segmentation/mask"] == len(masks)


def test_a_second_ctrl_c_skips_the_report_but_still_closes_the_bag(tmp_path: Path) -> None:
    proc, out, report = _start_interruptible_replay(tmp_path)
    try:
        proc.send_signal(signal.SIGINT)
        time.sleep(0.01)
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr
    masks = read_bag(out)["/segmentation/mask"]
    assert 5 <= len(masks) < 300
    assert not (report / "metrics.json").exists()


def test_existing_output_is_refused_unless_overwrite(tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    bag = write_image_bag(tmp_path / "in", [split_frame(0)])
    out = tmp_path / "out"
    assert run_cli([str(bag), "-o", str(out), "--no-progress"]) == 0
    before = sorted(p.name for p in out.iterdir())
    assert run_cli([str(bag), "-o", str(out), "--no-progress"]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == before
    assert run_cli([str(bag), "-o", str(out), "--no-progress", "--overwrite"]) == 0
    # A folder that is not a bag is never deleted, even with --overwrite.
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "notes.txt").write_text("keep me")
    assert run_cli([str(bag), "-o", str(precious), "--no-progress", "--overwrite"]) == 2
    assert (precious / "notes.txt").read_text() == "keep me"
    # An existing report is refused too.
    assert run_cli([str(bag), "-o", str(tmp_path / "o2"), "--report", str(tmp_path / "r"),
                    "--no-progress"]) == 0
    assert run_cli([str(bag), "-o", str(tmp_path / "o3"), "--report", str(tmp_path / "r"),
                    "--no-progress"]) == 2
    assert not (tmp_path / "o3").exists()


def test_class_names_match_as_in_the_engine_and_a_refused_run_leaves_nothing(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bag = write_image_bag(tmp_path / "in", [split_frame(0)], labels=[split_truth()])
    report = tmp_path / "report"
    # 'Road' is the engine's 'road': one case-insensitive rule everywhere
    assert run_cli([str(bag), "-o", str(tmp_path / "out"), "--labels-topic", "/camera/labels",
                    "--report", str(report), "--no-progress", "--drivable-classes", "Road"]) == 0
    metrics = json.loads((report / "metrics.json").read_text())
    assert metrics["evaluation"]["drivable_iou"] is not None
    # an unknown name: one line with the closest name, exit 2, no output bag, no report folder
    assert run_cli([str(bag), "-o", str(tmp_path / "out2"), "--report", str(tmp_path / "new" / "report"),
                    "--image-topic", "/camera/image_raw", "--no-progress", "--drivable-classes",
                    "sidewalks"]) == 2
    err = capsys.readouterr().err
    assert "unknown class 'sidewalks'" in err and "did you mean 'sidewalk'?" in err
    assert not (tmp_path / "out2").exists() and not (tmp_path / "new").exists()


def test_a_report_that_cannot_be_written_leaves_no_half_report(tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    from bisenet_ros.replay import report as report_module

    def full_disk(*_: Any) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(report_module, "_write_csv", full_disk)   # after metrics.json was written
    bag = write_image_bag(tmp_path / "in", [split_frame(0)])
    with pytest.raises(OSError, match="No space left"):
        run_cli([str(bag), "-o", str(tmp_path / "out"), "--report", str(tmp_path / "r" / "report"),
                 "--no-progress"])
    assert not (tmp_path / "r").exists()


def test_a_training_checkpoint_replays_with_weights_alone(tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    from trained import NAMES, write_training_checkpoint

    weights = str(write_training_checkpoint(tmp_path / "best.pth"))
    bag = write_image_bag(tmp_path / "in", [split_frame(0)])
    report = tmp_path / "report"
    assert run_cli([str(bag), "-o", str(tmp_path / "out"), "--weights", weights, "--report", str(report),
                    "--no-progress"], engine_factory=None) == 0
    metrics = json.loads((report / "metrics.json").read_text())
    assert metrics["engine"]["variant"] == metrics["config"]["variant"] == "stdc1"
    assert metrics["engine"]["resolution"] == metrics["config"]["resolution"] == [64, 32]
    assert metrics["config"]["num_classes"] == len(NAMES)
    # an explicit option contradicting the file: exit 2 naming both values, nothing written
    assert run_cli([str(bag), "-o", str(tmp_path / "out2"), "--weights", weights, "--variant", "stdc2",
                    "--report", str(tmp_path / "r2"), "--no-progress"], engine_factory=None) == 2
    assert "variant=stdc2 contradicts" in capsys.readouterr().err
    assert not (tmp_path / "out2").exists() and not (tmp_path / "r2").exists()


# -- options mirror the node's -----------------------------------------------------------------
def test_options_come_from_the_node_parameter_file_and_the_command_line(tmp_path: Path) -> None:
    import argparse

    params = tmp_path / "params.yaml"
    params.write_text("segmentation:\n  ros__parameters:\n    variant: stdc1\n"
                      "    resolution: 256x128\n    publish_confidence: true\n"
                      "    color_mask_encoding: rgb8\n    qos: reliable\n")
    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    args = parser.parse_args(["in", "-o", "out", "--config", str(params), "--resolution", "128x64",
                              "--drivable-classes", "road,sidewalk"])
    options, config = cli.build_options(args, cli.config_from_args(args))
    assert (config.variant, config.resolution) == ("stdc1", (128, 64))  # the command line wins
    assert config.drivable_classes == ("road", "sidewalk")
    assert config.confidence and "confidence" in options.outputs
    assert options.color_encoding == "rgb8"
    assert options.storage == "mcap" and options.node_name == "segmentation"


def test_progress_line_shows_rate_and_eta() -> None:
    import io

    from bisenet_ros.replay.progress import Progress

    progress = Progress(100, stream=io.StringIO())
    line = progress.line(25, now=progress.start + 5.0)
    assert "25/100 frames" in line and "5.0 frames/s" in line and "ETA 15s" in line


# -- the real engine ---------------------------------------------------------------------------
def test_replay_with_the_real_segmenter_matches_the_engine_and_codec(tmp_path: Path) -> None:
    from bisenet_ros import outputs
    from bisenet_ros.inference import Segmenter

    frames = [split_frame(4 * i, seed=i) for i in range(3)]
    bag = write_image_bag(tmp_path / "in", frames, encoding="rgb8",
                          labels=[split_truth()] * 3)
    engines: list[Segmenter] = []

    def factory(config: Any) -> Segmenter:
        engines.append(Segmenter(config))
        return engines[-1]

    with pytest.warns(UserWarning, match="random"):
        rc = cli.main([str(bag), "-o", str(tmp_path / "out"), "--resolution", "64x32",
                       "--labels-topic", "/camera/labels", "--report", str(tmp_path / "report"),
                       "--no-progress"], engine_factory=factory)
    assert rc == 0
    data = read_bag(tmp_path / "out")
    engine = engines[0]
    for i, frame in enumerate(frames):
        rgb = np.ascontiguousarray(frame[:, :, ::-1])  # the bag holds rgb8: no conversion
        fields = outputs.result_to_image_fields(engine(rgb, color_order="rgb"), "rgb")
        for topic in ("mask", "color_mask", "overlay", "drivable_mask"):
            msg = data[f"/segmentation/{topic}"][i][1]
            assert msg.encoding == fields[topic]["encoding"]
            np.testing.assert_array_equal(np.asarray(msg.data), fields[topic]["data"], err_msg=topic)
    metrics = json.loads((tmp_path / "report" / "metrics.json").read_text())
    assert metrics["evaluation"]["frames_evaluated"] == 3
    assert set(metrics["timing"]["latency_ms"]) >= {"decode", "inference", "total", "write"}
    assert metrics["engine"]["resolution"] == [64, 32]


def test_a_cut_off_zstd_mcap_recording_is_salvaged_up_to_the_cut(tmp_path: Path) -> None:
    # rosbag2's MCAP recorder compresses chunks with zstd; a killed recorder leaves the last
    # chunk partial and no footer. Complete records of the partial chunk are still recovered.
    from rosbags.rosbag2 import CompressionFormat, CompressionMode, StoragePlugin, Writer

    from bisenet_ros.replay.messages import typestore

    frames = [split_frame(0, seed=i) for i in range(40)]
    writer = Writer(tmp_path / "rec", version=9, storage_plugin=StoragePlugin.MCAP)
    writer.set_compression(CompressionMode.STORAGE, CompressionFormat.ZSTD)
    writer.open()
    conn = None
    for message in image_messages(frames):
        conn = conn or writer.add_connection(message.topic, message.msgtype, typestore=typestore())
        writer.write(conn, message.timestamp, serialize(message.msg))
    writer.close()
    (mcap,) = (tmp_path / "rec").glob("*.mcap")
    with mcap.open("r+b") as stream:
        stream.truncate(int(mcap.stat().st_size * 0.6))
    with InputBag(tmp_path / "rec") as bag:
        assert bag.topics["/camera/image_raw"].count >= 15
        recovered = list(bag.messages(["/camera/image_raw"]))
        assert any("truncated" in d for d in bag.damage)
    assert 15 <= len(recovered) < 40
    for i, message in enumerate(recovered):  # intact, in order
        msg = deserialize(message.data, IMAGE)
        assert stamp_to_ns(msg.header.stamp) == frame_stamp(i)
        np.testing.assert_array_equal(np.asarray(msg.data).reshape(H, W, 3), frames[i])


def test_damage_inside_an_mcap_chunk_loses_only_the_hit_message(tmp_path: Path) -> None:
    import struct

    from bisenet_ros.replay.bagtools import DEFAULT_RECEIVE_DELAY_NS

    frames = [split_frame(0, seed=i) for i in range(20)]
    bag = write_image_bag(tmp_path / "in", frames)
    (mcap,) = bag.glob("*.mcap")
    data = bytearray(mcap.read_bytes())
    # The header of message #8 (channel 1, sequence 0, log time = its bag time) gets overwritten.
    key = struct.pack("<HIQ", 1, 0, frame_stamp(8) + DEFAULT_RECEIVE_DELAY_NS)
    start = data.index(key) - 9
    data[start:start + 300] = np.random.default_rng(1).integers(0, 256, 300, np.uint8).tobytes()
    mcap.write_bytes(bytes(data))
    result = replay(ReplayOptions(input=bag, output=tmp_path / "out", progress=False),
                    KnownEngine(), install_signal_handlers=False)
    assert result.exit_code == 1 and result.output_closed
    assert any("1 of 20 messages" in d for d in result.damage)
    masks = read_bag(tmp_path / "out")["/segmentation/mask"]
    assert [stamp_to_ns(m.header.stamp) for _, m in masks] == [frame_stamp(i) for i in range(20) if i != 8]


def test_stamp_matcher_pairs_in_any_order_and_bounds_memory() -> None:
    from bisenet_ros.replay.groundtruth import StampMatcher

    matcher = StampMatcher(window=2)
    mask = np.zeros((2, 2), np.uint8)
    assert matcher.add_label(10, mask) is None  # label first
    assert matcher.add_prediction(10, "pred10") is mask
    assert matcher.add_prediction(20, "pred20") is None  # prediction first
    assert matcher.add_label(20, mask) == "pred20"
    for stamp in (30, 40, 50):  # labels that never arrive: only `window` wait
        matcher.add_prediction(stamp, f"pred{stamp}")
    assert matcher.unmatched_predictions == 1
    matcher.finish()
    assert matcher.unmatched_predictions == 3 and matcher.unmatched_labels == 0


def test_cityscapes_label_ids_are_converted_to_train_ids(tmp_path: Path) -> None:
    import cv2

    from bisenet_ros.replay.groundtruth import FolderLabels, parse_stamp

    ids = np.array([[7, 8], [0, 26]], np.uint8)  # road, sidewalk, unlabeled, car
    cv2.imwrite(str(tmp_path / "a_000001_gtFine_labelIds.png"), ids)
    labels = FolderLabels(tmp_path)
    assert labels.match == "order" and labels.label_ids
    np.testing.assert_array_equal(labels.load(0, 0), [[0, 1], [255, 13]])
    assert labels.load(1, 0) is None  # no file for a second frame
    assert parse_stamp("cam_1700000000123456789.png") == 1700000000123456789
    assert parse_stamp("1700000000.5_gtFine_labelTrainIds.png") == 1700000000500000000
    assert parse_stamp("frame_000012.png") is None


def test_max_frames_outputs_subset_and_single_copied_topic(tmp_path: Path) -> None:
    frames = [split_frame(0, seed=i) for i in range(6)]
    extra = image_messages([split_frame(0)], topic="/other/image")
    bag = write_image_bag(tmp_path / "in", frames, extra=extra, labels=[split_truth()] * 6)
    rc = run_cli([str(bag), "-o", str(tmp_path / "out"), "--image-topic", "/camera/image_raw",
                  "--outputs", "overlay", "--max-frames", "4", "--copy-topic", "/camera/labels",
                  "--no-progress"])
    assert rc == 0
    data = read_bag(tmp_path / "out")
    assert set(data) == {"/segmentation/mask", "/segmentation/overlay",
                         "/segmentation/label_info", "/camera/labels"}
    assert len(data["/segmentation/mask"]) == len(data["/segmentation/overlay"]) == 4
    assert len(data["/camera/labels"]) == 4  # copied up to where the replay stopped


def test_replaying_an_output_bag_with_copy_input_never_mixes_old_outputs_into_new(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from rosbags.rosbag2 import Reader

    bag = write_image_bag(tmp_path / "in", [split_frame(0, seed=i) for i in range(3)])
    assert run_cli([str(bag), "-o", str(tmp_path / "first"), "--copy-input", "--no-progress"]) == 0
    capsys.readouterr()
    # The first output holds /segmentation/* and the copied camera: replay it again, copying all.
    assert run_cli([str(tmp_path / "first"), "-o", str(tmp_path / "second"), "--image-topic",
                    "/camera/image_raw", "--copy-input", "--no-progress"]) == 0
    err = capsys.readouterr().err
    assert "--copy-topic /segmentation/mask: the replay writes this topic itself; not copied" in err
    with Reader(tmp_path / "second") as reader:
        topics = [c.topic for c in reader.connections]
    assert len(topics) == len(set(topics))  # one connection per topic
    data = read_bag(tmp_path / "second")
    assert len(data["/segmentation/mask"]) == len(data["/camera/image_raw"]) == 3
    assert len(data["/segmentation/label_info"]) == 1


def test_an_output_bag_that_cannot_be_set_up_is_not_left_behind(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    from bisenet_ros.replay.writer import OutputBag

    def full_disk(*_: Any) -> bool:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(OutputBag, "add_copy_topic", full_disk)  # after the bag was created
    bag = write_image_bag(tmp_path / "in", [split_frame(0)])
    assert run_cli([str(bag), "-o", str(tmp_path / "new" / "out"), "--copy-input",
                    "--no-progress"]) == 1
    assert "cannot create the output bag" in capsys.readouterr().err
    assert not (tmp_path / "new").exists()


def test_a_topic_with_no_decodable_frame_fails(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    messages = [BagMessage(m.topic, m.msgtype, m.timestamp, raw=b"junk")
                for m in image_messages([split_frame(0)] * 3)]
    bag = write_bag(tmp_path / "in", messages)
    assert run_cli([str(bag), "-o", str(tmp_path / "out"), "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert "none of the camera messages could be decoded" in err and "SerdeError" in err
    assert read_bag(tmp_path / "out") == {}  # still a valid (empty) bag


def test_big_images_written_to_mcap_byte_identical_to_rosbags_and_read_back(tmp_path: Path) -> None:
    """OutputBag's MCAP fast path for big images (written straight to the file, no copies)
    must write exactly the bytes rosbags' own writer writes: same chunks, message indexes,
    chunk indexes and statistics; and AnyReader must read the very messages back."""
    from rosbags.highlevel import AnyReader
    from rosbags.rosbag2 import StoragePlugin, Writer

    from bisenet_ros.replay.messages import make_header, make_image, typestore
    from bisenet_ros.replay.writer import OutputBag, _mcap_writer_class, _qos

    assert _mcap_writer_class().STORAGE_PLUGINS[StoragePlugin.MCAP] is not \
        Writer.STORAGE_PLUGINS[StoragePlugin.MCAP]
    rng = np.random.default_rng(0)
    h, w = 1080, 1920
    msgs = []  # (name, msg, timestamp): 1080p images, small ones before, between and after
    for i, t in enumerate((5_000, 1_000, 9_000)):  # out of order: chunk/summary time ranges
        header = make_header(t, "camera")
        small = np.full((4, 6), i, np.uint8)
        msgs.append(("drivable_mask", make_image(header, {
            "height": 4, "width": 6, "encoding": "mono8", "step": 6, "data": small}), t))
        msgs.append(("mask", make_image(header, {
            "height": h, "width": w, "encoding": "mono8", "step": w,
            "data": rng.integers(0, 19, (h, w), dtype=np.uint8)}), t))
        msgs.append(("overlay", make_image(header, {
            "height": h, "width": w, "encoding": "bgr8", "step": 3 * w,
            "data": rng.integers(0, 255, (h, w, 3), dtype=np.uint8)}), t))
        msgs.append(("confidence", make_image(header, {  # just under one chunk: via rosbags
            "height": 1, "width": 2**20 - 200, "encoding": "mono8", "step": 2**20 - 200,
            "data": np.full(2**20 - 200, i, np.uint8)}), t))
    names = ["mask", "overlay", "drivable_mask", "confidence"]

    out = OutputBag(tmp_path / "fast" / "bag")
    out.open(names)
    assert out._fast  # the direct path is on for this rosbags version
    for name, msg, t in msgs:
        out.write(name, msg, t)
    out.close()

    ref = Writer(tmp_path / "ref" / "bag", version=Writer.VERSION_LATEST,
                 storage_plugin=StoragePlugin.MCAP)
    ref.open()
    conns = {name: ref.add_connection(out.topic(name), IMAGE, typestore=typestore(),
                                      offered_qos_profiles=[_qos(latched=False, depth=1)])
             for name in names}
    for name, msg, t in msgs:
        ref.write(conns[name], t, serialize(msg))
    ref.close()
    fast = (tmp_path / "fast/bag/bag.mcap").read_bytes()
    assert fast == (tmp_path / "ref/bag/bag.mcap").read_bytes()

    with AnyReader([tmp_path / "fast" / "bag"]) as reader:
        got = [(c.topic, t, reader.deserialize(raw, c.msgtype))
               for c, t, raw in reader.messages()]
    want = sorted(((out.topic(n), t, m) for n, m, t in msgs), key=lambda x: x[1])
    assert sorted((topic, t) for topic, t, _ in got) == sorted((topic, t) for topic, t, _ in want)
    assert [t for _, t, _ in got] == sorted(t for _, t, _ in got)  # AnyReader: in time order
    by_key = {(topic, t): m for topic, t, m in want}
    for topic, t, m in got:
        ref_msg = by_key[(topic, t)]
        assert (m.height, m.width, m.encoding, m.step) == (
            ref_msg.height, ref_msg.width, ref_msg.encoding, ref_msg.step)
        assert m.header.stamp.sec == ref_msg.header.stamp.sec
        assert m.header.stamp.nanosec == ref_msg.header.stamp.nanosec
        np.testing.assert_array_equal(m.data, ref_msg.data.reshape(-1))
