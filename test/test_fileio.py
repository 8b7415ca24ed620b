"""Files the package writes through a temporary file get the user's umask, like ``open()``
(issue 17: ``bisenet-ros export`` wrote its .onnx 0600 under umask 022, unreadable by a node
running as another user), and an interrupted write leaves nothing behind."""
from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from bisenet_ros.fileio import atomic_writer, write_atomic


@pytest.fixture(params=[(0o022, 0o644), (0o077, 0o600)], ids=["umask022", "umask077"])
def umask(request: pytest.FixtureRequest):
    """Run the test under a umask; yields the mode a new file must get."""
    mask, expected = request.param
    previous = os.umask(mask)
    try:
        yield expected
    finally:
        os.umask(previous)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_write_atomic_creates_files_with_the_umask(tmp_path: Path, umask: int) -> None:
    write_atomic(tmp_path / "sub" / "model.onnx", b"\x00\x01")
    write_atomic(tmp_path / "metrics.json", "{}\n")
    reference = tmp_path / "plain.txt"
    reference.write_text("what open() does")
    for path in (tmp_path / "sub" / "model.onnx", tmp_path / "metrics.json", reference):
        assert mode(path) == umask, path
    # replacing an existing file gives it the new file's mode, as a fresh write would
    (tmp_path / "metrics.json").chmod(0o600)
    write_atomic(tmp_path / "metrics.json", "{}\n")
    assert mode(tmp_path / "metrics.json") == umask


def test_training_checkpoints_get_the_umask(tmp_path: Path, umask: int) -> None:
    import torch

    from training.checkpoint import atomic_save

    atomic_save({"step": torch.tensor(3)}, tmp_path / "last.pth")
    assert mode(tmp_path / "last.pth") == umask
    assert torch.load(tmp_path / "last.pth", weights_only=True)["step"] == 3


def test_an_interrupted_write_leaves_nothing(tmp_path: Path) -> None:
    target = tmp_path / "report.html"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_writer(target) as stream:
            stream.write(b"half of a new")
            raise RuntimeError("interrupted")
    assert target.read_text() == "old" and sorted(tmp_path.iterdir()) == [target]


def test_export_command_writes_a_readable_onnx(tmp_path: Path, umask: int) -> None:
    from bisenet_ros.cli import main as cli_main

    output = tmp_path / "v2.onnx"
    with pytest.warns(UserWarning, match="randomly initialised"):
        assert cli_main(["export", "--variant", "bisenetv2", "--resolution", "64x32",
                         "-o", str(output), "--no-verify"]) == 0
    assert mode(output) == umask
