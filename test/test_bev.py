"""Bird's-eye view (bisenet_ros.bev) against analytic ground truth.

The label maps are rendered independently of the module: each pixel's ray is cast to the ground
(OpenCV's undistortPoints, the inverse direction of the module's projection) and labelled by a
point-in-polygon test on the ground; the grid must match the polygon rasterized in the grid.
"""
from __future__ import annotations

import math
from pathlib import Path

import cv2
import numpy as np
import pytest
from matplotlib.path import Path as PolygonPath

from bisenet_ros import bev

# A ground polygon (grid frame, metres) in front of the camera.
POLYGON = np.array([(3.0, -4.0), (24.0, -6.5), (23.0, 5.0), (6.0, 3.5), (4.0, 0.5)])
DRIVABLE, OTHER = 0, 1
GRID = bev.GridSpec(resolution=0.1, x_min=-5.0, x_max=30.0, y_min=-15.0, y_max=15.0,
                    max_range=25.0)
MOUNT = dict(x=0.5, y=0.2, z=1.5, roll=math.radians(3.0), pitch=math.radians(10.0),
             yaw=math.radians(2.0))


def pinhole_info(**extra: object) -> dict:
    info = {"width": 640, "height": 480, "distortion_model": "plumb_bob",
            "k": [500.0, 0, 322.0, 0, 505.0, 236.0, 0, 0, 1],
            "d": [-0.12, 0.03, 0.001, -0.0008, -0.002], "p": [500.0, 0, 322, 0, 0, 505, 236, 0, 0, 0, 1, 0]}
    info.update(extra)
    return info


def fisheye_info() -> dict:
    return {"width": 800, "height": 700, "distortion_model": "equidistant",
            "k": [290.0, 0, 401.0, 0, 292.0, 348.0, 0, 0, 1], "d": [0.04, -0.012, 0.003, -0.0005]}


def pixel_rays(camera: bev.CameraModel, shape: tuple[int, int]) -> np.ndarray:
    """Optical-frame ray (N, 3) through the centre of every pixel of a label map of ``shape``."""
    rows, cols = shape
    img_w, img_h = camera.image_size
    v, u = np.mgrid[0:rows, 0:cols].astype(np.float64)
    # mask pixel -> published image pixel -> full-resolution pixel (ROI, binning)
    u_img = (u + 0.5) * img_w / cols - 0.5
    v_img = (v + 0.5) * img_h / rows - 0.5
    full = np.stack([u_img * camera.binning_x + camera.roi[0],
                     v_img * camera.binning_y + camera.roi[1]], axis=-1).reshape(-1, 1, 2)
    if camera.rectified:  # image_rect: P, no distortion
        p = camera.p
        normalized = (full.reshape(-1, 2) - p[:2, 2]) / np.array([p[0, 0], p[1, 1]])
    elif camera.distortion_model == "equidistant":
        normalized = cv2.fisheye.undistortPoints(full, camera.k, camera.d)
    else:
        normalized = cv2.undistortPoints(full, camera.k, camera.d)
    normalized = normalized.reshape(-1, 2)
    return np.column_stack([normalized, np.ones(len(normalized))])


def render_labels(camera: bev.CameraModel, pose: bev.Pose, shape: tuple[int, int],
                  *, sky: int = DRIVABLE,
                  polygon: np.ndarray = POLYGON) -> tuple[np.ndarray, np.ndarray]:
    """Labels by ray casting: DRIVABLE inside ``polygon`` (grid frame, metres), OTHER elsewhere
    on the ground, ``sky`` above the horizon. Returns (labels, above_horizon)."""
    rays = pixel_rays(camera, shape) @ pose.rotation.T  # in the grid frame
    down = rays[:, 2] < -1e-9
    t = np.where(down, -pose.translation[2] / np.where(down, rays[:, 2], -1), np.inf)
    ground = pose.translation[None, :2] + rays[:, :2] * t[:, None]
    inside = PolygonPath(polygon).contains_points(np.where(down[:, None], ground, 0))
    labels = np.where(down, np.where(inside, DRIVABLE, OTHER), sky).astype(np.uint8)
    return labels.reshape(shape), ~down.reshape(shape)


def polygon_cells(grid: bev.GridSpec, polygon: np.ndarray = POLYGON) -> np.ndarray:
    """(height, width) bool: cells whose centre lies inside ``polygon``."""
    ys, xs = np.mgrid[0:grid.height, 0:grid.width]
    centres = np.column_stack([(grid.x_min + (xs.ravel() + 0.5) * grid.resolution),
                               (grid.y_min + (ys.ravel() + 0.5) * grid.resolution)])
    return PolygonPath(polygon).contains_points(centres).reshape(grid.height, grid.width)


def iou_within(grid_values: np.ndarray, pose: bev.Pose, spec: bev.GridSpec,
               max_range: float = 25.0) -> float:
    ys, xs = np.mgrid[0:spec.height, 0:spec.width]
    cx = spec.x_min + (xs + 0.5) * spec.resolution
    cy = spec.y_min + (ys + 0.5) * spec.resolution
    near = np.hypot(cx - pose.translation[0], cy - pose.translation[1]) <= max_range
    seen = near & (grid_values != bev.UNKNOWN)
    truth = polygon_cells(spec) & seen
    pred = (grid_values == bev.FREE) & near
    return float(np.count_nonzero(truth & pred) / np.count_nonzero(truth | pred))


def project(info: dict, shape: tuple[int, int] | None = None, grid: bev.GridSpec = GRID,
            rectified: bool = False,
            **kwargs: object) -> tuple[np.ndarray, bev.Pose, bev.CameraModel, np.ndarray]:
    camera = bev.CameraModel.from_camera_info(info, rectified=rectified)
    pose = bev.Pose.from_mount(**MOUNT)
    shape = shape or camera.image_size[::-1]
    labels, above = render_labels(camera, pose, shape, **kwargs)
    projector = bev.BevProjector(grid, drivable_ids=[DRIVABLE])
    return projector(labels, camera, pose), pose, camera, above


@pytest.mark.parametrize("case", ["pinhole", "pinhole_network_resolution", "fisheye",
                                  "rational_polynomial", "rectified"])
def test_projected_grid_matches_the_ground_polygon(case: str) -> None:
    if case == "fisheye":
        info, shape = fisheye_info(), None
    elif case == "rational_polynomial":
        info = pinhole_info(distortion_model="rational_polynomial",
                            d=[-0.1, 0.02, 0.001, -0.001, 0.001, 0.02, -0.003, 0.001])
        shape = None
    elif case == "rectified":  # P differs from K: a rectified image has its own intrinsics
        info = pinhole_info(p=[450.0, 0, 310.0, 0, 0, 455.0, 250.0, 0, 0, 0, 1, 0])
        shape = None
    else:
        info, shape = pinhole_info(), ((256, 512) if case.endswith("resolution") else None)
    grid, pose, _, above = project(info, shape, rectified=case == "rectified")
    assert above.any(), "the test camera must see the sky, or the horizon check is vacuous"
    iou = iou_within(grid, pose, GRID)
    print(f"{case}: bird's-eye IoU {iou:.4f}")
    assert iou >= 0.95
    # The far part of the polygon (beyond max_range) stays unknown.
    ys, xs = np.mgrid[0:GRID.height, 0:GRID.width]
    far = np.hypot(GRID.x_min + (xs + 0.5) * 0.1 - pose.translation[0],
                   GRID.y_min + (ys + 0.5) * 0.1 - pose.translation[1]) > 25.0 + 0.1
    assert np.all(grid[far] == bev.UNKNOWN)
    # Behind the camera (behind its image plane) nothing is known.
    centres = np.stack([GRID.x_min + (xs + 0.5) * 0.1, GRID.y_min + (ys + 0.5) * 0.1,
                        np.zeros(xs.shape)], axis=-1)
    depth = (centres - pose.translation) @ pose.rotation[:, 2]
    assert np.count_nonzero(depth < 0) > 1000
    assert np.all(grid[depth < 0] == bev.UNKNOWN)
    assert set(np.unique(grid)) <= {bev.FREE, bev.OCCUPIED, bev.UNKNOWN}


@pytest.mark.parametrize("info", [pinhole_info(), fisheye_info()], ids=["pinhole", "fisheye"])
def test_no_pixel_above_the_horizon_lands_in_the_grid(info: dict) -> None:
    camera = bev.CameraModel.from_camera_info(info)
    pose = bev.Pose.from_mount(**MOUNT)
    shape = camera.image_size[::-1]
    _, above = render_labels(camera, pose, shape)
    labels = np.where(above, DRIVABLE, OTHER).astype(np.uint8)  # only the sky is "drivable"
    grid = bev.BevProjector(GRID, drivable_ids=[DRIVABLE])(labels, camera, pose)
    assert np.count_nonzero(grid == bev.FREE) == 0
    assert np.count_nonzero(grid == bev.OCCUPIED) > 10_000  # the ground itself is seen


def test_binning_and_roi_follow_camerainfo() -> None:
    # The same camera publishing a 2x2-binned ROI: labels at the binned ROI's size give the same
    # grid where the ROI sees the ground.
    full, pose, _, _ = project(pinhole_info())
    roi = {"x_offset": 40, "y_offset": 200, "width": 560, "height": 280}
    binned_info = pinhole_info(binning_x=2, binning_y=2, roi=roi)
    binned, _, camera, _ = project(binned_info)
    assert camera.image_size == (280, 140)
    both = (binned != bev.UNKNOWN) & (full != bev.UNKNOWN)
    assert np.count_nonzero(both) > 10_000
    assert np.mean(binned[both] == full[both]) > 0.97
    # The ROI sees less than the full image.
    assert np.count_nonzero(binned != bev.UNKNOWN) < np.count_nonzero(full != bev.UNKNOWN)
    assert iou_within(binned, pose, GRID) >= 0.9


def test_tf_style_pose_equals_the_mount_pose() -> None:
    mount = bev.Pose.from_mount(**MOUNT)
    # The same rotation as a quaternion (x, y, z, w), as tf2 delivers it.
    pose = bev.Pose.from_transform(mount.translation, bev.matrix_to_quaternion(mount.rotation))
    np.testing.assert_allclose(pose.rotation, mount.rotation, atol=1e-12)
    # Round trips, including rotations near 180 degrees (the other branches of the conversion).
    for rpy in [(math.pi - 1e-3, 0.2, 0.1), (0.1, math.pi / 2, -0.3), (0.0, 0.0, math.pi),
                (1.0, -0.5, 2.5)]:
        r = bev.rpy_to_matrix(*rpy)
        np.testing.assert_allclose(bev.quaternion_to_matrix(bev.matrix_to_quaternion(r)), r,
                                   atol=1e-12)
    # Optical z (forward) of a level camera is the body x axis; optical y (down) is -z.
    level = bev.Pose.from_mount(0, 0, 1, 0, 0, 0)
    np.testing.assert_allclose(level.rotation[:, 2], [1, 0, 0], atol=1e-12)
    np.testing.assert_allclose(level.rotation[:, 1], [0, 0, -1], atol=1e-12)


def test_majority_vote_rule() -> None:
    table = bev.vote_table(2)  # 4 samples per cell
    u = 16
    assert table[3] == bev.FREE and table[2] == bev.OCCUPIED  # a 2-2 tie is not free
    assert table[2 + 1 * u] == bev.FREE  # 2 of 3 counted samples
    assert table[1 + 2 * u] == bev.OCCUPIED  # 1 of 2: not a strict majority
    assert table[0 + 3 * u] == 255 and table[4 * u] == 255  # mostly uncounted: unknown (-1)


def test_lookup_is_built_once_per_inputs() -> None:
    camera = bev.CameraModel.from_camera_info(pinhole_info())
    pose = bev.Pose.from_mount(**MOUNT)
    projector = bev.BevProjector(GRID, drivable_ids=[0])
    labels = np.zeros((480, 640), np.uint8)
    for _ in range(3):
        projector(labels, camera, pose)
    assert projector.rebuilds == 1
    projector(labels, camera, bev.Pose.from_mount(**{**MOUNT, "z": 1.6}))
    assert projector.rebuilds == 2


@pytest.mark.parametrize("info, match", [
    (pinhole_info(k=[0.0] * 9), "uncalibrated CameraInfo"),
    (pinhole_info(distortion_model="fov"), "distortion model 'fov' is not supported"),
    (pinhole_info(width=0, height=0), "not calibrated"),
    (pinhole_info(d=[0.1, 0.2, 0.3]), "3 coefficients"),
    (pinhole_info(roi={"x_offset": 600, "y_offset": 0, "width": 100, "height": 10}), "roi"),
])
def test_bad_camera_info_is_refused_with_a_clear_message(info: dict, match: str) -> None:
    with pytest.raises(bev.BevError, match=match):
        bev.CameraModel.from_camera_info(info)


def test_camera_looking_at_the_sky_and_huge_grids_are_refused() -> None:
    camera = bev.CameraModel.from_camera_info(pinhole_info())
    sky = bev.Pose.from_mount(0, 0, 1.5, 0, math.radians(-60), 0)
    with pytest.raises(bev.BevError, match="looks above the horizon"):
        bev.GroundLookup(camera, sky, GRID, (480, 640))
    below = bev.Pose.from_mount(0, 0, -0.5, 0, 0.2, 0)
    with pytest.raises(bev.BevError, match="above the ground plane"):
        bev.GroundLookup(camera, below, GRID, (480, 640))
    with pytest.raises(bev.BevError, match="cap of"):
        bev.GridSpec(resolution=0.01, x_max=100.0, y_min=-50.0, y_max=50.0)
    with pytest.raises(bev.BevError, match="zero length"):
        bev.Pose.from_transform((0, 0, 1), (0, 0, 0, 0))


def test_calibration_yaml(tmp_path: Path) -> None:
    path = tmp_path / "camera.yaml"
    path.write_text(
        "image_width: 640\nimage_height: 480\ncamera_name: front\n"
        "camera_matrix: {rows: 3, cols: 3, data: [500, 0, 322, 0, 505, 236, 0, 0, 1]}\n"
        "distortion_model: plumb_bob\n"
        "distortion_coefficients: {rows: 1, cols: 5, data: [-0.12, 0.03, 0.001, -0.0008, -0.002]}\n"
        "rectification_matrix: {rows: 3, cols: 3, data: [1, 0, 0, 0, 1, 0, 0, 0, 1]}\n"
        "projection_matrix: {rows: 3, cols: 4, data: [500, 0, 322, 0, 0, 505, 236, 0, 0, 0, 1, 0]}\n")
    camera = bev.CameraModel.from_calibration_yaml(path)
    assert camera.key == bev.CameraModel.from_camera_info(pinhole_info()).key
    bad = tmp_path / "bad.yaml"
    bad.write_text("foo: 1\n")
    with pytest.raises(bev.BevError, match="not a camera_calibration YAML"):
        bev.CameraModel.from_calibration_yaml(bad)


def test_letterboxed_network_labels_use_the_engine_placement() -> None:
    # A 640x480 frame letterboxed into a 512x256 network map: content 341x256 at x 85.
    camera = bev.CameraModel.from_camera_info(pinhole_info())
    pose = bev.Pose.from_mount(**MOUNT)
    labels, _ = render_labels(camera, pose, (256, 341))
    boxed = np.full((256, 512), 255, np.uint8)
    window = bev.label_window((480, 640), boxed.shape, "letterbox")
    assert window == (85, 0, 341, 256)
    boxed[:, 85:85 + 341] = labels
    projector = bev.BevProjector(GRID, drivable_ids=[DRIVABLE], cache_size=2)
    grid = projector(boxed, camera, pose, window=window)
    assert iou_within(grid, pose, GRID) >= 0.95
    assert bev.label_window((480, 640), (256, 512), "stretch") is None
    assert bev.label_window((480, 640), (480, 640), "letterbox") is None
