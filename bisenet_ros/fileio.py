"""File helpers shared by the commands and the replay: atomic writes and natural sort order."""
from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path
from typing import Any


def write_atomic(path: str | os.PathLike[str], data: str | bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder and a rename.

    An interrupted write never leaves a truncated file at ``path`` (nor a temporary file beside it).

    Args:
        path: The file to create or replace; its folder is created if needed.
        data: Text (written as UTF-8) or bytes.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as stream:
            stream.write(data.encode("utf-8") if isinstance(data, str) else data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


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
