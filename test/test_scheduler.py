"""The ROS-free multi-camera scheduler: camera names and topics, newest frame per camera,
batches without a sync barrier, round-robin fairness, stale frames, close()."""
from __future__ import annotations

import collections
import threading
import time

import pytest

from bisenet_ros.scheduler import BatchScheduler, camera_topics, validate_camera_names


def test_camera_names_are_cleaned_and_bad_lists_refused_naming_every_problem() -> None:
    assert validate_camera_names([" front", "/rear/", "rig/left"]) == ["front", "rear", "rig/left"]
    with pytest.raises(ValueError) as err:
        validate_camera_names(["front", "", "rear", "front", " / ", "rear", "2cam"])
    text = str(err.value)
    assert "entries 1, 4" in text and "named twice: front, rear" in text and "'2cam'" in text
    with pytest.raises(ValueError, match="entry 0"):
        validate_camera_names([""])


def test_topics_follow_the_per_camera_launch_names() -> None:
    front, rear = camera_topics(["front", "rear"])
    assert (front.input_topic, front.camera_info_topic) == ("/front/image_raw", "/front/camera_info")
    assert front.output("mask") == "/front/segmentation/mask"
    assert rear.output("overlay/compressed") == "/rear/segmentation/overlay/compressed"
    (left,) = camera_topics(["left"], image_suffix="/image_rect_color/", compressed=True)
    assert left.image_topic == "/left/image_rect_color" and left.compressed
    assert left.input_topic == "/left/image_rect_color/compressed"
    assert left.camera_info_topic == "/left/camera_info"
    a, b = camera_topics(["a", "b"], image_topics=["/sensors/a/img", "/b_raw"])
    assert (a.input_topic, a.camera_info_topic) == ("/sensors/a/img", "/sensors/a/camera_info")
    assert (b.camera_info_topic, b.output("mask")) == ("/camera_info", "/b/segmentation/mask")


@pytest.mark.parametrize("kwargs, message", [
    ({"image_topics": ["/a/image"]}, "1 entries for 2 cameras"),
    ({"image_topics": ["/a/image", " "]}, "empty topic for camera"),
    ({"image_suffix": "/"}, "image_suffix is empty"),
])
def test_bad_topic_settings_are_refused(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        camera_topics(["a", "b"], **kwargs)


def test_a_batch_takes_the_newest_frame_of_each_camera_that_has_one() -> None:
    scheduler: BatchScheduler[str] = BatchScheduler(["a", "b", "c"])
    assert scheduler.put("a", "a1") is False
    assert scheduler.put("a", "a2") is True  # a1 replaced
    scheduler.put("c", "c1")
    batch = scheduler.next_batch(0)
    assert batch is not None and [(f.camera, f.item) for f in batch.frames] == [("a", "a2"), ("c", "c1")]
    assert scheduler.next_batch(0.01) is None  # nothing new: no batch, no waiting for b
    counters = scheduler.counters()
    assert (counters["a"].received, counters["a"].replaced, counters["a"].scheduled) == (2, 1, 1)
    assert counters["b"].received == 0
    with pytest.raises(KeyError, match="'d' is not scheduled"):
        scheduler.put("d", "d1")


def test_stale_frames_are_dropped_per_camera_and_reported() -> None:
    now = [10_000_000_000]
    scheduler: BatchScheduler[str] = BatchScheduler(["a", "b", "c"], max_frame_age_s=0.5,
                                                    now_ns=lambda: now[0])
    scheduler.put("a", "old", stamp_ns=9_000_000_000)
    scheduler.put("b", "fresh", stamp_ns=9_800_000_000)
    scheduler.put("c", "unstamped", stamp_ns=0)
    batch = scheduler.next_batch(0)
    assert batch is not None
    assert [f.item for f in batch.frames] == ["fresh", "unstamped"]
    assert [f.item for f in batch.stale] == ["old"]
    assert scheduler.frame_age_s(batch.stale[0]) == pytest.approx(1.0)
    assert scheduler.counters()["a"].stale == 1 and scheduler.counters()["b"].stale == 0


def _run(scheduler: BatchScheduler, steps: int, rates: dict[str, int]) -> collections.Counter:
    """Each step, camera C puts rates[C] frames (0: stopped), then one batch is taken."""
    served: collections.Counter = collections.Counter()
    for step in range(steps):
        for camera, rate in rates.items():
            for i in range(rate):
                scheduler.put(camera, (camera, step, i))
        batch = scheduler.next_batch(0)
        if batch is not None:
            served.update(f.camera for f in batch.frames)
    return served


def test_round_robin_a_10x_flooder_and_a_stopped_camera_starve_nobody() -> None:
    # Batches of two for three live cameras: each must get two batches in three, the flooder
    # (ten frames per step) no more than the others, the stopped camera nothing and no wait.
    scheduler = BatchScheduler(["flood", "b", "c", "stopped"], max_batch=2)
    served = _run(scheduler, 300, {"flood": 10, "b": 1, "c": 1, "stopped": 0})
    assert served["stopped"] == 0
    assert [served["flood"], served["b"], served["c"]] == [200, 200, 200]
    counters = scheduler.counters()
    assert counters["flood"].replaced == 3000 - 200 - counters["flood"].pending
    for c in counters.values():
        assert c.received == c.replaced + c.stale + c.scheduled + c.pending


def test_batches_of_one_rotate_strictly_over_the_live_cameras() -> None:
    # The same scene with batches of one: strict rotation, every live camera one batch in three.
    scheduler = BatchScheduler(["a", "b", "c"], max_batch=1)
    served = _run(scheduler, 90, {"a": 10, "b": 1, "c": 1})
    assert served == {"a": 30, "b": 30, "c": 30}


def test_max_batch_wait_never_waits_for_a_stopped_camera() -> None:
    scheduler: BatchScheduler[str] = BatchScheduler(["a", "b", "stopped"], max_batch_wait_ms=1000,
                                                    live_window_s=0.1)
    for camera in scheduler.cameras:
        scheduler.put(camera, camera + "0")
    assert len(scheduler.next_batch(0).frames) == 3
    time.sleep(0.15)  # "stopped" delivers nothing more: after live_window_s it is not waited for
    scheduler.put("a", "a1")
    scheduler.put("b", "b1")
    start = time.monotonic()
    batch = scheduler.next_batch(2.0)
    assert batch is not None and [f.item for f in batch.frames] == ["a1", "b1"]
    assert time.monotonic() - start < 0.5  # not the 1 s max_batch_wait_ms


def test_max_batch_wait_is_the_longest_a_first_frame_waits() -> None:
    scheduler: BatchScheduler[str] = BatchScheduler(["a", "b"], max_batch_wait_ms=200,
                                                    live_window_s=60)
    scheduler.put("b", "b0")
    scheduler.next_batch(0)  # b is live, but sends nothing more
    start = time.monotonic()
    scheduler.put("a", "a1")
    batch = scheduler.next_batch(2.0)
    waited = time.monotonic() - start
    assert batch is not None and [f.item for f in batch.frames] == ["a1"]
    assert 0.2 <= waited < 1.5  # the deadline counts from a1's arrival


def test_max_batch_wait_ends_as_soon_as_every_live_camera_has_a_frame() -> None:
    scheduler: BatchScheduler[str] = BatchScheduler(["a", "b"], max_batch_wait_ms=1000,
                                                    live_window_s=60)
    scheduler.put("a", "a0")
    scheduler.put("b", "b0")
    scheduler.next_batch(0)  # both are live now
    scheduler.put("a", "a1")
    threading.Timer(0.05, lambda: scheduler.put("b", "b1")).start()
    start = time.monotonic()
    batch = scheduler.next_batch(2.0)
    assert batch is not None and [f.item for f in batch.frames] == ["a1", "b1"]
    assert time.monotonic() - start < 0.9  # ended by b's frame, not by the 1 s wait


def test_threads_lose_no_frame_and_close_releases_the_consumer() -> None:
    scheduler: BatchScheduler[int] = BatchScheduler(["a", "b", "c"], max_batch=2)
    served: collections.Counter = collections.Counter()

    def consume() -> None:
        while True:
            batch = scheduler.next_batch(None)
            if batch is None:
                return
            served.update(f.camera for f in batch.frames)
            time.sleep(0.001)  # "inference"

    def produce(camera: str, n: int) -> None:
        for i in range(n):
            scheduler.put(camera, i)

    consumer = threading.Thread(target=consume)
    consumer.start()
    producers = [threading.Thread(target=produce, args=(c, 500)) for c in ("a", "b", "c")]
    for t in producers:
        t.start()
    for t in producers:
        t.join()
    time.sleep(0.05)
    scheduler.close()
    consumer.join(2)
    assert not consumer.is_alive() and scheduler.closed
    assert scheduler.put("a", 1) is False and scheduler.next_batch(0) is None
    for camera, c in scheduler.counters().items():
        assert c.received == 500 == c.replaced + c.stale + c.scheduled + c.pending
        assert c.scheduled == served[camera] > 0


@pytest.mark.parametrize("kwargs, message", [
    ({"max_batch": -1}, "max_batch=-1"), ({"max_batch_wait_ms": 5000}, "0..1000 ms"),
])
def test_bad_scheduler_settings_are_refused(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        BatchScheduler(["a"], **kwargs)
