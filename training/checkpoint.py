"""Training checkpoints: one dict, written atomically, readable with ``weights_only=True``.

The dict is :func:`bisenet_ros.models.make_checkpoint`'s (so ``build_model(variant,
weights="runs/x/last.pth")`` loads it, dropping the training heads) plus::

    optimizer, scheduler, scaler (AMP), step (the next step to run), config, rng, best_miou,
    input_size ([width, height]: the network input the run evaluates at)

``config`` is the run's effective config (the same as the run folder's ``config.yaml``);
``input_size`` lets the engine run a checkpoint at the size it was scored at.

Everything is a tensor, number, string, list or dict: the NumPy / Python RNG states are
converted to lists because ``torch.load(weights_only=True)`` refuses any other object.
"""
from __future__ import annotations

import os
import random
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from bisenet_ros.fileio import atomic_writer
from bisenet_ros.models import make_checkpoint


def rng_state() -> dict[str, Any]:
    """Capture the torch (CPU and CUDA), NumPy and Python RNG states as weights_only-safe values."""
    np_state = np.random.get_state()
    py_state = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {"name": str(np_state[0]), "keys": torch.from_numpy(np_state[1].astype(np.int64)),
                  "pos": int(np_state[2]), "has_gauss": int(np_state[3]), "cached": float(np_state[4])},
        "python": {"version": int(py_state[0]), "state": list(py_state[1]),
                   "gauss": None if py_state[2] is None else float(py_state[2])},
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Mapping[str, Any]) -> None:
    """Restore what :func:`rng_state` captured."""
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    p = state["python"]
    random.setstate((p["version"], tuple(p["state"]), p["gauss"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(list(state["cuda"]))


def atomic_save(obj: Any, path: str | os.PathLike[str]) -> None:
    """``torch.save`` through :func:`bisenet_ros.fileio.atomic_writer` with ``fsync``: a crash
    (even SIGKILL or a power loss) at any point leaves either the old or the new complete file,
    never a truncated one; the file gets the user's umask like any other."""
    with atomic_writer(path, fsync=True) as stream:
        torch.save(obj, stream)


def build_training_checkpoint(model: nn.Module, *, class_names: list[str], palette: list[list[int]],
                              optimizer: torch.optim.Optimizer, scheduler: Any, scaler: Any, step: int,
                              config: Mapping[str, Any], best_miou: float,
                              input_size: Sequence[int] | None = None) -> dict[str, Any]:
    """The complete training state as one dict (see module docstring).

    Args:
        input_size: ``[width, height]`` of the network input the run evaluates at (pixels).
    """
    model = getattr(model, "module", model)  # unwrap DistributedDataParallel
    extra = {
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "step": int(step),
        "config": dict(config),
        "rng": rng_state(),
        "best_miou": float(best_miou),
    }
    if scaler is not None:
        extra["scaler"] = scaler.state_dict()
    if input_size is not None:
        extra["input_size"] = [int(v) for v in input_size]
    return make_checkpoint(model, class_names=list(class_names), palette=palette, **extra)


def load_training_checkpoint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a training checkpoint safely (weights_only) and check it holds a training state."""
    from bisenet_ros.models import read_checkpoint

    ckpt = read_checkpoint(path)
    missing = [k for k in ("model", "optimizer", "scheduler", "step", "config") if k not in ckpt]
    if missing:
        raise ValueError(f"{path}: not a training checkpoint (no {', '.join(missing)}); "
                         "to fine-tune from weights, set model.init_weights instead of --resume")
    return ckpt
