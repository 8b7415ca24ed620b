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
        reference_miou: Published Cityscapes val mIoU, or None where no weights are public.
    """

    builder: Callable[..., nn.Module]
    normalization: Normalization
    reference_miou: float | None


MODELS: dict[str, ModelSpec] = {
    # Each variant's recommended network size: bisenet_ros.config.RECOMMENDED_RESOLUTIONS.
    "bisenetv1": ModelSpec(bisenetv1, CITYSCAPES_COINCHEUNG, 75.4),
    "bisenetv1_xception39": ModelSpec(bisenetv1_xception39, CITYSCAPES_COINCHEUNG, None),
    "bisenetv2": ModelSpec(bisenetv2, CITYSCAPES_COINCHEUNG, 75.0),
    "stdc1": ModelSpec(stdc1, IMAGENET, 72.2),   # STDC1-Seg50 (1024x512)
    "stdc2": ModelSpec(stdc2, IMAGENET, 77.0),   # STDC2-Seg75 (1536x768)
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
