"""OpenVINO backend (CPU).

OpenVINO picks bf16 by default on CPUs with AVX512_BF16/AMX (this development machine has them),
which changes the labels of some pixels. fp32 is therefore set explicitly with
``INFERENCE_PRECISION_HINT=f32``, and bf16 is an explicit opt-in (about 1.7x faster here).

An int8 (QDQ) file from ``bisenet-ros quantize`` runs its quantized layers in int8 (OpenVINO's
low-precision transformations read the Q/DQ pairs); the float remainder keeps the f32 hint:
measured on BiSeNetV2 1024x512 here, the f32 hint was faster than bf16 for the int8 file.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from bisenet_ros.inference.backends.base import (
    Backend, BackendError, NetworkOutput, import_backend_package, labels_from_logits)

PIP_HINT = "pip install openvino"


def import_openvino() -> Any:
    return import_backend_package("openvino", "openvino", PIP_HINT)


class OpenVinoBackend(Backend):
    """Compiles an ONNX model with OpenVINO for the CPU.

    Args:
        model: Path to an ``.onnx`` file or its serialized bytes.
        device: Only ``"cpu"``.
        precision: ``"fp32"`` (default, enforced by hint), ``"bf16"`` (needs CPU support) or
            ``"int8"`` (an int8 QDQ file).
        confidence: Return confidences (needs a ``confidence`` output when the argmax is in the graph).
        num_threads: Inference threads; 0 lets OpenVINO decide.

    Raises:
        ImportError: openvino is not installed.
        BackendError: Non-CPU device, or bf16 on a CPU without bf16 support.
    """

    name = "openvino"

    def __init__(self, model: str | bytes, *, device: str = "cpu", precision: str = "fp32",
                 confidence: bool = False, num_threads: int = 0) -> None:
        super().__init__(device, precision, confidence)
        ov = import_openvino()
        if device != "cpu":
            raise BackendError(
                f"backend='openvino' runs on device='cpu' here, not {device!r}; for NVIDIA GPUs use "
                "backend='onnxruntime' (cuda/tensorrt) or backend='torch'")
        if precision not in ("fp32", "bf16", "int8"):
            raise BackendError(f"precision={precision!r} with backend='openvino': expected fp32, bf16 or int8")
        core = ov.Core()
        if precision == "bf16":
            capabilities = core.get_property("CPU", "OPTIMIZATION_CAPABILITIES")
            if "BF16" not in capabilities:
                raise BackendError(
                    f"precision='bf16': this CPU does not support bf16 in OpenVINO (capabilities: "
                    f"{', '.join(capabilities)}); use fp32")
        config: dict[str, Any] = {
            "INFERENCE_PRECISION_HINT": "bf16" if precision == "bf16" else "f32",
            "PERFORMANCE_HINT": "LATENCY",
            # Pinned inference threads cannot move off cores that other work (the engine's own
            # OpenCV post-processing, other ROS nodes) is using; unpinned measured a few percent
            # faster here on 2 busy cores, for inference and post-processing alike.
            "ENABLE_CPU_PINNING": False,
        }
        if num_threads > 0:
            config["INFERENCE_NUM_THREADS"] = num_threads
        # read_model takes a path or the ONNX file's bytes (the engine exports .pth weights in memory).
        ov_model = core.read_model(model)
        self.compiled = core.compile_model(ov_model, "CPU", config)
        self._request = self.compiled.create_infer_request()
        # An output can carry several tensor names (e.g. 'confidence' and '/Reciprocal_output_0').
        outputs = set().union(*(o.get_names() for o in self.compiled.outputs))
        self._argmax_in_graph = "labels" in outputs
        if self._argmax_in_graph:
            self._labels = self.compiled.output("labels")
            self._confidence = None
            if confidence:
                if "confidence" not in outputs:
                    raise BackendError(
                        "confidence was requested but this ONNX file has the argmax in the graph "
                        "and no 'confidence' output; re-export it with --confidence")
                self._confidence = self.compiled.output("confidence")
        else:
            self._logits = self.compiled.outputs[0]

    def run(self, blob: np.ndarray) -> NetworkOutput:
        results = self._request.infer({0: blob})
        if not self._argmax_in_graph:
            return labels_from_logits(results[self._logits], self.computes_confidence)
        labels = results[self._labels][0]
        if labels.dtype != np.uint8:
            labels = labels.astype(np.uint8)
        # infer() returns views of the request's buffers, reused by the next call: copy.
        labels = labels.copy()
        confidence = results[self._confidence][0].copy() if self._confidence is not None else None
        return NetworkOutput(labels, confidence)

    def describe(self) -> str:
        return f"openvino[CPU] {self.precision}"
