"""PyTorch backend: eager inference on CPU or CUDA.

- fp32 everywhere; fp16 on CUDA (the whole model in half precision, as Jetson deployments do);
  bf16 on CPU as an explicit opt-in (fast on CPUs with AVX512_BF16/AMX, lower accuracy).
- channels_last memory format: oneDNN (CPU) and cuDNN (tensor cores) pick faster NHWC kernels.
- The argmax (and the optional max-softmax confidence) are computed on the device, so only a
  uint8 label map is copied back to the host.
- Conv -> BatchNorm pairs are folded into one convolution (inference-only arithmetic identity):
  measured 5-10% less eager time for BiSeNetV2 at 1024x512 on this CPU.
- Batches (:meth:`TorchBackend.run_batch`): on CUDA one forward pass of the whole batch (the GPU's
  lever). On the CPU frame by frame: torch's thread count is process-wide
  (``torch.set_num_threads``) and forwards run from several Python threads share one OpenMP pool,
  so torch cannot run single-thread executions side by side the way onnxruntime and OpenVINO do;
  a batched forward gains only a few percent there, and may change labels at float ties.
  For several cameras on a CPU use backend onnxruntime or openvino.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from bisenet_ros.inference.backends.base import (
    Backend, BackendError, NetworkOutput, import_backend_package)

PIP_HINT = "pip install torch==2.13.0 (CPU), or the JetPack torch wheel on a Jetson"


def import_torch() -> Any:
    return import_backend_package("torch", "torch", PIP_HINT)


class TorchBackend(Backend):
    """Runs a ``torch.nn.Module`` that maps ``(N, 3, H, W)`` normalized input to logits.

    Args:
        module: The model (put in eval mode here; not copied, so pass a model you do not train).
        device: ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.
        precision: ``"fp32"``; ``"fp16"`` needs CUDA; ``"bf16"`` is for CPU.
        confidence: Also compute the max softmax probability per pixel.
        num_threads: CPU threads (``torch.set_num_threads``, process-wide); 0 keeps torch's default.
        channels_last: Use the NHWC memory format.

    Raises:
        ImportError: torch is not installed.
        BackendError: CUDA asked for but not available, or an unsupported precision/device pair.
    """

    name = "torch"

    def __init__(self, module: Any, *, device: str = "cpu", precision: str = "fp32",
                 confidence: bool = False, num_threads: int = 0, channels_last: bool = True) -> None:
        super().__init__(device, precision, confidence)
        torch = import_torch()
        self._torch = torch
        if device.startswith("cuda"):
            if not torch.cuda.is_available():
                raise BackendError(
                    f"device={device!r}: this torch build ({torch.__version__}) sees no CUDA device; "
                    "use device='cpu' or install a CUDA-enabled torch")
            index = int(device.split(":", 1)[1]) if ":" in device else 0
            if index >= torch.cuda.device_count():
                raise BackendError(
                    f"device={device!r}: only {torch.cuda.device_count()} CUDA device(s) visible")
        elif device != "cpu":
            raise BackendError(f"backend='torch' supports device 'cpu', 'cuda' or 'cuda:N', not {device!r}")
        if precision == "int8":
            raise BackendError(
                "backend='torch' cannot run int8 models: make an int8 file with `bisenet-ros quantize` "
                "and run it with backend='onnxruntime' or 'openvino'")
        if precision == "fp16" and not device.startswith("cuda"):
            raise BackendError("precision='fp16' with backend='torch' needs a CUDA device")
        if precision == "bf16" and device == "cpu" and not cpu_has_fast_bf16(torch):
            # Without native bf16 (AVX512/AMX) oneDNN emulates it: measured 10-25x slower than fp32
            # on an AVX2 CPU. Refuse rather than silently run a "faster" option that is not.
            raise BackendError(
                f"precision='bf16' on this CPU ({torch.backends.cpu.get_cpu_capability()}, no native "
                "bf16) would be emulated and about 10x slower than fp32; use fp32")
        dtypes = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
        if precision not in dtypes:
            raise BackendError(f"precision={precision!r}: expected fp32, fp16 or bf16")
        if num_threads > 0:
            torch.set_num_threads(num_threads)
        self._dtype = dtypes[precision]
        self._device = torch.device(device)
        self._memory_format = torch.channels_last if channels_last else torch.contiguous_format
        module = module.eval()
        self.fused = fuse_conv_bn(module)
        module = module.to(device=self._device, dtype=self._dtype)
        self.module = module.to(memory_format=self._memory_format)

    def run(self, blob: np.ndarray) -> NetworkOutput:
        return self._forward(blob)[0]

    def run_batch(self, blob: np.ndarray) -> list[NetworkOutput]:
        if self._device.type == "cuda":
            return self._forward(blob)
        return super().run_batch(blob)   # CPU: frame by frame (see the module docstring)

    def _forward(self, blob: np.ndarray) -> list[NetworkOutput]:
        torch = self._torch
        with torch.inference_mode():
            x = torch.from_numpy(blob).to(self._device, non_blocking=True)
            x = x.to(dtype=self._dtype).contiguous(memory_format=self._memory_format)
            logits = self.module(x)
            if isinstance(logits, dict):  # a train-mode model with aux heads: take the main output
                logits = logits["out"]
            labels = logits.argmax(dim=1).to(torch.uint8).cpu().numpy()
            confidence = None
            if self.computes_confidence:
                # max softmax = 1 / sum(exp(l - max l)): one exp pass, in fp32 for accuracy.
                scores = logits.float()
                confidence = (1.0 / torch.exp(scores - scores.amax(dim=1, keepdim=True)).sum(dim=1))
                confidence = confidence.cpu().numpy()
            return [NetworkOutput(labels[i], None if confidence is None else confidence[i])
                    for i in range(labels.shape[0])]

    def describe(self) -> str:
        return f"torch:{self.device} {self.precision}"


def cpu_has_fast_bf16(torch: Any) -> bool:
    """Whether oneDNN has native bf16 kernels on this CPU (AVX512-BF16/AVX512-core or AMX)."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def fuse_conv_bn(module: Any) -> int:
    """Fold every ``Conv2d`` directly followed by a ``BatchNorm2d`` inside an ``nn.Sequential``
    into the convolution (in place; the BatchNorm becomes ``Identity``). Eval mode only.

    Only Sequential containers are touched because there the execution order is the declared
    order; a module calling ``self.conv`` then ``self.bn`` in its own ``forward`` is left alone.

    Returns:
        The number of pairs folded.
    """
    torch = import_torch()
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    count = 0
    for parent in list(module.modules()):
        if not isinstance(parent, torch.nn.Sequential):
            continue
        names = list(parent._modules)
        for first, second in zip(names, names[1:]):
            conv, bn = parent._modules[first], parent._modules[second]
            if (isinstance(conv, torch.nn.Conv2d) and isinstance(bn, torch.nn.BatchNorm2d)
                    and bn.track_running_stats and bn.running_mean is not None
                    and conv.out_channels == bn.num_features):
                parent._modules[first] = fuse_conv_bn_eval(conv, bn)
                parent._modules[second] = torch.nn.Identity()
                count += 1
    return count
