"""ROS-free logic of the segmentation node: newest-frame slot, stale-frame policy, statistics.

The node is a thin adapter around these pieces so that they are tested without ROS:

* :class:`LatestFrameSlot` keeps only the newest frame. The subscription callback overwrites it
  and the worker thread takes it, so when the camera is faster than the model, old frames are
  replaced (counted as ``dropped_superseded``) instead of queueing up: latency stays bounded.
* :func:`frame_age_s` / :func:`is_stale` implement the ``max_frame_age`` policy.
* :class:`PipelineStats` counts frames and keeps rates and per-stage latencies for
  ``/diagnostics`` (formatted by :func:`bisenet_ros.outputs.diagnostic_values`).
"""
from __future__ import annotations

import collections
import threading
import time
from typing import Any, Deque, Generic, Mapping, TypeVar

__all__ = ["LatestFrameSlot", "RateMeter", "PipelineStats", "stamp_to_ns", "frame_age_s", "is_stale"]

T = TypeVar("T")


class LatestFrameSlot(Generic[T]):
    """A thread-safe slot holding only the newest item (a one-element queue that overwrites)."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._item: T | None = None
        self._closed = False

    def put(self, item: T) -> bool:
        """Store ``item``, replacing any item not yet taken.

        Returns:
            True when an untaken item was replaced (a frame dropped in favour of a newer one).
        """
        with self._cond:
            replaced = self._item is not None
            self._item = item
            self._cond.notify()
            return replaced

    def take(self, timeout: float | None = None) -> T | None:
        """Remove and return the newest item, waiting up to ``timeout`` s (None: forever).

        Returns:
            The item, or None on timeout or once :meth:`close` was called.
        """
        with self._cond:
            self._cond.wait_for(lambda: self._item is not None or self._closed, timeout)
            item, self._item = self._item, None
            return None if self._closed else item

    def close(self) -> None:
        """Wake up and release every waiting :meth:`take` (used at shutdown)."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    @property
    def closed(self) -> bool:
        return self._closed


def stamp_to_ns(stamp: Any) -> int:
    """Nanoseconds of a ``builtin_interfaces/Time`` (``sec``, ``nanosec``)."""
    return int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec)


def frame_age_s(stamp_ns: int, now_ns: int) -> float | None:
    """Age of a frame in seconds, or None when the stamp is unset (0: driver without stamps)."""
    if stamp_ns <= 0:
        return None
    return (now_ns - stamp_ns) / 1e9


def is_stale(stamp_ns: int, now_ns: int, max_age_s: float) -> bool:
    """Whether a frame is older than ``max_age_s`` (0 or less disables the check).

    A frame without a stamp is never stale: there is nothing to compare, and dropping every frame
    of such a camera would be worse than processing them.
    """
    if max_age_s <= 0:
        return False
    age = frame_age_s(stamp_ns, now_ns)
    return age is not None and age > max_age_s


class RateMeter:
    """Events per second over a sliding time window."""

    def __init__(self, window_s: float = 5.0) -> None:
        self.window_s = window_s
        self._times: Deque[float] = collections.deque()

    def tick(self, now: float | None = None) -> None:
        self._times.append(time.monotonic() if now is None else now)

    def rate(self, now: float | None = None) -> float:
        now = time.monotonic() if now is None else now
        while self._times and self._times[0] < now - self.window_s:
            self._times.popleft()
        if len(self._times) < 2:
            return 0.0
        span = now - self._times[0]
        # n events spread over `span` seconds; use (n - 1) intervals for short bursts.
        return (len(self._times) - 1) / span if span > 0 else 0.0


_COUNTERS = ("frames_received", "frames_processed", "dropped_stale", "dropped_superseded",
             "malformed", "errors")


class PipelineStats:
    """Counters, rates and latencies of the node, safe to update from several threads.

    Args:
        window: number of recent frames the latency means are taken over.
        rate_window_s: window of the input/output rates, in seconds.
    """

    def __init__(self, window: int = 30, rate_window_s: float = 5.0) -> None:
        self._lock = threading.Lock()
        self.counters = {name: 0 for name in _COUNTERS}
        self._since_snapshot = {name: 0 for name in _COUNTERS}
        self._latency: dict[str, Deque[float]] = {}
        self._window = window
        self.input_rate = RateMeter(rate_window_s)
        self.output_rate = RateMeter(rate_window_s)
        self.last_age_ms: float | None = None
        self.last_error: str | None = None

    def count(self, name: str, n: int = 1) -> None:
        """Increment a counter (one of ``frames_received``, ``dropped_stale``, ...)."""
        with self._lock:
            self.counters[name] += n
            self._since_snapshot[name] += n
            if name == "frames_received":
                self.input_rate.tick()

    def record_frame(self, timings_ms: Mapping[str, float], age_ms: float | None = None) -> None:
        """Record one processed frame with its per-stage timings (ms)."""
        with self._lock:
            self.counters["frames_processed"] += 1
            self._since_snapshot["frames_processed"] += 1
            self.output_rate.tick()
            for stage, ms in timings_ms.items():
                self._latency.setdefault(stage, collections.deque(maxlen=self._window)).append(
                    float(ms))
            self.last_age_ms = age_ms
            self.last_error = None

    def record_error(self, message: str) -> None:
        with self._lock:
            self.counters["errors"] += 1
            self._since_snapshot["errors"] += 1
            self.last_error = message

    def snapshot(self) -> dict[str, Any]:
        """Current values; ``recent`` holds counts since the previous snapshot."""
        with self._lock:
            recent = dict(self._since_snapshot)
            self._since_snapshot = {name: 0 for name in _COUNTERS}
            return {
                **self.counters,
                "recent": recent,
                "input_rate_hz": self.input_rate.rate(),
                "output_rate_hz": self.output_rate.rate(),
                "latency_ms": {stage: sum(v) / len(v) for stage, v in self._latency.items() if v},
                "age_ms": self.last_age_ms,
                "last_error": self.last_error,
            }
