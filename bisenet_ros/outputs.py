"""What the node (and the replay) publishes for one segmentation result: pure NumPy.

The node and the bag replay both call these functions, so a live camera and a replayed bag give
byte-identical messages. Each function returns plain message *fields*; the caller adds the input
``header`` and builds its own message class (rclpy in the node, the rosbags typestore in the replay).

Topics (relative to the node, ``~/``):

=================  =============================================  ===================
topic              content                                        encoding
=================  =============================================  ===================
``mask``           class id per pixel                             mono8
``color_mask``     palette colour per pixel                       bgr8 (or rgb8)
``overlay``        camera frame blended with the colour mask      same as color_mask
``drivable_mask``  255 where the class is drivable, else 0        mono8
``confidence``     max softmax probability                        32FC1 (or mono8)
=================  =============================================  ===================

Compressed visualization (image_transport ``compressed`` style, sensor_msgs/CompressedImage):
``overlay/compressed`` (JPEG) and ``color_mask/compressed`` (PNG: exact palette colours), with
``format`` written as image_transport's compressed publisher writes it (e.g.
``"bgr8; jpeg compressed bgr8"``), so ``image_transport`` subscribers and rviz decode them.
"""
from __future__ import annotations

from typing import Any, Iterable, Mapping, Sequence

import cv2
import numpy as np

from bisenet_ros.codec import encode_image
from bisenet_ros.pipeline import COUNTERS
from bisenet_ros.transport import DDS_DOCS

__all__ = [
    "OUTPUT_TOPICS", "TOPIC_TO_ENGINE_OUTPUT", "COLOR_ENCODINGS", "CONFIDENCE_ENCODINGS",
    "engine_outputs_for", "result_to_image_fields", "label_info_fields", "diagnostic_values",
    "engine_values",
    "diagnostic_level", "COMPRESSED_TOPICS", "PLANNER_TOPICS", "VISUALIZATION_TOPICS",
    "compress_image", "result_to_compressed_fields",
]

#: Output topic names, relative to the node.
OUTPUT_TOPICS: tuple[str, ...] = ("mask", "color_mask", "overlay", "drivable_mask", "confidence")
#: Which engine output (``Segmenter(..., outputs=...)``) feeds which topic; ``mask`` is ``labels``,
#: which the engine always computes.
TOPIC_TO_ENGINE_OUTPUT: dict[str, str] = {
    "color_mask": "color", "overlay": "overlay", "drivable_mask": "drivable",
    "confidence": "confidence",
}
#: Compressed visualization topics -> (the Image topic whose pixels they carry, codec). JPEG for
#: the overlay (a photo: 5x smaller and ~5 ms at 1080p); PNG for the colour mask, whose exact
#: palette colours identify the classes.
COMPRESSED_TOPICS: dict[str, tuple[str, str]] = {
    "overlay/compressed": ("overlay", "jpeg"),
    "color_mask/compressed": ("color_mask", "png"),
}
#: What planners consume: built and published first on every frame, never rate-limited.
PLANNER_TOPICS: tuple[str, ...] = ("mask", "drivable_mask", "confidence")
#: For people (rviz): built after the planner topics, at most ``visualization_rate`` per second.
VISUALIZATION_TOPICS: tuple[str, ...] = ("overlay", "color_mask") + tuple(COMPRESSED_TOPICS)
COLOR_ENCODINGS: tuple[str, ...] = ("bgr8", "rgb8")
CONFIDENCE_ENCODINGS: tuple[str, ...] = ("32FC1", "mono8")

# Diagnostic levels, as diagnostic_msgs/DiagnosticStatus (the node maps them to the message's
# constants, which are bytes in rclpy and ints in rosbags).
OK, WARN, ERROR = 0, 1, 2


def engine_outputs_for(topics: Iterable[str]) -> set[str]:
    """The engine outputs needed for the given topics (``mask`` needs none beyond the labels).

    Args:
        topics: output topic names from :data:`OUTPUT_TOPICS` and :data:`COMPRESSED_TOPICS`.

    Returns:
        A subset of ``{"color", "overlay", "drivable", "confidence"}`` to pass as ``outputs=``.
    """
    known = OUTPUT_TOPICS + tuple(COMPRESSED_TOPICS)
    unknown = set(topics) - set(known)
    if unknown:
        raise ValueError(f"unknown output topic(s) {sorted(unknown)}; expected {known}")
    sources = {COMPRESSED_TOPICS[t][0] if t in COMPRESSED_TOPICS else t for t in topics}
    return {TOPIC_TO_ENGINE_OUTPUT[t] for t in sources if t in TOPIC_TO_ENGINE_OUTPUT}


def _in_order(image: np.ndarray, have: str, want: str) -> np.ndarray:
    # Engine colour outputs follow the input frame's order; the topic has a fixed encoding.
    return image if have == want else np.ascontiguousarray(image[:, :, ::-1])


def result_to_image_fields(
    result: Any,
    color_order: str,
    *,
    color_encoding: str = "bgr8",
    confidence_encoding: str = "32FC1",
    topics: Iterable[str] | None = None,
) -> dict[str, dict[str, Any]]:
    """Image message fields per output topic for one ``SegmentationResult``.

    Args:
        result: object with ``labels``, ``color``, ``overlay``, ``drivable``, ``confidence``
            (outputs not computed are None and are skipped).
        color_order: ``"rgb"`` or ``"bgr"``, the order of the frame given to the engine (its
            ``color``/``overlay`` outputs are in that order).
        color_encoding: ``bgr8`` or ``rgb8`` for ``color_mask`` and ``overlay``.
        confidence_encoding: ``32FC1`` (0..1) or ``mono8`` (0..255).
        topics: restrict to these topics (default: every topic whose output is present).

    Returns:
        ``{topic: fields}`` with fields from :func:`bisenet_ros.codec.encode_image`.
    """
    if color_encoding not in COLOR_ENCODINGS:
        raise ValueError(f"color encoding {color_encoding!r}: expected one of {COLOR_ENCODINGS}")
    if confidence_encoding not in CONFIDENCE_ENCODINGS:
        raise ValueError(
            f"confidence encoding {confidence_encoding!r}: expected one of {CONFIDENCE_ENCODINGS}")
    if color_order not in ("rgb", "bgr"):
        raise ValueError(f"color_order {color_order!r}: expected 'rgb' or 'bgr'")
    wanted = set(OUTPUT_TOPICS if topics is None else topics)
    want_order = color_encoding[:3]
    fields: dict[str, dict[str, Any]] = {}
    if "mask" in wanted and result.labels is not None:
        fields["mask"] = encode_image(np.asarray(result.labels, dtype=np.uint8), "mono8")
    if "color_mask" in wanted and result.color is not None:
        fields["color_mask"] = encode_image(_in_order(result.color, color_order, want_order),
                                            color_encoding)
    if "overlay" in wanted and result.overlay is not None:
        fields["overlay"] = encode_image(_in_order(result.overlay, color_order, want_order),
                                         color_encoding)
    if "drivable_mask" in wanted and result.drivable is not None:
        fields["drivable_mask"] = encode_image(np.asarray(result.drivable, dtype=np.uint8), "mono8")
    if "confidence" in wanted and getattr(result, "confidence", None) is not None:
        confidence = np.asarray(result.confidence, dtype=np.float32)
        if confidence_encoding == "mono8":
            confidence = np.clip(np.rint(confidence * 255.0), 0, 255).astype(np.uint8)
        fields["confidence"] = encode_image(confidence, confidence_encoding)
    return fields


def compress_image(image: np.ndarray, color_order: str, codec: str, *,
                   source_encoding: str = "bgr8", jpeg_quality: int = 80,
                   png_level: int = 1) -> dict[str, Any]:
    """``sensor_msgs/CompressedImage`` fields (without ``header``) for one colour image.

    Args:
        image: ``H x W x 3`` uint8 image.
        color_order: ``"rgb"`` or ``"bgr"``, the channel order of ``image``.
        codec: ``"jpeg"`` or ``"png"``.
        source_encoding: the raw topic's encoding; image_transport writes it first in
            ``format`` (``"<source>; <codec> compressed bgr8"``: the data is always BGR).
        jpeg_quality: 1..100 (image_transport's default is 95; 80 halves the size and the time).
        png_level: zlib level 0..9; 1 is the fastest that still compresses the flat colour mask.

    Returns:
        ``{"format": str, "data": 1-D uint8 array}`` (the encoder's own buffer, not copied).
    """
    if codec not in ("jpeg", "png"):
        raise ValueError(f"codec {codec!r}: expected 'jpeg' or 'png'")
    # cv2 encodes BGR; an rgb frame costs one channel swap (what image_transport's cv_bridge
    # conversion to bgr8 does too).
    bgr = image if color_order == "bgr" else cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
    if codec == "jpeg":
        ok, buffer = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, int(jpeg_quality)])
    else:
        params = [cv2.IMWRITE_PNG_COMPRESSION, int(png_level)]
        if hasattr(cv2, "IMWRITE_PNG_FILTER"):  # OpenCV >= 4.10
            # The colour mask is flat regions: PNG's row prediction filters buy little there,
            # and libpng's per-row choice among them took 3/4 of the time (1080p: 36 -> 11 ms).
            params += [cv2.IMWRITE_PNG_FILTER, cv2.IMWRITE_PNG_FILTER_NONE]
        ok, buffer = cv2.imencode(".png", bgr, params)
    if not ok:
        raise ValueError(f"OpenCV could not encode a {image.shape} image as {codec}")
    return {"format": f"{source_encoding}; {codec} compressed bgr8", "data": buffer.reshape(-1)}


def result_to_compressed_fields(
    result: Any,
    color_order: str,
    *,
    color_encoding: str = "bgr8",
    jpeg_quality: int = 80,
    topics: Iterable[str] | None = None,
) -> dict[str, dict[str, Any]]:
    """CompressedImage fields per compressed topic (:data:`COMPRESSED_TOPICS`) for one result.

    Args:
        result: object with ``overlay`` and ``color`` (None: the topic is skipped).
        color_order: channel order of the engine's colour outputs.
        color_encoding: the raw topics' encoding (``bgr8``/``rgb8``), named in ``format``.
        jpeg_quality: JPEG quality of ``overlay/compressed``.
        topics: restrict to these topics (default: all of :data:`COMPRESSED_TOPICS`).

    Returns:
        ``{topic: {"format", "data"}}`` from :func:`compress_image`.
    """
    if color_encoding not in COLOR_ENCODINGS:
        raise ValueError(f"color encoding {color_encoding!r}: expected one of {COLOR_ENCODINGS}")
    wanted = set(COMPRESSED_TOPICS if topics is None else topics) & set(COMPRESSED_TOPICS)
    images = {"overlay": result.overlay, "color_mask": result.color}
    fields = {}
    for topic in sorted(wanted):
        source, codec = COMPRESSED_TOPICS[topic]
        if images[source] is not None:
            fields[topic] = compress_image(images[source], color_order, codec,
                                           source_encoding=color_encoding,
                                           jpeg_quality=jpeg_quality)
    return fields


def label_info_fields(class_names: Sequence[str], threshold: float = 0.0) -> dict[str, Any]:
    """Fields of ``vision_msgs/msg/LabelInfo`` (without ``header``).

    Args:
        class_names: name per class id (the engine's ``class_names``).
        threshold: the LabelInfo confidence threshold (0: every pixel gets a class).

    Returns:
        ``{"class_map": [(class_id, class_name), ...], "threshold": float}``; the caller builds
        ``VisionClass(class_id=..., class_name=...)`` from each pair.
    """
    return {
        "class_map": [(int(i), str(name)) for i, name in enumerate(class_names)],
        "threshold": float(threshold),
    }


def diagnostic_level(stats: Mapping[str, Any]) -> tuple[int, str]:
    """Level (``OK``/``WARN``/``ERROR``) and one-line message for a stats snapshot.

    Args:
        stats: a :meth:`bisenet_ros.pipeline.PipelineStats.snapshot`.
    """
    if stats.get("last_error"):
        return ERROR, f"inference failing: {stats['last_error']}"
    if stats.get("frames_received", 0) == 0:
        return WARN, "no image received yet (check the topic name and QoS)"
    recent = stats.get("recent", {})
    if recent.get("malformed", 0):
        return WARN, f"{recent['malformed']} malformed message(s) skipped recently"
    if recent.get("dropped_stale", 0):
        return WARN, f"{recent['dropped_stale']} stale frame(s) dropped recently"
    if stats.get("recent_lost_upstream", 0):
        return WARN, (f"{stats['recent_lost_upstream']} camera frame(s) lost before the node "
                      f"recently (header stamp gaps): see {DDS_DOCS}")
    return OK, "segmenting"


def diagnostic_values(stats: Mapping[str, Any],
                      engine: Mapping[str, Any] | None = None) -> list[tuple[str, str]]:
    """Diagnostics key/value pairs (``diagnostic_msgs/KeyValue``) for a stats snapshot.

    Keys: ``input_rate_hz``, ``output_rate_hz``, ``frames_received``, ``frames_processed``,
    ``dropped_stale``, ``dropped_superseded`` (replaced by a newer frame before inference),
    ``malformed``, ``errors``, ``grid_published``, ``grid_no_camera_info``,
    ``grid_no_transform``, ``grid_invalid`` (frames without ``~/drivable_grid``, by cause),
    ``visualization_published``, ``visualization_skipped`` (the visualization worker's),
    ``latency_<stage>_ms`` (mean over the recent window, per engine stage plus ``decode``,
    ``publish_planner``, ``publish`` and ``total``, and the visualization worker's
    ``visualization`` and ``visualization_wait``) and ``age_ms`` (frame stamp to publish).
    From the camera's header stamps (:class:`bisenet_ros.transport.FrameGapEstimator`, when its
    snapshot is merged in): ``camera_rate_hz``, ``frames_lost_upstream`` (frames that never
    reached the node, estimated from stamp gaps), ``frame_gaps`` and ``arrival_ratio`` (recent
    received / (received + lost)).

    With ``engine``, its :func:`engine_values` are appended.

    Args:
        stats: a :meth:`bisenet_ros.pipeline.PipelineStats.snapshot`.
        engine: optional provenance mapping of the running engine.
    """
    values: list[tuple[str, str]] = [
        ("input_rate_hz", f"{stats.get('input_rate_hz', 0.0):.2f}"),
        ("output_rate_hz", f"{stats.get('output_rate_hz', 0.0):.2f}"),
    ]
    # Frame counters, the drivable grid's (published, no grid by cause) included.
    for key in COUNTERS:
        values.append((key, str(int(stats.get(key, 0)))))
    for stage, ms in stats.get("latency_ms", {}).items():
        values.append((f"latency_{stage}_ms", f"{ms:.2f}"))
    if stats.get("age_ms") is not None:
        values.append(("age_ms", f"{stats['age_ms']:.2f}"))
    if "frames_lost_upstream" in stats:
        rate, ratio = stats.get("camera_rate_hz"), stats.get("recent_arrival_ratio")
        values += [("camera_rate_hz", "unknown" if rate is None else f"{rate:.2f}"),
                   ("frames_lost_upstream", str(int(stats["frames_lost_upstream"]))),
                   ("frame_gaps", str(int(stats.get("frame_gaps", 0)))),
                   ("arrival_ratio", "unknown" if ratio is None else f"{ratio:.3f}")]
    if engine is not None:
        values += engine_values(engine)
    return values


def engine_values(engine: Mapping[str, Any]) -> list[tuple[str, str]]:
    """Diagnostics key/value pairs of the running engine's provenance
    (:func:`bisenet_ros.inference.engine_provenance`): ``variant``, ``resolution``,
    ``num_classes``, ``backend``, ``device``, ``precision`` (in effect), ``precision_reason`` and
    ``weights_sha256``, those known, so a diagnostics viewer shows what is actually running, not
    what was configured."""
    values = []
    for key in ("variant", "resolution", "num_classes", "backend", "device", "precision",
                "precision_reason", "weights_sha256"):
        value = engine.get(key)
        if value is not None:
            values.append((key, "x".join(str(v) for v in value) if key == "resolution" else str(value)))
    return values
