"""ONNX Runtime backend: CPU, CUDA and TensorRT execution providers.

On a Jetson this is the deploy path: ``device='tensorrt'`` builds TensorRT engines on the target
the first time (minutes) and caches them in ``trt_cache_dir``; later starts load the cached engine
in seconds. fp16 is a TensorRT build flag (``trt_fp16_enable``), so it needs ``device='tensorrt'``.

int8 files (``bisenet-ros quantize``: QDQ, precision ``int8``) run on every provider. The CPU
provider fuses each Q/DQ pair with its operator into an integer kernel (VNNI where the CPU has
it). For TensorRT the file is an explicitly quantized network: TensorRT honours the Q/DQ
placement and needs no calibration table; ``trt_int8_enable`` lets it pick int8 kernels for the
quantized layers and ``trt_fp16_enable`` runs the float remainder (upsampling, argmax) in fp16.
TensorRT takes only symmetric (zero point 0) activations: quantize with ``--activations int8``.

Batches (:meth:`OnnxRuntimeBackend.run_batch`, the frames of several cameras):

- On the CPU, one batched run gains little (about 4% for STDC1 on 2 cores): a convolution's
  threads already keep the cores busy, and they wait for each other between operators. What
  pays is running several *single-thread* executions side by side, one frame each. The backend
  does that with a second session of the same model, built on the first batch, with one
  intra-op thread, which a small pool of Python threads runs concurrently (``Run`` is
  thread-safe and releases the GIL): one runtime, no locks between the frames. A single-camera
  engine never builds it, so its path is unchanged. Once batches run, the frame-by-frame session
  is rebuilt so that both sessions take their activation memory from one arena shared by the
  process (``session.use_env_allocators``, registered once, growing by what is asked rather than
  to the next power of two): measured for STDC1 1024x512 with two frames side by side, 564 MB
  instead of 708 MB of RSS, and no slower. (Sharing the weights themselves between the two
  sessions would not help: the optimizer re-lays out the convolution weights per session.)
- On CUDA/TensorRT, batching is the lever: a batch-dynamic file runs the whole batch in one
  ``Run`` (TensorRT with an optimization profile of min 1, opt and max the file's ``max_batch``),
  a fixed-batch-N file in runs of N (the last one padded), a batch-1 file frame by frame.
"""
from __future__ import annotations

import logging
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Iterable

import numpy as np

from bisenet_ros.inference.backends.base import (
    BackendError, NetworkOutput, OnnxBackend, batch_workers, import_backend_package, pad_batch,
    parse_cuda_index)

LOGGER = logging.getLogger(__name__)
PIP_HINT = ("pip install onnxruntime (CPU) or pip install onnxruntime-gpu (CUDA/TensorRT; on a "
            "Jetson use the JetPack wheel from the Jetson Zoo)")
DEFAULT_TRT_CACHE = os.path.join("~", ".cache", "bisenet_ros", "tensorrt")


def import_onnxruntime() -> Any:
    return import_backend_package("onnxruntime", "onnxruntime", PIP_HINT)


def execution_providers(device: str, precision: str, trt_cache_dir: str | None,
                        batch_profile: tuple[str, tuple[int, int, int], int] | None = None) -> list[Any]:
    """The provider list for a device, most preferred first (ORT falls back along the list for
    nodes a provider cannot run, e.g. TensorRT -> CUDA -> CPU).

    Args:
        device: ``cpu``, ``cuda``, ``cuda:N`` or ``tensorrt``.
        precision: ``fp32``; ``fp16`` only with TensorRT; ``int8`` for an int8 (QDQ) file.
        trt_cache_dir: Engine cache directory for TensorRT (the backend creates it).
        batch_profile: For a batch-dynamic file on TensorRT: ``(input name, (3, height, width),
            max batch)``; the engine is built for batches 1 to max batch, tuned for max batch.
    """
    if precision == "bf16":
        raise BackendError(
            "precision='bf16' is not supported by backend='onnxruntime'; use backend='openvino' "
            "(CPU bf16) or backend='torch'")
    if device == "cpu":
        if precision not in ("fp32", "int8"):
            raise BackendError(f"precision={precision!r} on CPU with onnxruntime: fp32, or int8 for an int8 file")
        return ["CPUExecutionProvider"]
    index = parse_cuda_index(device)
    cuda = ("CUDAExecutionProvider", {"device_id": index})
    if device != "tensorrt":
        if precision == "fp16":
            raise BackendError(
                "precision='fp16' with backend='onnxruntime' needs device='tensorrt' (TensorRT "
                "builds fp16 engines from the fp32 ONNX file); with device='cuda' use fp32, or "
                "backend='torch' for CUDA fp16")
        return [cuda, "CPUExecutionProvider"]
    cache = os.path.abspath(os.path.expanduser(trt_cache_dir or DEFAULT_TRT_CACHE))
    trt_options = {
        "device_id": index,
        "trt_fp16_enable": precision in ("fp16", "int8"),
        # A QDQ file is explicitly quantized: int8 kernels for the Q/DQ layers, no calibration table.
        "trt_int8_enable": precision == "int8",
        # Engine building takes minutes on a Jetson: cache engines (keyed by model and options)
        # and the per-layer timing cache so that later starts take seconds.
        "trt_engine_cache_enable": True,
        "trt_engine_cache_path": cache,
        "trt_timing_cache_enable": True,
        "trt_timing_cache_path": cache,
    }
    if batch_profile is not None:
        name, (channels, height, width), largest = batch_profile
        shape = f"x{channels}x{height}x{width}"
        trt_options.update({"trt_profile_min_shapes": f"{name}:1{shape}",
                            "trt_profile_opt_shapes": f"{name}:{largest}{shape}",
                            "trt_profile_max_shapes": f"{name}:{largest}{shape}"})
    return [("TensorrtExecutionProvider", trt_options), cuda, "CPUExecutionProvider"]


_SHARED_ARENA_LOCK = threading.Lock()
_shared_arena_registered = False


def _register_shared_cpu_arena(ort: Any) -> None:
    """Register, once per process, the CPU arena the CPU sessions share (see the module docstring)."""
    global _shared_arena_registered
    with _SHARED_ARENA_LOCK:
        if _shared_arena_registered:
            return
        info = ort.OrtMemoryInfo("Cpu", ort.OrtAllocatorType.ORT_ARENA_ALLOCATOR, 0, ort.OrtMemType.DEFAULT)
        # arena_extend_strategy 1 = kSameAsRequested (the default, 0, rounds up to a power of two).
        ort.create_and_register_allocator(info, ort.OrtArenaCfg({"arena_extend_strategy": 1}))
        _shared_arena_registered = True


class OnnxRuntimeBackend(OnnxBackend):
    """Runs an ONNX model (path or serialized bytes) with ONNX Runtime.

    The model's outputs decide the fast path: a ``labels`` output (argmax in the graph, see
    :mod:`bisenet_ros.inference.export`) is used as is; a plain logits output is reduced in NumPy.

    Args:
        model: Path to an ``.onnx`` file or its bytes.
        device: ``cpu``, ``cuda``, ``cuda:N`` or ``tensorrt``.
        precision: ``fp32``, (TensorRT only) ``fp16``, or ``int8`` for an int8 (QDQ) file.
        confidence: Return confidences; needs a ``confidence`` output when the argmax is in the graph.
        num_threads: intra-op threads; 0 lets ONNX Runtime decide.
        trt_cache_dir: TensorRT engine cache directory (default ``~/.cache/bisenet_ros/tensorrt``).

    Raises:
        ImportError: onnxruntime is not installed.
        BackendError: The execution provider for ``device`` is not in this onnxruntime build, or
            the model lacks a needed output.
    """

    name = "onnxruntime"

    def __init__(self, model: str | bytes, *, device: str = "cpu", precision: str = "fp32",
                 confidence: bool = False, num_threads: int = 0, trt_cache_dir: str | None = None,
                 batch_profile: tuple[str, tuple[int, int, int], int] | None = None) -> None:
        super().__init__(device, precision, confidence)
        ort = import_onnxruntime()
        self._ort = ort
        providers = execution_providers(device, precision, trt_cache_dir,
                                        batch_profile if device == "tensorrt" else None)
        wanted = providers[0] if isinstance(providers[0], str) else providers[0][0]
        available = ort.get_available_providers()
        if wanted not in available:
            raise BackendError(
                f"device={device!r} needs the {wanted} of onnxruntime, but this onnxruntime "
                f"({ort.__version__}) only has {', '.join(available)}. Install onnxruntime-gpu "
                "(with CUDA/TensorRT libraries) or use device='cpu'")
        if wanted == "TensorrtExecutionProvider":
            cache = dict(providers[0][1])["trt_engine_cache_path"]
            os.makedirs(cache, exist_ok=True)
            LOGGER.info("TensorRT engine cache: %s (the first start builds engines: minutes)", cache)
        # On the CPU, a confidence output nobody reads costs about 10% of every run: build the
        # sessions without it (see without_outputs). GPU engines run the file as it is: their
        # TensorRT engine cache is keyed by it, and the cost was measured on the CPU only.
        self._unread = ("confidence",) if device == "cpu" and not confidence else ()
        self.session = ort.InferenceSession(self._graph(model), sess_options=self._options(num_threads),
                                            providers=providers)
        # ORT silently falls back to CPU when e.g. the CUDA libraries fail to load: refuse that
        # here rather than running 20x slower than configured.
        if wanted not in self.session.get_providers():
            raise BackendError(
                f"onnxruntime could not initialise {wanted} for device={device!r} (active: "
                f"{', '.join(self.session.get_providers())}); check the CUDA/TensorRT installation")
        self._input = self.session.get_inputs()[0].name
        outputs = [o.name for o in self.session.get_outputs()]
        self._argmax_in_graph = "labels" in outputs
        if self._argmax_in_graph:
            self._outputs = ["labels"]
            if confidence:
                if "confidence" not in outputs:
                    raise BackendError(
                        "confidence was requested but this ONNX file has the argmax in the graph "
                        "and no 'confidence' output; re-export it with --confidence")
                self._outputs.append("confidence")
        else:
            self._outputs = [outputs[0]]
        self.input_shape = tuple(self.session.get_inputs()[0].shape)
        batch = self.input_shape[0] if self.input_shape else 1
        self.file_batch = batch if isinstance(batch, int) and batch > 0 else None
        self._model = model if device == "cpu" else None   # for the batch session, built on demand
        self._workers = batch_workers(num_threads) if device == "cpu" else 1
        self._num_threads = num_threads
        #: The one-thread session that batches run on side by side (CPU; None until the first batch).
        self.batch_session: Any = None
        self._pool: ThreadPoolExecutor | None = None

    def _graph(self, model: str | bytes) -> str | bytes:
        """What a session is built from: the model, or its graph without the unread outputs
        (derived from the file when sessions are built rather than held in memory)."""
        if self._unread and isinstance(model, str):
            from bisenet_ros.inference.export import without_outputs

            smaller = without_outputs(model, self._unread)
            if smaller is not None:
                return smaller
        return model

    def _options(self, num_threads: int, shared_arena: bool = False) -> Any:
        ort = self._ort
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if num_threads > 0:
            options.intra_op_num_threads = num_threads
        # ORT's worker threads spin after each run by default. Right after inference the engine
        # post-processes in OpenCV on the same cores, and a robot runs other nodes: spinning
        # threads steal that CPU. Measured here (2 cores, BiSeNetV2 1024x512, 1080p outputs):
        # pre+post 21-25 ms with spinning, 12-15 ms without, and inference no slower.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        if self.device == "cpu":
            # The memory pattern plans one block for all of a run's intermediate tensors and takes
            # it from the arena per run; without it the tensors come from the arena one by one and
            # are reused as they are freed, so the peak is lower. Measured here (STDC1 1024x512, one
            # one-thread session): 355 -> 288 MB of RSS fp32, 286 -> 246 MB int8; with two frames
            # side by side on the shared arena 604-634 -> 459-469 MB fp32, 576-617 -> 374 MB int8;
            # the CPU time per frame the same within the noise (364-398 ms fp32, 199-230 ms int8).
            options.enable_mem_pattern = False
        if shared_arena:
            _register_shared_cpu_arena(ort)
            options.add_session_config_entry("session.use_env_allocators", "1")
        return options

    def run_batch(self, blob: np.ndarray) -> list[NetworkOutput]:
        if self.device != "cpu" and self.file_batch is None:   # GPU: the whole batch in one Run
            return self._run_chunk(blob)
        # CPU (or a fixed-batch file): runs of the file's batch (see OnnxBackend).
        return super().run_batch(blob)

    def _run_chunk(self, chunk: np.ndarray) -> list[NetworkOutput]:
        return self._run_padded(self.session, chunk)

    def _run_side_by_side(self, chunks: list[np.ndarray]) -> Iterable[list[NetworkOutput]]:
        return self._parallel().map(lambda chunk: self._run_padded(self.batch_session, chunk), chunks)

    def _parallel(self) -> ThreadPoolExecutor:
        """The thread pool that runs single-thread executions side by side (see the module
        docstring) and its one-thread session, built on the first batch, when the frame-by-frame
        session is rebuilt on the shared arena."""
        if self._pool is None:
            cpu, graph = ["CPUExecutionProvider"], self._graph(self._model)
            self.session = self._ort.InferenceSession(
                graph, sess_options=self._options(self._num_threads, shared_arena=True), providers=cpu)
            self.batch_session = self._ort.InferenceSession(
                graph, sess_options=self._options(1, shared_arena=True), providers=cpu)
            self._pool = ThreadPoolExecutor(self._workers, thread_name_prefix="onnxruntime-batch")
        return self._pool

    def _run_padded(self, session: Any, blob: np.ndarray) -> list[NetworkOutput]:
        """Run a chunk of at most ``file_batch`` frames; outputs for its own frames only."""
        results = session.run(self._outputs, {self._input: pad_batch(blob, self.file_batch)})
        return self._split(results, blob.shape[0])

    def describe(self) -> str:
        return f"onnxruntime[{self.session.get_providers()[0]}] {self.precision}"
