"""The surround grid fused from several cameras (bisenet_ros.fusion) against analytic ground truth.

The scene is test_bev's: label maps ray-cast independently of the module, here of a T-junction
around the vehicle seen by a front and a rear pinhole camera and a left fisheye that overlaps
both.
"""
from __future__ import annotations

import math

import numpy as np
import pytest

from bisenet_ros import bev, fusion
from test_bev import DRIVABLE, fisheye_info, pinhole_info, polygon_cells, render_labels

# A road along x through the vehicle, and a side street to the left (grid frame, metres).
ROAD = np.array([(-21.0, -3.0), (21.0, -3.5), (21.0, 3.0), (8.0, 3.0), (8.0, 21.0), (4.0, 21.0),
                 (4.0, 3.2), (-21.0, 3.5)])
# name -> (CameraInfo, body mount x y z roll pitch yaw, label-map shape at network resolution)
CAMERAS = {
    "front": (pinhole_info(), (1.5, 0.0, 1.5, 0.0, math.radians(12), 0.0), (240, 320)),
    "rear": (pinhole_info(), (-1.0, 0.0, 1.4, 0.0, math.radians(12), math.pi), (240, 320)),
    "left": (fisheye_info(), (0.3, 0.9, 1.3, 0.0, math.radians(20), math.pi / 2), (350, 400)),
}
GRID = bev.surround_grid(bev.GridSpec(resolution=0.2, max_range=20.0))


def camera_inputs(name: str, polygon: np.ndarray = ROAD
                  ) -> tuple[np.ndarray, bev.CameraModel, bev.Pose]:
    info, mount, shape = CAMERAS[name]
    camera = bev.CameraModel.from_camera_info(info)
    pose = bev.Pose.from_mount(*mount)
    labels, _ = render_labels(camera, pose, shape, polygon=polygon)
    return labels, camera, pose


@pytest.fixture(scope="module")
def scene() -> dict[str, tuple[np.ndarray, bev.CameraModel, bev.Pose]]:
    return {name: camera_inputs(name) for name in CAMERAS}


def drivable_iou(values: np.ndarray) -> float:
    """IoU of the free cells with the road, among the cells the grid knows."""
    known = values != bev.UNKNOWN
    truth = polygon_cells(GRID, ROAD) & known
    pred = values == bev.FREE
    return float(np.count_nonzero(truth & pred) / np.count_nonzero(truth | pred))


def test_surround_grid_is_square_around_the_origin_and_capped() -> None:
    assert (GRID.x_min, GRID.x_max, GRID.y_min, GRID.y_max) == (-20.0, 20.0, -20.0, 20.0)
    assert (GRID.width, GRID.height) == (200, 200)
    wider = bev.surround_grid(bev.GridSpec(resolution=0.25, max_range=30.1))
    assert (wider.x_min, wider.x_max) == (-30.25, 30.25)  # whole cells, range included
    with pytest.raises(bev.BevError, match="lower grid_max_range"):
        bev.surround_grid(bev.GridSpec(resolution=0.1, max_range=150.0))


def test_front_rear_and_side_cameras_fuse_into_the_true_drivable_area(scene: dict) -> None:
    fuser = fusion.GridFuser(GRID, [DRIVABLE], cameras=list(CAMERAS))
    for name, (labels, camera, pose) in scene.items():
        assert fuser.update(name, labels, camera, pose, stamp_ns=7).fused
    fused = fuser.fuse()
    assert all(status.fused for status in fused.cameras.values()) and fused.warnings() == []
    assert fused.stamp_ns == 7
    iou = drivable_iou(fused.values)
    print(f"fused bird's-eye IoU {iou:.4f}")
    assert iou >= 0.95
    singles = {name: fused.camera_grid(name) for name in CAMERAS}
    seen = {name: grid != bev.UNKNOWN for name, grid in singles.items()}
    # Behind the vehicle is known (the rear camera), and the side street (the left camera).
    xs = GRID.x_min + (np.arange(GRID.width) + 0.5) * GRID.resolution
    ys = GRID.y_min + (np.arange(GRID.height) + 0.5) * GRID.resolution
    assert np.count_nonzero(fused.values[:, xs < -5] == bev.FREE) > 1000
    assert np.count_nonzero(fused.values[ys > 8][:, (xs > 4) & (xs < 8)] == bev.FREE) > 200
    # The fused grid knows exactly the cells some camera knows.
    np.testing.assert_array_equal(fused.values != bev.UNKNOWN,
                                  np.logical_or.reduce(list(seen.values())))
    # Each single-camera grid is the single-camera projector's, and alone it covers less.
    for name, (labels, camera, pose) in scene.items():
        single = bev.BevProjector(GRID, [DRIVABLE])(labels, camera, pose)
        np.testing.assert_array_equal(singles[name], single)
        assert np.count_nonzero(seen[name]) < 0.7 * np.count_nonzero(fused.values != bev.UNKNOWN)
    # The cameras overlap, and where one camera alone sees a cell it decides it.
    assert np.count_nonzero(seen["front"] & seen["left"]) > 500
    assert np.count_nonzero(seen["rear"] & seen["left"]) > 500
    for name in CAMERAS:
        alone = seen[name] & ~np.logical_or.reduce([seen[o] for o in CAMERAS if o != name])
        np.testing.assert_array_equal(fused.values[alone], singles[name][alone])


def test_one_camera_fused_is_the_single_camera_grid(scene: dict) -> None:
    labels, camera, pose = scene["rear"]
    fuser = fusion.GridFuser(GRID, [DRIVABLE])
    fuser.update("rear", labels, camera, pose)
    np.testing.assert_array_equal(fuser.fuse().values,
                                  bev.BevProjector(GRID, [DRIVABLE])(labels, camera, pose))


def votes(codes: list[list[int]], grid: bev.GridSpec) -> bev.CellVotes:
    block = np.array(codes, np.uint8)
    return bev.CellVotes(block, slice(0, block.shape[0]), slice(0, block.shape[1]),
                         (grid.height, grid.width), grid.subsamples)


def test_overlap_rule_sums_the_votes_of_the_cameras_that_see_a_cell() -> None:
    grid = bev.GridSpec(resolution=1.0, x_min=0.0, x_max=7.0, y_min=0.0, y_max=1.0)
    u = 16  # code = drivable samples + 16 x uncounted samples, of 4 samples per cell
    a = votes([[4, 4, 4, 3, 2 + 1 * u, 0 + 4 * u, 1 + 3 * u]], grid)
    b = votes([[0, 4 * u, 1, 0, 0 + 1 * u, 0 + 4 * u, 0]], grid)
    assert fusion.fuse_votes([a, b], grid)[0].tolist() == [
        bev.OCCUPIED,  # 4 of 4 drivable against 0 of 4: 4 of 8, and a tie is not free
        bev.FREE,      # b sees no sample of the cell: a decides
        bev.FREE,      # 4 of 4 and 1 of 4: 5 of 8
        bev.OCCUPIED,  # 3 of 4 and 0 of 4: 3 of 8
        bev.OCCUPIED,  # 2 of 3 counted and 0 of 3: 2 of 6
        bev.UNKNOWN,   # nobody sees the cell
        bev.OCCUPIED,  # a counts 1 sample of 4 (under half: no vote), b's 0 of 4 decides
    ]
    # Alone, each camera gives its own grid's values (the single-camera rule).
    np.testing.assert_array_equal(fusion.fuse_votes([a], grid), a.values())
    assert a.values()[0].tolist() == [bev.FREE, bev.FREE, bev.FREE, bev.FREE, bev.FREE,
                                      bev.UNKNOWN, bev.UNKNOWN]
    # Three cameras: two say drivable, one does not.
    c = votes([[0, 0, 0, 0, 0, 0, 0]], grid)
    assert fusion.fuse_votes([a, a, c], grid)[0, 0] == bev.FREE  # 8 of 12
    assert fusion.fuse_votes([], grid).tolist() == [[bev.UNKNOWN] * 7]
    np.testing.assert_array_equal(fusion.fuse_votes([a] * 63, grid), a.values())
    with pytest.raises(bev.BevError, match="at most 63 cameras"):
        fusion.fuse_votes([a] * 64, grid)
    with pytest.raises(bev.BevError, match="one GridSpec for all"):
        fusion.fuse_votes([a, votes([[0]], bev.GridSpec(resolution=1.0, x_max=1.0, y_max=1.0,
                                                         y_min=0.0))], grid)


def test_a_camera_without_tf_or_camera_info_leaves_its_cells_unknown_and_is_reported(
        scene: dict) -> None:
    fuser = fusion.GridFuser(GRID, [DRIVABLE], cameras=["front", "rear", "left", "top"])
    labels, camera, _ = scene["rear"]
    status = fuser.update("rear", labels, camera, None, problem="no transform from 'rear_optical'"
                          " to 'base_link' (tf2: frame does not exist)")
    assert status.state == "no_pose" and "rear_optical" in status.message
    assert fuser.update("left", scene["left"][0], None, scene["left"][2]).state == "no_camera_info"
    fuser.update("front", *scene["front"])
    fused = fuser.fuse()
    states = {name: s.state for name, s in fused.cameras.items()}
    assert states == {"front": "fused", "rear": "no_pose", "left": "no_camera_info",
                      "top": "no_frame"}
    warnings = fused.warnings()
    assert len(warnings) == 3 and warnings[0].startswith("camera 'rear': no transform")
    assert "CameraInfo" in warnings[1] and "no frame" in warnings[2]
    # The front camera goes on; behind the vehicle is unknown.
    np.testing.assert_array_equal(fused.values, fused.camera_grid("front"))
    assert fused.camera_grid("rear") is None
    xs = GRID.x_min + (np.arange(GRID.width) + 0.5) * GRID.resolution
    assert np.all(fused.values[:, xs < 0] == bev.UNKNOWN)
    # The rear camera's tf arrives: its cells are back; it loses them again when tf goes.
    assert fuser.update("rear", *scene["rear"]).fused
    assert np.count_nonzero(fuser.fuse().values[:, xs < -5] == bev.FREE) > 1000
    fuser.update("rear", labels, camera, None)
    assert np.all(fuser.fuse().values[:, xs < 0] == bev.UNKNOWN)
    # Over the three grids: what each camera missed, for a report.
    summary = fuser.summary()
    assert summary["fused_grids"] == 3
    assert summary["cameras"]["rear"]["grids"] == {"no_pose": 2, "fused": 1}
    assert summary["cameras"]["front"]["grids"] == {"fused": 3}
    assert "rear_optical" not in summary["cameras"]["rear"]["messages"]["no_pose"]  # the latest
    lines = fuser.warnings()
    assert lines[0].startswith("camera 'rear': left out of 2 of 3 fused grid(s) (no_pose): no ")
    assert sum("camera 'front'" in line for line in lines) == 0 and len(lines) == 3


def test_stale_votes_are_left_out(scene: dict) -> None:
    fuser = fusion.GridFuser(GRID, [DRIVABLE])
    fuser.update("front", *scene["front"], stamp_ns=1_000_000_000)
    fuser.update("rear", *scene["rear"], stamp_ns=1_400_000_000)
    fused = fuser.fuse(stamp_ns=1_400_000_000, max_age_ns=200_000_000)
    assert fused.cameras["front"].state == "stale" and "400 ms older" in fused.warnings()[0]
    np.testing.assert_array_equal(fused.values, fused.camera_grid("rear"))
    assert fuser.fuse(stamp_ns=1_400_000_000).cameras["front"].fused  # no max age: all count


def test_a_camera_whose_view_misses_the_extent_warns(scene: dict) -> None:
    labels, camera, pose = scene["rear"]
    forward = bev.GridSpec(resolution=0.2, max_range=20.0)  # the single-camera default x 0..40
    coverage = bev.view_coverage(camera, pose, forward)
    assert coverage.outside and coverage.fraction_inside == 0.0
    assert "outside the grid extent (x 0..40" in coverage.problem
    assert coverage.bounds is not None and coverage.bounds[1] < 0  # all behind the vehicle
    fuser = fusion.GridFuser(forward, [DRIVABLE])
    status = fuser.update("rear", labels, camera, pose)
    assert status.state == "outside_extent" and "outside the grid extent" in status.message
    assert "--grid-extent" in status.message
    assert np.all(fuser.fuse().values == bev.UNKNOWN)
    # The same camera in the surround grid, and the front camera in the forward one, see it.
    assert bev.view_coverage(camera, pose, GRID).problem is None
    front = bev.view_coverage(scene["front"][1], scene["front"][2], forward)
    assert front.problem is None and front.fraction_inside > 0.9
    # A camera looking at the sky is told apart.
    sky = bev.Pose.from_mount(0, 0, 1.5, 0, math.radians(-60), 0)
    assert "looks above the horizon" in bev.view_coverage(camera, sky, GRID).problem
    assert fuser.update("sky", labels, camera, sky).state == "invalid"


def test_several_cameras_default_to_the_surround_extent() -> None:
    from bisenet_ros.pipeline import grid_options_from_parameters

    one = grid_options_from_parameters({}).grid
    assert (one.x_min, one.x_max, one.y_min, one.y_max) == (0.0, 40.0, -20.0, 20.0)  # as before
    four = grid_options_from_parameters({}, cameras=4).grid
    assert (four.x_min, four.x_max, four.y_min, four.y_max) == (-30.0, 30.0, -30.0, 30.0)
    # An extent parameter that is set wins; the others surround.
    mixed = grid_options_from_parameters({"grid_x_max": 50.0, "grid_max_range": 12.0},
                                         cameras=2).grid
    assert (mixed.x_min, mixed.x_max, mixed.y_min, mixed.y_max) == (-12.0, 50.0, -12.0, 12.0)
    with pytest.raises(ValueError, match="surround grid"):
        grid_options_from_parameters({"grid_max_range": 500.0}, cameras=2)


@pytest.mark.parametrize("name", list(CAMERAS))
def test_a_camera_remaps_only_the_block_of_cells_it_can_see(name: str, scene: dict) -> None:
    labels, camera, pose = scene[name]
    lookup = bev.GroundLookup(camera, pose, GRID, labels.shape)
    # Every sample of the whole grid that the camera sees (checked here point by point, without
    # the lookup's pruning) lies in the lookup's block, and the block is a part of the grid.
    points = GRID.sample_points()
    np.testing.assert_array_equal(GRID.sample_points(lookup.rows, lookup.cols),
                                  points[:, lookup.rows, lookup.cols])
    flat = points.reshape(-1, 3)
    near = np.hypot(*(flat[:, :2] - pose.translation[:2]).T) <= GRID.max_range
    uv, valid = camera.project((flat - pose.translation) @ pose.rotation)
    width, height = camera.image_size
    with np.errstate(invalid="ignore"):
        seen = near & valid & (uv[:, 0] > -0.5) & (uv[:, 0] < width - 0.5) & (
            uv[:, 1] > -0.5) & (uv[:, 1] < height - 0.5)
    rows, cols = np.nonzero(seen.reshape(points.shape[:3]).any(axis=0))
    assert rows.min() >= lookup.rows.start and rows.max() < lookup.rows.stop
    assert cols.min() >= lookup.cols.start and cols.max() < lookup.cols.stop
    block_cells = (lookup.rows.stop - lookup.rows.start) * (lookup.cols.stop - lookup.cols.start)
    assert block_cells < 0.6 * GRID.width * GRID.height
