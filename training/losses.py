"""Losses of the published recipes: OHEM cross-entropy and STDC's detail (boundary) loss."""
from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import torch
import torch.nn.functional as F

IGNORE_INDEX = 255

#: 3x3 Laplacian used by STDC-Seg to turn a label map into boundaries.
LAPLACIAN = torch.tensor([[-1.0, -1.0, -1.0], [-1.0, 8.0, -1.0], [-1.0, -1.0, -1.0]])
#: STDC-Seg's fuse weights for the stride-1/2/4 boundary maps (initial 1x1 conv; kept fixed here).
DETAIL_FUSE = (0.6, 0.3, 0.1)


def ohem_cross_entropy(logits: torch.Tensor, labels: torch.Tensor, *, thresh: float = 0.7,
                       min_kept: float | int = 1 / 16, ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """Online hard example mining cross-entropy (BiSeNet / STDC-Seg recipes).

    Pixels whose predicted probability of the true class is below ``thresh`` (i.e. whose loss is
    above ``-log(thresh)``) are "hard" and averaged; if fewer than ``min_kept`` pixels are hard,
    the ``min_kept`` largest losses are averaged instead, so the loss never collapses to a few
    pixels once the model becomes confident.

    Args:
        logits: (N, C, H, W) raw scores.
        labels: (N, H, W) int64 class ids, ``ignore_index`` for unlabeled pixels.
        thresh: probability threshold (0.7 in the recipes).
        min_kept: minimum number of kept pixels: a fraction of the valid pixels if < 1 (1/16 in the
            recipes), else an absolute count.
        ignore_index: label value excluded from the loss.

    Returns:
        Scalar loss (0 with a gradient when no pixel is labelled).
    """
    loss = F.cross_entropy(logits.float(), labels, ignore_index=ignore_index, reduction="none").flatten()
    loss = loss[labels.flatten() != ignore_index]
    if loss.numel() == 0:
        return logits.sum() * 0.0
    n_min = int(min_kept * loss.numel()) if min_kept < 1 else int(min_kept)
    n_min = max(1, min(n_min, loss.numel()))
    hard = loss[loss > -math.log(thresh)]
    if hard.numel() < n_min:
        hard, _ = loss.topk(n_min)
    return hard.mean()


def detail_ground_truth(labels: torch.Tensor) -> torch.Tensor:
    """STDC detail (boundary) target from a train-id label map.

    The label map is convolved with a 3x3 Laplacian at strides 1, 2 and 4; each response is
    clamped at 0, upsampled (nearest) to full size and binarized at 0.1; the three maps are fused
    with the fixed weights (0.6, 0.3, 0.1) and binarized at 0.1 again. As in STDC-Seg, the ignore
    label (255) takes part like any value, so ignore-region borders count as boundaries.

    Args:
        labels: (N, H, W) integer label map.

    Returns:
        (N, 1, H, W) float32 tensor of 0/1.
    """
    x = labels.unsqueeze(1).float()
    kernel = LAPLACIAN.to(x.device).view(1, 1, 3, 3)
    maps = []
    for stride in (1, 2, 4):
        b = F.conv2d(x, kernel, stride=stride, padding=1).clamp(min=0)
        if stride > 1:
            b = F.interpolate(b, size=x.shape[2:], mode="nearest")
        maps.append((b > 0.1).float())
    fuse = torch.tensor(DETAIL_FUSE, device=x.device).view(1, 3, 1, 1)
    fused = F.conv2d(torch.cat(maps, dim=1), fuse)
    return (fused > 0.1).float()


def dice_loss(probs: torch.Tensor, target: torch.Tensor, smooth: float = 1.0) -> torch.Tensor:
    """Per-sample Dice loss ``1 - (2|P.T| + s) / (|P| + |T| + s)``, averaged over the batch.

    Args:
        probs: (N, ...) probabilities; target: (N, ...) 0/1 of the same shape.
    """
    n = probs.shape[0]
    p, t = probs.reshape(n, -1), target.reshape(n, -1)
    inter = (p * t).sum(1)
    return (1 - (2 * inter + smooth) / (p.sum(1) + t.sum(1) + smooth)).mean()


def detail_loss(detail_logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """STDC detail loss: BCE and Dice between the detail head and :func:`detail_ground_truth`.

    Args:
        detail_logits: (N, 1, h, w) detail-head logits (h, w = H/8, W/8), upsampled (bilinear,
            align_corners as in STDC-Seg) to the label size.
        labels: (N, H, W) train-id labels.

    Returns:
        ``(bce, dice)`` scalars.
    """
    target = detail_ground_truth(labels)
    logits = detail_logits.float()
    if logits.shape[-2:] != target.shape[-2:]:
        logits = F.interpolate(logits, size=target.shape[-2:], mode="bilinear", align_corners=True)
    bce = F.binary_cross_entropy_with_logits(logits, target)
    return bce, dice_loss(torch.sigmoid(logits), target)


def segmentation_loss(outputs: torch.Tensor | Mapping[str, Any], labels: torch.Tensor,
                      loss_cfg: Mapping[str, Any]) -> tuple[torch.Tensor, dict[str, float]]:
    """Total training loss of a model output, with the value of each term for logging.

    Args:
        outputs: the model's train-mode output: logits (N, C, H, W), or the dict
            ``{"out", "aux": [...], "detail"}`` of a model built with ``aux=True``.
        labels: (N, H, W) int64 labels.
        loss_cfg: the ``loss`` config section (ohem_thresh, ohem_min_kept, aux_weights, detail_weight).

    Returns:
        ``(loss, parts)``: the scalar to backpropagate and ``{"out": .., "aux0": .., "detail_bce":
        .., "detail_dice": ..}`` as floats.
    """
    ohem = dict(thresh=loss_cfg["ohem_thresh"], min_kept=loss_cfg["ohem_min_kept"])
    if isinstance(outputs, torch.Tensor):
        outputs = {"out": outputs}
    total = ohem_cross_entropy(outputs["out"], labels, **ohem)
    parts = {"out": total.detach()}
    aux = outputs.get("aux") or []
    weights = loss_cfg["aux_weights"]
    weights: Sequence[float] = [weights] * len(aux) if isinstance(weights, (int, float)) else weights
    if len(weights) < len(aux):
        raise ValueError(f"loss.aux_weights has {len(weights)} entries but the model has {len(aux)} aux heads")
    for i, (logits, w) in enumerate(zip(aux, weights)):
        term = ohem_cross_entropy(logits, labels, **ohem)
        parts[f"aux{i}"] = term.detach()
        total = total + w * term
    if outputs.get("detail") is not None and loss_cfg["detail_weight"]:
        bce, dice = detail_loss(outputs["detail"], labels)
        parts["detail_bce"], parts["detail_dice"] = bce.detach(), dice.detach()
        total = total + loss_cfg["detail_weight"] * (bce + dice)
    return total, {k: float(v) for k, v in parts.items()}
