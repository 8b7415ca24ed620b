"""The node's ``~/drivable_grid`` (nav_msgs/OccupancyGrid) on the rclpy and tf2_ros test doubles.

Image + CameraInfo + a transform on ``/tf_static`` in, an OccupancyGrid out; missing inputs are
counted and logged while the node keeps segmenting.
"""
from __future__ import annotations

import math
import time
from typing import Any

import numpy as np
import pytest

from bisenet_ros import bev
from ros_double.messages import rclpy_style_class
from test_node import _diagnostics, ros, wait_until  # noqa: F401  (ros is a fixture)

WIDTH, HEIGHT = 64, 48
MOUNT = (0.5, 0.0, 1.5, 0.02, math.radians(12.0), 0.0)  # camera body in base_link
GRID = {"grid_resolution": 0.5, "grid_x_min": -5.0, "grid_x_max": 20.0, "grid_y_min": -10.0,
        "grid_y_max": 10.0, "grid_max_range": 18.0, "drivable_classes": ["class0"]}


def frame() -> np.ndarray:
    """Lower half drivable (FakeSegmenter: pixel sum % 19 == 0 -> class0), upper half class 1."""
    image = np.zeros((HEIGHT, WIDTH, 3), np.uint8)
    image[: HEIGHT // 2] = (1, 0, 0)
    image[HEIGHT // 2:, : WIDTH // 4] = (2, 0, 0)  # a non-drivable strip on the left
    return image


def camera_info(k: list[float] | None = None) -> Any:
    info = rclpy_style_class("sensor_msgs/msg/CameraInfo")()
    info.header.frame_id = "cam_front"
    info.width, info.height = WIDTH, HEIGHT
    info.distortion_model = "plumb_bob"
    info.d = [0.0] * 5
    info.k = k if k is not None else [40.0, 0, 32.0, 0, 40.0, 24.0, 0, 0, 1]
    return info


def tf_message(stamp_ns: int = 0, parent: str = "base_link", child: str = "cam_front") -> Any:
    pose = bev.Pose.from_mount(*MOUNT)
    transform = rclpy_style_class("geometry_msgs/msg/TransformStamped")()
    transform.header.frame_id, transform.child_frame_id = parent, child
    transform.header.stamp.sec, transform.header.stamp.nanosec = divmod(stamp_ns, 1_000_000_000)
    t = transform.transform.translation
    t.x, t.y, t.z = (float(v) for v in pose.translation)
    q = transform.transform.rotation
    q.x, q.y, q.z, q.w = bev.matrix_to_quaternion(pose.rotation)
    msg = rclpy_style_class("tf2_msgs/msg/TFMessage")()
    msg.transforms = [transform]
    return msg


def publish_static_tf(ros: Any) -> None:
    qos = ros.rclpy.qos
    helper = ros.rclpy.node.Node("static_tf")
    publisher = helper.create_publisher(
        rclpy_style_class("tf2_msgs/msg/TFMessage"), "/tf_static",
        qos.QoSProfile(depth=1, durability=qos.DurabilityPolicy.TRANSIENT_LOCAL))
    publisher.publish(tf_message())


def publish_camera_info(ros: Any, info: Any) -> None:
    qos = ros.rclpy.qos
    helper = ros.rclpy.node.Node("camera_driver")
    helper.create_publisher(rclpy_style_class("sensor_msgs/msg/CameraInfo"), "/camera_info",
                            qos.QoSProfile(depth=1)).publish(info)


def expected_grid(spec: bev.GridSpec) -> np.ndarray:
    labels = (frame().astype(np.int64).sum(axis=2) % 19).astype(np.uint8)
    camera = bev.CameraModel.from_camera_info(camera_info())
    return bev.BevProjector(spec, [0])(labels, camera, bev.Pose.from_mount(*MOUNT))


def test_grid_from_image_camera_info_and_static_tf(ros: Any) -> None:
    publish_static_tf(ros)  # before the node: transient local reaches the late listener
    node = ros.make(**GRID)
    grids = ros.listen("/segmentation/drivable_grid", "nav_msgs/msg/OccupancyGrid")
    mask = ros.listen("/segmentation/mask")
    publish_camera_info(ros, camera_info())
    stamp = time.time_ns()
    ros.camera().publish(ros.image(frame(), stamp_ns=stamp, frame_id="cam_front"))
    wait_until(lambda: len(grids) == 1 and len(mask) == 1)
    grid = grids[0]
    assert (grid.header.stamp.sec, grid.header.stamp.nanosec) == divmod(stamp, 1_000_000_000)
    assert grid.header.frame_id == "base_link"
    assert (grid.info.width, grid.info.height, grid.info.resolution) == (50, 40, 0.5)
    assert (grid.info.origin.position.x, grid.info.origin.position.y) == (-5.0, -10.0)
    assert grid.info.origin.orientation.w == 1.0
    values = np.frombuffer(grid.data, dtype=np.int8).reshape(40, 50)
    spec = node.grid_options.grid
    np.testing.assert_array_equal(values, expected_grid(spec))
    # Unknown where the camera cannot see: behind it (x < 0.5 m) and beyond max_range.
    assert np.all(values[:, : int((0.5 - spec.x_min) / 0.5)] == bev.UNKNOWN)
    assert np.count_nonzero(values == bev.FREE) > 50
    assert np.count_nonzero(values == bev.OCCUPIED) > 10  # the non-drivable strip
    # The image's lower half (ground nearer than ~7.5 m) is drivable but for the strip on the
    # image's left, which lies at positive y (left) in base_link: rows from y = -10 m, row 20 is
    # y = 0; columns from x = -5 m, column 22 is x = 6 m.
    occupied_rows = np.nonzero((values[:, :22] == bev.OCCUPIED).any(axis=1))[0]
    assert occupied_rows.size and occupied_rows.min() >= 20
    _, diag = _diagnostics(ros, node)
    assert diag["grid_published"] == "1" and diag["grid_no_transform"] == "0"
    assert "latency_grid_ms" in diag


def test_no_transform_yet_is_counted_and_the_node_lives_on(ros: Any) -> None:
    node = ros.make(**GRID)
    grids = ros.listen("/segmentation/drivable_grid", "nav_msgs/msg/OccupancyGrid")
    mask = ros.listen("/segmentation/mask")
    camera = ros.camera()
    publish_camera_info(ros, camera_info())
    camera.publish(ros.image(frame(), frame_id="cam_front"))
    wait_until(lambda: len(mask) == 1)
    time.sleep(0.05)
    assert grids == []
    assert node.stats.counters["grid_no_transform"] == 1
    assert any("no transform from 'cam_front' to 'base_link'" in m and "LookupException" in m
               for m in ros.graph.messages("warning"))
    publish_static_tf(ros)  # the transform arrives: grids follow
    camera.publish(ros.image(frame(), frame_id="cam_front"))
    wait_until(lambda: len(grids) == 1)
    assert node._worker.is_alive()


def test_stale_dynamic_transform_is_reported(ros: Any) -> None:
    node = ros.make(**GRID)
    ros.listen("/segmentation/drivable_grid", "nav_msgs/msg/OccupancyGrid")
    mask = ros.listen("/segmentation/mask")
    qos = ros.rclpy.qos
    helper = ros.rclpy.node.Node("tf_pub")
    old = time.time_ns() - 10 * 1_000_000_000
    helper.create_publisher(rclpy_style_class("tf2_msgs/msg/TFMessage"), "/tf",
                            qos.QoSProfile(depth=10)).publish(tf_message(old))
    publish_camera_info(ros, camera_info())
    ros.camera().publish(ros.image(frame(), frame_id="cam_front"))
    wait_until(lambda: len(mask) == 1)
    time.sleep(0.05)
    assert node.stats.counters["grid_no_transform"] == 1
    assert any("extrapolation into the future" in m for m in ros.graph.messages("warning"))


@pytest.mark.parametrize("case", ["missing", "uncalibrated"])
def test_missing_or_uncalibrated_camera_info(ros: Any, case: str) -> None:
    publish_static_tf(ros)
    node = ros.make(**GRID)
    grids = ros.listen("/segmentation/drivable_grid", "nav_msgs/msg/OccupancyGrid")
    mask = ros.listen("/segmentation/mask")
    if case == "uncalibrated":
        publish_camera_info(ros, camera_info(k=[0.0] * 9))
    ros.camera().publish(ros.image(frame(), frame_id="cam_front"))
    wait_until(lambda: len(mask) == 1)
    time.sleep(0.05)
    assert grids == []
    counter, text = (("grid_no_camera_info", "no CameraInfo received on /camera_info")
                     if case == "missing" else ("grid_invalid", "uncalibrated CameraInfo"))
    assert node.stats.counters[counter] == 1
    assert any(text in m for m in ros.graph.messages("warning"))


def test_static_pose_fallback_and_no_work_without_subscribers(ros: Any) -> None:
    node = ros.make(**GRID, use_static_camera_pose=True, static_camera_pose=list(MOUNT))
    mask = ros.listen("/segmentation/mask")
    publish_camera_info(ros, camera_info())
    camera = ros.camera()
    camera.publish(ros.image(frame(), frame_id="cam_front"))
    wait_until(lambda: len(mask) == 1)
    assert node.stats.counters["grid_published"] == 0  # nobody listens: nothing computed
    grids = ros.listen("/segmentation/drivable_grid", "nav_msgs/msg/OccupancyGrid")
    camera.publish(ros.image(frame(), frame_id="cam_front"))
    wait_until(lambda: len(grids) == 1)
    values = np.frombuffer(grids[0].data, dtype=np.int8).reshape(40, 50)
    np.testing.assert_array_equal(values, expected_grid(node.grid_options.grid))
    assert any("using static_camera_pose" in m for m in ros.graph.messages("warning"))


def test_camera_info_topic_beside_the_image_topic_and_grid_parameters(ros: Any) -> None:
    node = ros.make(image_topic="/front/image_raw")
    topics = {s.topic_name for s in node.subscriptions}
    assert {"/front/image_raw", "/front/camera_info", "/tf", "/tf_static"} <= topics
    assert node.descriptors["grid_resolution"].floating_point_range[0].from_value == 0.01
    with pytest.raises(ros.module.ParameterError):
        ros.make(grid_resolution=0.01, grid_x_max=400.0, grid_y_min=-200.0, grid_y_max=200.0)
    assert any("cap of" in m for m in ros.graph.messages("fatal"))


def _restart_with(ros: Any, args: list[str]) -> None:
    """Start the process's ROS context again, with the command line ``args``."""
    ros.rclpy.try_shutdown()
    ros.rclpy.init(args=args)


@pytest.mark.parametrize("args, params, image, info", [
    # remapping the input: CameraInfo beside the resolved image topic (image_transport's rule)
    (["-r", "image:=/cam/image_raw"], {}, "/cam/image_raw", "/cam/camera_info"),
    (["-r", "segmentation:image:=/cam/image_raw"], {}, "/cam/image_raw", "/cam/camera_info"),
    (["-r", "other_node:image:=/cam/image_raw"], {}, "/image", "/camera_info"),  # not ours
    (["-r", "__ns:=/front"], {}, "/front/image", "/front/camera_info"),
    (["-r", "__ns:=/front", "-r", "image:=left/image_raw"], {}, "/front/left/image_raw",
     "/front/left/camera_info"),
    (["-r", "__ns:=/front", "-r", "/front/image:=~/raw"], {}, "/front/segmentation/raw",
     "/front/segmentation/camera_info"),
    (["-r", "image:=/cam/image_raw", "-r", "image/compressed:=/cam/image_raw/compressed"],
     {"use_compressed": True}, "/cam/image_raw/compressed", "/cam/camera_info"),
    ([], {"image_topic": "/cam/image_rect"}, "/cam/image_rect", "/cam/camera_info"),
    # an explicit remap of camera_info, then the parameter, win over the derived name
    (["-r", "image:=/cam/image_raw", "-r", "camera_info:=/calib/info"], {}, "/cam/image_raw",
     "/calib/info"),
    (["-r", "image:=/cam/image_raw", "-r", "camera_info:=/calib/info"],
     {"camera_info_topic": "/param/info"}, "/cam/image_raw", "/param/info"),
])
def test_camera_info_topic_follows_the_resolved_image_topic(
        ros: Any, args: list[str], params: dict, image: str, info: str) -> None:
    _restart_with(ros, ["segmentation_node", "--ros-args", *args])
    node = ros.make(**params)
    assert node._subscription.topic_name == image
    assert node._camera_info_subscription.topic_name == info
    start = [m for m in ros.graph.messages("info") if m.startswith("segmenting ")]
    assert f"segmenting {image} " in start[0] and f"CameraInfo {info} " in start[0]
    assert node.resolve_topic_name("~/mask") in start[0]


def test_grid_for_a_remapped_camera(ros: Any) -> None:
    # The case of issue 17: only the image is remapped; the grid still appears.
    _restart_with(ros, ["segmentation_node", "--ros-args", "-r", "image:=/cam/image_raw"])
    publish_static_tf(ros)
    node = ros.make(**GRID)
    grids = ros.listen("/segmentation/drivable_grid", "nav_msgs/msg/OccupancyGrid")
    qos = ros.rclpy.qos
    driver = ros.rclpy.node.Node("camera_driver")
    driver.create_publisher(rclpy_style_class("sensor_msgs/msg/CameraInfo"), "/cam/camera_info",
                            qos.QoSProfile(depth=1)).publish(camera_info())
    ros.camera("/cam/image_raw").publish(ros.image(frame(), frame_id="cam_front"))
    wait_until(lambda: len(grids) == 1)
    np.testing.assert_array_equal(np.frombuffer(grids[0].data, dtype=np.int8).reshape(40, 50),
                                  expected_grid(node.grid_options.grid))
