"""Training configuration: YAML files in ``training/configs/`` merged over built-in defaults.

A config is a plain nested dict (it is stored verbatim in every checkpoint, which only holds
strings, numbers, lists and dicts). :func:`load_config` reads a YAML file, merges it over
:data:`DEFAULTS`, applies ``--set section.key=value`` overrides and validates the result, so a
typo is reported with the closest valid key instead of being silently ignored, and a key that
another key makes ineffective (:data:`SHADOWED_BY`) is an error instead of being silently unused.
"""
from __future__ import annotations

import copy
import difflib
import os
from pathlib import Path
from typing import Any, Iterable, Mapping

import yaml

from bisenet_ros.fileio import write_atomic

CONFIG_DIR = Path(__file__).resolve().parent / "configs"

#: Every key a config may contain, with its default. ``None`` means "not set".
DEFAULTS: dict[str, dict[str, Any]] = {
    "model": {
        "variant": "bisenetv2",        # bisenet_ros.models.list_models()
        "num_classes": 19,
        "init_weights": None,          # a full checkpoint to fine-tune from (any format load_weights reads)
        "backbone_weights": None,      # ImageNet backbone weights (torchvision ResNet-18 / STDCNet .tar / ours)
        "sync_bn": True,               # SyncBatchNorm under torchrun on CUDA
    },
    "data": {
        "format": "cityscapes",        # cityscapes | folder
        "root": "datasets/cityscapes",
        "train_split": "train",
        "val_split": "val",
        "class_set": "cityscapes",     # 'cityscapes', a YAML file, or {names: [...], palette: [...]}
                                       # (folder format: ROOT/classes.yaml; a run records the mapping)
        "crop": [512, 1024],           # training crop, [height, width]
        "scale": [0.25, 2.0],          # random scale range [min, max] (continuous)
        "scale_choices": None,         # discrete scales (STDC-Seg recipe); replaces 'scale' when set
        "hflip": 0.5,                  # probability of a horizontal flip
        "brightness": 0.4,             # colour jitter amplitudes (0 disables)
        "contrast": 0.4,
        "saturation": 0.4,
        "workers": 4,                  # DataLoader worker processes per training process
    },
    "train": {
        "iters": 150000,
        "batch_size": 16,              # GLOBAL batch over all processes (torchrun splits it)
        "amp": True,                   # automatic mixed precision (CUDA only; ignored on CPU)
        "seed": 0,
        "log_every": 20,
        "eval_every": 5000,            # 0 disables periodic evaluation
        "ckpt_every": 1000,            # last.pth is rewritten atomically every this many steps
        "tensorboard": True,
        "cpu_threads": None,           # torch CPU threads when training on CPU (None: torch's default)
        "device": None,                # cpu | cuda | cuda:N (None: cuda if available); a run records its own
    },
    "loss": {
        "ohem_thresh": 0.7,            # keep pixels whose true-class probability is below this
        "ohem_min_kept": 0.0625,       # ... but at least this fraction (1/16) of the valid pixels
        "aux_weights": 1.0,            # weight of every aux/booster head (a number or one per head)
        "detail_weight": 1.0,          # STDC detail loss (BCE + Dice) weight
    },
    "optim": {
        "lr": 5e-3,
        "momentum": 0.9,
        "weight_decay": 5e-4,          # never applied to norm weights and biases
        "head_lr_mult": 1.0,           # 10 in the BiSeNetV1 / STDC-Seg recipes
        "head_modules": ["ffm", "conv_out", "conv_out16", "conv_out32", "conv_out_sp8"],
        "warmup_iters": None,          # None: 1000 steps, at most a tenth of the run (optim.warmup_steps)
        "warmup": "exp",               # exp | linear
        "warmup_ratio": 0.1,           # lr factor at step 0
        "poly_power": 0.9,
    },
    "eval": {
        "scale": 1.0,                  # single-scale: image resize factor (0.5 = STDC 'Seg50'); a folder
                                       # dataset is scored at 1.0 unless set with it (see load_config)
        "ms_scales": [0.5, 0.75, 1.0, 1.25, 1.5, 1.75],
        "ms_flip": True,
        "batch_size": 1,
    },
}


#: ``(shadowed, shadowing)``: the first key has no effect while the second is set (not None).
#: Checked once, when a config is resolved (:func:`load_config`): setting both is an error naming
#: both keys, in a config file and in ``--set`` alike. The resolved config records the shadowed key
#: as None, so what it shows is what the run uses.
SHADOWED_BY: tuple[tuple[str, str], ...] = (
    ("data.scale", "data.scale_choices"),               # TrainAugment draws from the choices
    ("model.backbone_weights", "model.init_weights"),   # the full checkpoint replaces the backbone
)


class ConfigError(ValueError):
    """A config file or override is invalid; the message names the key and the fix."""


def _get(config: Mapping[str, Any], dotted: str) -> Any:
    section, key = dotted.split(".")
    return config.get(section, {}).get(key)


def _has(config: Mapping[str, Any], dotted: str) -> bool:
    section, key = dotted.split(".")
    return isinstance(config.get(section), Mapping) and key in config[section]


def resolve_shadowing(config: dict[str, Any], given: Mapping[str, Any], *, recorded: bool = False) -> None:
    """Apply :data:`SHADOWED_BY` to ``config`` in place.

    Args:
        config: the merged config (defaults included).
        given: what the user set (the config file or mapping, with the overrides merged in);
            a shadowed key set there to something other than None is an error while its
            shadowing key is set.
        recorded: ``config`` was recorded by an earlier run (a checkpoint's config): a shadowed
            key never took effect there, so it is dropped instead of refused.

    Raises:
        ConfigError: naming both keys and how to choose.
    """
    for shadowed, shadowing in SHADOWED_BY:
        if _get(config, shadowing) is None:
            continue
        if not recorded and _get(given, shadowed) is not None:
            raise ConfigError(
                f"{shadowed} has no effect while {shadowing} is set ({shadowing}="
                f"{_get(config, shadowing)!r}); set only one of them: --set {shadowed}=null to keep "
                f"{shadowing}, or --set {shadowing}=null to use {shadowed}")
        section, key = shadowed.split(".")
        config[section][key] = None


def _check_keys(config: Mapping[str, Any], reference: Mapping[str, Any], where: str) -> None:
    for key, value in config.items():
        if key not in reference:
            close = difflib.get_close_matches(str(key), list(reference), n=1)
            hint = f"; did you mean {where}{close[0]!r}?" if close else f"; valid: {', '.join(reference)}"
            raise ConfigError(f"unknown config key {where}{key!r}{hint}")
        if isinstance(reference[key], dict):
            if not isinstance(value, Mapping):
                raise ConfigError(f"config key {where}{key!r} must be a mapping")
            _check_keys(value, reference[key], f"{where}{key}.")


def merge(base: Mapping[str, Any], update: Mapping[str, Any]) -> dict[str, Any]:
    """Recursively merge ``update`` into a deep copy of ``base``."""
    out = copy.deepcopy(dict(base))
    for key, value in update.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def parse_override(text: str) -> tuple[list[str], Any]:
    """Parse ``section.key=value`` (value in YAML syntax) into ``(path, value)``."""
    if "=" not in text:
        raise ConfigError(f"--set expects section.key=value, got {text!r}")
    path, raw = text.split("=", 1)
    value = yaml.safe_load(raw)
    if isinstance(value, str):
        # PyYAML (YAML 1.1) reads "5e-3" as a string; users mean a number.
        try:
            value = float(value)
        except ValueError:
            pass
    return path.strip().split("."), value


def resolve_config_path(name: str | os.PathLike[str]) -> Path:
    """A config file path, or the name of one in ``training/configs`` (with or without .yaml)."""
    path = Path(name)
    if path.is_file():
        return path
    for candidate in (CONFIG_DIR / f"{name}.yaml", CONFIG_DIR / str(name)):
        if candidate.is_file():
            return candidate
    available = sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))
    raise ConfigError(f"config {str(name)!r} not found; give a YAML path or one of: {', '.join(available)}")


def load_config(source: str | os.PathLike[str] | Mapping[str, Any] | None = None,
                overrides: Iterable[str] = (), *, recorded: bool = False) -> dict[str, Any]:
    """Load, merge and validate a training config.

    Two rules apply to what the user set (``source`` plus ``overrides``), not to defaults:

    * a key shadowed by another (:data:`SHADOWED_BY`) is an error while that key is set;
    * a folder dataset (``data.format: folder``) is scored at its native resolution
      (``eval.scale: 1.0``) unless ``eval.scale`` is given with it: in an override, or in a
      config whose own ``data.format`` is ``folder``. A Cityscapes recipe's ``eval.scale`` (0.5
      for STDC 'Seg50') is about 2048x1024 frames, not about a custom camera.

    Args:
        source: a YAML file, a config name from ``training/configs``, an already-parsed dict, or
            None for the defaults.
        overrides: ``section.key=value`` strings applied last (value parsed as YAML).
        recorded: ``source`` is a config recorded by an earlier run (see :func:`resolve_shadowing`).

    Returns:
        The complete config dict (every section and key present).

    Raises:
        ConfigError: unknown key (with the closest valid one), shadowed key, bad value.
    """
    if source is None:
        data: Mapping[str, Any] = {}
    elif isinstance(source, Mapping):
        data = source
    else:
        path = resolve_config_path(source)
        with open(path, encoding="utf-8") as stream:
            data = yaml.safe_load(stream) or {}
        if not isinstance(data, Mapping):
            raise ConfigError(f"{path}: expected a YAML mapping of sections (model, data, train, ...)")
    _check_keys(data, DEFAULTS, "")
    overridden: dict[str, Any] = {}
    for text in overrides:
        keys, value = parse_override(text)
        _check_keys(_nested(keys, value), DEFAULTS, "")
        overridden = merge(overridden, _nested(keys, value))
    given = merge(data, overridden)  # what the user set, without the defaults
    config = merge(DEFAULTS, given)
    resolve_shadowing(config, given, recorded=recorded)
    if (config["data"]["format"] == "folder" and _get(data, "data.format") != "folder"
            and not _has(overridden, "eval.scale")):
        config["eval"]["scale"] = 1.0
    validate(config)
    return config


def _nested(keys: list[str], value: Any) -> dict[str, Any]:
    out: Any = value
    for key in reversed(keys):
        out = {key: out}
    return out


def _pair(value: Any, name: str) -> list[int]:
    if isinstance(value, int):
        value = [value, value]
    if (not isinstance(value, (list, tuple)) or len(value) != 2
            or not all(isinstance(v, int) and v > 0 for v in value)):
        raise ConfigError(f"{name} must be [height, width] (positive integers), got {value!r}")
    return [int(v) for v in value]


def validate(config: dict[str, Any]) -> None:
    """Check value types and ranges in place (normalizing pairs), raising :class:`ConfigError`."""
    data, train, optim, loss = config["data"], config["train"], config["optim"], config["loss"]
    if data["format"] not in ("cityscapes", "folder"):
        raise ConfigError(f"data.format must be 'cityscapes' or 'folder', got {data['format']!r}")
    data["crop"] = _pair(data["crop"], "data.crop")
    scale = data["scale"]
    if data["scale_choices"] is not None and (not isinstance(data["scale_choices"], (list, tuple))
                                              or not data["scale_choices"] or min(data["scale_choices"]) <= 0):
        raise ConfigError("data.scale_choices must be a non-empty list of positive scales")
    if data["scale_choices"] is None and not (
            isinstance(scale, (list, tuple)) and len(scale) == 2 and 0 < scale[0] <= scale[1]):
        raise ConfigError(f"data.scale must be [min, max] with 0 < min <= max, got {scale!r}")
    class_set = data["class_set"]
    if not (isinstance(class_set, str) or (isinstance(class_set, Mapping) and isinstance(class_set.get("names"), list)
                                           and class_set["names"])):
        raise ConfigError(f"data.class_set must be 'cityscapes', a YAML file or a mapping with 'names' "
                          f"(and optionally 'palette'), got {class_set!r}")
    warmup = optim["warmup_iters"]
    if warmup is not None and (not isinstance(warmup, int) or isinstance(warmup, bool) or warmup < 0):
        raise ConfigError(f"optim.warmup_iters must be an integer >= 0, or null for the recipes' 1000 "
                          f"steps scaled to the run, got {warmup!r}")
    eval_scale = config["eval"]["scale"]
    if not isinstance(eval_scale, (int, float)) or isinstance(eval_scale, bool) or eval_scale <= 0:
        raise ConfigError(f"eval.scale must be a positive number, got {eval_scale!r}")
    for key in ("iters", "batch_size"):
        if not isinstance(train[key], int) or train[key] < 1:
            raise ConfigError(f"train.{key} must be a positive integer, got {train[key]!r}")
    for key in ("log_every", "eval_every", "ckpt_every"):
        if not isinstance(train[key], int) or train[key] < 0:
            raise ConfigError(f"train.{key} must be an integer >= 0, got {train[key]!r}")
    if optim["warmup"] not in ("exp", "linear"):
        raise ConfigError(f"optim.warmup must be 'exp' or 'linear', got {optim['warmup']!r}")
    if not 0 < optim["warmup_ratio"] <= 1:
        raise ConfigError("optim.warmup_ratio must be in (0, 1]")
    if not 0 < loss["ohem_thresh"] <= 1:
        raise ConfigError("loss.ohem_thresh must be a probability in (0, 1]")
    if not 0 <= loss["ohem_min_kept"] <= 1:
        raise ConfigError("loss.ohem_min_kept is a fraction of the valid pixels, in [0, 1]")


def dump_config(config: Mapping[str, Any], path: str | os.PathLike[str]) -> None:
    """Write a config as YAML (sections in the canonical order), atomically: ``--resume`` may read
    it back, so a run killed while writing it leaves the previous complete file."""
    write_atomic(path, yaml.safe_dump(dict(config), sort_keys=False, default_flow_style=None))
