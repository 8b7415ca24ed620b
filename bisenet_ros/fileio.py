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
