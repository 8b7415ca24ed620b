"""The small interface every backend implements, and the shared error type.

A backend owns one compiled network and turns a normalized ``(1, 3, H, W)`` float32 blob into
network-resolution labels (and, if asked at construction, confidences); :meth:`Backend.run_batch`
does the same for ``(N, 3, H, W)``, item by item unless a backend has a faster way
(:class:`OnnxBackend`: how the two backends that run an exported file split a batch into runs).
Everything else (resizing, colours, overlays) is backend-independent and lives in the engine.

Heavy packages (torch, onnxruntime, openvino) are imported only when a backend is constructed,
so importing :mod:`bisenet_ros.inference` stays cheap and a missing optional package only affects
the backend that needs it.
"""
from __future__ import annotations

import abc
import importlib
from dataclasses import dataclass
from types import ModuleType
from typing import Iterable, Sequence

import numpy as np

from bisenet_ros.runtime import UserError, available_cores


class BackendError(RuntimeError, UserError):
    """A backend cannot run as configured here (device, execution provider or precision missing).

    Raised at construction, never on the first frame. A missing Python package raises
    :class:`ImportError` instead (naming the pip package to install).
    """


@dataclass
class NetworkOutput:
    """What a backend returns for one frame.

    Attributes:
        labels: ``(H, W)`` uint8 class ids at network resolution.
        confidence: ``(H, W)`` float32 max softmax probability, or None if not computed.
    """

    labels: np.ndarray
    confidence: np.ndarray | None = None


class Backend(abc.ABC):
    """One compiled network on one device.

    Attributes:
        name: Backend name as in the config (``torch``, ``onnxruntime``, ``openvino``).
        device: The device it runs on, as in the config.
        precision: The precision in effect: ``fp32``, ``fp16``, ``bf16`` or ``int8`` (an int8 file).
        computes_confidence: Whether :meth:`run` returns confidences.
    """

    name: str = ""

    def __init__(self, device: str, precision: str, computes_confidence: bool) -> None:
        self.device = device
        self.precision = precision
        self.computes_confidence = computes_confidence

    @abc.abstractmethod
    def run(self, blob: np.ndarray) -> NetworkOutput:
        """Run the network.

        Args:
            blob: ``(1, 3, H, W)`` float32, normalized RGB, C-contiguous.

        Returns:
            Labels (and confidence if enabled) at network resolution ``H x W``.
        """

    def run_batch(self, blob: np.ndarray) -> list[NetworkOutput]:
        """Run the network on a batch of frames.

        Each item's labels equal those :meth:`run` gives for it alone. This default runs the items
        one after the other; backends override it where they have a faster way.

        Args:
            blob: ``(N, 3, H, W)`` float32, normalized RGB, C-contiguous.

        Returns:
            ``N`` outputs, in the order of the batch.
        """
        return [self.run(blob[i:i + 1]) for i in range(blob.shape[0])]

    def describe(self) -> str:
        """One line for logs and benchmark tables, e.g. ``onnxruntime[CPUExecutionProvider] fp32``."""
        return f"{self.name}:{self.device} {self.precision}"


class OnnxBackend(Backend):
    """A backend running an exported ONNX file (onnxruntime, OpenVINO): how their batches run.

    A file takes ``file_batch`` frames per run (None: any number). A batch runs as runs of
    ``file_batch`` frames (one for a dynamic file; the last run padded), which give each frame
    exactly its single-frame labels: one after the other on the frame-by-frame compilation, or,
    with more than one worker, side by side, as each runtime does that
    (:meth:`_run_side_by_side`).

    Attributes:
        file_batch: Frames per run the file takes: an int for a fixed batch, None for a dynamic one.
    """

    file_batch: int | None = 1
    #: Single-thread executions a batch may run side by side (1: one after the other).
    _workers: int = 1
    #: Whether the graph ends in the argmax (outputs ``labels`` [, ``confidence``]) or in ``logits``.
    _argmax_in_graph: bool = True
    #: Whether the runtime reuses its output buffers for the next run (then :meth:`_split` copies).
    _reuses_outputs: bool = False

    def run(self, blob: np.ndarray) -> NetworkOutput:
        return self._run_chunk(blob)[0]

    def run_batch(self, blob: np.ndarray) -> list[NetworkOutput]:
        chunks = batch_chunks(blob, self.file_batch)
        if self._workers > 1 and len(chunks) > 1:
            runs: Iterable[list[NetworkOutput]] = self._run_side_by_side(chunks)
        else:
            runs = map(self._run_chunk, chunks)
        return [out for outputs in runs for out in outputs]

    @abc.abstractmethod
    def _run_chunk(self, chunk: np.ndarray) -> list[NetworkOutput]:
        """Run at most ``file_batch`` frames (padded to it) on the frame-by-frame compilation.

        Returns:
            One output per frame of ``chunk``.
        """

    @abc.abstractmethod
    def _run_side_by_side(self, chunks: list[np.ndarray]) -> Iterable[list[NetworkOutput]]:
        """Run the chunks concurrently, one single-thread execution each.

        Returns:
            Per chunk, in order, one output per frame.
        """

    def _split(self, results: Sequence[np.ndarray], count: int) -> list[NetworkOutput]:
        """One :class:`NetworkOutput` per frame of the first ``count`` of a run's outputs.

        Args:
            results: The run's outputs: ``labels`` ``(B, H, W)`` (and ``confidence`` when
                computed), or ``logits`` ``(B, C, H, W)`` without the argmax in the graph.
            count: The frames of the run that are not padding.
        """
        if not self._argmax_in_graph:
            return [labels_from_logits(results[0][i:i + 1], self.computes_confidence) for i in range(count)]
        copy = self._reuses_outputs
        labels = results[0].astype(np.uint8, copy=copy)   # a cast copies anyway
        confidence = None
        if self.computes_confidence:
            confidence = results[1].copy() if copy else results[1]
        return [NetworkOutput(labels[i], None if confidence is None else confidence[i]) for i in range(count)]


def import_backend_package(module: str, backend: str, pip_hint: str) -> ModuleType:
    """Import an optional heavy package or raise an ImportError naming what to install.

    Args:
        module: Python module to import (e.g. ``"onnxruntime"``).
        backend: Backend name for the message.
        pip_hint: What to install, e.g. ``"pip install onnxruntime"``.
    """
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ImportError(
            f"backend={backend!r} needs the Python package '{module}', which is not installed "
            f"here ({exc}). Install it with: {pip_hint}; or choose another backend "
            "(torch, onnxruntime, openvino)") from exc


def labels_from_logits(logits: np.ndarray, with_confidence: bool) -> NetworkOutput:
    """Argmax (and max softmax) of ``(1, C, H, W)`` logits in NumPy.

    Slow path, used only for ONNX files exported without the argmax in the graph (third-party
    exports or ``--no-argmax``): a 19 x 512 x 1024 argmax costs tens of ms on a small CPU.
    """
    scores = logits[0]
    labels = scores.argmax(axis=0).astype(np.uint8)
    confidence = None
    if with_confidence:
        top = scores.max(axis=0)
        confidence = (1.0 / np.exp(scores - top).sum(axis=0)).astype(np.float32)
    return NetworkOutput(labels, confidence)


def batch_chunks(blob: np.ndarray, size: int | None) -> list[np.ndarray]:
    """Split an ``(N, 3, H, W)`` batch into runs of ``size`` frames (the last may be shorter);
    ``size`` None (a batch-dynamic file) gives runs of one frame, which on a CPU give each frame
    exactly its single-frame labels."""
    step = size or 1
    return [blob[start:start + step] for start in range(0, blob.shape[0], step)]


def pad_batch(blob: np.ndarray, size: int | None) -> np.ndarray:
    """``blob`` grown to ``size`` frames by repeating its last one (a fixed-batch file takes exactly
    that many; the extra outputs are dropped); unchanged when ``size`` is None or reached."""
    if size is None or blob.shape[0] >= size:
        return blob
    return np.concatenate([blob, np.repeat(blob[-1:], size - blob.shape[0], axis=0)])


def batch_workers(num_threads: int) -> int:
    """How many single-thread executions a CPU backend runs side by side for a batch: the
    configured thread count, or every usable core when it is 0 (auto)."""
    return num_threads if num_threads > 0 else available_cores()


def parse_cuda_index(device: str) -> int:
    """``'cuda'`` -> 0, ``'cuda:1'`` -> 1."""
    if device in ("cuda", "tensorrt"):
        return 0
    try:
        return int(device.split(":", 1)[1])
    except (IndexError, ValueError):
        raise ValueError(f"device={device!r}: expected 'cuda' or 'cuda:N'") from None
