"""ROS 2 message classes for the replay, from the ``rosbags`` typestore (no ROS installation).

The typestore carries the real ROS 2 Humble definitions of ``sensor_msgs``, ``std_msgs`` and
``builtin_interfaces``. ``vision_msgs`` is not part of it, so ``LabelInfo`` and ``VisionClass``
are registered here from their ``.msg`` text (vision_msgs 4.x, the version shipped with Humble
and Jazzy), which gives the output bag the same type names, definitions and RIHS01 hashes as a
bag recorded from the live node.
"""
from __future__ import annotations

import functools
from typing import Any, Mapping, Sequence

import numpy as np

from bisenet_ros.pipeline import stamp_to_ns  # noqa: F401  (re-exported for the replay)

IMAGE = "sensor_msgs/msg/Image"
COMPRESSED_IMAGE = "sensor_msgs/msg/CompressedImage"
LABEL_INFO = "vision_msgs/msg/LabelInfo"
OCCUPANCY_GRID = "nav_msgs/msg/OccupancyGrid"
VISION_CLASS = "vision_msgs/msg/VisionClass"
IMAGE_TYPES = frozenset({IMAGE, COMPRESSED_IMAGE})

# Verbatim field definitions of vision_msgs/msg/VisionClass.msg and LabelInfo.msg (comments
# dropped: they are not part of the type hash).
VISION_CLASS_MSG = """
uint16 class_id
string class_name
"""
LABEL_INFO_MSG = """
std_msgs/Header header
vision_msgs/VisionClass[] class_map
float32 threshold
"""


@functools.lru_cache(maxsize=None)
def typestore() -> Any:
    """The shared Humble typestore with the vision_msgs types registered.

    Cached: building a typestore generates (de)serializer code, which takes a noticeable time.
    Typestores are safe to share between threads once built.
    """
    from rosbags.typesys import Stores, get_types_from_msg, get_typestore

    store = get_typestore(Stores.ROS2_HUMBLE)
    types: dict[str, Any] = {}
    types.update(get_types_from_msg(VISION_CLASS_MSG, VISION_CLASS))
    types.update(get_types_from_msg(LABEL_INFO_MSG, LABEL_INFO))
    store.register(types)
    return store


def make_header(stamp_ns: int, frame_id: str) -> Any:
    """A ``std_msgs/Header`` for a stamp in nanoseconds."""
    types = typestore().types
    sec, nanosec = divmod(int(stamp_ns), 1_000_000_000)
    return types["std_msgs/msg/Header"](
        stamp=types["builtin_interfaces/msg/Time"](sec=sec, nanosec=nanosec), frame_id=frame_id)


def make_image(header: Any, fields: Mapping[str, Any]) -> Any:
    """A ``sensor_msgs/Image`` from the codec's fields dict (height, width, encoding, ...)."""
    data = np.ascontiguousarray(np.asarray(fields["data"], dtype=np.uint8).reshape(-1))
    return typestore().types[IMAGE](
        header=header, height=int(fields["height"]), width=int(fields["width"]),
        encoding=str(fields["encoding"]), is_bigendian=int(fields.get("is_bigendian", 0)),
        step=int(fields["step"]), data=data)


def make_compressed_image(header: Any, data: bytes | np.ndarray, fmt: str) -> Any:
    """A ``sensor_msgs/CompressedImage`` (``fmt`` e.g. ``"jpeg"`` or ``"png"``)."""
    array = np.frombuffer(data, dtype=np.uint8) if isinstance(data, (bytes, bytearray)) else data
    return typestore().types[COMPRESSED_IMAGE](
        header=header, format=fmt, data=np.ascontiguousarray(array, dtype=np.uint8).reshape(-1))


def make_label_info(header: Any, class_map: Mapping[int, str] | list[tuple[int, str]],
                    threshold: float = 0.0) -> Any:
    """A ``vision_msgs/LabelInfo`` mapping class id -> class name."""
    types = typestore().types
    items = class_map.items() if isinstance(class_map, Mapping) else class_map
    classes = [types[VISION_CLASS](class_id=int(i), class_name=str(n)) for i, n in items]
    return types[LABEL_INFO](header=header, class_map=classes, threshold=float(threshold))


def make_occupancy_grid(stamp_ns: int, frame_id: str, fields: Mapping[str, Any]) -> Any:
    """A ``nav_msgs/OccupancyGrid`` from :func:`bisenet_ros.bev.occupancy_grid_fields`
    (``info.map_load_time`` = the stamp, as the node sets it)."""
    types = typestore().types
    header = make_header(stamp_ns, frame_id)
    position = types["geometry_msgs/msg/Point"](*fields["origin_position"])
    orientation = types["geometry_msgs/msg/Quaternion"](*fields["origin_orientation"])
    info = types["nav_msgs/msg/MapMetaData"](
        map_load_time=header.stamp, resolution=float(fields["resolution"]),
        width=int(fields["width"]), height=int(fields["height"]),
        origin=types["geometry_msgs/msg/Pose"](position=position, orientation=orientation))
    data = np.ascontiguousarray(np.asarray(fields["data"], dtype=np.int8).reshape(-1))
    return types[OCCUPANCY_GRID](header=header, info=info, data=data)


def make_camera_info(header: Any, *, width: int, height: int, k: Any,
                     d: Any = (0.0, 0.0, 0.0, 0.0, 0.0), distortion_model: str = "plumb_bob",
                     p: Any = None) -> Any:
    """A ``sensor_msgs/CameraInfo`` of an unrectified camera (R = identity; P = [K | 0] by
    default), no binning and no ROI."""
    types = typestore().types
    k = np.asarray(k, dtype=np.float64).reshape(3, 3)
    p = np.hstack([k, np.zeros((3, 1))]) if p is None else np.asarray(p, dtype=np.float64)
    return types["sensor_msgs/msg/CameraInfo"](
        header=header, height=int(height), width=int(width), distortion_model=distortion_model,
        d=np.asarray(d, dtype=np.float64).reshape(-1), k=k.reshape(-1), r=np.eye(3).reshape(-1),
        p=p.reshape(-1), binning_x=0, binning_y=0,
        roi=types["sensor_msgs/msg/RegionOfInterest"](x_offset=0, y_offset=0, height=0, width=0,
                                                      do_rectify=False))


def make_tf_message(transforms: Sequence[tuple[str, str, Sequence[float], Sequence[float]]],
                    stamp_ns: int = 0) -> Any:
    """A ``tf2_msgs/TFMessage`` from ``(parent, child, translation xyz (m), quaternion xyzw)``."""
    types = typestore().types
    return types["tf2_msgs/msg/TFMessage"](transforms=[
        types["geometry_msgs/msg/TransformStamped"](
            header=make_header(stamp_ns, parent), child_frame_id=child,
            transform=types["geometry_msgs/msg/Transform"](
                translation=types["geometry_msgs/msg/Vector3"](*(float(v) for v in xyz)),
                rotation=types["geometry_msgs/msg/Quaternion"](*(float(v) for v in q))))
        for parent, child, xyz, q in transforms])


def serialize(msg: Any) -> bytes | memoryview:
    """CDR-serialize a typestore message object."""
    return typestore().serialize_cdr(msg, msg.__msgtype__)


def deserialize(raw: bytes | memoryview, msgtype: str) -> Any:
    """CDR-deserialize raw bag data into a typestore message object."""
    return typestore().deserialize_cdr(raw, msgtype)


def serialize_image_parts(msg: Any) -> tuple[bytes, np.ndarray] | None:
    """CDR of a ``sensor_msgs/Image`` as ``(head, data)``: ``head + data`` is :func:`serialize`.

    The pixel buffer is returned as is (no copy): the bag writer can write it straight to the
    file. ``data`` is the message's last field and a ``uint8`` sequence, so its CDR is a 4-byte
    length then the bytes, with no padding after; ``head`` is the CDR of the message with empty
    data less that length, plus the real length. None when ``msg`` is not an Image with a
    contiguous 1-D ``uint8`` array as data (then use :func:`serialize`).
    """
    data = getattr(msg, "data", None)
    if (getattr(msg, "__msgtype__", None) != IMAGE or not isinstance(data, np.ndarray)
            or data.dtype != np.uint8 or data.ndim != 1 or not data.flags.c_contiguous):
        return None
    empty = type(msg)(header=msg.header, height=msg.height, width=msg.width,
                      encoding=msg.encoding, is_bigendian=msg.is_bigendian, step=msg.step,
                      data=np.empty(0, np.uint8))
    head = bytes(serialize(empty))
    return head[:-4] + len(data).to_bytes(4, "little"), data
