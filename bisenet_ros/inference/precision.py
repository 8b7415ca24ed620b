"""``precision: auto``: the fastest precision the file, backend and CPU at hand support.

The CPU's instruction-set flags come from ``/proc/cpuinfo`` through :func:`cpu_flags`, the one
place tests replace (``monkeypatch.setattr(precision, "cpu_flags", lambda: {...})``) to check
the choice for CPUs other than the one they run on.

Rules (measured on this project's models; see ``docs/inference.md``):

- an int8 (QDQ) file runs in int8 on every backend that takes it;
- CUDA: fp16 with torch and with TensorRT; fp32 with onnxruntime's CUDA provider (it builds no
  fp16 from an fp32 file);
- CPU: bf16 with openvino or torch where the CPU computes bf16 natively (``avx512_bf16`` or
  ``amx_bf16``; emulated bf16 is many times slower than fp32), else fp32; onnxruntime's CPU
  provider has no bf16 kernels for these models, so fp32 (quantize the model for int8).
"""
from __future__ import annotations

from typing import Collection

#: Flags printed by the benchmark and used here.
RELEVANT_FLAGS = ("avx2", "fma", "avx512f", "avx_vnni", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_int8")
BF16_FLAGS = ("avx512_bf16", "amx_bf16")
VNNI_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")


def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags (``/proc/cpuinfo``'s ``flags`` line, Linux x86); empty elsewhere."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as stream:
            for line in stream:
                if line.startswith(("flags", "Features")):  # x86 / ARM
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def relevant_flags(flags: Collection[str]) -> list[str]:
    """The flags of :data:`RELEVANT_FLAGS` present in ``flags``, in that order."""
    return [f for f in RELEVANT_FLAGS if f in flags]


def choose_precision(backend: str, device: str, file_precision: str,
                     flags: Collection[str]) -> tuple[str, str]:
    """Pick the precision for ``precision: auto``.

    Args:
        backend: ``torch``, ``onnxruntime`` or ``openvino``.
        device: ``cpu``, ``cuda``, ``cuda:N`` or ``tensorrt``.
        file_precision: Precision of the weights (``int8`` for a quantized ONNX file, else ``fp32``).
        flags: CPU feature flags (see :func:`cpu_flags`).

    Returns:
        ``(precision, reason)``: the reason is one line, e.g.
        ``"bf16: CPU has avx512_bf16, backend openvino supports it"``.
    """
    if file_precision == "int8":
        vnni = [f for f in VNNI_FLAGS if f in flags]
        cpu = f"; CPU has {', '.join(vnni)}" if vnni and device == "cpu" else ""
        return "int8", f"int8: the model file is quantized (QDQ), backend {backend} runs it in int8{cpu}"
    if device != "cpu":
        if backend == "torch" or device == "tensorrt":
            return "fp16", f"fp16: {device} GPU, backend {backend} builds fp16 kernels"
        return "fp32", "fp32: onnxruntime's CUDA provider runs the fp32 file as is (use device=tensorrt for fp16)"
    bf16 = [f for f in BF16_FLAGS if f in flags]
    if backend == "onnxruntime":
        return "fp32", "fp32: onnxruntime has no bf16 on CPU (bisenet-ros quantize makes an int8 file)"
    if bf16:
        return "bf16", f"bf16: CPU has {', '.join(bf16)}, backend {backend} supports it"
    return "fp32", f"fp32: CPU has no native bf16 ({' or '.join(BF16_FLAGS)})"


__all__ = ["BF16_FLAGS", "RELEVANT_FLAGS", "VNNI_FLAGS", "choose_precision", "cpu_flags", "relevant_flags"]
