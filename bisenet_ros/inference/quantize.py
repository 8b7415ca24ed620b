"""Static int8 quantization of an exported model (QDQ, per-channel weights) with ONNX Runtime.

NumPy in, ONNX bytes out: the caller gives pre-processed network inputs (``(1, 3, H, W)``
float32 blobs made by :meth:`bisenet_ros.inference.Segmenter.preprocess`, so the calibration sees
exactly what the engine feeds the network); where the frames come from (bag, image folder,
Cityscapes root) is :mod:`bisenet_ros.calibration`'s business.

The result is one QDQ file (``QuantizeLinear``/``DequantizeLinear`` pairs around float operators):

- ONNX Runtime's CPU provider fuses the pairs into integer kernels (VNNI where the CPU has it);
- OpenVINO reads the pairs and runs the convolutions in int8 ("low precision transformations");
- TensorRT treats it as an explicitly quantized network (it honours the Q/DQ placement). TensorRT
  only takes symmetric signed activations (zero point 0): quantize with ``activations="int8"``
  for a file meant for TensorRT too; ``uint8`` (asymmetric) is the faster choice on x86 CPUs.

The network head (the final upsampling, argmax, confidence) stays in float: quantizing the
logits just before the argmax would create ties between classes. ``onnxruntime.quantization``
is imported only when quantizing.
"""
from __future__ import annotations

import logging
import os
import tempfile
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np

from bisenet_ros.inference.export import OnnxModelInfo, load_onnx, onnx_info, set_onnx_info
from bisenet_ros.inference.frames import sample_indices

LOGGER = logging.getLogger(__name__)

#: Calibration methods of ``onnxruntime.quantization`` (range from min/max, KL divergence of
#: the histogram, or a percentile of the absolute values).
CALIBRATION_METHODS = ("minmax", "entropy", "percentile")
#: Activation types: uint8 (asymmetric, fastest on x86 CPUs) or int8 (symmetric, TensorRT).
ACTIVATION_TYPES = ("uint8", "int8")
#: Operators that mark a graph as already quantized.
QUANTIZED_OPS = frozenset({"QuantizeLinear", "DequantizeLinear", "QLinearConv", "QLinearMatMul",
                           "ConvInteger", "MatMulInteger", "DynamicQuantizeLinear"})
#: Frames pushed through the calibration graph at once: the histogram calibrators keep every
#: intermediate tensor of a batch in memory (about 0.3 GB per 1024x512 BiSeNetV2 frame), so
#: ranges/histograms are merged every CHUNK frames instead of after all of them.
CHUNK = 4
#: Frames the histogram methods (entropy, percentile) calibrate on at most, spread evenly over
#: the given ones: they histogram every activation of every frame in NumPy, about 8x the time
#: of MinMax per frame (measured: STDC1 1024x512), and 32 frames fill the histograms well.
HISTOGRAM_FRAMES = 32


@dataclass(frozen=True)
class QuantizeSettings:
    """How to quantize.

    Attributes:
        method: One of :data:`CALIBRATION_METHODS`.
        activations: One of :data:`ACTIVATION_TYPES`.
        percentile: Percentile of absolute values kept by the ``percentile`` method.
    """

    method: str = "minmax"
    activations: str = "uint8"
    percentile: float = 99.999

    def __post_init__(self) -> None:
        if self.method not in CALIBRATION_METHODS:
            raise ValueError(f"method={self.method!r}: expected one of {', '.join(CALIBRATION_METHODS)}")
        if self.activations not in ACTIVATION_TYPES:
            raise ValueError(f"activations={self.activations!r}: expected one of {', '.join(ACTIVATION_TYPES)}")


def is_quantized(proto: Any) -> bool:
    """Whether an ONNX ``ModelProto`` already contains quantization operators."""
    return any(node.op_type in QUANTIZED_OPS for node in proto.graph.node)


def check_quantizable(model: bytes, source: str) -> OnnxModelInfo:
    """The metadata of a model that may be quantized.

    Raises:
        ValueError: Not a ``bisenet_ros`` export, or already quantized (one line, naming the fix).
    """
    proto, _ = load_onnx(model)
    info = onnx_info(proto, source)
    if info.precision != "fp32" or is_quantized(proto):
        raise ValueError(f"{source} is already quantized ({info.precision}); quantize the fp32 export "
                         "it was made from (bisenet-ros export)")
    if info.batch not in (None, 1):
        # Calibration feeds one frame per run; a batch-dynamic export takes those too.
        raise ValueError(f"{source} takes batches of exactly {info.batch} frames; quantize its batch-1 "
                         "or batch-dynamic export (bisenet-ros export --batch 1 or --batch dynamic)")
    return info


def head_nodes(graph: Any) -> list[str]:
    """Names of the nodes between the last convolutions and the graph outputs (upsampling,
    argmax, cast, confidence): everything reachable backwards from an output without passing
    a ``Conv``. They are kept in float."""
    producers = {out: node for node in graph.node for out in node.output}
    names: list[str] = []
    pending = [o.name for o in graph.output]
    seen: set[str] = set()
    while pending:
        node = producers.get(pending.pop())
        if node is None or node.name in seen or node.op_type == "Conv":
            continue
        seen.add(node.name)
        names.append(node.name)
        pending.extend(node.input)
    return names


def _make_reader(blobs: Sequence[np.ndarray], input_name: str) -> Any:
    from onnxruntime.quantization import CalibrationDataReader

    class BlobReader(CalibrationDataReader):
        """Feeds the blobs; ``set_range`` lets ONNX Runtime calibrate chunk by chunk."""

        def __init__(self) -> None:
            self.start, self.end, self.position = 0, len(blobs), 0

        def __len__(self) -> int:
            return len(blobs)

        def set_range(self, start_index: int, end_index: int) -> None:
            self.start, self.end, self.position = start_index, end_index, start_index

        def get_next(self) -> dict[str, np.ndarray] | None:
            if self.position >= min(self.end, len(blobs)):
                return None
            self.position += 1
            return {input_name: blobs[self.position - 1]}

    return BlobReader()


def quantize_model(model: bytes, blobs: Sequence[np.ndarray], settings: QuantizeSettings,
                   provenance: Mapping[str, Any] | None = None) -> bytes:
    """Quantize an fp32 export to a QDQ int8 model.

    Args:
        model: The fp32 ``.onnx`` bytes (a ``bisenet_ros`` export).
        blobs: Calibration inputs, each ``(1, 3, H, W)`` float32 as the engine pre-processes them;
            at most :data:`HISTOGRAM_FRAMES` of them for the histogram methods; the count is
            trimmed to a multiple of :data:`CHUNK` when longer than it.
        settings: Method and activation type.
        provenance: Extra keys for the ``calibration`` metadata block (e.g. ``source``).

    Returns:
        The int8 model's bytes, metadata ``precision: int8`` and ``calibration`` filled in.

    Raises:
        ValueError: The model cannot be quantized (see :func:`check_quantizable`) or no blobs.
    """
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    info = check_quantizable(model, "model")
    if not blobs:
        raise ValueError("no calibration frames")
    if settings.method != "minmax" and len(blobs) > HISTOGRAM_FRAMES:
        blobs = [blobs[i] for i in sample_indices(len(blobs), HISTOGRAM_FRAMES)]
    chunk = min(CHUNK, len(blobs))
    blobs = list(blobs[: len(blobs) - len(blobs) % chunk])
    methods = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
               "percentile": CalibrationMethod.Percentile}
    with tempfile.TemporaryDirectory(prefix="bisenet_quantize_") as tmp:
        source, prepared, output = (os.path.join(tmp, n) for n in ("in.onnx", "pre.onnx", "int8.onnx"))
        with open(source, "wb") as stream:
            stream.write(model)
        # Shape inference + graph optimisation first, as ONNX Runtime recommends: BatchNorms left
        # after export are folded into convolutions so that they do not get Q/DQ pairs of their own.
        # (Symbolic shape inference is for dynamic transformer graphs; ONNX's own suffices here.)
        quant_pre_process(source, prepared, skip_symbolic_shape=True)
        quantize_static(
            prepared, output, _make_reader(blobs, info.input_name),
            quant_format=QuantFormat.QDQ, per_channel=True,
            activation_type=QuantType.QUInt8 if settings.activations == "uint8" else QuantType.QInt8,
            weight_type=QuantType.QInt8, calibrate_method=methods[settings.method],
            nodes_to_exclude=head_nodes(onnx.load(prepared).graph),
            extra_options={
                # TensorRT needs zero-point-0 (symmetric) activations; uint8 ones are asymmetric.
                "ActivationSymmetric": settings.activations == "int8",
                "CalibStridedMinMax": chunk,  # merge ranges/histograms every `chunk` frames
                "CalibPercentile": settings.percentile,
            })
        result = onnx.load(output)
    info.precision = "int8"
    info.calibration = {
        **dict(provenance or {}), "frames": len(blobs), "method": settings.method,
        "activations": settings.activations, "activations_symmetric": settings.activations == "int8",
        "weights": "int8 per-channel", "format": "QDQ",
        "onnxruntime": _ort_version(),
    }
    set_onnx_info(result, info)
    result.producer_name = "bisenet_ros"
    return result.SerializeToString()


def update_calibration(model: bytes, **entries: Any) -> bytes:
    """Add entries (e.g. the ``quality`` check) to an int8 file's ``calibration`` block."""
    proto, source = load_onnx(model)
    info = onnx_info(proto, source)
    info.calibration = {**(info.calibration or {}), **entries}
    set_onnx_info(proto, info)
    return proto.SerializeToString()


def _ort_version() -> str:
    import onnxruntime

    return str(onnxruntime.__version__)


def label_agreement(a: Sequence[np.ndarray], b: Sequence[np.ndarray]) -> float:
    """Fraction of pixels with the same label over pairs of label maps (0..1)."""
    if len(a) != len(b) or not a:
        raise ValueError(f"label_agreement: {len(a)} and {len(b)} label maps; expected the same non-zero count")
    same = sum(int(np.count_nonzero(x == y)) for x, y in zip(a, b))
    return same / sum(x.size for x in a)


__all__ = [
    "ACTIVATION_TYPES", "CALIBRATION_METHODS", "QuantizeSettings", "check_quantizable", "head_nodes",
    "is_quantized", "label_agreement", "quantize_model", "update_calibration",
]
