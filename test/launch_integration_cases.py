"""The cases of the launch_testing integration test (test/test_launch_integration.py runs them
where ROS 2 is sourced): the real node, launched by segmentation.launch.py, gets camera frames;
checked are the mask (header copied), the latched LabelInfo and /diagnostics.

Importing this module needs ROS 2 (launch_testing, rclpy, the message packages); the test module
imports it only when it can.
"""
from __future__ import annotations

import os
import time
import unittest

import launch_testing
import launch_testing.actions
import launch_testing.asserts
import numpy as np
import pytest
import rclpy
from ament_index_python.packages import PackageNotFoundError, get_package_share_directory
from diagnostic_msgs.msg import DiagnosticArray
from launch import LaunchDescription
from launch.actions import IncludeLaunchDescription
from launch.launch_description_sources import PythonLaunchDescriptionSource
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
from sensor_msgs.msg import Image
from vision_msgs.msg import LabelInfo

CAMERA_TOPIC = "/test_camera/image"
NAMESPACE = "itest"


def installed_launch_file() -> str:
    """segmentation.launch.py as the sourced workspace installed it (PackageNotFoundError if not)."""
    return os.path.join(get_package_share_directory("bisenet_ros"), "launch",
                        "segmentation.launch.py")


@pytest.mark.launch_test
def generate_test_description():
    segmentation = IncludeLaunchDescription(
        PythonLaunchDescriptionSource(installed_launch_file()),
        launch_arguments={"variant": "bisenetv2", "resolution": "128x64",
                          "image_topic": CAMERA_TOPIC, "namespace": NAMESPACE}.items())
    return LaunchDescription([segmentation, launch_testing.actions.ReadyToTest()])


class TestSegmentationNode(unittest.TestCase):

    @classmethod
    def setUpClass(cls) -> None:
        rclpy.init()
        cls.node = rclpy.create_node("segmentation_probe")

    @classmethod
    def tearDownClass(cls) -> None:
        cls.node.destroy_node()
        rclpy.shutdown()

    def _frame(self, frame_id: str) -> Image:
        msg = Image()
        msg.header.stamp = self.node.get_clock().now().to_msg()
        msg.header.frame_id = frame_id
        msg.height, msg.width, msg.encoding, msg.step = 48, 80, "bgr8", 80 * 3
        msg.data = np.random.default_rng(0).integers(0, 256, 48 * 80 * 3, dtype=np.uint8).tobytes()
        return msg

    def _spin_until(self, received: list, timeout: float, publish=None) -> None:
        deadline = time.monotonic() + timeout
        while not received and time.monotonic() < deadline:
            if publish is not None:
                publish()
            rclpy.spin_once(self.node, timeout_sec=0.2)

    def test_mask_with_copied_header(self) -> None:
        masks: list = []
        self.node.create_subscription(Image, f"/{NAMESPACE}/segmentation/mask", masks.append, 10)
        camera = self.node.create_publisher(Image, CAMERA_TOPIC, qos_profile_sensor_data)
        # The first frames may arrive before the model is loaded: keep publishing.
        self._spin_until(masks, 120.0, lambda: camera.publish(self._frame("itest_camera")))
        self.assertTrue(masks, "no ~/mask received")
        mask = masks[0]
        self.assertEqual(mask.header.frame_id, "itest_camera")
        self.assertEqual((mask.encoding, mask.height, mask.width), ("mono8", 48, 80))
        self.assertLess(max(mask.data), 19)

    def test_label_info_is_latched(self) -> None:
        infos: list = []
        latched = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE,
                             durability=DurabilityPolicy.TRANSIENT_LOCAL)
        self.node.create_subscription(LabelInfo, f"/{NAMESPACE}/segmentation/label_info",
                                      infos.append, latched)
        self._spin_until(infos, 120.0)
        self.assertTrue(infos)
        self.assertEqual(infos[0].class_map[0].class_name, "road")
        self.assertEqual(len(infos[0].class_map), 19)

    def test_diagnostics(self) -> None:
        arrays: list = []
        self.node.create_subscription(
            DiagnosticArray, "/diagnostics",
            lambda m: arrays.append(m) if any("segmentation" in s.name for s in m.status) else None,
            10)
        self._spin_until(arrays, 60.0)
        self.assertTrue(arrays)
        keys = {kv.key for s in arrays[0].status for kv in s.values}
        self.assertTrue({"input_rate_hz", "dropped_stale", "malformed"} <= keys)


@launch_testing.post_shutdown_test()
class TestShutdown(unittest.TestCase):

    def test_exit_code(self, proc_info) -> None:
        # SIGINT at the end of the test is a clean shutdown (main returns 0).
        launch_testing.asserts.assertExitCodes(proc_info, allowable_exit_codes=[0, -2, -15])
