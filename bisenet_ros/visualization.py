"""The visualization worker of the node: overlay and colour mask off the planner's path.

Building and publishing ``~/overlay`` and ``~/color_mask`` (raw: a 6 MB copy and serialization
each at 1080p; compressed: a JPEG and a PNG encode) took 32 ms per 1080p frame on the inference
thread, so the next frame and every planner output waited for it. :class:`VisualizationWorker`
does that work on its own thread instead:

* it holds only the newest submitted job (a one-slot buffer, :class:`~bisenet_ros.pipeline.LatestFrameSlot`):
  a job not yet started when a newer one arrives is replaced and counted as
  ``visualization_skipped``, so a slow viewer never builds a backlog nor delays anything;
* the inference thread only hands over references (no copy, no encode), so the planner outputs
  and the start of the next frame never wait for the visualization;
* on Linux the worker thread lowers its own scheduling priority (``nice``, per thread there), so
  on a machine with few cores the inference thread wins the CPU when both are ready.

``visualization_rate`` is applied by the caller before asking the engine for the colour outputs
(:class:`~bisenet_ros.pipeline.RateLimiter`), so frames over the rate cost nothing at all.

ROS-free: the node passes a ``publish`` callable that builds and publishes the messages.
"""
from __future__ import annotations

import os
import threading
import time
from typing import Callable, Generic, TypeVar

from bisenet_ros.pipeline import LatestFrameSlot, PipelineStats

__all__ = ["VisualizationWorker", "WORKER_NICENESS"]

T = TypeVar("T")

#: Niceness added to the worker thread (Linux applies ``setpriority`` to one thread).
WORKER_NICENESS = 5


def _lower_thread_priority(increment: int) -> None:
    # Linux: a thread id given to setpriority changes that thread only. Elsewhere (or in a
    # sandbox forbidding it) the worker simply runs at the normal priority.
    get_id = getattr(threading, "get_native_id", None)
    if increment <= 0 or get_id is None or not hasattr(os, "setpriority"):
        return
    try:
        tid = get_id()
        os.setpriority(os.PRIO_PROCESS, tid, os.getpriority(os.PRIO_PROCESS, tid) + increment)
    except OSError:
        pass


class VisualizationWorker(Generic[T]):
    """Runs ``publish(job)`` on its own thread for the newest submitted job only.

    Counts ``visualization_published`` and ``visualization_skipped`` in ``stats`` and records
    the stage timings ``visualization`` (building and publishing one job, ms) and
    ``visualization_wait`` (from :meth:`submit` to the start of that work, ms), separately
    from the planner's stages.

    Args:
        publish: Builds and publishes the messages of one job (called on the worker thread).
        stats: Where the counters and timings go (shared with the node's other stages).
        on_error: Called with an exception ``publish`` raised (the worker keeps running).
        niceness: Added to the worker thread's niceness (0: unchanged).
        name: The thread's name.
    """

    def __init__(self, publish: Callable[[T], None], stats: PipelineStats, *,
                 on_error: Callable[[BaseException], None], niceness: int = WORKER_NICENESS,
                 name: str = "visualization") -> None:
        self._publish = publish
        self._stats = stats
        self._on_error = on_error
        self._niceness = niceness
        self._slot: LatestFrameSlot[tuple[T, float]] = LatestFrameSlot()
        self._idle = threading.Condition()
        self._busy = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def submit(self, job: T) -> None:
        """Hand ``job`` over (never blocks); an older job not yet started is dropped."""
        with self._idle:  # busy and the job together, so wait_idle never sees a gap
            self._busy = True
            replaced = self._slot.put((job, time.perf_counter()))
        if replaced:
            self._stats.count("visualization_skipped")

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Wait until every submitted job is published or dropped; False on timeout."""
        with self._idle:
            return self._idle.wait_for(lambda: not self._busy, timeout)

    def close(self, timeout: float = 5.0) -> None:
        """Stop the thread (a job in progress finishes; a pending one is dropped)."""
        self._slot.close()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def _run(self) -> None:
        _lower_thread_priority(self._niceness)
        while not self._slot.closed:
            item = self._slot.take(timeout=0.5)
            if item is not None:
                job, submitted = item
                start = time.perf_counter()
                try:
                    self._publish(job)
                except Exception as err:  # noqa: BLE001 - a failed picture must not stop the next
                    if self._slot.closed:
                        break
                    self._on_error(err)
                else:
                    done = time.perf_counter()
                    self._stats.count("visualization_published")
                    self._stats.record_timings({"visualization": (done - start) * 1e3,
                                                "visualization_wait": (start - submitted) * 1e3})
            with self._idle:
                if self._slot.empty:
                    self._busy = False
                    self._idle.notify_all()
        with self._idle:
            self._busy = False
            self._idle.notify_all()
