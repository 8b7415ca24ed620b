"""Checkpoint loading and conversion.

Three formats are recognised automatically:

``bisenet_ros``
    This project's dict (written by :func:`make_checkpoint` and by ``training``), carrying the
    variant, class count, normalization, class names and palette next to the state_dict.
``coincheung``
    The CoinCheung/BiSeNet releases (``model_final_v1_city_new.pth``, ``model_final_v2_city.pth``):
    plain state_dicts saved from train-mode models, so the auxiliary heads are included.
``stdc_seg``
    The STDC-Seg releases (``model_maxmIOU50.pth``, ``model_maxmIOU75.pth``): plain state_dicts
    that store every backbone tensor twice (``cp.backbone.features.*`` and the alias keys
    ``cp.backbone.x2 .. x32.*``), the unused ImageNet classifier, four detail heads (only the
    stride-8 one is trained) and ABN layers without ``num_batches_tracked``.

Loading never unpickles arbitrary objects (``torch.load(weights_only=True)``) and is never
partial: any missing, unexpected or mis-shaped tensor is a :class:`CheckpointError` naming the
file, the detected format and the first offending keys.
"""
from __future__ import annotations

import os
import pickle
import re
import warnings
import zipfile
from dataclasses import dataclass
from typing import Any, Mapping

import torch
from torch import nn

from bisenet_ros.models.blocks import CITYSCAPES_COINCHEUNG, IMAGENET, Normalization

FORMAT_VERSION = 1

# Heads built only with aux=True, by variant family: their keys are dropped when loading into a
# deployment model, and may be absent when loading into a training model.
_TRAINING_HEADS = {
    "bisenetv1": ("conv_out16.", "conv_out32."),
    "bisenetv1_xception39": ("conv_out16.", "conv_out32."),
    "bisenetv2": ("aux2.", "aux3.", "aux4.", "aux5_4."),
    "stdc1": ("conv_out16.", "conv_out32.", "conv_out_sp8."),
    "stdc2": ("conv_out16.", "conv_out32.", "conv_out_sp8."),
}
# STDC-Seg keys that segmentation never uses.
_STDC_UNUSED = ("cp.backbone.conv_last.", "cp.backbone.fc.", "cp.backbone.bn.", "cp.backbone.linear.",
                "conv_out_sp2.", "conv_out_sp4.", "conv_out_sp16.")
_STDC_ALIAS = re.compile(r"^cp\.backbone\.x(2|4|8|16|32)\.0\.(\d+)\.(.+)$")
_ABN_EPS = 1e-5  # InPlaceABN's default eps, also added to its scale
_STDC_LAYERS = {"stdc1": (2, 2, 2), "stdc2": (4, 5, 3)}


class CheckpointError(ValueError):
    """A checkpoint cannot be loaded into the model; the message says why and how to fix it."""


@dataclass(frozen=True)
class CheckpointInfo:
    """What was learned from a checkpoint file.

    Attributes:
        path: The file.
        format: ``bisenet_ros``, ``coincheung`` or ``stdc_seg``.
        variant: Registry name of the architecture the file holds.
        num_classes: Classes of the file's classifier.
        normalization: Input normalization the weights were trained with.
        class_names: Class names stored in the file (this project's format only).
        palette: RGB colours stored in the file (this project's format only).
    """

    path: str
    format: str
    variant: str
    num_classes: int
    normalization: Normalization
    class_names: list[str] | None = None
    palette: list[list[int]] | None = None


def make_checkpoint(model: nn.Module, *, class_names: list[str] | None = None,
                    palette: list[list[int]] | None = None, **extra: Any) -> dict[str, Any]:
    """This project's checkpoint dict for ``model`` (a registry model).

    Args:
        model: Model built by ``build_model``.
        class_names: Names of the classes, index = class id.
        palette: RGB colour per class.
        **extra: More entries (training adds optimizer, scheduler, step, config, RNG states).
            Only tensors, numbers, strings, lists and dicts: files are read with weights_only.
    """
    state_dict = getattr(model, "module", model).state_dict()
    return {
        "format": "bisenet_ros",
        "format_version": FORMAT_VERSION,
        "variant": model.variant,
        "num_classes": int(model.num_classes),
        "normalization": model.normalization.to_dict(),
        "class_names": list(class_names) if class_names is not None else None,
        "palette": [list(map(int, c)) for c in palette] if palette is not None else None,
        "model": state_dict,
        **extra,
    }


def read_checkpoint(path: str | os.PathLike[str], *, mmap: bool = False) -> Any:
    """``torch.load`` with weights_only, turning every failure into a :class:`CheckpointError`.

    The message says what the file is not and how to get a good one. PyTorch's own text is not
    passed on: for a file holding arbitrary Python objects it advises turning the safety check
    off, which would let a downloaded file run code on the robot.

    Args:
        path: The checkpoint file.
        mmap: Map the tensors instead of reading them (for a look at the metadata: the tensor
            data is then never read). Files in the legacy (pre-zip) format are read whole.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        with warnings.catch_warnings():
            # e.g. "Detected pickle protocol 4": noise next to the error below.
            warnings.simplefilter("ignore", UserWarning)
            if mmap and zipfile.is_zipfile(path):
                return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # zip/pickle/format errors: classified below
        text = str(error)
        if "Weights only load failed" in text or isinstance(error, pickle.UnpicklingError):
            found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", text)
            what = f" (it holds a {found.group(1)} object)" if found else ""
            raise CheckpointError(
                f"{path}: holds Python objects other than tensors, numbers, strings, lists and "
                f"dicts{what}, which bisenet_ros never unpickles because loading them can run "
                "arbitrary code. Use a checkpoint saved as a plain state_dict (the published "
                "BiSeNet/STDC release files are), or where the model was made save "
                "torch.save(model.state_dict(), 'model.pth') and load that.") from None
        size = os.path.getsize(path)
        raise CheckpointError(
            f"{path}: not a readable PyTorch checkpoint ({size} bytes): the file is corrupt, "
            "truncated or not a .pth file. Download it again (compare its size and checksum with "
            "the publisher's) or re-export it.") from None


def describe_checkpoint(path: str | os.PathLike[str]) -> dict[str, Any] | None:
    """What a checkpoint says about itself, without building a model (the tensors are mapped,
    not read).

    Returns:
        For this project's format: ``variant``, ``num_classes``, ``class_names`` and ``palette``
        (None when not stored) and ``input_size`` (``(width, height)`` the run was trained and
        evaluated at, None in files written before training stored it). None for the published
        formats, which carry nothing.

    Raises:
        CheckpointError: The file cannot be read, or its metadata is malformed.
    """
    path = os.fspath(path)
    checkpoint = read_checkpoint(path, mmap=True)
    if not (isinstance(checkpoint, Mapping) and checkpoint.get("format") == "bisenet_ros"):
        return None
    fmt, variant, _, meta = detect_format(checkpoint, path)
    size = meta.get("input_size")
    try:
        input_size = None if size is None else (int(size[0]), int(size[1]))
        if size is not None and len(size) != 2:
            raise ValueError
    except (TypeError, ValueError, IndexError):
        raise CheckpointError(f"{path}: input_size {size!r} is not [width, height]") from None
    names = meta.get("class_names")
    return {"variant": variant, "num_classes": int(meta["num_classes"]),
            "class_names": [str(n) for n in names] if names else None,
            "palette": meta.get("palette"), "input_size": input_size}


def detect_format(checkpoint: Any, path: str = "<checkpoint>") -> tuple[str, str, dict[str, torch.Tensor], dict]:
    """Identify a loaded checkpoint.

    Returns:
        ``(format, variant, state_dict, metadata)``; metadata is this project's dict or ``{}``.
    """
    if isinstance(checkpoint, Mapping) and checkpoint.get("format") == "bisenet_ros":
        for key in ("variant", "model", "num_classes", "normalization"):
            if key not in checkpoint:
                raise CheckpointError(f"{path}: bisenet_ros checkpoint without the '{key}' entry")
        return "bisenet_ros", str(checkpoint["variant"]), dict(checkpoint["model"]), dict(checkpoint)
    state_dict = checkpoint
    if isinstance(checkpoint, Mapping):
        for wrapper in ("state_dict", "model"):
            if isinstance(checkpoint.get(wrapper), Mapping):
                state_dict = checkpoint[wrapper]
    if not isinstance(state_dict, Mapping) or not state_dict or not all(
            isinstance(v, torch.Tensor) for v in state_dict.values()):
        raise CheckpointError(f"{path}: not a state_dict of tensors nor a bisenet_ros checkpoint")
    # DistributedDataParallel saves prefix every key with 'module.'.
    state_dict = {k[7:] if k.startswith("module.") else k: v for k, v in state_dict.items()}
    if "cp.resnet.conv1.weight" in state_dict:
        return "coincheung", "bisenetv1", state_dict, {}
    if "segment.S1S2.conv.conv.weight" in state_dict:
        return "coincheung", "bisenetv2", state_dict, {}
    if "cp.backbone.features.0.conv.weight" in state_dict:
        indices = {int(m.group(1)) for k in state_dict
                   if (m := re.match(r"cp\.backbone\.features\.(\d+)\.", k))}
        for variant, layers in _STDC_LAYERS.items():
            if max(indices) + 1 == 2 + sum(layers):
                return "stdc_seg", variant, state_dict, {}
        raise CheckpointError(
            f"{path}: STDC-Seg checkpoint with {max(indices) + 1} backbone modules; expected "
            f"{2 + sum(_STDC_LAYERS['stdc1'])} (STDC1) or {2 + sum(_STDC_LAYERS['stdc2'])} (STDC2)")
    raise CheckpointError(
        f"{path}: unrecognised checkpoint layout (first keys: {', '.join(list(state_dict)[:5])}); "
        "expected this project's format, a CoinCheung/BiSeNet release or an STDC-Seg release")


def _classifier_key(fmt: str, variant: str) -> str:
    return "head.conv_out.1.weight" if variant == "bisenetv2" else "conv_out.conv_out.weight"


def convert_state_dict(fmt: str, variant: str, state_dict: Mapping[str, torch.Tensor],
                       path: str = "<checkpoint>") -> dict[str, torch.Tensor]:
    """Map a published state_dict onto this package's key names (aux heads included)."""
    if fmt == "bisenet_ros" or (fmt == "coincheung" and variant == "bisenetv2"):
        return dict(state_dict)
    if fmt == "coincheung":  # V1: our context path calls its backbone 'backbone', not 'resnet'
        return {("cp.backbone." + k[len("cp.resnet."):]) if k.startswith("cp.resnet.") else k: v
                for k, v in state_dict.items()}
    if fmt == "stdc_seg":
        converted = {}
        for key, tensor in state_dict.items():
            alias = _STDC_ALIAS.match(key)
            if alias:
                # x8 = nn.Sequential(features[2:4]): a slice keeps the original child indices.
                _, index, rest = alias.groups()
                target = f"cp.backbone.features.{index}.{rest}"
                if target not in state_dict or not torch.equal(state_dict[target], tensor):
                    raise CheckpointError(
                        f"{path} (format stdc_seg): alias key {key} does not hold the same tensor as "
                        f"{target}; the file is damaged or was edited")
                continue
            if key.startswith(_STDC_UNUSED):
                continue
            converted[key] = tensor
        # The BN layers outside the backbone are InPlace-ABN (the ones without a batch counter).
        # InPlace-ABN scales by |weight| + eps (it must stay invertible), so a plain BatchNorm2d
        # reproduces it only with that effective weight.
        for key in [k for k in converted if k.endswith(".running_var")]:
            prefix = key[: -len("running_var")]
            if prefix + "num_batches_tracked" not in state_dict:
                converted[prefix + "weight"] = converted[prefix + "weight"].abs() + _ABN_EPS
        return converted
    raise CheckpointError(f"{path}: unknown format {fmt!r}")


def load_weights(model: nn.Module, path: str | os.PathLike[str]) -> CheckpointInfo:
    """Load a checkpoint of any supported format into a registry model, strictly.

    Sets ``model.normalization`` and ``model.checkpoint_info`` from the file.

    Args:
        model: A model from ``build_model`` (its ``variant`` and ``num_classes`` are checked).
        path: The checkpoint file.

    Returns:
        The :class:`CheckpointInfo` of the file.

    Raises:
        CheckpointError: Unreadable file, other variant, other class count, or any key mismatch.
    """
    path = os.fspath(path)
    checkpoint = read_checkpoint(path)
    fmt, variant, state_dict, meta = detect_format(checkpoint, path)
    target = getattr(model, "variant", None)
    if target is not None and variant != target:
        raise CheckpointError(
            f"{path} (format {fmt}) holds a {variant} model, but the model is {target}; "
            f"use variant '{variant}' (build_model('{variant}', ...))")
    state_dict = convert_state_dict(fmt, variant, state_dict, path)
    classifier = _classifier_key(fmt, variant)
    file_classes = int(state_dict[classifier].shape[0]) if classifier in state_dict else None
    model_classes = getattr(model, "num_classes", None)
    if file_classes is not None and model_classes is not None and file_classes != model_classes:
        raise CheckpointError(
            f"{path} (format {fmt}) has {file_classes} classes, but the model was built with "
            f"{model_classes}; set num_classes={file_classes}")

    expected = model.state_dict()
    training_heads = _TRAINING_HEADS.get(variant, ())
    if not getattr(model, "aux", False):
        state_dict = {k: v for k, v in state_dict.items() if not k.startswith(training_heads)}
    if fmt == "stdc_seg":
        # ABN layers (InPlaceABNSync) keep no batch counter; BatchNorm2d wants one.
        for key in expected:
            if key.endswith("num_batches_tracked") and key not in state_dict:
                state_dict[key] = torch.zeros((), dtype=torch.long)
    missing = [k for k in expected if k not in state_dict]
    absent_heads = [k for k in missing if k.startswith(training_heads)]
    missing = [k for k in missing if not k.startswith(training_heads)]
    unexpected = [k for k in state_dict if k not in expected]
    mismatched = [f"{k} {tuple(state_dict[k].shape)} vs {tuple(v.shape)}" for k, v in expected.items()
                  if k in state_dict and state_dict[k].shape != v.shape]
    if missing or unexpected or mismatched:
        parts = []
        for label, keys in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", mismatched)):
            if keys:
                parts.append(f"{len(keys)} {label} (first: {', '.join(keys[:3])})")
        raise CheckpointError(
            f"{path} (format {fmt}, variant {variant}) does not match the model: " + "; ".join(parts))
    if absent_heads:
        # Loading deployment weights into a training model: the aux heads start from scratch.
        warnings.warn(f"{path}: no weights for {len(absent_heads)} training-head tensors "
                      f"(e.g. {absent_heads[0]}); they keep their initialisation", stacklevel=2)
    model.load_state_dict(state_dict, strict=not absent_heads)

    if fmt == "bisenet_ros":
        normalization = Normalization.from_dict(meta["normalization"])
    elif fmt == "stdc_seg":
        normalization = IMAGENET
    else:
        normalization = CITYSCAPES_COINCHEUNG
    info = CheckpointInfo(
        path=path, format=fmt, variant=variant,
        num_classes=file_classes if file_classes is not None else int(meta.get("num_classes", 0)),
        normalization=normalization,
        class_names=meta.get("class_names"), palette=meta.get("palette"))
    model.normalization = normalization
    model.checkpoint_info = info
    return info
