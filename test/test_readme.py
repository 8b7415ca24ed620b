"""Every command shown in README.md is exercised: the project's own commands are parsed by their
real argument parsers (so a renamed or removed option fails here), launch commands are evaluated
against the launch files' declared arguments, the two quick-start scripts exist and CI runs the
test one; the demo itself runs in test_demo.py. Commands of other tools (git, colcon, rosdep,
pip, ros2 bag/topic) are listed explicitly: an unknown command fails the test."""
from __future__ import annotations

import argparse
import importlib
import re
import shlex
from pathlib import Path

import pytest

from ros_double import launch_double

ROOT = Path(__file__).resolve().parents[1]
EXTERNAL = {"cd", "git", "rosdep", "colcon", "source", "touch"}
EXTERNAL_ROS2 = {"bag", "topic", "run", "node", "pkg"}


def readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        block = block.replace("\\\n", " ")
        for line in block.splitlines():
            line = re.sub(r"\s+#.*$", "", line).strip()
            for part in re.split(r"\s*(?:&&|;)\s*", line):
                if part:
                    commands.append(part)
    return commands


def _parse(module_name: str, prog: str, args: list[str]) -> argparse.Namespace:
    module = importlib.import_module(module_name)
    parser = argparse.ArgumentParser(prog=prog, exit_on_error=False)
    module.add_arguments(parser)
    try:
        return parser.parse_args(args)
    except SystemExit as exit_:  # argparse exits on errors argparse cannot raise
        raise AssertionError(f"`{prog} {' '.join(args)}` does not parse") from exit_


def check_command(command: str, monkeypatch: pytest.MonkeyPatch) -> None:
    words = shlex.split(command)
    if words[0] == "bash":
        script = ROOT / words[1]
        assert script.is_file(), f"{words[1]} does not exist"
        if words[1] == "scripts/test.sh":
            assert "scripts/test.sh" in (ROOT / ".ci" / "run").read_text(), "CI must run the README's test command"
        return
    if words[0] == "bisenet-ros":
        from bisenet_ros.cli import COMMANDS

        assert words[1] in COMMANDS, f"unknown bisenet-ros command {words[1]}"
        _parse(COMMANDS[words[1]][0], f"bisenet-ros {words[1]}", words[2:])
        return
    if words[0] == "torchrun":
        words = ["python"] + words[words.index("-m"):]
    if words[:3] == ["python", "-m", "training"]:
        from training.__main__ import COMMANDS

        assert words[3] in COMMANDS, f"unknown training command {words[3]}"
        _parse(COMMANDS[words[3]][0], f"python -m training {words[3]}", words[4:])
        return
    if words[:2] == ["ros2", "launch"]:
        assert words[2] == "bisenet_ros"
        launch_double.install(monkeypatch)
        module = launch_double.load(ROOT / "launch" / words[3])
        arguments = dict(word.split(":=", 1) for word in words[4:])
        nodes = launch_double.evaluate(module.generate_launch_description(), arguments)
        assert nodes, f"`{command}` starts no node"
        return
    if words[0] == "ros2":
        assert words[1] in EXTERNAL_ROS2, command
        return
    if words[0] in ("python", "python3") and words[1:4] == ["-m", "pip", "install"]:
        assert (ROOT / words[-1].split("/", 2)[-1]).is_file() or words[-1] == "requirements.txt"
        return
    if words[0] in ("python", "python3") and words[1:3] == ["-m", "venv"]:
        # The ROS 2 way: the environment must see the ROS Python packages (issue 10).
        assert "--system-site-packages" in words, f"`{command}` hides the ROS 2 Python packages"
        return
    if words[:3] == ["python", "-m", "colcon"]:
        assert words[3] == "build", command  # colcon from the active environment
        return
    assert words[0] in EXTERNAL, f"README command not exercised by any test: {command}"


def test_readme_shows_the_two_quick_start_commands() -> None:
    commands = readme_commands()
    assert commands[:2] == ["bash scripts/demo.sh", "bash scripts/test.sh"]


@pytest.mark.parametrize("command", readme_commands())
def test_readme_command(command: str, monkeypatch: pytest.MonkeyPatch) -> None:
    check_command(command, monkeypatch)


def test_a_broken_command_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(AssertionError):
        check_command("bisenet-ros replay in.bag --no-such-option", monkeypatch)
    with pytest.raises(ValueError, match="not declared"):
        check_command("ros2 launch bisenet_ros segmentation.launch.py no_such_arg:=1", monkeypatch)
    with pytest.raises(AssertionError):
        check_command("frobnicate --all", monkeypatch)
