"""One node serving several cameras on one batched engine (``cameras`` parameter), on the rclpy
test double: per-camera topics, headers, diagnostics, fairness, and refusals at start."""
from __future__ import annotations

import re
import sys
import time
from typing import Any

import cv2
import numpy as np
import pytest

from bisenet_ros.codec import image_to_array
from ros_double import rclpy_double
from ros_double.messages import rclpy_style_class
from test_node import _serializes, ros, wait_until  # noqa: F401  (ros is a fixture)

CAMERAS = ["steady", "flood", "stopped", "broken"]
# Each camera its own resolution and content, so a mixed-up output shows.
FRAMES = {name: np.random.default_rng(i).integers(0, 256, (16 + 8 * i, 24 + 4 * i, 3), np.uint8)
          for i, name in enumerate(CAMERAS)}


def _status(ros: Any, node: Any) -> dict[str, tuple[Any, dict[str, str]]]:
    received = ros.listen("/diagnostics", "diagnostic_msgs/msg/DiagnosticArray")
    node._publish_diagnostics()
    return {s.name: (s, {kv.key: kv.value for kv in s.values}) for s in received[-1].status}


def test_four_cameras_stopped_flooding_malformed_none_starved_own_headers(ros: Any) -> None:
    node = ros.make(cameras=CAMERAS)
    masks = {c: ros.listen(f"/{c}/segmentation/mask") for c in CAMERAS}
    publishers = {c: ros.camera(f"/{c}/image_raw") for c in CAMERAS}
    sent: dict[str, tuple[str, int]] = {}  # frame_id -> (camera, stamp)
    stamp = [1_700_000_000 * 10**9]

    def send(camera: str, tag: str, **overrides: Any) -> None:
        stamp[0] += 1_000_003
        frame_id = f"{camera}/{tag}"
        sent[frame_id] = (camera, stamp[0])
        publishers[camera].publish(ros.image(FRAMES[camera], stamp_ns=stamp[0], frame_id=frame_id,
                                             **overrides))

    send("stopped", "only")  # then it stops for good
    rounds = 12
    for r in range(rounds):
        for i in range(10):  # ten times the others' rate
            send("flood", f"{r}.{i}")
        send("steady", f"{r}")
        if r % 2:
            send("broken", f"{r}")
        else:
            send("broken", f"{r}-bad", encoding="bgr9")  # malformed
        wait_until(lambda: len(masks["steady"]) == r + 1
                   and node.cameras[3].stream.stats.counters["malformed"]
                   + len(masks["broken"]) == r + 1)
        wait_until(lambda: masks["flood"] and masks["flood"][-1].header.frame_id == f"flood/{r}.9")

    # None starved: every live camera's newest frame of every round went through; the stopped
    # one delivered its only frame and was never waited for.
    assert len(masks["steady"]) == rounds
    assert rounds <= len(masks["flood"]) <= 2 * rounds  # a batch may catch it mid-burst
    assert len(masks["broken"]) == rounds // 2
    assert [m.header.frame_id for m in masks["stopped"]] == ["stopped/only"]
    # Every output carries its own camera's header, bit for bit, and its own camera's pixels.
    for camera, got in masks.items():
        for msg in got:
            owner, stamp_ns = sent[msg.header.frame_id]
            assert owner == camera
            assert msg.header.stamp.sec * 10**9 + msg.header.stamp.nanosec == stamp_ns
            np.testing.assert_array_equal(image_to_array(msg),
                                          node.segmenter.labels_for(FRAMES[camera]))
    _serializes(masks["flood"][0], "sensor_msgs/msg/Image")
    assert max(node.segmenter.batches) >= 2  # cameras shared engine calls

    status = _status(ros, node)
    DiagnosticStatus = sys.modules["diagnostic_msgs.msg"].DiagnosticStatus
    assert sorted(status) == sorted([f"/{c}/segmentation: segmentation" for c in CAMERAS]
                                    + ["/segmentation: engine"])
    flood = status["/flood/segmentation: segmentation"][1]
    assert flood["frames_received"] == str(10 * rounds)
    assert int(flood["dropped_superseded"]) + int(flood["frames_processed"]) == 10 * rounds
    assert "arrival_ratio" in flood and "latency_total_ms" in flood
    broken_status, broken = status["/broken/segmentation: segmentation"]
    assert broken["malformed"] == str(rounds // 2) and broken_status.level == DiagnosticStatus.WARN
    assert status["/steady/segmentation: segmentation"][0].level == DiagnosticStatus.OK
    engine_status, engine = status["/segmentation: engine"]
    assert engine_status.level == DiagnosticStatus.OK and engine["variant"] == node.engine_info["variant"]
    assert int(engine["frames_processed"]) == sum(len(m) for m in masks.values())
    assert float(engine["mean_batch_size"]) >= 1.0
    # One camera's malformed frames are logged for that camera, once (throttled per camera).
    warnings = [m for m in ros.graph.messages("warning") if "malformed" in m]
    assert len(warnings) == 1 and warnings[0].startswith("camera broken: ")


def test_round_robin_under_max_batch_size_while_one_camera_floods(ros: Any) -> None:
    node = ros.make(cameras=["a", "b", "c"], max_batch_size=1)
    order: list[str] = []
    listener = rclpy_double.Node("order_listener")
    for c in "abc":
        listener.create_subscription(rclpy_style_class("sensor_msgs/msg/Image"),
                                     f"/{c}/segmentation/mask",
                                     lambda m: order.append(m.header.frame_id),
                                     ros.rclpy.qos.QoSProfile(depth=10))
    publishers = {c: ros.camera(f"/{c}/image_raw") for c in "abc"}
    engine = node.segmenter
    engine.gate.clear()  # the engine is busy with a0: the next frames wait in the scheduler
    publishers["a"].publish(ros.image(frame_id="a0"))
    assert engine.started.wait(10)
    for i in range(10):  # "a" floods while b and c send one frame each
        publishers["a"].publish(ros.image(frame_id=f"a1.{i}"))
    publishers["b"].publish(ros.image(frame_id="b1"))
    publishers["c"].publish(ros.image(frame_id="c1"))
    engine.gate.set()
    wait_until(lambda: len(order) == 4)
    # Batches of one, least recently served first: the flooder waits its turn with its newest.
    assert order == ["a0", "b1", "c1", "a1.9"]
    assert node.scheduler.counters()["a"].replaced == 9


def test_per_camera_topics_compressed_input_camera_info_and_visualization(ros: Any) -> None:
    node = ros.make(cameras=["front", "rear"], image_topics=["/sensors/front/image", "/rear_raw"],
                    use_compressed=True)
    topics = {s.topic_name for s in node.subscriptions}
    assert {"/sensors/front/image/compressed", "/rear_raw/compressed",
            "/sensors/front/camera_info", "/camera_info"} <= topics
    published = {p.topic_name for p in node.publishers}
    for camera in ("front", "rear"):
        for topic in ("mask", "drivable_mask", "color_mask", "overlay", "overlay/compressed",
                      "color_mask/compressed", "label_info"):
            assert f"/{camera}/segmentation/{topic}" in published
    assert "/front/segmentation/drivable_grid" not in published  # only with per_camera_grids
    overlays = {c: ros.listen(f"/{c}/segmentation/overlay") for c in ("front", "rear")}
    label_info = ros.listen("/rear/segmentation/label_info", "vision_msgs/msg/LabelInfo",
                            transient=True)
    assert [c.class_name for c in label_info[0].class_map] == node.segmenter.class_names
    Compressed = rclpy_style_class("sensor_msgs/msg/CompressedImage")
    for camera, topic in (("front", "/sensors/front/image/compressed"),
                          ("rear", "/rear_raw/compressed")):
        msg = Compressed(format="png", data=cv2.imencode(".png", FRAMES["steady"])[1].tobytes())
        msg.header.frame_id = camera
        ros.camera(topic, "sensor_msgs/msg/CompressedImage").publish(msg)
    # Each camera has its own visualization rate limit: both get their overlay.
    wait_until(lambda: all(overlays.values()))
    assert [overlays[c][0].header.frame_id for c in ("front", "rear")] == ["front", "rear"]
    start = [m for m in ros.graph.messages("info") if "segmenting" in m]
    assert any(m.startswith("camera front: segmenting /sensors/front/image/compressed") for m in start)


@pytest.mark.parametrize("cameras, text", [
    (["front", "front"], "named twice: front"),
    (["front", ""], "entry 1 (counting from 0) empty"),
    (["front", "2nd"], "not a ROS namespace"),
])
def test_bad_camera_lists_are_refused_at_start(ros: Any, cameras: list[str], text: str) -> None:
    with pytest.raises(ros.module.ParameterError, match=re.escape(text)):
        ros.make(cameras=cameras)
    fatal = ros.graph.messages("fatal")
    assert len(fatal) == 1 and text in fatal[0] and "\n" not in fatal[0]


def test_one_static_camera_pose_for_several_cameras_is_refused(ros: Any) -> None:
    with pytest.raises(ros.module.ParameterError, match="cannot place them all"):
        ros.make(cameras=["a", "b"], use_static_camera_pose=True)
    assert ros.make(cameras=["a"], use_static_camera_pose=True).cameras[0].stream.name == "a"


def test_bad_image_topics_are_refused_and_main_exits_1(ros: Any) -> None:
    with pytest.raises(ros.module.ParameterError, match="1 entries for 2 cameras"):
        ros.make(cameras=["a", "b"], image_topics=["/a/image"])
    ros.rclpy.try_shutdown()
    before = len(ros.graph.messages("fatal"))
    assert ros.module.main(["--ros-args", "-p", "cameras:=[left, left]"]) == 1
    fatal = ros.graph.messages("fatal")[before:]
    assert len(fatal) == 1 and "named twice: left" in fatal[0]


def test_a_backend_failure_fails_the_batch_not_the_node(ros: Any) -> None:
    node = ros.make(cameras=["a", "b"])
    masks = {c: ros.listen(f"/{c}/segmentation/mask") for c in "ab"}
    node.segmenter.fail_with = RuntimeError("CUDA out of memory")
    ros.camera("/a/image_raw").publish(ros.image(frame_id="a"))
    wait_until(lambda: node.cameras[0].stream.stats.counters["errors"] == 1)
    status = _status(ros, node)
    DiagnosticStatus = sys.modules["diagnostic_msgs.msg"].DiagnosticStatus
    assert status["/a/segmentation: segmentation"][0].level == DiagnosticStatus.ERROR
    assert status["/segmentation: engine"][0].level == DiagnosticStatus.ERROR
    assert "CUDA out of memory" in status["/segmentation: engine"][0].message
    node.segmenter.fail_with = None
    ros.camera("/b/image_raw").publish(ros.image(frame_id="b"))
    wait_until(lambda: masks["b"])
    time.sleep(0.02)
    assert node._worker.is_alive() and masks["a"] == []


# ------------------------------------------------------------------------------ fused grid

def _static_tf(ros: Any, mounts: dict[str, tuple[float, ...]]) -> None:
    """One /tf_static message with a base_link -> cam_<name> transform per mount."""
    from bisenet_ros import bev

    transforms = []
    for name, mount in mounts.items():
        pose = bev.Pose.from_mount(*mount)
        t = rclpy_style_class("geometry_msgs/msg/TransformStamped")()
        t.header.frame_id, t.child_frame_id = "base_link", f"cam_{name}"
        t.transform.translation.x, t.transform.translation.y, t.transform.translation.z = (
            float(v) for v in pose.translation)
        q = t.transform.rotation
        q.x, q.y, q.z, q.w = bev.matrix_to_quaternion(pose.rotation)
        transforms.append(t)
    msg = rclpy_style_class("tf2_msgs/msg/TFMessage")()
    msg.transforms = transforms
    qos = ros.rclpy.qos
    ros.rclpy.node.Node(f"tf_{'_'.join(mounts)}").create_publisher(
        rclpy_style_class("tf2_msgs/msg/TFMessage"), "/tf_static",
        qos.QoSProfile(depth=1, durability=qos.DurabilityPolicy.TRANSIENT_LOCAL)).publish(msg)


def test_fused_grid_of_front_and_rear_with_a_camera_without_tf_and_one_outside(ros: Any) -> None:
    import math

    from bisenet_ros import bev, fusion
    from test_node_grid import camera_info, frame

    mounts = {"front": (0.5, 0.0, 1.5, 0.0, math.radians(12.0), 0.0),
              "rear": (-0.5, 0.0, 1.5, 0.0, math.radians(12.0), math.pi),
              "up": (0.0, 0.0, 1.5, 0.0, math.radians(-60.0), 0.0)}  # looks at the sky
    _static_tf(ros, mounts)  # "left" has CameraInfo but no transform
    cameras = ["front", "rear", "left", "up"]
    node = ros.make(cameras=cameras, per_camera_grids=True, grid_resolution=0.5,
                    grid_max_range=18.0, drivable_classes=["class0"])
    spec = node.grid_options.grid
    assert (spec.x_min, spec.x_max, spec.y_min, spec.y_max) == (-18.0, 18.0, -18.0, 18.0)
    fused = ros.listen("/segmentation/drivable_grid", "nav_msgs/msg/OccupancyGrid")
    rear_own = ros.listen("/rear/segmentation/drivable_grid", "nav_msgs/msg/OccupancyGrid")
    masks = {c: ros.listen(f"/{c}/segmentation/mask") for c in cameras}
    driver = ros.rclpy.node.Node("camera_driver")
    for name in cameras:
        info = camera_info()
        info.header.frame_id = f"cam_{name}"
        driver.create_publisher(rclpy_style_class("sensor_msgs/msg/CameraInfo"),
                                f"/{name}/camera_info", ros.rclpy.qos.QoSProfile(depth=1)).publish(info)
    stamps = {name: 1_700_000_000 * 10**9 + i * 1_000_000 for i, name in enumerate(cameras)}
    for name in cameras:
        ros.camera(f"/{name}/image_raw").publish(
            ros.image(frame(), stamp_ns=stamps[name], frame_id=f"cam_{name}"))
    wait_until(lambda: all(masks.values()) and fused and rear_own
               and node.cameras[2].grid_status is not None
               and node.cameras[3].grid_status is not None)
    grid = fused[-1]
    assert grid.header.frame_id == "base_link"
    assert (grid.info.width, grid.info.height) == (72, 72)
    values = np.frombuffer(grid.data, dtype=np.int8).reshape(72, 72)
    # The expected grid: the ROS-free fuser on the same inputs (its overlap rule is tested in
    # test_fusion.py); front and rear do not overlap, so each keeps its own cells.
    labels = node.segmenter.labels_for(frame())
    model = bev.CameraModel.from_camera_info(camera_info())
    reference = fusion.GridFuser(spec, [0])
    for name in ("front", "rear"):
        reference.update(name, labels, model, bev.Pose.from_mount(*mounts[name]))
    np.testing.assert_array_equal(values, reference.fuse().values)
    front_alone = bev.BevProjector(spec, [0])(labels, model, bev.Pose.from_mount(*mounts["front"]))
    rear_alone = bev.BevProjector(spec, [0])(labels, model, bev.Pose.from_mount(*mounts["rear"]))
    front_seen, rear_seen = front_alone != bev.UNKNOWN, rear_alone != bev.UNKNOWN
    assert front_seen.sum() > 100 and rear_seen.sum() > 100 and not (front_seen & rear_seen).any()
    np.testing.assert_array_equal(values[front_seen], front_alone[front_seen])
    np.testing.assert_array_equal(values[rear_seen], rear_alone[rear_seen])
    assert (values[~(front_seen | rear_seen)] == bev.UNKNOWN).all()  # left and up add nothing
    np.testing.assert_array_equal(np.frombuffer(rear_own[-1].data, np.int8).reshape(72, 72),
                                  rear_alone)
    assert rear_own[-1].header.stamp.nanosec == stamps["rear"] % 10**9  # its own frame's stamp
    # The camera without tf and the one that sees no ground add nothing, say why, and the
    # others go on.
    status = _status(ros, node)
    left = status["/left/segmentation: segmentation"][1]
    assert left["grid_state"] == "no_pose" and left["grid_no_transform"] == "1"
    assert "cam_left" in left["grid_problem"]
    up = status["/up/segmentation: segmentation"][1]
    assert up["grid_state"] == "invalid" and up["grid_invalid"] == "1"
    assert status["/front/segmentation: segmentation"][1]["grid_state"] == "fused"
    warnings = ros.graph.messages("warning")
    assert any(m.startswith("camera left: no grid: no transform from 'cam_left'") for m in warnings)
    assert any(m.startswith("camera up: no grid:") for m in warnings)


def test_a_view_outside_the_grid_extent_is_a_warning(ros: Any) -> None:
    import math

    from test_node_grid import camera_info, frame

    # The single-camera forward extent (x 0..40) given explicitly: a rear camera misses it.
    _static_tf(ros, {"rear": (-0.5, 0.0, 1.5, 0.0, math.radians(12.0), math.pi)})
    node = ros.make(cameras=["rear", "spare"], grid_x_min=0.5, grid_max_range=18.0,
                    grid_resolution=0.5)
    fused = ros.listen("/segmentation/drivable_grid", "nav_msgs/msg/OccupancyGrid")
    ros.rclpy.node.Node("driver").create_publisher(
        rclpy_style_class("sensor_msgs/msg/CameraInfo"), "/rear/camera_info",
        ros.rclpy.qos.QoSProfile(depth=1)).publish(camera_info())
    ros.camera("/rear/image_raw").publish(ros.image(frame(), frame_id="cam_rear"))
    wait_until(lambda: fused)
    assert (np.frombuffer(fused[0].data, np.int8) == -1).all()
    assert node.cameras[0].grid_status.state == "outside_extent"
    assert any(m.startswith("camera rear: no grid:") and "outside the grid extent" in m
               for m in ros.graph.messages("warning"))


def test_real_segmenter_batches_two_cameras_of_different_sizes(ros: Any) -> None:
    from bisenet_ros.inference import Segmenter

    node = ros.make(engine=Segmenter, cameras=["left", "right"], variant="bisenetv2",
                    resolution="64x32", max_batch_wait_ms=1000.0)
    frames = {"left": FRAMES["steady"], "right": np.ascontiguousarray(FRAMES["broken"][:, :, ::-1])}
    encodings = {"left": "bgr8", "right": "rgb8"}
    masks = {c: ros.listen(f"/{c}/segmentation/mask") for c in frames}
    cameras = {c: ros.camera(f"/{c}/image_raw") for c in frames}
    batch_sizes: list[int] = []
    segment_batch = node.segmenter.segment_batch
    node.segmenter.segment_batch = lambda f, *a, **k: (batch_sizes.append(len(f)),
                                                        segment_batch(f, *a, **k))[1]
    for round_ in range(2):  # the first round makes both cameras live for max_batch_wait_ms
        for c in frames:
            cameras[c].publish(ros.image(frames[c], encodings[c], frame_id=f"{c}{round_}"))
        wait_until(lambda: all(len(m) == round_ + 1 for m in masks.values()), timeout=60)
    assert batch_sizes[-1] == 2 and node.engine_stats.frames == 4  # round 2: one call for both
    for c, order in (("left", "bgr"), ("right", "rgb")):
        alone = node.segmenter(frames[c], color_order=order).labels
        np.testing.assert_array_equal(image_to_array(masks[c][-1]), alone)
        assert masks[c][-1].header.frame_id == f"{c}1"


def test_outputs_follow_the_node_namespace_as_one_node_per_camera_does(ros: Any) -> None:
    # A namespace pushed onto the launch (e.g. one per robot) moves the batched node's outputs
    # exactly where it moves those of one node per camera (mode:=separate: ``~/mask`` of the
    # node in <namespace>/<C>); the camera inputs stay the absolute names both modes read.
    batched = ros.make(cameras=["front", "rear"], namespace="/robot")
    separate = ros.make(namespace="/robot/front", image_topic="/front/image_raw")
    published = {p.topic_name for p in batched.publishers}
    assert {"/robot/front/segmentation/mask", "/robot/rear/segmentation/drivable_mask",
            "/robot/segmentation/drivable_grid"} <= published
    assert "/robot/front/segmentation/mask" in {p.topic_name for p in separate.publishers}
    assert {"/front/image_raw", "/rear/image_raw"} <= {s.topic_name for s in batched.subscriptions}
    masks = ros.listen("/robot/front/segmentation/mask")
    ros.camera("/front/image_raw").publish(ros.image(FRAMES["steady"], stamp_ns=5, frame_id="front"))
    wait_until(lambda: len(masks) >= 1)
    assert masks[0].header.frame_id == "front"
