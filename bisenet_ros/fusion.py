"""One surround drivable grid fused from several cameras (ROS-free; see :mod:`bisenet_ros.bev`).

Each camera's label map is projected onto the common grid (:class:`bisenet_ros.bev.GridSpec`,
in ``grid_frame``) by its own :class:`~bisenet_ros.bev.BevProjector` (its CameraInfo model and
its pose from tf), which gives per-cell *votes* (:class:`~bisenet_ros.bev.CellVotes`): how many
of the cell's samples count and how many of those are drivable. The fuser keeps each camera's
latest votes and combines them into one grid.

Overlap rule (stated here, tested in test/test_fusion.py): a camera *sees* a cell when at least
half of the cell's samples count for it, which is exactly when its own grid would not mark the
cell unknown. For each cell, the counted samples and the drivable samples of the cameras that
see it are summed, and the one-camera rule is applied to the sums: free (0) when strictly more
than half of the summed counted samples are drivable, occupied (100) otherwise (a tie, e.g. one
camera all drivable and another none, is not free), unknown (-1) where no camera sees the cell.
So a cell seen by one camera only gets that camera's value, unchanged; a camera that sees a cell
only at its edge (fewer than half of its samples) does not vote on it; cameras vote in
proportion to the samples they see.

A camera without CameraInfo or pose, whose projection fails (looking at the sky, below the
ground, view outside the grid extent) or whose latest frame is older than ``max_age_ns`` adds
nothing: its cells are unknown unless another camera sees them, and its
:class:`CameraStatus` says why in one line (for the node's diagnostics and log, and the replay's
report). The others go on.

Cost: one ``cv2.remap`` per camera over the block of cells the camera can see, two table
lookups and additions per camera, and one pass over the grid (``benchmarks/bench_bev.py``).
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Iterable, Sequence

import cv2
import numpy as np

from bisenet_ros import bev

__all__ = ["CAMERA_STATES", "CameraStatus", "FusedGrid", "GridFuser", "fuse_votes"]

#: :attr:`CameraStatus.state` values: ``fused`` (its votes are in the grid) and why not.
CAMERA_STATES = ("fused", "no_frame", "stale", "no_camera_info", "no_pose", "outside_extent",
                 "invalid")


@dataclasses.dataclass(frozen=True)
class CameraStatus:
    """Where one camera stands in the fused grid.

    Attributes:
        name: The camera's name.
        state: One of :data:`CAMERA_STATES`.
        message: Why the camera adds nothing (one line for logs, diagnostics and reports); empty
            when ``fused``.
        stamp_ns: Stamp of the camera's latest votes, nanoseconds (None: none yet).
        visible_cells: Cells the camera can see in the grid at its pose (0 when unknown).
    """

    name: str
    state: str
    message: str = ""
    stamp_ns: int | None = None
    visible_cells: int = 0

    @property
    def fused(self) -> bool:
        return self.state == "fused"


@dataclasses.dataclass
class FusedGrid:
    """One fused grid and how each camera took part.

    Attributes:
        values: (height, width) int8 OccupancyGrid values (0 free, 100 occupied, -1 unknown),
            row = y index from ``grid.y_min``, column = x index from ``grid.x_min``.
        grid: The grid.
        cameras: Camera name -> status, in the order the cameras were first named.
        votes: Camera name -> the votes fused (only the ``fused`` cameras).
        stamp_ns: The newest stamp among the fused cameras' votes (None when none is fused).
    """

    values: np.ndarray
    grid: bev.GridSpec
    cameras: dict[str, CameraStatus]
    votes: dict[str, bev.CellVotes]
    stamp_ns: int | None

    def camera_grid(self, name: str) -> np.ndarray | None:
        """The (height, width) int8 grid of one fused camera alone (what its single-camera
        :class:`~bisenet_ros.bev.BevProjector` gives), or None when it is not fused."""
        votes = self.votes.get(name)
        return None if votes is None else votes.values()

    def warnings(self) -> list[str]:
        """One line per camera that adds nothing, ``camera 'NAME': why``."""
        return [f"camera {status.name!r}: {status.message}" for status in self.cameras.values()
                if not status.fused]


@dataclasses.dataclass(frozen=True)
class _Latest:
    votes: bev.CellVotes
    stamp_ns: int | None
    visible_cells: int


class GridFuser:
    """The surround grid of several cameras, from each camera's latest label map.

    Per camera: :meth:`update` with each new label map (or with ``camera``/``pose`` None and
    the reason when they are missing); then :meth:`fuse` gives the grid of every camera's
    latest votes. Not thread-safe: call it from one thread (the node's worker, the replay's
    writer).

    Args:
        grid: The common grid (e.g. :func:`bisenet_ros.bev.surround_grid` of the node's grid).
        drivable_ids: Class ids counted as drivable.
        ignore_ids: Class ids never counted (255 never is, always).
        cameras: Camera names known from the start: one that never sends a frame shows as
            ``no_frame`` in :attr:`FusedGrid.cameras`.
        cache_size: Lookups kept per camera (see :class:`~bisenet_ros.bev.BevProjector`).
    """

    def __init__(self, grid: bev.GridSpec, drivable_ids: Iterable[int],
                 ignore_ids: Iterable[int] = (), *, cameras: Sequence[str] = (),
                 cache_size: int = 2) -> None:
        self.grid = grid
        self.drivable_ids = [int(i) for i in drivable_ids]
        self.ignore_ids = [int(i) for i in ignore_ids]
        self.cache_size = cache_size
        self._projectors: dict[str, bev.BevProjector] = {}
        self._latest: dict[str, _Latest] = {}
        self._status: dict[str, CameraStatus] = {}
        #: Fused grids made so far (:meth:`fuse` calls).
        self.grids = 0
        # name -> state -> (grids in that state, the latest message)
        self._tally: dict[str, dict[str, tuple[int, str]]] = {}
        for name in cameras:
            self._status[name] = CameraStatus(name, "no_frame", "no frame received yet")

    def projector(self, name: str) -> bev.BevProjector:
        """The single-camera projector of camera ``name`` (its own lookup cache), e.g. for a
        per-camera grid."""
        projector = self._projectors.get(name)
        if projector is None:
            projector = bev.BevProjector(self.grid, self.drivable_ids, self.ignore_ids,
                                         cache_size=self.cache_size)
            self._projectors[name] = projector
        return projector

    def update(self, name: str, labels: np.ndarray | None, camera: bev.CameraModel | None,
               pose: bev.Pose | None, *, stamp_ns: int | None = None,
               window: tuple[int, int, int, int] | None = None,
               problem: str | None = None) -> CameraStatus:
        """Take camera ``name``'s latest label map.

        Args:
            name: The camera.
            labels: (rows, cols) uint8 class ids (255 = ignore).
            camera: Its model from CameraInfo, or None when there is none (yet).
            pose: Its optical frame in the grid frame (tf), or None when there is none.
            stamp_ns: The frame's stamp, nanoseconds (for ``max_age_ns`` in :meth:`fuse`).
            window: Where the frame lies in a letterboxed label map
                (:func:`bisenet_ros.bev.label_window`).
            problem: Why ``camera`` or ``pose`` is None (e.g. tf2's message), for the status.

        Returns:
            The camera's status. A camera that adds nothing loses its earlier votes: its cells
            are unknown unless another camera sees them.
        """
        status: CameraStatus
        if camera is None:
            status = CameraStatus(name, "no_camera_info", problem or "no CameraInfo received",
                                  stamp_ns)
        elif pose is None:
            status = CameraStatus(name, "no_pose", problem or f"no transform from the camera to "
                                  f"{self.grid.frame_id!r}", stamp_ns)
        elif labels is None:
            status = CameraStatus(name, "no_frame", problem or "no label map", stamp_ns)
        else:
            labels = np.ascontiguousarray(labels)
            projector = self.projector(name)
            try:
                lookup = projector.lookup(camera, pose, labels.shape, window)
                votes = lookup.votes(labels, projector.lut)
            except bev.BevError as err:
                # A lookup that sees no cell says why (its coverage; the projector caches it).
                outside = err.coverage is not None and err.coverage.outside
                status = CameraStatus(name, "outside_extent" if outside else "invalid",
                                      str(err), stamp_ns)
            else:
                self._latest[name] = _Latest(votes, stamp_ns, lookup.visible_cells)
                status = CameraStatus(name, "fused", "", stamp_ns, lookup.visible_cells)
        if not status.fused:
            self._latest.pop(name, None)
        self._status[name] = status
        return status

    def fuse(self, *, stamp_ns: int | None = None, max_age_ns: int | None = None) -> FusedGrid:
        """The grid of every camera's latest votes (see the overlap rule in the module docstring).

        Args:
            stamp_ns: The stamp the grid stands for (e.g. the newest frame's), nanoseconds.
            max_age_ns: Votes stamped more than this before ``stamp_ns`` are left out (state
                ``stale``): a moving vehicle's old view is elsewhere in ``grid_frame``. None:
                every camera's latest votes count.
        """
        statuses: dict[str, CameraStatus] = {}
        fused: dict[str, bev.CellVotes] = {}
        for name, status in self._status.items():
            latest = self._latest.get(name)
            if latest is not None and stamp_ns is not None and max_age_ns is not None and (
                    latest.stamp_ns is not None and stamp_ns - latest.stamp_ns > max_age_ns):
                age_ms = (stamp_ns - latest.stamp_ns) / 1e6
                status = CameraStatus(name, "stale", f"its latest frame is {age_ms:.0f} ms older "
                                      f"than the grid (more than {max_age_ns / 1e6:.0f} ms)",
                                      latest.stamp_ns, latest.visible_cells)
            elif latest is not None:
                fused[name] = latest.votes
            statuses[name] = status
            tally = self._tally.setdefault(name, {})
            tally[status.state] = (tally.get(status.state, (0, ""))[0] + 1, status.message)
        self.grids += 1
        stamps = [self._latest[name].stamp_ns for name in fused
                  if self._latest[name].stamp_ns is not None]
        return FusedGrid(fuse_votes(list(fused.values()), self.grid), self.grid, statuses, fused,
                         max(stamps) if stamps else None)

    def summary(self) -> dict[str, object]:
        """Per camera, over every fused grid so far: how many grids were in each state and the
        latest message of each (for a report or ``metrics.json``)::

            {"fused_grids": 120, "cameras": {"rear": {"grids": {"fused": 100, "no_pose": 20},
             "messages": {"no_pose": "no transform ..."}}}}
        """
        cameras: dict[str, object] = {}
        for name, tally in self._tally.items():
            cameras[name] = {"grids": {state: count for state, (count, _) in tally.items()},
                             "messages": {state: message for state, (_, message) in tally.items()
                                          if message}}
        return {"fused_grids": self.grids, "cameras": cameras}

    def warnings(self) -> list[str]:
        """One line per camera and state that left it out of fused grids so far, with the
        count (a report's warnings: a camera that adds nothing is never silent)."""
        return [f"camera {name!r}: left out of {count} of {self.grids} fused grid(s) ({state}): "
                f"{message}"
                for name, tally in self._tally.items()
                for state, (count, message) in tally.items() if state != "fused"]


@dataclasses.dataclass(frozen=True)
class _FusionTables:
    counted: np.ndarray
    drivable: np.ndarray


@functools.lru_cache(maxsize=None)
def _tables(subsamples: int) -> _FusionTables:
    """Summed sample code -> (counted, drivable) samples of a camera that sees the cell, 0 for
    one that does not (fewer than half of the samples count). Built once per ``subsamples``
    (read-only), as :func:`bisenet_ros.bev.vote_table`."""
    n = subsamples * subsamples
    counted = np.zeros(256, np.uint8)
    drivable = np.zeros(256, np.uint8)
    for uncounted in range(n + 1):
        seen = n - uncounted
        if 2 * seen < n:
            continue
        for code in range(seen + 1):
            counted[code + 16 * uncounted] = seen
            drivable[code + 16 * uncounted] = code
    counted.flags.writeable = drivable.flags.writeable = False
    return _FusionTables(counted, drivable)


def fuse_votes(votes: Sequence[bev.CellVotes], grid: bev.GridSpec) -> np.ndarray:
    """Fuse cameras' votes on ``grid`` by the overlap rule (module docstring).

    Args:
        votes: One :class:`~bisenet_ros.bev.CellVotes` per camera, all on ``grid``.
        grid: The grid.

    Returns:
        (height, width) int8 OccupancyGrid values; unknown everywhere when ``votes`` is empty.

    Raises:
        BevError: votes from another grid shape or sampling, or more than 63 cameras at 2 x 2
            samples per cell (28 at 3 x 3): the sums are 8-bit.
    """
    shape = (grid.height, grid.width)
    values = np.full(shape, bev.UNKNOWN, dtype=np.int8)
    if not votes:
        return values
    for item in votes:
        if item.shape != shape or item.subsamples != grid.subsamples:
            raise bev.BevError(f"votes on a {item.shape} grid with {item.subsamples}x"
                               f"{item.subsamples} samples per cell: expected {shape} with "
                               f"{grid.subsamples}x{grid.subsamples} (one GridSpec for all)")
    if len(votes) == 1:  # the camera's own grid: the same rule, one table lookup
        return votes[0].values()
    if len(votes) * grid.subsamples ** 2 > 252:  # the 8-bit sums below (2 x drivable too)
        raise bev.BevError(f"{len(votes)} cameras with {grid.subsamples ** 2} samples per cell: "
                           f"at most {252 // grid.subsamples ** 2} cameras can be fused")
    tables = _tables(grid.subsamples)
    # Only the block that any camera sees is summed.
    rows = slice(min(v.rows.start for v in votes), max(v.rows.stop for v in votes))
    cols = slice(min(v.cols.start for v in votes), max(v.cols.stop for v in votes))
    block_shape = (rows.stop - rows.start, cols.stop - cols.start)
    counted = np.zeros(block_shape, np.uint8)
    drivable = np.zeros(block_shape, np.uint8)
    for item in votes:
        r = slice(item.rows.start - rows.start, item.rows.stop - rows.start)
        c = slice(item.cols.start - cols.start, item.cols.stop - cols.start)
        counted[r, c] += cv2.LUT(item.codes, tables.counted)
        drivable[r, c] += cv2.LUT(item.codes, tables.drivable)
    # 255/0 masks, then OccupancyGrid bytes without branches: known -> 100, free (a strict
    # majority: a tie is not free) -> 0, unknown -> 255 (-1).
    known = cv2.compare(counted, 0, cv2.CMP_GT)
    free = cv2.compare(cv2.add(drivable, drivable), counted, cv2.CMP_GT)
    block = known & np.uint8(bev.OCCUPIED)
    block &= ~free
    block |= ~known
    values[rows, cols] = block.view(np.int8)
    return values
