"""Which bags a fleet evaluation covers, and what identifies a bag's content.

Bags are given as paths (a rosbag2 directory or a ``.mcap``/``.db3`` file), glob patterns
(``drives/**/*.mcap``, ``recordings/2026-*``) or text files listing them (``*.txt``: one path or
pattern per line, ``#`` starts a comment, relative paths are relative to the list's folder).
"""
from __future__ import annotations

import glob
import hashlib
import os
from pathlib import Path
from typing import Iterable

from bisenet_ros.replay.bag import looks_like_bag, storage_files

LIST_SUFFIX = ".txt"
_GLOB_CHARS = frozenset("*?[")
# Bytes read per hashing step: large enough for disk throughput, small enough for flat memory.
_CHUNK = 4 << 20


class NoBagsError(ValueError):
    """Nothing matched the bag arguments."""


def find_bags(items: Iterable[str], *, base: Path | None = None) -> list[Path]:
    """Expand bag paths, glob patterns and ``*.txt`` lists into a sorted, de-duplicated list.

    The order (by resolved path) is the order in which per-bag results are summed, so the
    aggregate is the same however the bags were distributed over workers.

    Args:
        items: Paths, patterns or list files, as given on the command line.
        base: Folder relative entries are resolved against (default: the working directory).

    Raises:
        NoBagsError: Nothing matched (the message lists what was tried).
        FileNotFoundError: A list file or an explicit (non-pattern) path does not exist.
    """
    found: dict[str, Path] = {}
    tried: list[str] = []
    for item in items:
        for path in _expand(str(item), base or Path.cwd(), tried):
            found.setdefault(str(path.resolve()), path)
    if not found:
        raise NoBagsError(f"no bags matched {', '.join(tried) or 'the arguments'}; give bag "
                          "directories, .mcap/.db3 files, glob patterns or a .txt list of them")
    return [found[key] for key in sorted(found)]


def _expand(item: str, base: Path, tried: list[str]) -> list[Path]:
    item = item.strip()
    if not item or item.startswith("#"):
        return []
    path = Path(item) if os.path.isabs(item) else base / item
    if _GLOB_CHARS & set(item):
        tried.append(item)
        # A pattern like 'drives/*' also matches stray files (notes, labels); keep what a reader
        # could open. Explicit paths are taken as given, so a bad one is reported, not skipped.
        return [Path(p) for p in sorted(glob.glob(str(path), recursive=True)) if looks_like_bag(p)]
    if path.suffix == LIST_SUFFIX and path.is_file():
        out: list[Path] = []
        for line in path.read_text(encoding="utf-8").splitlines():
            out.extend(_expand(line.split("#", 1)[0], path.parent, tried))
        return out
    tried.append(item)
    if not path.exists():
        raise FileNotFoundError(f"bag {item} does not exist; give a rosbag2 directory, an "
                                ".mcap/.db3 file, a glob pattern or a .txt list of bags")
    return [path]


def bag_digest(path: Path) -> str:
    """SHA-256 over a bag's content: its ``metadata.yaml`` and storage files, in order.

    The key of the resumable per-bag results: a bag re-recorded or repaired under the same name
    gets a new key, a bag moved or renamed keeps its key.

    Raises:
        OSError: A file cannot be read.
    """
    path = Path(path)
    files = storage_files(path) if path.is_dir() else [path]
    meta = path / "metadata.yaml"
    if path.is_dir() and meta.exists():
        files = [meta] + files
    digest = hashlib.sha256()
    for file in files:
        digest.update(file.name.encode() + b"\0")
        with open(file, "rb") as stream:
            while chunk := stream.read(_CHUNK):
                digest.update(chunk)
    return digest.hexdigest()


def bag_name(bag: Path) -> str:
    """A bag's name: its folder's name, or its file name without ``.mcap``/``.db3``."""
    return bag.name[: -len(bag.suffix)] if bag.suffix in (".mcap", ".db3") else bag.name


def labels_dir_for(template: str | None, bag: Path) -> Path | None:
    """The ground-truth folder of one bag.

    ``{bag}`` in ``template`` is replaced by the bag's name (``labels/{bag}/gtFine``); without
    it, ``template/<bag name>`` is used when it exists, else ``template`` itself (one bag).
    """
    if not template:
        return None
    name = bag_name(bag)
    if "{bag}" in template:
        return Path(template.replace("{bag}", name))
    per_bag = Path(template) / name
    return per_bag if per_bag.is_dir() else Path(template)
