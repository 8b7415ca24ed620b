"""The suite where ROS 2 is sourced (issue 20): pytest loads every plugin registered through the
``pytest11`` entry point before it collects anything, and a sourced ROS 2 registers
launch_testing's. Humble's and Jazzy's implement ``pytest_pycollect_makemodule(path, parent)``
with the legacy ``path`` argument that pytest 9 removed; under pytest 9 the whole suite (and
``colcon test``) stops at start with a PluginValidationError. Hence ``pytest>=8.0,<9`` in
requirements.txt. Checked here without ROS: this run's pytest loads a plugin with that hook and
passes it the legacy path. test/test_launch_integration.py is the test that runs launch_testing
itself, where ROS 2 is sourced.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

# The hook as launch_testing.pytest.hooks declares it in Humble and Jazzy.
LEGACY_PATH_PLUGIN = '''
seen = []


def pytest_pycollect_makemodule(path, parent):
    seen.append(path.basename)  # a py.path.local, as launch_testing reads it
    return None  # pytest's own module collection, as launch_testing does for ordinary tests


def pytest_sessionfinish(session):
    print("legacy path hook saw:", " ".join(sorted(seen)))
'''


def test_pytest_accepts_launch_testings_hook_signature(tmp_path: Path) -> None:
    (tmp_path / "legacy_path_plugin.py").write_text(LEGACY_PATH_PLUGIN)
    (tmp_path / "test_sample.py").write_text("def test_sample():\n    assert 1 + 1 == 2\n")
    (tmp_path / "pytest.ini").write_text("[pytest]\n")  # not this project's settings
    # Prepended: where ROS 2 is sourced, its real launch_testing plugin is loaded as well.
    path = os.pathsep.join(p for p in (str(tmp_path), os.environ.get("PYTHONPATH")) if p)
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-s", "-p", "no:cacheprovider",
                           "-p", "legacy_path_plugin", "test_sample.py"],
                          cwd=tmp_path, env=dict(os.environ, PYTHONPATH=path),
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "legacy path hook saw: test_sample.py" in done.stdout
    assert "1 passed" in done.stdout
