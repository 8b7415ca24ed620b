"""TEST DOUBLE of ``bisenet_ros.inference.Segmenter`` (the contract in docs/DEVELOPING.md):
deterministic outputs computed from the frame, and a record of every call, so node tests can
check which outputs were asked for. The real engine is exercised in test_node.py as well."""
from __future__ import annotations

import threading
from types import SimpleNamespace
from typing import Any

import numpy as np


class FakeSegmenter:
    """labels = (R + G + B) mod num_classes; class i is named ``class<i>``; class 0 is drivable."""

    def __init__(self, config: Any) -> None:
        self.config = config
        n = config.num_classes
        self.class_names = [f"class{i}" for i in range(n)]
        rng = np.random.default_rng(1)
        self.palette = rng.integers(0, 256, (n, 3), dtype=np.uint8)  # RGB
        self.calls: list[dict[str, Any]] = []
        self.batches: list[int] = []  # the size of every segment_batch call
        self.fail_with: BaseException | None = None
        self.started = threading.Event()  # set when a call begins
        self.gate = threading.Event()  # a call waits for this (tests clear it to hold the worker)
        self.gate.set()

    def labels_for(self, frame: np.ndarray) -> np.ndarray:
        return (frame.astype(np.int64).sum(axis=2) % self.config.num_classes).astype(np.uint8)

    def __call__(self, frame: np.ndarray, color_order: str = "bgr", outputs: Any = None) -> Any:
        if frame.ndim != 3 or frame.shape[2] != 3 or frame.dtype != np.uint8:
            raise ValueError(f"expected an H x W x 3 uint8 frame, got {frame.shape} {frame.dtype}")
        self.calls.append({"shape": frame.shape, "color_order": color_order,
                           "outputs": None if outputs is None else set(outputs)})
        self.started.set()
        self.gate.wait(10.0)
        if self.fail_with is not None:
            raise self.fail_with
        wanted = {"color", "overlay", "drivable", "confidence"} if outputs is None else set(outputs)
        labels = self.labels_for(frame)
        palette = self.palette if color_order == "rgb" else self.palette[:, ::-1]
        color = palette[labels] if wanted & {"color", "overlay"} else None
        return SimpleNamespace(
            labels=labels,
            color=color if "color" in wanted else None,
            overlay=((frame.astype(np.uint16) + color) // 2).astype(np.uint8)
            if "overlay" in wanted else None,
            drivable=np.where(labels == 0, 255, 0).astype(np.uint8) if "drivable" in wanted else None,
            confidence=np.full(labels.shape, 0.75, np.float32)
            if "confidence" in wanted and self.config.confidence else None,
            timings={"preprocess": 0.1, "model": 1.0, "postprocess": 0.2},
        )

    def segment_batch(self, frames: Any, color_orders: Any = "bgr", outputs: Any = None) -> list[Any]:
        """The batched call of the engine contract: one result per frame, in order."""
        orders = [color_orders] * len(frames) if isinstance(color_orders, str) else list(color_orders)
        if len(orders) != len(frames):
            raise ValueError(f"{len(orders)} colour orders for {len(frames)} frames")
        self.batches.append(len(frames))
        return [self(frame, color_order=order, outputs=outputs) for frame, order in zip(frames, orders)]
