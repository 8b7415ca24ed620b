"""A generated street-like camera frame, for ``bisenet-ros segment`` with no input and the benchmark,
and which frames of a recording to sample.

Deliberately simple (sky, facades, road with lane marks, sidewalks, a few car-like boxes, sensor
noise): it exists so that commands and benchmarks have a realistic-looking, deterministic 8-bit
frame of any size without any download. For training data see ``python -m training synth``.
"""
from __future__ import annotations

import cv2
import numpy as np


def street_frame(width: int = 1920, height: int = 1080, seed: int = 0) -> np.ndarray:
    """Render a street scene.

    Args:
        width: Frame width in pixels.
        height: Frame height in pixels.
        seed: Same seed, same frame.

    Returns:
        ``height x width x 3`` uint8 image in **BGR** order (like ``cv2.imread``).
    """
    if width < 16 or height < 16:
        raise ValueError(f"street_frame: expected at least 16 x 16 pixels, got {width} x {height}")
    rng = np.random.default_rng(seed)
    img = np.zeros((height, width, 3), np.uint8)
    horizon = int(height * rng.uniform(0.40, 0.48))
    # Sky: vertical gradient (BGR), brighter at the horizon.
    rows = np.linspace(0.0, 1.0, horizon, dtype=np.float32)[:, None]
    top, bottom = np.array([180, 130, 70], np.float32), np.array([235, 215, 190], np.float32)
    img[:horizon] = (top + (bottom - top) * rows)[:, None, :].astype(np.uint8)
    # Facades left and right of the vanishing point, with windows.
    vx = int(width * rng.uniform(0.45, 0.55))
    for side in (0, 1):
        x0, x1 = (0, vx - width // 10) if side == 0 else (vx + width // 10, width)
        x = x0
        while x < x1:
            w = int(width * rng.uniform(0.06, 0.14))
            roof = int(horizon * rng.uniform(0.05, 0.6))
            shade = rng.integers(60, 140)
            cv2.rectangle(img, (x, roof), (min(x + w, x1), horizon), (int(shade), int(shade), int(shade + 10)), -1)
            for wy in range(roof + 10, horizon - 10, max(8, height // 40)):
                for wx in range(x + 6, min(x + w, x1) - 6, max(8, width // 60)):
                    cv2.rectangle(img, (wx, wy), (wx + max(2, width // 200), wy + max(2, height // 120)),
                                  (40, 50, 60), -1)
            x += w + int(width * 0.005)
    # Ground: sidewalks, then the road as a trapezoid towards the vanishing point.
    img[horizon:] = (200, 190, 210)
    road = np.array([[vx - width // 40, horizon], [vx + width // 40, horizon],
                     [int(width * 0.95), height], [int(width * 0.05), height]], np.int32)
    cv2.fillPoly(img, [road], (110, 100, 105))
    for k in range(12):  # dashed centre line, perspective-scaled
        t0, t1 = (k + 0.2) / 12, (k + 0.6) / 12
        y0, y1 = int(horizon + (height - horizon) * t0 ** 2), int(horizon + (height - horizon) * t1 ** 2)
        cv2.line(img, (vx, y0), (vx, y1), (230, 230, 230), max(1, int(width * 0.004 * t1)))
    # Cars: dark boxes on the road, size by distance.
    for _ in range(rng.integers(2, 5)):
        t = rng.uniform(0.15, 0.8)
        y = int(horizon + (height - horizon) * t)
        w = int(width * 0.25 * t)
        x = int(vx + (rng.uniform(-0.6, 0.6)) * width * 0.45 * t) - w // 2
        color = tuple(int(c) for c in rng.integers(20, 200, 3))
        cv2.rectangle(img, (x, y - int(w * 0.6)), (x + w, y), color, -1)
        cv2.rectangle(img, (x + w // 8, y - int(w * 0.55)), (x + w - w // 8, y - int(w * 0.35)), (60, 40, 30), -1)
    # Sensor noise so that nothing is perfectly flat (as in a real camera).
    noise = rng.normal(0.0, 4.0, img.shape).astype(np.int16)
    return np.clip(img.astype(np.int16) + noise, 0, 255).astype(np.uint8)


def sample_indices(count: int, wanted: int) -> list[int]:
    """``min(count, wanted)`` indices spread evenly over ``0..count-1`` (first and last included),
    sorted; empty when either is 0 or less."""
    if count <= 0 or wanted <= 0:
        return []
    if count <= wanted:
        return list(range(count))
    return sorted({int(round(i)) for i in np.linspace(0, count - 1, wanted)})
