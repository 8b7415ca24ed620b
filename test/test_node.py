"""The ROS 2 node's wiring, on real ROS 2 message definitions (rosbags typestore) and the rclpy
test double in ``test/ros_double`` (ROS 2 itself cannot be installed here).

The callback path is driven like on a robot: a camera publisher in the same (double) graph
publishes messages, the node's worker thread segments them, and listeners receive the outputs.
Most tests use a deterministic fake engine so that every output pixel can be checked; one group
runs the real ``Segmenter`` (random weights, 128x64 network).
"""
from __future__ import annotations

import ast
import importlib
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable

import cv2
import numpy as np
import pytest

from bisenet_ros.codec import image_to_array
from bisenet_ros.config import _NODE_ONLY_KEYS
from bisenet_ros.pipeline import GRID_PARAMETERS, NODE_PARAMETERS, all_parameters
from ros_double import rclpy_double
from ros_double.fake_engine import FakeSegmenter
from ros_double.messages import rclpy_style_class, to_store_message, typestore

ROOT = Path(__file__).resolve().parents[1]
FRAME = np.random.default_rng(3).integers(0, 256, (24, 40, 3), dtype=np.uint8)  # BGR
FAST = {"resolution": "128x64", "max_frame_age": 0.0}


def wait_until(predicate: Callable[[], bool], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting for the node")
        time.sleep(0.005)


@pytest.fixture
def ros(monkeypatch: pytest.MonkeyPatch):
    """The rclpy double installed in sys.modules, ``bisenet_ros.node`` imported against it."""
    graph = rclpy_double.install(monkeypatch)
    sys.modules.pop("bisenet_ros.node", None)
    node_module = importlib.import_module("bisenet_ros.node")
    rclpy = sys.modules["rclpy"]
    rclpy.init()
    nodes: list[Any] = []
    Image = rclpy_style_class("sensor_msgs/msg/Image")
    qos = sys.modules["rclpy.qos"]

    def make(engine: Any = FakeSegmenter, namespace: str | None = None, **params: Any) -> Any:
        merged = {**FAST, **params}
        overrides = [rclpy_double.Parameter(k, value=v) for k, v in merged.items()]
        node = node_module.SegmentationNode(segmenter_factory=engine, parameter_overrides=overrides,
                                            namespace=namespace)
        nodes.append(node)
        return node

    helper = rclpy_double.Node("test_harness")

    def listen(topic: str, msg_type: str = "sensor_msgs/msg/Image", transient: bool = False,
               reliable: bool = True) -> list[Any]:
        received: list[Any] = []
        profile = qos.QoSProfile(
            depth=10,
            reliability=qos.ReliabilityPolicy.RELIABLE if reliable else qos.ReliabilityPolicy.BEST_EFFORT,
            durability=qos.DurabilityPolicy.TRANSIENT_LOCAL if transient else qos.DurabilityPolicy.VOLATILE)
        helper.create_subscription(rclpy_style_class(msg_type), topic, received.append, profile)
        return received

    def camera(topic: str = "/image", msg_type: str = "sensor_msgs/msg/Image",
               reliable: bool = False) -> Any:
        profile = qos.QoSProfile(
            depth=5,
            reliability=qos.ReliabilityPolicy.RELIABLE if reliable else qos.ReliabilityPolicy.BEST_EFFORT)
        return helper.create_publisher(rclpy_style_class(msg_type), topic, profile)

    def image(frame: np.ndarray = FRAME, encoding: str = "bgr8", *, stamp_ns: int | None = None,
              frame_id: str = "cam_front", **overrides: Any) -> Any:
        msg = Image()
        stamp_ns = time.time_ns() if stamp_ns is None else stamp_ns
        msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(stamp_ns, 1_000_000_000)
        msg.header.frame_id = frame_id
        msg.height, msg.width = frame.shape[:2]
        msg.encoding = encoding
        msg.step = frame.shape[1] * (frame.shape[2] if frame.ndim == 3 else 1)
        msg.data = frame.tobytes()
        for key, value in overrides.items():
            setattr(msg, key, value)
        return msg

    yield SimpleNamespace(graph=graph, module=node_module, rclpy=rclpy, make=make, listen=listen,
                          camera=camera, image=image, Image=Image)
    for node in nodes:
        node.destroy_node()
    rclpy.try_shutdown()
    sys.modules.pop("bisenet_ros.node", None)
    sys.modules["bisenet_ros"].__dict__.pop("node", None)


def _diagnostics(ros: Any, node: Any) -> tuple[Any, dict[str, str]]:
    received = ros.listen("/diagnostics", "diagnostic_msgs/msg/DiagnosticArray")
    node._publish_diagnostics()
    status = received[-1].status[0]
    return status, {kv.key: kv.value for kv in status.values}


def _serializes(msg: Any, msgtype: str) -> None:
    store = typestore()
    wire = store.serialize_cdr(to_store_message(msg), msgtype)
    assert store.deserialize_cdr(wire, msgtype).header.frame_id == msg.header.frame_id


# ------------------------------------------------------------------------------- outputs


def test_every_output_with_the_input_header_and_exact_content(ros: Any) -> None:
    node = ros.make(publish_confidence=True)
    topics = ["mask", "color_mask", "overlay", "drivable_mask", "confidence"]
    got = {t: ros.listen(f"/segmentation/{t}") for t in topics}
    msg = ros.image(stamp_ns=1_700_000_000_123_456_789)
    ros.camera().publish(msg)
    wait_until(lambda: all(got.values()))

    engine = node.segmenter
    labels = engine.labels_for(FRAME)
    expected = {
        "mask": ("mono8", labels),
        "color_mask": ("bgr8", engine.palette[:, ::-1][labels]),
        "drivable_mask": ("mono8", np.where(labels == 0, 255, 0)),
        "confidence": ("32FC1", np.full(labels.shape, 0.75, np.float32)),
    }
    for topic in topics:
        out = got[topic][0]
        assert out.header.stamp.sec == 1_700_000_000 and out.header.stamp.nanosec == 123_456_789
        assert out.header.frame_id == "cam_front"
        assert (out.height, out.width) == FRAME.shape[:2]
        _serializes(out, "sensor_msgs/msg/Image")
        if topic in expected:
            encoding, array = expected[topic]
            assert out.encoding == encoding
            np.testing.assert_array_equal(image_to_array(out), array)
    assert got["overlay"][0].encoding == "bgr8"
    assert engine.calls[0]["color_order"] == "bgr"
    assert engine.calls[0]["outputs"] == {"color", "overlay", "drivable", "confidence"}


def test_rgb_input_and_rgb_colour_encoding(ros: Any) -> None:
    node = ros.make(color_mask_encoding="rgb8", publish_confidence=True,
                    confidence_encoding="mono8")
    color, conf = ros.listen("/segmentation/color_mask"), ros.listen("/segmentation/confidence")
    rgb = np.ascontiguousarray(FRAME[:, :, ::-1])
    ros.camera().publish(ros.image(rgb, "rgb8"))
    wait_until(lambda: color and conf)
    # rgb8 is handed to the engine as is (no conversion), colours come out as asked
    assert node.segmenter.calls[0]["color_order"] == "rgb"
    labels = node.segmenter.labels_for(rgb)
    assert color[0].encoding == "rgb8"
    np.testing.assert_array_equal(image_to_array(color[0]), node.segmenter.palette[labels])
    assert conf[0].encoding == "mono8"
    assert (image_to_array(conf[0]) == 191).all()  # 0.75 * 255 rounded


def test_only_outputs_with_subscribers_are_computed(ros: Any) -> None:
    node = ros.make()
    mask = ros.listen("/segmentation/mask")
    camera = ros.camera()
    camera.publish(ros.image())
    wait_until(lambda: len(mask) == 1)
    assert node.segmenter.calls[-1]["outputs"] == set()  # the mask needs only the labels

    overlay = ros.listen("/segmentation/overlay")
    camera.publish(ros.image())
    wait_until(lambda: len(mask) == 2 and overlay)
    assert node.segmenter.calls[-1]["outputs"] == {"overlay"}
    # no ~/confidence publisher at all unless publish_confidence is set
    assert not any(p.topic_name.endswith("/confidence") for p in node.publishers)


def test_planner_topics_first_then_compressed_visualization(ros: Any) -> None:
    node = ros.make(jpeg_quality=90)
    order: list[str] = []
    qos = sys.modules["rclpy.qos"]
    listener = rclpy_double.Node("order_listener")
    got: dict[str, list] = {}
    for topic, msg_type in (("mask", "Image"), ("drivable_mask", "Image"), ("overlay", "Image"),
                            ("overlay/compressed", "CompressedImage"),
                            ("color_mask/compressed", "CompressedImage")):
        got[topic] = []
        listener.create_subscription(
            rclpy_style_class(f"sensor_msgs/msg/{msg_type}"), f"/segmentation/{topic}",
            lambda m, t=topic: (order.append(t), got[t].append(m)), qos.QoSProfile(depth=10))
    ros.camera().publish(ros.image(stamp_ns=1_700_000_000_000_000_007))
    wait_until(lambda: len(order) == 5)
    assert order[:2] == ["mask", "drivable_mask"]  # what planners need goes out first
    labels = node.segmenter.labels_for(FRAME)
    overlay = image_to_array(got["overlay"][0])
    jpeg, png = got["overlay/compressed"][0], got["color_mask/compressed"][0]
    for msg in (jpeg, png):
        assert msg.header.frame_id == "cam_front" and msg.header.stamp.nanosec == 7
        _serializes(msg, "sensor_msgs/msg/CompressedImage")
    assert jpeg.format == "bgr8; jpeg compressed bgr8" and png.format == "bgr8; png compressed bgr8"
    # the overlay's pixels, JPEG-encoded at the configured quality
    expected = cv2.imencode(".jpg", overlay, [cv2.IMWRITE_JPEG_QUALITY, 90])[1].reshape(-1)
    np.testing.assert_array_equal(np.frombuffer(jpeg.data, np.uint8), expected)
    decoded = cv2.imdecode(np.frombuffer(png.data, np.uint8), cv2.IMREAD_COLOR)
    np.testing.assert_array_equal(decoded, node.segmenter.palette[:, ::-1][labels])  # exact
    assert node.segmenter.calls[0]["outputs"] == {"drivable", "overlay", "color"}
    _, values = _diagnostics(ros, node)
    assert float(values["latency_publish_planner_ms"]) <= float(values["latency_publish_ms"])


def test_visualization_rate_limits_only_the_visualization(ros: Any) -> None:
    node = ros.make(visualization_rate=0.5)  # one visualization frame per 2 s
    mask, drivable = ros.listen("/segmentation/mask"), ros.listen("/segmentation/drivable_mask")
    overlay = ros.listen("/segmentation/overlay")
    compressed = ros.listen("/segmentation/overlay/compressed", "sensor_msgs/msg/CompressedImage")
    camera = ros.camera()
    for i in range(4):
        camera.publish(ros.image(frame_id=f"f{i}"))
        wait_until(lambda: len(mask) == i + 1)
    assert node._visualization.wait_idle(10)  # it publishes on its own thread
    assert len(drivable) == 4 and len(overlay) == 1 and len(compressed) == 1
    assert node.segmenter.calls[1]["outputs"] == {"drivable"}  # not even computed


def test_visualization_never_delays_the_planner_and_keeps_only_the_newest(ros: Any) -> None:
    # A slow visualization (here a subscriber that blocks the overlay's publish; on a robot the
    # 1080p copies, serialization and encodes) runs on its own worker: the planner outputs of
    # the following frames go out meanwhile, and only the newest result waits to be drawn.
    node = ros.make(visualization_rate=1e6)
    mask = ros.listen("/segmentation/mask")
    release, blocked = threading.Event(), threading.Event()
    overlays: list[Any] = []

    def slow_viewer(msg: Any) -> None:
        blocked.set()
        release.wait(10)
        overlays.append(msg)

    qos = sys.modules["rclpy.qos"]
    rclpy_double.Node("viewer").create_subscription(
        ros.Image, "/segmentation/overlay", slow_viewer, qos.QoSProfile(depth=10))
    camera = ros.camera()
    camera.publish(ros.image(frame_id="f0"))
    assert blocked.wait(10)  # the worker is stuck publishing f0's overlay
    for i in (1, 2, 3):
        camera.publish(ros.image(frame_id=f"f{i}"))
        wait_until(lambda: len(mask) == i + 1)  # planner outputs keep flowing
    assert overlays == []
    release.set()
    assert node._visualization.wait_idle(10)
    assert [m.header.frame_id for m in overlays] == ["f0", "f3"]  # f1, f2 replaced
    _, values = _diagnostics(ros, node)
    assert values["visualization_published"] == "2" and values["visualization_skipped"] == "2"
    assert float(values["latency_visualization_ms"]) > float(values["latency_publish_planner_ms"])
    assert "latency_visualization_wait_ms" in values


def test_one_overlay_per_frame_while_the_camera_is_slower_than_the_rate(ros: Any) -> None:
    node = ros.make(visualization_rate=1e6)
    overlay = ros.listen("/segmentation/overlay")
    compressed = ros.listen("/segmentation/overlay/compressed", "sensor_msgs/msg/CompressedImage")
    camera = ros.camera()
    for i in range(5):
        camera.publish(ros.image(frame_id=f"f{i}"))
        wait_until(lambda: len(compressed) == i + 1)
    assert [m.header.frame_id for m in overlay] == [f"f{i}" for i in range(5)]
    assert node.stats.counters["visualization_skipped"] == 0


def test_visualization_failure_is_reported_and_survived(ros: Any) -> None:
    node = ros.make(visualization_rate=1e6)
    overlay, mask = ros.listen("/segmentation/overlay"), ros.listen("/segmentation/mask")
    publisher = node._image_publishers["overlay"]
    original = publisher.publish
    publisher.publish = lambda msg: (_ for _ in ()).throw(RuntimeError("overlay broke"))
    camera = ros.camera()
    camera.publish(ros.image())
    wait_until(lambda: node.stats.counters["errors"] == 1)
    assert any("publishing the visualization failed" in m for m in ros.graph.messages("error"))
    publisher.publish = original
    camera.publish(ros.image())
    wait_until(lambda: overlay and len(mask) == 2)
    assert node._visualization.alive


def test_label_info_is_latched_for_late_subscribers(ros: Any) -> None:
    node = ros.make(num_classes=4)
    late = ros.listen("/segmentation/label_info", "vision_msgs/msg/LabelInfo", transient=True)
    volatile = ros.listen("/segmentation/label_info", "vision_msgs/msg/LabelInfo")
    assert len(late) == 1 and volatile == []
    info = late[0]
    assert [(c.class_id, c.class_name) for c in info.class_map] == [
        (0, "class0"), (1, "class1"), (2, "class2"), (3, "class3")]
    assert info.threshold == 0.0
    _serializes(info, "vision_msgs/msg/LabelInfo")
    assert node.segmenter.class_names == ["class0", "class1", "class2", "class3"]


# --------------------------------------------------------------------------- scheduling


def test_stale_frames_are_dropped_and_counted(ros: Any) -> None:
    node = ros.make(max_frame_age=0.5)
    mask = ros.listen("/segmentation/mask")
    ros.graph.clock_ns = 1_000 * 1_000_000_000
    camera = ros.camera()
    camera.publish(ros.image(stamp_ns=ros.graph.clock_ns - 2_000_000_000))  # 2 s old
    wait_until(lambda: node.stats.counters["dropped_stale"] == 1)
    assert mask == [] and node.segmenter.calls == []
    assert any("dropping a frame 2.000 s old" in m for m in ros.graph.messages("warning"))
    camera.publish(ros.image(stamp_ns=ros.graph.clock_ns - 100_000_000))  # 0.1 s: fresh
    camera.publish(ros.image(stamp_ns=0, frame_id="unstamped"))  # no stamp: never stale
    wait_until(lambda: node.stats.counters["frames_processed"] >= 1)
    wait_until(lambda: mask and mask[-1].header.frame_id == "unstamped")
    status, values = _diagnostics(ros, node)
    assert values["dropped_stale"] == "1"


def test_newest_frame_only_no_backlog(ros: Any) -> None:
    node = ros.make()
    mask = ros.listen("/segmentation/mask")
    engine = node.segmenter
    engine.gate.clear()  # hold the worker inside inference on the first frame
    camera = ros.camera()
    camera.publish(ros.image(frame_id="f0"))
    assert engine.started.wait(10)
    for i in range(1, 6):  # the camera keeps going while the model is busy
        camera.publish(ros.image(frame_id=f"f{i}"))
    engine.gate.set()
    wait_until(lambda: len(mask) == 2)
    time.sleep(0.05)
    assert [m.header.frame_id for m in mask] == ["f0", "f5"]  # f1..f4 were superseded
    assert node.stats.counters["dropped_superseded"] == 4
    assert node.stats.counters["frames_received"] == 6


def test_default_qos_accepts_best_effort_and_reliable_cameras(ros: Any) -> None:
    node = ros.make()
    mask = ros.listen("/segmentation/mask")
    ros.camera(reliable=False).publish(ros.image(frame_id="be"))
    wait_until(lambda: len(mask) == 1)
    ros.camera(reliable=True).publish(ros.image(frame_id="rel"))
    wait_until(lambda: len(mask) == 2)
    sub_qos = node.subscriptions[0].qos_profile
    assert sub_qos.depth == 1 and sub_qos.reliability.name == "BEST_EFFORT"


def test_reliable_qos_parameter_and_topic_parameter(ros: Any) -> None:
    node = ros.make(qos="reliable", qos_depth=3, image_topic="/cam/image_raw")
    sub = node.subscriptions[0]
    assert sub.topic_name == "/cam/image_raw"
    assert sub.qos_profile.reliability.name == "RELIABLE" and sub.qos_profile.depth == 3
    # a best-effort camera does not match a reliable subscription (the classic QoS mismatch)
    assert ros.camera("/cam/image_raw", reliable=False).get_subscription_count() == 0


# ------------------------------------------------------------------------------ bad input


def test_malformed_messages_are_counted_logged_throttled_and_skipped(ros: Any) -> None:
    node = ros.make()
    mask = ros.listen("/segmentation/mask")
    camera = ros.camera()
    camera.publish(ros.image(encoding="bgr9"))
    wait_until(lambda: node.stats.counters["malformed"] == 1)
    camera.publish(ros.image(data=FRAME.tobytes()[:-5]))  # truncated data
    wait_until(lambda: node.stats.counters["malformed"] == 2)
    camera.publish(ros.image(frame_id="good"))
    wait_until(lambda: len(mask) == 1)
    assert mask[0].header.frame_id == "good"
    warnings = [m for m in ros.graph.messages("warning") if "malformed" in m]
    assert len(warnings) == 1 and "unsupported image encoding 'bgr9'" in warnings[0]  # throttled
    status, values = _diagnostics(ros, node)
    assert values["malformed"] == "2" and values["frames_processed"] == "1"
    assert status.level == sys.modules["diagnostic_msgs.msg"].DiagnosticStatus.WARN
    assert "malformed" in status.message


def test_compressed_input_and_corrupt_jpeg(ros: Any) -> None:
    node = ros.make(use_compressed=True)
    assert node.subscriptions[0].topic_name == "/image/compressed"
    mask = ros.listen("/segmentation/mask")
    camera = ros.camera("/image/compressed", "sensor_msgs/msg/CompressedImage")
    Compressed = rclpy_style_class("sensor_msgs/msg/CompressedImage")
    bad = Compressed(format="jpeg", data=b"\xff\xd8\xff\xe0 not a jpeg")
    bad.header.frame_id = "bad"
    camera.publish(bad)
    wait_until(lambda: node.stats.counters["malformed"] == 1)
    ok, png = cv2.imencode(".png", FRAME)
    good = Compressed(format="png", data=png.tobytes())
    good.header.frame_id = "good"
    camera.publish(good)
    wait_until(lambda: mask)
    assert mask[0].header.frame_id == "good"
    np.testing.assert_array_equal(image_to_array(mask[0]), node.segmenter.labels_for(FRAME))


def test_engine_failure_is_reported_and_survived(ros: Any) -> None:
    node = ros.make()
    mask = ros.listen("/segmentation/mask")
    node.segmenter.fail_with = RuntimeError("CUDA out of memory")
    camera = ros.camera()
    camera.publish(ros.image())
    wait_until(lambda: node.stats.counters["errors"] == 1)
    status, values = _diagnostics(ros, node)
    assert status.level == sys.modules["diagnostic_msgs.msg"].DiagnosticStatus.ERROR
    assert "CUDA out of memory" in status.message
    node.segmenter.fail_with = None
    camera.publish(ros.image())
    wait_until(lambda: mask)
    status, _ = _diagnostics(ros, node)
    assert status.level == sys.modules["diagnostic_msgs.msg"].DiagnosticStatus.OK


def test_diagnostics_content(ros: Any) -> None:
    node = ros.make()
    mask = ros.listen("/segmentation/mask")
    camera = ros.camera()
    for _ in range(3):
        camera.publish(ros.image())
        wait_until(lambda: node.stats.counters["frames_processed"] + node.stats.counters[
            "dropped_superseded"] >= node.stats.counters["frames_received"])
    received = ros.listen("/diagnostics", "diagnostic_msgs/msg/DiagnosticArray")
    ros.graph.fire_timers()  # the node's diagnostics timer
    assert len(received) == 1
    _serializes(received[0], "diagnostic_msgs/msg/DiagnosticArray")
    status = received[0].status[0]
    values = {kv.key: kv.value for kv in status.values}
    assert status.name == "/segmentation: segmentation" and status.hardware_id == "cpu"
    for key in ("input_rate_hz", "output_rate_hz", "frames_received", "dropped_stale",
                "dropped_superseded", "malformed", "latency_decode_ms", "latency_model_ms",
                "latency_publish_ms", "latency_total_ms", "variant", "resolution"):
        assert key in values, key
    assert float(values["input_rate_hz"]) > 0 and values["resolution"] == "128x64"
    assert float(values["latency_total_ms"]) >= float(values["latency_decode_ms"])
    assert mask


def test_frames_lost_before_the_node_are_estimated_from_stamps(ros: Any) -> None:
    # What the issue measured at 1080p: most camera frames never reach the node. The node sees
    # only the survivors; the gaps in their header stamps (30 Hz camera) reveal the losses.
    node = ros.make()
    camera = ros.camera()
    period, t0 = 33_333_333, 1_700_000_000 * 10**9
    indices = list(range(12)) + [12 + 5 * k for k in range(1, 9)]  # then 4 of 5 lost (5 first)
    for i in indices:
        camera.publish(ros.image(stamp_ns=t0 + i * period))
    wait_until(lambda: node.stats.counters["frames_received"] == len(indices))
    status, values = _diagnostics(ros, node)
    assert values["frames_lost_upstream"] == "33" and values["frame_gaps"] == "8"
    assert values["camera_rate_hz"] == "30.00"
    assert status.level == sys.modules["diagnostic_msgs.msg"].DiagnosticStatus.WARN
    warnings = [m for m in ros.graph.messages("warning") if "never reached this node" in m]
    assert len(warnings) == 1  # throttled: one line, pointing to the docs
    assert "docs/node.md#large-images-and-dds" in warnings[0] and "5 camera frame(s)" in warnings[0]


def test_heavy_loss_with_few_arrivals_is_bounded_and_warned(ros: Any) -> None:
    # Issue 17: 40 frames at 2.5 Hz sent, 5 reached the node (CycloneDDS defaults at 1080p).
    node = ros.make()
    camera = ros.camera()
    period, t0 = 400_000_000, 1_700_000_000 * 10**9
    for i in (2, 9, 22, 36, 38):
        camera.publish(ros.image(stamp_ns=t0 + i * period))
    wait_until(lambda: node.stats.counters["frames_received"] == 5)
    status, values = _diagnostics(ros, node)
    assert int(values["frames_lost_upstream"]) >= 35 / 2  # 32: all between the first and last
    assert values["camera_rate_hz"] == "2.50" and float(values["arrival_ratio"]) < 0.2
    assert status.level == sys.modules["diagnostic_msgs.msg"].DiagnosticStatus.WARN
    warnings = [m for m in ros.graph.messages("warning") if "never reached this node" in m]
    assert len(warnings) == 1 and "cyclonedds.xml" in warnings[0] and "rmem_max" in warnings[0]


@pytest.mark.parametrize("pause_s", [0.0, 0.02])
def test_replay_speed_and_rate_changes_are_not_loss(ros: Any, pause_s: float) -> None:
    # A bag replayed fast or slow (arrival times differ, header stamps do not), whose camera
    # went from 10 Hz to 5 Hz on the same clock halfway.
    node = ros.make()
    camera = ros.camera()
    t0 = 1_700_000_000 * 10**9
    stamps = [t0 + i * 100_000_000 for i in range(20)] + [t0 + 1_900_000_000 + i * 200_000_000
                                                         for i in range(1, 10)]
    for stamp in stamps:
        camera.publish(ros.image(stamp_ns=stamp))
        time.sleep(pause_s)
    wait_until(lambda: node.stats.counters["frames_received"] == len(stamps))
    _, values = _diagnostics(ros, node)
    assert values["frames_lost_upstream"] == "0" and values["camera_rate_hz"] == "5.00"
    assert not [m for m in ros.graph.messages("warning") if "never reached" in m]


def test_missing_cyclonedds_config_is_one_line_at_start(
        ros: Any, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture,
        tmp_path: Path) -> None:
    ros.rclpy.try_shutdown()
    monkeypatch.setenv("CYCLONEDDS_URI", f"file://{tmp_path}/cyclonedds.xml")
    monkeypatch.setenv("RMW_IMPLEMENTATION", "rmw_cyclonedds_cpp")
    assert ros.module.main([]) == 1
    assert not ros.graph.initialized  # refused before rclpy.init
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"{tmp_path}/cyclonedds.xml" in err[0] and "CYCLONEDDS_URI" in err[0]


# ----------------------------------------------------------------------------- parameters


def test_parameters_declared_once_with_descriptors(ros: Any) -> None:
    node = ros.make()
    names = [spec.name for spec in all_parameters()]
    assert sorted(node.descriptors) == sorted(names) and len(set(names)) == len(names)
    for name, descriptor in node.descriptors.items():
        assert descriptor.description and descriptor.read_only, name
    assert node.descriptors["overlay_alpha"].floating_point_range[0].to_value == 1.0
    assert node.descriptors["num_classes"].integer_range[0].to_value == 255
    assert "letterbox" in node.descriptors["resize"].additional_constraints
    # node-only keys are exactly what config.py lets through from a shared parameter file
    assert ({s.name for s in NODE_PARAMETERS + GRID_PARAMETERS} | {"use_sim_time"}
            == set(_NODE_ONLY_KEYS))
    assert node.config.resolution == (128, 64)
    assert any("randomly initialised" in m for m in ros.graph.messages("warning"))


@pytest.mark.parametrize("params, match", [
    ({"resolution": "1024x5"}, "resolution 1024x5: height must be an integer in 32"),
    ({"resolution": "big"}, "expected WIDTHxHEIGHT"),
    ({"qos": "fast"}, "qos='fast': expected one of: sensor_data, reliable"),
    ({"backend": "tensorflow"}, "backend='tensorflow': expected one of"),
    ({"variant": "bisenetv3"}, "variant='bisenetv3'"),
    ({"color_mask_encoding": "rgba8"}, "expected one of: bgr8, rgb8"),
    ({"overlay_alpha": 1.5}, "out of range"),
    ({"overlay_alpha": 1}, "of type 'INTEGER', expecting type 'DOUBLE'"),
    ({"image_topic": " "}, "image_topic is empty"),
    ({"num_classes": 0}, "out of range"),
    ({"visualization_rate": 0.0}, "visualization_rate=0.0: expected a rate in Hz > 0"),
    ({"visualization_rate": -5.0}, "visualization_rate=-5.0: expected a rate in Hz > 0"),
    ({"visualization_resolution": "full"}, "expected one of: camera, network"),
])
def test_bad_parameter_is_a_clear_error_at_start(ros: Any, params: dict, match: str) -> None:
    with pytest.raises(ros.module.ParameterError) as info:
        ros.make(**params)
    assert match in str(info.value)
    assert any("invalid parameter" in m for m in ros.graph.messages("fatal"))


def test_engine_construction_error_is_a_startup_error(ros: Any) -> None:
    def broken(config: Any) -> Any:
        raise FileNotFoundError(f"weights file {config.weights!r} not found")

    with pytest.raises(ros.module.StartupError, match="not found"):
        ros.make(engine=broken, weights="/nope.pth")
    assert any("cannot build the segmentation engine" in m for m in ros.graph.messages("fatal"))


def test_main_exit_codes(ros: Any) -> None:
    ros.rclpy.try_shutdown()
    assert ros.module.main(["--ros-args", "-p", "resolution:=12x1"]) == 1
    assert any("resolution 12x1" in m for m in ros.graph.messages("fatal"))

    seen: list[Any] = []
    ros.graph.spin_hook = seen.append
    args = ["--ros-args", "-p", "variant:=bisenetv2", "-p", "resolution:=64x32"]
    assert ros.module.main(args) == 0  # builds the real engine, spins, shuts down cleanly
    assert seen and seen[0].config.resolution == (64, 32) and seen[0].destroyed
    assert not ros.graph.initialized


def test_double_provides_exactly_what_node_imports() -> None:
    # Every name node.py takes from a ROS module exists in the double, and the double's rclpy
    # modules hold nothing node.py does not use (the double mirrors the surface, no more).
    tree = ast.parse((ROOT / "bisenet_ros" / "node.py").read_text())
    modules = rclpy_double.build_modules()
    imported: dict[str, set[str]] = {}
    for item in ast.walk(tree):
        if isinstance(item, ast.ImportFrom) and item.module and item.module.split(".")[0] in (
                "rclpy", "sensor_msgs", "vision_msgs", "diagnostic_msgs", "rcl_interfaces"):
            imported.setdefault(item.module, set()).update(a.name for a in item.names)
    used_top = {n.attr for n in ast.walk(tree)
                if isinstance(n, ast.Attribute) and isinstance(n.value, ast.Name)
                and n.value.id == "rclpy"}
    for module, names in imported.items():
        for name in names:
            assert hasattr(modules[module], name), f"{module}.{name}"
    for module in ("rclpy.node", "rclpy.qos", "rclpy.executors", "rclpy.exceptions"):
        provided = {k for k in vars(modules[module]) if not k.startswith("__")}
        assert provided == imported[module], module
    assert used_top <= set(vars(modules["rclpy"]))


@pytest.mark.parametrize("name, node, namespace, expected", [
    # rcl's expansion rules (rcl/test/rcl/test_expand_topic_name.cpp)
    ("ping", "my_node", "/my_ns", "/my_ns/ping"),
    ("ping", "my_node", "/", "/ping"),
    ("/ping", "my_node", "/my_ns", "/ping"),
    ("~", "my_node", "/my_ns", "/my_ns/my_node"),
    ("~/ping", "my_node", "/", "/my_node/ping"),
    ("~/ping", "my_node", "/my_ns/sub", "/my_ns/sub/my_node/ping"),
    ("{node}/ping", "my_node", "/my_ns", "/my_ns/my_node/ping"),
    ("{ns}/ping", "my_node", "/my_ns", "/my_ns/ping"),
])
def test_double_expands_names_like_rcl(name: str, node: str, namespace: str, expected: str) -> None:
    assert rclpy_double.expand_topic_name(name, node, namespace) == expected


def test_double_remaps_like_rcl() -> None:
    rules = [rclpy_double.RemapRule(r) for r in (
        "other:image:=/wrong", "image:=/cam/image_raw", "/ns/image:=/later", "~/out:=/o")]
    resolve = rclpy_double.resolve_topic_name
    # first matching rule for this node; the match side is expanded before comparing
    assert resolve("image", "seg", "/ns", [], rules) == "/cam/image_raw"
    assert resolve("/ns/image", "seg", "/ns", [], rules) == "/cam/image_raw"
    assert resolve("image", "other", "/ns", [], rules) == "/wrong"
    assert resolve("out", "seg", "/", [], rules) == "/out"  # the rule is for ~/out: /seg/out
    assert resolve("~/out", "seg", "/", [], rules) == "/o"
    assert resolve("image", "seg", "/ns", [], rules, only_expand=True) == "/ns/image"
    # the node's own arguments before the process's
    local = [rclpy_double.RemapRule("image:=mine")]
    assert resolve("image", "seg", "/ns", local, rules) == "/ns/mine"
    with pytest.raises(ValueError, match="remap rule"):
        rclpy_double.RemapRule("image")


def test_double_renames_nodes_like_rcl(ros: Any) -> None:
    # rcl_node_init: the node rule first, then the namespace rule for the node's new name
    node = rclpy_double.Node("seg", cli_args=[
        "--ros-args", "-r", "__node:=cam_seg", "-r", "seg:__ns:=/wrong", "-r", "cam_seg:__ns:=/front"])
    assert node.get_fully_qualified_name() == "/front/cam_seg"
    assert node.get_logger().name == "front.cam_seg"


# ---------------------------------------------------------------------------- real engine


def test_real_segmenter_end_to_end(ros: Any) -> None:
    from bisenet_ros.inference import Segmenter

    node = ros.make(engine=Segmenter, variant="bisenetv2", resolution="128x64",
                    publish_confidence=True, confidence_encoding="mono8")
    assert isinstance(node.segmenter, Segmenter)
    topics = ["mask", "color_mask", "overlay", "drivable_mask", "confidence"]
    got = {t: ros.listen(f"/segmentation/{t}") for t in topics}
    info = ros.listen("/segmentation/label_info", "vision_msgs/msg/LabelInfo", transient=True)
    ros.camera().publish(ros.image(frame_id="real"))
    wait_until(lambda: all(got.values()), timeout=60)
    labels = image_to_array(got["mask"][0])
    assert labels.shape == FRAME.shape[:2] and labels.max() < 19
    palette_bgr = node.segmenter.palette[:, ::-1]
    np.testing.assert_array_equal(image_to_array(got["color_mask"][0]), palette_bgr[labels])
    road = node.segmenter.class_names.index("road")
    np.testing.assert_array_equal(image_to_array(got["drivable_mask"][0]),
                                  np.where(labels == road, 255, 0))
    assert got["overlay"][0].encoding == "bgr8" and got["confidence"][0].encoding == "mono8"
    assert all(m[0].header.frame_id == "real" for m in got.values())
    assert [c.class_name for c in info[0].class_map] == node.segmenter.class_names
    assert info[0].class_map[0].class_name == "road"
    _, values = _diagnostics(ros, node)
    assert float(values["latency_inference_ms"]) > 0


def test_random_weights_warned_once_and_no_tensorrt_talk_on_the_cpu(ros: Any) -> None:
    import warnings

    from bisenet_ros.inference import Segmenter

    with warnings.catch_warnings(record=True) as python_warnings:
        warnings.simplefilter("always")
        ros.make(engine=Segmenter, variant="bisenetv2", resolution="64x32")
    said = [m for m in ros.graph.messages() if "randomly initialised" in m]
    assert len(said) == 1 and "weights:=" in said[0]
    assert not [w for w in python_warnings if "randomly initialised" in str(w.message)]
    warmup = [m for m in ros.graph.messages("info") if m.startswith("warming up")]
    assert warmup == ["warming up the engine"]  # onnxruntime/torch on the CPU: no TensorRT

    class WarmingEngine(FakeSegmenter):
        def warmup(self, frame_size: tuple[int, int]) -> None:
            self.calls.append({"warmup": frame_size})

    ros.make(engine=WarmingEngine, backend="onnxruntime", device="tensorrt")
    warmup = [m for m in ros.graph.messages("info") if m.startswith("warming up")]
    assert len(warmup) == 2 and "TensorRT" in warmup[1]


def test_publishing_failure_in_the_worker_is_survived(ros: Any) -> None:
    node = ros.make()
    mask = ros.listen("/segmentation/mask")
    publisher = node._image_publishers["mask"]
    original = publisher.publish
    publisher.publish = lambda msg: (_ for _ in ()).throw(RuntimeError("publisher's context is invalid"))
    camera = ros.camera()
    camera.publish(ros.image())
    wait_until(lambda: node.stats.counters["errors"] == 1)
    assert node._worker.is_alive()
    publisher.publish = original
    camera.publish(ros.image())
    wait_until(lambda: mask)


def test_worker_ends_quietly_when_the_context_shuts_down_mid_frame(ros: Any) -> None:
    # SIGTERM (rclpy's handler shuts every context down) ends spin while a frame is on the
    # engine; its publish then fails ("publisher's context is invalid") before destroy_node
    # runs. That is the node ending, not an error to count and log on the way out.
    node = ros.make()
    node.segmenter.gate.clear()  # hold the worker inside the engine
    ros.camera().publish(ros.image())
    assert node.segmenter.started.wait(10)
    ros.rclpy.try_shutdown()
    node.segmenter.gate.set()
    wait_until(lambda: not node._worker.is_alive())  # nothing left to publish to: it stops
    assert node.stats.counters["errors"] == 0 and not ros.graph.messages("error")


def test_visualization_ends_quietly_when_the_context_shuts_down_mid_publish(ros: Any) -> None:
    node = ros.make(visualization_rate=1e6)
    entered, release = threading.Event(), threading.Event()
    qos = sys.modules["rclpy.qos"]
    # color_mask goes out first: its subscriber holds the worker while the context goes down,
    # so the overlay's publish that follows fails
    rclpy_double.Node("viewer").create_subscription(
        ros.Image, "/segmentation/color_mask", lambda msg: (entered.set(), release.wait(10)),
        qos.QoSProfile(depth=10))
    ros.listen("/segmentation/overlay")
    ros.camera().publish(ros.image())
    assert entered.wait(10)
    ros.rclpy.try_shutdown()
    release.set()
    assert node._visualization.wait_idle(10)
    assert node.stats.counters["errors"] == 0 and not ros.graph.messages("error")


def test_docs_list_every_parameter_and_topic() -> None:
    doc = (ROOT / "docs" / "node.md").read_text()
    for spec in all_parameters():
        assert f"| `{spec.name}` |" in doc, spec.name
    for topic in ("~/mask", "~/color_mask", "~/overlay", "~/drivable_mask", "~/confidence",
                  "~/label_info", "/diagnostics"):
        assert f"`{topic}`" in doc, topic


def test_diagnostics_name_the_model_that_runs(ros: Any, tmp_path: Path) -> None:
    """An .onnx file's own variant and size win over the parameters; diagnostics say so."""
    import torch

    from bisenet_ros.config import SegmenterConfig
    from bisenet_ros.inference import Segmenter
    from bisenet_ros.inference.export import export_onnx
    from bisenet_ros.inference.segmenter import load_torch_model, resolve_class_set

    torch.manual_seed(0)
    config = SegmenterConfig(variant="stdc1")
    with pytest.warns(UserWarning, match="randomly initialised"):
        model = load_torch_model(config)
    onnx = tmp_path / "stdc1_64x32.onnx"
    export_onnx(model, str(onnx), resolution=(64, 32), class_set=resolve_class_set(config, model))
    # variant and resolution as the shipped bisenetv2.yaml gives them: defaults, which the file's
    # own values replace (an explicit other size is refused: test_weights_file_describes_itself)
    node = ros.make(engine=Segmenter, variant="bisenetv2", resolution="1024x512", weights=str(onnx),
                    backend="onnxruntime")
    status, values = _diagnostics(ros, node)
    assert values["variant"] == "stdc1" and values["resolution"] == "64x32"
    assert values["backend"] == "onnxruntime" and values["precision"] == "fp32"
    assert len(values["weights_sha256"]) == 12 and status.hardware_id == "cpu"


def test_weights_file_describes_itself(ros: Any, tmp_path: Path) -> None:
    """weights:= a training checkpoint, everything else as the launch file's defaults give it: the
    file's variant, classes and size run; an explicit other variant is refused naming both."""
    from bisenet_ros.inference import Segmenter
    from trained import NAMES, write_training_checkpoint

    weights = str(write_training_checkpoint(tmp_path / "best.pth"))
    node = ros.make(engine=Segmenter, variant="bisenetv2", resolution="1024x512", weights=weights)
    config = node.segmenter.config
    assert (config.variant, config.resolution, config.num_classes) == ("stdc1", (64, 32), 5)
    assert node.segmenter.class_names == NAMES
    status, values = _diagnostics(ros, node)
    assert values["variant"] == "stdc1" and values["resolution"] == "64x32"
    with pytest.raises(ros.module.StartupError, match="variant=stdc2 contradicts .*best.pth"):
        ros.make(engine=Segmenter, variant="stdc2", weights=weights)
