"""The engine: :class:`Segmenter` turns a camera frame into labels, colours, overlay, drivable mask.

Per frame (all NumPy/OpenCV except the network)::

    frame (H x W x 3 uint8, BGR or RGB)
      -> fit to the network size (stretch or letterbox), normalize    [preprocess]
      -> network + argmax on the backend, uint8 labels at network res  [inference]
      -> labels back onto the camera frame (nearest), LUT colours,
         addWeighted overlay, LUT drivable mask, confidence           [postprocess]

:meth:`Segmenter.segment_batch` does the same for the frames of several cameras at once: each
frame is fitted into its slot of one ``(N, 3, H, W)`` blob, the backend runs the batch
(:meth:`~bisenet_ros.inference.backends.base.Backend.run_batch`), and each result is
post-processed against its own frame, so that every result equals the single-frame call's.

The Segmenter is not thread-safe (it reuses its input buffer): use one per thread.
"""
from __future__ import annotations

import copy
import functools
import hashlib
import logging
import os
import threading
import time
import warnings
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Collection, Mapping, Sequence

import numpy as np

from bisenet_ros.config import SegmenterConfig
from bisenet_ros.inference import postprocess as post
from bisenet_ros.inference.backends.base import Backend, BackendError, NetworkOutput
from bisenet_ros.inference.preprocess import FitGeometry, Normalizer, check_frame, fit_frame, fit_geometry
from bisenet_ros.inference.weights import is_onnx, resolve_config
from bisenet_ros.labels import IGNORE_ID, ClassSet, load_class_set, make_class_set

if TYPE_CHECKING:
    from bisenet_ros.inference.export import OnnxModelInfo

LOGGER = logging.getLogger(__name__)


class RandomWeightsWarning(UserWarning):
    """The engine runs a randomly initialised model (no ``weights``): its output is meaningless.

    A category of its own so that a caller that says so in its own words (the node's log) can
    silence this one and keep every other warning."""

#: Outputs a caller may ask for besides the always-computed labels.
OUTPUTS = frozenset({"color", "overlay", "drivable", "confidence"})


class _Deferred:
    """A field of :class:`SegmentationResult` computed on its first read (``color``,
    ``overlay``): the result's pending ``render`` runs once, under a lock, then the value stays."""

    _lock = threading.Lock()

    def __set_name__(self, owner: type, name: str) -> None:
        self._name = "_" + name

    def __get__(self, obj: Any, objtype: type | None = None) -> Any:
        if obj is None:
            return None  # the dataclass field's default
        if obj.__dict__.get("_render") is not None:
            with self._lock:
                render = obj.__dict__.get("_render")
                if render is not None:
                    render(obj)
                    # only now: a reader that saw it pending waits on the lock until set
                    obj.__dict__["_render"] = None
        return obj.__dict__.get(self._name)

    def __set__(self, obj: Any, value: Any) -> None:
        obj.__dict__[self._name] = value


@dataclass
class SegmentationResult:
    """Everything computed for one frame. Outputs not asked for are None.

    ``color`` and ``overlay`` are for people, not planners: the engine prepares them but builds
    them on their first read, in the reading thread. The node reads them on its visualization
    worker, so their cost (a colour resize and a blend at camera resolution, ~3.5 ms at 1080p)
    never delays ``labels``/``drivable`` consumers; ``timings`` covers what was computed
    during the call.

    Attributes:
        labels: ``H x W`` uint8 class ids (camera resolution, or network resolution if configured;
            letterbox padding is 255 at network resolution).
        color: ``H x W x 3`` uint8 colour mask, same channel order as the input frame.
        overlay: ``H x W x 3`` uint8 colour mask blended on the frame, same channel order.
        drivable: ``H x W`` uint8, 255 where the class is drivable, else 0.
        confidence: ``H x W`` float32 max softmax probability in 0..1.
        timings: Milliseconds per stage: ``preprocess``, ``inference``, ``postprocess``, ``total``.
        color_order: Channel order of ``color`` and ``overlay`` (that of the input frame).
    """

    labels: np.ndarray
    color: np.ndarray | None = _Deferred()  # type: ignore[assignment]
    overlay: np.ndarray | None = _Deferred()  # type: ignore[assignment]
    drivable: np.ndarray | None = None
    confidence: np.ndarray | None = None
    timings: dict[str, float] = field(default_factory=dict)
    color_order: str = "bgr"

    def defer(self, render: Callable[["SegmentationResult"], None]) -> None:
        """Have ``render(self)`` set ``color``/``overlay`` when either is first read. It must
        use only arrays no later call changes (the backends return fresh arrays)."""
        self.__dict__["_render"] = render


def _make_config(config: SegmenterConfig | Mapping[str, Any] | str | os.PathLike[str] | None,
                 overrides: Mapping[str, Any]) -> SegmenterConfig:
    if config is None:
        return SegmenterConfig.from_dict(dict(overrides))
    if isinstance(config, SegmenterConfig):
        if overrides:
            return config.replace(**overrides)
        config.validate()
        return config
    if isinstance(config, Mapping):
        return SegmenterConfig.from_dict({**config, **overrides})
    if isinstance(config, (str, os.PathLike)):
        return SegmenterConfig.from_yaml(config, **overrides)
    raise ValueError(
        f"config: expected a SegmenterConfig, a mapping of option names or a YAML path, got {type(config).__name__}")


def load_torch_model(config: SegmenterConfig) -> Any:
    """Build ``config.variant`` and load ``config.weights`` (random init, with a warning, if None)."""
    from bisenet_ros.models import build_model

    if config.weights is None:
        warnings.warn(
            f"no weights given: {config.variant} is randomly initialised and its output is "
            "meaningless (use this for tests and benchmarks only)", RandomWeightsWarning,
            stacklevel=3)
    elif not os.path.isfile(config.weights):
        raise ValueError(f"weights={config.weights!r}: no such file")
    return build_model(config.variant, config.num_classes, weights=config.weights)


def resolve_class_set(config: SegmenterConfig, model: Any = None) -> ClassSet:
    """The class set: a YAML ``class_set`` wins; else names stored in the checkpoint; else Cityscapes.

    Raises:
        ValueError: The class count does not match the model's.
    """
    info = getattr(model, "checkpoint_info", None)
    if "class_set" not in config.explicit and info is not None and info.class_names:
        if len(info.class_names) != config.num_classes:
            raise ValueError(
                f"{info.path} stores {len(info.class_names)} class names for num_classes={config.num_classes}")
        return make_class_set(info.class_names, info.palette, name=os.path.basename(info.path))
    if config.class_set == "cityscapes" and config.num_classes != 19:
        raise ValueError(
            f"num_classes={config.num_classes} but class_set='cityscapes' has 19 classes: give "
            "class_set as a YAML file with 'names' (and 'palette'), or weights that store class names")
    return load_class_set(config.class_set, config.num_classes)


def export_checkpoint(config: SegmenterConfig, path: str, *, confidence: bool = False,
                      batch: int | None = 1, max_batch: int | None = None) -> str:
    """Export ``config``'s checkpoint (``weights``; random if None) to ONNX at ``config.resolution``
    (the checkpoint's own size unless one was given) with the argmax in the graph and its metadata
    embedded; returns ``path``. ``batch`` and ``max_batch`` as for
    :func:`~bisenet_ros.inference.export.export_onnx_bytes`."""
    from bisenet_ros.inference.export import export_onnx

    config = resolve_config(config)
    model = load_torch_model(config)
    export_onnx(model, path, resolution=config.resolution, class_set=resolve_class_set(config, model),
                confidence=confidence, batch=batch, max_batch=max_batch)
    return path


def file_digest(path: str | os.PathLike[str], length: int = 12) -> str:
    """The first ``length`` hex digits of the SHA-256 of a file (identifies weights in reports).

    Raises:
        OSError: The file cannot be read.
    """
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:length]


def engine_provenance(engine: Any) -> dict[str, Any]:
    """:meth:`Segmenter.provenance` of ``engine``; for another engine object (a test double, a
    custom engine) what its ``config`` says, with the class count from its ``class_names``.

    Returns:
        A dict with at least ``variant``, ``resolution``, ``num_classes``, ``backend``, ``device``
        and ``precision`` (None where the engine does not say).
    """
    provenance = getattr(engine, "provenance", None)
    if callable(provenance):
        return dict(provenance())
    config = getattr(engine, "config", None)
    names = getattr(engine, "class_names", None)
    fields = ("variant", "resolution", "backend", "device", "precision", "resize", "weights")
    out: dict[str, Any] = {name: getattr(config, name, None) for name in fields}
    if out["resolution"] is not None:
        out["resolution"] = list(out["resolution"])
    out["num_classes"] = len(names) if names is not None else getattr(config, "num_classes", None)
    return out


def model_summary(engine: Mapping[str, Any]) -> str:
    """One line naming the model that ran, from an engine provenance dict
    (:func:`engine_provenance`)."""
    weights = engine.get("weights") or "random weights"
    if engine.get("weights_sha256"):
        weights += f" (sha256 {engine['weights_sha256']})"
    return (f"{engine.get('variant', '?')} at {'x'.join(map(str, engine.get('resolution') or ['?']))}, "
            f"{engine.get('num_classes', '?')} classes, {engine.get('backend', '?')}/{engine.get('device', '?')} "
            f"{engine.get('precision') or ''}, {weights}")


class Segmenter:
    """Semantic segmentation of camera frames with a BiSeNet/STDC model on a chosen backend.

    Build it from a :class:`~bisenet_ros.config.SegmenterConfig`, a plain mapping or YAML file
    with the same option names, and/or keyword overrides::

        seg = Segmenter(variant="bisenetv2", weights="model_final_v2_city.pth", backend="onnxruntime")
        seg = Segmenter("config/segmenter.yaml", device="cuda")
        seg = Segmenter(weights="bisenetv2.onnx", backend="openvino")   # metadata from the file

    Everything that can fail (missing package, device, execution provider, unknown class name,
    bad weights) fails here, not on the first frame.

    Args:
        config: Options (see :class:`~bisenet_ros.config.SegmenterConfig`); None = defaults.
        model: An already-built torch model to use instead of building ``variant``/``weights``
            (e.g. from training). It needs a ``normalization`` attribute.
        **overrides: Option values that win over ``config``.

    Raises:
        ValueError: Invalid option or weights (the message names the option and what is expected).
        ImportError: The backend's package is not installed (naming the pip package).
        BackendError: The device/execution provider/precision is not available here.
    """

    def __init__(self, config: SegmenterConfig | Mapping[str, Any] | str | os.PathLike[str] | None = None,
                 *, model: Any = None, **overrides: Any) -> None:
        config = _make_config(config, overrides)
        onnx_file = is_onnx(config.weights)
        if onnx_file and model is not None:
            raise ValueError("give either model= or an .onnx weights file, not both")
        if model is None:
            # The file's variant, classes, size (and for an .onnx the backend) unless set.
            config = resolve_config(config)
        file_precision, batch_profile = "fp32", None
        if onnx_file:
            class_set, normalization, info = self._from_onnx_file(config)
            source = str(config.weights)
            file_precision = info.precision
            if info.batch is None:   # a batch-dynamic file: TensorRT builds for 1 to max_batch
                width, height = config.resolution
                batch_profile = (info.input_name, (3, height, width), info.max_batch)
        else:
            if model is None:
                model = load_torch_model(config)
            else:
                # The backend changes dtype/memory format in place: keep the caller's model intact.
                model = copy.deepcopy(model)
            if getattr(model, "normalization", None) is None:
                raise ValueError("model has no 'normalization' attribute (mean/std of its training input)")
            normalization = Normalizer(model.normalization.mean, model.normalization.std)
            if getattr(model, "num_classes", config.num_classes) != config.num_classes:
                config = config.replace(num_classes=int(model.num_classes))
            class_set = resolve_class_set(config, model)
            source = model
        config, reason = _resolve_precision(config, file_precision)
        #: Why ``precision: auto`` chose what it did (one line), or None when it was given.
        self.precision_reason = reason
        self.config = config
        self.class_set = class_set
        #: The input normalization carried by the weights (``mean``/``std`` attributes, RGB 0..1).
        self.normalization = normalization
        self._normalizer = normalization
        self.backend = self._make_backend(config, source, class_set, batch_profile)
        # Tables built once: colour LUT per channel order, drivable LUT (unknown class names fail here).
        self._color_luts = {order: class_set.color_lut(order) for order in ("rgb", "bgr")}
        self._drivable_lut = class_set.mask_lut(config.drivable_classes)
        self._default_outputs = frozenset({"color", "overlay", "drivable"} | ({"confidence"} if config.confidence else set()))
        self._geometry_cache: dict[tuple[int, int], FitGeometry] = {}
        self._warned_confidence = False
        width, height = config.resolution
        self._blob = np.empty((1, 3, height, width), dtype=np.float32)
        self._batch_blob = np.empty((0, 3, height, width), dtype=np.float32)
        self._provenance: dict[str, Any] | None = None

    # ------------------------------------------------------------------ construction helpers

    @classmethod
    def from_yaml(cls, path: str | os.PathLike[str], **overrides: Any) -> "Segmenter":
        """Build from a YAML file of options (a ROS parameter file works too); overrides win."""
        return cls(SegmenterConfig.from_yaml(path, **overrides))

    @staticmethod
    def _from_onnx_file(config: SegmenterConfig) -> tuple[ClassSet, Normalizer, "OnnxModelInfo"]:
        """The class set, normalization and metadata of ``config.weights``, an exported file."""
        from bisenet_ros.inference.export import read_onnx_info

        info = read_onnx_info(config.weights)  # type: ignore[arg-type]
        if (info.precision == "int8" and config.device == "tensorrt"
                and not (info.calibration or {}).get("activations_symmetric")):
            raise BackendError(
                f"{config.weights} has asymmetric uint8 activations, which TensorRT cannot run; "
                "quantize it for TensorRT with `bisenet-ros quantize ... --activations int8`")
        # Variant, class count and a fixed size came from the file (resolve_config).
        if "class_set" in config.explicit:
            class_set = load_class_set(config.class_set, info.num_classes)
        else:
            class_set = info.class_set(os.path.basename(str(config.weights)))

        return class_set, Normalizer(info.mean, info.std), info

    @staticmethod
    def _make_backend(config: SegmenterConfig, source: Any, class_set: ClassSet,
                      batch_profile: tuple[str, tuple[int, int, int], int] | None = None) -> Backend:
        if config.backend == "torch":
            from bisenet_ros.inference.backends.torch_backend import TorchBackend

            return TorchBackend(source, device=config.device, precision=config.precision,
                                confidence=config.confidence, num_threads=config.num_threads)
        # Check the package before spending seconds on an export.
        if config.backend == "onnxruntime":
            from bisenet_ros.inference.backends.onnxruntime_backend import (OnnxRuntimeBackend,
                                                                            import_onnxruntime)

            import_onnxruntime()
            factory: Any = lambda model: OnnxRuntimeBackend(  # noqa: E731
                model, device=config.device, precision=config.precision, confidence=config.confidence,
                num_threads=config.num_threads, trt_cache_dir=config.trt_cache_dir, batch_profile=batch_profile)
        elif config.backend == "openvino":
            from bisenet_ros.inference.backends.openvino_backend import OpenVinoBackend, import_openvino

            import_openvino()
            factory = lambda model: OpenVinoBackend(  # noqa: E731
                model, device=config.device, precision=config.precision, confidence=config.confidence,
                num_threads=config.num_threads)
        else:  # validated by SegmenterConfig; kept for a clear message if that ever changes
            raise BackendError(f"backend={config.backend!r}: expected torch, onnxruntime or openvino")
        if isinstance(source, str):
            return factory(source)
        # A torch model for an ONNX backend: export it in memory with the argmax in the graph.
        from bisenet_ros.inference.export import export_onnx_bytes

        data, _ = export_onnx_bytes(source, resolution=config.resolution, class_set=class_set,
                                    argmax=True, confidence=config.confidence)
        return factory(data)

    # ------------------------------------------------------------------ properties

    @property
    def class_names(self) -> list[str]:
        """Name per class id."""
        return list(self.class_set.names)

    @property
    def palette(self) -> np.ndarray:
        """``(num_classes, 3)`` uint8 RGB colour per class id."""
        return self.class_set.palette

    @property
    def network_size(self) -> tuple[int, int]:
        """``(width, height)`` of the network input."""
        return tuple(self.config.resolution)  # type: ignore[return-value]

    def describe(self) -> str:
        """One line for logs: variant, backend, device, precision, network size."""
        width, height = self.network_size
        return f"{self.config.variant} {width}x{height} on {self.backend.describe()} ({self.config.resize})"

    def provenance(self) -> dict[str, Any]:
        """What this engine actually runs, for reports, ``metrics.json``, diagnostics and the bench.

        Every field comes from the engine as built: an ``.onnx`` file's own variant, input size and
        classes win over the options it was built from, and ``precision`` is the backend's, i.e.
        the precision in effect.

        Returns:
            ``variant``, ``resolution`` (``[width, height]`` of the network input, pixels),
            ``num_classes``, ``class_set`` (name of the class list), ``backend``, ``device``,
            ``precision``, ``runtime`` (the backend's own one-line description, e.g. the ONNX
            Runtime execution provider), ``resize``, ``weights`` (path or None for random
            weights), ``weights_sha256`` (first 12 hex digits of the file's SHA-256, or None).
        """
        if self._provenance is None:
            weights = self.config.weights
            self._provenance = {
                "variant": self.config.variant, "resolution": list(self.network_size),
                "num_classes": len(self.class_set.names), "class_set": self.class_set.name,
                "backend": self.backend.name, "device": self.backend.device,
                "precision": self.backend.precision, "runtime": self.backend.describe(),
                "resize": self.config.resize, "weights": weights,
                "weights_sha256": file_digest(weights) if weights else None,
            }
            if self.precision_reason:
                self._provenance["precision_reason"] = self.precision_reason
        return dict(self._provenance)

    def geometry(self, frame_width: int, frame_height: int) -> FitGeometry:
        """How a frame of this size is placed in the network input (cached per size)."""
        key = (frame_width, frame_height)
        geometry = self._geometry_cache.get(key)
        if geometry is None:
            if len(self._geometry_cache) > 16:  # a camera changing size constantly: don't grow forever
                self._geometry_cache.clear()
            geometry = fit_geometry(key, self.network_size, self.config.resize)
            self._geometry_cache[key] = geometry
        return geometry

    # ------------------------------------------------------------------ inference

    def preprocess(self, frame: np.ndarray, color_order: str = "bgr") -> tuple[np.ndarray, np.ndarray, FitGeometry]:
        """Validate, fit and normalize a frame.

        Returns:
            ``(fitted, blob, geometry)``: the ``net_h x net_w x 3`` uint8 fitted frame, the
            ``(1, 3, net_h, net_w)`` float32 network input (a reused buffer) and the geometry.
        """
        return self._prepare(check_frame(frame, color_order), color_order)

    def _prepare(self, frame: np.ndarray, color_order: str,
                 out: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, FitGeometry]:
        """Fit and normalize a checked frame into ``out`` (a ``(1, 3, net_h, net_w)`` slot; default
        the reused single-frame buffer)."""
        geometry = self.geometry(frame.shape[1], frame.shape[0])
        fitted = fit_frame(frame, geometry, self._normalizer.pad_value(color_order))
        blob = self._normalizer(fitted, color_order, out=self._blob if out is None else out)
        return fitted, blob, geometry

    def __call__(self, frame: np.ndarray, color_order: str = "bgr",
                 outputs: Collection[str] | None = None) -> SegmentationResult:
        """Segment one frame.

        Args:
            frame: ``H x W x 3`` uint8 image.
            color_order: ``"bgr"`` (OpenCV, ``bgr8`` messages) or ``"rgb"`` (``rgb8`` messages).
            outputs: Subset of ``{"color", "overlay", "drivable", "confidence"}`` to compute;
                None = all configured (``confidence`` only if enabled). ``labels`` always.
                ``confidence`` of a Segmenter built without it is None (logged once).

        Returns:
            The :class:`SegmentationResult`.

        Raises:
            ValueError: Bad frame (shape, dtype, size), colour order or output name.
        """
        start = time.perf_counter()
        wanted = self._default_outputs if outputs is None else self._check_outputs(outputs)
        frame = check_frame(frame, color_order)   # contiguous from here on (the overlay needs it)
        fitted, blob, geometry = self._prepare(frame, color_order)
        t_pre = time.perf_counter()
        net = self.backend.run(blob)
        t_inf = time.perf_counter()
        result = self._finish(frame, fitted, geometry, net, wanted, color_order)
        end = time.perf_counter()
        result.timings = {
            "preprocess": (t_pre - start) * 1e3, "inference": (t_inf - t_pre) * 1e3,
            "postprocess": (end - t_inf) * 1e3, "total": (end - start) * 1e3,
        }
        return result

    def segment_batch(self, frames: Sequence[np.ndarray], color_orders: Sequence[str] | str = "bgr",
                      outputs: Collection[str] | None = None) -> list[SegmentationResult]:
        """Segment the frames of several cameras as one batch on the backend.

        Frames may differ in size and colour order: each is fitted to the network size on its
        own, into its slot of one ``(N, 3, net_h, net_w)`` blob. Each result is label for label
        what ``self(frame, color_order, outputs)`` returns for that frame alone.

        Args:
            frames: ``N`` frames, each ``H_i x W_i x 3`` uint8.
            color_orders: One colour order for all frames, or one per frame (``"bgr"``/``"rgb"``).
            outputs: As for :meth:`__call__`, the same for every frame.

        Returns:
            ``N`` results, in the order of ``frames``. Each result's ``timings`` has its own
            ``preprocess`` and ``postprocess`` milliseconds, ``inference`` (the whole batch's),
            ``total`` (from the call's start until this result was ready) and ``batch`` (``N``).

        Raises:
            ValueError: A bad frame (the message names its index), colour order or output name,
                or as many colour orders as frames not given. Nothing is run then.
        """
        start = time.perf_counter()
        count = len(frames)
        orders = [color_orders] * count if isinstance(color_orders, str) else list(color_orders)
        if len(orders) != count:
            raise ValueError(f"color_orders: expected one colour order or {count} (one per frame), got {len(orders)}")
        wanted = self._default_outputs if outputs is None else self._check_outputs(outputs)
        if count == 0:
            return []
        checked = []
        for index, (frame, order) in enumerate(zip(frames, orders)):
            try:
                checked.append(check_frame(frame, order))
            except ValueError as exc:
                raise ValueError(f"frames[{index}]: {exc}") from None
        if count == 1:  # the single-frame path (its reused buffer, the backend's run)
            result = self(checked[0], orders[0], wanted)
            result.timings["batch"] = 1.0
            return [result]
        # One buffer for the largest batch so far: the scheduler's batches vary in size (the
        # cameras with a new frame), and a fresh (N, 3, H, W) array per batch costs page faults.
        if self._batch_blob.shape[0] < count:
            self._batch_blob = np.empty((count, *self._blob.shape[1:]), dtype=np.float32)
        blob = self._batch_blob[:count]
        prepared = []
        for index, (frame, order) in enumerate(zip(checked, orders)):
            began = time.perf_counter()
            fitted, _, geometry = self._prepare(frame, order, out=blob[index:index + 1])
            prepared.append((fitted, geometry, (time.perf_counter() - began) * 1e3))
        t_pre = time.perf_counter()
        nets = self.backend.run_batch(blob)
        t_inf = time.perf_counter()
        if len(nets) != count:
            raise RuntimeError(f"backend returned {len(nets)} outputs for a batch of {count}: "
                               "Backend.run_batch must return one NetworkOutput per frame, in order")
        results = []
        for frame, order, (fitted, geometry, pre_ms), net in zip(checked, orders, prepared, nets):
            began = time.perf_counter()
            result = self._finish(frame, fitted, geometry, net, wanted, order)
            end = time.perf_counter()
            result.timings = {
                "preprocess": pre_ms, "inference": (t_inf - t_pre) * 1e3, "postprocess": (end - began) * 1e3,
                "total": (end - start) * 1e3, "batch": float(count),
            }
            results.append(result)
        return results

    def _finish(self, frame: np.ndarray, fitted: np.ndarray, geometry: FitGeometry, net: NetworkOutput,
                wanted: frozenset[str], color_order: str) -> SegmentationResult:
        """Check a backend's output for one frame and post-process it against that frame."""
        if net.labels.shape != fitted.shape[:2]:
            raise RuntimeError(
                f"backend returned labels of shape {net.labels.shape}, expected {fitted.shape[:2]} "
                "(network input size)")
        return self._postprocess(frame, fitted, geometry, net.labels, net.confidence, wanted, color_order)

    def _check_outputs(self, outputs: Collection[str]) -> frozenset[str]:
        if isinstance(outputs, str):
            outputs = {outputs}
        wanted = frozenset(outputs) - {"labels"}
        unknown = wanted - OUTPUTS
        if unknown:
            raise ValueError(
                f"outputs: unknown {sorted(unknown)}; expected a subset of {sorted(OUTPUTS)}")
        if "confidence" in wanted and not self.backend.computes_confidence:
            # The graph has no confidence output: answer None (as for any output not computed)
            # rather than fail every frame of a node whose confidence topic got a subscriber.
            if not self._warned_confidence:
                LOGGER.warning("confidence asked for, but this Segmenter was built without it "
                               "(confidence: true); returning None")
                self._warned_confidence = True
            wanted = wanted - {"confidence"}
        return wanted

    def _postprocess(self, frame: np.ndarray, fitted: np.ndarray, geometry: FitGeometry,
                     labels_net: np.ndarray, confidence_net: np.ndarray | None,
                     wanted: frozenset[str], color_order: str) -> SegmentationResult:
        result = SegmentationResult(labels=labels_net, color_order=color_order)
        if self.config.output_resolution == "network":
            result.labels = post.mark_padding(labels_net, geometry, IGNORE_ID)
            if "confidence" in wanted and confidence_net is not None:
                result.confidence = post.mark_padding(confidence_net, geometry, 0.0)
        else:
            result.labels = post.to_camera(labels_net, geometry)
            if "confidence" in wanted and confidence_net is not None:
                result.confidence = post.to_camera(confidence_net, geometry)
        if "color" in wanted or "overlay" in wanted:
            result.defer(functools.partial(self._visualize, frame=frame, fitted=fitted,
                                           geometry=geometry, labels_net=labels_net,
                                           wanted=wanted, lut=self._color_luts[color_order]))
        if "drivable" in wanted:
            result.drivable = post.binary_mask(result.labels, self._drivable_lut)
        return result

    def _visualize(self, result: SegmentationResult, *, frame: np.ndarray, fitted: np.ndarray,
                   geometry: FitGeometry, labels_net: np.ndarray, wanted: frozenset[str],
                   lut: np.ndarray) -> None:
        """Set ``result.color``/``overlay`` (run on their first read, see SegmentationResult)."""
        if self.config.output_resolution == "network":
            color = post.colorize(result.labels, lut)
            base = fitted
        else:
            # Colour the small network-resolution map (content region, no letterbox padding).
            color = post.colorize(post.crop_to_content(labels_net, geometry), lut)
            if self.config.visualization_resolution == "network":
                # For people only: the network-sized picture costs a quarter of the
                # camera-sized one at 1080p to build and encode.
                base = post.crop_to_content(fitted, geometry)
            else:
                # Then resize: identical pixels (nearest only copies), a sixth of the LUT
                # work at 1080p.
                color, base = post.to_camera(color, _content_geometry(geometry)), frame
        result.color = color if "color" in wanted else None
        if "overlay" in wanted:
            result.overlay = post.blend(base, color, self.config.overlay_alpha)

    def warmup(self, frame_size: tuple[int, int] = (640, 480), runs: int = 1) -> None:
        """Run a few blank frames so the first real frame is not slowed by lazy initialisation."""
        frame = np.zeros((frame_size[1], frame_size[0], 3), dtype=np.uint8)
        for _ in range(runs):
            self(frame)


def _resolve_precision(config: SegmenterConfig, file_precision: str) -> tuple[SegmenterConfig, str | None]:
    """The precision in effect: ``auto`` resolved for this CPU; an int8 file runs in int8.

    Returns:
        The config with a concrete precision, and the reason when ``auto`` chose it.

    Raises:
        BackendError: int8 asked for without an int8 file, or an int8 file with bf16/fp16.
    """
    from bisenet_ros.inference import precision as choice  # module attribute: tests replace cpu_flags

    if config.precision == "auto":
        chosen, reason = choice.choose_precision(config.backend, config.device, file_precision,
                                                 choice.cpu_flags())
        LOGGER.info("precision auto -> %s", reason)
        return config.replace(precision=chosen), reason
    if file_precision == "int8":
        if config.precision not in ("fp32", "int8"):  # fp32 is the default: the file decides
            raise BackendError(
                f"precision={config.precision!r}: {config.weights} is an int8 model; use precision "
                "int8 (or auto), or the fp32 export for fp16/bf16")
        return config.replace(precision="int8"), None
    if config.precision == "int8":
        raise BackendError(
            "precision='int8' needs an int8 model file: make one with `bisenet-ros quantize` and run "
            "it with backend='onnxruntime' or 'openvino' (weights=model_int8.onnx)")
    return config, None


def _content_geometry(geometry: FitGeometry) -> FitGeometry:
    # Geometry of an array already cropped to the content region.
    return FitGeometry(geometry.frame_size, geometry.content_size, geometry.content_size, (0, 0))
