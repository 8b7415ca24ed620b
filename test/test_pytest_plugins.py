"""The suite where ROS 2 is sourced (issue 20): pytest loads every plugin registered through the
``pytest11`` entry point before it collects anything, and a sourced ROS 2 registers
launch_testing's. Checked here without ROS, with a double of that plugin's collection hook as
Humble and Jazzy have it (checked against the real one by hand, docs/DEVELOPING.md):

- it declares ``pytest_pycollect_makemodule(path, parent)`` with the legacy ``path`` argument
  that pytest 9 removed: under pytest 9 the suite (and ``colcon test``) stops at start with a
  PluginValidationError, hence ``pytest>=8.0,<9`` in requirements.txt;
- it imports every module of a folder while collecting any of them, so a test module that skips
  or fails while it is imported stops the collection of the whole folder
  (test/test_launch_integration.py therefore never does).
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# launch_testing.pytest.hooks.pytest_pycollect_makemodule, reduced to what matters here: the
# legacy path argument and the import of each module (as pytest's default "prepend" mode does)
# to look for a launch test entry point; then the next implementation collects the module (None).
LAUNCH_TESTING_DOUBLE = '''
import importlib
import sys

import pytest

seen = []


# First: where ROS 2 is sourced, the real plugin answers this hook too, and the first answer wins.
@pytest.hookimpl(tryfirst=True)
def pytest_pycollect_makemodule(path, parent):
    seen.append(path.basename)  # a py.path.local, as launch_testing reads it
    if str(path.dirpath()) not in sys.path:
        sys.path.insert(0, str(path.dirpath()))
    module = importlib.import_module(path.purebasename)
    getattr(module, "generate_test_description", None)
    return None


def pytest_sessionfinish(session):
    print("legacy path hook saw:", " ".join(sorted(seen)))
'''


def _pytest_with_double(tmp_path: Path, args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    (tmp_path / "launch_testing_double.py").write_text(LAUNCH_TESTING_DOUBLE)
    # Prepended: where ROS 2 is sourced, its real launch_testing plugin is loaded as well.
    path = os.pathsep.join(p for p in (str(tmp_path), os.environ.get("PYTHONPATH")) if p)
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-s", "-p", "no:cacheprovider",
                           "-p", "launch_testing_double", *args],
                          cwd=cwd, env=dict(os.environ, PYTHONPATH=path),
                          capture_output=True, text=True, timeout=300)


def test_pytest_accepts_launch_testings_hook_signature(tmp_path: Path) -> None:
    (tmp_path / "test_sample.py").write_text("def test_sample():\n    assert 1 + 1 == 2\n")
    (tmp_path / "pytest.ini").write_text("[pytest]\n")  # not this project's settings
    done = _pytest_with_double(tmp_path, ["test_sample.py"], tmp_path)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "legacy path hook saw: test_sample.py" in done.stdout
    assert "1 passed" in done.stdout


def test_suite_collects_when_every_module_is_imported_first(tmp_path: Path) -> None:
    # The launch integration test beside a ROS-free module: both are collected (here, without
    # ROS 2, the launch test as the one test that says why it is skipped).
    done = _pytest_with_double(tmp_path, ["--collect-only", "test/test_labels.py",
                                          "test/test_launch_integration.py"], ROOT)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "test_launch_integration.py" in done.stdout.split("legacy path hook saw:")[1]
    assert "test/test_labels.py::" in done.stdout
    assert "test/test_launch_integration.py::" in done.stdout
