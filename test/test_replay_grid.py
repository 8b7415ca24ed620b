"""The replay's ``drivable_grid``: camera_info and tf from the bag (or the command line), the
OccupancyGrid topic in the output bag, and the bird's-eye IoU in the report."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from bisenet_ros import bev
from bisenet_ros.replay.bagtools import BagMessage, frame_stamp, write_image_bag
from bisenet_ros.replay.grid import TransformTree
from bisenet_ros.replay.messages import make_camera_info, make_header, make_tf_message
from test_replay import H, W, read_bag, run_cli

K = [60.0, 0.0, 64.0, 0.0, 60.0, 20.0, 0.0, 0.0, 1.0]
MOUNT_XYZ, MOUNT_RPY = (1.0, 0.0, 1.5), (0.0, 0.15, 0.0)  # base_link -> camera_link
GRID_ARGS = ["--image-topic", "/camera/image_raw", "--grid-resolution", "0.25", "--grid-extent", "0", "20", "-10", "10",
             "--grid-max-range", "18"]


def tf_static() -> BagMessage:
    # A chain, as robot_state_publisher publishes it: base_link -> camera_link -> optical frame.
    msg = make_tf_message([
        ("base_link", "camera_link", MOUNT_XYZ,
         bev.matrix_to_quaternion(bev.rpy_to_matrix(*MOUNT_RPY))),
        ("camera_link", "camera_optical", (0.0, 0.0, 0.0),
         bev.matrix_to_quaternion(bev.OPTICAL_IN_BODY))])
    return BagMessage("/tf_static", "tf2_msgs/msg/TFMessage", frame_stamp(0) - 1, msg)


def camera_infos(count: int) -> list[BagMessage]:
    return [BagMessage("/camera/camera_info", "sensor_msgs/msg/CameraInfo", frame_stamp(i) + 1,
                       make_camera_info(make_header(frame_stamp(i), "camera_optical"),
                                        width=W, height=H, k=K))
            for i in range(count)]


def ground_labels(half_width: float) -> np.ndarray:
    """Ray-cast labels: road (0) where the ground is within ``half_width`` m of the camera's
    axis, sidewalk (1) elsewhere on the ground, building (2) above the horizon."""
    pose = bev.Pose.from_mount(*MOUNT_XYZ, *MOUNT_RPY)
    v, u = np.mgrid[0:H, 0:W].astype(np.float64)
    rays = np.stack([(u - K[2]) / K[0], (v - K[5]) / K[4], np.ones_like(u)], -1) @ pose.rotation.T
    down = rays[..., 2] < 0
    t = np.where(down, -pose.translation[2] / np.where(down, rays[..., 2], -1), 0)
    y = pose.translation[1] + rays[..., 1] * t
    return np.where(down, np.where(np.abs(y) < half_width, 0, 1), 2).astype(np.uint8)


def frame_for(labels: np.ndarray) -> np.ndarray:
    frame = np.zeros((H, W, 3), np.uint8)
    frame[:, :, 0] = labels * 64 + 10  # KnownEngine: class = blue // 64
    return frame


def make_bag(tmp_path: Path, *, pred_half_width: float, with_camera: bool = True) -> Path:
    frames = [frame_for(ground_labels(pred_half_width))] * 3
    truth = [ground_labels(2.0)] * 3
    extra = [tf_static(), *camera_infos(3)] if with_camera else []
    return write_image_bag(tmp_path / "in", frames, labels=truth, frame_id="camera_optical",
                           extra=extra)


@pytest.mark.parametrize("pred_half_width", [2.0, 3.0])
def test_bag_with_camera_info_and_tf_static_gives_a_grid_and_birds_eye_iou(
        tmp_path: Path, pred_half_width: float) -> None:
    bag = make_bag(tmp_path, pred_half_width=pred_half_width)
    report = tmp_path / "report"
    assert run_cli([str(bag), "-o", str(tmp_path / "out"), "--labels-topic", "/camera/labels",
                    "--report", str(report), "--no-progress", "--drivable-classes", "road",
                    *GRID_ARGS]) == 0
    grids = read_bag(tmp_path / "out")["/segmentation/drivable_grid"]
    assert len(grids) == 3
    spec = bev.GridSpec(resolution=0.25, x_min=0, x_max=20, y_min=-10, y_max=10, max_range=18)
    pose = bev.Pose.from_mount(*MOUNT_XYZ, *MOUNT_RPY)
    camera = bev.CameraModel.from_camera_info({"width": W, "height": H, "k": K, "d": [0.0] * 5})
    projector = bev.BevProjector(spec, [0])
    pred = projector(ground_labels(pred_half_width), camera, pose)
    truth = projector(ground_labels(2.0), camera, pose)
    for index, (_, msg) in enumerate(grids):
        assert msg.header.frame_id == "base_link"
        assert (msg.header.stamp.sec * 10**9 + msg.header.stamp.nanosec) == frame_stamp(index)
        assert (msg.info.width, msg.info.height, msg.info.resolution) == (80, 80, 0.25)
        np.testing.assert_array_equal(np.asarray(msg.data).reshape(80, 80), pred)
    # The grid is right in metres: free cells lie within the road's half width (+ a cell).
    ys = spec.y_min + (np.nonzero(pred == bev.FREE)[0] + 0.5) * spec.resolution
    assert np.abs(ys).max() <= pred_half_width + 0.25
    birds_eye = json.loads((report / "metrics.json").read_text())["birds_eye"]
    known = truth != bev.UNKNOWN
    inter = np.count_nonzero((pred == 0) & (truth == 0))
    union = np.count_nonzero(((pred == 0) & known) | (truth == 0))
    assert birds_eye["drivable_iou"] == pytest.approx(inter / union)
    assert birds_eye["frames_evaluated"] == 3 and birds_eye["topic_messages"] == 3
    assert birds_eye["camera_model_from"] == "/camera/camera_info in the bag"
    if pred_half_width == 2.0:
        assert birds_eye["drivable_iou"] == 1.0
    else:
        assert 0.5 < birds_eye["drivable_iou"] < 0.8
    page = (report / "report.html").read_text()
    assert "Bird's-eye drivable grid" in page and "alt='drivable grid'" in page


def test_without_camera_info_a_calibration_file_and_pose_give_the_grid(tmp_path: Path) -> None:
    bag = make_bag(tmp_path, pred_half_width=2.0, with_camera=False)
    report = tmp_path / "report"
    assert run_cli([str(bag), "-o", str(tmp_path / "out0"), "--no-progress",
                    "--report", str(report), "--drivable-classes", "road", *GRID_ARGS]) == 0
    assert "/segmentation/drivable_grid" not in read_bag(tmp_path / "out0")
    warnings = json.loads((report / "metrics.json").read_text())["status"]["warnings"]
    assert any("no /camera/camera_info" in w and "--camera-info" in w for w in warnings)
    calibration = tmp_path / "camera.yaml"
    calibration.write_text(
        f"image_width: {W}\nimage_height: {H}\ncamera_matrix: {{rows: 3, cols: 3, data: {K}}}\n"
        "distortion_model: plumb_bob\ndistortion_coefficients: {rows: 1, cols: 5, data: [0, 0, 0, 0, 0]}\n")
    assert run_cli([str(bag), "-o", str(tmp_path / "out1"), "--no-progress", "--drivable-classes",
                    "road", "--camera-info", str(calibration), "--camera-pose",
                    *map(str, MOUNT_XYZ + MOUNT_RPY), *GRID_ARGS]) == 0
    grids = read_bag(tmp_path / "out1")["/segmentation/drivable_grid"]
    assert len(grids) == 3 and np.count_nonzero(np.asarray(grids[0][1].data) == 0) > 100


def test_bad_grid_options_are_usage_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bag = make_bag(tmp_path, pred_half_width=2.0)
    assert run_cli([str(bag), "-o", str(tmp_path / "o"), "--grid-resolution", "0.01",
                    "--grid-extent", "0", "400", "-200", "200"]) == 2
    assert "cap of" in capsys.readouterr().err
    sky = [*GRID_ARGS, "--camera-pose", "0", "0", "1.5", "0", str(-math.radians(60)), "0"]
    assert run_cli([str(bag), "-o", str(tmp_path / "o2"), "--no-progress", *sky,
                    "--report", str(tmp_path / "r")]) == 0
    metrics = json.loads((tmp_path / "r" / "metrics.json").read_text())["birds_eye"]
    assert metrics["topic_messages"] == 0
    assert any("looks above the horizon" in p for p in metrics["frames_without_grid"])
    warnings = json.loads((tmp_path / "r" / "metrics.json").read_text())["status"]["warnings"]
    assert any("3 frame(s) without a grid" in w and "looks above the horizon" in w
               for w in warnings)


def test_a_rear_camera_outside_the_default_extent_is_reported(tmp_path: Path) -> None:
    """The default extent (x 0..40) lies in front of the vehicle: a rear-facing camera replayed
    alone writes no grid, and the report says why and what to change."""
    bag = make_bag(tmp_path, pred_half_width=2.0)
    rear = ["--image-topic", "/camera/image_raw", "--camera-pose", "-1", "0", "1.5", "0", "0.15",
            str(math.pi), "--grid-resolution", "0.25", "--grid-max-range", "18", "--no-progress",
            "--drivable-classes", "road"]
    assert run_cli([str(bag), "-o", str(tmp_path / "o"), *rear, "--report",
                    str(tmp_path / "r")]) == 0
    assert "/segmentation/drivable_grid" not in read_bag(tmp_path / "o")
    warnings = json.loads((tmp_path / "r" / "metrics.json").read_text())["status"]["warnings"]
    assert any("outside the grid extent (x 0..40" in w and "--grid-extent" in w for w in warnings)
    assert run_cli([str(bag), "-o", str(tmp_path / "o2"), *rear, "--grid-extent", "-20", "0", "-10",
                    "10"]) == 0
    assert len(read_bag(tmp_path / "o2")["/segmentation/drivable_grid"]) == 3


def test_transform_tree_chains_and_reports_missing_frames() -> None:
    tree = TransformTree()
    tree.add(tf_static().msg, static=True)
    pose = tree.lookup("base_link", "camera_optical")
    expected = bev.Pose.from_mount(*MOUNT_XYZ, *MOUNT_RPY)
    np.testing.assert_allclose(pose.rotation, expected.rotation, atol=1e-9)
    np.testing.assert_allclose(pose.translation, expected.translation, atol=1e-9)
    inverse = tree.lookup("camera_optical", "base_link")
    np.testing.assert_allclose(inverse.compose(pose).rotation, np.eye(3), atol=1e-9)
    with pytest.raises(bev.BevError, match="'odom' is not in the bag"):
        tree.lookup("odom", "camera_optical")


def test_grid_parameters_from_the_node_parameter_file_and_the_command_line(tmp_path: Path) -> None:
    import argparse

    from bisenet_ros.config import config_from_args
    from bisenet_ros.commands import replay as cli

    params = tmp_path / "node.yaml"
    params.write_text("segmentation:\n  ros__parameters:\n    grid_resolution: 0.5\n"
                      "    grid_frame: base_footprint\n    grid_max_range: 12.0\n")
    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    for argv, resolution in (([], 0.5), (["--grid-resolution", "0.2"], 0.2)):
        args = parser.parse_args(["in", "-o", "out", "--config", str(params), *argv])
        options, _ = cli.build_options(args, config_from_args(args))
        assert (options.grid.resolution, options.grid.frame_id, options.grid.max_range) == (
            resolution, "base_footprint", 12.0)
        assert options.write_grid and options.camera_pose is None


def test_the_grid_section_of_the_report_escapes_each_text_once() -> None:
    from types import SimpleNamespace

    from bisenet_ros.replay.grid import grid_summary
    from bisenet_ros.replay.report import _birds_eye_html

    section = {"grid": grid_summary(bev.GridSpec(frame_id="odom&map")),
               "camera_model_from": "--camera-info <cal>.yaml", "camera_models": 1,
               "pose_from": "--camera-pose", "topic_messages": 3, "drivable_iou": None,
               "frames_evaluated": 0, "frames_without_grid": {}}
    result = SimpleNamespace(grid=SimpleNamespace(picture_png=lambda: None))
    page = "\n".join(_birds_eye_html(result, section))  # type: ignore[arg-type]
    assert "in odom&amp;map," in page and "--camera-info &lt;cal&gt;.yaml" in page
    assert "&amp;amp;" not in page and "&amp;lt;" not in page
