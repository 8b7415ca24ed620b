"""bisenet_ros: real-time BiSeNet V1/V2 and STDC semantic segmentation for ROS 2.

Sub-packages: ``models`` (torch architectures, registry, checkpoint loading), ``inference``
(NumPy-in/NumPy-out engine and backends), the message ``codec`` (pure NumPy), ``replay``
(rosbag replay and evaluation, no ROS needed) and the ROS 2 ``node`` (the only rclpy user).
Importing this package has no side effects and imports neither torch nor ROS.
"""

__version__ = "0.1.0"
