"""Losses, metrics and the LR schedule of the offline training package, on hand-made inputs."""
from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # training/ runs from the clone

from training.evaluate import confusion_matrix, iou_from_confusion, mean_iou, predict_logits  # noqa: E402
from training.losses import (detail_ground_truth, detail_loss, dice_loss, ohem_cross_entropy,  # noqa: E402
                             segmentation_loss)
from training.optim import WarmupPoly, param_groups  # noqa: E402

LOSS_CFG = {"ohem_thresh": 0.7, "ohem_min_kept": 1 / 16, "aux_weights": 1.0, "detail_weight": 1.0}


def _logits_for_probs(p_true: list[float]) -> torch.Tensor:
    """Two-class logits (1, 2, 1, K) whose softmax gives class 0 the probabilities p_true."""
    p = torch.tensor(p_true, dtype=torch.float64)
    return torch.stack([torch.log(p), torch.log(1 - p)]).view(1, 2, 1, -1).float()


def test_ohem_keeps_only_pixels_below_the_threshold() -> None:
    logits = _logits_for_probs([0.9, 0.8, 0.6, 0.3])
    labels = torch.zeros(1, 1, 4, dtype=torch.long)
    # p < 0.7 are hard: losses -ln 0.6 and -ln 0.3 are averaged, the easy ones dropped.
    got = ohem_cross_entropy(logits, labels, thresh=0.7, min_kept=1)
    assert got.item() == pytest.approx((-math.log(0.6) - math.log(0.3)) / 2, rel=1e-5)


def test_ohem_min_kept_takes_the_largest_losses() -> None:
    logits = _logits_for_probs([0.9, 0.8, 0.6, 0.3])
    labels = torch.zeros(1, 1, 4, dtype=torch.long)
    got = ohem_cross_entropy(logits, labels, thresh=0.7, min_kept=3)
    assert got.item() == pytest.approx(-(math.log(0.8) + math.log(0.6) + math.log(0.3)) / 3, rel=1e-5)
    # A fraction: 3/4 of the 4 valid pixels = 3 pixels, same result.
    assert ohem_cross_entropy(logits, labels, thresh=0.7, min_kept=0.75).item() == pytest.approx(got.item())


def test_ohem_ignores_255_and_survives_an_all_ignored_batch() -> None:
    logits = _logits_for_probs([0.9, 0.3, 0.6, 0.3])
    labels = torch.tensor([[[0, 255, 0, 255]]])
    got = ohem_cross_entropy(logits, labels, thresh=0.7, min_kept=1)
    assert got.item() == pytest.approx(-math.log(0.6), rel=1e-5)
    logits.requires_grad_(True)
    zero = ohem_cross_entropy(logits, torch.full((1, 1, 4), 255), thresh=0.7)
    zero.backward()
    assert zero.item() == 0.0 and logits.grad is not None


def test_detail_ground_truth_of_a_single_pixel() -> None:
    # One pixel of class 1 at (4, 4) in an 8x8 field of 0. Stride 1 marks (4, 4); stride 2 sees it
    # at output (2, 2) -> rows/cols 4..5 after nearest upsampling; stride 4 at output (1, 1) -> rows/cols
    # 4..7. Fused 0.6/0.3/0.1: 1.0 at (4, 4), 0.4 on the rest of the 2x2 block, and only 0.1 (not > 0.1)
    # on the rest of the 4x4 block: the boundary is exactly the 2x2 block.
    labels = torch.zeros(1, 8, 8, dtype=torch.long)
    labels[0, 4, 4] = 1
    expected = torch.zeros(1, 1, 8, 8)
    expected[0, 0, 4:6, 4:6] = 1
    assert torch.equal(detail_ground_truth(labels), expected)


def test_detail_ground_truth_of_a_vertical_edge() -> None:
    # Left half class 0, right half class 2: Laplacian > 0 only on the high side of the edge
    # (column 4) at stride 1, widened by the stride-2 map; the image border next to non-zero classes counts too (zero padding),
    # as in STDC-Seg.
    labels = torch.zeros(1, 8, 8, dtype=torch.long)
    labels[0, :, 4:] = 2
    gt = detail_ground_truth(labels)[0, 0]
    assert gt[:, :4].sum() == 0                      # the class-0 side is never a boundary
    assert torch.all(gt[:, 4] == 1)                  # the edge column
    assert torch.all(gt[0, 4:] == 1) and torch.all(gt[:, 7] == 1)   # image border of class 2
    # Middle rows: the edge (stride 1), its stride-2 cell (column 5, weight 0.3), nothing at column 6
    # (the stride-4 cell alone weighs only 0.1), and the right image border.
    assert gt[3].tolist() == [0, 0, 0, 0, 1, 1, 0, 1]
    assert gt.dtype == torch.float32 and set(gt.unique().tolist()) <= {0.0, 1.0}


def test_detail_loss_is_small_for_a_perfect_prediction() -> None:
    labels = torch.zeros(2, 16, 16, dtype=torch.long)
    labels[:, 4:12, 4:12] = 3
    target = detail_ground_truth(labels)
    logits = (target * 2 - 1) * 30  # full-resolution logits, confidently right
    bce, dice = detail_loss(logits, labels)
    assert bce.item() < 1e-6 and dice.item() < 1e-3
    bad_bce, bad_dice = detail_loss(-logits, labels)
    assert bad_bce.item() > 10 and bad_dice.item() > 0.9
    assert dice_loss(torch.ones(1, 4), torch.ones(1, 4)).item() == pytest.approx(0.0)


def test_segmentation_loss_sums_every_head() -> None:
    torch.manual_seed(0)
    labels = torch.randint(0, 3, (2, 16, 16))
    outputs = {"out": torch.randn(2, 3, 16, 16), "aux": [torch.randn(2, 3, 16, 16), torch.randn(2, 3, 16, 16)],
               "detail": torch.randn(2, 1, 2, 2)}
    total, parts = segmentation_loss(outputs, labels, {**LOSS_CFG, "aux_weights": [1.0, 0.5]})
    assert set(parts) == {"out", "aux0", "aux1", "detail_bce", "detail_dice"}
    expected = parts["out"] + parts["aux0"] + 0.5 * parts["aux1"] + parts["detail_bce"] + parts["detail_dice"]
    assert total.item() == pytest.approx(expected, rel=1e-5)
    plain, plain_parts = segmentation_loss(outputs["out"], labels, LOSS_CFG)
    assert list(plain_parts) == ["out"] and plain.item() == pytest.approx(parts["out"])


def test_confusion_matrix_and_iou() -> None:
    label = torch.tensor([[[0, 0, 1, 1, 255]]])
    pred = torch.tensor([[[0, 1, 1, 1, 2]]])
    conf = confusion_matrix(pred, label, 3)
    assert conf.tolist() == [[1, 1, 0], [0, 2, 0], [0, 0, 0]]
    iou = iou_from_confusion(conf)
    assert iou[0] == pytest.approx(1 / 2) and iou[1] == pytest.approx(2 / 3) and np.isnan(iou[2])
    assert mean_iou(conf) == pytest.approx((1 / 2 + 2 / 3) / 2)


def test_multi_scale_flip_prediction_of_a_mirror_symmetric_model() -> None:
    class Mirror(torch.nn.Module):  # logits = the input's first two channels
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x[:, :2] * 10

    x = torch.randn(1, 3, 8, 12)
    single = predict_logits(Mirror(), x)
    multi = predict_logits(Mirror(), x, scales=(1.0, 1.0), flip=True)
    assert single.shape == (1, 2, 8, 12)
    assert torch.allclose(multi, 4 * single, atol=1e-5)  # 2 scales x (plain + un-flipped) of the same input


def test_param_groups_no_decay_on_norm_and_bias_and_head_lr() -> None:
    model = torch.nn.Sequential()
    model.add_module("backbone", torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4)))
    model.add_module("conv_out", torch.nn.Conv2d(4, 2, 1))
    groups = {g["name"]: g for g in param_groups(model, lr=0.01, weight_decay=5e-4, head_lr_mult=10,
                                                 head_modules=["conv_out"])}
    assert set(groups) == {"base_decay", "base_nodecay", "head_decay", "head_nodecay"}
    assert len(groups["base_decay"]["params"]) == 1           # the conv weight
    assert len(groups["base_nodecay"]["params"]) == 3         # conv bias, BN weight, BN bias
    assert groups["base_nodecay"]["weight_decay"] == 0.0 and groups["head_nodecay"]["weight_decay"] == 0.0
    assert groups["head_decay"]["lr"] == pytest.approx(0.1) and groups["base_decay"]["lr"] == pytest.approx(0.01)


@pytest.mark.parametrize("warmup", ["exp", "linear"])
def test_warmup_poly_schedule(warmup: str) -> None:
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([{"params": [p], "lr": 0.01, "lr_mult": 1.0}], lr=0.01)
    sched = WarmupPoly(opt, total_iters=100, warmup_iters=10, warmup=warmup, warmup_ratio=0.1, power=0.9)
    lrs = []
    for _ in range(100):
        lrs.append(opt.param_groups[0]["lr"])
        sched.step()
    assert lrs[0] == pytest.approx(0.001)
    assert all(a < b for a, b in zip(lrs[:10], lrs[1:11]))            # rising during warmup
    assert lrs[10] == pytest.approx(0.01)                                # peak after warmup
    assert lrs[55] == pytest.approx(0.01 * (1 - 45 / 90) ** 0.9)        # poly decay
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:]))
    state = sched.state_dict()
    again = WarmupPoly(opt, total_iters=100, warmup_iters=10, warmup=warmup, warmup_ratio=0.1, power=0.9)
    again.load_state_dict(state)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.0)              # step 100: the end of the schedule


def test_head_lr_for_missing_modules_is_an_error() -> None:
    model = torch.nn.Sequential()
    model.add_module("backbone", torch.nn.Conv2d(3, 4, 3))
    with pytest.raises(ValueError, match="matches no submodule.*backbone"):
        param_groups(model, lr=0.01, weight_decay=0.0, head_lr_mult=10, head_modules=["ffm"])
