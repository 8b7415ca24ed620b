"""Segmenter.segment_batch: the frames of several cameras (different sizes and colour orders) run
as one batch and give, frame for frame, exactly what the single-frame call gives, on every CPU
backend; bad input is refused before anything runs.
"""
from __future__ import annotations

import importlib.util

import cv2
import numpy as np
import pytest
import torch

from bisenet_ros.inference import Segmenter
from bisenet_ros.inference.export import export_onnx
from bisenet_ros.models import build_model, make_checkpoint

RESOLUTION = (64, 32)
ONNX_BACKENDS = [b for b in ("onnxruntime", "openvino") if importlib.util.find_spec(b) is not None]

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> dict[str, str]:
    torch.manual_seed(0)
    model = build_model("stdc1", num_classes=4)
    folder = tmp_path_factory.mktemp("weights")
    names = ["road", "car", "sky", "tree"]
    palette = [[10, 20, 30], [40, 50, 60], [70, 80, 90], [100, 110, 120]]
    torch.save(make_checkpoint(model, class_names=names, palette=palette), folder / "stdc1.pth")
    seg = Segmenter(weights=str(folder / "stdc1.pth"), variant="stdc1", num_classes=4, resolution=RESOLUTION)
    export_onnx(model, folder / "stdc1.onnx", resolution=RESOLUTION, class_set=seg.class_set, confidence=True)
    return {"pth": str(folder / "stdc1.pth"), "onnx": str(folder / "stdc1.onnx")}


def _frames() -> tuple[list[np.ndarray], list[str]]:
    rng = np.random.default_rng(3)
    sizes = [(96, 48), (64, 32), (150, 40), (40, 90), (96, 48)]   # (width, height): all different fits
    frames = [cv2.resize(rng.integers(0, 256, (5, 7, 3), dtype=np.uint8), size, interpolation=cv2.INTER_LINEAR)
              for size in sizes]
    return frames, ["bgr", "rgb", "bgr", "rgb", "bgr"]


def _engines(weights: dict[str, str]) -> list[tuple[str, Segmenter]]:
    common = dict(drivable_classes=["road"], confidence=True, resize="letterbox")
    engines = [("torch", Segmenter(weights=weights["pth"], variant="stdc1", num_classes=4,
                                   resolution=RESOLUTION, **common))]
    for backend in ONNX_BACKENDS:
        engines.append((f"{backend} file", Segmenter(weights=weights["onnx"], backend=backend, **common)))
        engines.append((f"{backend} in memory", Segmenter(weights=weights["pth"], variant="stdc1", num_classes=4,
                                                          resolution=RESOLUTION, backend=backend, **common)))
    return engines


@pytest.mark.parametrize("output_resolution", ["camera", "network"])
def test_batch_equals_single_frame_calls_on_every_backend(weights, output_resolution) -> None:
    frames, orders = _frames()
    for name, seg in _engines(weights):
        seg.config = seg.config.replace(output_resolution=output_resolution)
        singles = [seg(frame, order) for frame, order in zip(frames, orders)]
        batch = seg.segment_batch(frames, orders)
        assert len(batch) == len(frames), name
        for index, (one, got) in enumerate(zip(singles, batch)):
            where = f"{name}, frame {index}"
            np.testing.assert_array_equal(got.labels, one.labels, err_msg=where)
            np.testing.assert_array_equal(got.color, one.color, err_msg=where)
            np.testing.assert_array_equal(got.overlay, one.overlay, err_msg=where)
            np.testing.assert_array_equal(got.drivable, one.drivable, err_msg=where)
            np.testing.assert_allclose(got.confidence, one.confidence, atol=1e-5, err_msg=where)
            assert got.color_order == orders[index] and got.timings["batch"] == len(frames)
            assert got.timings["total"] >= got.timings["inference"] > 0
        # A real prediction (several classes), so that equality says something.
        assert len(np.unique(np.concatenate([r.labels.ravel() for r in batch]))) >= 2, name
        # Shorter batches, one colour order for all, and a subset of outputs.
        pair = seg.segment_batch(frames[:2], "bgr", outputs={"drivable"})
        np.testing.assert_array_equal(pair[1].labels, seg(frames[1], "bgr").labels, err_msg=name)
        assert pair[0].color is None and pair[0].drivable is not None
        assert seg.segment_batch([], "bgr") == []


def test_bad_input_is_refused_naming_the_frame(weights) -> None:
    seg = Segmenter(weights=weights["onnx"], backend=ONNX_BACKENDS[0] if ONNX_BACKENDS else "torch")
    frames, _ = _frames()
    with pytest.raises(ValueError, match=r"frames\[1\]: frame: expected dtype uint8"):
        seg.segment_batch([frames[0], frames[1].astype(np.float32)])
    with pytest.raises(ValueError, match="expected one colour order or 2"):
        seg.segment_batch(frames[:2], ["bgr"])
    with pytest.raises(ValueError, match=r"color_order='yuv'"):
        seg.segment_batch(frames[:2], ["bgr", "yuv"])
    with pytest.raises(ValueError, match="outputs: unknown"):
        seg.segment_batch(frames[:2], outputs={"depth"})


@pytest.mark.parametrize("backend", ONNX_BACKENDS)
def test_cpu_batches_run_single_thread_executions_side_by_side(weights, backend) -> None:
    # Two workers: the batch runs on a second, one-thread compilation of the same file, built on
    # the first batch; single frames keep the configured two-thread one.
    seg = Segmenter(weights=weights["onnx"], backend=backend, num_threads=2)
    frames, orders = _frames()
    singles = [seg(frame, order).labels for frame, order in zip(frames, orders)]
    engine = seg.backend
    assert (engine.batch_session if backend == "onnxruntime" else engine.batch_compiled) is None
    batch = seg.segment_batch(frames, orders)
    for one, got in zip(singles, batch):
        np.testing.assert_array_equal(got.labels, one)
    if backend == "onnxruntime":
        assert engine.batch_session.get_session_options().intra_op_num_threads == 1
        assert engine.session.get_session_options().intra_op_num_threads == 2
        # Tensors from the arena one by one (no per-run memory pattern): the lower peak.
        assert not engine.session.get_session_options().enable_mem_pattern
        assert not engine.batch_session.get_session_options().enable_mem_pattern
    else:
        assert int(engine.batch_compiled.get_property("NUM_STREAMS")) == 2
        assert int(engine.batch_compiled.get_property("INFERENCE_NUM_THREADS")) == 2
        assert str(engine.compiled.get_property("PERFORMANCE_HINT")) == "LATENCY"
