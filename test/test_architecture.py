"""Dependency rules of the package layout (see README, "Architecture").

- Only the ROS adapter (``bisenet_ros/node.py``) may import rclpy or a ROS message package.
- ``bisenet_ros`` never imports the offline ``training`` package.
- ``bisenet_ros.models`` imports no inference/ROS/replay code (dependencies point one way).
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ROS_MODULES = {
    "rclpy", "sensor_msgs", "std_msgs", "vision_msgs", "diagnostic_msgs", "builtin_interfaces",
    "cv_bridge", "rosidl_runtime_py", "launch", "launch_ros", "launch_testing", "rcl_interfaces",
    "tf2_ros", "tf2_py", "tf2_msgs", "nav_msgs", "geometry_msgs",
}
ROS_ADAPTERS = {ROOT / "bisenet_ros" / "node.py"}


def _imported_top_levels(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def _imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def _python_files(*parts: str) -> list[Path]:
    return sorted((ROOT.joinpath(*parts)).rglob("*.py"))


@pytest.mark.parametrize("path", _python_files("bisenet_ros") + _python_files("training"),
                         ids=lambda p: str(p.relative_to(ROOT)))
def test_no_ros_imports_outside_the_adapter(path: Path) -> None:
    if path in ROS_ADAPTERS:
        return
    offending = _imported_top_levels(path) & ROS_MODULES
    assert not offending, f"{path.relative_to(ROOT)} imports {sorted(offending)}; only node.py may"


@pytest.mark.parametrize("path", _python_files("bisenet_ros"), ids=lambda p: str(p.relative_to(ROOT)))
def test_package_never_imports_training(path: Path) -> None:
    assert "training" not in _imported_top_levels(path), (
        f"{path.relative_to(ROOT)} imports the offline training package")


@pytest.mark.parametrize("path", _python_files("bisenet_ros", "models"), ids=lambda p: str(p.relative_to(ROOT)))
def test_models_depend_on_nothing_above_them(path: Path) -> None:
    bad = {m for m in _imported_modules(path)
           if m.startswith("bisenet_ros.") and not m.startswith(("bisenet_ros.models",))}
    assert not bad, f"{path.relative_to(ROOT)} imports {sorted(bad)}"


def test_the_rule_detects_a_ros_import(tmp_path: Path) -> None:
    # The checks above must be able to fail: a file importing rclpy is caught.
    sample = tmp_path / "bad.py"
    sample.write_text("import numpy\nfrom rclpy.node import Node\n")
    assert _imported_top_levels(sample) & ROS_MODULES == {"rclpy"}
