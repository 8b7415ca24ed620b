"""The BiSeNet model zoo (torch only): BiSeNet V1, BiSeNet V2 and STDC-Seg.

>>> model = build_model("bisenetv2", num_classes=19)            # random init, eval mode
>>> model = build_model("stdc1", weights="model_maxmIOU50.pth")  # published STDC-Seg file

Output contract: in eval mode ``model(x)`` maps ``(N, 3, H, W)`` normalized RGB to logits
``(N, num_classes, H, W)`` for any H, W. Built with ``aux=True`` and in train mode it returns
``{"out": logits, "aux": [logits, ...], "detail": ...}`` (``detail``: STDC only).
"""
from bisenet_ros.models.blocks import CITYSCAPES_COINCHEUNG, IMAGENET, ConvNormAct, Normalization
from bisenet_ros.models.checkpoint import (CheckpointError, CheckpointInfo, describe_checkpoint, detect_format,
                                           load_weights, make_checkpoint, read_checkpoint)
from bisenet_ros.models.registry import MODELS, ModelSpec, build_model, get_spec, list_models

__all__ = [
    "CITYSCAPES_COINCHEUNG", "IMAGENET", "MODELS", "CheckpointError", "CheckpointInfo", "ConvNormAct",
    "ModelSpec", "Normalization", "build_model", "describe_checkpoint", "detect_format", "get_spec", "list_models",
    "load_weights", "make_checkpoint", "read_checkpoint",
]
