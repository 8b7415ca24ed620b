"""The demo drive's recorded camera (``/camera/camera_info`` + ``/tf_static``) agrees with how its
frames are rendered: a ground point projected by the synthetic renderer's level camera and the
drive's pitch warp lands on the pixel where the recorded calibration and mount put it."""
from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np

from bisenet_ros import bev
from bisenet_ros.replay.bag import InputBag
from bisenet_ros.replay.grid import load_grid_source
from training import drive


def test_recorded_camera_info_and_tf_match_the_rendering(tmp_path: Path) -> None:
    width, height = 128, 64
    args = SimpleNamespace(out=str(tmp_path / "drive"), frames=4, fps=10.0, size=f"{width}x{height}",
                           frames_per_street=4, storage="mcap", seed=0, overwrite=False)
    assert drive.run(args) == 0
    with InputBag(tmp_path / "drive") as bag:
        source, problem = load_grid_source(bag, "/camera/image_raw", grid=bev.GridSpec())
    assert problem is None and source is not None
    assert len(source.cameras) == 4  # the zoom changes the focal length every frame
    pose = source.pose_for(drive.OPTICAL_FRAME)
    # Ground points in the renderer's world (X right, Z forward, metres) ...
    x_world, z_world = np.meshgrid(np.linspace(-4, 4, 9), np.linspace(6, 30, 9))
    x_world, z_world = x_world.ravel(), z_world.ravel()
    render_k = drive.render_intrinsics(width, height)
    source_px = np.stack([render_k[0, 2] + render_k[0, 0] * x_world / z_world,
                          render_k[1, 2] + render_k[1, 1] * drive.CAMERA_HEIGHT_M / z_world,
                          np.ones_like(x_world)])
    # ... are in base_link at x = mount x + Z, y = -X, on the ground (z = 0).
    base_link = np.column_stack([drive.CAMERA_X_M + z_world, -x_world, np.zeros_like(x_world)])
    for index in range(4):
        stamp = source.cameras[index][0]
        k = source.camera_at(stamp).k
        homography = k @ drive.pitch_rotation(drive.CAMERA_PITCH_RAD) @ np.linalg.inv(render_k)
        warped = homography @ source_px
        rendered = (warped[:2] / warped[2]).T
        recorded, valid = source.camera_at(stamp).project(
            (base_link - pose.translation) @ pose.rotation)
        assert valid.all()
        np.testing.assert_allclose(recorded, rendered, atol=1e-6)
