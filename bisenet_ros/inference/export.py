"""ONNX export with embedded metadata (the ``bisenet-ros export`` command is
:mod:`bisenet_ros.commands.export`).

An exported file is self-describing: its ONNX ``metadata_props`` hold one entry, key
``bisenet_ros``, whose value is a JSON document (:class:`OnnxModelInfo`)::

    {"format": "bisenet_ros.onnx", "format_version": 3,
     "variant": "bisenetv2", "num_classes": 19,
     "class_names": ["road", ...], "palette": [[128, 64, 128], ...],      # RGB
     "normalization": {"mean": [0.3257, ...], "std": [0.2112, ...]},     # RGB/255, (x - mean) / std
     "input": {"name": "input", "layout": "NCHW", "color_order": "rgb", "dtype": "float32",
               "size": [1024, 512],                                       # [width, height]; null = dynamic
               "batch": 1, "max_batch": 1},                               # frames per run; null = dynamic
     "argmax_in_graph": true, "outputs": ["labels", "confidence"],
     "precision": "fp32",                                                 # or "int8" (QDQ)
     "calibration": null}                                                 # int8: see below

An int8 file (``bisenet-ros quantize``, :mod:`bisenet_ros.inference.quantize`) has
``"precision": "int8"`` and a ``calibration`` block: ``source``, ``frames``, ``method``
(minmax/entropy/percentile), ``activations`` (uint8/int8), ``weights`` ("int8 per-channel"),
``format`` ("QDQ") and ``quality`` (label agreement with fp32 on held-out frames; mIoU of both
when ground truth was given). Files written before format_version 2 have neither key and read
as fp32.

``input.batch`` (format_version 3, ``bisenet-ros export --batch N|dynamic``) is the batch
dimension of the graph: a number for a fixed batch, null for a dynamic one; ``input.max_batch``
is the largest batch the file was made for (N; for a dynamic batch ``--max-batch``, the upper
bound of a TensorRT optimization profile: min 1, opt and max ``max_batch``). Older files have
neither key and read as batch 1, which the engine runs as batches of one.

so ``Segmenter(weights="model.onnx", backend="onnxruntime")`` needs no other input.

Graph outputs (``B`` the batch): ``logits`` ``(B, C, H, W)`` float32 without the argmax; with it (the
default and the fast path) ``labels`` ``(B, H, W)`` uint8, plus ``confidence`` ``(B, H, W)`` float32 (max softmax)
when exported with ``--confidence``. Only the uint8 label map then leaves the accelerator, and the
host never touches a ``C x H x W`` float tensor.
"""
from __future__ import annotations

import io
import json
import logging
import os
import warnings
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from bisenet_ros.labels import ClassSet

LOGGER = logging.getLogger(__name__)

METADATA_KEY = "bisenet_ros"
FORMAT = "bisenet_ros.onnx"
FORMAT_VERSION = 3
#: Precisions a file can carry: fp32 as exported, int8 after ``bisenet-ros quantize``.
FILE_PRECISIONS = ("fp32", "int8")
DEFAULT_OPSET = 17
#: The largest batch a batch-dynamic export is made for unless told (vehicles carry 4 to 8 cameras).
DEFAULT_MAX_BATCH = 8


@dataclass
class OnnxModelInfo:
    """The metadata embedded in an exported ONNX file (see the module docstring for the JSON).

    Attributes:
        variant: Registry name of the architecture.
        num_classes: Number of classes.
        class_names: Name per class id.
        palette: RGB colour per class id.
        mean: Normalization mean (RGB, 0..1 scale).
        std: Normalization std.
        input_size: ``(width, height)`` of the fixed input, or None for a dynamic-size export.
        argmax_in_graph: Whether the graph outputs ``labels`` (True) or ``logits`` (False).
        outputs: Graph output names.
        input_name: Graph input name.
        precision: ``fp32`` (as exported) or ``int8`` (quantized, QDQ).
        calibration: For int8 files, how they were calibrated and the quality check (see the
            module docstring); None for fp32.
        batch: Frames per run the graph takes: N for a fixed batch, None for a dynamic one.
        max_batch: The largest batch the file was made for (``batch`` when fixed).
    """

    variant: str
    num_classes: int
    class_names: list[str]
    palette: list[list[int]]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    input_size: tuple[int, int] | None
    argmax_in_graph: bool
    outputs: list[str] = field(default_factory=list)
    input_name: str = "input"
    precision: str = "fp32"
    calibration: dict[str, Any] | None = None
    batch: int | None = 1
    max_batch: int = 1

    def to_json(self) -> str:
        return json.dumps({
            "format": FORMAT, "format_version": FORMAT_VERSION,
            "variant": self.variant, "num_classes": self.num_classes,
            "class_names": list(self.class_names), "palette": [list(map(int, c)) for c in self.palette],
            "normalization": {"mean": list(self.mean), "std": list(self.std)},
            "input": {"name": self.input_name, "layout": "NCHW", "color_order": "rgb", "dtype": "float32",
                      "size": list(self.input_size) if self.input_size else None,
                      "batch": self.batch, "max_batch": self.max_batch},
            "argmax_in_graph": self.argmax_in_graph, "outputs": list(self.outputs),
            "precision": self.precision, "calibration": self.calibration,
        })

    @classmethod
    def from_json(cls, text: str, source: str = "<onnx>") -> "OnnxModelInfo":
        try:
            data = json.loads(text)
            if data.get("format") != FORMAT:
                raise ValueError(f"format {data.get('format')!r}")
            if int(data.get("format_version", 0)) > FORMAT_VERSION:
                raise ValueError(
                    f"format_version {data['format_version']} is newer than this bisenet_ros "
                    f"understands ({FORMAT_VERSION}); upgrade bisenet_ros")
            size = data["input"]["size"]
            info = cls(
                variant=str(data["variant"]), num_classes=int(data["num_classes"]),
                class_names=[str(n) for n in data["class_names"]],
                palette=[[int(v) for v in c] for c in data["palette"]],
                mean=tuple(float(v) for v in data["normalization"]["mean"]),  # type: ignore[arg-type]
                std=tuple(float(v) for v in data["normalization"]["std"]),  # type: ignore[arg-type]
                input_size=(int(size[0]), int(size[1])) if size else None,
                argmax_in_graph=bool(data["argmax_in_graph"]), outputs=list(data["outputs"]),
                input_name=str(data["input"].get("name", "input")),
                # format_version 1 files predate quantization: they are fp32.
                precision=str(data.get("precision", "fp32")), calibration=data.get("calibration"),
                # format_version 1 and 2 files predate batches: batch 1.
                batch=None if data["input"].get("batch", 1) is None else int(data["input"].get("batch", 1)),
                max_batch=int(data["input"].get("max_batch", data["input"].get("batch") or 1)))
            if (info.batch is not None and info.batch != info.max_batch) or info.max_batch < 1:
                raise ValueError(f"batch {info.batch} with max_batch {info.max_batch}")
            if info.precision not in FILE_PRECISIONS:
                raise ValueError(f"precision {info.precision!r}, expected one of {FILE_PRECISIONS}")
        except (ValueError, KeyError, TypeError, IndexError) as exc:
            raise ValueError(f"{source}: malformed '{METADATA_KEY}' metadata ({exc})") from None
        if len(info.class_names) != info.num_classes or len(info.palette) != info.num_classes:
            raise ValueError(
                f"{source}: metadata lists {len(info.class_names)} class names and "
                f"{len(info.palette)} colours for num_classes={info.num_classes}")
        return info

    def class_set(self, name: str = "onnx") -> ClassSet:
        """The class set stored in the file."""
        return ClassSet(name, tuple(self.class_names), np.asarray(self.palette, dtype=np.uint8))


def _import_onnx() -> Any:
    try:
        import onnx
    except ImportError as exc:
        raise ImportError(f"ONNX export and .onnx weights need the 'onnx' package: pip install onnx ({exc})") from exc
    return onnx


def read_onnx_info(model: str | os.PathLike[str] | bytes) -> OnnxModelInfo:
    """Read the embedded metadata of an exported file.

    Args:
        model: Path to an ``.onnx`` file or its bytes.

    Raises:
        ValueError: The file cannot be read or carries no ``bisenet_ros`` metadata (naming the fix).
    """
    proto, source = load_onnx(model)
    return onnx_info(proto, source)


def without_outputs(model: str | os.PathLike[str], unread: Sequence[str]) -> bytes | None:
    """An exported file's graph without outputs nobody reads, and the nodes only they need.

    A file exported with ``--confidence`` computes the confidence in every run, asked for or not
    (measured: STDC1 1024x512, one thread on the CPU, 378-390 ms per frame with it, 348-349 ms for
    the same graph without it, also when the output is merely left out of the run's output
    names). ``onnx.utils.Extractor`` keeps exactly the nodes between the input and the remaining
    outputs. The runtimes do not need the metadata, which the engine reads from the file itself.

    Args:
        model: Path to an ``.onnx`` file (fixed or dynamic batch, fp32 or int8).
        unread: Output names to drop, e.g. ``("confidence",)``.

    Returns:
        The serialized smaller model, or None when the file has none of ``unread`` (run the file).
    """
    from onnx.utils import Extractor

    proto, _ = load_onnx(model)
    outputs = [output.name for output in proto.graph.output]
    kept = [name for name in outputs if name not in unread]
    if len(kept) == len(outputs) or not kept:
        return None
    extracted = Extractor(proto).extract_model([proto.graph.input[0].name], kept)
    # The runtime reads the IR version the file was written for, not the onnx package's newest.
    extracted.ir_version = proto.ir_version
    return extracted.SerializeToString()


def load_onnx(model: str | os.PathLike[str] | bytes) -> tuple[Any, str]:
    """Decode an ONNX file or its bytes once: ``(ModelProto, name for messages)``.

    Raises:
        ValueError: No such file, or not an ONNX model.
    """
    onnx = _import_onnx()
    source = "<bytes>" if isinstance(model, bytes) else os.fspath(model)
    try:
        if isinstance(model, bytes):
            proto = onnx.load_from_string(model)
        else:
            if not os.path.isfile(source):
                raise ValueError(f"{source}: no such ONNX file")
            proto = onnx.load(source, load_external_data=False)
    except ValueError:
        raise
    except Exception as exc:  # protobuf DecodeError etc.: one message for "not an ONNX file"
        raise ValueError(f"{source}: cannot be read as an ONNX model ({exc})") from None
    return proto, source


def onnx_info(proto: Any, source: str = "<model>") -> OnnxModelInfo:
    """The embedded metadata of a decoded model (see :func:`read_onnx_info`)."""
    props = {p.key: p.value for p in proto.metadata_props}
    if METADATA_KEY not in props:
        raise ValueError(
            f"{source} carries no '{METADATA_KEY}' metadata (class names, normalization, input size), "
            "so it cannot be run safely; export it with `bisenet-ros export` (which embeds them)")
    return OnnxModelInfo.from_json(props[METADATA_KEY], source)


def set_onnx_info(proto: Any, info: OnnxModelInfo) -> None:
    """Store ``info`` as the ``bisenet_ros`` metadata of an ONNX ``ModelProto`` (replacing any)."""
    entries = [p for p in proto.metadata_props if p.key != METADATA_KEY]
    del proto.metadata_props[:]
    proto.metadata_props.extend(entries)
    entry = proto.metadata_props.add()
    entry.key = METADATA_KEY
    entry.value = info.to_json()


class _ExportHead:
    """Factory for the torch module wrapping a model with the argmax/confidence head (keeps torch lazy)."""

    @staticmethod
    def build(model: Any, argmax: bool, confidence: bool) -> Any:
        import torch

        class Head(torch.nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.model = model

            def forward(self, x: torch.Tensor) -> Any:
                logits = self.model(x)
                if not argmax:
                    return logits
                # ArgMax then Cast: the labels leave the graph as uint8 (num_classes <= 255).
                labels = torch.argmax(logits, dim=1).to(torch.uint8)
                if not confidence:
                    return labels
                # max softmax = 1 / sum(exp(l - max l)): one exp pass instead of a full Softmax.
                top = torch.amax(logits, dim=1, keepdim=True)
                conf = 1.0 / torch.sum(torch.exp(logits - top), dim=1)
                return labels, conf

        return Head().eval()


def export_onnx_bytes(model: Any, *, resolution: tuple[int, int], class_set: ClassSet,
                      argmax: bool = True, confidence: bool = False, dynamic: bool = False,
                      batch: int | None = 1, max_batch: int | None = None,
                      opset: int = DEFAULT_OPSET) -> tuple[bytes, OnnxModelInfo]:
    """Export a registry model to ONNX in memory, with metadata.

    Args:
        model: A model from :func:`bisenet_ros.models.build_model` (needs ``variant`` and
            ``normalization`` attributes); eval mode is set.
        resolution: ``(width, height)`` of the network input.
        class_set: Class names and palette to embed (must match the model's class count).
        argmax: Put the argmax in the graph (outputs ``labels`` uint8) instead of ``logits``.
        confidence: With ``argmax``, also output the max softmax probability.
        dynamic: Make height and width dynamic (the engine then uses its configured resolution).
        batch: Frames per run: a fixed N >= 1, or None for a dynamic batch dimension.
        max_batch: With ``batch=None``, the largest batch meant (the TensorRT profile's opt and
            max; default :data:`DEFAULT_MAX_BATCH`). Must be None or equal to a fixed ``batch``.
        opset: ONNX opset (17 or newer).

    Returns:
        The serialized model and its metadata.
    """
    import torch

    onnx = _import_onnx()
    normalization = getattr(model, "normalization", None)
    if normalization is None:
        raise ValueError("model has no 'normalization' attribute; build it with bisenet_ros.models.build_model")
    num_classes = int(getattr(model, "num_classes", class_set.num_classes))
    if class_set.num_classes != num_classes:
        raise ValueError(
            f"class set {class_set.name!r} has {class_set.num_classes} classes but the model predicts {num_classes}")
    if confidence and not argmax:
        raise ValueError("confidence is an output of the argmax head: export with argmax to get it")
    if opset < 17:
        raise ValueError(f"opset={opset}: expected 17 or newer")
    if batch is not None and batch < 1:
        raise ValueError(f"batch={batch}: expected a frame count >= 1, or dynamic")
    if batch is not None and max_batch not in (None, batch):
        raise ValueError(f"max_batch={max_batch} with a fixed batch={batch}: max_batch is for a dynamic batch")
    largest = batch if batch is not None else (DEFAULT_MAX_BATCH if max_batch is None else max_batch)
    if largest < 1:
        raise ValueError(f"max_batch={max_batch}: expected a frame count >= 1")
    width, height = resolution
    model.eval()
    head = _ExportHead.build(model, argmax, confidence)
    outputs = ["labels", "confidence"] if confidence else (["labels"] if argmax else ["logits"])
    dynamic_axes: dict[str, dict[int, str]] = {"input": {}, **{name: {} for name in outputs}}
    if dynamic:
        dynamic_axes["input"].update({2: "height", 3: "width"})
        for name in outputs:
            dynamic_axes[name].update({2: "height", 3: "width"} if name == "logits" else {1: "height", 2: "width"})
    if batch is None:
        for axes in dynamic_axes.values():
            axes[0] = "batch"
    buffer = io.BytesIO()
    # A dynamic batch is traced with two frames, so that no size-1 batch is baked into the graph.
    example = torch.zeros(2 if batch is None else batch, 3, height, width)
    with warnings.catch_warnings():
        # The TorchScript exporter is deprecated in favour of the dynamo one, which needs
        # onnxscript and takes far longer on these graphs; the TorchScript output is what ONNX
        # Runtime, OpenVINO and TensorRT are tested with here.
        warnings.simplefilter("ignore")
        torch.onnx.export(head, (example,), buffer, dynamo=False, opset_version=opset,
                          input_names=["input"], output_names=outputs,
                          dynamic_axes={k: v for k, v in dynamic_axes.items() if v} or None,
                          do_constant_folding=True)
    proto = onnx.load_from_string(buffer.getvalue())
    info = OnnxModelInfo(
        variant=str(getattr(model, "variant", "custom")), num_classes=num_classes,
        class_names=list(class_set.names), palette=class_set.palette.tolist(),
        mean=tuple(normalization.mean), std=tuple(normalization.std),  # type: ignore[arg-type]
        input_size=None if dynamic else (width, height), argmax_in_graph=argmax, outputs=outputs,
        batch=batch, max_batch=largest)
    set_onnx_info(proto, info)
    proto.producer_name = "bisenet_ros"
    return proto.SerializeToString(), info


def export_onnx(model: Any, path: str | os.PathLike[str], **options: Any) -> OnnxModelInfo:
    """Export to a file; options as in :func:`export_onnx_bytes`. Returns the embedded metadata."""
    data, info = export_onnx_bytes(model, **options)
    path = os.fspath(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "wb") as stream:
        stream.write(data)
    return info


def verify_export(model: Any, data: bytes, info: OnnxModelInfo, seed: int = 0) -> float:
    """Run the exported graph with ONNX Runtime and compare with torch on a random input.

    Returns:
        For an argmax export, the fraction of pixels whose labels agree; for logits, the maximum
        absolute difference of the logits.
    """
    import onnxruntime as ort
    import torch

    width, height = info.input_size or (256, 128)
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((info.batch or 2, 3, height, width)).astype(np.float32)
    session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    got = session.run([info.outputs[0]], {"input": x})[0]
    with torch.inference_mode():
        logits = model.eval()(torch.from_numpy(x)).numpy()
    if info.argmax_in_graph:
        return float((got == logits.argmax(1)).mean())
    return float(np.abs(got - logits).max())


__all__: Sequence[str] = [
    "DEFAULT_MAX_BATCH", "FILE_PRECISIONS", "METADATA_KEY", "OnnxModelInfo", "set_onnx_info", "export_onnx", "export_onnx_bytes",
    "load_onnx", "onnx_info", "read_onnx_info", "verify_export",
]
