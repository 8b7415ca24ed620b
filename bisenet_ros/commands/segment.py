"""``bisenet-ros segment``: segment image files, write a label PNG and an overlay PNG per image.

    bisenet-ros segment street.jpg more/*.png --weights model_final_v2_city.pth --output-dir out/
    bisenet-ros segment street.jpg --weights runs/camvid/best.pth   # variant, classes, size from the file
    bisenet-ros segment                # no input: segments a generated street frame

Each input ``NAME.EXT`` gives ``NAME_labels.png`` (8-bit class ids, 255 = none) and
``NAME_overlay.png`` (colour mask blended on the image); ``--color`` adds ``NAME_color.png``.
"""
from __future__ import annotations

import argparse
import os
import warnings
from pathlib import Path

import numpy as np

from bisenet_ros.config import add_config_arguments, config_from_args
from bisenet_ros.fileio import NewOutputs


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``bisenet-ros segment``: the inputs, the output folder and every segmenter option."""
    parser.add_argument("images", nargs="*", help="image files (any format OpenCV reads); none: a generated frame")
    parser.add_argument("-o", "--output-dir", dest="output_dir", default="segment_output",
                        help="folder for the PNG outputs (default segment_output)")
    parser.add_argument("--color", action="store_true", help="also write the colour mask NAME_color.png")
    add_config_arguments(parser)


def run(args: argparse.Namespace) -> int:
    """Entry point of ``bisenet-ros segment``."""
    import cv2

    from bisenet_ros.inference import Segmenter
    from bisenet_ros.inference.frames import street_frame

    config = config_from_args(args)
    inputs: list[tuple[str, np.ndarray]] = []
    for name in args.images:
        if not os.path.isfile(name):
            raise ValueError(f"{name}: no such file")
        image = cv2.imread(name, cv2.IMREAD_COLOR)   # always 8-bit BGR, alpha and grey converted
        if image is None:
            raise ValueError(f"{name}: not an image OpenCV can read")
        inputs.append((Path(name).stem, image))
    if not inputs:
        inputs.append(("generated_street", street_frame(1280, 720)))
        print("no input images: segmenting a generated 1280x720 street frame")
    if config.weights is None:
        print("note: no --weights given, the model is randomly initialised: the labels are meaningless "
              "(pass a checkpoint, e.g. --weights model_final_v2_city.pth)")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # the random-weights warning, printed above
        segmenter = Segmenter(config)
    print(f"model: {segmenter.describe()}")
    out_dir = Path(args.output_dir)
    names = segmenter.class_names
    # A failure on any image (a frame the engine rejects, a full disk) removes what this run
    # wrote: no folder of half the images is left behind.
    with NewOutputs(out_dir) as created:
        out_dir.mkdir(parents=True, exist_ok=True)
        for stem, image in inputs:
            result = segmenter(image, color_order="bgr")
            written = [(out_dir / f"{stem}_labels.png", result.labels),
                       (out_dir / f"{stem}_overlay.png", result.overlay)]
            if args.color:
                written.append((out_dir / f"{stem}_color.png", result.color))
            for path, array in written:
                created.add(path)
                if not cv2.imwrite(str(path), array):
                    raise OSError(f"{path}: cannot be written (permissions, disk space?)")
            counts = np.bincount(result.labels.ravel(), minlength=256)
            top = [f"{names[i] if i < len(names) else i} {counts[i] / result.labels.size:.0%}"
                   for i in np.argsort(counts)[::-1][:3] if counts[i]]
            timings = ", ".join(f"{k} {v:.0f} ms" for k, v in result.timings.items())
            print(f"{stem}: {image.shape[1]}x{image.shape[0]} | {timings} | {', '.join(top)} "
                  f"| drivable {np.mean(result.drivable > 0):.0%} -> {', '.join(str(p) for p, _ in written)}")
    return 0
