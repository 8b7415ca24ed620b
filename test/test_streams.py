"""The ROS-free per-camera state of the node and the batch engine call (bisenet_ros.streams)."""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from bisenet_ros import outputs
from bisenet_ros.streams import CameraStream, EngineStats, segment_frames
from ros_double.fake_engine import FakeSegmenter


def _engine() -> FakeSegmenter:
    return FakeSegmenter(SimpleNamespace(num_classes=19, confidence=False))


def test_a_batch_runs_in_one_call_and_a_bad_frame_fails_alone() -> None:
    engine = _engine()
    rng = np.random.default_rng(0)
    good = [rng.integers(0, 256, (8 + i, 12, 3), np.uint8) for i in range(3)]
    results = segment_frames(engine, good, ["bgr", "rgb", "bgr"], {"drivable"})
    assert engine.batches == [3]
    for frame, result in zip(good, results):
        np.testing.assert_array_equal(result.labels, engine.labels_for(frame))
    assert [c["color_order"] for c in engine.calls] == ["bgr", "rgb", "bgr"]
    # One frame that is not H x W x 3: the batch call raises, the frames run one by one, and
    # only that frame fails.
    frames = [good[0], np.zeros((4, 4), np.uint8), good[2]]
    results = segment_frames(engine, frames, ["bgr"] * 3, set())
    assert isinstance(results[1], ValueError)
    np.testing.assert_array_equal(results[2].labels, engine.labels_for(good[2]))
    # A backend failure is not a bad frame: it is raised for the caller to fail the batch.
    engine.fail_with = RuntimeError("device lost")
    with pytest.raises(RuntimeError, match="device lost"):
        segment_frames(engine, good[:2], ["bgr"] * 2, set())


def test_an_engine_without_segment_batch_runs_frame_by_frame() -> None:
    calls: list[tuple[int, ...]] = []

    def engine(frame: np.ndarray, color_order: str = "bgr", outputs: object = None) -> object:
        calls.append(frame.shape)
        return SimpleNamespace(labels=frame[..., 0])

    frames = [np.zeros((2, 3, 3), np.uint8), np.ones((4, 5, 3), np.uint8)]
    results = segment_frames(engine, frames, ["bgr", "bgr"], set())
    assert calls == [(2, 3, 3), (4, 5, 3)] and results[1].labels.shape == (4, 5)


def test_each_camera_has_its_own_visualization_rate_and_log_throttle() -> None:
    front = CameraStream("front", visualization_rate=1.0)
    rear = CameraStream("rear", visualization_rate=1.0)
    subscribers = {"mask": 0, "drivable_mask": 1, "overlay": 1, "color_mask": 0}
    assert front.wanted_topics(subscribers) == (["mask", "drivable_mask"], ["overlay"])
    # front's overlay this second does not use up rear's
    assert front.wanted_topics(subscribers) == (["mask", "drivable_mask"], [])
    assert rear.wanted_topics(subscribers)[1] == ["overlay"]
    assert front.should_log("malformed") and not front.should_log("malformed")
    assert front.should_log("stale") and rear.should_log("malformed")
    assert front.prefix == "camera front: "
    assert CameraStream("camera", visualization_rate=1.0, named_in_logs=False).prefix == ""


def test_camera_model_from_the_latest_camera_info_cached_per_message() -> None:
    stream = CameraStream("front", visualization_rate=10.0)
    assert stream.camera_model()[:2] == (None, "grid_no_camera_info")
    info = SimpleNamespace(width=64, height=48, k=[40.0, 0, 32.0, 0, 40.0, 24.0, 0, 0, 1],
                           d=[0.0] * 5, distortion_model="plumb_bob", p=[0.0] * 12,
                           header=SimpleNamespace(frame_id="cam"))
    stream.camera_info = info
    model, counter, _ = stream.camera_model()
    assert model is not None and counter == "" and stream.camera_model()[0] is model
    stream.camera_info = SimpleNamespace(**{**vars(info), "k": [0.0] * 9})
    model, counter, problem = stream.camera_model()
    assert model is None and counter == "grid_invalid" and "CameraInfo" in problem


def test_received_frames_and_gaps_feed_the_camera_diagnostics() -> None:
    stream = CameraStream("front", visualization_rate=10.0)
    period = 33_333_333
    stamps = [10**18 + i * period for i in range(12)] + [10**18 + 20 * period]
    reports = [stream.received(s) for s in stamps]
    assert reports[-1] is not None and reports[-1].missing == 8  # frames 12..19
    snapshot = stream.snapshot()
    assert snapshot["frames_received"] == 13 and snapshot["frames_lost_upstream"] == 8
    values = dict(outputs.diagnostic_values(snapshot))
    assert values["arrival_ratio"] == f"{13 / 21:.3f}"


def test_engine_stats_diagnostic() -> None:
    stats = EngineStats()
    level, message, _ = stats.diagnostic()
    assert level == outputs.WARN and "no batch" in message
    stats.record_batch(4, 20.0)
    stats.record_batch(2, 10.0)
    level, message, values = stats.diagnostic({"variant": "stdc1", "resolution": (64, 32)})
    got = dict(values)
    assert level == outputs.OK and got["batches"] == "2" and got["frames_processed"] == "6"
    assert got["mean_batch_size"] == "3.00" and got["latency_batch_ms"] == "15.00"
    assert got["variant"] == "stdc1" and got["resolution"] == "64x32"
    assert "frames_received" not in got  # the cameras' counters are in their own entries
    stats.record_batch(1, 5.0, error="RuntimeError: device lost")
    assert stats.diagnostic()[0] == outputs.ERROR
