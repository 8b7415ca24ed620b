"""File helpers shared by the commands, the replay and training: atomic writes and natural sort
order.

Every file the package writes through a temporary file goes through :func:`atomic_writer` (or
:func:`write_atomic`), which creates that temporary file the way ``open()`` creates a file: with
mode ``0o666`` masked by the user's umask (0644 under the usual umask 022, 0600 under 077).
``tempfile.mkstemp`` would create it 0600 whatever the umask, and the rename keeps that mode:
an exported .onnx then cannot be read by a node running as another user.
"""
from __future__ import annotations

import contextlib
import os
import re
import secrets
from pathlib import Path
from typing import Any, BinaryIO, Iterator

__all__ = ["atomic_writer", "write_atomic", "natural_key"]


def _create_beside(path: Path) -> tuple[int, Path]:
    # O_EXCL with a random name: never another process's file; 0o666 lets the kernel apply the
    # umask exactly as open() does (no process-wide umask juggling, safe with threads).
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    for _ in range(100):
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
        try:
            return os.open(tmp, flags, 0o666), tmp
        except FileExistsError:
            continue
    raise FileExistsError(f"cannot create a temporary file beside {path}: 100 names taken")


@contextlib.contextmanager
def atomic_writer(path: str | os.PathLike[str], *, fsync: bool = False) -> Iterator[BinaryIO]:
    """A binary stream whose content replaces ``path`` only when the ``with`` block succeeds.

    The stream writes a temporary file in the same folder (created with the user's umask, like
    ``open()``), renamed over ``path`` at the end; on an exception it is removed, so an
    interrupted write never leaves a truncated file at ``path`` nor a temporary one beside it.

    Args:
        path: The file to create or replace; its folder is created if needed.
        fsync: Also flush the data and the rename to the disk (a crash, even a power loss, leaves
            the old or the new complete file): for checkpoints written during long runs.

    Yields:
        The open binary stream.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = _create_beside(path)
    try:
        with os.fdopen(fd, "wb") as stream:
            yield stream
            stream.flush()
            if fsync:
                os.fsync(stream.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if fsync:
        with contextlib.suppress(OSError):  # persist the rename itself (not on every platform)
            folder = os.open(path.parent, os.O_RDONLY)
            try:
                os.fsync(folder)
            finally:
                os.close(folder)


def write_atomic(path: str | os.PathLike[str], data: str | bytes, *, fsync: bool = False) -> None:
    """Write ``data`` to ``path`` through :func:`atomic_writer`.

    Args:
        path: The file to create or replace; its folder is created if needed.
        data: Text (written as UTF-8) or bytes.
        fsync: See :func:`atomic_writer`.
    """
    with atomic_writer(path, fsync=fsync) as stream:
        stream.write(data.encode("utf-8") if isinstance(data, str) else data)


def natural_key(path: str | os.PathLike[str]) -> list[Any]:
    """Sort key putting ``frame_2`` before ``frame_10`` (digit runs compare as numbers)."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", str(path))]


class NewOutputs:
    """Outputs removed again when a command fails: a failed command leaves nothing behind.

    Only what did not exist when the command started is removed: a named folder the command
    creates (with the folders above it that it creates) goes whole; in a folder the user had
    already, only the files registered with :meth:`add`::

        with NewOutputs(out_dir) as outputs:
            out_dir.mkdir(parents=True, exist_ok=True)
            write_atomic(out_dir / "a.png", data)
            outputs.add(out_dir / "a.png")
            ...                                   # an exception here removes a.png (or out_dir)

    Args:
        *paths: Folders or files the command may create.
    """

    def __init__(self, *paths: str | os.PathLike[str]) -> None:
        self._created = [p for p in (_outermost_missing(Path(path)) for path in paths) if p is not None]
        self._files: list[Path] = []

    def add(self, path: str | os.PathLike[str]) -> None:
        """Register a file the command wrote (removed on failure)."""
        self._files.append(Path(path))

    def remove(self) -> None:
        """Remove the registered files and the paths that did not exist at the start."""
        import shutil  # only on the failure path

        for path in self._files:
            path.unlink(missing_ok=True)
        for path in self._created:
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)

    def __enter__(self) -> "NewOutputs":
        return self

    def __exit__(self, kind: type[BaseException] | None, *_: object) -> None:
        if kind is not None:  # Ctrl-C included: an interrupted command leaves nothing either
            self.remove()


def _outermost_missing(path: Path) -> Path | None:
    """The outermost of ``path`` and its parents that does not exist (None: ``path`` exists)."""
    path = path.absolute()
    if path.exists() or path.is_symlink():
        return None
    while not path.parent.exists() and path.parent != path:
        path = path.parent
    return path
