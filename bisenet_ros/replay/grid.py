"""The replay's bird's-eye drivable grid: ``.../drivable_grid`` in the output bag, and its IoU.

What the node does live with ``camera_info`` and tf (:mod:`bisenet_ros.bev`), the replay does
from the bag, without options when the bag has what it needs:

* Camera model: the ``sensor_msgs/CameraInfo`` topic beside the image topic
  (``/cam/image_raw`` -> ``/cam/camera_info``, image_transport's rule), or ``--camera-info``, a
  ``camera_calibration`` YAML file (wins over the bag). A calibration that changes during the
  bag (a zoom lens) is followed: each frame uses the latest CameraInfo stamped at or before it.
* Camera pose: ``/tf_static`` and ``/tf`` of the bag, chained from the image's ``frame_id`` to
  the grid frame; ``/tf`` transforms are taken as constant (the first one of each parent/child
  pair: a camera mount is rigid), or ``--camera-pose x y z roll pitch yaw`` (wins over the bag).
* With ground truth, the grid of the truth labels and the grid of the prediction give the
  bird's-eye drivable IoU: free cells of both over free cells of either, among the cells the
  truth grid knows (accumulated over the evaluated frames).
"""
from __future__ import annotations

import bisect
import collections
import dataclasses
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from bisenet_ros import bev
from bisenet_ros.pipeline import camera_info_topic
from bisenet_ros.replay.messages import (
    COMPRESSED_IMAGE, deserialize, make_occupancy_grid, stamp_to_ns)

CAMERA_INFO = "sensor_msgs/msg/CameraInfo"
TF_MESSAGE = "tf2_msgs/msg/TFMessage"
TF_TOPICS = ("/tf_static", "/tf")
GRID_OUTPUT = "drivable_grid"


class TransformTree:
    """Transforms from ``tf2_msgs/TFMessage``s, chained like tf2 (ROS-free, no time axis).

    Each child frame has one parent; a ``/tf_static`` transform replaces an earlier one, a
    ``/tf`` transform is kept as first seen (see module docstring).
    """

    def __init__(self) -> None:
        self._parents: dict[str, tuple[str, bev.Pose]] = {}

    def add(self, msg: Any, *, static: bool) -> None:
        """Add the transforms of a TFMessage (typestore message)."""
        for transform in msg.transforms:
            parent = str(transform.header.frame_id).lstrip("/")
            child = str(transform.child_frame_id).lstrip("/")
            if not parent or not child or parent == child:
                continue
            if not static and child in self._parents:
                continue  # /tf: the first sample stands for the bag; /tf_static replaces
            t, q = transform.transform.translation, transform.transform.rotation
            try:
                pose = bev.Pose.from_transform((t.x, t.y, t.z), (q.x, q.y, q.z, q.w))
            except bev.BevError:
                continue  # a zero quaternion: tf2 rejects it too
            self._parents[child] = (parent, pose)

    @property
    def frames(self) -> list[str]:
        return sorted(set(self._parents) | {p for p, _ in self._parents.values()})

    def _to_root(self, frame: str) -> list[tuple[str, bev.Pose]]:
        chain, seen = [(frame, bev.Pose(np.eye(3), np.zeros(3)))], {frame}
        while chain[-1][0] in self._parents:
            parent, edge = self._parents[chain[-1][0]]
            if parent in seen:
                break  # a loop in the bag's tf: stop rather than spin
            seen.add(parent)
            chain.append((parent, edge.compose(chain[-1][1])))
        return chain

    def lookup(self, target: str, source: str) -> bev.Pose:
        """Pose of ``source`` in ``target`` (maps source points into target).

        Raises:
            BevError: a frame is unknown, or the two are not connected.
        """
        target, source = target.lstrip("/"), source.lstrip("/")
        for name in (target, source):
            if name not in self.frames:
                raise bev.BevError(
                    f"frame {name!r} is not in the bag's /tf_static or /tf (frames: "
                    f"{', '.join(self.frames) or 'none'}); give --camera-pose instead")
        up_source = dict(self._to_root(source))
        for frame, target_in_frame in self._to_root(target):
            if frame in up_source:
                return target_in_frame.inverse().compose(up_source[frame])
        raise bev.BevError(f"frames {target!r} and {source!r} are not connected in the bag's tf "
                           "tree; give --camera-pose instead")


@dataclasses.dataclass
class GridSource:
    """Where the camera model and pose come from (see module docstring).

    Attributes:
        grid: The grid.
        cameras: ``(stamp_ns, CameraModel)`` in stamp order, one entry per calibration change
            (a YAML file: one entry at stamp 0).
        camera_from: Description of the camera model's source, for the report.
        tree: The bag's transforms (None with ``static_pose``).
        static_pose: The pose from ``--camera-pose``, or None.
        pose_from: Description of the pose's source.
    """

    grid: bev.GridSpec
    cameras: list[tuple[int, bev.CameraModel]]
    camera_from: str
    tree: TransformTree | None = None
    static_pose: bev.Pose | None = None
    pose_from: str = ""

    def __post_init__(self) -> None:
        self._stamps = [stamp for stamp, _ in self.cameras]  # bisected per frame

    def camera_at(self, stamp_ns: int) -> bev.CameraModel:
        """The latest calibration stamped at or before ``stamp_ns`` (else the first)."""
        index = max(bisect.bisect_right(self._stamps, stamp_ns) - 1, 0)
        return self.cameras[index][1]

    def pose_for(self, frame_id: str) -> bev.Pose:
        """The optical frame's pose in the grid frame (raises BevError when unknown)."""
        if self.static_pose is not None:
            return self.static_pose
        assert self.tree is not None
        if not frame_id:
            raise bev.BevError("the image header has an empty frame_id, so tf cannot place the "
                               "camera; give --camera-pose")
        return self.tree.lookup(self.grid.frame_id, frame_id)


def load_grid_source(bag: Any, image_topic: str, *, grid: bev.GridSpec,
                     camera_info_yaml: Path | None = None,
                     camera_pose: Sequence[float] | None = None,
                     rectified: bool = False) -> tuple[GridSource | None, str | None]:
    """Find the camera model and pose for the grid in ``bag`` (an open :class:`InputBag`).

    Returns:
        ``(source, None)``, or ``(None, why)`` when no grid can be made (the replay then warns
        and writes no grid topic).

    Raises:
        BevError: ``--camera-info`` or ``--camera-pose`` is unusable (a usage error).
        OSError: the calibration file cannot be read.
    """
    return load_grid_sources(bag, [image_topic], grid=grid, camera_info_yaml=camera_info_yaml,
                             camera_pose=camera_pose, rectified=rectified)[0]


def load_grid_sources(bag: Any, image_topics: Sequence[str], *, grid: bev.GridSpec,
                      camera_info_yaml: Path | None = None,
                      camera_pose: Sequence[float] | None = None,
                      rectified: bool = False) -> list[tuple[GridSource | None, str | None]]:
    """:func:`load_grid_source` for each camera topic, in one pass over the bag: every camera's
    CameraInfo and the transforms are read together (a pass reads every chunk that holds them,
    i.e. the whole bag when they are recorded beside the images).

    Returns:
        One ``(source, None)`` or ``(None, why)`` per image topic, in order.

    Raises:
        BevError: ``--camera-info`` or ``--camera-pose`` is unusable (a usage error).
        OSError: the calibration file cannot be read.
    """
    static_pose = bev.Pose.from_mount(*camera_pose) if camera_pose is not None else None
    calibration: list[tuple[int, bev.CameraModel]] = []
    if camera_info_yaml is not None:
        calibration = [(0, bev.CameraModel.from_calibration_yaml(camera_info_yaml,
                                                                 rectified=rectified))]
    info_topics: list[str] = []
    missing: dict[str, str] = {}  # image topic -> why it has no camera model
    for image_topic in image_topics:
        image = bag.topics.get(image_topic)
        info_topic = camera_info_topic(
            image_topic, compressed=image is not None and image.msgtype == COMPRESSED_IMAGE)
        info_topics.append(info_topic)
        info = bag.topics.get(info_topic)
        if camera_info_yaml is None and (info is None or info.msgtype != CAMERA_INFO):
            missing[image_topic] = (
                f"no drivable grid: the bag has no {info_topic} (sensor_msgs/CameraInfo) beside "
                "the image topic; give --camera-info CALIBRATION.yaml")
    tree, tf_topics = None, []
    if static_pose is None:
        tf_topics = [t for t in TF_TOPICS if t in bag.topics and bag.topics[t].msgtype == TF_MESSAGE]
        if not tf_topics:
            no_tf = ("no drivable grid: the bag has no /tf_static or /tf to place the camera; "
                     "give --camera-pose X Y Z ROLL PITCH YAW")
            return [(None, missing.get(topic, no_tf)) for topic in image_topics]
        tree = TransformTree()
        pose_from = f"{' and '.join(tf_topics)} in the bag"
    else:
        pose_from = "--camera-pose"
    # The CameraInfo topics to read: per topic its calibrations and why a message was refused.
    read: dict[str, tuple[list[tuple[int, bev.CameraModel]], list[str]]] = {
        info: ([], []) for topic, info in zip(image_topics, info_topics)
        if camera_info_yaml is None and topic not in missing}
    for raw in bag.messages([*read, *tf_topics]):
        try:
            msg = deserialize(raw.data, raw.msgtype)
        except Exception:  # noqa: BLE001 - a corrupt message is skipped here as in the replay
            continue
        if raw.topic in read:
            _add_camera(*read[raw.topic], msg, rectified)
        elif tree is not None:
            tree.add(msg, static=raw.topic == "/tf_static")
    sources: list[tuple[GridSource | None, str | None]] = []
    for topic, info_topic in zip(image_topics, info_topics):
        if topic in missing:
            sources.append((None, missing[topic]))
        elif camera_info_yaml is not None:
            sources.append((GridSource(grid, calibration, f"--camera-info {camera_info_yaml}", tree,
                                       static_pose, pose_from), None))
        elif read[info_topic][0]:
            sources.append((GridSource(grid, read[info_topic][0], f"{info_topic} in the bag", tree,
                                       static_pose, pose_from), None))
        else:
            problems = read[info_topic][1]
            why = problems[0] if problems else f"{info_topic} holds no readable message"
            sources.append((None, f"no drivable grid: {info_topic}: {why}"))
    return sources


def _add_camera(cameras: list[tuple[int, bev.CameraModel]], problems: list[str], msg: Any,
                rectified: bool) -> None:
    try:
        model = bev.CameraModel.from_camera_info(msg, rectified=rectified)
    except bev.BevError as err:
        problems.append(str(err))
        return
    if not cameras or cameras[-1][1].key != model.key:
        cameras.append((stamp_to_ns(msg.header.stamp), model))


class GridStage:
    """Per-frame grid work of the replay's writer thread: message, IoU, pictures.

    Args:
        source: Camera model and pose.
        drivable_ids: Class ids that are drivable.
        resize: The engine's resize policy (a letterboxed network-resolution label map).
        cache_size: Lookups kept (one per distinct calibration, pose and label-map size).
    """

    def __init__(self, source: GridSource, drivable_ids: Iterable[int], *, resize: str = "stretch",
                 cache_size: int = 16) -> None:
        self.source = source
        self.resize = resize
        self.projector = bev.BevProjector(source.grid, drivable_ids, cache_size=cache_size)
        # stamp -> (frame_id, the prediction's votes): its grid is made only when evaluated
        self.frames: dict[int, tuple[str, bev.CellVotes]] = {}
        self._recent: collections.deque[int] = collections.deque(maxlen=64)
        self.written = 0
        self.problems: collections.Counter[str] = collections.Counter()
        self.intersection = 0
        self.union = 0
        self.evaluated = 0
        self.picture: tuple[np.ndarray, np.ndarray | None] | None = None

    def _votes(self, labels: np.ndarray, stamp_ns: int, frame_id: str,
               window: tuple[int, int, int, int] | None = None) -> bev.CellVotes | None:
        try:
            return self.projector.votes(labels, self.source.camera_at(stamp_ns),
                                        self.source.pose_for(frame_id), window=window)
        except bev.BevError as err:
            self.problems[str(err)] += 1
            return None

    @property
    def spec(self) -> bev.GridSpec:
        return self.source.grid

    def project(self, stamp_ns: int, frame_id: str, labels: np.ndarray,
                frame_shape: tuple[int, ...]) -> bev.CellVotes | None:
        """The votes of a frame (kept for :meth:`evaluate`), or None (the cause is counted)."""
        votes = self._votes(labels, stamp_ns, frame_id,
                            bev.label_window(frame_shape, labels.shape, self.resize))
        if votes is not None:
            self.record(stamp_ns, frame_id, votes)
        return votes

    def record(self, stamp_ns: int, frame_id: str, votes: bev.CellVotes) -> None:
        """Keep a frame's votes (this stage's or the fuser's) for :meth:`evaluate`: the block of
        cells the camera sees, its grid made only for a frame that is evaluated."""
        if len(self._recent) == self._recent.maxlen:
            self.frames.pop(self._recent[0], None)
        self._recent.append(stamp_ns)
        self.frames[stamp_ns] = (frame_id, votes)
        if self.picture is None:
            self.picture = (votes.values(), None)
        self.written += 1

    def frame(self, stamp_ns: int, frame_id: str, labels: np.ndarray,
              frame_shape: tuple[int, ...]) -> Any:
        """The OccupancyGrid message of a frame (typestore), or None (the cause is counted)."""
        votes = self.project(stamp_ns, frame_id, labels, frame_shape)
        if votes is None:
            return None
        return make_occupancy_grid(stamp_ns, self.source.grid.frame_id,
                                   bev.occupancy_grid_fields(votes.values(), self.source.grid))

    def evaluate(self, stamp_ns: int, truth: np.ndarray) -> None:
        """Accumulate the bird's-eye IoU of the frame stamped ``stamp_ns`` against ``truth``
        (trainId labels, 255 = ignore)."""
        entry = self.frames.get(stamp_ns)
        if entry is None:
            return
        frame_id, votes = entry
        truth_votes = self._votes(np.ascontiguousarray(truth, dtype=np.uint8), stamp_ns, frame_id)
        if truth_votes is None:
            return
        pred, truth_grid = votes.values(), truth_votes.values()
        known = truth_grid != bev.UNKNOWN
        pred_free = (pred == bev.FREE) & known
        truth_free = truth_grid == bev.FREE
        self.intersection += int(np.count_nonzero(pred_free & truth_free))
        self.union += int(np.count_nonzero(pred_free | truth_free))
        self.evaluated += 1
        if self.evaluated == 1:  # the first evaluated frame: prediction beside truth
            self.picture = (pred, truth_grid)

    def warnings(self) -> list[str]:
        """One line per reason frames got no grid, for the report's warnings (never silent:
        e.g. a camera whose view lies outside the grid extent writes no grid at all)."""
        return [f"drivable grid: {count} frame(s) without a grid: {message}"
                for message, count in self.problems.items()]

    def iou(self) -> float | None:
        return self.intersection / self.union if self.union else None

    def sources(self) -> dict[str, Any]:
        """Where the camera model and pose came from, and how its frames fared."""
        return {"camera_model_from": self.source.camera_from,
                "camera_models": len(self.source.cameras), "pose_from": self.source.pose_from,
                "frames_without_grid": dict(self.problems)}

    def summary(self) -> dict[str, Any]:
        """The report's ``birds_eye`` section."""
        return {"topic_messages": self.written, "grid": grid_summary(self.source.grid),
                **self.sources(), "drivable_iou": self.iou(), "frames_evaluated": self.evaluated}

    def camera_summary(self) -> dict[str, Any]:
        """This camera's entry in a fused grid's ``birds_eye`` section (and in its own figures):
        its sources, the grids its votes went into, its own bird's-eye IoU."""
        return {**self.sources(), "grids": self.written, "drivable_iou": self.iou(),
                "frames_evaluated": self.evaluated}

    def picture_png(self) -> bytes | None:
        """PNG of a predicted grid (beside the truth's when evaluated), forward up."""
        return None if self.picture is None else grid_png(self.source.grid, self.picture)


def grid_summary(grid: bev.GridSpec) -> dict[str, Any]:
    """A grid's geometry for the report."""
    return {"frame": grid.frame_id, "resolution_m": grid.resolution,
            "width": grid.width, "height": grid.height,
            "x_m": [grid.x_min, grid.x_max], "y_m": [grid.y_min, grid.y_max],
            "max_range_m": grid.max_range, "ground_height_m": grid.ground_height}


def grid_png(grid: bev.GridSpec, grids: Sequence[np.ndarray | None]) -> bytes | None:
    """PNG of grids side by side (None entries left out), forward up."""
    import cv2

    scale = max(1, int(round(300 / max(grid.width, grid.height))))
    tiles = [bev.grid_image(g, scale) for g in grids if g is not None]
    if len(tiles) == 2:
        gap = np.full((tiles[0].shape[0], 8, 3), 255, np.uint8)
        tiles = [tiles[0], gap, tiles[1]]
    ok, buf = cv2.imencode(".png", np.hstack(tiles))
    return buf.tobytes() if ok else None


class FusedGridStage:
    """The surround grid of a multi-camera replay: each batch's frames go into one
    :class:`~bisenet_ros.fusion.GridFuser` (the node's fusion and overlap rule), which gives
    one grid per batch.

    Each camera's votes are kept by its :class:`GridStage`, for its figures and its bird's-eye
    IoU against ground truth (its own grid); a camera whose frames give no votes (no pose in
    tf, a view that misses the extent) has the reason counted there.

    Args:
        grid: The grid all cameras project into.
        cameras: The replay's cameras (:class:`~bisenet_ros.replay.cameras.CameraResult`);
            those without a ``grid`` stage (no camera model or pose) leave their cells unknown.
        drivable_ids: Class ids that are drivable.
        max_age_ms: A camera's latest votes older than this before the batch's newest frame are
            left out of the grid (a camera that stopped, or runs much slower).
    """

    def __init__(self, grid: bev.GridSpec, cameras: Sequence[Any], drivable_ids: Iterable[int],
                 *, max_age_ms: float = 500.0) -> None:
        from bisenet_ros.fusion import GridFuser

        self.spec = grid
        self.cameras = list(cameras)
        self.fuser = GridFuser(grid, drivable_ids, cameras=[c.name for c in self.cameras])
        self.max_age_ns = int(max_age_ms * 1e6)
        self.written = 0
        self.picture: np.ndarray | None = None
        self.statuses: dict[str, Any] = {}  # camera -> its CameraStatus in the latest grid
        self._stages = {camera.name: camera.grid for camera in self.cameras}

    def fuse(self, frames: Sequence[tuple[str, int, str, np.ndarray, tuple[int, ...]]]) -> Any:
        """The OccupancyGrid message of one batch, or None when no frame of it gave votes.

        Args:
            frames: ``(camera, stamp_ns, frame_id, labels, frame_shape)`` of the batch's frames.

        Returns:
            The grid of every camera's latest votes, stamped with the newest votes fused.
        """
        fresh = []
        for name, stamp_ns, frame_id, labels, frame_shape in frames:
            stage = self._stages.get(name)
            if stage is None:  # no camera model or pose at all: said once, at the start
                self.fuser.update(name, None, None, None, stamp_ns=stamp_ns,
                                  problem="no camera model or pose (see the warnings)")
                continue
            camera = stage.source.camera_at(stamp_ns)
            try:
                pose, problem = stage.source.pose_for(frame_id), None
            except bev.BevError as err:
                pose, problem = None, str(err)
            status = self.fuser.update(
                name, labels, camera, pose, stamp_ns=stamp_ns, problem=problem,
                window=bev.label_window(frame_shape, labels.shape, stage.resize))
            if status.fused:
                fresh.append((name, stamp_ns, frame_id))
            else:
                stage.problems[status.message] += 1
        if not fresh:
            return None
        fused = self.fuser.fuse(stamp_ns=max(stamp for _, stamp, _ in fresh),
                                max_age_ns=self.max_age_ns)
        self.statuses = dict(fused.cameras)
        for name, stamp_ns, frame_id in fresh:
            votes = fused.votes.get(name)  # None: stale beside the batch's newest frame
            if votes is not None:
                self._stages[name].record(stamp_ns, frame_id, votes)
        if self.picture is None:
            self.picture = fused.values
        self.written += 1
        return make_occupancy_grid(fused.stamp_ns or 0, self.spec.frame_id,
                                   bev.occupancy_grid_fields(fused.values, self.spec))

    def warnings(self) -> list[str]:
        """The report's warnings: each camera left out of fused grids, how often and why
        (:meth:`~bisenet_ros.fusion.GridFuser.warnings`); when no grid was fused at all, each
        camera's own reasons. A camera whose view misses the extent is never silent."""
        if self.written:
            return self.fuser.warnings()
        return [f"camera {c.name!r}: {w}" for c in self.cameras if c.grid is not None
                for w in c.grid.warnings()]

    @property
    def evaluated(self) -> int:
        return sum(c.grid.evaluated for c in self.cameras if c.grid is not None)

    def iou(self) -> float | None:
        """Bird's-eye drivable IoU over the cameras with ground truth (their own grids)."""
        stages = [c.grid for c in self.cameras if c.grid is not None]
        union = sum(stage.union for stage in stages)
        return sum(stage.intersection for stage in stages) / union if union else None

    def summary(self) -> dict[str, Any]:
        """The report's ``birds_eye`` section: the fused grid, and each camera's share."""
        cameras = {camera.name: None if camera.grid is None else camera.grid.camera_summary()
                   for camera in self.cameras}
        return {"topic_messages": self.written, "grid": grid_summary(self.spec),
                "fused": True, "max_age_ms": self.max_age_ns / 1e6, "cameras": cameras,
                "fusion": self.fuser.summary(),
                "drivable_iou": self.iou(), "frames_evaluated": self.evaluated}

    def picture_png(self) -> bytes | None:
        """PNG of the first fused grid, forward up."""
        return None if self.picture is None else grid_png(self.spec, [self.picture])
