"""launch_testing integration test: the real node, launched by segmentation.launch.py, in ROS 2.

Runs where ROS 2 Humble/Jazzy is sourced and bisenet_ros is built in that workspace (``python -m
colcon test --packages-select bisenet_ros``, docs/DEVELOPING.md): the cases in
launch_integration_cases.py, run by launch_testing's pytest plugin. Elsewhere one test is skipped
with the reason (what is missing).

This module imports nothing that may be missing and raises nothing while it is imported: where
ROS 2 is sourced, launch_testing's plugin (Humble, Jazzy) imports every module of the folder while
collecting any of them, and a skip or an ImportError raised then would stop the collection of the
whole suite, not only of this module.
"""
from __future__ import annotations

import pytest

_WHERE = ("this test runs where ROS 2 Humble/Jazzy is sourced and bisenet_ros is built in the "
          "workspace (python -m colcon test --packages-select bisenet_ros)")


def _skip_reason() -> str | None:
    """Why the launch test cannot run here, or None when it can."""
    try:
        import launch_integration_cases as cases
    except ImportError as error:
        return f"ROS 2 is not sourced or lacks a package ({error}); {_WHERE}"
    try:
        cases.installed_launch_file()
    except cases.PackageNotFoundError:
        return ("bisenet_ros is not installed in the sourced workspace (python -m colcon build, "
                f"then source install/setup.bash); {_WHERE}")
    return None


SKIP_REASON = _skip_reason()
if SKIP_REASON is None:
    # launch_testing collects this module as a launch test through generate_test_description.
    from launch_integration_cases import (TestSegmentationNode, TestShutdown,  # noqa: F401
                                          generate_test_description)
else:
    def test_launch_integration() -> None:
        """Stands in for the launch test where it cannot run, and says why."""
        pytest.skip(SKIP_REASON)
