"""Evaluation metrics of a replay: accuracy against ground truth, stability, timing. Pure NumPy.

Definitions (also stated in the report):

* Confusion matrix ``C[g, p]``: pixels of ground-truth class ``g`` predicted as ``p``; ground
  truth outside ``0..num_classes-1`` (255 = ignore) is not counted.
* IoU of class ``c``: ``C[c, c] / (sum_p C[c, p] + sum_g C[g, c] - C[c, c])``; undefined (None)
  when the class is neither in the ground truth nor predicted. mIoU averages the defined ones.
* Pixel accuracy: ``trace(C) / sum(C)``. A prediction that is no class (255, e.g. letterbox
  padding at network resolution) counts as a miss of its ground-truth class.
* Drivable-area IoU: IoU of the binary masks "class in drivable classes" of prediction and
  ground truth, over the non-ignored pixels.
* Temporal stability: per frame, the share of pixels whose predicted label differs from the
  previous frame's (0 = perfectly stable); the first frame has none.
* Latency percentiles: nearest-rank on the per-frame values (p50, p90, p99, max).
"""
from __future__ import annotations

import math
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

IGNORE_ID = 255


def class_iou(matrix: np.ndarray, unassigned: np.ndarray | None = None) -> np.ndarray:
    """Per-class IoU ``TP / (TP + FP + FN)`` of a confusion matrix (rows: truth, cols: prediction).

    Args:
        matrix: ``(C, C)`` pixel counts.
        unassigned: ``(C,)`` pixels of each true class predicted as no class at all (they are
            false negatives of that class); None if there are none.

    Returns:
        ``(C,)`` float64 IoU, NaN where the class is neither in the truth nor predicted.
    """
    matrix = np.asarray(matrix, dtype=np.float64)
    tp = np.diag(matrix)
    union = matrix.sum(0) + matrix.sum(1) - tp
    if unassigned is not None:
        union = union + unassigned
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, tp / union, np.nan)


class ConfusionMatrix:
    """Accumulates a ``num_classes x num_classes`` confusion matrix (rows: truth, cols: prediction).

    Args:
        num_classes: Number of classes.
        drivable_ids: Class ids that count as drivable (for :meth:`drivable_iou`).
    """

    def __init__(self, num_classes: int, drivable_ids: Iterable[int] = ()) -> None:
        self.num_classes = int(num_classes)
        self.matrix = np.zeros((self.num_classes, self.num_classes), dtype=np.int64)
        # Pixels of each ground-truth class whose prediction is no class at all (e.g. 255).
        self.unassigned = np.zeros(self.num_classes, dtype=np.int64)
        self._drivable_lut = np.zeros(256, dtype=bool)
        for cid in drivable_ids:
            self._drivable_lut[int(cid)] = True
        self.drivable = np.zeros(3, dtype=np.int64)  # intersection, union, valid pixels
        self.frames = 0

    def update(self, prediction: np.ndarray, truth: np.ndarray) -> None:
        """Add one frame; both H x W integer label maps of the same shape."""
        if prediction.shape != truth.shape:
            raise ValueError(f"prediction {prediction.shape} and ground truth {truth.shape} "
                             "differ in size; resize one to the other first")
        pred = prediction.reshape(-1).astype(np.int64, copy=False)
        gt = truth.reshape(-1).astype(np.int64, copy=False)
        valid = gt < self.num_classes
        pred_v, gt_v = pred[valid], gt[valid]
        # A prediction outside the class range (letterbox padding at network resolution, or a
        # misconfigured engine) would corrupt the bincount layout; it is a miss of its
        # ground-truth class, kept apart so accuracy and IoU still count it.
        in_range = pred_v < self.num_classes
        counts = np.bincount(gt_v[in_range] * self.num_classes + pred_v[in_range],
                             minlength=self.num_classes ** 2)
        self.matrix += counts.reshape(self.num_classes, self.num_classes)
        self.unassigned += np.bincount(gt_v[~in_range], minlength=self.num_classes)
        pd = self._drivable_lut[np.clip(pred_v, 0, 255)]
        gd = self._drivable_lut[gt_v]
        self.drivable += (int(np.count_nonzero(pd & gd)), int(np.count_nonzero(pd | gd)),
                          int(gt_v.size))
        self.frames += 1

    def merge(self, other: "ConfusionMatrix") -> None:
        """Add another matrix's counts (same classes): exact integer sums, order-independent."""
        if other.num_classes != self.num_classes:
            raise ValueError(f"cannot merge a {other.num_classes}-class confusion matrix into a "
                             f"{self.num_classes}-class one")
        self.matrix += other.matrix
        self.unassigned += other.unassigned
        self.drivable += other.drivable
        self.frames += other.frames

    def state(self) -> dict[str, Any]:
        """The counts as plain JSON-ready integers (:meth:`from_state` restores them exactly)."""
        return {"matrix": self.matrix.tolist(), "unassigned": self.unassigned.tolist(),
                "drivable": self.drivable.tolist(), "frames": self.frames,
                "drivable_ids": [int(i) for i in np.flatnonzero(self._drivable_lut)]}

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> "ConfusionMatrix":
        matrix = np.asarray(state["matrix"], dtype=np.int64)
        cm = cls(len(matrix), state.get("drivable_ids", ()))
        cm.matrix += matrix
        cm.unassigned += np.asarray(state["unassigned"], dtype=np.int64)
        cm.drivable += np.asarray(state["drivable"], dtype=np.int64)
        cm.frames = int(state["frames"])
        return cm

    def iou(self) -> list[float | None]:
        """Per-class IoU (None where the class is neither in the truth nor predicted)."""
        return [None if math.isnan(v) else float(v) for v in class_iou(self.matrix, self.unassigned)]

    def miou(self) -> float | None:
        values = [v for v in self.iou() if v is not None]
        return float(np.mean(values)) if values else None

    def pixel_accuracy(self) -> float | None:
        total = int(self.matrix.sum() + self.unassigned.sum())
        return float(np.trace(self.matrix) / total) if total else None

    def drivable_iou(self) -> float | None:
        inter, union, _ = (int(v) for v in self.drivable)
        return float(inter / union) if union else None

    def summary(self, class_names: Sequence[str]) -> dict[str, Any]:
        """JSON-ready summary: per-class IoU by name, mIoU, pixel accuracy, drivable IoU."""
        ious = self.iou()
        names = list(class_names) + [str(i) for i in range(len(class_names), self.num_classes)]
        return {
            "frames_evaluated": self.frames,
            "pixels_evaluated": int(self.matrix.sum() + self.unassigned.sum()),
            "pixels_without_prediction": int(self.unassigned.sum()),
            "miou": self.miou(),
            "pixel_accuracy": self.pixel_accuracy(),
            "drivable_iou": self.drivable_iou(),
            "per_class_iou": {names[i]: ious[i] for i in range(self.num_classes)},
            "confusion_matrix": self.matrix.tolist(),
        }


def class_shares(labels: np.ndarray, num_classes: int) -> np.ndarray:
    """Share of the pixels per class id (float64, length ``num_classes``; sums to <= 1)."""
    if labels.dtype == np.uint8 and labels.size:
        import cv2

        # 4x faster than np.bincount at 1080p, and OpenCV releases the GIL: this runs in the
        # writer thread next to inference.
        hist = cv2.calcHist([np.ascontiguousarray(labels)], [0], None, [256], [0, 256])
        counts = hist.reshape(-1)[:num_classes].astype(np.float64)
    else:
        counts = np.bincount(labels.reshape(-1), minlength=max(num_classes, 1))[:num_classes]
    return counts / max(labels.size, 1)


def change_fraction(previous: np.ndarray | None, current: np.ndarray) -> float | None:
    """Share of pixels whose label changed since ``previous`` (None: no comparable previous)."""
    if previous is None or previous.shape != current.shape:
        return None
    return float(np.count_nonzero(previous != current) / max(current.size, 1))


def percentiles(values: Sequence[float]) -> dict[str, float | None]:
    """p50/p90/p99/max/mean of ``values`` (nearest-rank; None for an empty sequence)."""
    if len(values) == 0:
        return {"p50": None, "p90": None, "p99": None, "max": None, "mean": None, "count": 0}
    data = np.sort(np.asarray(values, dtype=np.float64))

    def rank(q: float) -> float:
        return float(data[max(0, math.ceil(q / 100.0 * data.size) - 1)])

    return {"p50": rank(50), "p90": rank(90), "p99": rank(99), "max": float(data[-1]),
            "mean": float(data.mean()), "count": int(data.size)}


def latency_summary(per_frame: Sequence[Mapping[str, float]]) -> dict[str, dict[str, float | None]]:
    """Per-stage percentiles from one ``{stage: ms}`` dict per frame (stages in first-seen order)."""
    stages: dict[str, list[float]] = {}
    for timings in per_frame:
        for stage, value in timings.items():
            stages.setdefault(stage, []).append(float(value))
    return {stage: percentiles(values) for stage, values in stages.items()}


def frame_rate(timestamps_ns: Sequence[int]) -> float | None:
    """Mean frame rate of a stream from its timestamps: ``(n - 1) / (last - first)``."""
    if len(timestamps_ns) < 2:
        return None
    span = (max(timestamps_ns) - min(timestamps_ns)) / 1e9
    return (len(timestamps_ns) - 1) / span if span > 0 else None
