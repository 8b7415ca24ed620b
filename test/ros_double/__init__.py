"""Test doubles for the ROS side of bisenet_ros (ROS 2 cannot be installed here).

- :mod:`ros_double.messages`: real ROS 2 message definitions from the rosbags typestore.
- :mod:`ros_double.rclpy_double`: a test double of exactly the rclpy surface ``node.py`` uses.
- :mod:`ros_double.fake_engine`: a tiny deterministic stand-in for ``Segmenter``.
"""
