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


# ----------------------------------------------------------------------------- import cycles

def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _import_graph(*packages: str) -> dict[str, set[str]]:
    """module -> modules of ``packages`` it imports, lazy (function-level) imports included.

    ``from a.b import c`` is an edge to ``a.b.c`` when that is a module, else to ``a.b``; relative
    imports are resolved. A package's ``__init__`` is a node of its own: importing a submodule
    does not count as importing the package (that is how import-linter counts too).
    """
    files = {_module_name(p): p for pkg in packages for p in _python_files(pkg)}
    graph: dict[str, set[str]] = {}
    for name, path in files.items():
        is_package = path.name == "__init__.py"
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        edges: set[str] = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                edges.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = name.split(".")
                    base = base[:len(base) - node.level + (1 if is_package else 0)]
                    module = ".".join(base + ([node.module] if node.module else []))
                else:
                    module = node.module or ""
                for alias in node.names:
                    submodule = f"{module}.{alias.name}"
                    edges.add(submodule if submodule in files else module)
        graph[name] = {e for e in edges if e in files and e != name}
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for succ in sorted(graph.get(node, ())):
            if succ not in index:
                visit(succ)
                low[node] = min(low[node], low[succ])
            elif succ in on_stack:
                low[node] = min(low[node], index[succ])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


@pytest.mark.parametrize("package", ["bisenet_ros", "training"])
def test_no_import_cycles(package: str) -> None:
    graph = _import_graph(package)
    assert len(graph) > 10  # the walk found the package's modules
    assert _cycles(graph) == [], "modules importing each other (directly or through others)"


def test_the_cycle_rule_detects_a_lazy_cycle() -> None:
    # The shape of the export <-> segmenter cycle: one side imports the other inside a function.
    graph = {"pkg.a": {"pkg.b"}, "pkg.b": {"pkg.c"}, "pkg.c": {"pkg.a"}, "pkg.d": {"pkg.a"}}
    assert _cycles(graph) == [["pkg.a", "pkg.b", "pkg.c"]]
