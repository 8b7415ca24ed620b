"""Evaluation: confusion matrix, single-scale and multi-scale + flip inference, IoU tables.

Also the ``python -m training eval`` command.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from bisenet_ros.replay.metrics import class_iou
from training.losses import IGNORE_INDEX


def confusion_matrix(pred: torch.Tensor, label: torch.Tensor, num_classes: int,
                     ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """Confusion matrix of one batch.

    Args:
        pred: (N, H, W) predicted class ids.
        label: (N, H, W) ground-truth class ids; ``ignore_index`` pixels are skipped.
        num_classes: C.

    Returns:
        (C, C) int64 tensor, rows = ground truth, columns = prediction.
    """
    keep = label != ignore_index
    idx = label[keep].long() * num_classes + pred[keep].long()
    return torch.bincount(idx, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def iou_from_confusion(conf: torch.Tensor | np.ndarray) -> np.ndarray:
    """Per-class IoU ``TP / (TP + FP + FN)``; NaN for classes absent from both GT and prediction.

    The same definition as the replay's evaluation report (one implementation for both).
    """
    return class_iou(np.asarray(conf))


def mean_iou(conf: torch.Tensor | np.ndarray) -> float:
    """Mean IoU over the classes that occur in the ground truth or the prediction."""
    iou = iou_from_confusion(conf)
    return float(np.nanmean(iou)) if np.isfinite(iou).any() else 0.0


def pixel_accuracy(conf: torch.Tensor | np.ndarray) -> float:
    conf = np.asarray(conf, dtype=np.float64)
    return float(np.trace(conf) / max(conf.sum(), 1.0))


@torch.no_grad()
def predict_logits(model: nn.Module, images: torch.Tensor, scales: Sequence[float] = (1.0,),
                   flip: bool = False, num_classes: int | None = None) -> torch.Tensor:
    """Summed softmax probabilities over scales (and horizontal flips), at the input size.

    Args:
        model: eval-mode model returning logits (N, C, h, w) for input (N, 3, h, w).
        images: (N, 3, H, W) normalized images.
        scales: resize factors applied to the input; the prediction is resized back to H x W.
        flip: also run on the mirrored input and un-mirror the prediction.

    Returns:
        (N, C, H, W) float32 scores (argmax over C gives the prediction).
    """
    n, _, h, w = images.shape
    total: torch.Tensor | None = None
    for s in scales:
        size = (max(1, int(round(h * s))), max(1, int(round(w * s))))
        x = images if size == (h, w) else F.interpolate(images, size=size, mode="bilinear", align_corners=False)
        for mirrored in ((False, True) if flip else (False,)):
            inp = torch.flip(x, dims=[3]) if mirrored else x
            out = model(inp)
            if isinstance(out, dict):  # a training-mode aux model
                out = out["out"]
            if mirrored:
                out = torch.flip(out, dims=[3])
            if out.shape[-2:] != (h, w):
                out = F.interpolate(out, size=(h, w), mode="bilinear", align_corners=False)
            prob = out.float().softmax(1)
            total = prob if total is None else total + prob
    assert total is not None
    return total


@torch.no_grad()
def evaluate(model: nn.Module, loader: Iterable[tuple[torch.Tensor, torch.Tensor]], num_classes: int, *,
             scales: Sequence[float] = (1.0,), flip: bool = False, device: torch.device | str = "cpu",
             amp: bool = False, progress: bool = False) -> torch.Tensor:
    """Run ``model`` over ``loader`` and accumulate the confusion matrix.

    Under ``torch.distributed`` give each process its shard of the data and all-reduce the
    returned matrix (the training loop does).

    Args:
        model: the model (its mode is restored afterwards).
        loader: yields ``(images (N, 3, H, W), labels (N, H, W) int64)``.
        num_classes: C.
        scales: single-scale ``(s,)`` or the multi-scale list.
        flip: add horizontally flipped inputs.
        device: where to run.
        amp: autocast to float16 on CUDA.
        progress: print a progress line to stderr.

    Returns:
        (C, C) int64 confusion matrix on the CPU (rows = ground truth).
    """
    was_training = model.training
    model.eval()
    device = torch.device(device)
    conf = torch.zeros(num_classes, num_classes, dtype=torch.int64, device=device)
    total = len(loader) if hasattr(loader, "__len__") else None  # type: ignore[arg-type]
    for i, (images, labels) in enumerate(loader):
        images, labels = images.to(device), labels.to(device)
        with torch.autocast(device.type, dtype=torch.float16, enabled=amp and device.type == "cuda"):
            scores = predict_logits(model, images, scales, flip)
        conf += confusion_matrix(scores.argmax(1), labels, num_classes)
        if progress:
            print(f"\reval {i + 1}/{total or '?'}", end="", file=sys.stderr, flush=True)
    if progress:
        print(file=sys.stderr)
    model.train(was_training)
    return conf.cpu()


def format_iou_table(conf: torch.Tensor | np.ndarray, class_names: Sequence[str]) -> str:
    """Per-class IoU table (percent) followed by mIoU and pixel accuracy."""
    iou = iou_from_confusion(conf)
    width = max(12, max(len(n) for n in class_names) + 2)
    lines = [f"{'class':<{width}}{'IoU %':>8}"]
    for name, v in zip(class_names, iou):
        lines.append(f"{name:<{width}}{'  n/a' if np.isnan(v) else f'{100 * v:8.2f}'}")
    lines.append(f"{'mIoU':<{width}}{100 * mean_iou(conf):8.2f}")
    lines.append(f"{'pixel acc':<{width}}{100 * pixel_accuracy(conf):8.2f}")
    return "\n".join(lines)


def summary(conf: torch.Tensor | np.ndarray, class_names: Sequence[str]) -> dict[str, Any]:
    """JSON-ready metrics: mIoU, pixel accuracy, per-class IoU (None = absent class)."""
    iou = iou_from_confusion(conf)
    return {"miou": mean_iou(conf), "pixel_acc": pixel_accuracy(conf),
            "iou": {n: (None if np.isnan(v) else float(v)) for n, v in zip(class_names, iou)}}


# -------------------------------------------------------------------------------- command

def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``python -m training eval``."""
    parser.add_argument("target", help="a run directory (uses best.pth, else last.pth) or a checkpoint file")
    parser.add_argument("--config", help="training config for the data section (default: the one stored "
                        "in the checkpoint)")
    parser.add_argument("--data-root", help="dataset root (overrides data.root)")
    parser.add_argument("--split", help="split to evaluate (default: data.val_split)")
    parser.add_argument("--variant", help="variant, for checkpoints without a config (published files)")
    parser.add_argument("--scale", type=float, help="single-scale resize factor (default: eval.scale)")
    parser.add_argument("--multi-scale", action="store_true",
                        help="multi-scale + flip evaluation with eval.ms_scales / eval.ms_flip")
    parser.add_argument("--scales", type=float, nargs="+", help="explicit scale list (implies --multi-scale)")
    parser.add_argument("--flip", action="store_true", help="add horizontal flips")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:N (default: cuda if available)")
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers (default 2)")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--limit", type=int, default=0, help="evaluate only the first N images")
    parser.add_argument("--json", help="also write the metrics to this JSON file")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="config override, e.g. data.format=folder (repeatable)")


def resolve_checkpoint(target: str | Path) -> Path:
    """A checkpoint path from a run directory (best.pth, else last.pth) or a file."""
    target = Path(target)
    if target.is_dir():
        for name in ("best.pth", "last.pth"):
            if (target / name).is_file():
                return target / name
        raise FileNotFoundError(f"{target}: no best.pth or last.pth in this run directory")
    if not target.is_file():
        raise FileNotFoundError(f"{target}: no such run directory or checkpoint file")
    return target


def run(args: argparse.Namespace) -> int:
    """Entry point of ``python -m training eval``."""
    from torch.utils.data import DataLoader, Subset

    from bisenet_ros.models import build_model, read_checkpoint
    from training.config import load_config
    from training.data import build_dataset, dataset_class_set

    if args.threads:
        torch.set_num_threads(args.threads)
    ckpt_path = resolve_checkpoint(args.target)
    ckpt = read_checkpoint(ckpt_path)
    stored = ckpt.get("config") if isinstance(ckpt, dict) else None
    # A checkpoint's config is the run's effective one (classes, eval.scale as trained).
    config = load_config(args.config or stored, args.overrides, recorded=not args.config and stored is not None)
    if args.data_root:
        config["data"]["root"] = args.data_root
    variant = args.variant or (ckpt.get("variant") if isinstance(ckpt, dict) else None) or config["model"]["variant"]
    class_set = dataset_class_set(config["data"])
    model = build_model(variant, class_set.num_classes, weights=ckpt_path)
    norm = model.normalization
    split = args.split or config["data"]["val_split"]
    ds = build_dataset(config["data"], split, num_classes=class_set.num_classes, mean=norm.mean, std=norm.std,
                       train=False)
    if args.limit:
        ds = Subset(ds, range(min(args.limit, len(ds))))
    loader = DataLoader(ds, batch_size=config["eval"]["batch_size"], num_workers=args.workers)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    model.to(device)
    if args.scales or args.multi_scale:
        scales = args.scales or config["eval"]["ms_scales"]
        flip = args.flip or config["eval"]["ms_flip"]
    else:
        scales, flip = [args.scale or config["eval"]["scale"]], args.flip
    start = time.time()
    conf = evaluate(model, loader, class_set.num_classes, scales=scales, flip=flip, device=device,
                    progress=sys.stderr.isatty())
    print(f"{ckpt_path} on {config['data']['root']} [{split}], {len(ds)} images, scales {list(scales)}"
          f"{' + flip' if flip else ''}, {time.time() - start:.1f} s")
    print(format_iou_table(conf, class_set.names))
    if args.json:
        metrics = summary(conf, class_set.names)
        metrics.update(checkpoint=str(ckpt_path), split=split, scales=list(scales), flip=flip,
                       confusion=conf.tolist())
        Path(args.json).write_text(json.dumps(metrics, indent=2) + "\n")
    return 0
