"""Every command ends a user error with one clear line and a non-zero status; tracebacks are for
bugs, or with --debug."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from bisenet_ros.cli import main as bisenet_ros_main
from bisenet_ros.runtime import USER_ERROR_STATUS, run_command
from training.__main__ import main as training_main

ROOT = Path(__file__).resolve().parents[1]


def _one_error_line(capsys: pytest.CaptureFixture[str], prog: str) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith(f"{prog}: error: ")]
    assert len(errors) == 1, err
    return errors[0]


def test_training_missing_dataset_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    code = training_main(["train", "--config", "bisenetv2_cityscapes", "--data-root", "/nonexistent"])
    assert code == USER_ERROR_STATUS == 2
    line = _one_error_line(capsys, "python -m training train")
    assert "/nonexistent/leftImg8bit/train does not exist" in line and "--debug" in line


def test_training_shadowed_override_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    # The STDC recipes draw from data.scale_choices, so data.scale could never take effect.
    code = training_main(["train", "--config", "stdc1_cityscapes", "--set", "data.scale=[0.75,1.5]"])
    assert code == USER_ERROR_STATUS == 2
    line = _one_error_line(capsys, "python -m training train")
    assert "data.scale has no effect while data.scale_choices is set" in line


@pytest.mark.parametrize("argv, message", [
    (["train"], "give --config"),
    (["eval", "{tmp}"], "no best.pth or last.pth in this run directory"),
    (["export", "{tmp}/missing.pth", "--out", "{tmp}/m.onnx"], "no such run directory or checkpoint file"),
    (["synth", "--out", "{tmp}/s", "--size", "64"], "size must be WIDTHxHEIGHT"),
    (["synth", "--out", "{tmp}/s", "--test", "2"], "--test is for --layout camvid-segnet"),
    (["drive", "--out", "{tmp}"], "exists; pass --overwrite"),
])
def test_training_usage_errors_are_one_line_with_the_user_error_status(
        argv: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = training_main([arg.format(tmp=tmp_path) for arg in argv])
    assert code == USER_ERROR_STATUS
    assert message in _one_error_line(capsys, f"python -m training {argv[0]}")


def test_training_debug_shows_the_traceback() -> None:
    from training.data import DatasetError

    with pytest.raises(DatasetError, match="does not exist"):
        training_main(["train", "--config", "bisenetv2_cityscapes", "--data-root", "/nonexistent", "--debug"])


def test_training_export_of_a_corrupt_checkpoint(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    corrupt = tmp_path / "best.pth"
    corrupt.write_bytes(b"PK\x03\x04 not really a zip")
    assert training_main(["export", str(corrupt), "--out", str(tmp_path / "m.onnx")]) == 2
    line = _one_error_line(capsys, "python -m training export")
    assert "not a readable PyTorch checkpoint" in line and "weights_only" not in line
    assert not (tmp_path / "m.onnx").exists()


def test_bisenet_ros_export_of_a_pickled_object(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "model.pth"
    torch.save({"model": Path("/a/pickled/object")}, path)
    assert bisenet_ros_main(["export", "--weights", str(path), "-o", str(tmp_path / "m.onnx")]) != 0
    line = _one_error_line(capsys, "bisenet-ros export")
    assert "holds Python objects other than tensors" in line and "weights_only" not in line


def test_a_bug_keeps_its_traceback() -> None:
    def buggy(_: object) -> int:
        raise KeyError("a bug, not the user's fault")

    with pytest.raises(KeyError):
        run_command("bisenet-ros x", buggy, None)


def test_user_error_classes(capsys: pytest.CaptureFixture[str]) -> None:
    from bisenet_ros.inference.backends.base import BackendError
    from bisenet_ros.replay.bag import BagError

    for error in (BackendError("device='cuda' needs a CUDA build"), BagError("no image topic"),
                  FileNotFoundError("x.yaml"), ImportError("pip install ray")):
        def run(_: object, error: Exception = error) -> int:
            raise error

        assert run_command("bisenet-ros x", run, None) == 2
        assert str(error) in _one_error_line(capsys, "bisenet-ros x")


def test_training_cli_as_a_process_prints_no_traceback() -> None:
    done = subprocess.run([sys.executable, "-m", "training", "eval", "/nonexistent/run"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode != 0
    assert "Traceback" not in done.stderr and "/nonexistent/run" in done.stderr + done.stdout


@pytest.mark.parametrize("argv", [["bench", "--cameras", "two"], ["segment", "/nonexistent/street.png"],
                                  ["export", "--weights", "/nonexistent/model.pth"]])
def test_bisenet_ros_commands_report_through_run_command(argv: list[str],
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    # One line with the --debug hint, and --debug then shows the traceback.
    assert bisenet_ros_main(argv) == USER_ERROR_STATUS
    assert "--debug" in _one_error_line(capsys, f"bisenet-ros {argv[0]}")
    with pytest.raises(ValueError):
        bisenet_ros_main([*argv, "--debug"])
