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
"""
from __future__ import annotations

from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from bisenet_ros.codec import encode_image

__all__ = [
    "OUTPUT_TOPICS", "TOPIC_TO_ENGINE_OUTPUT", "COLOR_ENCODINGS", "CONFIDENCE_ENCODINGS",
    "engine_outputs_for", "result_to_image_fields", "label_info_fields", "diagnostic_values",
    "diagnostic_level",
]

#: Output topic names, relative to the node.
OUTPUT_TOPICS: tuple[str, ...] = ("mask", "color_mask", "overlay", "drivable_mask", "confidence")
#: Which engine output (``Segmenter(..., outputs=...)``) feeds which topic; ``mask`` is ``labels``,
#: which the engine always computes.
TOPIC_TO_ENGINE_OUTPUT: dict[str, str] = {
    "color_mask": "color", "overlay": "overlay", "drivable_mask": "drivable",
    "confidence": "confidence",
}
COLOR_ENCODINGS: tuple[str, ...] = ("bgr8", "rgb8")
CONFIDENCE_ENCODINGS: tuple[str, ...] = ("32FC1", "mono8")

# Diagnostic levels, as diagnostic_msgs/DiagnosticStatus (the node maps them to the message's
# constants, which are bytes in rclpy and ints in rosbags).
OK, WARN, ERROR = 0, 1, 2


def engine_outputs_for(topics: Iterable[str]) -> set[str]:
    """The engine outputs needed for the given topics (``mask`` needs none beyond the labels).

    Args:
        topics: output topic names from :data:`OUTPUT_TOPICS`.

    Returns:
        A subset of ``{"color", "overlay", "drivable", "confidence"}`` to pass as ``outputs=``.
    """
    unknown = set(topics) - set(OUTPUT_TOPICS)
    if unknown:
        raise ValueError(f"unknown output topic(s) {sorted(unknown)}; expected {OUTPUT_TOPICS}")
    return {TOPIC_TO_ENGINE_OUTPUT[t] for t in topics if t in TOPIC_TO_ENGINE_OUTPUT}


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
    return OK, "segmenting"


def diagnostic_values(stats: Mapping[str, Any], config: Any = None) -> list[tuple[str, str]]:
    """Diagnostics key/value pairs (``diagnostic_msgs/KeyValue``) for a stats snapshot.

    Keys: ``input_rate_hz``, ``output_rate_hz``, ``frames_received``, ``frames_processed``,
    ``dropped_stale``, ``dropped_superseded`` (replaced by a newer frame before inference),
    ``malformed``, ``errors``, ``grid_published``, ``grid_no_camera_info``,
    ``grid_no_transform``, ``grid_invalid`` (frames without ``~/drivable_grid``, by cause),
    ``latency_<stage>_ms`` (mean over the recent window, per engine
    stage plus ``decode``, ``publish`` and ``total``) and ``age_ms`` (frame stamp to publish).

    With ``config`` (a ``SegmenterConfig``), ``variant``, ``backend``, ``device``, ``precision``
    and ``resolution`` are appended, so a diagnostics viewer shows what is running.

    Args:
        stats: a :meth:`bisenet_ros.pipeline.PipelineStats.snapshot`.
        config: optional ``SegmenterConfig`` of the running engine.
    """
    values: list[tuple[str, str]] = [
        ("input_rate_hz", f"{stats.get('input_rate_hz', 0.0):.2f}"),
        ("output_rate_hz", f"{stats.get('output_rate_hz', 0.0):.2f}"),
    ]
    for key in ("frames_received", "frames_processed", "dropped_stale", "dropped_superseded",
                "malformed", "errors"):
        values.append((key, str(int(stats.get(key, 0)))))
    # The drivable grid: published, and frames without a grid by cause (pipeline.GRID_COUNTERS).
    for key in ("grid_published", "grid_no_camera_info", "grid_no_transform", "grid_invalid"):
        values.append((key, str(int(stats.get(key, 0)))))
    for stage, ms in stats.get("latency_ms", {}).items():
        values.append((f"latency_{stage}_ms", f"{ms:.2f}"))
    if stats.get("age_ms") is not None:
        values.append(("age_ms", f"{stats['age_ms']:.2f}"))
    if config is not None:
        values += [("variant", str(config.variant)), ("backend", str(config.backend)),
                   ("device", str(config.device)), ("precision", str(config.precision)),
                   ("resolution", "x".join(str(v) for v in config.resolution))]
    return values
