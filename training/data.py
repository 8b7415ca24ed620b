"""Datasets, augmentation and the deterministic step sampler.

Two on-disk formats:

* ``cityscapes``: the official layout, ``ROOT/leftImg8bit/SPLIT/CITY/*_leftImg8bit.png`` with
  ``ROOT/gtFine/SPLIT/CITY/*_gtFine_labelIds.png``; label ids are mapped to the 19 train ids with
  the official table in :mod:`bisenet_ros.labels` (everything else becomes 255 = ignore).
* ``folder``: a custom dataset, ``ROOT/images/SPLIT/**/NAME.{png,jpg,jpeg}`` with
  ``ROOT/masks/SPLIT/**/NAME.png`` holding class ids directly (0..C-1, 255 = ignore) and the class
  list in ``ROOT/classes.yaml`` (``names``, optional ``palette``; the format
  :func:`bisenet_ros.labels.load_class_set` reads).

Augmentation (random scale, pad with ignore, random crop, flip, colour jitter) is NumPy/OpenCV
and takes an explicit ``numpy.random.Generator``: the sampler derives one seed per (step, slot),
so a batch is a pure function of ``(seed, step)``. That is what makes ``--resume`` reproduce an
uninterrupted run exactly, whatever the number of DataLoader workers.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from bisenet_ros.labels import (IGNORE_ID, ClassSet, cityscapes, label_ids_to_train_ids, load_class_set,
                                make_class_set)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")


class DatasetError(ValueError):
    """The dataset on disk does not match the expected layout (the message lists the files)."""


def _first(items: Sequence[Any], n: int = 5) -> str:
    shown = ", ".join(str(i) for i in items[:n])
    more = f" (and {len(items) - n} more)" if len(items) > n else ""
    return shown + more


# --------------------------------------------------------------------------------------------
# File discovery
# --------------------------------------------------------------------------------------------

def cityscapes_pairs(root: str | os.PathLike[str], split: str) -> list[tuple[Path, Path]]:
    """List ``(image, labelIds)`` pairs of a Cityscapes split, sorted.

    Raises:
        DatasetError: missing folders, no images, images without labels or labels without images
            (listing the first few of each).
    """
    root = Path(root)
    img_dir, gt_dir = root / "leftImg8bit" / split, root / "gtFine" / split
    for d in (img_dir, gt_dir):
        if not d.is_dir():
            raise DatasetError(
                f"Cityscapes: {d} does not exist; expected ROOT/leftImg8bit/{split}/<city>/*_leftImg8bit.png "
                f"and ROOT/gtFine/{split}/<city>/*_gtFine_labelIds.png with ROOT={root}")
    images = sorted(img_dir.glob("*/*_leftImg8bit.png"))
    if not images:
        raise DatasetError(f"Cityscapes: no *_leftImg8bit.png files under {img_dir}/<city>/")
    labels = {p.relative_to(gt_dir): p for p in gt_dir.glob("*/*_gtFine_labelIds.png")}
    pairs, missing = [], []
    for img in images:
        rel = img.relative_to(img_dir)
        key = rel.parent / rel.name.replace("_leftImg8bit.png", "_gtFine_labelIds.png")
        if key in labels:
            pairs.append((img, labels.pop(key)))
        else:
            missing.append(gt_dir / key)
    if missing:
        raise DatasetError(f"Cityscapes {split}: {len(missing)} image(s) have no label file; missing: "
                           + _first(missing))
    if labels:
        orphans = sorted(labels.values())
        raise DatasetError(f"Cityscapes {split}: {len(orphans)} label file(s) have no image: " + _first(orphans))
    return pairs


def folder_pairs(root: str | os.PathLike[str], split: str) -> list[tuple[Path, Path]]:
    """List ``(image, mask)`` pairs of a folder-format split (matched by relative path and stem)."""
    root = Path(root)
    img_dir, mask_dir = root / "images" / split, root / "masks" / split
    for d in (img_dir, mask_dir):
        if not d.is_dir():
            raise DatasetError(
                f"folder dataset: {d} does not exist; expected ROOT/images/{split}/NAME.png|jpg and "
                f"ROOT/masks/{split}/NAME.png with ROOT={root}")
    images = sorted(p for p in img_dir.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not images:
        raise DatasetError(f"folder dataset: no images ({', '.join(IMAGE_SUFFIXES)}) under {img_dir}")
    masks = {p.relative_to(mask_dir).with_suffix(""): p for p in mask_dir.rglob("*.png")}
    pairs, missing = [], []
    for img in images:
        key = img.relative_to(img_dir).with_suffix("")
        if key in masks:
            pairs.append((img, masks.pop(key)))
        else:
            missing.append(mask_dir / key.with_suffix(".png"))
    if missing:
        raise DatasetError(f"folder dataset {split}: {len(missing)} image(s) have no mask; missing: "
                           + _first(missing))
    if masks:
        orphans = sorted(masks.values())
        raise DatasetError(f"folder dataset {split}: {len(orphans)} mask(s) have no image: " + _first(orphans))
    return pairs


def dataset_class_set(data_cfg: dict[str, Any]) -> ClassSet:
    """The class set of the configured dataset.

    ``data.class_set`` is ``"cityscapes"`` (for a folder dataset: its ``ROOT/classes.yaml``), a
    YAML file, or the mapping ``{names, palette}`` a run records in its config (so a resumed run
    keeps its classes even when the dataset moved).
    """
    spec = data_cfg.get("class_set") or "cityscapes"
    if isinstance(spec, Mapping):
        return make_class_set(spec["names"], spec.get("palette"), name="config")
    if data_cfg["format"] == "folder" and spec == "cityscapes":
        spec = str(Path(data_cfg["root"]) / "classes.yaml")
        if not Path(spec).is_file():
            raise DatasetError(f"folder dataset: {spec} not found; it lists the classes "
                               "('names: [...]', optional 'palette: [[R, G, B], ...]')")
    return cityscapes() if spec == "cityscapes" else load_class_set(spec)


# --------------------------------------------------------------------------------------------
# Augmentation
# --------------------------------------------------------------------------------------------

@dataclass
class TrainAugment:
    """The published recipes' augmentation: scale, pad (label 255), crop, flip, colour jitter.

    Attributes:
        crop: output (height, width).
        scale: continuous random scale range (min, max).
        scale_choices: if set, the scale is drawn from this list instead (STDC-Seg recipe).
        hflip: flip probability.
        brightness, contrast, saturation: jitter amplitudes; a factor is drawn in [1-a, 1+a].
    """

    crop: tuple[int, int]
    scale: tuple[float, float] = (0.25, 2.0)
    scale_choices: Sequence[float] | None = None
    hflip: float = 0.5
    brightness: float = 0.4
    contrast: float = 0.4
    saturation: float = 0.4

    def __call__(self, image: np.ndarray, label: np.ndarray, rng: np.random.Generator
                 ) -> tuple[np.ndarray, np.ndarray]:
        """Augment one sample.

        Args:
            image: (H, W, 3) uint8 RGB.
            label: (H, W) uint8 class ids (255 = ignore).
            rng: the generator that decides every random choice.

        Returns:
            ``(image, label)`` of shape (crop_h, crop_w, 3) uint8 and (crop_h, crop_w) uint8.
        """
        ch, cw = self.crop
        s = float(rng.choice(self.scale_choices)) if self.scale_choices else float(rng.uniform(*self.scale))
        h, w = label.shape
        nh, nw = max(1, int(round(h * s))), max(1, int(round(w * s)))
        if (nh, nw) != (h, w):
            image = cv2.resize(image, (nw, nh), interpolation=cv2.INTER_LINEAR)
            label = cv2.resize(label, (nw, nh), interpolation=cv2.INTER_NEAREST)
        # Pad to at least the crop: image with 0, label with ignore so padding never trains.
        ph, pw = max(ch - nh, 0), max(cw - nw, 0)
        if ph or pw:
            image = cv2.copyMakeBorder(image, 0, ph, 0, pw, cv2.BORDER_CONSTANT, value=(0, 0, 0))
            label = cv2.copyMakeBorder(label, 0, ph, 0, pw, cv2.BORDER_CONSTANT, value=IGNORE_ID)
        h, w = label.shape
        y0 = int(rng.integers(0, h - ch + 1))
        x0 = int(rng.integers(0, w - cw + 1))
        image = image[y0:y0 + ch, x0:x0 + cw]
        label = label[y0:y0 + ch, x0:x0 + cw]
        if rng.random() < self.hflip:
            image, label = image[:, ::-1], label[:, ::-1]
        image = color_jitter(image, rng, self.brightness, self.contrast, self.saturation)
        return np.ascontiguousarray(image), np.ascontiguousarray(label)


def color_jitter(image: np.ndarray, rng: np.random.Generator, brightness: float, contrast: float,
                 saturation: float) -> np.ndarray:
    """Brightness, contrast and saturation jitter (factors uniform in [1-a, 1+a]), in that order.

    Args:
        image: (H, W, 3) uint8 RGB.

    Returns:
        (H, W, 3) uint8 RGB.
    """
    # Draw all factors unconditionally so the RNG stream does not depend on which are enabled.
    fb, fc, fs = (rng.uniform(max(0.0, 1 - a), 1 + a) for a in (brightness, contrast, saturation))
    if not (brightness or contrast or saturation):
        return image
    img = image.astype(np.float32)
    if brightness:
        img *= fb
    if contrast:
        gray_mean = (img @ np.array([0.299, 0.587, 0.114], np.float32)).mean()
        img = (img - gray_mean) * fc + gray_mean
    if saturation:
        gray = (img @ np.array([0.299, 0.587, 0.114], np.float32))[..., None]
        img = (img - gray) * fs + gray
    return np.clip(img, 0, 255).astype(np.uint8)


# --------------------------------------------------------------------------------------------
# Dataset
# --------------------------------------------------------------------------------------------

class SegmentationDataset(Dataset):
    """Image + label pairs read from disk, optionally augmented, returned as normalized tensors.

    ``dataset[i]`` returns the un-augmented sample; ``dataset[(i, seed)]`` augments it with
    ``numpy.random.default_rng(seed)`` (the form the training sampler uses).

    Args:
        pairs: ``(image_path, label_path)`` list.
        label_ids: True for Cityscapes labelId files (mapped to train ids), False for masks that
            already hold class ids.
        num_classes: number of classes; other values than 0..C-1 and 255 are an error.
        mean, std: normalization (RGB, on 0..1 values), from the model.
        augment: training augmentation, or None for evaluation.
    """

    def __init__(self, pairs: list[tuple[Path, Path]], *, label_ids: bool, num_classes: int,
                 mean: Sequence[float], std: Sequence[float], augment: TrainAugment | None = None) -> None:
        self.pairs = pairs
        self.label_ids = label_ids
        self.num_classes = num_classes
        self.mean = np.asarray(mean, np.float32) * 255.0
        self.std = np.asarray(std, np.float32) * 255.0
        self.augment = augment

    def __len__(self) -> int:
        return len(self.pairs)

    def read(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Read sample ``index`` as ``((H, W, 3) uint8 RGB, (H, W) uint8 class ids)``."""
        img_path, lab_path = self.pairs[index]
        image = cv2.imread(str(img_path), cv2.IMREAD_COLOR)
        if image is None:
            raise DatasetError(f"cannot read image {img_path}")
        label = cv2.imread(str(lab_path), cv2.IMREAD_UNCHANGED)
        if label is None:
            raise DatasetError(f"cannot read label {lab_path}")
        if label.ndim != 2:
            raise DatasetError(f"label {lab_path} has {label.shape[2]} channels; expected a "
                               "single-channel PNG of class ids")
        if label.shape != image.shape[:2]:
            raise DatasetError(f"label {lab_path} is {label.shape[1]}x{label.shape[0]} but image "
                               f"{img_path} is {image.shape[1]}x{image.shape[0]}")
        if self.label_ids:
            label = label_ids_to_train_ids(label)
        else:
            label = label.astype(np.uint8) if label.max(initial=0) <= 255 else label
            bad = (label >= self.num_classes) & (label != IGNORE_ID)
            if bad.any():
                raise DatasetError(f"mask {lab_path} holds values {sorted(np.unique(label[bad]).tolist())[:5]} "
                                   f"outside 0..{self.num_classes - 1} (and 255 = ignore)")
        return cv2.cvtColor(image, cv2.COLOR_BGR2RGB), label

    def __getitem__(self, key: int | tuple[int, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        """Return ``(image (3, H, W) float32 normalized, label (H, W) int64)``."""
        index, seed = (key, None) if isinstance(key, (int, np.integer)) else key
        image, label = self.read(int(index))
        if self.augment is not None:
            image, label = self.augment(image, label, np.random.default_rng(seed))
        return self.to_tensor(image), torch.from_numpy(label.astype(np.int64))

    def to_tensor(self, image: np.ndarray) -> torch.Tensor:
        """(H, W, 3) uint8 RGB -> (3, H, W) float32, normalized with the model's mean/std."""
        x = (image.astype(np.float32) - self.mean) / self.std
        return torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1)))


def build_dataset(data_cfg: dict[str, Any], split: str, *, num_classes: int, mean: Sequence[float],
                  std: Sequence[float], train: bool) -> SegmentationDataset:
    """Build the dataset of ``split`` from the ``data`` config section.

    Raises:
        DatasetError: layout problems (first few offending files listed).
    """
    if data_cfg["format"] == "cityscapes":
        pairs, label_ids = cityscapes_pairs(data_cfg["root"], split), True
    else:
        pairs, label_ids = folder_pairs(data_cfg["root"], split), False
    augment = None
    if train:
        # data.scale is None in a resolved config when data.scale_choices replaces it.
        scale = tuple(data_cfg["scale"]) if data_cfg["scale"] is not None else TrainAugment.scale
        augment = TrainAugment(
            crop=tuple(data_cfg["crop"]), scale=scale,
            scale_choices=data_cfg.get("scale_choices"), hflip=data_cfg["hflip"],
            brightness=data_cfg["brightness"], contrast=data_cfg["contrast"],
            saturation=data_cfg["saturation"])
    return SegmentationDataset(pairs, label_ids=label_ids, num_classes=num_classes, mean=mean, std=std,
                               augment=augment)


# --------------------------------------------------------------------------------------------
# Sampler
# --------------------------------------------------------------------------------------------

class StepBatchSampler:
    """Yields, for each step in ``[start_step, total_steps)``, this process's batch of sample keys.

    The global batch of step ``s`` is a slice of the permutation of epoch ``s // steps_per_epoch``
    (drawn from ``(seed, epoch)``); process ``rank`` takes its contiguous share. Each key is
    ``(index, (seed, s, slot))`` so the augmentation of every sample is fixed by the step alone,
    which makes a resumed run see exactly the batches an uninterrupted one would.
    """

    def __init__(self, num_samples: int, global_batch: int, *, rank: int = 0, world_size: int = 1,
                 start_step: int = 0, total_steps: int, seed: int = 0) -> None:
        if global_batch % world_size:
            raise ValueError(f"train.batch_size={global_batch} is not divisible by the {world_size} processes")
        self.n = num_samples
        self.global_batch = global_batch
        self.local_batch = global_batch // world_size
        self.rank = rank
        self.start_step = start_step
        self.total_steps = total_steps
        self.seed = seed
        # With fewer samples than a batch, an "epoch" repeats the permutation to fill it.
        self.steps_per_epoch = max(1, num_samples // global_batch)

    def __len__(self) -> int:
        return max(0, self.total_steps - self.start_step)

    def batch(self, step: int) -> list[tuple[int, tuple[int, int, int]]]:
        """The keys of this process's share of the global batch of ``step``."""
        epoch, within = divmod(step, self.steps_per_epoch)
        perm = np.random.default_rng((self.seed, 7, epoch)).permutation(self.n)
        if self.n < self.global_batch:
            perm = np.resize(perm, self.global_batch)
        lo = within * self.global_batch + self.rank * self.local_batch
        return [(int(perm[lo + j]), (self.seed, step, self.rank * self.local_batch + j))
                for j in range(self.local_batch)]

    def __iter__(self) -> Iterator[list[tuple[int, tuple[int, int, int]]]]:
        for step in range(self.start_step, self.total_steps):
            yield self.batch(step)
