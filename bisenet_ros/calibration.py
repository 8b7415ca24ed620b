"""int8 calibration on a team's own data: frame sources and the quantize workflow
(``bisenet-ros quantize``, :mod:`bisenet_ros.commands.quantize`).

A calibration source is one of

- a rosbag2 bag (directory, ``.mcap`` or ``.db3``): its camera topic (``sensor_msgs/Image`` or
  ``CompressedImage``), optionally ground truth on a ``mono8`` labels topic matched by header stamp;
- a Cityscapes-layout root (``ROOT/leftImg8bit/SPLIT/CITY/*_leftImg8bit.png``, ground truth from
  ``ROOT/gtFine/...`` ``*_gtFine_labelTrainIds.png`` or ``*_gtFine_labelIds.png`` when present);
- a folder of images (``.png``, ``.jpg``, ``.jpeg``, ``.bmp``, searched recursively).

``N`` frames are sampled evenly over the source; every fifth one is held out for the quality
check, the rest calibrate. With a separate check source (``--check``, e.g. the validation split
of a Cityscapes root) all ``N`` calibrate and the check runs on that source's frames instead. Frames are pre-processed by the engine itself
(:meth:`~bisenet_ros.inference.Segmenter.preprocess`: same resize policy and normalization as at
run time). The quality check runs the fp32 and int8 models through the whole engine on the
held-out frames and reports the label agreement (and, with ground truth, both mIoUs).
"""
from __future__ import annotations

import json
import logging
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from bisenet_ros.fileio import NewOutputs, natural_key, write_atomic
from bisenet_ros.inference.frames import sample_indices
from bisenet_ros.inference.quantize import (
    CALIBRATION_METHODS, QuantizeSettings, check_quantizable, label_agreement, quantize_model,
    update_calibration)
from bisenet_ros.replay.bag import looks_like_bag

LOGGER = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")
#: Fewest usable frames: 4 to calibrate plus 1 held out for the quality check.
MIN_FRAMES = 5
HOLD_OUT_EVERY = 5


class CalibrationError(ValueError):
    """A calibration source that cannot be used (the message says what was expected)."""


@dataclass
class CalibrationFrame:
    """One frame of a calibration source.

    Attributes:
        image: ``H x W x 3`` uint8.
        color_order: ``"bgr"`` or ``"rgb"``.
        truth: ``H x W`` uint8 trainIds (255 = ignore), or None.
        name: Where it came from (file name or bag stamp), for messages.
    """

    image: np.ndarray
    color_order: str
    truth: np.ndarray | None = None
    name: str = ""


class CalibrationSource:
    """Frames for calibration from a bag, a Cityscapes root or an image folder (see the module
    docstring); the kind is recognised from the path.

    Args:
        path: The source.
        image_topic: The bag's camera topic (needed only when it has several image topics).
        labels_topic: A bag topic with ``mono8`` trainId masks (ground truth), optional.
        split: For a Cityscapes root, one split (``train``, ``val``...); None = all of them.

    Raises:
        CalibrationError: The path is none of the above, or holds no images / no such topic.
    """

    def __init__(self, path: str | os.PathLike[str], *, image_topic: str | None = None,
                 labels_topic: str | None = None, split: str | None = None) -> None:
        self.path = Path(path)
        self.split = split
        self.image_topic = image_topic
        self.labels_topic = labels_topic
        if not self.path.exists():
            raise CalibrationError(f"calibration source {self.path}: no such file or directory "
                                   "(expected a rosbag2 bag, a folder of images or a Cityscapes root)")
        is_bag = looks_like_bag(self.path)
        if (image_topic or labels_topic) and not is_bag:
            raise CalibrationError(f"--image-topic/--labels-topic apply to a bag, and {self.path} is not one")
        if is_bag:
            self.kind = "rosbag"
            self._files: list[Path] = []
            self._truth: list[Path | None] = []
        elif (self.path / "leftImg8bit").is_dir():
            self.kind = "cityscapes"
            self._files = sorted((self.path / "leftImg8bit").glob(f"{split or '*'}/*/*_leftImg8bit.png"),
                                 key=natural_key)
            self._truth = [self._cityscapes_truth(f) for f in self._files]
        elif self.path.is_dir():
            self.kind = "images"
            self._files = sorted((p for p in self.path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES),
                                 key=natural_key)
            self._truth = [None] * len(self._files)
        else:
            raise CalibrationError(f"calibration source {self.path}: expected a rosbag2 bag (directory with "
                                   "metadata.yaml, .mcap or .db3), a folder of images or a Cityscapes root")

    def _cityscapes_truth(self, image: Path) -> Path | None:
        rel = image.relative_to(self.path / "leftImg8bit")
        for suffix in ("_gtFine_labelTrainIds.png", "_gtFine_labelIds.png"):
            candidate = self.path / "gtFine" / rel.parent / rel.name.replace("_leftImg8bit.png", suffix)
            if candidate.is_file():
                return candidate
        return None

    def describe(self) -> str:
        """e.g. ``rosbag drive_bag:/camera/image_raw``."""
        topic = f":{self.image_topic}" if self.kind == "rosbag" and self.image_topic else ""
        split = f" ({self.split})" if self.kind == "cityscapes" and self.split else ""
        return f"{self.kind} {self.path}{topic}{split}"

    def sample(self, wanted: int, minimum: int = MIN_FRAMES) -> list[CalibrationFrame]:
        """``wanted`` frames spread evenly over the source (fewer if it has fewer).

        Args:
            wanted: Frames to sample.
            minimum: Fewest acceptable (:data:`MIN_FRAMES` for calibration, 1 for a check source).

        Raises:
            CalibrationError: Fewer than ``minimum`` frames could be read.
        """
        frames = list(self._bag_frames(wanted) if self.kind == "rosbag" else self._file_frames(wanted))
        if len(frames) < minimum:
            need = (f"{MIN_FRAMES} are needed ({MIN_FRAMES - 1} to calibrate, 1 for the quality check), a few "
                    "hundred are recommended" if minimum == MIN_FRAMES else f"{minimum} are needed")
            raise CalibrationError(
                f"source {self.describe()} gave {len(frames)} usable frame(s); at least {need}")
        return frames

    def _file_frames(self, wanted: int) -> Iterator[CalibrationFrame]:
        import cv2

        from bisenet_ros.replay.groundtruth import load_mask

        for index in sample_indices(len(self._files), wanted):
            image = cv2.imread(str(self._files[index]), cv2.IMREAD_COLOR)
            if image is None:
                LOGGER.warning("%s: not a readable image, skipped", self._files[index])
                continue
            truth_path = self._truth[index]
            truth = None
            if truth_path is not None:
                truth = load_mask(truth_path, label_ids=truth_path.name.endswith("_labelIds.png"))
            yield CalibrationFrame(image, "bgr", truth, self._files[index].name)

    def _bag_frames(self, wanted: int) -> list[CalibrationFrame]:
        from bisenet_ros import codec
        from bisenet_ros.replay.bag import BagError, InputBag
        from bisenet_ros.replay.messages import COMPRESSED_IMAGE, IMAGE, deserialize, stamp_to_ns

        try:
            with InputBag(self.path) as bag:
                exclude = [self.labels_topic] if self.labels_topic else []
                topic = bag.pick_image_topic(self.image_topic, exclude=exclude)
                self.image_topic = topic.name
                if self.labels_topic and self.labels_topic not in bag.topics:
                    raise CalibrationError(f"--labels-topic {self.labels_topic!r} is not in {self.path}")
                chosen = set(sample_indices(topic.count, wanted))
                frames: dict[int, CalibrationFrame] = {}
                index = 0
                for raw in bag.messages([topic.name]):
                    if index in chosen:
                        try:
                            msg = deserialize(raw.data, topic.msgtype)
                            decode = codec.decode_compressed if topic.msgtype == COMPRESSED_IMAGE else codec.decode_image
                            image, order = decode(msg)
                            frames[stamp_to_ns(msg.header.stamp)] = CalibrationFrame(
                                image, order, None, f"{topic.name}@{raw.timestamp}")
                        except Exception as err:  # noqa: BLE001 - a bad message is skipped, not fatal
                            LOGGER.warning("%s message %d skipped: %s", topic.name, index, err)
                    index += 1
                if self.labels_topic:
                    for raw in bag.messages([self.labels_topic]):
                        msg = deserialize(raw.data, IMAGE)
                        frame = frames.get(stamp_to_ns(msg.header.stamp))
                        mask = codec.image_to_array(msg)
                        if frame is not None and mask.ndim == 2 and mask.dtype == np.uint8:
                            frame.truth = np.array(mask)
        except BagError as err:
            raise CalibrationError(str(err)) from None
        return list(frames.values())


# ----------------------------------------------------------------------------- the workflow

@dataclass
class QuantizeJob:
    """What ``bisenet-ros quantize`` does (defaults as on its command line).

    Attributes:
        model: The fp32 ``.onnx`` export to quantize.
        source: Where the calibration frames come from.
        output: The int8 ``.onnx`` to write; its quality check goes to ``<stem>.quality.json``.
        frames: Frames sampled from the source (a fifth held out for the quality check).
        method: ``auto`` (try each of :data:`CALIBRATION_METHODS`, keep the one whose labels agree
            best with fp32 on the check frames) or one of them.
        activations: ``uint8`` (fastest on x86 CPUs) or ``int8`` (symmetric: needed by TensorRT).
        resize: The engine's resize policy the frames are fitted with (``stretch``/``letterbox``).
        overwrite: Replace an existing output.
        check: A separate source for the quality check (all sampled frames then calibrate).
        check_frames: Frames sampled from ``check``.
    """

    model: str
    source: CalibrationSource
    output: str
    frames: int = 200
    method: str = "auto"
    activations: str = "uint8"
    resize: str = "stretch"
    overwrite: bool = False
    check: CalibrationSource | None = None
    check_frames: int = 100

    def quality_path(self) -> str:
        root, _ = os.path.splitext(self.output)
        return f"{root}.quality.json"


def run_quantize(job: QuantizeJob, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Sample, calibrate, quantize, check and write the int8 file (temp file + rename).

    Returns:
        The quality report (also embedded in the file's ``calibration.quality`` and written as
        JSON next to it): the chosen method, agreement and mIoU per tried method, timings.

    Raises:
        ValueError: Bad model, source or output (one line saying what to fix).
    """
    from bisenet_ros.inference import Segmenter

    if job.method != "auto" and job.method not in CALIBRATION_METHODS:
        raise ValueError(f"method={job.method!r}: expected auto or one of {', '.join(CALIBRATION_METHODS)}")
    for path in (job.output, job.quality_path()):
        if os.path.exists(path) and not job.overwrite:
            raise ValueError(f"{path} exists; pass --overwrite to replace it")
    if os.path.abspath(job.output) == os.path.abspath(job.model):
        raise ValueError(f"-o {job.output} is the input model; write the int8 model to another file")
    with open(job.model, "rb") as stream:
        model = stream.read()
    info = check_quantizable(model, job.model)
    start = time.perf_counter()
    frames = job.source.sample(job.frames)
    if job.check is not None:
        calibration, held_out = frames, job.check.sample(job.check_frames, minimum=1)
    else:
        held_out = [f for i, f in enumerate(frames) if i % HOLD_OUT_EVERY == HOLD_OUT_EVERY - 1]
        calibration = [f for i, f in enumerate(frames) if i % HOLD_OUT_EVERY != HOLD_OUT_EVERY - 1]
    fp32 = Segmenter(weights=job.model, backend="onnxruntime", resize=job.resize)
    # .copy(): preprocess returns the engine's reused input buffer.
    blobs = [fp32.preprocess(f.image, f.color_order)[1].copy() for f in calibration]
    read_s = time.perf_counter() - start
    checked_on = job.check.describe() if job.check is not None else "held out from the calibration source"
    log(f"quantize: {info.variant} {fp32.network_size[0]}x{fp32.network_size[1]}, {len(blobs)} calibration frames "
        f"from {job.source.describe()}, {len(held_out)} check frames ({checked_on}); {read_s:.1f} s to read")
    reference = _evaluate(fp32, held_out, info.num_classes)
    methods = list(CALIBRATION_METHODS) if job.method == "auto" else [job.method]
    provenance = {"source": job.source.describe(), "source_kind": job.source.kind, "resize": job.resize}
    tried: dict[str, dict[str, Any]] = {}
    best: tuple[tuple[float, float], str, bytes] | None = None
    out_dir = os.path.dirname(os.path.abspath(job.output))
    # A failure (or Ctrl-C) removes the folder this run made and a file already written:
    # the int8 model is never left without its quality check, or the other way round.
    with NewOutputs(out_dir) as created:
        os.makedirs(out_dir, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix=".quantize_", dir=out_dir) as tmp:
            for method in methods:
                t0 = time.perf_counter()
                data = quantize_model(model, blobs, QuantizeSettings(method, job.activations), provenance)
                quantize_s = time.perf_counter() - t0
                candidate = os.path.join(tmp, f"{method}.onnx")
                with open(candidate, "wb") as stream:
                    stream.write(data)
                int8 = Segmenter(weights=candidate, backend="onnxruntime", resize=job.resize)
                result = _evaluate(int8, held_out, info.num_classes)
                entry = {"agreement": label_agreement(reference["labels"], result["labels"]),
                         "miou_int8": result["miou"], "quantize_s": quantize_s}
                tried[method] = entry
                log(f"  {method:<10} labels = fp32 on {entry['agreement'] * 100:.2f}% of check pixels"
                    + (f", mIoU fp32 {reference['miou'] * 100:.2f} / int8 {result['miou'] * 100:.2f}"
                       if result["miou"] is not None else "") + f" ({quantize_s:.1f} s)")
                # Fidelity to fp32 decides, on every pixel: the mIoU of a few check frames moves by a
                # point either way with int8 noise (measured on the demo model: every method scored
                # above fp32), so picking by it would reward noise and overstate int8's accuracy.
                score = (entry["agreement"], result["miou"] or 0.0)
                if best is None or score > best[0]:
                    best = (score, method, data)
            assert best is not None
            chosen = best[1]
            quality = {
                "held_out_frames": len(held_out), "checked_on": checked_on, "chosen_method": chosen,
                "agreement": tried[chosen]["agreement"], "miou_fp32": reference["miou"],
                "miou_int8": tried[chosen]["miou_int8"], "methods": tried,
                "selection": "best label agreement with fp32 on the check frames" if len(methods) > 1
                else "given by the user",
                "total_s": time.perf_counter() - start,
            }
            data = update_calibration(best[2], quality=quality)
            write_atomic(job.output, data)
            created.add(job.output)
            write_atomic(job.quality_path(), json.dumps(quality, indent=2))
    log(f"wrote {job.output} ({len(data) / 1e6:.1f} MB, int8 QDQ, {job.activations} activations, {chosen}): labels "
        f"agree with fp32 on {quality['agreement'] * 100:.2f}% of check pixels"
        + (f"; mIoU fp32 {quality['miou_fp32'] * 100:.2f}, int8 {quality['miou_int8'] * 100:.2f}"
           if quality["miou_int8"] is not None else "") + f"; quality check: {job.quality_path()}")
    return quality


def _evaluate(segmenter: Any, frames: Sequence[CalibrationFrame], num_classes: int) -> dict[str, Any]:
    """Camera-resolution labels of ``frames`` and, where they have ground truth, the mIoU."""
    from bisenet_ros.replay.metrics import ConfusionMatrix

    matrix = ConfusionMatrix(num_classes)
    labels = []
    for frame in frames:
        result = segmenter(frame.image, frame.color_order, outputs=())
        labels.append(result.labels)
        if frame.truth is not None:
            matrix.update(result.labels, frame.truth)
    return {"labels": labels, "miou": matrix.miou() if matrix.frames else None}


__all__ = ["CalibrationError", "CalibrationFrame", "CalibrationSource", "MIN_FRAMES", "QuantizeJob",
           "run_quantize"]
