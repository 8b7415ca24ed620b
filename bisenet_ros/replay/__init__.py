"""Rosbag replay and evaluation without a ROS installation.

``bisenet-ros replay INPUT_BAG --output OUTPUT_BAG`` (module :mod:`bisenet_ros.commands.replay`) runs
every camera frame of a ROS 2 bag (sqlite3 or MCAP) through the same engine and message codec
as the ROS node and writes the node's topics to a new bag, optionally with an evaluation report.

Modules: :mod:`~bisenet_ros.replay.bag` (reading, including damaged bags),
:mod:`~bisenet_ros.replay.writer` (the output bag), :mod:`~bisenet_ros.replay.pipeline`
(threaded decode / inference / write), :mod:`~bisenet_ros.replay.metrics`,
:mod:`~bisenet_ros.replay.groundtruth`, :mod:`~bisenet_ros.replay.report` and
:mod:`~bisenet_ros.replay.bagtools` (writing bags from arrays for tests and demos).
Importing this package imports nothing heavy.
"""
