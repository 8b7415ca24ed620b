"""Synthetic scenes, dataset formats and their errors, augmentation, sampler and configs."""
from __future__ import annotations

import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # training/ runs from the clone

from bisenet_ros.labels import LABEL_ID_TO_TRAIN_ID  # noqa: E402
from training import synth  # noqa: E402
from training.config import CONFIG_DIR, ConfigError, load_config  # noqa: E402
from training.data import (DatasetError, StepBatchSampler, TrainAugment, build_dataset,  # noqa: E402
                           cityscapes_pairs, dataset_class_set, folder_pairs)

MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)


def test_synthetic_scenes_are_deterministic_and_labelled_with_cityscapes_ids() -> None:
    image, labels = synth.render_scene((3, 0, 1), 128, 256)
    again_image, again_labels = synth.render_scene((3, 0, 1), 128, 256)
    other_image, _ = synth.render_scene((3, 0, 2), 128, 256)
    assert image.shape == (128, 256, 3) and image.dtype == np.uint8
    assert labels.shape == (128, 256) and labels.dtype == np.uint8
    assert np.array_equal(image, again_image) and np.array_equal(labels, again_labels)
    assert not np.array_equal(image, other_image)
    # Every pixel gets a real Cityscapes class (no unlabeled / ignored pixels).
    assert all(LABEL_ID_TO_TRAIN_ID[int(v)] != 255 for v in np.unique(labels))


def test_synthetic_scenes_have_a_plausible_street_layout() -> None:
    seen: set[int] = set()
    for i in range(12):
        _, labels = synth.render_scene((0, 0, i), 128, 256)
        seen |= set(np.unique(labels).tolist())
        # Road fills the bottom centre, sky or building the top rows.
        assert (labels[-4:, 96:160] == synth.ROAD).mean() > 0.5
        assert np.isin(labels[:3], [synth.SKY, synth.BUILDING, synth.VEGETATION]).mean() > 0.9
    for cls in (synth.ROAD, synth.SIDEWALK, synth.BUILDING, synth.VEGETATION, synth.SKY, synth.CAR,
                synth.PERSON, synth.POLE):
        assert cls in seen, f"label id {cls} never generated in 12 scenes"


def test_synth_command_writes_the_cityscapes_layout(tmp_path: Path) -> None:
    from training.__main__ import main

    assert main(["synth", "--out", str(tmp_path), "--train", "3", "--val", "2", "--size", "128x64",
                 "--color"]) == 0
    pairs = cityscapes_pairs(tmp_path, "train")
    assert len(pairs) == 3 and len(cityscapes_pairs(tmp_path, "val")) == 2
    img, lab = pairs[0]
    assert img.name == "synth_000000_000000_leftImg8bit.png"
    assert lab.name == "synth_000000_000000_gtFine_labelIds.png"
    assert cv2.imread(str(img)).shape == (64, 128, 3)
    assert (tmp_path / "gtFine" / "train" / "synth" / "synth_000000_000000_gtFine_color.png").is_file()
    ds = build_dataset({"format": "cityscapes", "root": str(tmp_path)}, "val", num_classes=19, mean=MEAN,
                       std=STD, train=False)
    x, y = ds[0]
    assert x.shape == (3, 64, 128) and y.shape == (64, 128)
    assert int(y.max()) <= 18  # label ids mapped to train ids


def test_cityscapes_errors_list_the_missing_files(tmp_path: Path) -> None:
    synth.write_dataset(tmp_path, train=7, val=1, height=32, width=64)
    gt = tmp_path / "gtFine" / "train" / "synth"
    for p in sorted(gt.glob("*_labelIds.png"))[:6]:
        p.unlink()
    with pytest.raises(DatasetError) as err:
        cityscapes_pairs(tmp_path, "train")
    msg = str(err.value)
    assert "6 image(s) have no label file" in msg and "synth_000000_000000_gtFine_labelIds.png" in msg
    assert "(and 1 more)" in msg
    # A label without its image.
    (tmp_path / "leftImg8bit" / "val" / "synth" / "synth_000000_000000_leftImg8bit.png").rename(
        tmp_path / "leftImg8bit" / "val" / "synth" / "other_000000_000000_leftImg8bit.png")
    with pytest.raises(DatasetError, match="no label file|have no image"):
        cityscapes_pairs(tmp_path, "val")
    with pytest.raises(DatasetError, match=r"leftImg8bit/test/<city>/\*_leftImg8bit.png"):
        cityscapes_pairs(tmp_path, "test")


def _folder_dataset(root: Path, masks: list[np.ndarray]) -> None:
    for i, mask in enumerate(masks):
        (root / "images" / "train").mkdir(parents=True, exist_ok=True)
        (root / "masks" / "train").mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(root / "images" / "train" / f"f{i}.jpg"), np.full((*mask.shape, 3), 100, np.uint8))
        cv2.imwrite(str(root / "masks" / "train" / f"f{i}.png"), mask)


def test_folder_format_with_its_own_class_list(tmp_path: Path) -> None:
    _folder_dataset(tmp_path, [np.array([[0, 1], [2, 255]], np.uint8).repeat(8, 0).repeat(8, 1)] * 2)
    cfg = {"format": "folder", "root": str(tmp_path), "class_set": "cityscapes"}
    with pytest.raises(DatasetError, match="classes.yaml not found"):
        dataset_class_set(cfg)
    (tmp_path / "classes.yaml").write_text(yaml.safe_dump({"names": ["ground", "obstacle", "sky"]}))
    class_set = dataset_class_set(cfg)
    assert class_set.names == ("ground", "obstacle", "sky")
    ds = build_dataset(cfg, "train", num_classes=3, mean=MEAN, std=STD, train=False)
    _, y = ds[1]
    assert sorted(y.unique().tolist()) == [0, 1, 2, 255]
    # Masks with values beyond the class list are refused, naming the file.
    bad = build_dataset(cfg, "train", num_classes=2, mean=MEAN, std=STD, train=False)
    with pytest.raises(DatasetError, match=r"f0.png holds values \[2\]"):
        bad[0]
    (tmp_path / "masks" / "train" / "f1.png").unlink()
    with pytest.raises(DatasetError, match="1 image.s. have no mask.*f1.png"):
        folder_pairs(tmp_path, "train")


def test_train_augment_crops_pads_with_ignore_and_is_seeded() -> None:
    image = np.random.default_rng(0).integers(0, 255, (40, 60, 3), dtype=np.uint8)
    label = np.full((40, 60), 3, np.uint8)
    aug = TrainAugment(crop=(64, 96), scale=(0.5, 0.5), hflip=0.5)
    out_img, out_lab = aug(image, label, np.random.default_rng(1))
    assert out_img.shape == (64, 96, 3) and out_lab.shape == (64, 96)
    assert set(np.unique(out_lab).tolist()) == {3, 255}          # padding is ignored, never trained
    assert (out_lab == 3).sum() == 20 * 30                        # the 0.5-scaled image, all kept
    again = aug(image, label, np.random.default_rng(1))
    assert np.array_equal(again[0], out_img) and np.array_equal(again[1], out_lab)
    big = TrainAugment(crop=(16, 16), scale=(1.0, 2.0))(image, label, np.random.default_rng(2))
    assert big[0].shape == (16, 16, 3)


def test_step_sampler_is_a_function_of_the_step_and_splits_across_ranks() -> None:
    full = StepBatchSampler(10, 4, total_steps=6, seed=3)
    resumed = StepBatchSampler(10, 4, start_step=4, total_steps=6, seed=3)
    assert list(resumed) == list(full)[4:]
    r0 = StepBatchSampler(10, 4, rank=0, world_size=2, total_steps=6, seed=3)
    r1 = StepBatchSampler(10, 4, rank=1, world_size=2, total_steps=6, seed=3)
    for step in range(6):
        assert r0.batch(step) + r1.batch(step) == full.batch(step)
    # Within an epoch (2 steps of 4 out of 10 samples) no sample repeats.
    indices = [k[0] for s in (0, 1) for k in full.batch(s)]
    assert len(set(indices)) == 8
    tiny = StepBatchSampler(3, 4, total_steps=1)
    assert len(tiny.batch(0)) == 4
    with pytest.raises(ValueError, match="not divisible"):
        StepBatchSampler(10, 5, world_size=2, total_steps=1)


def test_every_shipped_config_loads_and_the_recipes_are_the_published_ones() -> None:
    configs = {p.stem: load_config(p) for p in CONFIG_DIR.glob("*.yaml")}
    assert {"bisenetv1_cityscapes", "bisenetv1_xception39_cityscapes", "bisenetv2_cityscapes",
            "stdc1_cityscapes", "stdc2_cityscapes", "synthetic"} <= set(configs)
    v2 = configs["bisenetv2_cityscapes"]
    assert (v2["data"]["crop"], v2["data"]["scale"], v2["train"]["batch_size"], v2["train"]["iters"],
            v2["optim"]["lr"]) == ([512, 1024], [0.25, 2.0], 16, 150000, 0.005)
    # Every head named in a recipe exists in its model, so the 10x learning rate really applies.
    from bisenet_ros.models import build_model

    for cfg in configs.values():
        if cfg["optim"]["head_lr_mult"] != 1.0:
            children = {n for n, _ in build_model(cfg["model"]["variant"], aux=True).named_children()}
            assert set(cfg["optim"]["head_modules"]) <= children, cfg["model"]["variant"]
    v1 = configs["bisenetv1_cityscapes"]
    assert (v1["train"]["iters"], v1["optim"]["lr"], v1["optim"]["head_lr_mult"]) == (80000, 0.01, 10.0)
    for name in ("stdc1_cityscapes", "stdc2_cityscapes"):
        stdc = configs[name]
        assert (stdc["train"]["iters"], stdc["optim"]["lr"], stdc["data"]["crop"]) == (60000, 0.01, [512, 1024])
    for cfg in configs.values():
        assert cfg["loss"]["ohem_thresh"] == 0.7


def test_config_errors_name_the_key() -> None:
    with pytest.raises(ConfigError, match="did you mean 'optim'"):
        load_config({"optimizer": {"lr": 0.1}})
    with pytest.raises(ConfigError, match="did you mean train.'iters'"):
        load_config(None, ["train.iter=5"])
    assert load_config(None, ["optim.lr=5e-3"])["optim"]["lr"] == 0.005
    with pytest.raises(ConfigError, match="data.crop"):
        load_config({"data": {"crop": [0, 4]}})
    with pytest.raises(ConfigError, match="not found"):
        load_config("no_such_config")
