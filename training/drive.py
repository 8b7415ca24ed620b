"""``python -m training drive``: a synthetic drive recorded as a ROS 2 bag, with ground truth.

The bag holds what a camera driver, robot_state_publisher and a labelling tool would have
recorded: ``sensor_msgs/Image`` frames (bgr8) on ``/camera/image_raw`` with frame_id
``camera_optical``, their ``sensor_msgs/CameraInfo`` on ``/camera/camera_info``, the camera's
mount on ``/tf_static`` (``base_link`` -> ``camera_link`` -> ``camera_optical``) and mono8 trainId
masks on ``/camera/labels`` with the same header stamps. It is what the demo replays through the
node's engine and codec; the camera model and mount give the replay's bird's-eye grid.

Camera: every street (``training.synth.render_scene``) is rendered by a level pinhole camera
:data:`CAMERA_HEIGHT_M` above the ground at twice the frame size; each frame is that image seen
by a camera pitched down by :data:`CAMERA_PITCH_RAD` about the same optical centre, which is
exactly the homography ``K_frame R K_render^-1`` of the rendered image (a rotation about the
optical centre needs no depth). Motion: the drive zooms into each street for
``frames_per_street`` frames (the focal length grows; the recorded CameraInfo follows it), which
reads as forward motion and keeps consecutive frames (and their labels) coherent, so the
temporal stability reported by the replay means something; then it cuts to the next street.
The seeds are disjoint from ``training synth``'s train/val seeds.
"""
from __future__ import annotations

import argparse
import math
from pathlib import Path

import cv2
import numpy as np

from bisenet_ros.bev import OPTICAL_IN_BODY, matrix_to_quaternion, rpy_to_matrix
from bisenet_ros.labels import label_ids_to_train_ids
from bisenet_ros.replay.bagtools import BagMessage, frame_stamp, write_image_bag
from bisenet_ros.replay.messages import make_camera_info, make_header, make_tf_message
from training.synth import parse_size, render_scene

# Far from the seeds used by `training synth` (train: index, val: offset), so the demo drive is
# never a training image.
DRIVE_SEED = 900_000
#: The camera's mount: height of its optical centre above the ground (base_link z = 0), metres,
#: and its downward pitch, radians; x forward of base_link, metres.
CAMERA_HEIGHT_M = 1.5
CAMERA_PITCH_RAD = math.radians(4.0)
CAMERA_X_M = 1.2
OPTICAL_FRAME = "camera_optical"


def frame_camera(width: int, height: int, scale: float) -> np.ndarray:
    """Intrinsics K (3, 3) of a drive frame at zoom ``scale`` (1 at the start of a street)."""
    f = 1.1 * width * scale  # 1.1: the pitched view stays inside the rendered image
    return np.array([[f, 0.0, width / 2], [0.0, f, 0.55 * height], [0.0, 0.0, 1.0]])


def render_intrinsics(width: int, height: int) -> np.ndarray:
    """K (3, 3) of the level camera each street is rendered with (twice the frame size; its
    ``cy`` is the horizon row), as ``training.synth`` projects: ``u = cx + f X / Z``,
    ``v = cy + f (h - Y) / Z``."""
    return np.array([[2.0 * width, 0.0, width], [0.0, 2.0 * width, 0.88 * height], [0, 0, 1]])


def pitch_rotation(pitch: float) -> np.ndarray:
    """Level-camera optical coordinates -> those of the camera pitched down by ``pitch`` rad."""
    c, s = math.cos(pitch), math.sin(pitch)
    return np.array([[1.0, 0.0, 0.0], [0.0, c, -s], [0.0, s, c]])


def render_drive(frames: int, *, width: int = 512, height: int = 256, frames_per_street: int = 10,
                 seed: int = 0, zoom: float = 1.35
                 ) -> tuple[list[np.ndarray], list[np.ndarray], list[np.ndarray]]:
    """Render a coherent synthetic drive.

    Args:
        frames: Number of frames.
        width: Frame width in pixels.
        height: Frame height in pixels.
        frames_per_street: Frames spent driving into one street before cutting to the next.
        seed: Seed of the drive (the same seed gives the same drive).
        zoom: Magnification reached at the end of each street.

    Returns:
        ``(frames_bgr, train_ids, intrinsics)``: lists of ``(H, W, 3) uint8`` BGR frames,
        ``(H, W) uint8`` Cityscapes trainId masks (255 = ignore) and each frame's ``(3, 3)`` K.
    """
    if frames < 1 or frames_per_street < 1:
        raise ValueError("frames and frames_per_street must be positive")
    render_k = render_intrinsics(width, height)
    render_camera = (render_k[0, 0], render_k[0, 2], render_k[1, 2], CAMERA_HEIGHT_M)
    pitch = pitch_rotation(CAMERA_PITCH_RAD)
    images: list[np.ndarray] = []
    labels: list[np.ndarray] = []
    intrinsics: list[np.ndarray] = []
    street_image = street_labels = None
    for index in range(frames):
        step = index % frames_per_street
        if step == 0:
            rgb, label_ids = render_scene((DRIVE_SEED, seed, index // frames_per_street),
                                          2 * height, 2 * width, camera=render_camera)
            street_image, street_labels = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), label_ids_to_train_ids(label_ids)
        scale = 1.0 + (zoom - 1.0) * step / max(frames_per_street - 1, 1)
        k = frame_camera(width, height, scale)
        homography = k @ pitch @ np.linalg.inv(render_k)
        images.append(cv2.warpPerspective(street_image, homography, (width, height),
                                          flags=cv2.INTER_AREA))
        labels.append(cv2.warpPerspective(street_labels, homography, (width, height),
                                          flags=cv2.INTER_NEAREST, borderValue=255))
        intrinsics.append(k)
    return images, labels, intrinsics


def camera_messages(intrinsics: list[np.ndarray], *, width: int, height: int,
                    fps: float) -> list[BagMessage]:
    """The drive's ``/tf_static`` (the mount) and one ``/camera/camera_info`` per frame."""
    mount = make_tf_message([
        ("base_link", "camera_link", (CAMERA_X_M, 0.0, CAMERA_HEIGHT_M),
         matrix_to_quaternion(rpy_to_matrix(0.0, CAMERA_PITCH_RAD, 0.0))),
        ("camera_link", OPTICAL_FRAME, (0.0, 0.0, 0.0), matrix_to_quaternion(OPTICAL_IN_BODY))])
    messages = [BagMessage("/tf_static", "tf2_msgs/msg/TFMessage", frame_stamp(0, fps=fps) - 1,
                           mount)]
    for index, k in enumerate(intrinsics):
        stamp = frame_stamp(index, fps=fps)
        messages.append(BagMessage(
            "/camera/camera_info", "sensor_msgs/msg/CameraInfo", stamp + 1,
            make_camera_info(make_header(stamp, OPTICAL_FRAME), width=width, height=height, k=k)))
    return messages


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, help="bag directory to create")
    parser.add_argument("--frames", type=int, default=80, help="number of frames (default 80)")
    parser.add_argument("--fps", type=float, default=10.0, help="camera frame rate (default 10)")
    parser.add_argument("--size", default="512x256", help="frame size WIDTHxHEIGHT (default 512x256)")
    parser.add_argument("--frames-per-street", type=int, default=10,
                        help="frames before cutting to the next street (default 10)")
    parser.add_argument("--storage", choices=("mcap", "sqlite3"), default="mcap",
                        help="bag storage: mcap (Iron and later) or sqlite3 (Humble)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the drive (default 0)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing bag")


def run(args: argparse.Namespace) -> int:
    out = Path(args.out)
    if out.exists():
        if not args.overwrite:
            raise FileExistsError(f"{out} exists; pass --overwrite to replace it")
        import shutil

        shutil.rmtree(out)
    width, height = parse_size(args.size)
    frames, labels, intrinsics = render_drive(args.frames, width=width, height=height,
                                              frames_per_street=args.frames_per_street,
                                              seed=args.seed)
    write_image_bag(out, frames, labels=labels, storage=args.storage, fps=args.fps,
                    frame_id=OPTICAL_FRAME,
                    extra=camera_messages(intrinsics, width=width, height=height, fps=args.fps))
    print(f"wrote a {len(frames)}-frame synthetic drive ({width}x{height}, {args.fps:g} Hz, "
          f"{args.storage}) to {out}: /camera/image_raw (bgr8), /camera/camera_info, /tf_static "
          f"(camera {CAMERA_HEIGHT_M} m high, pitched {math.degrees(CAMERA_PITCH_RAD):g} deg "
          "down), /camera/labels (mono8 trainIds)")
    return 0
