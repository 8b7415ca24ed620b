"""Class sets: names and colour palettes, and the Cityscapes label-id tables.

The Cityscapes benchmark trains on 19 of its 34 annotated classes: a ground-truth ``*_labelIds.png``
holds the official *label ids* (0..33, -1 for the licence plate) and must be mapped to *train ids*
(0..18, 255 = ignored) before it can be compared with a network's prediction.
:data:`LABEL_ID_TO_TRAIN_ID` is the official table from ``cityscapesScripts/helpers/labels.py``.

A custom dataset brings its own class set: a YAML file with ``names`` (a list of class names, in
train-id order) and optionally ``palette`` (one ``[R, G, B]`` per class)::

    names: [ground, obstacle, sky]
    palette: [[128, 64, 128], [220, 20, 60], [70, 130, 180]]

This module is pure NumPy (OpenCV only for the LUT helpers): no torch, no ROS.
"""
from __future__ import annotations

import difflib
import os
from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np

#: Label value meaning "no class" (Cityscapes ignore id; also the letterbox padding label).
IGNORE_ID = 255

#: The 19 Cityscapes training classes, in train-id order.
CITYSCAPES_CLASSES: tuple[str, ...] = (
    "road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign",
    "vegetation", "terrain", "sky", "person", "rider", "car", "truck", "bus", "train",
    "motorcycle", "bicycle",
)

#: The standard Cityscapes palette (RGB), one row per train id.
CITYSCAPES_PALETTE: np.ndarray = np.array([
    (128, 64, 128), (244, 35, 232), (70, 70, 70), (102, 102, 156), (190, 153, 153),
    (153, 153, 153), (250, 170, 30), (220, 220, 0), (107, 142, 35), (152, 251, 152),
    (70, 130, 180), (220, 20, 60), (255, 0, 0), (0, 0, 142), (0, 0, 70), (0, 60, 100),
    (0, 80, 100), (0, 0, 230), (119, 11, 32),
], dtype=np.uint8)
CITYSCAPES_PALETTE.setflags(write=False)

#: Official Cityscapes labelId -> trainId table (cityscapesScripts ``labels.py``). Label ids not in
#: the 19 training classes map to 255; the licence plate (label id -1) is ignored as well.
LABEL_ID_TO_TRAIN_ID: dict[int, int] = {
    0: 255,   # unlabeled
    1: 255,   # ego vehicle
    2: 255,   # rectification border
    3: 255,   # out of roi
    4: 255,   # static
    5: 255,   # dynamic
    6: 255,   # ground
    7: 0,     # road
    8: 1,     # sidewalk
    9: 255,   # parking
    10: 255,  # rail track
    11: 2,    # building
    12: 3,    # wall
    13: 4,    # fence
    14: 255,  # guard rail
    15: 255,  # bridge
    16: 255,  # tunnel
    17: 5,    # pole
    18: 255,  # polegroup
    19: 6,    # traffic light
    20: 7,    # traffic sign
    21: 8,    # vegetation
    22: 9,    # terrain
    23: 10,   # sky
    24: 11,   # person
    25: 12,   # rider
    26: 13,   # car
    27: 14,   # truck
    28: 15,   # bus
    29: 255,  # caravan
    30: 255,  # trailer
    31: 16,   # train
    32: 17,   # motorcycle
    33: 18,   # bicycle
    -1: 255,  # license plate
}


def _build_lut(table: dict[int, int], default: int) -> np.ndarray:
    lut = np.full(256, default, dtype=np.uint8)
    for key, value in table.items():
        if 0 <= key <= 255:
            lut[key] = value
    lut.setflags(write=False)
    return lut


_LABEL_TO_TRAIN_LUT = _build_lut(LABEL_ID_TO_TRAIN_ID, IGNORE_ID)
# Inverse for writing predictions in the benchmark's label-id format. Several label ids share
# train id 255; the inverse maps 255 back to 0 ("unlabeled").
_TRAIN_TO_LABEL_LUT = _build_lut(
    {train: label for label, train in LABEL_ID_TO_TRAIN_ID.items() if train != IGNORE_ID and label >= 0}, 0)


def label_ids_to_train_ids(label_ids: np.ndarray) -> np.ndarray:
    """Map a Cityscapes ``*_labelIds.png`` array to train ids.

    Args:
        label_ids: Integer array of any shape (usually H x W) holding official label ids 0..33.
            Values outside 0..255 (e.g. -1 in an int array) are mapped to 255.

    Returns:
        uint8 array of the same shape: train ids 0..18, 255 for ignored classes.
    """
    label_ids = np.asarray(label_ids)
    if label_ids.dtype == np.uint8:
        return _LABEL_TO_TRAIN_LUT[label_ids]
    valid = (label_ids >= 0) & (label_ids <= 255)
    out = np.full(label_ids.shape, IGNORE_ID, dtype=np.uint8)
    out[valid] = _LABEL_TO_TRAIN_LUT[label_ids[valid].astype(np.intp)]
    return out


def train_ids_to_label_ids(train_ids: np.ndarray) -> np.ndarray:
    """Inverse of :func:`label_ids_to_train_ids` (255 -> 0 "unlabeled"), e.g. for benchmark submission.

    Args:
        train_ids: uint8 array of train ids (any shape).

    Returns:
        uint8 array of official label ids, same shape.
    """
    train_ids = np.asarray(train_ids)
    if train_ids.dtype != np.uint8:
        raise ValueError(f"train_ids: expected a uint8 array, got dtype {train_ids.dtype}")
    return _TRAIN_TO_LABEL_LUT[train_ids]


@dataclass(frozen=True)
class ClassSet:
    """Names and colours of the classes a model predicts.

    Attributes:
        name: Short identifier ("cityscapes" or the YAML file it came from).
        names: Class names in class-id order.
        palette: ``(N, 3)`` uint8 array, RGB, one row per class.
    """

    name: str
    names: tuple[str, ...]
    palette: np.ndarray

    def __post_init__(self) -> None:
        palette = np.asarray(self.palette)
        if palette.shape != (len(self.names), 3):
            raise ValueError(
                f"class set {self.name!r}: palette has shape {palette.shape}, expected "
                f"({len(self.names)}, 3): one [R, G, B] per class name")
        if not 1 <= len(self.names) <= 255:
            raise ValueError(f"class set {self.name!r}: expected 1..255 classes, got {len(self.names)}")
        palette = palette.astype(np.uint8, copy=True)
        palette.setflags(write=False)
        object.__setattr__(self, "palette", palette)
        object.__setattr__(self, "names", tuple(str(n) for n in self.names))

    @property
    def num_classes(self) -> int:
        return len(self.names)

    def class_id(self, name_or_id: str | int) -> int:
        """Resolve a class name or a numeric id ("0", 0) to a class id (see :func:`class_index`).

        Raises:
            ValueError: Unknown name or out-of-range id, listing the valid names and the closest.
        """
        return class_index(name_or_id, self.names, source=f"class set {self.name!r}")

    def color_lut(self, color_order: str = "rgb") -> np.ndarray:
        """A ``(256, 1, 3)`` uint8 table for ``cv2.LUT`` on a 3-channel label image.

        Ids without a class (e.g. 255, letterbox padding) are black.
        """
        lut = np.zeros((256, 1, 3), dtype=np.uint8)
        palette = self.palette if color_order == "rgb" else self.palette[:, ::-1]
        lut[: self.num_classes, 0, :] = palette
        return lut

    def mask_lut(self, classes: Iterable[str | int]) -> np.ndarray:
        """A ``(256,)`` uint8 table mapping the given classes to 255 and everything else to 0."""
        lut = np.zeros(256, dtype=np.uint8)
        lut[class_indices(classes, self.names, source=f"class set {self.name!r}")] = 255
        return lut


def class_index(entry: str | int, names: Sequence[str], *, source: str = "the model") -> int:
    """The class id of ``entry``: the one rule for class names everywhere (engine, node, replay,
    evaluate, quantize, training).

    A name matches case-insensitively (``Road`` and ``road`` are the same class), after trimming
    spaces; a number (``3`` or ``"3"``) is a class id. Messages show the names as ``names`` spells
    them.

    Args:
        entry: A class name or id, e.g. from ``drivable_classes``.
        names: The class names, index = class id.
        source: What the names belong to, for the message (e.g. ``class set 'camvid.yaml'``).

    Returns:
        The class id, ``0 <= id < len(names)``.

    Raises:
        ValueError: An unknown name (listing the names, and the closest one when there is one) or
            an id out of range.
    """
    names = [str(n) for n in names]
    text = str(entry).strip()
    if isinstance(entry, (int, np.integer)) or text.isdigit():
        class_id = int(text)
        if 0 <= class_id < len(names):
            return class_id
        raise ValueError(f"class id {class_id} is out of range for {source} (0..{len(names) - 1})")
    lowered = [n.lower() for n in names]
    if text.lower() in lowered:
        return lowered.index(text.lower())
    close = difflib.get_close_matches(text.lower(), lowered, n=1)
    hint = f" (did you mean {names[lowered.index(close[0])]!r}?)" if close else ""
    raise ValueError(f"unknown class {str(entry)!r} in {source}{hint}; expected one of: "
                     + ", ".join(names) + " (or a class id)")


def class_indices(entries: Iterable[str | int], names: Sequence[str], *,
                  source: str = "the model") -> list[int]:
    """:func:`class_index` of every entry, in order (e.g. the ids of ``drivable_classes``)."""
    return [class_index(entry, names, source=source) for entry in entries]


def cityscapes() -> ClassSet:
    """The 19-class Cityscapes class set with the standard palette."""
    return ClassSet("cityscapes", CITYSCAPES_CLASSES, CITYSCAPES_PALETTE)


def default_palette(num_classes: int) -> np.ndarray:
    """A deterministic, well-spread palette for a class set that brings none.

    The first 19 entries are the Cityscapes colours (so 19-class custom models look familiar);
    further entries follow the PASCAL VOC bit-interleaving scheme, which never repeats a colour.
    """
    colors = [tuple(c) for c in CITYSCAPES_PALETTE[:num_classes]]
    index = 1
    while len(colors) < num_classes:
        r = g = b = 0
        cid = index
        for shift in range(7, -1, -1):
            r |= ((cid >> 0) & 1) << shift
            g |= ((cid >> 1) & 1) << shift
            b |= ((cid >> 2) & 1) << shift
            cid >>= 3
        index += 1
        if (r, g, b) not in colors:
            colors.append((r, g, b))
    return np.array(colors, dtype=np.uint8).reshape(num_classes, 3)


def make_class_set(names: Sequence[str], palette: Sequence[Sequence[int]] | np.ndarray | None = None,
                   name: str = "custom") -> ClassSet:
    """Build a class set from names and an optional palette (validated, RGB 0..255)."""
    names = [str(n) for n in names]
    if palette is None:
        return ClassSet(name, tuple(names), default_palette(len(names)))
    array = np.asarray(palette)
    if array.ndim != 2 or array.shape[1] != 3 or not np.issubdtype(array.dtype, np.number):
        raise ValueError(f"class set {name!r}: palette must be a list of [R, G, B] triples")
    if array.size and (array.min() < 0 or array.max() > 255):
        raise ValueError(f"class set {name!r}: palette values must be in 0..255")
    return ClassSet(name, tuple(names), array.astype(np.uint8))


def load_class_set(spec: str | os.PathLike[str] = "cityscapes", num_classes: int | None = None) -> ClassSet:
    """Load a class set by name (``"cityscapes"``) or from a YAML file with ``names``/``palette``.

    Args:
        spec: ``"cityscapes"`` or a path to a YAML file.
        num_classes: When given, the class set must have exactly this many classes.

    Raises:
        ValueError: Unknown spec, malformed file, or class count mismatch (naming both counts).
    """
    spec_str = os.fspath(spec)
    if spec_str == "cityscapes":
        class_set = cityscapes()
    elif spec_str.endswith((".yaml", ".yml")) or os.path.exists(spec_str):
        import yaml

        try:
            with open(spec_str, encoding="utf-8") as stream:
                data = yaml.safe_load(stream)
        except OSError as exc:
            raise ValueError(f"class_set {spec_str!r}: cannot read the file ({exc.strerror})") from None
        if not isinstance(data, dict) or not isinstance(data.get("names"), list) or not data["names"]:
            raise ValueError(
                f"class_set {spec_str!r}: expected a YAML mapping with 'names' (a list of class "
                "names) and optionally 'palette' (a list of [R, G, B])")
        class_set = make_class_set(data["names"], data.get("palette"), name=os.path.basename(spec_str))
    else:
        raise ValueError(f"class_set {spec_str!r}: expected 'cityscapes' or a YAML file with 'names' and 'palette'")
    if num_classes is not None and class_set.num_classes != num_classes:
        raise ValueError(
            f"class_set {spec_str!r} has {class_set.num_classes} classes but the model predicts "
            f"num_classes={num_classes}")
    return class_set
