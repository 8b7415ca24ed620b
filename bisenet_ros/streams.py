"""ROS-free state of each camera the node serves, and one engine call for a batch of frames.

The node (:mod:`bisenet_ros.node`) only wires: per camera it creates subscriptions and
publishers around a :class:`CameraStream`, which holds everything else about that camera:

* its counters, rates and latencies (:class:`~bisenet_ros.pipeline.PipelineStats`) and the
  frames lost before the node (:class:`~bisenet_ros.transport.FrameGapEstimator`), which make
  its own ``/diagnostics`` entry;
* its ``visualization_rate`` limit, so one camera's viewers never use up another's;
* its latest CameraInfo and the camera model made from it (cached per message);
* log throttling per camera and cause: rclpy throttles per call site, which would let one
  broken camera hide every other camera's problems.

:func:`segment_frames` runs one batch on the engine (``Segmenter.segment_batch`` when it has
one, a loop otherwise) and keeps a bad frame from failing the others. :class:`EngineStats` is
the shared engine's own ``/diagnostics`` entry when several cameras share it.
"""
from __future__ import annotations

import collections
import threading
import time
from typing import Any, Deque, Mapping, Sequence

from bisenet_ros import bev, outputs
from bisenet_ros.pipeline import PipelineStats, RateLimiter
from bisenet_ros.transport import FrameGapEstimator, GapReport

__all__ = ["CameraStream", "segment_frames", "EngineStats"]


class CameraStream:
    """One camera served by the node, without ROS.

    Args:
        name: the camera name (its key in the scheduler).
        visualization_rate: most visualization frames per second for this camera (Hz, > 0).
        rectified: project the grid with CameraInfo P (rectified images) instead of K and D.
        log_period_s: the shortest time between two log lines of one cause for this camera
            (malformed input, stale frames, engine errors): a broken camera at 30 Hz must not
            flood the log, but the first line of a cause is written at once.
        named_in_logs: start log lines with the camera name (False: the only camera).
    """

    def __init__(self, name: str, *, visualization_rate: float, rectified: bool = False,
                 log_period_s: float = 5.0, named_in_logs: bool = True) -> None:
        self.name = name
        self._named = named_in_logs
        self.stats = PipelineStats()
        self.gaps = FrameGapEstimator()
        self.visualization = RateLimiter(visualization_rate)
        self.rectified = rectified
        self.camera_info: Any = None  # set by the subscription callback: one reference assignment
        self._model: tuple[Any, bev.CameraModel] | None = None
        self._log_period_s = log_period_s
        self._logged: dict[str, float] = {}
        self._log_lock = threading.Lock()

    @property
    def prefix(self) -> str:
        """What log lines about this camera start with, e.g. ``"camera front: "`` (or ``""``)."""
        return f"camera {self.name}: " if self._named else ""

    def received(self, stamp_ns: int) -> GapReport | None:
        """Count one received message (header stamp in ns); a report when frames went missing
        before it (see :class:`~bisenet_ros.transport.FrameGapEstimator`)."""
        self.stats.count("frames_received")
        return self.gaps.observe(stamp_ns)

    def should_log(self, cause: str, period_s: float | None = None) -> bool:
        """Whether a log line about ``cause`` may be written now (the first one always may)."""
        period = self._log_period_s if period_s is None else period_s
        now = time.monotonic()
        with self._log_lock:
            if now - self._logged.get(cause, -1e18) < period:
                return False
            self._logged[cause] = now
            return True

    def wanted_topics(self, subscribers: Mapping[str, int]) -> tuple[list[str], list[str]]:
        """Planner and visualization topics to build for this camera's frame.

        The mask is always published (planners rely on it); other outputs only cost time when
        somebody listens, and visualization topics at most ``visualization_rate`` per second.

        Args:
            subscribers: output topic -> number of subscribers now.
        """
        wanted = [t for t, n in subscribers.items() if t == "mask" or n > 0]
        planner = [t for t in outputs.PLANNER_TOPICS if t in wanted]
        visual = [t for t in outputs.VISUALIZATION_TOPICS if t in wanted]
        if visual and not self.visualization.ready():
            visual = []
        return planner, visual

    def camera_model(self) -> tuple[bev.CameraModel | None, str, str]:
        """The camera model from the latest CameraInfo: ``(model, "", "")``, or ``(None,
        counter, problem)`` with the grid counter to count and the problem to log."""
        info = self.camera_info
        if info is None:
            return None, "grid_no_camera_info", "no CameraInfo received yet"
        if self._model is not None and self._model[0] is info:
            return self._model[1], "", ""
        try:
            model = bev.CameraModel.from_camera_info(info, rectified=self.rectified)
        except bev.BevError as err:
            return None, "grid_invalid", f"CameraInfo: {err}"
        self._model = (info, model)
        return model, "", ""

    def snapshot(self) -> dict[str, Any]:
        """Statistics and frame-gap values for this camera's ``/diagnostics`` entry."""
        return {**self.stats.snapshot(), **self.gaps.snapshot()}


def segment_frames(engine: Any, frames: Sequence[Any], color_orders: Sequence[str],
                   wanted: set[str]) -> list[Any]:
    """Run one batch of frames on ``engine``; one result or exception per frame, in order.

    ``engine.segment_batch`` runs the whole batch in one call where the engine has it (a
    stand-in engine without it runs frame by frame). When the batch call rejects a frame
    (``ValueError``: an empty or huge image), the frames are run one by one, so only the bad
    frame fails and every other camera still gets its outputs.

    Args:
        engine: a :class:`~bisenet_ros.inference.Segmenter` (or anything with its contract).
        frames: ``H x W x 3`` uint8 frames; sizes may differ.
        color_orders: ``"rgb"`` or ``"bgr"`` per frame.
        wanted: engine outputs to compute (the union of what the cameras need).

    Returns:
        Per frame, a ``SegmentationResult`` or the ``Exception`` that frame raised.

    Raises:
        Exception: what the batch call raises other than ``ValueError`` (a backend failure,
            not a bad frame): the caller fails the whole batch.
    """
    batch = getattr(engine, "segment_batch", None)
    if batch is not None and len(frames) > 1:
        try:
            return list(batch(list(frames), list(color_orders), outputs=wanted))
        except ValueError:
            pass  # find the bad frame below; the others still run
    results: list[Any] = []
    for frame, order in zip(frames, color_orders):
        try:
            results.append(engine(frame, color_order=order, outputs=wanted))
        except Exception as err:  # noqa: BLE001 - handed back per frame, counted by the caller
            results.append(err)
    return results


class EngineStats:
    """Batches run by the engine that several cameras share (its own ``/diagnostics`` entry).

    Args:
        window: number of recent batches the means are taken over.
    """

    def __init__(self, window: int = 30) -> None:
        self._lock = threading.Lock()
        self.batches = 0
        self.frames = 0
        self.errors = 0
        self.last_error: str | None = None
        self._sizes: Deque[int] = collections.deque(maxlen=window)
        self._ms: Deque[float] = collections.deque(maxlen=window)

    def record_batch(self, size: int, engine_ms: float, error: str | None = None) -> None:
        """One engine call of ``size`` frames that took ``engine_ms`` (with its error, if any)."""
        with self._lock:
            self.batches += 1
            self.frames += size
            self._sizes.append(size)
            self._ms.append(engine_ms)
            if error is not None:
                self.errors += 1
            self.last_error = error

    def diagnostic(self, engine: Mapping[str, Any] | None = None) -> tuple[int, str, list[tuple[str, str]]]:
        """``(level, message, values)`` for the engine's ``/diagnostics`` entry.

        Values: ``batches``, ``frames_processed``, ``errors``, ``mean_batch_size`` and
        ``latency_batch_ms`` (means over the recent window), then the engine provenance keys of
        :func:`bisenet_ros.outputs.engine_values`.
        """
        with self._lock:
            size = sum(self._sizes) / len(self._sizes) if self._sizes else 0.0
            ms = sum(self._ms) / len(self._ms) if self._ms else 0.0
            values = [("batches", str(self.batches)), ("frames_processed", str(self.frames)),
                      ("errors", str(self.errors)), ("mean_batch_size", f"{size:.2f}"),
                      ("latency_batch_ms", f"{ms:.2f}")]
            error, batches = self.last_error, self.batches
        values += outputs.engine_values(engine or {})
        if error:
            return outputs.ERROR, f"inference failing: {error}", values
        if batches == 0:
            return outputs.WARN, "no batch run yet (no camera has sent a frame)", values
        return outputs.OK, "segmenting", values
