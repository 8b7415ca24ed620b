"""TEST DOUBLE of the ``tf2_ros`` Python surface used by ``bisenet_ros/node.py`` (ROS 2 Humble/Jazzy).

What it implements, with tf2_ros's signatures (``tf2_ros_py/tf2_ros/buffer.py``,
``transform_listener.py``; the exceptions come from ``tf2_py``):

* ``tf2_ros.Buffer(cache_time=None, node=None)``: ``set_transform(transform, authority)``,
  ``set_transform_static(transform, authority)``, ``lookup_transform(target_frame, source_frame,
  time, timeout=Duration())`` returning a ``geometry_msgs/TransformStamped`` whose
  ``header.frame_id`` is the target, ``child_frame_id`` the source and whose transform maps
  points of the source frame into the target frame; ``can_transform`` likewise (a bool).
* Time semantics as tf2: ``Time()`` (zero) asks for the latest common time; static transforms
  hold at every time; a dynamic transform asked for outside the stored interval raises
  ``ExtrapolationException``. Deviation: between two stored dynamic transforms the nearest one
  is used instead of tf2's interpolation (the node's tests use static mounts).
* ``tf2_ros.TransformListener(buffer, node, *, spin_thread=False, qos=None, static_qos=None,
  tf_topic='/tf', tf_static_topic='/tf_static', static_only=False)``: subscribes the node to
  ``/tf`` (volatile) and ``/tf_static`` (transient local, depth 100) like the real one.
* ``tf2_ros.TransformException`` and its subclasses ``LookupException`` (unknown frame),
  ``ConnectivityException`` (frames in two unconnected trees), ``ExtrapolationException``,
  ``InvalidArgumentException``, ``TimeoutException``.
"""
from __future__ import annotations

import threading
import types
from typing import Any

import numpy as np

from bisenet_ros.bev import Pose, matrix_to_quaternion
from ros_double import rclpy_double
from ros_double.messages import rclpy_style_class


class TransformException(Exception):
    """tf2.TransformException: the base of every lookup error."""


class LookupException(TransformException):
    pass


class ConnectivityException(TransformException):
    pass


class ExtrapolationException(TransformException):
    pass


class InvalidArgumentException(TransformException):
    pass


class TimeoutException(TransformException):
    pass


def _pose(transform: Any) -> Pose:
    t, q = transform.translation, transform.rotation
    return Pose.from_transform((t.x, t.y, t.z), (q.x, q.y, q.z, q.w))


def _stamp_ns(stamp: Any) -> int:
    return int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec)


class Buffer:
    """tf2_ros.Buffer (see the module docstring)."""

    def __init__(self, cache_time: Any = None, node: Any = None) -> None:
        self._lock = threading.Lock()
        # child frame -> (parent frame, static, [(stamp_ns, Pose)] sorted by stamp)
        self._edges: dict[str, tuple[str, bool, list[tuple[int, Pose]]]] = {}

    def set_transform(self, transform: Any, authority: str) -> bool:
        return self._set(transform, static=False)

    def set_transform_static(self, transform: Any, authority: str) -> bool:
        return self._set(transform, static=True)

    def _set(self, transform: Any, *, static: bool) -> bool:
        parent = transform.header.frame_id.lstrip("/")
        child = transform.child_frame_id.lstrip("/")
        if not parent or not child or parent == child:
            return False  # tf2 logs and ignores such transforms
        with self._lock:
            entry = self._edges.get(child)
            samples = [] if entry is None or static or entry[0] != parent else entry[2]
            samples = sorted(samples + [(_stamp_ns(transform.header.stamp), _pose(transform.transform))],
                             key=lambda s: s[0])
            self._edges[child] = (parent, static, samples[-1:] if static else samples)
        return True

    def _chain(self, frame: str) -> list[str]:
        chain = [frame]
        while chain[-1] in self._edges and len(chain) < 1000:
            chain.append(self._edges[chain[-1]][0])
        return chain

    def _edge_pose(self, child: str, time_ns: int) -> tuple[Pose, int | None]:
        parent, static, samples = self._edges[child]
        if static:
            return samples[-1][1], None
        if time_ns == 0:
            return samples[-1][1], samples[-1][0]
        first, last = samples[0][0], samples[-1][0]
        if time_ns > last:
            raise ExtrapolationException(
                f"Lookup would require extrapolation into the future.  Requested time "
                f"{time_ns / 1e9:.6f} but the latest data is at time {last / 1e9:.6f}, when "
                f"looking up transform from frame [{child}] to frame [{parent}]")
        if time_ns < first:
            raise ExtrapolationException(
                f"Lookup would require extrapolation into the past.  Requested time "
                f"{time_ns / 1e9:.6f} but the earliest data is at time {first / 1e9:.6f}, when "
                f"looking up transform from frame [{child}] to frame [{parent}]")
        nearest = min(samples, key=lambda s: abs(s[0] - time_ns))
        return nearest[1], nearest[0]

    def _lookup(self, target_frame: str, source_frame: str, time_ns: int) -> tuple[Pose, int]:
        target, source = target_frame.lstrip("/"), source_frame.lstrip("/")
        known = set(self._edges) | {p for p, _, _ in self._edges.values()}
        for name, role in ((target, "target_frame"), (source, "source_frame")):
            if name not in known:
                raise LookupException(
                    f'"{name}" passed to lookupTransform argument {role} does not exist. ')
        up_source, up_target = self._chain(source), self._chain(target)
        common = next((f for f in up_source if f in up_target), None)
        if common is None:
            raise ConnectivityException(
                f"Could not find a connection between '{target}' and '{source}' because they are "
                "not part of the same tree.Tf has two or more unconnected trees.")
        stamps: list[int] = []

        def to_common(chain: list[str]) -> Pose:
            pose = Pose(np.eye(3), np.zeros(3))
            for child in chain[:chain.index(common)]:
                edge, stamp = self._edge_pose(child, time_ns)
                if stamp is not None:
                    stamps.append(stamp)
                pose = edge.compose(pose)
            return pose

        source_in_common = to_common(up_source)
        target_in_common = to_common(up_target)
        result = target_in_common.inverse().compose(source_in_common)
        return result, (time_ns if time_ns else (min(stamps) if stamps else 0))

    def lookup_transform(self, target_frame: str, source_frame: str, time: Any,
                         timeout: Any = None) -> Any:
        with self._lock:
            pose, stamp_ns = self._lookup(target_frame, source_frame, int(time.nanoseconds))
        msg = rclpy_style_class("geometry_msgs/msg/TransformStamped")()
        msg.header.frame_id = target_frame
        msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(stamp_ns, 1_000_000_000)
        msg.child_frame_id = source_frame
        t = msg.transform.translation
        t.x, t.y, t.z = (float(v) for v in pose.translation)
        q = msg.transform.rotation
        q.x, q.y, q.z, q.w = matrix_to_quaternion(pose.rotation)
        return msg

    def can_transform(self, target_frame: str, source_frame: str, time: Any,
                      timeout: Any = None, return_debug_tuple: bool = False) -> Any:
        try:
            with self._lock:
                self._lookup(target_frame, source_frame, int(time.nanoseconds))
        except TransformException as err:
            return (False, str(err)) if return_debug_tuple else False
        return (True, "") if return_debug_tuple else True


class TransformListener:
    """tf2_ros.TransformListener: feeds ``buffer`` from ``/tf`` and ``/tf_static`` on ``node``."""

    def __init__(self, buffer: Buffer, node: Any, *, spin_thread: bool = False, qos: Any = None,
                 static_qos: Any = None, tf_topic: str = "/tf",
                 tf_static_topic: str = "/tf_static", static_only: bool = False) -> None:
        qos_mod = rclpy_double
        tf_message = rclpy_style_class("tf2_msgs/msg/TFMessage")
        if static_qos is None:
            static_qos = qos_mod.QoSProfile(depth=100,
                                            durability=qos_mod.DurabilityPolicy.TRANSIENT_LOCAL,
                                            history=qos_mod.HistoryPolicy.KEEP_LAST)
        self.buffer = buffer
        self.node = node
        if not static_only:
            if qos is None:
                qos = qos_mod.QoSProfile(depth=100, durability=qos_mod.DurabilityPolicy.VOLATILE,
                                         history=qos_mod.HistoryPolicy.KEEP_LAST)
            self.tf_sub = node.create_subscription(tf_message, tf_topic, self.callback, qos)
        self.tf_static_sub = node.create_subscription(tf_message, tf_static_topic,
                                                      self.static_callback, static_qos)

    def callback(self, data: Any) -> None:
        for transform in data.transforms:
            self.buffer.set_transform(transform, "default_authority")

    def static_callback(self, data: Any) -> None:
        for transform in data.transforms:
            self.buffer.set_transform_static(transform, "default_authority")


def build_modules() -> dict[str, types.ModuleType]:
    """``tf2_ros``, ``tf2_ros.buffer`` and ``tf2_ros.transform_listener`` modules."""
    exceptions = {cls.__name__: cls for cls in (
        TransformException, LookupException, ConnectivityException, ExtrapolationException,
        InvalidArgumentException, TimeoutException)}
    buffer_module = rclpy_double._module("tf2_ros.buffer", Buffer=Buffer)
    listener_module = rclpy_double._module("tf2_ros.transform_listener",
                                           TransformListener=TransformListener)
    package = rclpy_double._module("tf2_ros", Buffer=Buffer, TransformListener=TransformListener,
                                   buffer=buffer_module, transform_listener=listener_module,
                                   **exceptions)
    package.__path__ = []
    return {"tf2_ros": package, "tf2_ros.buffer": buffer_module,
            "tf2_ros.transform_listener": listener_module}
