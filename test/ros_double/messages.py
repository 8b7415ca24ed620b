"""Real ROS 2 message definitions for tests, from the rosbags typestore (ROS 2 Humble).

This is part of a TEST DOUBLE: ROS 2 cannot be installed here, so the message classes the node
sees in tests are built from the ``rosbags`` typestore's copies of the real ``.msg`` definitions
(sensor_msgs, std_msgs, builtin_interfaces, diagnostic_msgs, rcl_interfaces, nav_msgs,
geometry_msgs, tf2_msgs), plus
``vision_msgs/LabelInfo`` and ``VisionClass`` registered from their ``.msg`` text (vision_msgs 4.x,
as shipped with Humble and Jazzy).

:func:`rclpy_style_class` wraps a typestore class so that it behaves like an rclpy message class
where the node relies on it: every field has a default (zero, empty, nested default message),
keyword construction, unknown fields rejected, ``uint8[]`` fields accept only ``bytes`` or
``array.array('B')`` (rclpy rejects NumPy arrays there), ``int8[]`` fields only
``array.array('b')`` or a list of ints, and ``byte`` fields/constants are ``bytes``.
"""
from __future__ import annotations

import array
import functools
from typing import Any

# The same typestore the replay writes bags with: Humble definitions plus vision_msgs
# LabelInfo/VisionClass registered from their .msg text.
from bisenet_ros.replay.messages import typestore


# rclpy stores these sequences as array.array of this typecode.
_ARRAY_CODES = {"uint8": "B", "int8": "b"}
_ZERO = {"bool": False, "string": "", "float32": 0.0, "float64": 0.0, "byte": b"\x00",
         "char": 0}


def _default(store: Any, spec: tuple) -> Any:
    kind, detail = spec
    kind = getattr(kind, "name", kind)
    if kind == "BASE":
        return _ZERO.get(detail[0], 0)
    if kind == "NAME":
        return rclpy_style_class(detail)()
    if kind == "SEQUENCE":
        inner = detail[0]
        if getattr(inner[0], "name", "") == "BASE" and inner[1][0] in _ARRAY_CODES:
            return array.array(_ARRAY_CODES[inner[1][0]])
        return []
    if kind == "ARRAY":
        inner, size = detail
        return [_default(store, inner) for _ in range(size)]
    raise TypeError(f"unhandled field spec {spec}")  # pragma: no cover


@functools.lru_cache(maxsize=None)
def rclpy_style_class(msgtype: str) -> type:
    """A class behaving like the rclpy-generated class of ``msgtype`` (see module docstring)."""
    store = typestore()
    base = store.types[msgtype]
    msgdef = store.get_msgdef(msgtype)
    fields = dict(msgdef.fields)

    def __init__(self: Any, **kwargs: Any) -> None:
        if msgtype == "geometry_msgs/msg/Quaternion":
            kwargs.setdefault("w", 1.0)  # the .msg default (float64 w 1), which rclpy applies
        unknown = set(kwargs) - set(fields)
        # rclpy: "Invalid arguments passed to constructor: ..." (an AssertionError)
        assert not unknown, f"Invalid arguments passed to constructor: {', '.join(sorted(unknown))}"
        values = {name: kwargs[name] if name in kwargs else _default(store, spec)
                  for name, spec in fields.items()}
        base.__init__(self, **values)

    def __setattr__(self: Any, name: str, value: Any) -> None:
        spec = fields.get(name)
        if spec is not None and getattr(spec[0], "name", "") == "SEQUENCE":
            inner = spec[1][0]
            kind = inner[1][0] if getattr(inner[0], "name", "") == "BASE" else None
            if kind == "uint8":
                # rclpy's setter: array.array('B') or a Sequence of ints; a NumPy array fails its
                # assertion, and a bytes object is converted.
                assert isinstance(value, (array.array, bytes, list)), (
                    f"The '{name}' field must be a set or sequence and each value of type 'int' "
                    f"and each unsigned integer in [0, 255] (got {type(value).__name__})")
                if not isinstance(value, array.array):
                    value = array.array("B", value)
            elif kind == "int8":
                # int8[] (OccupancyGrid.data): array.array('b') or a list of ints in [-128, 127].
                assert (isinstance(value, array.array) and value.typecode == "b") or (
                    isinstance(value, list) and all(-128 <= v <= 127 for v in value)), (
                    f"The '{name}' field must be a set or sequence and each value of type 'int' "
                    f"and each integer in [-128, 127] (got {type(value).__name__})")
                if not isinstance(value, array.array):
                    value = array.array("b", value)
        if spec is not None and getattr(spec[0], "name", "") == "BASE" and spec[1][0] == "byte":
            assert isinstance(value, bytes) and len(value) == 1, (
                f"The '{name}' field must be of type 'bytes' of length 1")
        object.__setattr__(self, name, value)

    namespace = {"__init__": __init__, "__setattr__": __setattr__, "__msgtype__": msgtype}
    cls = type(msgtype.rsplit("/", 1)[-1], (base,), namespace)
    # rclpy exposes 'byte' constants as bytes (the typestore as ints).
    if msgtype == "diagnostic_msgs/msg/DiagnosticStatus":
        for name in ("OK", "WARN", "ERROR", "STALE"):
            setattr(cls, name, bytes([getattr(base, name)]))
    return cls


def to_store_message(msg: Any) -> Any:
    """Convert an rclpy-style message (or nested list) back to the plain typestore class, e.g.
    to serialize it with :meth:`typestore().serialize_cdr` and prove it is a valid message."""
    store = typestore()
    msgtype = getattr(msg, "__msgtype__", None)
    if msgtype is None:
        return msg
    fields = dict(store.get_msgdef(msgtype).fields)
    values = {}
    for name in fields:
        value = getattr(msg, name)
        if isinstance(value, list):
            value = [to_store_message(v) for v in value]
        elif isinstance(value, array.array):
            import numpy as np

            value = np.frombuffer(value, dtype=np.int8 if value.typecode == "b" else np.uint8).copy()
        elif isinstance(value, bytes) and len(value) == 1:
            value = value[0]
        else:
            value = to_store_message(value)
        values[name] = value
    return store.types[msgtype](**values)
