"""``python -m training drive``: a synthetic drive recorded as a ROS 2 bag, with ground truth.

The bag holds what a camera driver and a labelling tool would have recorded: ``sensor_msgs/Image``
frames (bgr8) on ``/camera/image_raw`` and mono8 trainId masks on ``/camera/labels`` with the same
header stamps. It is what the demo replays through the node's engine and codec.

Motion: each synthetic street (``training.synth.render_scene``, rendered at twice the frame size)
is driven into by a zoom towards its centre for ``frames_per_street`` frames, which reads as
forward motion and keeps consecutive frames (and their labels) coherent, so the temporal stability
reported by the replay means something; then the drive cuts to the next street. The seeds are
disjoint from ``training synth``'s train/val seeds.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import cv2
import numpy as np

from bisenet_ros.labels import label_ids_to_train_ids
from bisenet_ros.replay.bagtools import write_image_bag
from training.synth import parse_size, render_scene

# Far from the seeds used by `training synth` (train: index, val: offset), so the demo drive is
# never a training image.
DRIVE_SEED = 900_000


def render_drive(frames: int, *, width: int = 512, height: int = 256, frames_per_street: int = 10,
                 seed: int = 0, zoom: float = 1.35) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Render a coherent synthetic drive.

    Args:
        frames: Number of frames.
        width: Frame width in pixels.
        height: Frame height in pixels.
        frames_per_street: Frames spent driving into one street before cutting to the next.
        seed: Seed of the drive (the same seed gives the same drive).
        zoom: Magnification reached at the end of each street.

    Returns:
        ``(frames_bgr, train_ids)``: lists of ``(H, W, 3) uint8`` BGR frames and ``(H, W) uint8``
        Cityscapes trainId masks (255 = ignore).
    """
    if frames < 1 or frames_per_street < 1:
        raise ValueError("frames and frames_per_street must be positive")
    images: list[np.ndarray] = []
    labels: list[np.ndarray] = []
    street_image = street_labels = None
    for index in range(frames):
        step = index % frames_per_street
        if step == 0:
            rgb, label_ids = render_scene((DRIVE_SEED, seed, index // frames_per_street), 2 * height, 2 * width)
            street_image, street_labels = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), label_ids_to_train_ids(label_ids)
        scale = 1.0 + (zoom - 1.0) * step / max(frames_per_street - 1, 1)
        # Crop a window shrinking towards the centre (slightly below: the road), then resize to
        # the frame size; labels with nearest neighbour so they stay exact class ids.
        crop_w, crop_h = 2 * width / scale, 2 * height / scale
        x0, y0 = width - crop_w / 2, (2 * height - crop_h) * 0.55
        matrix = np.array([[width / crop_w, 0, -x0 * width / crop_w],
                           [0, height / crop_h, -y0 * height / crop_h]], dtype=np.float64)
        images.append(cv2.warpAffine(street_image, matrix, (width, height), flags=cv2.INTER_AREA))
        labels.append(cv2.warpAffine(street_labels, matrix, (width, height), flags=cv2.INTER_NEAREST,
                                     borderValue=255))
    return images, labels


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
            raise SystemExit(f"{out} exists; pass --overwrite to replace it")
        import shutil

        shutil.rmtree(out)
    width, height = parse_size(args.size)
    frames, labels = render_drive(args.frames, width=width, height=height,
                                  frames_per_street=args.frames_per_street, seed=args.seed)
    write_image_bag(out, frames, labels=labels, storage=args.storage, fps=args.fps)
    print(f"wrote a {len(frames)}-frame synthetic drive ({width}x{height}, {args.fps:g} Hz, "
          f"{args.storage}) to {out}: /camera/image_raw (bgr8), /camera/labels (mono8 trainIds)")
    return 0
