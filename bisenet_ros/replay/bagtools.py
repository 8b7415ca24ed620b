"""Write small ROS 2 bags from NumPy arrays (for tests, demos and benchmarks; no ROS needed).

Example: a 10 Hz drive with ground truth, in Humble's sqlite3 format::

    write_image_bag("drive_bag", frames, labels=masks, storage="sqlite3", fps=10)

The image encoding done here is deliberately independent of :mod:`bisenet_ros.codec`, so tests
that replay these bags check the codec against a second implementation.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from bisenet_ros.replay.messages import (
    COMPRESSED_IMAGE, IMAGE, make_compressed_image, make_header, make_image, serialize, typestore,
)

DEFAULT_START_NS = 1_700_000_000_000_000_000
# Bag (receive) time lags the header (capture) stamp, as in a real recording; keeping the two
# different lets tests tell which one an output carries.
DEFAULT_RECEIVE_DELAY_NS = 7_000_000


@dataclasses.dataclass(frozen=True)
class BagMessage:
    """One message for :func:`write_bag`: a typestore message object or raw CDR bytes."""

    topic: str
    msgtype: str
    timestamp: int
    msg: Any = None
    raw: bytes | None = None


def write_bag(path: str | Path, messages: Iterable[BagMessage], *, storage: str = "mcap") -> Path:
    """Write ``messages`` (any order) to a new bag at ``path`` and return the path.

    Args:
        path: Bag directory to create (must not exist).
        messages: Messages; ``raw`` wins over ``msg`` (lets tests store undecodable data).
        storage: ``"mcap"`` or ``"sqlite3"``.
    """
    from rosbags.rosbag2 import StoragePlugin, Writer

    plugin = {"mcap": StoragePlugin.MCAP, "sqlite3": StoragePlugin.SQLITE3}[storage]
    store = typestore()
    writer = Writer(Path(path), version=Writer.VERSION_LATEST, storage_plugin=plugin)
    writer.open()
    conns: dict[str, Any] = {}
    try:
        for message in messages:
            if message.topic not in conns:
                conns[message.topic] = writer.add_connection(message.topic, message.msgtype,
                                                             typestore=store)
            data = message.raw if message.raw is not None else serialize(message.msg)
            writer.write(conns[message.topic], int(message.timestamp), data)
    except BaseException:
        writer.abort()
        raise
    writer.close()
    return Path(path)


def encode_frame(frame: np.ndarray, encoding: str) -> dict[str, Any]:
    """Image message fields for a BGR frame (or a 2-D mono8 array) in ``encoding``.

    Supported: ``bgr8``, ``rgb8``, ``mono8`` (a 3-channel frame is converted to grey).
    """
    frame = np.ascontiguousarray(frame, dtype=np.uint8)
    if encoding == "mono8":
        if frame.ndim == 3:
            import cv2

            frame = cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY)
        height, width = frame.shape
        return {"height": height, "width": width, "encoding": "mono8", "is_bigendian": 0,
                "step": width, "data": frame.reshape(-1)}
    if frame.ndim != 3 or frame.shape[2] != 3:
        raise ValueError(f"{encoding}: expected an H x W x 3 BGR frame, got shape {frame.shape}")
    if encoding == "rgb8":
        frame = np.ascontiguousarray(frame[:, :, ::-1])
    elif encoding != "bgr8":
        raise ValueError(f"encoding {encoding!r}: write_image_bag supports bgr8, rgb8, mono8")
    height, width = frame.shape[:2]
    return {"height": height, "width": width, "encoding": encoding, "is_bigendian": 0,
            "step": width * 3, "data": frame.reshape(-1)}


def image_messages(frames: Iterable[np.ndarray], *, topic: str = "/camera/image_raw",
                   encoding: str = "bgr8", compressed: str | None = None, fps: float = 10.0,
                   start_ns: int = DEFAULT_START_NS,
                   receive_delay_ns: int = DEFAULT_RECEIVE_DELAY_NS,
                   frame_id: str = "camera") -> list[BagMessage]:
    """Image (or CompressedImage) messages for BGR ``frames`` at ``fps``.

    Header stamps are ``start_ns + i / fps``; bag timestamps add ``receive_delay_ns``.

    Args:
        compressed: None for sensor_msgs/Image, or ``"jpeg"``/``"png"`` for CompressedImage.
    """
    import cv2

    out = []
    for index, frame in enumerate(frames):
        stamp = frame_stamp(index, fps=fps, start_ns=start_ns)
        header = make_header(stamp, frame_id)
        if compressed:
            ext = {"jpeg": ".jpg", "jpg": ".jpg", "png": ".png"}[compressed]
            ok, buf = cv2.imencode(ext, np.ascontiguousarray(frame))
            if not ok:
                raise ValueError(f"OpenCV could not encode frame {index} as {compressed}")
            msg = make_compressed_image(header, buf.reshape(-1), "jpeg" if ext == ".jpg" else "png")
            msgtype = COMPRESSED_IMAGE
        else:
            msg = make_image(header, encode_frame(frame, encoding))
            msgtype = IMAGE
        out.append(BagMessage(topic, msgtype, stamp + receive_delay_ns, msg))
    return out


def frame_stamp(index: int, *, fps: float = 10.0, start_ns: int = DEFAULT_START_NS) -> int:
    """Header stamp (ns) :func:`write_image_bag` gives frame ``index``."""
    return int(start_ns + round(index * 1e9 / fps))


def write_image_bag(path: str | Path, frames: Sequence[np.ndarray], *,
                    topic: str = "/camera/image_raw", encoding: str = "bgr8",
                    compressed: str | None = None, storage: str = "mcap", fps: float = 10.0,
                    start_ns: int = DEFAULT_START_NS,
                    receive_delay_ns: int = DEFAULT_RECEIVE_DELAY_NS, frame_id: str = "camera",
                    labels: Sequence[np.ndarray] | None = None,
                    labels_topic: str = "/camera/labels",
                    extra: Iterable[BagMessage] = ()) -> Path:
    """Write a camera bag from BGR frames, optionally with mono8 trainId ground truth.

    Args:
        path: Bag directory to create.
        frames: H x W x 3 uint8 BGR frames.
        topic: Camera topic.
        encoding: ``bgr8``, ``rgb8`` or ``mono8`` for raw images.
        compressed: ``"jpeg"`` or ``"png"`` to write sensor_msgs/CompressedImage instead.
        storage: ``"mcap"`` or ``"sqlite3"``.
        fps: Frame rate of the header stamps.
        start_ns: Stamp of the first frame.
        receive_delay_ns: Bag time minus header stamp.
        frame_id: Header frame id.
        labels: Optional H x W uint8 trainId masks (255 = ignore), one per frame, written as
            mono8 Images on ``labels_topic`` with the same header stamps as the frames.
        labels_topic: Topic of the labels.
        extra: More messages to store (e.g. a corrupt one for a robustness test).

    Returns:
        The bag path.
    """
    messages = image_messages(frames, topic=topic, encoding=encoding, compressed=compressed,
                              fps=fps, start_ns=start_ns, receive_delay_ns=receive_delay_ns,
                              frame_id=frame_id)
    if labels is not None:
        if len(labels) != len(frames):
            raise ValueError(f"{len(labels)} label masks for {len(frames)} frames")
        for index, mask in enumerate(labels):
            stamp = frame_stamp(index, fps=fps, start_ns=start_ns)
            msg = make_image(make_header(stamp, frame_id), encode_frame(mask, "mono8"))
            # Labels land 1 ms after their frame, as a labelling tool replaying the drive would.
            messages.append(BagMessage(labels_topic, IMAGE, stamp + receive_delay_ns + 1_000_000,
                                       msg))
    messages.extend(extra)
    messages.sort(key=lambda m: m.timestamp)
    return write_bag(path, messages, storage=storage)
