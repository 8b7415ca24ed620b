"""Post-processing: network-resolution labels -> camera-resolution label map, colour mask, overlay,
drivable mask and confidence, all in OpenCV and uint8.

Why this is fast (about 5 ms for a 1920 x 1080 frame on two cores, against about 80 ms for the
NumPy code of the reference demo scripts): the argmax already happened at network resolution (in
the graph), so only a single-channel uint8 map is resized, with nearest-neighbour (labels must never
be interpolated); colours come from ``cv2.LUT`` instead of fancy indexing, and the overlay from
``cv2.addWeighted``. Nearest-neighbour resizing only copies pixels, so colouring at network
resolution and resizing the colour mask gives exactly the same image as colouring the full-size
label map, for a sixth of the LUT work at 1080p.
"""
from __future__ import annotations

import cv2
import numpy as np

from bisenet_ros.inference.preprocess import FitGeometry
from bisenet_ros.labels import IGNORE_ID

# INTER_NEAREST_EXACT samples the source pixel whose centre is nearest (like PIL and
# torch 'nearest-exact'); plain INTER_NEAREST is biased by half a pixel towards the top-left,
# which shifts class boundaries when mapping labels back to the camera frame.
_NEAREST = cv2.INTER_NEAREST_EXACT


def crop_to_content(array: np.ndarray, geometry: FitGeometry) -> np.ndarray:
    """The part of a network-sized ``H x W (x C)`` array that shows the camera frame (no padding)."""
    if not geometry.is_padded:
        return array
    rows, cols = geometry.content_slice()
    return array[rows, cols]


def to_camera(array: np.ndarray, geometry: FitGeometry) -> np.ndarray:
    """Map a network-sized array (labels, colours or confidence) back onto the camera frame.

    Args:
        array: ``net_h x net_w`` or ``net_h x net_w x C`` array (uint8 or float32).
        geometry: The geometry the frame was fitted with.

    Returns:
        ``frame_h x frame_w (x C)`` array: padding removed, resized with nearest-neighbour.
    """
    content = crop_to_content(array, geometry)
    frame_w, frame_h = geometry.frame_size
    if (content.shape[1], content.shape[0]) == (frame_w, frame_h):
        return np.ascontiguousarray(content)
    return cv2.resize(content, (frame_w, frame_h), interpolation=_NEAREST)


def mark_padding(array: np.ndarray, geometry: FitGeometry, value: float) -> np.ndarray:
    """A copy of a network-sized array with the letterbox padding set to ``value``."""
    if not geometry.is_padded:
        return array
    out = np.full_like(array, value)
    rows, cols = geometry.content_slice()
    out[rows, cols] = array[rows, cols]
    return out


def colorize(labels: np.ndarray, color_lut: np.ndarray) -> np.ndarray:
    """Colour a label map.

    Args:
        labels: ``H x W`` uint8 class ids.
        color_lut: ``(256, 1, 3)`` uint8 table (see :meth:`bisenet_ros.labels.ClassSet.color_lut`).

    Returns:
        ``H x W x 3`` uint8 colour mask in the table's channel order.
    """
    # cv2.LUT with a 3-channel table needs a 3-channel source: merge the label plane thrice.
    return cv2.LUT(cv2.merge((labels, labels, labels)), color_lut)


def blend(frame: np.ndarray, color: np.ndarray, alpha: float) -> np.ndarray:
    """Overlay ``color`` on ``frame``: ``round(frame * (1 - alpha) + color * alpha)``, uint8."""
    if alpha <= 0.0:
        return frame.copy()
    if alpha >= 1.0:
        return color.copy()
    return cv2.addWeighted(frame, 1.0 - alpha, color, alpha, 0.0)


def binary_mask(labels: np.ndarray, mask_lut: np.ndarray) -> np.ndarray:
    """``H x W`` uint8 mask: 255 where the label's entry in ``mask_lut`` (256,) is 255, else 0."""
    return cv2.LUT(labels, mask_lut)


__all__ = ["IGNORE_ID", "binary_mask", "blend", "colorize", "crop_to_content", "mark_padding", "to_camera"]
