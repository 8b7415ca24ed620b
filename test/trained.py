"""A training checkpoint as ``python -m training`` writes it (this project's format, with the
``input_size`` it was evaluated at), made in a blink for the tests of self-describing weights."""
from __future__ import annotations

from pathlib import Path

#: Class names spelled as a dataset's classes.yaml might (capitals: the name rule is
#: case-insensitive, the default drivable class 'road' matches 'Road').
NAMES = ["Road", "Sidewalk", "Car", "Sky", "Void-ish"]
PALETTE = [[128, 64, 128], [244, 35, 232], [0, 0, 142], [70, 130, 180], [10, 10, 10]]
SIZE = (64, 32)  # [width, height] the run was trained and evaluated at


def write_training_checkpoint(path: Path, variant: str = "stdc1", seed: int = 0) -> Path:
    """Save a ``variant`` model with :data:`NAMES` classes and ``input_size`` :data:`SIZE`."""
    import torch

    from bisenet_ros.models import build_model, make_checkpoint

    torch.manual_seed(seed)
    model = build_model(variant, num_classes=len(NAMES))
    torch.save(make_checkpoint(model, class_names=NAMES, palette=PALETTE, input_size=list(SIZE),
                               step=400), path)
    return path
