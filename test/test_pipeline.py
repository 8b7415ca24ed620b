"""ROS-free parts of the node: newest-frame slot, stale policy, stats, parameter validation, and
the output fields shared with the replay (bisenet_ros.outputs)."""
from __future__ import annotations

import threading
import time
from types import SimpleNamespace

import numpy as np
import pytest

from bisenet_ros import outputs
from bisenet_ros.codec import image_to_array
from bisenet_ros.pipeline import (
    LatestFrameSlot, PipelineStats, RateLimiter, RateMeter, camera_info_topic,
    choose_camera_info_topic, config_from_parameters, frame_age_s, is_stale,
    node_options_from_parameters, stamp_to_ns)
from bisenet_ros.visualization import VisualizationWorker


def test_slot_keeps_only_the_newest_item() -> None:
    slot: LatestFrameSlot[int] = LatestFrameSlot()
    assert slot.put(1) is False
    assert slot.put(2) is True and slot.put(3) is True  # 1 and 2 replaced
    assert slot.take(0) == 3
    assert slot.take(0.01) is None


def test_slot_wakes_a_waiting_consumer_and_closes() -> None:
    slot: LatestFrameSlot[str] = LatestFrameSlot()
    got: list = []
    consumer = threading.Thread(target=lambda: got.append(slot.take(5)))
    consumer.start()
    time.sleep(0.02)
    slot.put("frame")
    consumer.join(2)
    assert got == ["frame"]
    waiting = threading.Thread(target=lambda: got.append(slot.take(None)))
    waiting.start()
    slot.close()
    waiting.join(2)
    assert not waiting.is_alive() and got[-1] is None and slot.closed


def test_stale_policy() -> None:
    stamp = SimpleNamespace(sec=10, nanosec=500_000_000)
    assert stamp_to_ns(stamp) == 10_500_000_000
    now = 11_000_000_000
    assert frame_age_s(stamp_to_ns(stamp), now) == pytest.approx(0.5)
    assert is_stale(stamp_to_ns(stamp), now, 0.4) and not is_stale(stamp_to_ns(stamp), now, 0.6)
    assert not is_stale(stamp_to_ns(stamp), now, 0.0)  # disabled
    assert not is_stale(0, now, 0.1) and frame_age_s(0, now) is None  # unstamped
    assert not is_stale(now + 10**9, now, 0.1)  # stamp ahead of our clock: not stale


def test_rate_meter() -> None:
    meter = RateMeter(window_s=1.0)
    for i in range(11):
        meter.tick(100.0 + i * 0.1)  # 10 Hz
    assert meter.rate(101.0) == pytest.approx(10.0)
    assert meter.rate(105.0) == 0.0  # everything left the window


def test_stats_snapshot_and_recent_counts() -> None:
    stats = PipelineStats(window=2)
    stats.count("frames_received", 3)
    stats.count("malformed")
    for ms in (10.0, 20.0, 30.0):
        stats.record_frame({"inference": ms, "total": ms + 1}, age_ms=5.0)
    snap = stats.snapshot()
    assert snap["frames_processed"] == 3 and snap["malformed"] == 1
    assert snap["latency_ms"]["inference"] == pytest.approx(25.0)  # window of 2
    assert snap["recent"]["malformed"] == 1 and snap["age_ms"] == 5.0
    assert stats.snapshot()["recent"]["malformed"] == 0  # recent resets, totals do not
    assert outputs.diagnostic_level(snap) == (outputs.WARN, "1 malformed message(s) skipped recently")
    stats.record_error("RuntimeError: boom")
    level, message = outputs.diagnostic_level(stats.snapshot())
    assert level == outputs.ERROR and "boom" in message
    assert outputs.diagnostic_level(PipelineStats().snapshot())[0] == outputs.WARN  # nothing yet


def test_diagnostic_values_keys_and_format() -> None:
    stats = PipelineStats()
    stats.count("frames_received")
    stats.record_frame({"decode": 1.234, "inference": 50.0}, age_ms=None)
    engine = {"variant": "stdc1", "resolution": [128, 64], "num_classes": 19, "backend": "onnxruntime",
              "device": "cpu", "precision": "fp32", "weights_sha256": "0123456789ab", "weights": None}
    values = dict(outputs.diagnostic_values(stats.snapshot(), engine))
    assert values["latency_decode_ms"] == "1.23" and values["latency_inference_ms"] == "50.00"
    assert values["frames_processed"] == "1" and "age_ms" not in values
    assert values["variant"] == "stdc1" and values["resolution"] == "128x64"
    assert values["num_classes"] == "19" and values["weights_sha256"] == "0123456789ab"
    assert all(isinstance(v, str) for v in values.values())


def test_parameter_validation_messages() -> None:
    with pytest.raises(ValueError, match="qos_depth=0: expected integer in 1..100"):
        node_options_from_parameters({"qos_depth": 0})
    with pytest.raises(ValueError, match="max_frame_age=-1.0"):
        node_options_from_parameters({"max_frame_age": -1.0})
    options = node_options_from_parameters({"use_compressed": True, "image_topic": "/cam/image/"})
    assert options.input_topic == "/cam/image/compressed"
    assert node_options_from_parameters(
        {"use_compressed": True, "compressed_topic": "/x/jpeg"}).input_topic == "/x/jpeg"
    assert config_from_parameters({}, publish_confidence=True).confidence is True
    with pytest.raises(ValueError, match="resize='crop': expected one of: stretch, letterbox"):
        config_from_parameters({"resize": "crop"})


# ------------------------------------------------------------------------------- outputs

LABELS = np.array([[0, 1, 2], [2, 1, 0]], np.uint8)
PALETTE_RGB = np.array([[128, 64, 128], [244, 35, 232], [70, 70, 70]], np.uint8)


def _result(order: str = "bgr", confidence: bool = True) -> SimpleNamespace:
    palette = PALETTE_RGB if order == "rgb" else PALETTE_RGB[:, ::-1]
    return SimpleNamespace(
        labels=LABELS, color=palette[LABELS], overlay=palette[LABELS] // 2,
        drivable=np.where(LABELS == 0, 255, 0).astype(np.uint8),
        confidence=np.array([[0.0, 0.5, 1.0], [0.25, 0.75, 0.999]], np.float32) if confidence else None)


@pytest.mark.parametrize("order", ["bgr", "rgb"])
@pytest.mark.parametrize("encoding", ["bgr8", "rgb8"])
def test_colour_outputs_follow_the_requested_encoding(order: str, encoding: str) -> None:
    fields = outputs.result_to_image_fields(_result(order), order, color_encoding=encoding)
    want = PALETTE_RGB if encoding == "rgb8" else PALETTE_RGB[:, ::-1]
    for topic in ("color_mask", "overlay"):
        assert fields[topic]["encoding"] == encoding
    msg = SimpleNamespace(**fields["color_mask"])
    np.testing.assert_array_equal(image_to_array(msg), want[LABELS])


def test_every_topic_fields_and_confidence_encodings() -> None:
    fields = outputs.result_to_image_fields(_result(), "bgr")
    assert set(fields) == set(outputs.OUTPUT_TOPICS)
    assert fields["mask"]["encoding"] == "mono8"
    np.testing.assert_array_equal(fields["mask"]["data"].reshape(2, 3), LABELS)
    assert fields["drivable_mask"]["data"].tolist() == [255, 0, 0, 0, 0, 255]
    assert fields["confidence"]["encoding"] == "32FC1" and fields["confidence"]["step"] == 12
    mono = outputs.result_to_image_fields(_result(), "bgr", confidence_encoding="mono8")["confidence"]
    assert mono["encoding"] == "mono8" and mono["data"].tolist() == [0, 128, 255, 64, 191, 255]


def test_missing_outputs_and_topic_filter() -> None:
    result = _result(confidence=False)
    result.overlay = None
    fields = outputs.result_to_image_fields(result, "bgr", topics=["mask", "overlay", "confidence"])
    assert set(fields) == {"mask"}
    with pytest.raises(ValueError, match="color encoding 'rgba8'"):
        outputs.result_to_image_fields(result, "bgr", color_encoding="rgba8")


def test_engine_outputs_for_topics_and_label_info() -> None:
    assert outputs.engine_outputs_for(["mask"]) == set()
    assert outputs.engine_outputs_for(["mask", "color_mask", "drivable_mask"]) == {"color", "drivable"}
    with pytest.raises(ValueError, match="unknown output topic"):
        outputs.engine_outputs_for(["labels"])
    info = outputs.label_info_fields(["road", "sidewalk"])
    assert info == {"class_map": [(0, "road"), (1, "sidewalk")], "threshold": 0.0}


@pytest.mark.parametrize("camera_hz, limit_hz, jitter_s, expected_hz", [
    (30.0, 10.0, 0.0, 10.0),     # every third frame
    (30.0, 10.0, 0.002, 10.0),   # driver jitter does not lower the rate
    (15.0, 10.0, 0.0, 10.0),     # not a divisor: still 10 Hz on average
    (4.0, 10.0, 0.0, 4.0),       # a slower camera passes every frame
])
def test_rate_limiter_on_frame_sequences(camera_hz, limit_hz, jitter_s, expected_hz) -> None:
    limiter = RateLimiter(limit_hz)
    rng = np.random.default_rng(0)
    times = np.arange(0, 20, 1 / camera_hz) + rng.uniform(-jitter_s, jitter_s, int(20 * camera_hz + 1))[
        : len(np.arange(0, 20, 1 / camera_hz))]
    passed = [t for t in times if limiter.ready(float(t))]
    assert len(passed) / 20 == pytest.approx(expected_hz, rel=0.03)
    passed = np.array(passed)
    per_second = [np.count_nonzero((passed >= t) & (passed < t + 1.0)) for t in passed]
    assert max(per_second) <= limit_hz + 1  # no burst in any one-second window


def test_rate_limiter_after_a_pause_and_bad_rates() -> None:
    limiter = RateLimiter(10.0)
    assert limiter.ready(0.0) and not limiter.ready(0.05) and limiter.ready(0.1)
    assert limiter.ready(5.0) and not limiter.ready(5.033)  # no saved-up burst after a pause
    for rate in (0.0, -1.0):
        with pytest.raises(ValueError, match="expected > 0"):
            RateLimiter(rate)
    with pytest.raises(ValueError, match="visualization_rate=0.0: expected a rate in Hz > 0"):
        node_options_from_parameters({"visualization_rate": 0.0})
    assert node_options_from_parameters({"visualization_rate": 2.5}).visualization_rate == 2.5


@pytest.mark.parametrize("order, encoding", [("bgr", "bgr8"), ("rgb", "rgb8"), ("rgb", "bgr8")])
def test_compressed_visualization_fields(order: str, encoding: str) -> None:
    import cv2

    result = _result(order)
    fields = outputs.result_to_compressed_fields(result, order, color_encoding=encoding)
    assert set(fields) == {"overlay/compressed", "color_mask/compressed"}
    # image_transport's format string: "<raw encoding>; <codec> compressed bgr8"
    assert fields["overlay/compressed"]["format"] == f"{encoding}; jpeg compressed bgr8"
    assert fields["color_mask/compressed"]["format"] == f"{encoding}; png compressed bgr8"
    png = cv2.imdecode(fields["color_mask/compressed"]["data"], cv2.IMREAD_COLOR)
    np.testing.assert_array_equal(png, PALETTE_RGB[:, ::-1][LABELS])  # lossless, BGR data
    assert outputs.engine_outputs_for(["mask", "overlay/compressed"]) == {"overlay"}
    only = outputs.result_to_compressed_fields(result, order, topics=["mask", "overlay/compressed"])
    assert set(only) == {"overlay/compressed"}
    with pytest.raises(ValueError, match="codec 'webp'"):
        outputs.compress_image(result.color, order, "webp")


@pytest.mark.parametrize("image, compressed, expected", [
    ("/cam/image_raw", False, "/cam/camera_info"),
    ("/cam/image_raw/compressed", True, "/cam/camera_info"),
    ("/cam/compressed", False, "/cam/camera_info"),  # a raw topic named so: only the last token
    ("/image", False, "/camera_info"),
    ("image", False, "camera_info"),
    ("/a/b/c/image_rect/", False, "/a/b/c/camera_info"),
])
def test_camera_info_topic_by_image_transports_rule(image: str, compressed: bool,
                                                    expected: str) -> None:
    assert camera_info_topic(image, compressed=compressed) == expected


def test_camera_info_topic_precedence() -> None:
    assert choose_camera_info_topic("/cam/image_raw") == ("/cam/camera_info",
                                                          "beside /cam/image_raw")
    assert choose_camera_info_topic("/cam/image_raw", remapped="/calib/info")[0] == "/calib/info"
    assert choose_camera_info_topic("/cam/image_raw", remapped="/calib/info",
                                    parameter=" /p/info ")[0] == "/p/info"


def test_visualization_worker_keeps_the_newest_and_survives_errors() -> None:
    stats = PipelineStats()
    gate, started, done, errors = threading.Event(), threading.Event(), [], []

    def publish(job: int) -> None:
        started.set()
        gate.wait(5)
        if job == 3:
            raise RuntimeError("encoder broke")
        done.append(job)

    worker = VisualizationWorker(publish, stats, on_error=errors.append)
    worker.submit(1)
    assert started.wait(5)
    for job in (2, 3):  # 2 is replaced by 3 while 1 is being drawn
        worker.submit(job)
    assert not worker.wait_idle(0.05)  # busy
    gate.set()
    assert worker.wait_idle(5)
    worker.submit(4)
    assert worker.wait_idle(5)
    assert done == [1, 4] and [str(e) for e in errors] == ["encoder broke"]
    assert stats.counters["visualization_published"] == 2
    assert stats.counters["visualization_skipped"] == 1
    assert set(stats.snapshot()["latency_ms"]) == {"visualization", "visualization_wait"}
    worker.close()
    assert not worker.alive
