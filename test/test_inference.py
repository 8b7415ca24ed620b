"""The engine (Segmenter) on the torch backend, with a tiny model whose answer is known per pixel.

``ColourModel`` classifies each pixel by its dominant colour channel (red -> 0 "road",
green -> 1 "sidewalk", blue -> 2 "building"), independently of position, so the expected label
map of a frame made of coloured rectangles is known exactly and the geometry of both resize
policies can be checked pixel by pixel.
"""
from __future__ import annotations

import sys

import cv2
import numpy as np
import pytest
import torch
from torch import nn

from bisenet_ros.config import SegmenterConfig
from bisenet_ros.inference import BackendError, SegmentationResult, Segmenter
from bisenet_ros.inference import postprocess as post
from bisenet_ros.inference.preprocess import MAX_FRAME_SIDE, fit_geometry
from bisenet_ros.labels import CITYSCAPES_PALETTE, cityscapes
from bisenet_ros.models import Normalization

RED, GREEN, BLUE = (255, 0, 0), (0, 255, 0), (0, 0, 255)  # RGB -> classes 0, 1, 2


# Tiny inputs: one thread is faster, and immune to OpenMP spin-waits on a busy machine.
pytestmark = pytest.mark.usefixtures("one_torch_thread")


class ColourModel(nn.Module):
    """19-class stand-in: logits_c = normalized channel c for c < 3, -50 for the rest."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 19, 1)
        with torch.no_grad():
            self.conv.weight.zero_()
            self.conv.bias.fill_(-50.0)
            for c in range(3):
                self.conv.weight[c, c] = 1.0
                self.conv.bias[c] = 0.0
        self.normalization = Normalization((0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
        self.num_classes = 19
        self.variant = "colour"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


def make_scene(height: int, width: int, rects: list[tuple[int, int, int, int, tuple[int, int, int]]],
               background: tuple[int, int, int] = BLUE) -> tuple[np.ndarray, np.ndarray]:
    """RGB frame and its expected label map; rects are (top, left, bottom, right, colour)."""
    classes = {RED: 0, GREEN: 1, BLUE: 2}
    frame = np.empty((height, width, 3), np.uint8)
    frame[:] = background
    expected = np.full((height, width), classes[background], np.uint8)
    for top, left, bottom, right, colour in rects:
        frame[top:bottom, left:right] = colour
        expected[top:bottom, left:right] = classes[colour]
    return frame, expected


def near_boundary(expected: np.ndarray, radius: int) -> np.ndarray:
    kernel = np.ones((2 * radius + 1, 2 * radius + 1), np.uint8)
    return cv2.dilate(expected, kernel) != cv2.erode(expected, kernel)


def segmenter(**options) -> Segmenter:
    options.setdefault("resolution", (128, 64))
    return Segmenter(model=ColourModel(), **options)


# ----------------------------------------------------------------------------- geometry

def test_fit_geometry_numbers() -> None:
    geo = fit_geometry((1920, 1080), (1024, 512), "letterbox")
    assert geo.content_size == (910, 512) and geo.offset == (57, 0) and geo.is_padded
    geo = fit_geometry((1920, 1080), (1024, 512), "stretch")
    assert geo.content_size == (1024, 512) and geo.offset == (0, 0) and not geo.is_padded
    geo = fit_geometry((640, 960), (512, 512), "letterbox")   # portrait: pad left/right
    assert geo.content_size == (341, 512) and geo.offset == (85, 0)


@pytest.mark.parametrize("resize, frame_hw, rects", [
    # Exact scale 1/2: bilinear halves 2x2 blocks exactly, nearest doubles them back.
    ("stretch", (128, 256), [(20, 30, 60, 90, RED), (70, 120, 110, 200, GREEN)]),
    # Letterbox, 256x64 frame in a 128x64 network: content 128x32 at row offset 16.
    ("letterbox", (64, 256), [(10, 20, 40, 100, RED), (40, 150, 64, 220, GREEN)]),
])
def test_labels_map_back_exactly_at_integer_scale(resize, frame_hw, rects) -> None:
    frame, expected = make_scene(*frame_hw, rects)
    result = segmenter(resize=resize)(frame, color_order="rgb")
    np.testing.assert_array_equal(result.labels, expected)


@pytest.mark.parametrize("resize, frame_hw, radius", [
    ("stretch", (90, 160), 2),      # non-integer scales 0.8 and 0.71
    ("letterbox", (90, 160), 2),    # wide frame: rows padded
    ("letterbox", (200, 120), 4),   # tall frame: columns padded, scale 0.32
])
def test_labels_map_back_at_any_scale(resize, frame_hw, radius) -> None:
    height, width = frame_hw
    rects = [(height // 6, width // 7, height // 2, width // 2, RED),
             (height // 2 + 5, width // 2 + 5, height - 8, width - 6, GREEN)]
    frame, expected = make_scene(height, width, rects)
    seg = segmenter(resize=resize)
    labels = seg(frame[:, :, ::-1], color_order="bgr").labels   # BGR input, non-contiguous view
    assert labels.shape == (height, width) and labels.dtype == np.uint8
    wrong = labels != expected
    # Errors only where a rectangle edge is within the resampling footprint of the pixel.
    assert not (wrong & ~near_boundary(expected, radius)).any()
    assert wrong.mean() < 0.05


def test_letterbox_network_resolution_marks_padding() -> None:
    frame, _ = make_scene(200, 120, [(0, 0, 200, 60, RED)], background=GREEN)
    seg = segmenter(resize="letterbox", output_resolution="network", confidence=True)
    result = seg(frame, color_order="rgb")
    geo = seg.geometry(120, 200)
    left, top = geo.offset
    width, height = geo.content_size
    assert result.labels.shape == (64, 128)
    assert (result.labels[:, :left] == 255).all() and (result.labels[:, left + width:] == 255).all()
    content = result.labels[top:top + height, left:left + width]
    assert set(np.unique(content)) == {0, 1}
    assert (content[:, : width // 2 - 1] == 0).all() and (content[:, width // 2 + 1:] == 1).all()
    assert (result.drivable[:, :left] == 0).all()
    assert (result.confidence[:, :left] == 0).all() and (result.confidence[top:top + height, left:left + width] > 0.9).all()
    assert result.overlay.shape == (64, 128, 3) and (result.color[:, :left] == 0).all()


def test_network_resolution_visualization_with_camera_labels() -> None:
    # Labels for planners at camera size, the pictures for people at the network's (content).
    frame, expected = make_scene(200, 120, [(0, 0, 200, 60, RED)], background=GREEN)
    seg = segmenter(resize="letterbox", visualization_resolution="network")
    result = seg(frame, color_order="rgb")
    width, height = seg.geometry(120, 200).content_size
    assert result.labels.shape == (200, 120) and result.drivable.shape == (200, 120)
    assert result.color.shape == result.overlay.shape == (height, width, 3)  # no padding
    left = result.color[:, : width // 2 - 1].reshape(-1, 3)
    assert (left == seg.palette[0]).all()  # class 0 colour, rgb order as the input
    full = segmenter(resize="letterbox")(frame, color_order="rgb")
    assert full.color.shape == (200, 120, 3)
    np.testing.assert_array_equal(full.labels, result.labels)


# ----------------------------------------------------------------------------- outputs

def test_color_mask_and_overlay_are_exact_for_a_known_label_map() -> None:
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 19, (37, 53), dtype=np.uint8)
    labels[0, :3] = 255  # no class: black
    frame = rng.integers(0, 256, (37, 53, 3), dtype=np.uint8)
    classes = cityscapes()
    palette = np.zeros((256, 3), np.uint8)
    palette[:19] = CITYSCAPES_PALETTE
    for order, table in (("rgb", palette), ("bgr", palette[:, ::-1])):
        color = post.colorize(labels, classes.color_lut(order))
        np.testing.assert_array_equal(color, table[labels])
        for alpha in (0.5, 0.25):
            expected = np.rint(frame * (1 - alpha) + color.astype(np.float64) * alpha).astype(np.uint8)
            np.testing.assert_array_equal(post.blend(frame, color, alpha), expected)
    np.testing.assert_array_equal(post.blend(frame, color, 0.0), frame)
    np.testing.assert_array_equal(post.blend(frame, color, 1.0), color)


def test_segmenter_outputs_are_consistent_with_its_labels() -> None:
    frame, expected = make_scene(96, 160, [(10, 10, 50, 70, RED), (50, 80, 90, 150, GREEN)])
    bgr = np.ascontiguousarray(frame[:, :, ::-1])
    seg = segmenter(drivable_classes=("road", "1"), overlay_alpha=0.5)
    result = seg(bgr)   # default colour order: BGR
    assert isinstance(result, SegmentationResult) and result.color_order == "bgr"
    np.testing.assert_array_equal(result.color, CITYSCAPES_PALETTE[result.labels][:, :, ::-1])
    np.testing.assert_array_equal(
        result.overlay, np.rint(bgr * 0.5 + result.color.astype(np.float64) * 0.5).astype(np.uint8))
    np.testing.assert_array_equal(result.drivable, np.where(result.labels <= 1, 255, 0))
    assert result.confidence is None
    assert set(result.timings) == {"preprocess", "inference", "postprocess", "total"}
    assert all(v >= 0 for v in result.timings.values())
    assert result.timings["total"] >= result.timings["inference"]


def test_colour_outputs_are_built_on_their_first_read_in_the_reading_thread() -> None:
    # The node reads colour and overlay on its visualization worker: the engine call must not
    # build them (the planners' outputs would wait), the first read builds both, once.
    import threading

    frame, _ = make_scene(96, 160, [(10, 10, 50, 70, RED)])
    seg = segmenter(overlay_alpha=0.5)
    result = seg(frame, outputs={"color", "overlay"})
    assert vars(result)["_color"] is None and vars(result)["_overlay"] is None  # not built yet
    seen: list = []
    readers = [threading.Thread(target=lambda: seen.append((result.overlay, result.color)))
               for _ in range(4)]
    for reader in readers:
        reader.start()
    for reader in readers:
        reader.join()
    assert all(o is seen[0][0] and c is seen[0][1] for o, c in seen)  # built once
    np.testing.assert_array_equal(result.color, CITYSCAPES_PALETTE[result.labels][:, :, ::-1])
    # a result without colour outputs has nothing pending
    assert seg(frame, outputs={"drivable"}).overlay is None


def test_outputs_subset_and_confidence() -> None:
    frame, _ = make_scene(64, 64, [(0, 0, 32, 64, RED)])
    seg = segmenter()
    only = seg(frame, outputs={"drivable"})
    assert only.color is None and only.overlay is None and only.confidence is None
    assert only.drivable is not None and only.labels.shape == (64, 64)
    with pytest.raises(ValueError, match="unknown \\['colour'\\]"):
        seg(frame, outputs={"colour"})
    assert seg(frame, outputs={"confidence", "color"}).confidence is None   # not built with it
    result = segmenter(confidence=True)(frame, color_order="rgb")
    assert result.confidence.dtype == np.float32 and result.confidence.shape == (64, 64)
    # Saturated colours: one logit is 4 above the other two -> softmax max = 1 / (1 + 2 e^-4).
    interior = result.confidence[4:28, 4:60]
    np.testing.assert_allclose(interior, 1 / (1 + 2 * np.exp(-4.0)), rtol=1e-4)


# ----------------------------------------------------------------------------- bad input

@pytest.mark.parametrize("frame, message", [
    (np.zeros((32, 32, 3), np.float32), "expected dtype uint8"),
    (np.zeros((32, 32), np.uint8), "expected shape H x W x 3.*GRAY2BGR"),
    (np.zeros((32, 32, 4), np.uint8), "expected shape H x W x 3.*alpha"),
    (np.zeros((0, 32, 3), np.uint8), "non-empty"),
    (np.zeros((MAX_FRAME_SIDE + 1, 4, 3), np.uint8), f"maximum {MAX_FRAME_SIDE}"),
    ([[0, 0, 0]], "expected an H x W x 3 uint8 NumPy array"),
])
def test_bad_frames_raise_value_error(frame, message) -> None:
    with pytest.raises(ValueError, match=message):
        segmenter()(frame)


def test_bad_color_order() -> None:
    with pytest.raises(ValueError, match="expected 'bgr' or 'rgb'"):
        segmenter()(np.zeros((8, 8, 3), np.uint8), color_order="bgra")


# ----------------------------------------------------------------------------- construction

def test_config_from_mapping_and_yaml(tmp_path) -> None:
    path = tmp_path / "seg.yaml"
    path.write_text("resolution: 96x48\nresize: letterbox\ndrivable_classes: [road, sidewalk]\n")
    seg = Segmenter(str(path), model=ColourModel(), overlay_alpha=0.3)
    assert seg.network_size == (96, 48) and seg.config.resize == "letterbox"
    assert seg.config.overlay_alpha == 0.3 and seg.config.drivable_classes == ("road", "sidewalk")
    seg = Segmenter({"resolution": [64, 32]}, model=ColourModel())
    assert seg.network_size == (64, 32)
    assert seg(np.zeros((10, 20, 3), np.uint8)).labels.shape == (10, 20)
    seg = Segmenter(SegmenterConfig(resolution=(64, 32)), model=ColourModel(), output_resolution="network")
    assert seg(np.zeros((10, 20, 3), np.uint8)).labels.shape == (32, 64)
    assert seg.class_names[0] == "road" and seg.palette.shape == (19, 3)
    with pytest.raises(ValueError, match="did you mean 'resize'"):
        Segmenter({"resise": "stretch"}, model=ColourModel())


def test_unknown_drivable_class_fails_at_construction() -> None:
    with pytest.raises(ValueError, match="unknown class 'tarmac'"):
        segmenter(drivable_classes=("tarmac",))


def test_random_weights_warn_and_normalization_comes_from_the_model() -> None:
    with pytest.warns(UserWarning, match="randomly initialised"):
        seg = Segmenter(variant="bisenetv2", resolution=(64, 32))
    from bisenet_ros.models import get_spec

    assert seg.normalization.mean == get_spec("bisenetv2").normalization.mean
    with pytest.warns(UserWarning):
        seg = Segmenter(variant="stdc1", resolution=(64, 32))
    assert seg.normalization.mean == get_spec("stdc1").normalization.mean   # ImageNet, not Cityscapes


@pytest.mark.parametrize("backend, module", [("onnxruntime", "onnxruntime"), ("openvino", "openvino")])
def test_missing_backend_package_fails_at_construction(monkeypatch, backend, module) -> None:
    monkeypatch.setitem(sys.modules, module, None)   # makes `import module` raise ImportError
    with pytest.raises(ImportError, match=f"pip install {module}"):
        segmenter(backend=backend)


def test_missing_torch_names_the_package(monkeypatch) -> None:
    from bisenet_ros.inference.backends import torch_backend

    monkeypatch.setitem(sys.modules, "torch", None)
    with pytest.raises(ImportError, match="pip install torch"):
        torch_backend.import_torch()


def test_missing_device_fails_at_construction() -> None:
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    with pytest.raises(BackendError, match="no CUDA device"):
        segmenter(device="cuda")
    with pytest.raises(BackendError, match="CUDAExecutionProvider"):
        segmenter(backend="onnxruntime", device="cuda")
    with pytest.raises(BackendError, match="TensorrtExecutionProvider"):
        segmenter(backend="onnxruntime", device="tensorrt", precision="fp16")
    with pytest.raises(BackendError, match="openvino' runs on device='cpu'"):
        segmenter(backend="openvino", device="cuda")
    with pytest.raises(BackendError, match="bf16' is not supported by backend='onnxruntime'"):
        segmenter(backend="onnxruntime", precision="bf16")


def test_torch_bf16_runs_where_the_cpu_has_it_and_is_refused_where_not() -> None:
    from bisenet_ros.inference.backends.torch_backend import cpu_has_fast_bf16

    if not cpu_has_fast_bf16(torch):
        with pytest.raises(BackendError, match="no native bf16"):
            segmenter(precision="bf16")
        return
    frame, expected = make_scene(64, 128, [(8, 8, 40, 60, RED), (30, 70, 60, 120, GREEN)])
    labels = segmenter(precision="bf16")(frame, color_order="rgb").labels
    assert (labels == expected).mean() > 0.97


# ----------------------------------------------------------------------------- segment command

def test_segment_command_writes_label_and_overlay_pngs(tmp_path, capsys) -> None:
    from bisenet_ros.cli import main as cli_main

    frame, _ = make_scene(40, 60, [(0, 0, 20, 60, RED)])
    image = tmp_path / "scene.png"
    cv2.imwrite(str(image), frame[:, :, ::-1])
    out = tmp_path / "out"
    assert cli_main(["segment", str(image), "--resolution", "64x32", "-o", str(out), "--color"]) == 0
    labels = cv2.imread(str(out / "scene_labels.png"), cv2.IMREAD_UNCHANGED)
    overlay = cv2.imread(str(out / "scene_overlay.png"), cv2.IMREAD_UNCHANGED)
    color = cv2.imread(str(out / "scene_color.png"), cv2.IMREAD_UNCHANGED)
    assert labels.shape == (40, 60) and labels.dtype == np.uint8 and labels.max() < 19
    assert overlay.shape == color.shape == (40, 60, 3)
    np.testing.assert_array_equal(color, CITYSCAPES_PALETTE[labels][:, :, ::-1])   # written as BGR PNG
    # No input: a generated frame.
    assert cli_main(["segment", "--resolution", "64x32", "-o", str(out)]) == 0
    assert (out / "generated_street_labels.png").is_file()
    assert "randomly initialised" in capsys.readouterr().out
    assert cli_main(["segment", str(tmp_path / "missing.png"), "-o", str(out)]) == 2


def test_segment_command_runs_a_checkpoint_alone_and_a_failure_leaves_nothing(tmp_path, capsys,
                                                                              monkeypatch) -> None:
    from bisenet_ros.cli import main as cli_main
    from trained import write_training_checkpoint

    weights = str(write_training_checkpoint(tmp_path / "best.pth"))
    images = []
    for i in range(2):
        images.append(str(tmp_path / f"frame{i}.png"))
        cv2.imwrite(images[-1], np.full((24, 40, 3), 60 * i, np.uint8))
    out = tmp_path / "out"
    assert cli_main(["segment", *images, "--weights", weights, "-o", str(out)]) == 0
    assert "model: stdc1 64x32" in capsys.readouterr().out
    assert sorted(p.name for p in out.iterdir()) == [
        "frame0_labels.png", "frame0_overlay.png", "frame1_labels.png", "frame1_overlay.png"]
    # A contradicting option: one line naming both values, nothing written.
    fresh = tmp_path / "fresh" / "out"
    assert cli_main(["segment", *images, "--weights", weights, "--variant", "bisenetv2", "-o", str(fresh)]) == 2
    assert "variant=bisenetv2 contradicts" in capsys.readouterr().err
    assert not (tmp_path / "fresh").exists()
    # The second image cannot be written: the first image's files go too, and the folders made.
    calls = []
    imwrite = cv2.imwrite

    def failing_imwrite(path: str, array: np.ndarray) -> bool:
        calls.append(path)
        return len(calls) < 3 and imwrite(path, array)

    monkeypatch.setattr(cv2, "imwrite", failing_imwrite)
    assert cli_main(["segment", *images, "--weights", weights, "-o", str(fresh)]) == 2
    assert "frame1_labels.png: cannot be written" in capsys.readouterr().err
    assert not (tmp_path / "fresh").exists()
    # In a folder the user already had, only this run's files are removed.
    calls.clear()
    (out / "notes.txt").write_text("mine")
    for name in ("frame0_labels.png", "frame0_overlay.png", "frame1_labels.png", "frame1_overlay.png"):
        (out / name).unlink()
    assert cli_main(["segment", *images, "--weights", weights, "-o", str(out)]) == 2
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]


# ------------------------------------------------------------------ self-describing weights files

def test_training_checkpoint_runs_with_weights_alone(tmp_path) -> None:
    from trained import NAMES, SIZE, write_training_checkpoint

    path = str(write_training_checkpoint(tmp_path / "best.pth"))
    seg = Segmenter(weights=path)   # no variant, num_classes, class_set or resolution
    assert (seg.config.variant, seg.config.num_classes, seg.network_size) == ("stdc1", 5, SIZE)
    assert seg.class_names == NAMES and seg.config.backend == "torch"
    # the default drivable class 'road' is the file's 'Road' (one case-insensitive rule)
    frame = np.zeros((24, 40, 3), np.uint8)
    result = seg(frame)
    np.testing.assert_array_equal(result.drivable > 0, result.labels == 0)
    assert seg.provenance()["resolution"] == list(SIZE)
    # A default never contradicts: the same options given as defaults still take the file's.
    assert Segmenter(SegmenterConfig(weights=path)).network_size == SIZE
    # An explicit option that contradicts the file names both values.
    with pytest.raises(ValueError, match=r"variant=bisenetv2 contradicts .*best.pth, which was trained "
                                         r"with variant stdc1: leave variant out"):
        Segmenter(weights=path, variant="bisenetv2")
    with pytest.raises(ValueError, match="num_classes=19 contradicts .* num_classes 5"):
        Segmenter(weights=path, num_classes=19)
    with pytest.raises(ValueError, match="num_classes=5 but class_set='cityscapes' has 19 classes"):
        Segmenter(weights=path, class_set="cityscapes")
    # A checkpoint runs at any size: an explicit resolution wins over the stored one.
    assert Segmenter(weights=path, resolution=(96, 48)).network_size == (96, 48)
    with pytest.raises(ValueError, match=r"did you mean 'Sidewalk'"):
        Segmenter(weights=path, drivable_classes=("sidewalks",))


def test_published_checkpoint_keeps_the_given_options(tmp_path) -> None:
    from bisenet_ros.models import build_model

    path = tmp_path / "model_maxmIOU50.pth"
    torch.save(build_model("stdc1").state_dict(), path)   # a plain state_dict: carries nothing
    seg = Segmenter(weights=str(path), variant="stdc1", resolution=(64, 32))
    assert seg.config.variant == "stdc1" and seg.network_size == (64, 32) and len(seg.class_names) == 19
    with pytest.raises(ValueError, match="holds a stdc1 model, but the model is bisenetv2"):
        Segmenter(weights=str(path), resolution=(64, 32))   # today's message: the file says nothing


def test_onnx_file_picks_its_backend_and_size(tmp_path, monkeypatch) -> None:
    from bisenet_ros.inference import weights as weights_module
    from bisenet_ros.inference.segmenter import export_checkpoint
    from trained import NAMES, write_training_checkpoint

    onnx = export_checkpoint(SegmenterConfig(weights=str(write_training_checkpoint(tmp_path / "best.pth"))),
                             str(tmp_path / "best.onnx"))
    seg = Segmenter(weights=onnx)   # no backend: onnxruntime
    assert seg.config.backend == "onnxruntime" and seg.network_size == (64, 32)
    assert seg.class_names == NAMES and seg.config.variant == "stdc1"
    with pytest.raises(ValueError, match="resolution=128x64 contradicts .*best.onnx, which was exported "
                                         "with resolution 64x32"):
        Segmenter(weights=onnx, resolution=(128, 64))
    # OpenVINO when onnxruntime is not installed
    real = weights_module.importlib.util.find_spec
    monkeypatch.setattr(weights_module.importlib.util, "find_spec",
                        lambda name, *a: None if name == "onnxruntime" else real(name, *a))
    assert weights_module.onnx_backend() == "openvino"
    assert weights_module.resolve_config(SegmenterConfig(weights=onnx)).backend == "openvino"
