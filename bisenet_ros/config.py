"""The one typed configuration shared by the engine, the ROS node, the CLIs and the replay.

Every option is declared exactly once here, with its type, default and help text. The ROS node
declares one ROS parameter per field (with the help text as its descriptor), the CLIs add one
``--option`` per field, and YAML files in ``config/`` use the same names. Validation happens in
:meth:`SegmenterConfig.validate`, so a bad value is reported at start-up with the fix, never as a
crash on the first frame.

This module is pure Python: no torch, no ROS.
"""
from __future__ import annotations

import dataclasses
import difflib
import os
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

RESIZE_POLICIES = ("stretch", "letterbox")
BACKENDS = ("torch", "onnxruntime", "openvino")
# int8 needs an int8 model file (bisenet-ros quantize); auto picks the fastest the file, backend
# and CPU support (bisenet_ros.inference.precision).
PRECISIONS = ("fp32", "fp16", "bf16", "int8", "auto")
OUTPUT_RESOLUTIONS = ("camera", "network")
COLOR_ORDERS = ("rgb", "bgr")
#: Options a weights file describes itself (this project's .pth, an exported .onnx): the file's
#: values are used unless the option was set explicitly (see :attr:`SegmenterConfig.explicit`).
FILE_DESCRIBED = ("variant", "num_classes", "class_set", "resolution")
#: Options whose explicitness matters: the file-described ones, and the backend (an .onnx picks
#: onnxruntime unless a backend was given).
TRACKED = FILE_DESCRIBED + ("backend",)
# Upper bound for the network input size. Larger values are almost always a units mistake
# (e.g. passing the camera size in pixels*10) and would exhaust a Jetson's memory.
MAX_NETWORK_SIDE = 4096


def _help(text: str) -> dict[str, str]:
    return {"help": text}


@dataclass
class SegmenterConfig:
    """Options of :class:`bisenet_ros.inference.Segmenter` (and of the node, replay and CLIs).

    Field metadata ``help`` is the single source of every user-facing description.

    :attr:`explicit` names the :data:`TRACKED` options the user set, as opposed to defaults: a
    self-describing weights file (:func:`bisenet_ros.inference.weights.resolve_config`) supplies
    the others, and only an explicit value can contradict the file. Built from a mapping or
    keywords, every option given is explicit; from a YAML or ROS parameter file, and when built
    directly, a value equal to the default (for ``resolution`` also the variant's recommended
    size) is a default: the shipped ``config/<variant>.yaml`` and the launch file's defaults never
    contradict a weights file.
    """

    variant: str = field(default="bisenetv2", metadata=_help(
        "Model architecture: bisenetv1, bisenetv1_xception39, bisenetv2, stdc1 or stdc2. "
        "A training checkpoint or an exported .onnx names its own: leave it out for those."))
    weights: str | None = field(default=None, metadata=_help(
        "Checkpoint (.pth: this project's, CoinCheung/BiSeNet or STDC-Seg format, detected "
        "automatically) or exported .onnx file. This project's checkpoints and .onnx files carry "
        "their variant, classes and network size, so they run with this option alone (an option "
        "given explicitly that contradicts the file is an error). Empty: random weights (for "
        "testing only)."))
    num_classes: int = field(default=19, metadata=_help(
        "Number of classes the model predicts (19 for Cityscapes; a self-describing weights "
        "file supplies it)."))
    class_set: str = field(default="cityscapes", metadata=_help(
        "Class names and palette: 'cityscapes' or a YAML file with 'names' and 'palette' "
        "(default: the weights file's names where it stores them)."))
    resolution: tuple[int, int] = field(default=(1024, 512), metadata=_help(
        "Network input size as width x height, e.g. 1024x512 (STDC 'Seg50') or 1536x768 ('Seg75'). "
        "Default: the size a training checkpoint was evaluated at or an .onnx was exported at "
        "(an .onnx runs at no other), else 1024x512."))
    resize: str = field(default="stretch", metadata=_help(
        "How a camera frame is fitted to the network size: 'stretch' or 'letterbox' "
        "(keeps the aspect ratio, pads; the label map is mapped back either way)."))
    backend: str = field(default="torch", metadata=_help(
        "Inference backend: torch, onnxruntime or openvino (an .onnx file runs on onnxruntime, "
        "or openvino where only that is installed, unless one is given)."))
    device: str = field(default="cpu", metadata=_help(
        "Device: 'cpu', 'cuda', 'cuda:N'; for onnxruntime also 'tensorrt' (TensorRT execution "
        "provider, the Jetson deploy path)."))
    precision: str = field(default="fp32", metadata=_help(
        "Numeric precision: fp32 (default everywhere), fp16 (CUDA/TensorRT), bf16 (CPU, opt-in), "
        "int8 (an int8 .onnx from bisenet-ros quantize; such a file always runs in int8) or auto "
        "(the fastest the file, backend and CPU support: bf16 where the CPU has avx512_bf16/amx, "
        "int8 for an int8 file; the choice and why are logged)."))
    drivable_classes: tuple[str, ...] = field(default=("road",), metadata=_help(
        "Class names (any case: 'road' is a class named 'Road') or ids that count as drivable "
        "area in the drivable mask."))
    overlay_alpha: float = field(default=0.5, metadata=_help(
        "Weight of the colour mask in the overlay, 0..1."))
    output_resolution: str = field(default="camera", metadata=_help(
        "Resolution of the published label maps: 'camera' (input frame size) or 'network'."))
    visualization_resolution: str = field(default="camera", metadata=_help(
        "Resolution of the colour mask and overlay: 'camera' (input frame size) or 'network' "
        "(the network input, a quarter of the pixels of a 1080p frame at 1024x512: cheaper to "
        "build, encode and send; shown as the network sees the frame, i.e. stretched unless "
        "resize is 'letterbox'). Label maps follow output_resolution."))
    confidence: bool = field(default=False, metadata=_help(
        "Also compute the per-pixel confidence (max softmax probability)."))
    trt_cache_dir: str | None = field(default=None, metadata=_help(
        "Directory where the TensorRT execution provider caches built engines "
        "(first run on a Jetson builds them, which takes minutes)."))
    num_threads: int = field(default=0, metadata=_help(
        "CPU threads for the backend; 0 lets the backend decide."))

    def __post_init__(self) -> None:
        #: The :data:`TRACKED` options set by the user (see the class docstring).
        self.explicit: frozenset[str] = non_default_options({name: getattr(self, name) for name in TRACKED})

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(cls))

    @classmethod
    def from_dict(cls, values: Mapping[str, Any], *,
                  explicit: Iterable[str] | None = None) -> "SegmenterConfig":
        """Build a config from a plain mapping (e.g. a parsed YAML file) and validate it.

        Unknown keys are an error (a typo must not silently fall back to a default).

        Args:
            values: Option name -> value.
            explicit: The options the user set (see :attr:`explicit`); None: every key of
                ``values``.
        """
        names = cls.field_names()
        unknown = [k for k in values if k not in names]
        if unknown:
            hints = []
            for key in unknown:
                close = difflib.get_close_matches(key, names, n=1)
                hints.append(f"'{key}'" + (f" (did you mean '{close[0]}'?)" if close else ""))
            raise ValueError(
                f"unknown segmenter option(s) {', '.join(hints)}; valid options: {', '.join(names)}")
        config = cls(**{k: coerce_field(k, v) for k, v in values.items()})
        config.explicit = frozenset(values if explicit is None else explicit) & frozenset(TRACKED)
        config.validate()
        return config

    @classmethod
    def from_yaml(cls, path: str | os.PathLike[str], **overrides: Any) -> "SegmenterConfig":
        """Load a YAML file holding these option names; ``overrides`` win over the file.

        A ROS parameter file (``node_name: {ros__parameters: {...}}``) is accepted too, so the
        replay and the node can share one file.
        """
        import yaml

        with open(path, encoding="utf-8") as stream:
            data = yaml.safe_load(stream) or {}
        if not isinstance(data, dict):
            raise ValueError(f"{path}: expected a mapping of option names to values")
        data = unwrap_ros_parameters(data)
        data = {k: v for k, v in data.items() if k in cls.field_names() or k not in _NODE_ONLY_KEYS}
        overrides = {k: v for k, v in overrides.items() if v is not None}
        # A node parameter file's values equal to the defaults are defaults (see the class doc).
        explicit = non_default_options(data) | set(overrides)
        data.update(overrides)
        return cls.from_dict(data, explicit=explicit)

    def replace(self, **changes: Any) -> "SegmenterConfig":
        """A validated copy with some fields changed; the changed options become explicit."""
        return self._copy(changes, self.explicit | frozenset(changes))

    def adopt(self, **changes: Any) -> "SegmenterConfig":
        """A validated copy with values taken from the weights file: they stay what they were
        (explicit or default), so a model B that takes this config's options re-reads its own."""
        return self._copy(changes, self.explicit)

    def _copy(self, changes: Mapping[str, Any], explicit: frozenset[str]) -> "SegmenterConfig":
        config = dataclasses.replace(self, **{k: coerce_field(k, v) for k, v in changes.items()})
        config.explicit = explicit & frozenset(TRACKED)
        config.validate()
        return config

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["resolution"] = list(self.resolution)
        out["drivable_classes"] = list(self.drivable_classes)
        return out

    def validate(self) -> None:
        """Raise ValueError naming the option, the bad value and what is expected."""
        _choice("resize", self.resize, RESIZE_POLICIES)
        _choice("backend", self.backend, BACKENDS)
        _choice("precision", self.precision, PRECISIONS)
        _choice("output_resolution", self.output_resolution, OUTPUT_RESOLUTIONS)
        _choice("visualization_resolution", self.visualization_resolution, OUTPUT_RESOLUTIONS)
        if not isinstance(self.num_classes, int) or not 1 <= self.num_classes <= 255:
            raise ValueError(
                f"num_classes={self.num_classes!r}: expected an integer in 1..255 "
                "(labels are published as mono8)")
        width, height = self.resolution
        for name, value in (("width", width), ("height", height)):
            if not isinstance(value, int) or not 32 <= value <= MAX_NETWORK_SIDE:
                raise ValueError(
                    f"resolution {width}x{height}: {name} must be an integer in "
                    f"32..{MAX_NETWORK_SIDE}, e.g. resolution: 1024x512")
        if not 0.0 <= float(self.overlay_alpha) <= 1.0:
            raise ValueError(f"overlay_alpha={self.overlay_alpha!r}: expected a number in 0..1")
        if self.num_threads < 0:
            raise ValueError(f"num_threads={self.num_threads!r}: expected 0 (auto) or a positive count")
        if self.device != "cpu" and not (
                self.device in ("cuda", "tensorrt") or self.device.startswith("cuda:")):
            raise ValueError(
                f"device={self.device!r}: expected 'cpu', 'cuda', 'cuda:N' or 'tensorrt'")
        if self.device == "tensorrt" and self.backend != "onnxruntime":
            raise ValueError("device='tensorrt' needs backend='onnxruntime' (TensorRT execution provider)")
        if self.precision == "fp16" and self.device == "cpu":
            raise ValueError(
                "precision='fp16' needs a GPU (device='cuda' or 'tensorrt'); on CPU use fp32, or bf16 "
                "where the CPU supports it")
        if not (self.weights and str(self.weights).endswith(".onnx")):
            from bisenet_ros.models import list_models  # lazy: the registry imports torch

            if self.variant not in list_models():
                raise ValueError(
                    f"variant={self.variant!r}: expected one of {', '.join(list_models())}")
        if not self.drivable_classes:
            raise ValueError("drivable_classes is empty: name at least one class, e.g. ['road']")


_DEFAULTS: dict[str, Any] = {f.name: f.default for f in dataclasses.fields(SegmenterConfig)}

# Keys a ROS parameter file may hold for the node that are not segmenter options.
_NODE_ONLY_KEYS = frozenset({
    "qos", "qos_depth", "max_frame_age", "publish_confidence", "color_mask_encoding",
    "use_compressed", "image_topic", "compressed_topic", "confidence_encoding", "use_sim_time",
    "diagnostics_period", "visualization_rate", "jpeg_quality",
    # several cameras on one engine (bisenet_ros.scheduler)
    "cameras", "image_suffix", "image_topics", "max_batch_size", "max_batch_wait_ms",
    # the drivable grid (bisenet_ros.pipeline.GRID_PARAMETERS)
    "camera_info_topic", "rectified_input", "grid_frame", "grid_resolution", "grid_x_min",
    "grid_x_max", "grid_y_min", "grid_y_max", "grid_max_range", "grid_ground_height",
    "use_static_camera_pose", "static_camera_pose", "per_camera_grids",
})


def unwrap_ros_parameters(data: dict[str, Any]) -> dict[str, Any]:
    """The parameter mapping of a ROS 2 parameter file, or ``data`` itself if it is a plain one."""
    # ROS 2 parameter files look like {node_name: {ros__parameters: {...}}} (possibly under a
    # namespace or the '/**' wildcard). Take the first ros__parameters block found.
    if "ros__parameters" in data:
        return dict(data["ros__parameters"])
    for value in data.values():
        if isinstance(value, dict):
            inner = unwrap_ros_parameters(value)
            if inner is not value:
                return inner
    return data


def non_default_options(values: Mapping[str, Any]) -> frozenset[str]:
    """The :data:`TRACKED` options of ``values`` that differ from their defaults.

    ``resolution`` equal to the variant's recommended size (:data:`RECOMMENDED_RESOLUTIONS`, which
    the shipped ``config/<variant>.yaml`` files use) is a default too.
    """
    out = set()
    variant = values.get("variant") or _DEFAULTS["variant"]
    for name in TRACKED:
        if name not in values or values[name] is None:
            continue
        value = coerce_field(name, values[name])
        if value == _DEFAULTS[name]:
            continue
        if name == "resolution" and value == recommended_resolution(str(variant)):
            continue
        out.add(name)
    return frozenset(out)


#: Each variant's recommended network input ``(width, height)`` for Cityscapes-like cameras (the
#: README's table; the shipped ``config/<variant>.yaml`` files use it). Kept here, not in the model
#: registry, so that reading a config never imports torch: an ``.onnx`` node with
#: ``config/stdc2.yaml`` would otherwise pay about 1.7 s and 190 MB for it, or fail without torch.
RECOMMENDED_RESOLUTIONS: dict[str, tuple[int, int]] = {
    "bisenetv1": (1536, 768),
    "bisenetv1_xception39": (1536, 768),
    "bisenetv2": (1024, 512),
    "stdc1": (1024, 512),   # STDC1-Seg50
    "stdc2": (1536, 768),   # STDC2-Seg75
}


def recommended_resolution(variant: str) -> tuple[int, int] | None:
    """The variant's recommended network size ``(width, height)``, or None for an unknown name."""
    return RECOMMENDED_RESOLUTIONS.get(variant)


def _choice(name: str, value: Any, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"{name}={value!r}: expected one of {', '.join(choices)}")


def parse_resolution(value: Any) -> tuple[int, int]:
    """Parse '1024x512', [1024, 512] or (1024, 512) into (width, height)."""
    if isinstance(value, str):
        parts = value.lower().replace(",", "x").split("x")
        try:
            width, height = (int(p.strip()) for p in parts)
        except ValueError:
            raise ValueError(
                f"resolution {value!r}: expected WIDTHxHEIGHT, e.g. 1024x512") from None
        return width, height
    try:
        width, height = value
    except (TypeError, ValueError):
        raise ValueError(f"resolution {value!r}: expected WIDTHxHEIGHT, e.g. 1024x512") from None
    return int(width), int(height)


def coerce_field(name: str, value: Any) -> Any:
    """Convert a value from YAML, a ROS parameter or the command line to the field's type."""
    if name == "resolution":
        return parse_resolution(value)
    if name == "drivable_classes":
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        return tuple(str(v) for v in value)
    if name in ("weights", "trt_cache_dir"):
        return None if value in (None, "") else str(value)
    if name in ("num_classes", "num_threads"):
        if isinstance(value, bool) or not isinstance(value, (int, str)):
            raise ValueError(f"{name}={value!r}: expected an integer")
        try:
            return int(value)
        except ValueError:
            raise ValueError(f"{name}={value!r}: expected an integer") from None
    if name == "overlay_alpha":
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ValueError(f"overlay_alpha={value!r}: expected a number in 0..1") from None
    if name == "confidence":
        if isinstance(value, str):
            if value.lower() in ("1", "true", "yes", "on"):
                return True
            if value.lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError(f"confidence={value!r}: expected true or false")
        return bool(value)
    return value


def add_config_arguments(parser: Any, *, defaults: SegmenterConfig | None = None) -> None:
    """Add one ``--option`` per config field to an argparse parser (all default to None so that
    a YAML file given with ``--config`` can supply them)."""
    defaults = defaults or SegmenterConfig()
    parser.add_argument("--config", help="YAML file with segmenter options (as in config/*.yaml)")
    for f in dataclasses.fields(SegmenterConfig):
        flag = "--" + f.name.replace("_", "-")
        default = getattr(defaults, f.name)
        if isinstance(default, tuple):
            default = "x".join(map(str, default)) if f.name == "resolution" else ",".join(default)
        parser.add_argument(flag, dest=f.name, default=None,
                            help=f"{f.metadata['help']} (default: {default})")


def config_from_args(args: Any) -> SegmenterConfig:
    """Build the validated config from parsed arguments made by :func:`add_config_arguments`.

    Options given on the command line are explicit (:attr:`SegmenterConfig.explicit`); those
    of a ``--config`` file are explicit where they differ from the defaults.
    """
    overrides = {f: getattr(args, f) for f in SegmenterConfig.field_names()
                 if getattr(args, f, None) is not None}
    if getattr(args, "config", None):
        return SegmenterConfig.from_yaml(args.config, **overrides)
    return SegmenterConfig.from_dict(overrides)
