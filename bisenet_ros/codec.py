"""Conversion between ROS 2 image message fields and NumPy arrays, without cv_bridge.

cv_bridge is built against NumPy 1 and breaks under NumPy 2, which current torch environments
bring (ros-perception/vision_opencv#535), so the node and the replay convert messages here.
This module is pure NumPy/OpenCV: it reads the fields of any object shaped like
``sensor_msgs/msg/Image`` (``encoding, height, width, step, is_bigendian, data``) or
``sensor_msgs/msg/CompressedImage`` (``format, data``), so rclpy messages, rosbags messages and
plain test objects all work.

Decoding always yields an ``H x W x 3 uint8`` frame plus its colour order (``"rgb"`` or
``"bgr"``): the engine takes either order, so ``rgb8``/``bgr8`` are passed through without a
colour conversion and everything else (mono, Bayer, YUV) is converted to BGR with OpenCV.
Row padding (``step > width * bytes_per_pixel``) and big-endian 16-bit data are handled.
"""
from __future__ import annotations

import sys
from typing import Any

import cv2
import numpy as np

__all__ = [
    "CodecError", "DECODABLE_ENCODINGS", "ENCODABLE_ENCODINGS", "decode_image",
    "decode_compressed", "encode_image", "image_to_array",
]


class CodecError(ValueError):
    """A message that cannot be converted: unknown encoding, wrong data length, corrupt data."""


def _cv(*names: str) -> int:
    # OpenCV >= 4.x/5.x has self-describing Bayer names (COLOR_BayerRGGB2BGR); older releases only
    # the legacy ones, whose letters are shifted by one pixel (RGGB == legacy "BG").
    for name in names:
        if hasattr(cv2, name):
            return int(getattr(cv2, name))
    raise AttributeError(f"OpenCV lacks all of {names}")  # pragma: no cover


# encoding -> (numpy dtype without byte order, channels in the buffer)
_LAYOUT: dict[str, tuple[str, int]] = {
    "rgb8": ("u1", 3), "bgr8": ("u1", 3), "rgba8": ("u1", 4), "bgra8": ("u1", 4),
    "mono8": ("u1", 1), "8UC1": ("u1", 1), "8UC3": ("u1", 3),
    "mono16": ("u2", 1), "16UC1": ("u2", 1),
    "rgb16": ("u2", 3), "bgr16": ("u2", 3), "rgba16": ("u2", 4), "bgra16": ("u2", 4),
    # packed 4:2:2, two bytes per pixel
    "yuv422": ("u1", 2), "uyvy": ("u1", 2), "yuv422_yuy2": ("u1", 2), "yuyv": ("u1", 2),
    "bayer_rggb8": ("u1", 1), "bayer_bggr8": ("u1", 1),
    "bayer_gbrg8": ("u1", 1), "bayer_grbg8": ("u1", 1),
    "bayer_rggb16": ("u2", 1), "bayer_bggr16": ("u2", 1),
    "bayer_gbrg16": ("u2", 1), "bayer_grbg16": ("u2", 1),
    "32FC1": ("f4", 1),
}

# sensor_msgs/image_encodings: "yuv422" is UYVY byte order, "yuv422_yuy2" is YUYV (as cv_bridge).
_YUV_TO_BGR = {
    "yuv422": cv2.COLOR_YUV2BGR_UYVY, "uyvy": cv2.COLOR_YUV2BGR_UYVY,
    "yuv422_yuy2": cv2.COLOR_YUV2BGR_YUY2, "yuyv": cv2.COLOR_YUV2BGR_YUY2,
}
_BAYER_TO_BGR = {
    "rggb": _cv("COLOR_BayerRGGB2BGR", "COLOR_BayerBG2BGR"),
    "bggr": _cv("COLOR_BayerBGGR2BGR", "COLOR_BayerRG2BGR"),
    "gbrg": _cv("COLOR_BayerGBRG2BGR", "COLOR_BayerGR2BGR"),
    "grbg": _cv("COLOR_BayerGRBG2BGR", "COLOR_BayerGB2BGR"),
}

#: Encodings :func:`decode_image` turns into a colour frame.
DECODABLE_ENCODINGS: tuple[str, ...] = tuple(k for k in _LAYOUT if k != "32FC1")
#: Encodings :func:`encode_image` writes (what the node publishes).
ENCODABLE_ENCODINGS: tuple[str, ...] = ("mono8", "bgr8", "rgb8", "32FC1")
_ENCODE_SHAPES = {"mono8": ("u1", 1), "bgr8": ("u1", 3), "rgb8": ("u1", 3), "32FC1": ("f4", 1)}


def _as_bytes(data: Any) -> np.ndarray:
    """A 1-D uint8 view of a message's ``data`` (bytes, array.array('B'), NumPy array or list)."""
    if isinstance(data, np.ndarray):
        return data.reshape(-1).view(np.uint8) if data.dtype.itemsize == 1 else data.view(np.uint8)
    try:
        return np.frombuffer(data, dtype=np.uint8)
    except TypeError:
        # A plain list of ints (e.g. a message built by hand): copy.
        return np.asarray(data, dtype=np.uint8).reshape(-1)


def image_to_array(msg: Any) -> np.ndarray:
    """The pixel array of an Image message in its own encoding, padding removed, native byte order.

    Args:
        msg: any object with the ``sensor_msgs/msg/Image`` fields.

    Returns:
        ``H x W`` (one channel) or ``H x W x C`` array of the encoding's dtype. It may be a
        read-only view of ``msg.data``.

    Raises:
        CodecError: unknown encoding, or ``step``/``data`` inconsistent with ``width``/``height``.
    """
    encoding = str(msg.encoding)
    if encoding not in _LAYOUT:
        raise CodecError(
            f"unsupported image encoding {encoding!r}; supported: {', '.join(DECODABLE_ENCODINGS)} "
            "(publish one of these, or use a compressed image topic with use_compressed)")
    base, channels = _LAYOUT[encoding]
    height, width, step = int(msg.height), int(msg.width), int(msg.step)
    if height <= 0 or width <= 0:
        raise CodecError(f"{encoding} image has an empty size {width}x{height}")
    itemsize = np.dtype(base).itemsize
    row_bytes = width * channels * itemsize
    if step < row_bytes:
        raise CodecError(
            f"{encoding} image {width}x{height}: step={step} is smaller than one row "
            f"({width} px * {channels * itemsize} bytes = {row_bytes})")
    if step % itemsize:
        raise CodecError(f"{encoding} image: step={step} is not a multiple of {itemsize} bytes")
    buffer = _as_bytes(msg.data)
    expected = step * height
    # Some drivers leave out the padding of the last row; accept that, reject anything else.
    if buffer.size != expected and buffer.size != expected - (step - row_bytes):
        raise CodecError(
            f"{encoding} image {width}x{height} with step {step} needs {expected} data bytes, "
            f"got {buffer.size} (truncated or mislabelled message)")
    if buffer.size != expected:
        buffer = np.concatenate([buffer, np.zeros(step - row_bytes, np.uint8)])
    # Byte order only matters for multi-byte samples; is_bigendian describes the data, not the host.
    dtype = np.dtype(base).newbyteorder(">" if msg.is_bigendian else "<")
    rows = buffer.reshape(height, step)[:, :row_bytes]
    pixels = rows.view(dtype)  # the last axis is contiguous, so a padded view is fine
    if itemsize > 1:
        pixels = pixels.astype(np.dtype(base).newbyteorder("="), copy=False)
    return pixels.reshape(height, width, channels) if channels > 1 else pixels.reshape(height, width)


def _to_uint8(array: np.ndarray) -> np.ndarray:
    # 16-bit -> 8-bit as cv_bridge/rosbags do (scale 255/65535, i.e. x // 257), not a bit shift.
    if array.dtype == np.uint8:
        return array
    return (array // 257).astype(np.uint8)


def decode_image(msg: Any) -> tuple[np.ndarray, str]:
    """Decode a ``sensor_msgs/msg/Image`` into a colour frame for the engine.

    Args:
        msg: any object with the Image fields ``encoding, height, width, step, is_bigendian, data``.

    Returns:
        ``(frame, color_order)``: ``frame`` is ``H x W x 3 uint8`` (C-contiguous), ``color_order``
        is ``"rgb"`` for rgb8/rgba8/rgb16/rgba16 and ``"bgr"`` for everything else (bgr*, mono,
        Bayer and YUV are converted to BGR).

    Raises:
        CodecError: unknown encoding, inconsistent sizes, or odd width for 4:2:2 YUV.
    """
    encoding = str(msg.encoding)
    if encoding == "32FC1":
        raise CodecError("32FC1 (depth/float) images cannot be segmented; subscribe to a colour image")
    pixels = image_to_array(msg)
    if encoding in _YUV_TO_BGR:
        if pixels.shape[1] % 2:
            raise CodecError(f"{encoding} (4:2:2) image needs an even width, got {msg.width}")
        return cv2.cvtColor(np.ascontiguousarray(pixels), _YUV_TO_BGR[encoding]), "bgr"
    if encoding.startswith("bayer_"):
        pattern = encoding[len("bayer_"):-2 if encoding.endswith("16") else -1]
        # Demosaic at full depth (OpenCV supports 16-bit Bayer), then scale to 8 bits.
        bgr = cv2.cvtColor(np.ascontiguousarray(pixels), _BAYER_TO_BGR[pattern])
        return _to_uint8(bgr), "bgr"
    pixels = _to_uint8(pixels)
    if pixels.ndim == 2:
        return cv2.cvtColor(np.ascontiguousarray(pixels), cv2.COLOR_GRAY2BGR), "bgr"
    order = "rgb" if encoding.startswith("rgb") else "bgr"
    if pixels.shape[2] == 4:
        # Drop alpha, keeping the colour order. OpenCV does this ~20x faster than a NumPy copy of
        # the strided [:, :, :3] view (BGRA2BGR and RGBA2RGB are the same operation).
        return cv2.cvtColor(np.ascontiguousarray(pixels), cv2.COLOR_BGRA2BGR), order
    return np.ascontiguousarray(pixels), order


def decode_compressed(msg: Any) -> tuple[np.ndarray, str]:
    """Decode a ``sensor_msgs/msg/CompressedImage`` (JPEG or PNG, as image_transport writes it).

    Args:
        msg: any object with ``format`` and ``data`` fields.

    Returns:
        ``(frame, "bgr")`` with ``frame`` ``H x W x 3 uint8``; grey images are expanded to BGR and
        16-bit PNGs are scaled to 8 bits.

    Raises:
        CodecError: empty or corrupt data, or a format OpenCV cannot decode (e.g. compressedDepth).
    """
    fmt = str(getattr(msg, "format", "") or "")
    if "compresseddepth" in fmt.lower().replace(" ", ""):
        raise CodecError(
            f"compressed format {fmt!r} is a depth image (compressedDepth); subscribe to a colour "
            "image topic")
    buffer = _as_bytes(msg.data)
    if buffer.size == 0:
        raise CodecError(f"compressed image ({fmt or 'no format'}) has no data")
    image = cv2.imdecode(buffer, cv2.IMREAD_UNCHANGED)
    if image is None:
        raise CodecError(
            f"compressed image ({fmt or 'no format'}, {buffer.size} bytes) could not be decoded: "
            "corrupt or truncated JPEG/PNG data")
    image = _to_uint8(image)
    if image.ndim == 2:
        image = cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
    elif image.shape[2] == 4:
        image = cv2.cvtColor(image, cv2.COLOR_BGRA2BGR)
    return np.ascontiguousarray(image), "bgr"


def encode_image(array: np.ndarray, encoding: str) -> dict[str, Any]:
    """The ``sensor_msgs/msg/Image`` fields (without ``header``) holding ``array``.

    Args:
        array: ``H x W`` uint8 (mono8), ``H x W x 3`` uint8 (bgr8/rgb8, already in that order) or
            ``H x W`` float32 (32FC1).
        encoding: one of :data:`ENCODABLE_ENCODINGS`.

    Returns:
        dict with ``height, width, encoding, is_bigendian, step, data`` (``data`` a 1-D uint8 NumPy
        array, no row padding, host byte order as stated by ``is_bigendian``). The caller adds
        ``header`` and builds its own message class.

    Raises:
        CodecError: unknown encoding or an array whose shape/dtype does not fit it.
    """
    if encoding not in _ENCODE_SHAPES:
        raise CodecError(
            f"cannot encode {encoding!r}; supported: {', '.join(ENCODABLE_ENCODINGS)}")
    base, channels = _ENCODE_SHAPES[encoding]
    array = np.asarray(array)
    shape_ok = array.ndim == 2 if channels == 1 else (array.ndim == 3 and array.shape[2] == channels)
    if not shape_ok or array.dtype != np.dtype(base):
        want = "H x W" if channels == 1 else f"H x W x {channels}"
        raise CodecError(
            f"{encoding} needs a {want} {np.dtype(base).name} array, got shape {array.shape} "
            f"dtype {array.dtype}")
    height, width = array.shape[:2]
    data = np.ascontiguousarray(array).reshape(-1).view(np.uint8)
    return {
        "height": int(height), "width": int(width), "encoding": encoding,
        "is_bigendian": int(sys.byteorder == "big"),
        "step": int(width * channels * np.dtype(base).itemsize), "data": data,
    }
