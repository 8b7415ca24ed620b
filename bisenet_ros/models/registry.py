"""Model registry: ``build_model(name, ...)`` and ``list_models()``."""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable

from torch import nn

from bisenet_ros.models.bisenetv1 import bisenetv1, bisenetv1_xception39
from bisenet_ros.models.bisenetv2 import bisenetv2
from bisenet_ros.models.blocks import CITYSCAPES_COINCHEUNG, IMAGENET, Normalization
from bisenet_ros.models.stdc import stdc1, stdc2


@dataclass(frozen=True)
class ModelSpec:
    """What the registry knows about a variant.

    Attributes:
        builder: ``builder(num_classes, aux) -> nn.Module``.
        normalization: Normalization of the published weights (used for random init too).
        resolution: Recommended network input (width, height) for Cityscapes-like cameras (the
            README's table; ``config/<variant>.yaml`` uses it or the 1024x512 default).
        reference_miou: Published Cityscapes val mIoU, or None where no weights are public.
    """

    builder: Callable[..., nn.Module]
    normalization: Normalization
    resolution: tuple[int, int]
    reference_miou: float | None


MODELS: dict[str, ModelSpec] = {
    "bisenetv1": ModelSpec(bisenetv1, CITYSCAPES_COINCHEUNG, (1536, 768), 75.4),
    "bisenetv1_xception39": ModelSpec(bisenetv1_xception39, CITYSCAPES_COINCHEUNG, (1536, 768), None),
    "bisenetv2": ModelSpec(bisenetv2, CITYSCAPES_COINCHEUNG, (1024, 512), 75.0),
    "stdc1": ModelSpec(stdc1, IMAGENET, (1024, 512), 72.2),   # STDC1-Seg50
    "stdc2": ModelSpec(stdc2, IMAGENET, (1536, 768), 77.0),   # STDC2-Seg75
}


def list_models() -> list[str]:
    """Names accepted by :func:`build_model`."""
    return sorted(MODELS)


def get_spec(name: str) -> ModelSpec:
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; valid names: {', '.join(list_models())}")
    return MODELS[name]


def build_model(name: str, num_classes: int = 19, *, aux: bool = False,
                weights: str | os.PathLike[str] | None = None) -> nn.Module:
    """Build a registered model, optionally loading weights.

    Args:
        name: One of :func:`list_models`.
        num_classes: Output classes.
        aux: Build the training-only auxiliary / booster / detail heads.
        weights: A checkpoint in any supported format (see :func:`load_weights`).

    Returns:
        The model in eval mode, with ``variant``, ``normalization`` and ``checkpoint_info``
        attributes (``normalization`` comes from the checkpoint when it carries one).
    """
    from bisenet_ros.models.checkpoint import load_weights

    spec = get_spec(name)
    if not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes={num_classes!r}: expected a positive integer")
    model = spec.builder(num_classes=num_classes, aux=aux)
    model.variant = name
    model.num_classes = num_classes
    model.normalization = spec.normalization
    model.checkpoint_info = None
    if weights is not None:
        load_weights(model, weights)
    return model.eval()
