"""Weights files that describe themselves: the options a file supplies, resolved once for every
entry point (``Segmenter``, the node, every ``bisenet-ros`` command).

This project's training checkpoints (``.pth``, :func:`bisenet_ros.models.make_checkpoint`) and
exported ``.onnx`` files (:mod:`bisenet_ros.inference.export`) carry the variant, the class names
and palette, the class count and the network size they were trained or exported at. So
``--weights FILE`` alone runs them: :func:`resolve_config` takes those values from the file for
every option the user did not set (:attr:`bisenet_ros.config.SegmenterConfig.explicit`), and an
explicit option that contradicts the file is an error naming both values. Published checkpoints
(CoinCheung/BiSeNet, STDC-Seg) carry nothing: the options apply as given.

Two things are not contradictions: an explicit ``resolution`` for a ``.pth`` (a checkpoint runs
at any size, e.g. STDC "Seg50" and "Seg75" are one set of weights; the stored size is the
default) and an explicit ``class_set`` with as many classes as the file (new names or colours;
the class count is checked where the class set is loaded).
"""
from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
from typing import Any

from bisenet_ros.config import SegmenterConfig

ONNX_BACKENDS = ("onnxruntime", "openvino")


@dataclass(frozen=True)
class WeightsDescription:
    """What a weights file says about itself (None: not stored).

    Attributes:
        path: The file.
        onnx: Whether it is an exported ``.onnx`` (else a ``.pth`` checkpoint).
        variant: Registry name of the architecture.
        num_classes: Classes the model predicts.
        class_names: Name per class id.
        input_size: ``(width, height)`` in pixels: the fixed input of an ``.onnx`` (None for a
            dynamic-size export), the size a training run was evaluated at for a ``.pth``.
    """

    path: str
    onnx: bool
    variant: str | None = None
    num_classes: int | None = None
    class_names: tuple[str, ...] | None = None
    input_size: tuple[int, int] | None = None


def is_onnx(weights: str | os.PathLike[str] | None) -> bool:
    """Whether ``weights`` names an exported ONNX file."""
    return bool(weights) and os.fspath(weights).endswith(".onnx")  # type: ignore[arg-type]


def describe_weights(path: str | os.PathLike[str]) -> WeightsDescription:
    """Read a weights file's self-description (cheaply: a ``.pth`` is mapped, not read).

    Raises:
        ValueError: No such file, or it cannot be read (``CheckpointError`` is a ValueError).
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ValueError(f"weights={path!r}: no such file")
    if is_onnx(path):
        from bisenet_ros.inference.export import read_onnx_info

        info = read_onnx_info(path)
        return WeightsDescription(path, True, info.variant, info.num_classes, tuple(info.class_names),
                                  info.input_size)
    from bisenet_ros.models import describe_checkpoint

    meta = describe_checkpoint(path)
    if meta is None:
        return WeightsDescription(path, False)
    names = meta["class_names"]
    return WeightsDescription(path, False, meta["variant"], meta["num_classes"],
                              tuple(names) if names else None, meta["input_size"])


def onnx_backend() -> str:
    """The backend an ``.onnx`` runs on when none is given: onnxruntime, else OpenVINO when only
    that is installed (with neither, onnxruntime: its error names the package to install)."""
    for name in ONNX_BACKENDS:
        if importlib.util.find_spec(name) is not None:
            return name
    return ONNX_BACKENDS[0]


def resolve_config(config: SegmenterConfig) -> SegmenterConfig:
    """``config`` with the options its weights file supplies (see the module docstring).

    Idempotent; the adopted values stay defaults (:meth:`SegmenterConfig.adopt`), so a config
    derived from the result for other weights (``evaluate --compare``) re-reads its own file.

    Raises:
        ValueError: The file cannot be read, an explicit option contradicts it (naming both
            values and the fix), or ``backend='torch'`` was given for an ``.onnx``.
    """
    if not config.weights:
        return config
    described = describe_weights(config.weights)
    changes: dict[str, Any] = {}
    if described.onnx and config.backend == "torch":
        if "backend" in config.explicit:
            raise ValueError(
                f"weights={config.weights!r} is an ONNX file: use backend='onnxruntime' or "
                "'openvino' (backend='torch' needs a .pth checkpoint)")
        changes["backend"] = onnx_backend()
    kind = "was exported" if described.onnx else "was trained"
    for name, value in (("variant", described.variant), ("num_classes", described.num_classes),
                        ("resolution", described.input_size)):
        current = getattr(config, name)
        if value is None or _shown(current) == _shown(value):  # a size from JSON is a list
            continue
        if name in config.explicit:
            if name == "resolution" and not described.onnx:
                continue  # a checkpoint runs at any size: the size asked for wins
            raise ValueError(
                f"{name}={_shown(current)} contradicts {config.weights}, which {kind} with "
                f"{name} {_shown(value)}: leave {name} out (the file supplies it), or give weights "
                f"made for {name} {_shown(current)}")
        changes[name] = value
    return config.adopt(**changes) if changes else config


def _shown(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return "x".join(str(v) for v in value)
    return str(value)
