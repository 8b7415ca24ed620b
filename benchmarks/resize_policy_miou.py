"""What does taking the argmax at network resolution cost in mIoU?

The engine takes the argmax at network resolution (in the graph) and resizes the uint8 label map to
the camera with nearest-neighbour; the reference demo scripts upsample the float logits bilinearly
to the camera size and take the argmax there (about 15x more memory traffic at 1080p). This script
scores both on the synthetic validation scenes of ``python -m training synth`` (rendered in memory,
same seeds as its ``val`` split), from the *same* network output, so only the upsampling differs.

    .venv/bin/python benchmarks/resize_policy_miou.py --weights /path/to/best.pth --variant stdc1 \
        --size 512x256 --resolution 256x128

With random weights the mIoU values are meaningless (and so is their difference): the script says
so in its output. Run from the repository root (it imports the offline ``training`` package).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bisenet_ros.config import parse_resolution  # noqa: E402
from bisenet_ros.inference import Segmenter  # noqa: E402
from bisenet_ros.labels import label_ids_to_train_ids  # noqa: E402


def confusion(pred: np.ndarray, gt: np.ndarray, num_classes: int) -> np.ndarray:
    keep = gt != 255
    index = gt[keep].astype(np.int64) * num_classes + pred[keep].astype(np.int64)
    return np.bincount(index, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def miou(conf: np.ndarray) -> tuple[float, list[float | None]]:
    tp = np.diag(conf).astype(np.float64)
    union = conf.sum(0) + conf.sum(1) - tp
    present = conf.sum(1) > 0           # classes that occur in the ground truth
    iou = np.where(union > 0, tp / np.maximum(union, 1), np.nan)
    return float(np.nanmean(iou[present])), [None if not p else float(v) for v, p in zip(iou, present)]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", help="checkpoint (default: random weights, meaningless mIoU)")
    parser.add_argument("--variant", default="stdc1")
    parser.add_argument("--scenes", type=int, default=40, help="validation scenes (default 40, as the synth val split)")
    parser.add_argument("--size", default="512x256", help="scene (camera) size WIDTHxHEIGHT")
    parser.add_argument("--resolution", default="256x128", help="network input WIDTHxHEIGHT")
    parser.add_argument("--seed", type=int, default=0, help="synth master seed (default 0)")
    parser.add_argument("--output", default="benchmarks/results/resize_policy_miou.json")
    parser.add_argument("--note", help="describe the weights in the report (default: their path)")
    args = parser.parse_args()
    from training.synth import SPLITS, render_scene

    width, height = parse_resolution(args.size)
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        seg = Segmenter(variant=args.variant, weights=args.weights, resolution=args.resolution)
    model = seg.backend.module
    classes = seg.config.num_classes
    conf_ours = np.zeros((classes, classes), np.int64)
    conf_ref = np.zeros((classes, classes), np.int64)
    agree = []
    start = time.time()
    for i in range(args.scenes):
        rgb, label_ids = render_scene((args.seed, SPLITS["val"], i), height, width)
        gt = label_ids_to_train_ids(label_ids)
        _, blob, geometry = seg.preprocess(rgb, "rgb")
        with torch.inference_mode():
            x = torch.from_numpy(blob).contiguous(memory_format=torch.channels_last)
            logits = model(x)
            net_labels = logits.argmax(1)[0].to(torch.uint8).numpy()
            ours = seg._postprocess(rgb, rgb, geometry, net_labels, None, frozenset(), "rgb").labels
            up = F.interpolate(logits.float(), size=(height, width), mode="bilinear", align_corners=False)
            ref = up.argmax(1)[0].numpy().astype(np.uint8)
        conf_ours += confusion(ours, gt, classes)
        conf_ref += confusion(ref, gt, classes)
        agree.append(float(np.mean(ours == ref)))
    miou_ours, iou_ours = miou(conf_ours)
    miou_ref, iou_ref = miou(conf_ref)
    report = {
        "weights": args.note or args.weights or "random (mIoU meaningless)", "variant": args.variant,
        "scenes": args.scenes, "camera": [width, height], "network": list(parse_resolution(args.resolution)),
        "miou_argmax_then_nearest": miou_ours, "miou_bilinear_logits_then_argmax": miou_ref,
        "miou_cost_points": (miou_ref - miou_ours) * 100, "label_agreement": float(np.mean(agree)),
        "iou_argmax_then_nearest": iou_ours, "iou_bilinear_logits_then_argmax": iou_ref,
        "class_names": seg.class_names, "seconds": time.time() - start,
    }
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    with open(args.output, "w", encoding="utf-8") as stream:
        json.dump(report, stream, indent=2)
    print(f"{args.scenes} synthetic val scenes {width}x{height}, network {args.resolution}, "
          f"weights: {report['weights']}")
    print(f"mIoU, argmax at network resolution + nearest resize (engine): {miou_ours * 100:.2f}")
    print(f"mIoU, bilinear logits upsampling + argmax (reference demo):   {miou_ref * 100:.2f}")
    print(f"cost: {report['miou_cost_points']:.2f} mIoU points; labels agree on {report['label_agreement'] * 100:.2f}% of pixels")
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
