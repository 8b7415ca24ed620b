"""The README's ROS 2 install path, built for real with the distribution's colcon (Debian's
``colcon`` and ``python3-colcon-ros`` packages, which CI installs in ``.ci/run``).

What a ROS user meets (issue 10): the distribution's colcon runs under ``/usr/bin/python3``, and
setuptools writes that interpreter into the installed entry points unless setup.cfg says
otherwise, so with the requirements in a virtual environment ``ros2 run`` failed with
``ModuleNotFoundError: No module named 'cv2'``. Checked here without ROS: the installed
executables start with ``#!/usr/bin/env python3`` whichever colcon built them (the system's, or
a ``--system-site-packages`` virtual environment's ``python -m colcon``), run with the
environment that is first on ``PATH`` and import ``bisenet_ros`` from the install space and the
requirements from that environment; under an interpreter without the requirements they say so
in one line. ``colcon test`` runs the package's pytest suite and ``colcon test-result`` reports it
(docs/DEVELOPING.md). The workspace holds the clone's files as a user has them, pyproject.toml
included: its build-system table (for pip, issue 20) must not change how colcon builds.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SYSTEM_PYTHON = Path("/usr/bin/python3")
SOURCES = ("setup.py", "setup.cfg", "pyproject.toml", "package.xml", "resource", "launch", "config",
           "bisenet_ros", "training", "test", "pytest.ini")
SCRIPTS = ("segmentation_node", "bisenet-ros")

pytestmark = pytest.mark.skipif(
    not Path("/usr/bin/colcon").is_file(),
    reason="the distribution's colcon is missing: apt-get install colcon python3-colcon-ros "
           "(.ci/run does this)")


def _run(args: list, cwd: Path, env: dict | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([str(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A ROS 2 workspace holding a copy of this package (src/bisenet_ros)."""
    ws = tmp_path_factory.mktemp("ros2_ws")
    src = ws / "src" / "bisenet_ros"
    src.mkdir(parents=True)
    for name in SOURCES:
        path = ROOT / name
        if path.is_dir():
            shutil.copytree(path, src / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(path, src / name)
    return ws


def _build(ws: Path, colcon: list, tag: str) -> Path:
    # PYTHONPATH of the test run must not leak into colcon's interpreter.
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    done = _run(colcon + ["build", "--build-base", f"build_{tag}", "--install-base",
                          f"install_{tag}", "--base-paths", "src"], ws, env)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return ws / f"install_{tag}" / "bisenet_ros"


def _site_packages(install: Path) -> Path:
    (site,) = install.glob("lib/python3*/site-packages")
    return site


def _check_scripts(install: Path) -> None:
    for name in SCRIPTS:
        script = install / "lib" / "bisenet_ros" / name
        assert script.read_text().splitlines()[0] == "#!/usr/bin/env python3", name
        assert os.access(script, os.X_OK), name
    assert (install / "share" / "bisenet_ros" / "config" / "cyclonedds.xml").is_file()


def _environment(path_dirs: list, install: Path) -> dict:
    # What `source <venv>/bin/activate` and `source install/setup.bash` leave behind, reduced to
    # what matters here: PATH decides `env python3`, PYTHONPATH holds the install space.
    return {"PATH": os.pathsep.join(str(p) for p in path_dirs + ["/usr/bin", "/bin"]),
            "PYTHONPATH": str(_site_packages(install)), "HOME": os.environ.get("HOME", "/tmp")}


def _system_install(ws: Path) -> Path:
    """The install space of the distribution's colcon (built by the first test that needs it)."""
    install = ws / "install_system" / "bisenet_ros"
    return install if install.is_dir() else _build(ws, ["/usr/bin/colcon"], "system")


def _venv(path: Path, *options: str) -> Path:
    """A virtual environment of the system python3, without pip (made once per workspace)."""
    if not (path / "bin" / "python3").is_file():
        done = _run([SYSTEM_PYTHON, "-m", "venv", "--without-pip", *options, path], path.parent)
        assert done.returncode == 0, done.stderr
    return path


def test_system_colcon_installs_scripts_that_use_the_active_environment(workspace: Path) -> None:
    install = _system_install(workspace)
    _check_scripts(install)

    # The environment with the requirements (this test run's own) is first on PATH.
    env = _environment([Path(sys.executable).parent], install)
    script = install / "lib" / "bisenet_ros" / "bisenet-ros"
    done = _run([script, "--help"], workspace, env)
    assert done.returncode == 0, done.stderr
    assert "segment" in done.stdout and "replay" in done.stdout
    probe = ("import sys, bisenet_ros, cv2, numpy, bisenet_ros.outputs; "
             "print(sys.prefix); print(bisenet_ros.__file__); print(cv2.__file__)")
    done = _run(["/usr/bin/env", "python3", "-c", probe], workspace, env)
    assert done.returncode == 0, done.stderr
    prefix, package, cv2_file = done.stdout.split()
    assert Path(prefix).resolve() == Path(sys.prefix).resolve()
    assert Path(package).resolve().is_relative_to(_site_packages(install).resolve())
    assert Path(cv2_file).resolve().is_relative_to(Path(sys.prefix).resolve())


def test_node_without_ros_is_one_clear_line(workspace: Path) -> None:
    # The environment with the requirements first on PATH, ROS 2 not sourced (PYTHONPATH holds
    # the install space only, so /opt/ros is out of sight): the node says so in one line, naming
    # the interpreter.
    install = _system_install(workspace)
    env = _environment([Path(sys.executable).parent], install)
    has_rclpy = _run(["/usr/bin/env", "python3", "-c", "import importlib.util, sys; "
                      "sys.exit(importlib.util.find_spec('rclpy') is None)"], workspace, env)
    if has_rclpy.returncode == 0:
        pytest.skip("this environment has an rclpy of its own (not from a sourced ROS 2): the "
                    "node would start instead of naming what is missing")
    done = _run([install / "lib" / "bisenet_ros" / "segmentation_node"], workspace, env)
    assert done.returncode == 1
    (line,) = done.stderr.strip().splitlines()
    assert "cannot import rclpy" in line and "/opt/ros" in line and "Traceback" not in line


def test_wrong_interpreter_is_one_clear_line(workspace: Path) -> None:
    # A python3 without the requirements first on PATH (no environment with them activated). A
    # bare environment of the system python3 (no pip, no system site packages), because the
    # system python3 itself may well have numpy: rosdep installs it on every ROS 2 machine.
    install = _system_install(workspace)
    bare = _venv(workspace / "bare")
    env = _environment([bare / "bin"], install)
    for name in SCRIPTS:
        done = _run([install / "lib" / "bisenet_ros" / name], workspace, env)
        assert done.returncode == 1, name
        (line,) = done.stderr.strip().splitlines()
        assert line.startswith(f"{name}: {bare / 'bin' / 'python3'}") and "numpy" in line, line
        assert "activate" in line and "python -m colcon build" in line, line


def test_documented_venv_colcon_build(workspace: Path) -> None:
    # README: python3 -m venv --system-site-packages, COLCON_IGNORE in it, python -m colcon build.
    venv = _venv(workspace / "venv", "--system-site-packages")
    (venv / "COLCON_IGNORE").touch()
    install = _build(workspace, [venv / "bin" / "python", "-m", "colcon"], "venv")
    _check_scripts(install)
    done = _run(["/usr/bin/env", "python3", "-c", "import sys, colcon_core; print(sys.prefix)"],
                workspace, _environment([venv / "bin"], install))
    assert done.returncode == 0 and Path(done.stdout.strip()) == venv


def test_colcon_test_runs_the_pytest_suite(workspace: Path) -> None:
    # docs/DEVELOPING.md: `python -m colcon test --packages-select bisenet_ros`, then
    # `colcon test-result --verbose`. colcon picks pytest from setup.py's "test" extra (without it
    # colcon falls back to `setup.py test`, which setuptools no longer has) and runs it in the
    # package folder with pytest.ini. One ROS-free module that needs no requirements stands in for
    # the suite: this environment is the system python3's, with its pytest.
    venv = _venv(workspace / "venv", "--system-site-packages")
    (venv / "COLCON_IGNORE").touch()
    colcon = [venv / "bin" / "python", "-m", "colcon"]
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    results = workspace / "test_results_venv"
    if not (workspace / "install_venv").is_dir():
        _build(workspace, colcon, "venv")
    done = _run(colcon + ["test", "--build-base", "build_venv", "--install-base", "install_venv",
                          "--test-result-base", results, "--base-paths", "src",
                          "--packages-select", "bisenet_ros",
                          "--pytest-args", "test/test_architecture.py"], workspace, env)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert (results / "bisenet_ros" / "pytest.xml").is_file()
    done = _run(colcon + ["test-result", "--test-result-base", results, "--verbose"], workspace, env)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    summary = re.search(r"Summary: (\d+) tests, (\d+) errors, (\d+) failures", done.stdout)
    assert summary, done.stdout
    assert int(summary[1]) > 100 and summary[2] == summary[3] == "0", summary[0]
