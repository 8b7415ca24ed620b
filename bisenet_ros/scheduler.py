"""ROS-free multi-camera scheduling: camera names and topics, newest frame per camera, batches.

One engine serves several cameras (``cameras`` parameter of the node, ``--cameras`` of the
replay, ``bisenet-ros bench --cameras N``). The pieces, all without ROS:

* :func:`validate_camera_names` refuses an empty entry or a camera named twice (one
  ``ValueError`` naming them) and :func:`camera_topics` derives each camera's input, CameraInfo
  and output topics, exactly as ``launch/multi_camera.launch.py`` names them for one node per
  camera: input ``/<C>/<image_suffix>`` (or an explicit list), outputs ``/<C>/segmentation/<topic>``.
* :class:`BatchScheduler` keeps the newest frame of every camera (one slot per camera, like
  :class:`bisenet_ros.pipeline.LatestFrameSlot`) and hands out batches::

      camera callbacks ──put(C, frame)──▶ [slot C0] [slot C1] ... [slot Cn-1]
                                                │ next_batch(): the newest frame of every camera
                                                ▼ that has a new one, least recently served first
                                    Batch(frames=[...], stale=[...]) ──▶ one engine call

  There is no sync barrier: a batch never waits for a camera that has nothing new (a stopped
  camera costs nothing). ``max_batch_wait_ms`` optionally lets the first frame wait a few
  milliseconds for the other live cameras, so frames arriving nearly together share one batch.
  Fairness: a camera keeps at most one frame (a flooding camera replaces its own, counted as
  ``replaced``), and with ``max_batch`` smaller than the number of waiting cameras the cameras
  served least recently go first (round-robin), so no camera can starve another.
"""
from __future__ import annotations

import re
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Generic, Sequence, TypeVar

from bisenet_ros.pipeline import camera_info_topic, frame_age_s, is_stale

__all__ = [
    "CameraTopics", "validate_camera_names", "camera_topics", "OUTPUT_NAMESPACE",
    "CameraCounters", "Frame", "Batch", "BatchScheduler",
]

T = TypeVar("T")

#: The namespace of a camera's outputs inside the camera's: ``multi_camera.launch.py`` starts
#: one node named ``segmentation`` per camera namespace, whose ``~/mask`` is ``/<C>/segmentation/mask``.
OUTPUT_NAMESPACE = "segmentation"

# One ROS name token: a letter or underscore first, then letters, digits, underscores.
_TOKEN = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def validate_camera_names(cameras: Sequence[str]) -> list[str]:
    """The camera names, stripped of surrounding blanks and slashes, checked all at once.

    A name is a ROS namespace (``front``, ``rig/left``) without leading or trailing ``/``.

    Args:
        cameras: the names as given (parameter entries, launch argument items).

    Returns:
        The cleaned names, in the given order.

    Raises:
        ValueError: naming every empty entry (by position), every name given twice and every
            name that is not a valid ROS namespace, in one message with the fix.
    """
    names = [str(c).strip().strip("/") for c in cameras]
    problems = []
    empty = [str(i) for i, name in enumerate(names) if not name]
    if empty:
        problems.append(f"entr{'y' if len(empty) == 1 else 'ies'} {', '.join(empty)} "
                        "(counting from 0) empty")
    seen: set[str] = set()
    twice = []
    for name in names:
        if name and name in seen and name not in twice:
            twice.append(name)
        seen.add(name)
    if twice:
        problems.append("named twice: " + ", ".join(twice))
    invalid = [name for name in names
               if name and not all(_TOKEN.fullmatch(token) for token in name.split("/"))]
    if invalid:
        problems.append("not a ROS namespace (letters, digits, '_', '/'; no leading digit): "
                        + ", ".join(repr(n) for n in invalid))
    if problems:
        raise ValueError(f"cameras {list(cameras)!r}: {'; '.join(problems)}; expected distinct "
                         "non-empty camera names, e.g. ['front', 'rear']")
    return names


@dataclass(frozen=True)
class CameraTopics:
    """The topics of one camera served by the shared engine.

    Attributes:
        name: the camera name (its namespace without slashes), e.g. ``front``.
        image_topic: the raw image topic, e.g. ``/front/image_raw``.
        input_topic: the subscribed topic: ``image_topic``, or ``<image_topic>/compressed``
            (image_transport's name) when compressed.
        compressed: whether ``input_topic`` carries sensor_msgs/CompressedImage.
        camera_info_topic: CameraInfo beside the image topic, e.g. ``/front/camera_info``.
        output_namespace: where the outputs go, e.g. ``/front/segmentation``.
    """

    name: str
    image_topic: str
    input_topic: str
    compressed: bool
    camera_info_topic: str
    output_namespace: str

    def output(self, topic: str) -> str:
        """The absolute output topic, e.g. ``output("mask")`` -> ``/front/segmentation/mask``."""
        return f"{self.output_namespace}/{topic.strip('/')}"


def camera_topics(cameras: Sequence[str], *, image_suffix: str = "image_raw",
                  image_topics: Sequence[str] = (), compressed: bool = False,
                  namespace: str = "/") -> tuple[CameraTopics, ...]:
    """Each camera's input, CameraInfo and output topics.

    The outputs go under the node's namespace, as the ``~/`` outputs of one node per camera in
    ``<namespace>/<C>`` do (``multi_camera.launch.py mode:=separate``), so a namespace pushed onto
    the launch moves them the same way in both modes. The inputs are absolute, as that launch
    file has always given them.

    Args:
        cameras: camera names (validated with :func:`validate_camera_names`).
        image_suffix: image topic inside each camera's namespace: ``/<C>/<image_suffix>``.
        image_topics: explicit image topics, one per camera in the same order (instead of
            ``image_suffix``); empty: derived from ``image_suffix``.
        compressed: subscribe to ``<image topic>/compressed`` (sensor_msgs/CompressedImage).
        namespace: the node's namespace: outputs under ``<namespace>/<C>/segmentation``.

    Raises:
        ValueError: bad camera names, an empty suffix or topic, or ``image_topics`` of another
            length than ``cameras``.
    """
    names = validate_camera_names(cameras)
    if image_topics:
        topics = [str(t).strip() for t in image_topics]
        if len(topics) != len(names):
            raise ValueError(f"image_topics has {len(topics)} entries for {len(names)} cameras "
                             f"{names}: give one image topic per camera, in the same order, or "
                             "leave it empty to use /<camera>/<image_suffix>")
        empty = [names[i] for i, t in enumerate(topics) if not t.strip("/")]
        if empty:
            raise ValueError(f"image_topics: empty topic for camera(s) {', '.join(empty)}")
    else:
        suffix = str(image_suffix).strip().strip("/")
        if not suffix:
            raise ValueError("image_suffix is empty: name the image topic inside each camera "
                             "namespace, e.g. 'image_raw' or 'image_rect_color'")
        topics = [f"/{name}/{suffix}" for name in names]
    return tuple(
        CameraTopics(name=name, image_topic=topic,
                     input_topic=topic.rstrip("/") + "/compressed" if compressed else topic,
                     compressed=compressed, camera_info_topic=camera_info_topic(topic),
                     output_namespace=f"{namespace.rstrip('/')}/{name}/{OUTPUT_NAMESPACE}")
        for name, topic in zip(names, topics))


# ---------------------------------------------------------------------------------------------
# Newest frame per camera and batches
# ---------------------------------------------------------------------------------------------

@dataclass
class CameraCounters:
    """What happened to one camera's frames in the scheduler.

    Attributes:
        received: frames put.
        replaced: frames replaced by a newer one of the same camera before a batch took them.
        stale: frames older than ``max_frame_age_s`` when a batch would have taken them.
        scheduled: frames handed out in a batch.
        pending: a frame is waiting now (0 or 1).

    ``received == replaced + stale + scheduled + pending`` always holds.
    """

    received: int = 0
    replaced: int = 0
    stale: int = 0
    scheduled: int = 0
    pending: int = 0


@dataclass(frozen=True)
class Frame(Generic[T]):
    """One camera frame handed out by the scheduler.

    Attributes:
        camera: the camera name.
        item: what was put (a ROS message, a decoded frame, ...).
        stamp_ns: its header stamp in nanoseconds (0: unstamped).
        received_s: ``time.monotonic()`` when it was put (for the wait in the scheduler).
    """

    camera: str
    item: T
    stamp_ns: int
    received_s: float


@dataclass(frozen=True)
class Batch(Generic[T]):
    """The result of :meth:`BatchScheduler.next_batch`.

    Attributes:
        frames: the frames to run, at most one per camera, least recently served camera first.
        stale: frames dropped as too old instead (for logging; already counted).
    """

    frames: list[Frame[T]] = field(default_factory=list)
    stale: list[Frame[T]] = field(default_factory=list)


class BatchScheduler(Generic[T]):
    """Newest frame per camera, handed out in batches; thread-safe.

    Producers (subscription callbacks, bag readers) call :meth:`put` from any thread; one
    consumer (the inference worker) calls :meth:`next_batch`. :meth:`close` releases a waiting
    consumer at shutdown.

    Args:
        cameras: camera names (validated with :func:`validate_camera_names`).
        max_batch: most frames per batch; 0 or None: one per camera with a new frame.
        max_batch_wait_ms: once one camera has a frame, wait up to this long for the other live
            cameras (those that delivered within ``live_window_s``) before the batch goes; 0
            (default): never wait.
        max_frame_age_s: a frame older than this (stamp against ``now_ns()``) when its batch is
            formed is dropped as stale; 0 disables the check; unstamped frames are never stale.
        now_ns: the clock frame stamps are compared with (the node's ROS clock: sim time
            with a bag); default the wall clock.
        live_window_s: how recently a camera must have delivered for ``max_batch_wait_ms`` to
            wait for it (a stopped camera is not waited for).
    """

    def __init__(self, cameras: Sequence[str], *, max_batch: int | None = 0,
                 max_batch_wait_ms: float = 0.0, max_frame_age_s: float = 0.0,
                 now_ns: Callable[[], int] = time.time_ns, live_window_s: float = 1.0) -> None:
        names = validate_camera_names(cameras)
        if max_batch is not None and max_batch < 0:
            raise ValueError(f"max_batch={max_batch}: expected 0 (no limit) or a positive count")
        if not 0.0 <= max_batch_wait_ms <= 1000.0:
            raise ValueError(f"max_batch_wait_ms={max_batch_wait_ms}: expected 0..1000 ms (a small "
                             "wait; 0 never waits)")
        self.cameras: tuple[str, ...] = tuple(names)
        self.max_batch = max_batch or len(names)
        self.max_batch_wait_s = max_batch_wait_ms / 1e3
        self.max_frame_age_s = max_frame_age_s
        self.live_window_s = live_window_s
        self._now_ns = now_ns
        self._cond = threading.Condition()
        self._slots: dict[str, Frame[T] | None] = {name: None for name in names}
        self._last_put: dict[str, float] = {}
        self._counters = {name: CameraCounters() for name in names}
        # Round-robin order: least recently served first; served cameras move to the end.
        self._order: list[str] = list(names)
        self._closed = False

    def put(self, camera: str, item: T, stamp_ns: int = 0) -> bool:
        """Store ``item`` as ``camera``'s newest frame (ignored once closed).

        Returns:
            True when it replaced a frame of the same camera that no batch had taken yet.

        Raises:
            KeyError: ``camera`` is not one of :attr:`cameras`.
        """
        now = time.monotonic()
        with self._cond:
            if camera not in self._slots:
                raise KeyError(f"camera {camera!r} is not scheduled; cameras: {list(self.cameras)}")
            if self._closed:
                return False
            counters = self._counters[camera]
            counters.received += 1
            replaced = self._slots[camera] is not None
            if replaced:
                counters.replaced += 1
            counters.pending = 1
            self._slots[camera] = Frame(camera, item, int(stamp_ns), now)
            self._last_put[camera] = now
            self._cond.notify_all()
            return replaced

    def _waiting(self) -> list[str]:
        return [name for name in self._order if self._slots[name] is not None]

    def _batch_ready(self, deadline: float) -> bool:
        waiting = self._waiting()
        if not waiting:
            return False
        if len(waiting) >= self.max_batch or time.monotonic() >= deadline:
            return True
        now = time.monotonic()
        live = [name for name, t in self._last_put.items() if now - t <= self.live_window_s]
        return all(self._slots[name] is not None for name in live)

    def next_batch(self, timeout: float | None = None) -> Batch[T] | None:
        """The next batch, waiting up to ``timeout`` s (None: forever) for a first frame.

        Returns:
            A :class:`Batch` (its ``frames`` may be empty when every waiting frame was stale),
            or None on timeout or once :meth:`close` was called.
        """
        with self._cond:
            if not self._cond.wait_for(lambda: self._closed or bool(self._waiting()), timeout):
                return None
            if self._closed:
                return None
            if self.max_batch_wait_s > 0 and len(self.cameras) > 1:
                deadline = min(self._slots[n].received_s for n in self._waiting()  # type: ignore[union-attr]
                               ) + self.max_batch_wait_s
                while not self._closed and not self._batch_ready(deadline):
                    self._cond.wait(max(0.0, deadline - time.monotonic()))
                if self._closed:
                    return None
            now_ns = self._now_ns() if self.max_frame_age_s > 0 else 0
            batch: Batch[T] = Batch()
            for name in self._waiting():
                if len(batch.frames) >= self.max_batch:
                    break
                frame = self._slots[name]
                assert frame is not None
                self._slots[name] = None
                counters = self._counters[name]
                counters.pending = 0
                if is_stale(frame.stamp_ns, now_ns, self.max_frame_age_s):
                    counters.stale += 1
                    batch.stale.append(frame)
                    continue
                counters.scheduled += 1
                batch.frames.append(frame)
            served = {f.camera for f in batch.frames + batch.stale}
            self._order = ([n for n in self._order if n not in served]
                           + [n for n in self._order if n in served])
            return batch

    def pending(self, camera: str) -> bool:
        """Whether a frame of ``camera`` waits for a batch. An offline consumer (the replay,
        which drops nothing) puts a camera's next frame only once this is False, so no frame is
        ever replaced.

        Raises:
            KeyError: ``camera`` is not one of :attr:`cameras`.
        """
        with self._cond:
            return self._slots[camera] is not None

    def frame_age_s(self, frame: Frame[T]) -> float | None:
        """Age of ``frame`` against the scheduler's clock, in seconds (None: unstamped)."""
        return frame_age_s(frame.stamp_ns, self._now_ns())

    def counters(self) -> dict[str, CameraCounters]:
        """A copy of every camera's counters, by camera name."""
        with self._cond:
            return {name: CameraCounters(**vars(c)) for name, c in self._counters.items()}

    def close(self) -> None:
        """Release a waiting :meth:`next_batch` and refuse further frames (at shutdown)."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    @property
    def closed(self) -> bool:
        return self._closed
