"""Inference backends, one module each (torch, onnxruntime, openvino), behind :class:`Backend`.

Nothing heavy is imported here: each backend module imports its package when constructed.
"""
from bisenet_ros.inference.backends.base import Backend, BackendError, NetworkOutput

#: Backend name -> (module, class name).
BACKENDS = {
    "torch": ("bisenet_ros.inference.backends.torch_backend", "TorchBackend"),
    "onnxruntime": ("bisenet_ros.inference.backends.onnxruntime_backend", "OnnxRuntimeBackend"),
    "openvino": ("bisenet_ros.inference.backends.openvino_backend", "OpenVinoBackend"),
}

__all__ = ["BACKENDS", "Backend", "BackendError", "NetworkOutput"]
