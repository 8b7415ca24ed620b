"""OpenVINO backend (CPU).

OpenVINO picks bf16 by default on CPUs with AVX512_BF16/AMX (this development machine has them),
which changes the labels of some pixels. fp32 is therefore set explicitly with
``INFERENCE_PRECISION_HINT=f32``, and bf16 is an explicit opt-in (about 1.7x faster here).

An int8 (QDQ) file from ``bisenet-ros quantize`` runs its quantized layers in int8 (OpenVINO's
low-precision transformations read the Q/DQ pairs); the float remainder keeps the f32 hint:
measured on BiSeNetV2 1024x512 here, the f32 hint was faster than bf16 for the int8 file.

Batches (:meth:`OpenVinoBackend.run_batch`): one frame at a time with the LATENCY hint keeps
every core on one frame, and its threads wait for each other between layers. For the frames of
several cameras, a second compilation of the model with the THROUGHPUT hint runs one CPU
*stream* per core (one thread each), fed by an ``AsyncInferQueue``: single-thread executions side
by side in one process, one frame per request. It is compiled on the first batch, so the
single-camera path keeps its own compiled model, unchanged.
"""
from __future__ import annotations

from typing import Any, Iterable

import numpy as np

from bisenet_ros.inference.backends.base import (
    BackendError, NetworkOutput, OnnxBackend, batch_workers, import_backend_package, pad_batch)

PIP_HINT = "pip install openvino"


def import_openvino() -> Any:
    return import_backend_package("openvino", "openvino", PIP_HINT)


class OpenVinoBackend(OnnxBackend):
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
        self._core = core
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
        self._config = config
        self._model = model   # for the throughput compilation, made on the first batch
        self._workers = batch_workers(num_threads)
        batch = self.compiled.inputs[0].get_partial_shape()[0]
        self.file_batch = batch.get_length() if batch.is_static else None
        #: The THROUGHPUT compilation batches run on (None until the first batch).
        self.batch_compiled: Any = None
        self._queue: Any = None
        # An output can carry several tensor names (e.g. 'confidence' and '/Reciprocal_output_0').
        outputs = set().union(*(o.get_names() for o in self.compiled.outputs))
        self._argmax_in_graph = "labels" in outputs
        if confidence and self._argmax_in_graph and "confidence" not in outputs:
            raise BackendError(
                "confidence was requested but this ONNX file has the argmax in the graph "
                "and no 'confidence' output; re-export it with --confidence")
        #: Names of the outputs read per inference: labels (and confidence), or the logits.
        self._names = (["labels", "confidence"] if confidence else ["labels"]) if self._argmax_in_graph \
            else [self.compiled.outputs[0].get_any_name()]

    # infer() returns views of the request's buffers, reused by the next call: _split copies.
    _reuses_outputs = True

    def _run_chunk(self, chunk: np.ndarray) -> list[NetworkOutput]:
        results = self._request.infer({0: pad_batch(chunk, self.file_batch)})
        return self._split([results[name] for name in self._names], len(chunk))

    def _run_side_by_side(self, chunks: list[np.ndarray]) -> Iterable[list[NetworkOutput]]:
        queue = self._throughput_queue()
        outputs: list[list[NetworkOutput]] = [[] for _ in chunks]

        def done(request: Any, index: int) -> None:
            # Runs on an OpenVINO thread, before the request takes its next job (_split copies).
            outputs[index] = self._split([request.get_tensor(name).data for name in self._names],
                                         len(chunks[index]))

        queue.set_callback(done)
        for index, chunk in enumerate(chunks):
            queue.start_async({0: pad_batch(chunk, self.file_batch)}, index)
        queue.wait_all()
        return outputs

    def _throughput_queue(self) -> Any:
        """One stream per worker, one thread each, and an infer queue with one request per stream."""
        if self._queue is None:
            import openvino as ov

            config = dict(self._config, PERFORMANCE_HINT="THROUGHPUT", NUM_STREAMS=self._workers,
                          INFERENCE_NUM_THREADS=self._workers)
            self.batch_compiled = self._core.compile_model(self._core.read_model(self._model), "CPU", config)
            self._queue = ov.AsyncInferQueue(self.batch_compiled, self._workers)
        return self._queue

    def describe(self) -> str:
        return f"openvino[CPU] {self.precision}"
