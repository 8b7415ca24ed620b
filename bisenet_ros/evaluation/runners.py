"""Where the bags of a fleet evaluation run: in this process, in N local worker processes, or as
Ray tasks on a cluster. Every runner hands each finished :class:`BagResult` to ``on_result`` and
reports frames done per bag to a :class:`FleetProgress`; the caller sums the results in bag order.

Local workers use :class:`concurrent.futures.ProcessPoolExecutor` (spawn: no fork of a process
holding model and thread pools); Ray is imported only by :func:`connect_ray`.
"""
from __future__ import annotations

import collections
import concurrent.futures as cf
import logging
import multiprocessing
import os
import socket
import threading
from typing import Any, Callable, Sequence, TextIO

from bisenet_ros.evaluation.job import (
    INTERRUPTED, BagResult, BagTask, EvalSettings, ModelSpec, evaluate_bag, limit_threads,
    worker_engines,
)
from bisenet_ros.replay.progress import Progress
from bisenet_ros.runtime import available_cores

OnResult = Callable[[BagResult], None]
# How long --ray ADDRESS may take to answer before the run gives up.
RAY_CONNECT_TIMEOUT_S = 10.0
RAY_PACKAGE = "ray"


def threads_per_worker(workers: int, requested: int = 0) -> int:
    """Engine threads per worker so that ``workers x threads <= cores`` (``requested`` wins)."""
    return requested if requested > 0 else max(1, available_cores() // max(1, workers))


class FleetProgress:
    """One progress line over all bags: frames done (summed over bags) / total, rate, ETA."""

    def __init__(self, total: int, *, stream: TextIO, enabled: bool) -> None:
        self.bar = Progress(total, stream=stream, enabled=enabled, label="evaluate")
        self._done: dict[int, int] = {}
        self._lock = threading.Lock()

    def set(self, index: int, frames: int) -> None:
        """Bag ``index`` has done ``frames`` frames. Counts only grow: reports may arrive late
        (from Ray's counter actor), and a retried bag's restart would only move the line back."""
        with self._lock:
            self._done[index] = max(frames, self._done.get(index, 0))
            done = sum(self._done.values())
        self.bar.update(done)

    def finish(self) -> None:
        self.bar.finish()


def run_sequential(tasks: Sequence[BagTask], settings: EvalSettings, engines: Sequence[Any], *,
                   on_result: OnResult, progress: FleetProgress) -> None:
    """Evaluate the bags one after the other with already built engines."""
    for task in tasks:
        result = evaluate_bag(task, settings, engines, tick=lambda n, i=task.index: progress.set(i, n))
        on_result(result)
        if result.status == INTERRUPTED:
            return


# -- local worker processes --------------------------------------------------------------------
_WORKER: dict[str, Any] = {}


def _init_worker(models: Sequence[ModelSpec], threads: int, ticks: Any) -> None:
    limit_threads(threads)
    _WORKER.update(models=list(models), ticks=ticks)


def _work(task: BagTask, settings: EvalSettings) -> BagResult:
    engines = worker_engines(_WORKER["models"])  # built on the worker's first bag, then reused
    ticks = _WORKER["ticks"]
    return evaluate_bag(task, settings, engines, tick=lambda n: ticks.put((task.index, n)))


def run_local(tasks: Sequence[BagTask], settings: EvalSettings, models: Sequence[ModelSpec],
              jobs: int, *, threads: int, on_result: OnResult, progress: FleetProgress) -> None:
    """Evaluate the bags in ``jobs`` worker processes, each building its engines once.

    A worker that dies (killed, out of memory, a crash in native code) breaks the pool; the bags
    it was running are then retried once each, alone, so that a bag that kills its worker again
    is identified and reported, and the other bags are not charged for it.
    """
    ctx = multiprocessing.get_context("spawn")
    ticks = ctx.Queue()
    listener = threading.Thread(target=_listen, args=(ticks, progress), daemon=True)
    listener.start()
    pending = collections.deque(tasks)
    suspects: collections.deque[BagTask] = collections.deque()
    attempts = collections.Counter[int]()
    try:
        while pending or suspects:
            executor = cf.ProcessPoolExecutor(jobs, mp_context=ctx, initializer=_init_worker,
                                              initargs=(list(models), threads, ticks))
            try:
                _drive_pool(executor, pending, suspects, attempts, jobs, settings, on_result)
            except BaseException:
                _terminate(executor)
                raise
            finally:
                executor.shutdown(wait=True, cancel_futures=True)
    finally:
        ticks.put(None)
        listener.join(timeout=5)
        ticks.close()


def _drive_pool(executor: cf.ProcessPoolExecutor, pending: collections.deque[BagTask],
                suspects: collections.deque[BagTask], attempts: collections.Counter[int], jobs: int,
                settings: EvalSettings, on_result: OnResult) -> None:
    """Run bags until all are done or the pool breaks (then the running bags become suspects)."""
    running: dict[cf.Future[BagResult], BagTask] = {}
    while pending or suspects or running:
        # Only as many bags in flight as workers: when the pool breaks, exactly these were hit.
        # A suspect runs alone, so a second death is its own.
        while (suspects and not running) or (not suspects and pending and len(running) < jobs):
            task = suspects.popleft() if suspects else pending.popleft()
            attempts[task.index] += 1
            running[executor.submit(_work, task, settings)] = task
        done, _ = cf.wait(running, return_when=cf.FIRST_COMPLETED)
        broken = False
        for future in done:
            task = running.pop(future)
            try:
                result = future.result()
            except cf.process.BrokenProcessPool:
                broken = True
                _charge(task, attempts, suspects, on_result)
                continue
            result.attempts = attempts[task.index]
            on_result(result)
            if result.status == INTERRUPTED:
                raise KeyboardInterrupt
        if broken:
            for future in cf.as_completed(running):  # all fail with the pool
                _charge(running[future], attempts, suspects, on_result)
            return


def _charge(task: BagTask, attempts: collections.Counter[int], suspects: collections.deque[BagTask],
            on_result: OnResult) -> None:
    if attempts[task.index] >= 2:
        on_result(BagResult.failure(task, "its worker process died on both attempts (killed, out "
                                    "of memory or a crash in native code)", attempts=2))
    else:
        suspects.append(task)


def _listen(ticks: Any, progress: FleetProgress) -> None:
    while (item := ticks.get()) is not None:
        progress.set(*item)


def _terminate(executor: cf.ProcessPoolExecutor) -> None:
    """Stop the workers now (Ctrl-C): their bags are abandoned, not half-counted."""
    terminate = getattr(executor, "terminate_workers", None)  # Python 3.14+
    if terminate is not None:
        terminate()
        return
    for process in list((getattr(executor, "_processes", None) or {}).values()):
        process.terminate()


# -- Ray ---------------------------------------------------------------------------------------
class RayError(RuntimeError):
    """Ray is missing or the cluster cannot be reached."""


def connect_ray(address: str | None, *, num_cpus: int | None = None,
                timeout_s: float = RAY_CONNECT_TIMEOUT_S) -> tuple[Any, bool]:
    """Connect to a Ray cluster, or start a local one bound to 127.0.0.1.

    Args:
        address: ``None``: start a local cluster (loopback only, no dashboard, no usage
            statistics); ``"auto"``: the cluster this process runs in; ``HOST:PORT``: a
            running cluster's GCS address (answering within ``timeout_s``).
        num_cpus: CPUs of a local cluster (default: all cores).
        timeout_s: How long a ``HOST:PORT`` may take to accept a connection.

    Returns:
        ``(ray module, started)``: ``started`` is True when this call connected (the caller
        then calls ``ray.shutdown()``); False when Ray was already initialised in this process.

    Raises:
        RayError: Ray is not installed, or the cluster does not answer.
    """
    if address not in (None, "auto"):
        _check_reachable(address, timeout_s)  # fail fast, before seconds of importing Ray
    # Both switches are read when ray is imported: set them first (a process that imported ray
    # before keeps its settings). Usage statistics are never sent; a local cluster uses the
    # loopback address for every process (Ray's single-machine mode, the default on macOS and
    # Windows), so no Ray port listens on another interface.
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    if address is None:
        os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    try:
        import ray
    except ImportError:
        raise RayError(f"--ray needs the '{RAY_PACKAGE}' package: pip install '{RAY_PACKAGE}>=2.9'") from None
    if ray.is_initialized():
        return ray, False
    common = dict(logging_level=logging.ERROR, log_to_driver=False, configure_logging=True)
    if address is None:
        ray.init(num_cpus=num_cpus or available_cores(), include_dashboard=False,
                 _node_ip_address="127.0.0.1", **common)
        return ray, True
    try:
        ray.init(address=address, **common)
    except (ConnectionError, RuntimeError, ValueError) as err:
        raise RayError(f"cannot connect to the Ray cluster at {address!r}: {err}; start one with "
                       "'ray start --head' or give its address (HOST:PORT)") from None
    return ray, True


def _check_reachable(address: str, timeout_s: float) -> None:
    target = address.split("://", 1)[-1]
    host, _, port = target.rpartition(":")
    if not host or not port.isdigit():
        raise RayError(f"--ray {address!r}: expected HOST:PORT of the cluster's head (e.g. "
                       "10.0.0.5:6379), 'auto', or nothing for a local cluster")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s).close()
    except OSError as err:
        raise RayError(f"the Ray cluster at {address} does not answer (no connection within "
                       f"{timeout_s:.0f} s: {err}); check the address and that 'ray start --head' "
                       "runs there") from None


class _Counter:
    """Ray actor collecting frames done per bag from the tasks (for the progress line)."""

    def __init__(self) -> None:
        self.done: dict[int, int] = {}

    def report(self, index: int, frames: int) -> None:
        self.done[index] = frames

    def snapshot(self) -> dict[int, int]:
        return dict(self.done)


def _ray_task(task: BagTask, settings: EvalSettings, models: Sequence[ModelSpec], threads: int,
              counter: Any) -> BagResult:
    limit_threads(threads)
    engines = worker_engines(models)  # a Ray worker process keeps them for its next bags
    return evaluate_bag(task, settings, engines, tick=lambda n: counter.report.remote(task.index, n))


def run_ray(ray: Any, tasks: Sequence[BagTask], settings: EvalSettings,
            models: Sequence[ModelSpec], *, threads: int, on_result: OnResult,
            progress: FleetProgress) -> None:
    """Evaluate the bags as Ray tasks (one CPU share of ``threads`` each).

    Ray retries a task once when its worker dies (``max_retries=1``); a second death is
    reported as that bag's failure. Bag paths must be readable on every node (shared storage).

    Args:
        ray: The ``ray`` module, connected by :func:`connect_ray`.
    """
    counter = ray.remote(num_cpus=0)(_Counter).remote()
    remote = ray.remote(_ray_task).options(num_cpus=threads, max_retries=1, retry_exceptions=False)
    refs = {remote.remote(task, settings, list(models), threads, counter): task for task in tasks}
    try:
        while refs:
            done, _ = ray.wait(list(refs), num_returns=1, timeout=0.5)
            for index, frames in ray.get(counter.snapshot.remote()).items():
                progress.set(index, frames)
            for ref in done:
                task = refs.pop(ref)
                try:
                    result = ray.get(ref)
                except ray.exceptions.RayError as err:
                    result = BagResult.failure(
                        task, f"its Ray worker died on both attempts ({type(err).__name__})",
                        attempts=2)
                on_result(result)
    except KeyboardInterrupt:
        for ref in refs:
            ray.cancel(ref, force=True)
        raise
