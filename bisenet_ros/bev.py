"""Bird's-eye view: a drivable mask in the camera image -> a ``nav_msgs/OccupancyGrid`` for planners.

ROS-free (NumPy + OpenCV); the node and the replay feed it message fields.

Geometry (frames as in REP-103/105):

* The camera model comes from the fields of ``sensor_msgs/CameraInfo`` (:class:`CameraModel`):
  ``K``, ``D`` with ``plumb_bob`` / ``rational_polynomial`` (OpenCV's pinhole model, 4-14
  coefficients) or ``equidistant`` (OpenCV's fisheye model, 4 coefficients), ``P`` for rectified
  images, ``width``/``height``, ``binning_x``/``binning_y`` and ``roi``. As the CameraInfo message
  comments and ``image_geometry`` define them, ``K``/``D``/``P`` describe the full-resolution
  camera; the published image is the ROI (in full-resolution pixels; all zeros = the whole
  image) downsampled by the binning factors (0 and 1 = none), so a full-resolution pixel
  ``(u, v)`` is ``((u - x_offset) / binning_x, (v - y_offset) / binning_y)`` in the image.
* The camera pose (:class:`Pose`) maps points of the camera's optical frame (z forward, x right,
  y down) into the grid frame (``base_link``: x forward, y left, z up): ``p_grid = R p_cam + t``.
  That is what ``tf2`` returns for ``lookup_transform(grid_frame, image_frame_id, ...)``.
* The ground is the plane ``z = ground_height`` of the grid frame. The grid
  (:class:`GridSpec`) follows ``nav_msgs/OccupancyGrid``: ``resolution`` m/cell, ``width`` cells
  along x, ``height`` cells along y, the origin is the corner ``(x_min, y_min)`` of cell (0, 0),
  and the data is row-major from there (row = y index, column = x index).

Method: the lookup goes from the ground to the image, which needs no iterative undistortion
(``cv2.projectPoints`` / ``cv2.fisheye.projectPoints``). Each cell is sampled at
``subsamples x subsamples`` points (a regular sub-grid, 2 x 2 by default); every sample point is
projected once, when the (camera model, pose, grid, mask size) changes, into an integer pixel
map of the mask (:class:`GroundLookup`). Per frame it is one ``cv2.remap`` (nearest) of the label
map over the block of cells the camera can see, one table lookup per sample and one per cell.
The per-cell sums before the vote (:class:`CellVotes`) are what :mod:`bisenet_ros.fusion` adds up
over several cameras.

Vote rule per cell (stated here, used by :func:`vote_table`): a sample *counts* when its ground
point lies in front of the camera (``z > 5 cm`` in the optical frame), within the lens's valid
field of view, within ``max_range`` (horizontal distance from the point below the camera),
inside the image, and its label is not ignored (255 is always ignored: "no label" / outside).
A cell with fewer than half of its samples counting is unknown (-1); otherwise it is free (0)
when strictly more than half of its counting samples are drivable, and occupied (100: visible
ground that is not drivable) otherwise, so a tie is not free. Ground points above the horizon do
not exist, so no pixel above the horizon ever contributes to the grid.

Performance (``benchmarks/bench_bev.py``): a 40 m x 40 m grid at 0.1 m (160 000 cells, 640 000
samples) from a 1920x1080 label map is about a millisecond per frame on one core.
"""
from __future__ import annotations

import collections
import dataclasses
import functools
import math
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import cv2
import numpy as np

__all__ = [
    "BevError", "CameraModel", "Pose", "GridSpec", "GroundLookup", "BevProjector",
    "DISTORTION_MODELS", "MAX_GRID_CELLS", "FREE", "OCCUPIED", "UNKNOWN", "vote_table",
    "label_lut", "quaternion_to_matrix", "matrix_to_quaternion", "rpy_to_matrix", "OPTICAL_IN_BODY", "grid_image",
    "occupancy_grid_fields", "label_window", "CellVotes", "ViewCoverage", "view_coverage",
    "surround_grid",
]

#: Distortion models understood (``sensor_msgs/distortion_models.hpp`` names).
DISTORTION_MODELS = ("plumb_bob", "rational_polynomial", "equidistant")
#: Largest grid, in cells (e.g. 200 m x 200 m at 0.1 m); the lookup holds 4 samples x 4 bytes per
#: cell, so this caps it near 64 MB.
MAX_GRID_CELLS = 4_000_000
#: OccupancyGrid values.
FREE, OCCUPIED, UNKNOWN = 0, 100, -1
# Per-sample codes summed per cell: drivable samples count 1, uncounted ones 16 (so up to 15
# samples per cell fit in a uint8 sum: subsamples <= 3).
_DRIVABLE, _UNCOUNTED = 1, 16
# Labels never counted: 255 is "ignore" in ground truth and the border value of the remap.
_IGNORE = 255
# Ground points closer than this to the camera's image plane are not projected (they would land
# at infinity, or behind the camera).
_MIN_DEPTH_M = 0.05
_PROJECT_CHUNK = 16384  # points per cv2.projectPoints call

#: Rotation of the optical frame (z forward, x right, y down) in the camera body frame
#: (x forward, y left, z up), REP-103: columns are the optical axes in body coordinates (the
#: ``rpy = (-pi/2, 0, -pi/2)`` of a URDF ``*_optical_joint``).
OPTICAL_IN_BODY = np.array([[0.0, 0.0, 1.0], [-1.0, 0.0, 0.0], [0.0, -1.0, 0.0]])


class BevError(ValueError):
    """A camera model, pose or grid the bird's-eye view cannot use (the message says why).

    Attributes:
        coverage: For a camera that sees no cell of the grid, how its ground view meets the
            grid (:func:`view_coverage`: e.g. ``coverage.outside``); None otherwise.
    """

    def __init__(self, message: str, *, coverage: "ViewCoverage | None" = None) -> None:
        super().__init__(message)
        self.coverage = coverage


# --------------------------------------------------------------------------------- rotations
# Written out rather than importing scipy (not a dependency; two small closed formulas do not
# justify a 40 MB package). Conventions as tf2: quaternions (x, y, z, w); RPY fixed axes X, Y, Z.
def quaternion_to_matrix(quaternion: Sequence[float]) -> np.ndarray:
    """Rotation matrix (3, 3) of a unit quaternion ``(x, y, z, w)`` (normalized here).

    Raises:
        BevError: the quaternion has (near) zero length.
    """
    x, y, z, w = (float(v) for v in quaternion)
    norm = math.sqrt(x * x + y * y + z * z + w * w)
    if not norm > 1e-9:
        raise BevError(f"rotation quaternion {tuple(quaternion)} has zero length; expected a "
                       "unit quaternion (x, y, z, w), e.g. (0, 0, 0, 1)")
    x, y, z, w = x / norm, y / norm, z / norm, w / norm
    return np.array([
        [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
        [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
        [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)]])


def matrix_to_quaternion(rotation: np.ndarray) -> tuple[float, float, float, float]:
    """Unit quaternion ``(x, y, z, w)`` of a (3, 3) rotation matrix (Shepperd's method: the
    branch on the largest diagonal term keeps it accurate near 180 degrees)."""
    r = np.asarray(rotation, dtype=np.float64)
    trace = r[0, 0] + r[1, 1] + r[2, 2]
    if trace > 0:
        s = 2.0 * math.sqrt(trace + 1.0)
        q = [(r[2, 1] - r[1, 2]) / s, (r[0, 2] - r[2, 0]) / s, (r[1, 0] - r[0, 1]) / s, s / 4]
    else:
        i = int(np.argmax(np.diag(r)))
        j, k = (i + 1) % 3, (i + 2) % 3
        s = 2.0 * math.sqrt(max(1.0 + r[i, i] - r[j, j] - r[k, k], 1e-300))
        q = [0.0, 0.0, 0.0, (r[k, j] - r[j, k]) / s]
        q[i] = s / 4
        q[j] = (r[j, i] + r[i, j]) / s
        q[k] = (r[k, i] + r[i, k]) / s
    return (float(q[0]), float(q[1]), float(q[2]), float(q[3]))


def rpy_to_matrix(roll: float, pitch: float, yaw: float) -> np.ndarray:
    """Rotation matrix (3, 3) ``Rz(yaw) Ry(pitch) Rx(roll)`` (radians; tf2's ``setRPY``)."""
    cr, sr, cp, sp, cy, sy = (math.cos(roll), math.sin(roll), math.cos(pitch), math.sin(pitch),
                              math.cos(yaw), math.sin(yaw))
    return np.array([[cy * cp, cy * sp * sr - sy * cr, cy * sp * cr + sy * sr],
                     [sy * cp, sy * sp * sr + cy * cr, sy * sp * cr - cy * sr],
                     [-sp, cp * sr, cp * cr]])


@dataclasses.dataclass(frozen=True, eq=False)
class Pose:
    """Pose of the camera's optical frame in the grid frame: ``p_grid = rotation @ p_cam + translation``.

    Attributes:
        rotation: (3, 3) rotation matrix; its columns are the optical axes in the grid frame.
        translation: (3,) optical centre in the grid frame, metres.
    """

    rotation: np.ndarray
    translation: np.ndarray

    @classmethod
    def from_transform(cls, translation: Sequence[float], quaternion: Sequence[float]) -> "Pose":
        """From a ``geometry_msgs/Transform`` (translation metres, rotation ``(x, y, z, w)``)."""
        return cls(quaternion_to_matrix(quaternion), np.asarray(translation, dtype=np.float64))

    @classmethod
    def from_mount(cls, x: float, y: float, z: float, roll: float, pitch: float,
                   yaw: float) -> "Pose":
        """From the camera *body* pose (x forward, y left, z up) in the grid frame.

        ``z`` is the height above the grid frame's origin (metres); ``pitch`` > 0 looks down
        (radians). The optical frame is the body frame turned by :data:`OPTICAL_IN_BODY`.
        """
        return cls(rpy_to_matrix(roll, pitch, yaw) @ OPTICAL_IN_BODY,
                   np.array([x, y, z], dtype=np.float64))

    def compose(self, child: "Pose") -> "Pose":
        """``self * child``: the pose of ``child``'s frame when ``child`` is given in ``self``'s."""
        return Pose(self.rotation @ child.rotation, self.rotation @ child.translation + self.translation)

    def inverse(self) -> "Pose":
        return Pose(self.rotation.T, -self.rotation.T @ self.translation)

    @property
    def key(self) -> tuple[float, ...]:
        """Rotation entries rounded to 1e-4 (about 0.1 mrad: 3 mm at 30 m) and translation to
        1 mm: poses with equal keys share a lookup, so tf jitter far below a grid cell does not
        rebuild it every frame."""
        return (tuple(np.round(self.rotation.ravel(), 4)) + tuple(np.round(self.translation, 3)))


# ------------------------------------------------------------------------------ camera model
def _field(msg: Any, *names: str, default: Any = None) -> Any:
    # CameraInfo field names: ROS 2 lower case (k, d, p), ROS 1 / YAML upper case (K, D, P).
    for name in names:
        if isinstance(msg, Mapping) and name in msg:
            return msg[name]
        if not isinstance(msg, Mapping) and hasattr(msg, name):
            return getattr(msg, name)
    return default


@dataclasses.dataclass(frozen=True, eq=False)
class CameraModel:
    """The camera's projection, from ``sensor_msgs/CameraInfo`` fields (see module docstring).

    Attributes:
        width: Calibration (full-resolution) image width, pixels.
        height: Calibration image height, pixels.
        k: (3, 3) intrinsic matrix of the raw (distorted) full-resolution image.
        d: Distortion coefficients for ``distortion_model``.
        distortion_model: One of :data:`DISTORTION_MODELS`.
        p: (3, 4) projection matrix of the rectified image (used with ``rectified``).
        binning_x: Horizontal binning (1 = none).
        binning_y: Vertical binning (1 = none).
        roi: ``(x_offset, y_offset, width, height)`` in full-resolution pixels.
        rectified: The images are rectified (``image_rect``): project with ``P`` and no
            distortion instead of ``K`` and ``D``.
    """

    width: int
    height: int
    k: np.ndarray
    d: np.ndarray
    distortion_model: str = "plumb_bob"
    p: np.ndarray | None = None
    binning_x: int = 1
    binning_y: int = 1
    roi: tuple[int, int, int, int] = (0, 0, 0, 0)
    rectified: bool = False

    def __post_init__(self) -> None:
        self._validate()

    @classmethod
    def from_camera_info(cls, msg: Any, *, rectified: bool = False) -> "CameraModel":
        """From a ``sensor_msgs/CameraInfo`` message (ROS 2 or typestore) or a mapping of its fields.

        Raises:
            BevError: uncalibrated (``K`` all zero, zero size), unsupported distortion model or
                coefficient count, inconsistent ROI.
        """
        roi_msg = _field(msg, "roi")
        if roi_msg is None:
            roi = (0, 0, 0, 0)
        else:
            roi = tuple(int(_field(roi_msg, name, default=0))
                        for name in ("x_offset", "y_offset", "width", "height"))
        p = _field(msg, "p", "P")
        return cls(
            width=int(_field(msg, "width", default=0)), height=int(_field(msg, "height", default=0)),
            k=np.asarray(_field(msg, "k", "K", default=np.zeros(9)), dtype=np.float64).reshape(-1),
            d=np.asarray(_field(msg, "d", "D", default=()), dtype=np.float64).reshape(-1),
            distortion_model=str(_field(msg, "distortion_model", default="") or ""),
            p=None if p is None else np.asarray(p, dtype=np.float64).reshape(-1),
            binning_x=int(_field(msg, "binning_x", default=0)),
            binning_y=int(_field(msg, "binning_y", default=0)),
            roi=roi, rectified=rectified)  # type: ignore[arg-type]

    @classmethod
    def from_calibration_yaml(cls, path: str | Path, *, rectified: bool = False) -> "CameraModel":
        """From a ``camera_calibration`` / ``camera_info_manager`` YAML file.

        Keys: ``image_width``, ``image_height``, ``camera_matrix``, ``distortion_model``,
        ``distortion_coefficients``, ``projection_matrix`` (each matrix as ``{rows, cols, data}``).

        Raises:
            BevError: the file is missing keys or holds an unusable calibration.
            OSError: the file cannot be read.
        """
        import yaml

        with open(path, encoding="utf-8") as stream:
            data = yaml.safe_load(stream)
        missing = [key for key in ("image_width", "image_height", "camera_matrix")
                   if not isinstance(data, dict) or key not in data]
        if missing:
            raise BevError(f"{path}: not a camera_calibration YAML file (missing "
                           f"{', '.join(missing)}); expected image_width, image_height, "
                           "camera_matrix, distortion_model, distortion_coefficients")

        def matrix(key: str) -> list[float] | None:
            entry = data.get(key)
            return None if entry is None else list(entry.get("data", []))

        return cls.from_camera_info({
            "width": data["image_width"], "height": data["image_height"],
            "k": matrix("camera_matrix"), "d": matrix("distortion_coefficients") or [],
            "distortion_model": data.get("distortion_model", "plumb_bob"),
            "p": matrix("projection_matrix")}, rectified=rectified)

    def _validate(self) -> None:
        k = np.asarray(self.k, dtype=np.float64).reshape(-1)
        if self.width <= 0 or self.height <= 0:
            raise BevError(f"CameraInfo width x height is {self.width} x {self.height}: the camera "
                           "is not calibrated (expected the calibration image size; run "
                           "camera_calibration or give a calibration file)")
        if k.size != 9 or not np.all(np.isfinite(k)) or k[0] <= 0 or k[4] <= 0:
            raise BevError("uncalibrated CameraInfo: K has no positive focal lengths (all zeros "
                           "means the driver has no calibration); calibrate the camera "
                           "(camera_calibration) or give a calibration YAML")
        object.__setattr__(self, "k", k.reshape(3, 3))
        model = self.distortion_model or "plumb_bob"
        d = np.asarray(self.d, dtype=np.float64).reshape(-1)
        if model not in DISTORTION_MODELS:
            raise BevError(f"distortion model {self.distortion_model!r} is not supported; expected "
                           f"one of {', '.join(DISTORTION_MODELS)} (or a rectified image with P)")
        if model == "equidistant":
            if d.size != 4:
                raise BevError(f"equidistant distortion needs 4 coefficients (k1..k4), got {d.size}")
        elif d.size == 0:
            d = np.zeros(5)
        elif d.size not in (4, 5, 8, 12, 14):
            raise BevError(f"{model} distortion with {d.size} coefficients; expected 5 "
                           "(plumb_bob) or 8 (rational_polynomial), as OpenCV's model")
        if not np.all(np.isfinite(d)):
            raise BevError("CameraInfo D holds NaN or infinite coefficients")
        object.__setattr__(self, "d", d)
        object.__setattr__(self, "distortion_model", model)
        if self.rectified:
            p = None if self.p is None else np.asarray(self.p, dtype=np.float64).reshape(-1)
            if p is None or p.size != 12 or p[0] <= 0 or p[5] <= 0:
                raise BevError("rectified images need CameraInfo P with positive focal lengths")
            object.__setattr__(self, "p", p.reshape(3, 4))
        object.__setattr__(self, "binning_x", max(int(self.binning_x), 1))
        object.__setattr__(self, "binning_y", max(int(self.binning_y), 1))
        x0, y0, w, h = (int(v) for v in self.roi)
        if (x0, y0, w, h) == (0, 0, 0, 0):
            w, h = self.width, self.height
        if w <= 0 or h <= 0 or x0 < 0 or y0 < 0 or x0 + w > self.width or y0 + h > self.height:
            raise BevError(f"CameraInfo roi (x_offset {x0}, y_offset {y0}, width {w}, height {h}) "
                           f"is not inside the {self.width} x {self.height} calibration image")
        object.__setattr__(self, "roi", (x0, y0, w, h))

    @property
    def image_size(self) -> tuple[int, int]:
        """``(width, height)`` of the published image: the ROI divided by the binning."""
        return self.roi[2] // self.binning_x, self.roi[3] // self.binning_y

    @property
    def key(self) -> tuple[Any, ...]:
        """Everything the projection depends on (equal keys: same lookup)."""
        p = () if self.p is None else tuple(np.asarray(self.p).ravel())
        return (self.width, self.height, tuple(self.k.ravel()), tuple(self.d),
                self.distortion_model, p, self.binning_x, self.binning_y, self.roi, self.rectified)

    def _valid_radius(self) -> float:
        """Largest undistorted radius (tan of the ray angle; or the angle, fisheye) up to which
        the distortion is monotonic. Beyond it a polynomial model folds back and would map
        points far outside the field of view into the image."""
        if self.rectified:
            return math.inf
        d = self.d
        if self.distortion_model == "equidistant":
            r = np.linspace(1e-4, math.pi / 2, 20001)
            r2 = r * r
            f = r * (1 + d[0] * r2 + d[1] * r2 ** 2 + d[2] * r2 ** 3 + d[3] * r2 ** 4)
        else:
            k = np.zeros(8)
            k[[0, 1]] = d[:2]
            if d.size >= 5:
                k[2] = d[4]
            if d.size >= 8:
                k[3:6] = d[5:8]
            r = np.linspace(1e-4, 20.0, 40001)
            r2 = r * r
            num = 1 + k[0] * r2 + k[1] * r2 ** 2 + k[2] * r2 ** 3
            den = 1 + k[3] * r2 + k[4] * r2 ** 2 + k[5] * r2 ** 3
            f = np.where(den > 0, r * num / np.where(den > 0, den, 1), -np.inf)
        bad = np.nonzero(np.diff(f) <= 0)[0]
        return float(r[bad[0]]) if bad.size else math.inf

    def project(self, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Project points of the optical frame into the published image.

        Args:
            points: (N, 3) float64 points in the optical frame, metres.

        Returns:
            ``(uv, valid)``: (N, 2) float64 pixel coordinates in the published image (ROI and
            binning applied; pixel centres at integers) and (N,) bool, False for points less
            than 5 cm in front of the camera or beyond the lens model's valid field of view.
            Whether a point falls inside the image is left to the caller.
        """
        points = np.asarray(points, dtype=np.float64).reshape(-1, 3)
        uv = np.full((len(points), 2), np.nan)
        z = points[:, 2]
        valid = z > _MIN_DEPTH_M
        with np.errstate(divide="ignore", invalid="ignore"):
            r = np.hypot(points[:, 0], points[:, 1]) / z
        limit = self._valid_radius()
        if self.distortion_model == "equidistant" and not self.rectified:
            valid &= np.arctan(r) < limit
        else:
            valid &= r < limit
        chosen = np.ascontiguousarray(points[valid])
        projected = np.empty((len(chosen), 2))
        zero = np.zeros(3)
        # In chunks: OpenCV's Python binding always computes the (2N x 15) Jacobian too, which
        # for a whole grid at once is hundreds of MB of memory traffic (2.5x slower here).
        for start in range(0, len(chosen), _PROJECT_CHUNK):
            part = chosen[start:start + _PROJECT_CHUNK]
            if self.rectified:
                out, _ = cv2.projectPoints(part, zero, zero, self.p[:, :3], None)
            elif self.distortion_model == "equidistant":
                out, _ = cv2.fisheye.projectPoints(part.reshape(1, -1, 3), zero, zero, self.k,
                                                   self.d)
            else:
                out, _ = cv2.projectPoints(part, zero, zero, self.k, self.d)
            projected[start:start + len(part)] = out.reshape(-1, 2)
        uv[valid] = projected
        uv[:, 0] = (uv[:, 0] - self.roi[0]) / self.binning_x
        uv[:, 1] = (uv[:, 1] - self.roi[1]) / self.binning_y
        return uv, valid


# -------------------------------------------------------------------------------------- grid
@dataclasses.dataclass(frozen=True)
class GridSpec:
    """The occupancy grid: extent in the grid frame, resolution, range and ground height.

    Attributes:
        frame_id: Grid frame (x forward, y left, z up), e.g. ``base_link``.
        resolution: Cell size, metres.
        x_min: Rear edge of the grid (x of the origin), metres.
        x_max: Front edge, metres.
        y_min: Right edge (y of the origin), metres.
        y_max: Left edge, metres.
        max_range: Cells farther than this (horizontal distance from the point below the
            camera) are unknown, metres.
        ground_height: z of the ground plane in the grid frame, metres.
        subsamples: Samples per cell along each axis (1-3; 2 = 4 samples per cell).
    """

    frame_id: str = "base_link"
    resolution: float = 0.1
    x_min: float = 0.0
    x_max: float = 40.0
    y_min: float = -20.0
    y_max: float = 20.0
    max_range: float = 30.0
    ground_height: float = 0.0
    subsamples: int = 2

    def __post_init__(self) -> None:
        if not (math.isfinite(self.resolution) and self.resolution > 0):
            raise BevError(f"grid resolution {self.resolution}: expected a positive number of metres")
        if not (self.x_max > self.x_min and self.y_max > self.y_min):
            raise BevError(f"grid extent x {self.x_min}..{self.x_max}, y {self.y_min}..{self.y_max}:"
                           " expected x_min < x_max and y_min < y_max (metres)")
        if not self.max_range > 0:
            raise BevError(f"grid max_range {self.max_range}: expected a positive number of metres")
        if self.subsamples not in (1, 2, 3):
            raise BevError(f"grid subsamples {self.subsamples}: expected 1, 2 or 3")
        if self.width * self.height > MAX_GRID_CELLS:
            raise BevError(f"grid of {self.width} x {self.height} cells is larger than the cap of "
                           f"{MAX_GRID_CELLS} cells; use a coarser resolution or a smaller extent")
        if not self.frame_id:
            raise BevError("grid frame is empty; expected e.g. base_link")

    @property
    def width(self) -> int:
        """Cells along x (``OccupancyGrid.info.width``)."""
        return max(1, int(round((self.x_max - self.x_min) / self.resolution)))

    @property
    def height(self) -> int:
        """Cells along y (``OccupancyGrid.info.height``)."""
        return max(1, int(round((self.y_max - self.y_min) / self.resolution)))

    @property
    def origin(self) -> tuple[float, float, float]:
        """Position of the corner of cell (0, 0) in the grid frame (``info.origin``), metres."""
        return (self.x_min, self.y_min, self.ground_height)

    def sample_points(self, rows: slice | None = None, cols: slice | None = None) -> np.ndarray:
        """Ground sample points, (S*S, height, width, 3) float64 in the grid frame, metres.

        ``rows`` and ``cols`` (slices of the y and x cell indices, step 1) give only that block
        of cells: (S*S, block rows, block cols, 3).
        """
        s = self.subsamples
        rows = slice(*rows.indices(self.height)) if rows is not None else slice(0, self.height)
        cols = slice(*cols.indices(self.width)) if cols is not None else slice(0, self.width)
        offsets = (np.arange(s) + 0.5)[:, None] / s
        xs = self.x_min + (np.arange(cols.start, cols.stop)[None, :] + offsets) * self.resolution
        ys = self.y_min + (np.arange(rows.start, rows.stop)[None, :] + offsets) * self.resolution
        points = np.empty((s, s, ys.shape[1], xs.shape[1], 3))
        points[..., 0] = xs[None, :, None, :]
        points[..., 1] = ys[:, None, :, None]
        points[..., 2] = self.ground_height
        return points.reshape(s * s, ys.shape[1], xs.shape[1], 3)


def surround_grid(grid: GridSpec) -> GridSpec:
    """``grid`` with the surround extent of a vehicle with several cameras.

    The extent is the square of half-size ``max_range`` around the grid frame's origin (x and
    y from ``-max_range`` to ``+max_range``, widened to whole cells): every camera's view up to
    ``max_range``, behind and beside the vehicle included. It depends on no camera pose, so the
    grid's size and origin are fixed from the start (tf may come late) and the same in the node
    and the replay; a camera mounted ``d`` metres from the origin loses at most the last ``d``
    metres of its range on its side.

    Raises:
        BevError: the square has more than :data:`MAX_GRID_CELLS` cells (e.g. ``max_range`` 120
            m at 0.1 m); the message says what to change.
    """
    cells = math.ceil(grid.max_range / grid.resolution - 1e-9)
    half = cells * grid.resolution
    if (2 * cells) ** 2 > MAX_GRID_CELLS:
        raise BevError(
            f"the surround grid (x and y -{half:g}..{half:g} m: grid_max_range at "
            f"{grid.resolution:g} m per cell) would be {2 * cells} x {2 * cells} cells, more than "
            f"the cap of {MAX_GRID_CELLS}; lower grid_max_range, use a coarser grid_resolution or "
            "give the extent (grid_x_min, grid_x_max, grid_y_min, grid_y_max)")
    return dataclasses.replace(grid, x_min=-half, x_max=half, y_min=-half, y_max=half)


@dataclasses.dataclass(frozen=True)
class ViewCoverage:
    """How a camera's view of the ground meets a grid (see :func:`view_coverage`).

    Attributes:
        samples: Ground points (on a regular lattice) the camera sees up to ``max_range``.
        inside: Of those, the points inside the grid extent.
        bounds: ``(x_min, x_max, y_min, y_max)`` of the seen points in the grid frame, metres
            (None when it sees no ground).
        problem: Why the camera adds nothing to the grid, one line, or None when its view
            overlaps the grid.
    """

    samples: int
    inside: int
    bounds: tuple[float, float, float, float] | None
    problem: str | None

    @property
    def outside(self) -> bool:
        """The camera sees ground, none of it inside the grid extent."""
        return self.samples > 0 and self.inside == 0

    @property
    def fraction_inside(self) -> float:
        """Share of the camera's ground view (up to ``max_range``) inside the grid extent."""
        return self.inside / self.samples if self.samples else 0.0


def view_coverage(camera: CameraModel, pose: Pose, grid: GridSpec) -> ViewCoverage:
    """Whether a camera's ground footprint (up to ``grid.max_range``) meets the grid extent.

    A coarse check, independent of the grid's cells and of the label-map size, made once per
    camera model and pose: the ground is sampled every ``max(resolution, max_range / 150)``
    metres in the square of half-size ``max_range`` around the point below the camera, and a
    point is seen as in :class:`GroundLookup` (in front of the camera, within the lens's field of
    view, inside the image).

    Returns:
        The :class:`ViewCoverage`; its ``problem`` is the warning to log and report (a camera
        below the ground, looking at the sky, or whose view lies outside the extent: e.g. a
        rear-facing camera with the forward default extent).
    """
    height = float(pose.translation[2]) - grid.ground_height
    if not height > 0:
        return ViewCoverage(0, 0, None, (
            f"the camera is {height:.3f} m above the ground plane (z = {grid.ground_height} m in "
            f"{grid.frame_id}), so it sees no ground; check the camera pose and ground_height"))
    reach = grid.max_range
    step = max(grid.resolution, reach / 150.0)
    offsets = np.arange(-reach, reach + step / 2, step)
    xs, ys = np.meshgrid(pose.translation[0] + offsets, pose.translation[1] + offsets)
    points = np.column_stack([xs.ravel(), ys.ravel(), np.full(xs.size, grid.ground_height)])
    points = points[np.hypot(points[:, 0] - pose.translation[0],
                             points[:, 1] - pose.translation[1]) <= reach]
    uv, valid = camera.project((points - pose.translation) @ pose.rotation)
    img_w, img_h = camera.image_size
    with np.errstate(invalid="ignore"):
        valid &= ((uv[:, 0] > -0.5) & (uv[:, 0] < img_w - 0.5) & (uv[:, 1] > -0.5)
                  & (uv[:, 1] < img_h - 0.5))
    seen = points[valid]
    if not len(seen):
        return ViewCoverage(0, 0, None, (
            f"the camera sees no ground within max_range {reach:g} m: it looks above the horizon "
            "(at the sky); check the camera pose (tf or camera_pose)"))
    inside = int(np.count_nonzero((seen[:, 0] >= grid.x_min) & (seen[:, 0] <= grid.x_max)
                                  & (seen[:, 1] >= grid.y_min) & (seen[:, 1] <= grid.y_max)))
    bounds = (float(seen[:, 0].min()), float(seen[:, 0].max()),
              float(seen[:, 1].min()), float(seen[:, 1].max()))
    problem = None
    if inside == 0:
        problem = (
            f"the camera's view of the ground (up to max_range {reach:g} m: x {bounds[0]:.1f}.."
            f"{bounds[1]:.1f}, y {bounds[2]:.1f}..{bounds[3]:.1f} m in {grid.frame_id}) lies "
            f"outside the grid extent (x {grid.x_min:g}..{grid.x_max:g}, y {grid.y_min:g}.."
            f"{grid.y_max:g} m), so its cells stay unknown; widen the extent to include it "
            "(grid_x_min/grid_x_max/grid_y_min/grid_y_max, --grid-extent)")
    return ViewCoverage(len(seen), inside, bounds, problem)


@functools.lru_cache(maxsize=None)
def vote_table(subsamples: int) -> np.ndarray:
    """The per-cell decision as a (256,) uint8 table of summed sample codes -> cell value.

    Index ``t`` = drivable samples + 16 x uncounted samples; the value is the OccupancyGrid
    byte (0 free, 100 occupied, 255 = -1 unknown) by the rule in the module docstring. Built
    once per ``subsamples`` (read-only).
    """
    n = subsamples * subsamples
    table = np.full(256, UNKNOWN & 0xFF, dtype=np.uint8)
    for uncounted in range(n + 1):
        counted = n - uncounted
        for drivable in range(counted + 1):
            if 2 * counted < n:  # fewer than half the samples counted (n >= 1)
                continue
            table[drivable + _UNCOUNTED * uncounted] = FREE if 2 * drivable > counted else OCCUPIED
    table.flags.writeable = False
    return table


def label_lut(drivable_ids: Iterable[int], ignore_ids: Iterable[int] = ()) -> np.ndarray:
    """Per-label sample code table (256,) uint8: drivable ids 1, ignored ids and 255 uncounted."""
    lut = np.zeros(256, dtype=np.uint8)
    lut[[int(i) for i in drivable_ids if 0 <= int(i) < 256]] = _DRIVABLE
    lut[[int(i) for i in ignore_ids if 0 <= int(i) < 256]] = _UNCOUNTED
    lut[_IGNORE] = _UNCOUNTED
    return lut


def _candidate_block(pose: Pose, grid: GridSpec) -> tuple[slice, slice]:
    """The block of cells (rows, cols) whose samples may count: within ``max_range`` and in
    front of the camera's image plane, judged at the cell centres with a margin of half a cell
    diagonal (a sample is at most that far from its centre, and along the ground the range and
    the depth change by at most the distance). An empty block when no cell qualifies."""
    margin = grid.resolution * math.sqrt(0.5)
    dx = grid.x_min + (np.arange(grid.width) + 0.5) * grid.resolution - pose.translation[0]
    dy = grid.y_min + (np.arange(grid.height) + 0.5) * grid.resolution - pose.translation[1]
    axis = pose.rotation[:, 2]  # the optical axis in the grid frame
    depth = (dx[None, :] * axis[0] + dy[:, None] * axis[1]
             + (grid.ground_height - pose.translation[2]) * axis[2])
    candidate = ((np.hypot(dx[None, :], dy[:, None]) <= grid.max_range + margin)
                 & (depth > _MIN_DEPTH_M - margin))
    rows = np.nonzero(candidate.any(axis=1))[0]
    cols = np.nonzero(candidate.any(axis=0))[0]
    if not rows.size:
        return slice(0, 0), slice(0, 0)
    return slice(int(rows[0]), int(rows[-1]) + 1), slice(int(cols[0]), int(cols[-1]) + 1)


class GroundLookup:
    """The ground-to-pixel map of one (camera model, pose, grid, mask size); see module docstring.

    Args:
        camera: The camera model.
        pose: Optical frame -> grid frame.
        grid: The grid.
        mask_shape: ``(rows, cols)`` of the label maps to project; when it differs from the
            camera's image size (e.g. labels at the network's resolution) pixel coordinates are
            scaled (pixel centres aligned).
        window: ``(x0, y0, width, height)``: the part of the label map the camera image fills
            (a letterboxed network-resolution map: see :func:`label_window`); None: all of it.

    Raises:
        BevError: the camera is not above the ground plane, or no grid cell is visible (a camera
            looking at the sky, a grid outside the view or beyond ``max_range``; the error's
            ``coverage`` says how the view meets the grid).
    """

    def __init__(self, camera: CameraModel, pose: Pose, grid: GridSpec,
                 mask_shape: tuple[int, int],
                 window: tuple[int, int, int, int] | None = None) -> None:
        self.camera, self.pose, self.grid = camera, pose, grid
        self.mask_shape = (int(mask_shape[0]), int(mask_shape[1]))
        height = float(pose.translation[2]) - grid.ground_height
        if not height > 0:
            raise BevError(f"the camera is {height:.3f} m above the ground plane (z = "
                           f"{grid.ground_height} m in {grid.frame_id}): expected it above; check "
                           "the camera pose (tf or camera_pose) and ground_height")
        # Only the block of cells that can hold a counted sample is sampled and projected (a
        # camera sees part of a surround grid): identical maps, built in a fraction of the time.
        block_rows, block_cols = _candidate_block(pose, grid)
        samples = grid.sample_points(block_rows, block_cols)  # (S2, block H, block W, 3)
        n_planes, block_h, block_w = samples.shape[:3]
        flat = samples.reshape(-1, 3)
        ground_range = np.hypot(flat[:, 0] - pose.translation[0], flat[:, 1] - pose.translation[1])
        in_range = ground_range <= grid.max_range
        cam_points = (flat[in_range] - pose.translation) @ pose.rotation  # R^T (p - t)
        uv, valid = camera.project(cam_points)
        img_w, img_h = camera.image_size
        rows, cols = self.mask_shape
        x0, y0, win_w, win_h = window if window is not None else (0, 0, cols, rows)
        # Image pixel -> mask pixel with pixel centres aligned, then nearest.
        u = np.rint(x0 + (uv[:, 0] + 0.5) * (win_w / img_w) - 0.5)
        v = np.rint(y0 + (uv[:, 1] + 0.5) * (win_h / img_h) - 0.5)
        with np.errstate(invalid="ignore"):
            valid &= (u >= 0) & (u < cols) & (v >= 0) & (v < rows)
        # Integer map for cv2.remap (CV_16SC2): invalid samples point outside the mask and read
        # the border value 255, which is never counted.
        full = np.full((flat.shape[0], 2), -1, dtype=np.int16)
        chosen = np.nonzero(in_range)[0][valid]
        full[chosen, 0] = u[valid]
        full[chosen, 1] = v[valid]
        self.table = vote_table(grid.subsamples)
        counted = np.zeros(flat.shape[0], dtype=np.uint8)
        counted[chosen] = 1
        per_cell = counted.reshape(n_planes, block_h, block_w).sum(axis=0)
        #: Cells whose samples mostly see the image (the most a grid can show), and sample count.
        self.visible_cells = int(np.count_nonzero(2 * per_cell >= n_planes))
        self.samples = int(chosen.size)
        if self.visible_cells == 0:
            coverage = view_coverage(camera, pose, grid)
            raise BevError(
                "no cell of the grid is visible from the camera: "
                + (coverage.problem
                   or "it looks above the horizon (at the sky), or the grid lies outside its view "
                   f"or beyond max_range ({grid.max_range} m); check the camera pose (tf or "
                   "camera_pose) and the grid extent"), coverage=coverage)
        # Only the block of cells with a counted sample is remapped per frame: a camera sees a
        # part of a surround grid (the rest is unknown for it anyway).
        any_rows = np.nonzero(per_cell.any(axis=1))[0]
        any_cols = np.nonzero(per_cell.any(axis=0))[0]
        inner_rows = slice(int(any_rows[0]), int(any_rows[-1]) + 1)
        inner_cols = slice(int(any_cols[0]), int(any_cols[-1]) + 1)
        #: The block of grid rows (y index) and columns (x index) holding every counted sample.
        self.rows = slice(block_rows.start + inner_rows.start, block_rows.start + inner_rows.stop)
        self.cols = slice(block_cols.start + inner_cols.start, block_cols.start + inner_cols.stop)
        block = full.reshape(n_planes, block_h, block_w, 2)[:, inner_rows, inner_cols]
        self.map = np.ascontiguousarray(block).reshape(-1, block.shape[2], 2)

    def votes(self, labels: np.ndarray, lut: np.ndarray) -> "CellVotes":
        """The per-cell sample codes of one label map (the vote rule not yet applied).

        Args:
            labels: (rows, cols) uint8 label map of ``mask_shape`` (255 = ignore).
            lut: (256,) uint8 sample codes from :func:`label_lut`.

        Raises:
            BevError: the label map has another shape or dtype.
        """
        if labels.shape != self.mask_shape or labels.dtype != np.uint8:
            raise BevError(f"label map {labels.shape} {labels.dtype}: expected uint8 of shape "
                           f"{self.mask_shape}")
        sampled = cv2.remap(labels, self.map, None, cv2.INTER_NEAREST,
                            borderMode=cv2.BORDER_CONSTANT, borderValue=_IGNORE)
        codes = cv2.LUT(sampled, lut)
        planes = codes.reshape(self.grid.subsamples ** 2, -1, codes.shape[1])
        total = planes[0].copy()
        for plane in planes[1:]:
            total += plane  # uint8: at most 15 + 16 x 15 = 255, no overflow
        return CellVotes(total, self.rows, self.cols, (self.grid.height, self.grid.width),
                         self.grid.subsamples)

    def apply(self, labels: np.ndarray, lut: np.ndarray) -> np.ndarray:
        """The grid of one label map.

        Args:
            labels: (rows, cols) uint8 label map of ``mask_shape`` (255 = ignore).
            lut: (256,) uint8 sample codes from :func:`label_lut`.

        Returns:
            (height, width) int8 OccupancyGrid values (0 free, 100 occupied, -1 unknown), row =
            y index from ``y_min``, column = x index from ``x_min``.

        Raises:
            BevError: the label map has another shape or dtype.
        """
        return self.votes(labels, lut).values()


@dataclasses.dataclass(frozen=True, eq=False)
class CellVotes:
    """One camera's votes on the grid: the summed sample codes of the cells it can see.

    Attributes:
        codes: (block rows, block cols) uint8: drivable samples + 16 x uncounted samples of each
            cell of the block (the index of :func:`vote_table`).
        rows: The block's grid rows (y index); cells outside the block have no counted sample.
        cols: The block's grid columns (x index).
        shape: ``(height, width)`` of the whole grid, cells.
        subsamples: Samples per cell along each axis.
    """

    codes: np.ndarray
    rows: slice
    cols: slice
    shape: tuple[int, int]
    subsamples: int

    def values(self) -> np.ndarray:
        """(height, width) int8 grid of this camera alone by the vote rule (unknown outside the
        block)."""
        grid = np.full(self.shape, UNKNOWN, dtype=np.int8)
        grid[self.rows, self.cols] = cv2.LUT(self.codes, vote_table(self.subsamples)).view(np.int8)
        return grid


class BevProjector:
    """Grids from label maps, building a :class:`GroundLookup` only for new inputs.

    Args:
        grid: The grid.
        drivable_ids: Class ids counted as drivable.
        ignore_ids: Class ids never counted (255 never is, always).
        cache_size: Lookups kept, least recently used dropped first (1 for a fixed camera; more
            when the calibration alternates, e.g. a zoom lens, or label maps of two sizes).
    """

    def __init__(self, grid: GridSpec, drivable_ids: Iterable[int],
                 ignore_ids: Iterable[int] = (), cache_size: int = 1) -> None:
        self.grid = grid
        self.lut = label_lut(drivable_ids, ignore_ids)
        self.cache_size = max(1, int(cache_size))
        # key -> lookup, or the BevError its inputs raise (kept too: not retried every frame)
        self._lookups: collections.OrderedDict[tuple[Any, ...], GroundLookup | BevError] = (
            collections.OrderedDict())
        self.rebuilds = 0

    def lookup(self, camera: CameraModel, pose: Pose, mask_shape: tuple[int, int],
               window: tuple[int, int, int, int] | None = None) -> GroundLookup:
        """The lookup for these inputs (cached; raises :class:`BevError` like GroundLookup)."""
        key = (camera.key, pose.key, tuple(mask_shape[:2]), window)
        found = self._lookups.get(key)
        if found is not None:
            self._lookups.move_to_end(key)
            if isinstance(found, BevError):
                raise found  # a camera that sees no ground is not re-projected every frame
            return found
        self.rebuilds += 1
        try:
            lookup: GroundLookup | BevError = GroundLookup(camera, pose, self.grid,
                                                           mask_shape[:2], window)
        except BevError as err:
            lookup = err
        self._lookups[key] = lookup
        while len(self._lookups) > self.cache_size:
            self._lookups.popitem(last=False)
        if isinstance(lookup, BevError):
            raise lookup
        return lookup

    def votes(self, labels: np.ndarray, camera: CameraModel, pose: Pose,
              lut: np.ndarray | None = None,
              window: tuple[int, int, int, int] | None = None) -> CellVotes:
        """The per-cell votes of ``labels`` (uint8 class ids), for fusing several cameras
        (:mod:`bisenet_ros.fusion`); see :meth:`GroundLookup.votes`."""
        labels = np.ascontiguousarray(labels)
        lookup = self.lookup(camera, pose, labels.shape, window)
        return lookup.votes(labels, self.lut if lut is None else lut)

    def __call__(self, labels: np.ndarray, camera: CameraModel, pose: Pose,
                 lut: np.ndarray | None = None,
                 window: tuple[int, int, int, int] | None = None) -> np.ndarray:
        """Grid (height, width) int8 of ``labels`` (uint8 class ids); see :meth:`GroundLookup.apply`
        (``window``: see :class:`GroundLookup`)."""
        return self.votes(labels, camera, pose, lut, window).values()


def label_window(frame_shape: Sequence[int], label_shape: Sequence[int],
                 resize: str) -> tuple[int, int, int, int] | None:
    """Where the camera frame lies in an engine label map, for :class:`GroundLookup`.

    Args:
        frame_shape: ``(rows, cols)`` of the camera frame.
        label_shape: ``(rows, cols)`` of the label map.
        resize: The engine's ``resize`` policy (``stretch`` or ``letterbox``).

    Returns:
        None when the label map covers the frame whole (camera resolution, or ``stretch``), else
        the letterbox content rectangle ``(x0, y0, width, height)`` the engine used.
    """
    if tuple(frame_shape[:2]) == tuple(label_shape[:2]) or resize != "letterbox":
        return None
    from bisenet_ros.inference.preprocess import fit_geometry  # the engine's own placement

    geometry = fit_geometry((int(frame_shape[1]), int(frame_shape[0])),
                            (int(label_shape[1]), int(label_shape[0])), "letterbox")
    return (*geometry.offset, *geometry.content_size)


def grid_image(grid: np.ndarray, cell_pixels: int = 1) -> np.ndarray:
    """A BGR picture of a grid, forward up and left to the left (free green, occupied dark red,
    unknown grey), (width * cell_pixels, height * cell_pixels, 3) uint8."""
    colors = np.zeros((256, 3), dtype=np.uint8)
    colors[:] = (96, 96, 96)
    colors[FREE] = (80, 200, 80)
    colors[OCCUPIED] = (40, 40, 160)
    # Rows are y (left), columns x (forward): transpose and flip so x points up, y to the left.
    picture = colors[np.asarray(grid).view(np.uint8)][::-1, :][:, ::-1].transpose(1, 0, 2)
    picture = np.ascontiguousarray(picture)
    if cell_pixels > 1:
        picture = cv2.resize(picture, None, fx=cell_pixels, fy=cell_pixels,
                             interpolation=cv2.INTER_NEAREST)
    return picture


def occupancy_grid_fields(values: np.ndarray, grid: GridSpec) -> dict[str, Any]:
    """The ``nav_msgs/OccupancyGrid`` fields of a grid (the caller adds the header and builds
    its own message class, as for images).

    Returns:
        ``{"resolution", "width", "height", "origin_position": (x, y, z),
        "origin_orientation": (x, y, z, w), "data"}`` with ``data`` a contiguous (width * height,)
        int8 array, row-major from the origin (row = y index).
    """
    values = np.asarray(values)
    if values.shape != (grid.height, grid.width) or values.dtype != np.int8:
        raise BevError(f"grid values {values.shape} {values.dtype}: expected int8 of shape "
                       f"{(grid.height, grid.width)}")
    return {"resolution": float(grid.resolution), "width": grid.width, "height": grid.height,
            "origin_position": tuple(float(v) for v in grid.origin),
            "origin_orientation": (0.0, 0.0, 0.0, 1.0),
            "data": np.ascontiguousarray(values).reshape(-1)}
