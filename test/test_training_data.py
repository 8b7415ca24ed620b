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


def _mean_lr_factor(optim_cfg: dict, iters: int) -> float:
    import torch

    from training.optim import build_scheduler

    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([{"params": [param], "lr": 1.0, "lr_mult": 1.0}], lr=1.0)
    scheduler = build_scheduler(optimizer, optim_cfg, iters)
    factors = []
    for _ in range(iters):
        factors.append(optimizer.param_groups[0]["lr"])
        scheduler.step()
    return float(np.mean(factors))


@pytest.mark.parametrize("name", ["stdc1_cityscapes", "bisenetv2_cityscapes", "bisenetv2_camvid"])
def test_warmup_fits_a_short_run(name: str) -> None:
    from training.optim import warmup_steps

    optim = load_config(name)["optim"]
    # Before: 1000 exponential warm-up steps capped at iters-1 gave a 20-step run 0.16x the base rate.
    assert _mean_lr_factor(optim, 20) >= 0.30
    steps, note = warmup_steps(optim["warmup_iters"], 400)
    assert steps == 40 and "a tenth of the 400-step run" in note
    assert warmup_steps(optim["warmup_iters"], 150000) == (1000, None)   # the published length


def test_an_explicit_warmup_is_kept_with_a_warning_above_half_the_run() -> None:
    from training.optim import warmup_steps

    assert warmup_steps(30, 100) == (30, None)
    steps, note = warmup_steps(60, 100)
    assert steps == 60 and note.startswith("warning: optim.warmup_iters=60 is more than half")
    steps, note = warmup_steps(150, 100)   # longer than the run: recorded as what WarmupPoly runs
    assert steps == 99 and note.startswith("warning: optim.warmup_iters=150 is more than half")
    optim = load_config("stdc1_cityscapes", ["optim.warmup_iters=15"])["optim"]
    assert optim["warmup_iters"] == 15
    # What the user asked for is what runs: 15 of 20 steps warming up from 0.001x, below the default.
    assert _mean_lr_factor(optim, 20) < 0.25 < _mean_lr_factor(load_config("stdc1_cityscapes")["optim"], 20)


def test_a_shadowed_key_is_an_error_naming_both(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"data.scale has no effect while data.scale_choices is set"):
        load_config("stdc1_cityscapes", ["data.scale=[0.75,1.5]"])
    # The same in a config file.
    recipe = yaml.safe_load((CONFIG_DIR / "stdc1_cityscapes.yaml").read_text())
    recipe["data"]["scale"] = [0.75, 1.5]
    (tmp_path / "both.yaml").write_text(yaml.safe_dump(recipe))
    with pytest.raises(ConfigError, match="data.scale has no effect.*--set data.scale_choices=null"):
        load_config(tmp_path / "both.yaml")
    with pytest.raises(ConfigError, match="model.backbone_weights has no effect while model.init_weights"):
        load_config("stdc1_cityscapes", ["model.init_weights=city.pth", "model.backbone_weights=in.tar"])
    # Unsetting the shadowing key makes the override take effect.
    config = load_config("stdc1_cityscapes", ["data.scale_choices=null", "data.scale=[0.75,1.5]"])
    assert (config["data"]["scale"], config["data"]["scale_choices"]) == ([0.75, 1.5], None)
    # A resolved config records the shadowed key as None, so it loads again unchanged.
    resolved = load_config("stdc1_cityscapes")
    assert resolved["data"]["scale"] is None and load_config(resolved) == resolved
    # A config recorded by an earlier version (both keys set) still resumes / evaluates.
    old = load_config(None)
    old["data"]["scale_choices"] = [0.5, 1.0]
    assert load_config(old, recorded=True)["data"]["scale"] is None
    with pytest.raises(ConfigError, match="data.scale has no effect"):
        load_config(old)


def test_a_folder_dataset_is_scored_at_native_resolution_unless_eval_scale_is_given() -> None:
    assert load_config("stdc1_cityscapes")["eval"]["scale"] == 0.5            # Seg50 on Cityscapes frames
    assert load_config("stdc1_cityscapes", ["data.format=folder"])["eval"]["scale"] == 1.0
    assert load_config("stdc1_cityscapes", ["data.format=folder", "eval.scale=0.5"])["eval"]["scale"] == 0.5
    assert load_config("stdc1_camvid")["eval"]["scale"] == 2.0                # a folder recipe says it itself


def _segnet_tree(root: Path) -> dict[str, np.ndarray]:
    """A tiny CamVid tree in SegNet's layout: 2 train, 1 val, 1 test frame (16x12) and the lists."""
    rng = np.random.default_rng(0)
    annotations = {}
    for split, names in (("train", ["0001TP_000010", "0001TP_000020"]), ("val", ["0016E5_000030"]),
                         ("test", ["Seq05VD_000040"])):
        (root / split).mkdir(parents=True)
        (root / f"{split}annot").mkdir()
        for name in names:
            ann = rng.integers(0, 12, (12, 16)).astype(np.uint8)   # 0..10 classes, 11 void
            cv2.imwrite(str(root / split / f"{name}.png"), rng.integers(0, 255, (12, 16, 3), dtype=np.uint8))
            cv2.imwrite(str(root / f"{split}annot" / f"{name}.png"), ann)
            annotations[f"{split}/{name}"] = ann
        # SegNet's lists carry the authors' absolute paths; only the file names count. Reversed
        # order: the list, not the folder listing, decides.
        (root / f"{split}.txt").write_text("".join(
            f"/SegNet/CamVid/{split}/{n}.png /SegNet/CamVid/{split}annot/{n}.png\n" for n in reversed(names)))
    return annotations


def test_prepare_camvid_converts_the_segnet_layout(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from training.__main__ import main
    from training.prepare import CAMVID_CLASSES

    annotations = _segnet_tree(tmp_path / "CamVid")
    out = tmp_path / "camvid"
    assert main(["prepare", "camvid", str(tmp_path / "CamVid"), "--out", str(out)]) == 0
    assert "2 train, 1 val, 1 test frames" in capsys.readouterr().err
    for key, ann in annotations.items():
        split, name = key.split("/")
        mask = cv2.imread(str(out / "masks" / split / f"{name}.png"), cv2.IMREAD_UNCHANGED)
        expected = np.where(ann == 11, 255, ann)
        assert np.array_equal(mask, expected), key
        assert (out / "images" / split / f"{name}.png").read_bytes() == \
            (tmp_path / "CamVid" / split / f"{name}.png").read_bytes()
    assert sorted(p.name for p in (out / "masks" / "trainval").iterdir()) == \
        ["0001TP_000010.png", "0001TP_000020.png", "0016E5_000030.png"]
    classes = yaml.safe_load((out / "classes.yaml").read_text())
    assert classes["names"] == ["Sky", "Building", "Pole", "Road", "Pavement", "Tree", "SignSymbol", "Fence",
                                "Car", "Pedestrian", "Bicyclist"]
    assert classes["palette"][3] == [128, 64, 128] and len(classes["palette"]) == len(CAMVID_CLASSES)
    # The result is the documented folder format: the loader reads it with its class list.
    cfg = {"format": "folder", "root": str(out), "class_set": "cityscapes"}
    class_set = dataset_class_set(cfg)
    ds = build_dataset(cfg, "test", num_classes=class_set.num_classes, mean=MEAN, std=STD, train=False)
    assert set(ds[0][1].unique().tolist()) <= set(range(11)) | {255}


def test_prepare_camvid_refuses_bad_input_and_leaves_nothing(tmp_path: Path) -> None:
    from training.prepare import PrepareError, prepare_camvid

    _segnet_tree(tmp_path / "CamVid")
    cv2.imwrite(str(tmp_path / "CamVid" / "valannot" / "0016E5_000030.png"), np.full((12, 16), 12, np.uint8))
    with pytest.raises(PrepareError, match=r"0016E5_000030.png holds values \[12\]; CamVid .SegNet. uses 0..10"):
        prepare_camvid(tmp_path / "CamVid", tmp_path / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["CamVid"]   # no output, no partial folder
    (tmp_path / "CamVid" / "valannot" / "0016E5_000030.png").unlink()
    with pytest.raises(PrepareError, match="1 listed file.s. missing, e.g. .*valannot/0016E5_000030.png"):
        prepare_camvid(tmp_path / "CamVid", tmp_path / "out")
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "x").write_text("")
    with pytest.raises(PrepareError, match="already exists and is not empty"):
        prepare_camvid(tmp_path / "CamVid", tmp_path / "taken")
