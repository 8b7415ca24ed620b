"""Ground truth for the evaluation: a labels topic in the bag, or a Cityscapes-style folder.

Both hold trainId masks (``uint8``, class id per pixel, 255 = ignore).

* Topic (``--labels-topic``): ``sensor_msgs/Image`` ``mono8`` masks whose header stamp equals the
  camera frame's stamp. Labels may come before or after their frame in the bag.
* Folder (``--labels-dir``): PNG masks, searched recursively. Cityscapes names are understood:
  ``*_gtFine_labelTrainIds.png`` are used when present, otherwise ``*_labelIds.png`` (converted
  with the official labelId -> trainId table), otherwise every ``*.png``. Files are matched to
  frames by the timestamp in their name (``<ns>`` with 16-19 digits, or ``<sec>.<nanosec>`` /
  ``<sec>_<nanosec>``) or, when the names hold none, by order (the i-th file in natural sort
  order is the i-th message of the image topic).
"""
from __future__ import annotations

import bisect
import collections
import re
from pathlib import Path
from typing import Any

import numpy as np

from bisenet_ros.fileio import natural_key

MATCH_MODES = ("auto", "timestamp", "order")
_NS_RE = re.compile(r"(?<!\d)(\d{16,19})(?!\d)")
_SEC_NSEC_RE = re.compile(r"(?<!\d)(\d{9,10})[._](\d{1,9})(?!\d)")


def parse_stamp(name: str) -> int | None:
    """Timestamp (ns) in a file name, or None."""
    match = _SEC_NSEC_RE.search(name)
    if match:
        return int(match.group(1)) * 1_000_000_000 + int(match.group(2).ljust(9, "0"))
    match = _NS_RE.search(name)
    return int(match.group(1)) if match else None


class FolderLabels:
    """Ground-truth masks from a folder, looked up per frame.

    Args:
        folder: The folder (searched recursively).
        match: ``"timestamp"``, ``"order"`` or ``"auto"`` (timestamp when every file name holds
            one, otherwise order).
        tolerance_ns: Largest stamp difference accepted by timestamp matching.

    Raises:
        FileNotFoundError: The folder does not exist or holds no PNG.
        ValueError: ``match="timestamp"`` but some file name has no timestamp.
    """

    def __init__(self, folder: str | Path, *, match: str = "auto", tolerance_ns: int = 1_000_000) -> None:
        if match not in MATCH_MODES:
            raise ValueError(f"labels match {match!r}: expected one of {', '.join(MATCH_MODES)}")
        self.folder = Path(folder)
        if not self.folder.is_dir():
            raise FileNotFoundError(f"labels folder {self.folder} does not exist")
        files = sorted(self.folder.rglob("*_labelTrainIds.png"), key=natural_key)
        self.label_ids = False
        if not files:
            files = sorted(self.folder.rglob("*_labelIds.png"), key=natural_key)
            self.label_ids = bool(files)
        if not files:
            files = sorted(self.folder.rglob("*.png"), key=natural_key)
        if not files:
            raise FileNotFoundError(
                f"labels folder {self.folder} holds no PNG masks (expected *_gtFine_labelTrainIds.png "
                "or mono8 trainId PNGs)")
        self.files = files
        stamps = [parse_stamp(f.name) for f in files]
        if match == "auto":
            match = "timestamp" if all(s is not None for s in stamps) else "order"
        if match == "timestamp":
            missing = [f.name for f, s in zip(files, stamps) if s is None]
            if missing:
                raise ValueError(f"--labels-match timestamp: no timestamp in {missing[:3]} ...; "
                                 "name files <stamp_ns>.png or use --labels-match order")
            pairs = sorted((s, f) for s, f in zip(stamps, files) if s is not None)
            self._stamps = [s for s, _ in pairs]
            self._by_stamp = [f for _, f in pairs]
        self.match = match
        self.tolerance_ns = int(tolerance_ns)

    def __len__(self) -> int:
        return len(self.files)

    def path_for(self, index: int, stamp_ns: int) -> Path | None:
        """The mask file for image message ``index`` with header stamp ``stamp_ns``."""
        if self.match == "order":
            return self.files[index] if 0 <= index < len(self.files) else None
        pos = bisect.bisect_left(self._stamps, stamp_ns)
        best: Path | None = None
        best_diff = self.tolerance_ns + 1
        for i in (pos - 1, pos):
            if 0 <= i < len(self._stamps) and abs(self._stamps[i] - stamp_ns) < best_diff:
                best, best_diff = self._by_stamp[i], abs(self._stamps[i] - stamp_ns)
        return best

    def load(self, index: int, stamp_ns: int) -> np.ndarray | None:
        """The trainId mask for a frame, or None when the folder has none for it."""
        path = self.path_for(index, stamp_ns)
        return None if path is None else load_mask(path, label_ids=self.label_ids)


def load_mask(path: Path, *, label_ids: bool = False) -> np.ndarray:
    """Read a single-channel PNG mask as uint8 trainIds."""
    import cv2

    mask = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if mask is None:
        raise ValueError(f"{path}: not a readable image")
    if mask.ndim == 3:
        raise ValueError(f"{path}: a colour image, expected a single-channel trainId mask "
                         "(Cityscapes *_gtFine_labelTrainIds.png)")
    mask = mask.astype(np.uint8, copy=False)
    if label_ids:
        from bisenet_ros.labels import label_ids_to_train_ids

        mask = label_ids_to_train_ids(mask)
    return mask


class StampMatcher:
    """Pairs predictions and ground-truth masks that arrive in any order, by header stamp.

    Both sides wait at most ``window`` items; older ones are dropped (counted as unmatched),
    so memory stays bounded on a bag whose labels cover only part of the drive.
    """

    def __init__(self, window: int = 64) -> None:
        self.window = window
        self._labels: collections.OrderedDict[int, np.ndarray] = collections.OrderedDict()
        self._preds: collections.OrderedDict[int, Any] = collections.OrderedDict()
        self.unmatched_predictions = 0
        self.unmatched_labels = 0

    def add_label(self, stamp_ns: int, mask: np.ndarray) -> Any | None:
        """Store a mask; return the waiting prediction it completes (or None)."""
        pred = self._preds.pop(stamp_ns, None)
        if pred is not None:
            return pred
        self._labels[stamp_ns] = mask
        while len(self._labels) > self.window:
            self._labels.popitem(last=False)
            self.unmatched_labels += 1
        return None

    def add_prediction(self, stamp_ns: int, pred: Any) -> np.ndarray | None:
        """Store a prediction; return its mask if already known (or None)."""
        mask = self._labels.pop(stamp_ns, None)
        if mask is not None:
            return mask
        self._preds[stamp_ns] = pred
        while len(self._preds) > self.window:
            self._preds.popitem(last=False)
            self.unmatched_predictions += 1
        return None

    def finish(self) -> None:
        """Count what is still waiting as unmatched."""
        self.unmatched_predictions += len(self._preds)
        self.unmatched_labels += len(self._labels)
        self._preds.clear()
        self._labels.clear()
