"""The cameras of a replay: which topics are read, what each camera is called, its own figures.

A bag recorded on a vehicle holds several camera topics. ``--cameras front,rear`` reads
``/front/image_raw`` and ``/rear/image_raw`` (or ``.../image_raw/compressed`` when only that is
recorded), as the node's ``cameras`` parameter does; several ``--image-topic`` name the topics
directly, and each camera is then named after its topic's namespace (``/left/image_rect`` ->
``left``; image_transport's ``/compressed`` is not part of it). A camera's outputs are written
under ``/<camera>/segmentation/...``, the names the node gives them.

One ``--image-topic`` (or none) is the single-camera replay of old: its camera is named ``""``
and its outputs keep the node's single-camera names.

:class:`FrameBatcher` groups the cameras' frames into engine batches through the node's
scheduler, without dropping any (the replay is offline).
"""
from __future__ import annotations

import collections
import dataclasses
from typing import Any, Iterable, Sequence

from bisenet_ros.replay import metrics as M
from bisenet_ros.replay.bag import BagError, InputBag, TopicInfo
from bisenet_ros.replay.messages import IMAGE_TYPES
from bisenet_ros.scheduler import BatchScheduler, camera_topics, validate_camera_names

@dataclasses.dataclass
class CameraResult:
    """One camera's share of a replay (the totals are :class:`~bisenet_ros.replay.pipeline.ReplayResult`'s).

    Attributes:
        name: Camera name (``""`` in a single-camera replay).
        image_topic: Its image topic.
        frames_read: Messages read from the topic (corrupt ones included).
        undecodable: Messages among them that could not be decoded.
        bag_times: Bag times (ns) of those messages.
        confusion: Accuracy against ground truth, when this camera has ground truth.
        ground_truth: Where this camera's ground truth comes from (``topic ...``/``folder ...``).
        unmatched_predictions: Frames without ground truth (this camera has some).
        unmatched_labels: Ground-truth masks without a frame.
        grid: This camera's bird's-eye projection (:class:`~bisenet_ros.replay.grid.GridStage`),
            None without camera model or pose.
        samples: ``(index, JPEG)`` sample overlays.
    """

    name: str
    image_topic: TopicInfo
    frames_read: int = 0
    undecodable: int = 0
    bag_times: list[int] = dataclasses.field(default_factory=list)
    confusion: M.ConfusionMatrix | None = None
    ground_truth: str | None = None
    unmatched_predictions: int = 0
    unmatched_labels: int = 0
    grid: Any = None
    samples: list[tuple[int, bytes]] = dataclasses.field(default_factory=list)


def camera_name(topic: str) -> str:
    """The camera a topic belongs to: its namespace, e.g. ``/front/image_raw/compressed`` ->
    ``front`` (empty for a topic in the root namespace)."""
    base = topic[: -len("/compressed")] if topic.endswith("/compressed") else topic
    return base.strip("/").rpartition("/")[0]


def camera_topic(bag: InputBag, name: str) -> TopicInfo:
    """The image topic of camera ``name``: ``/<name>/image_raw``, else its ``/compressed``
    (the node's names with its default ``image_suffix``, :func:`bisenet_ros.scheduler.camera_topics`).

    Raises:
        BagError: Neither is an image topic of the bag.
    """
    raw, compressed = (camera_topics([name], compressed=c)[0].input_topic for c in (False, True))
    for topic in (raw, compressed):
        info = bag.topics.get(topic)
        if info is not None and info.msgtype in IMAGE_TYPES:
            return info
    listing = "\n".join(f"  {t.name} [{t.msgtype}]" for t in bag.image_topics()) or "  (none)"
    raise BagError(f"camera {name!r}: neither {raw} nor {compressed} is an image topic of "
                   f"{bag.path}; name the cameras by their namespace, or give each topic with "
                   f"--image-topic. Image topics:\n{listing}")


def resolve_cameras(bag: InputBag, *, cameras: Sequence[str] = (),
                    image_topics: Sequence[str] = ()) -> list[tuple[str, TopicInfo]]:
    """``(name, image topic)`` of each camera of a multi-camera replay, in the order given.

    Args:
        bag: The open input bag.
        cameras: Camera names (``--cameras``).
        image_topics: Image topics (repeated ``--image-topic``), named after their namespace.

    Raises:
        BagError: Both or neither are given, a name is empty, invalid or given twice (the
            node's rule, :func:`bisenet_ros.scheduler.validate_camera_names`), or a camera's
            topic is not in the bag or is not an image topic.
    """
    if bool(cameras) == bool(image_topics):
        raise BagError("give the cameras either by name (--cameras) or by topic (--image-topic "
                       "repeated), not both")
    infos = [bag.pick_image_topic(topic) for topic in image_topics]
    try:
        names = validate_camera_names(list(cameras) or [camera_name(i.name) for i in infos])
    except ValueError as err:
        hint = "" if cameras else " (each --image-topic names its camera by its namespace)"
        raise BagError(f"{err}{hint}") from err
    return list(zip(names, infos or [camera_topic(bag, name) for name in names]))


def labels_camera(labels_topic: str | None, requested: str | None, names: Iterable[str]) -> str:
    """The camera the ground truth belongs to in a multi-camera replay.

    ``requested`` (``--labels-camera``) when given; else the camera whose namespace holds the
    labels topic (``/front/labels`` -> ``front``); else the only camera.

    Raises:
        BagError: The camera is unknown, or cannot be told.
    """
    names = list(names)
    if requested is not None:
        if requested.strip("/") not in names:
            raise BagError(f"--labels-camera {requested}: not one of the cameras "
                             f"({', '.join(names)})")
        return requested.strip("/")
    if labels_topic:
        owners = [n for n in names if labels_topic.startswith(f"/{n}/")]
        if owners:
            return max(owners, key=len)
    if len(names) == 1:
        return names[0]
    raise BagError(f"which camera is the ground truth for? {len(names)} cameras "
                     f"({', '.join(names)}); give --labels-camera NAME, or record the labels "
                     "under the camera's namespace (/<camera>/labels)")


class FrameBatcher:
    """Frames of the cameras -> engine batches through the shared
    :class:`~bisenet_ros.scheduler.BatchScheduler`, every frame kept and in order per camera.

    The replay is offline: unlike the node, it drops nothing. Each camera's frames wait in
    order in a backlog here, and its oldest enters the scheduler's slot only once the slot is
    empty, so the scheduler never replaces one. A batch is what the scheduler hands out: the
    waiting frame of every camera that has one, least recently served first (round-robin: a
    camera that floods cannot hold back the others). It is due once every camera still sending
    has a frame waiting, or one camera has ``depth`` waiting; there is no sync barrier beyond
    that, so a camera that stops mid-bag holds the others back by at most ``depth`` frames.

    Args:
        cameras: Camera names (``""``: the single camera of a single-camera replay).
        depth: Frames one camera may have waiting before a batch is due.
    """

    def __init__(self, cameras: Sequence[str], depth: int) -> None:
        self.depth = max(int(depth), 1)
        # The scheduler takes ROS namespace names; a single-camera replay's camera has none.
        self._key = {name: name or "camera" for name in cameras}
        self.scheduler: BatchScheduler[Any] = BatchScheduler(list(self._key.values()))
        self._backlog: dict[str, collections.deque[Any]] = {c: collections.deque() for c in cameras}
        self._received = dict.fromkeys(cameras, 0)

    def _waiting(self, camera: str) -> int:
        return len(self._backlog[camera]) + self.scheduler.pending(self._key[camera])

    def __len__(self) -> int:
        return sum(self._waiting(camera) for camera in self._backlog)

    def push(self, camera: str, frame: Any, stamp_ns: int = 0) -> None:
        self._backlog[camera].append((frame, stamp_ns))
        self._received[camera] += 1
        self._feed(camera)

    def _feed(self, camera: str) -> None:
        backlog = self._backlog[camera]
        if backlog and not self.scheduler.pending(self._key[camera]):
            frame, stamp_ns = backlog.popleft()
            self.scheduler.put(self._key[camera], frame, stamp_ns)

    def received(self, camera: str) -> int:
        """Frames of ``camera`` pushed so far."""
        return self._received[camera]

    def ready(self, finished: set[str]) -> bool:
        """Whether a batch is due; ``finished``: cameras that send nothing more."""
        waiting = {camera: self._waiting(camera) for camera in self._backlog}
        if any(count >= self.depth for count in waiting.values()):
            return True
        return any(waiting.values()) and all(waiting[c] or c in finished for c in waiting)

    def pop(self) -> list[Any]:
        """The next batch: the oldest waiting frame of each camera that has one."""
        batch = self.scheduler.next_batch(timeout=0)
        frames = [frame.item for frame in batch.frames] if batch is not None else []
        for camera in self._backlog:
            self._feed(camera)
        return frames
