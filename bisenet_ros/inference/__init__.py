"""The ROS-free inference engine: NumPy frame in, label map / colour mask / overlay / drivable mask out.

>>> from bisenet_ros.inference import Segmenter
>>> seg = Segmenter(variant="bisenetv2", weights="model_final_v2_city.pth", backend="onnxruntime")
>>> result = seg(frame_bgr)          # H x W x 3 uint8
>>> result.labels, result.overlay, result.timings

Importing this package imports NumPy and OpenCV only; torch, onnxruntime and openvino are imported
when a backend that needs them is constructed.
"""
from bisenet_ros.inference.backends.base import BackendError
from bisenet_ros.inference.segmenter import OUTPUTS, SegmentationResult, Segmenter, engine_provenance

__all__ = ["OUTPUTS", "BackendError", "SegmentationResult", "Segmenter", "engine_provenance"]
