"""int8 quantization (bisenet-ros quantize): calibration sources, the int8 file's metadata and
quality check, running it on onnxruntime and openvino, and each bad input.

A tiny STDC1 at 128x64 with random weights (seeded) is quantized on a handful of generated street
frames. Random weights give logits with small margins between classes, the worst case for int8;
measured here (AVX512-VNNI CPU) the int8 labels agree with fp32 on 99.4% of pixels on both
onnxruntime and openvino. The bound is 93%: room for CPUs without VNNI, whose uint8 x int8
kernels can saturate, while a wrong quantization (bad scales, a quantized argmax, calibration
frames pre-processed differently from the engine's) lands far below it.
"""
from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest

from bisenet_ros.cli import main
from bisenet_ros.inference.frames import street_frame

pytestmark = pytest.mark.usefixtures("one_torch_thread")

AGREEMENT_BOUND = 0.93
FRAMES = 10  # 8 calibrate, 2 held out


@pytest.fixture(scope="module")
def fp32_model(tmp_path_factory) -> Path:
    import torch

    from bisenet_ros.inference.export import export_onnx
    from bisenet_ros.labels import load_class_set
    from bisenet_ros.models import build_model

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("model") / "stdc1_128x64.onnx"
    export_onnx(build_model("stdc1"), path, resolution=(128, 64), class_set=load_class_set("cityscapes", 19))
    return path


@pytest.fixture(scope="module")
def frames() -> list[np.ndarray]:
    return [street_frame(160, 96, seed=i) for i in range(FRAMES)]


@pytest.fixture(scope="module")
def fp32_labels(fp32_model, frames) -> list[np.ndarray]:
    from bisenet_ros.inference import Segmenter

    seg = Segmenter(weights=str(fp32_model), backend="onnxruntime")
    return [seg(f, outputs=()).labels for f in frames]


@pytest.fixture(scope="module")
def bag_int8(fp32_model, frames, fp32_labels, tmp_path_factory) -> Path:
    from bisenet_ros.replay.bagtools import write_image_bag

    root = tmp_path_factory.mktemp("bag")
    # Ground truth = the fp32 model's own labels: then fp32 mIoU is exactly 1 and int8's
    # mIoU measures what quantization changed.
    bag = write_image_bag(root / "drive", frames, labels=fp32_labels)
    out = root / "int8.onnx"
    assert main(["quantize", str(fp32_model), "--calibration", str(bag), "--labels-topic", "/camera/labels",
                 "-o", str(out), "--frames", str(FRAMES), "--method", "minmax"]) == 0
    return out


def _agreement(a: list[np.ndarray], b: list[np.ndarray]) -> float:
    return float(np.mean([np.mean(x == y) for x, y in zip(a, b)]))


def test_quantize_from_a_bag_writes_int8_metadata_and_quality(bag_int8, fp32_model) -> None:
    import onnx

    from bisenet_ros.inference.export import read_onnx_info

    info = read_onnx_info(bag_int8)
    assert info.precision == "int8" and info.argmax_in_graph and info.outputs == ["labels"]
    calibration = info.calibration
    assert calibration["source_kind"] == "rosbag" and "/camera/image_raw" in calibration["source"]
    assert calibration["frames"] == 8 and calibration["method"] == "minmax"
    assert calibration["activations"] == "uint8" and calibration["format"] == "QDQ"
    quality = calibration["quality"]
    assert quality["held_out_frames"] == 2
    assert quality["miou_fp32"] == pytest.approx(1.0)
    assert AGREEMENT_BOUND <= quality["agreement"] <= 1.0
    assert quality["miou_int8"] < 1.0 or quality["agreement"] == 1.0
    on_disk = json.loads(bag_int8.with_name("int8.quality.json").read_text())
    assert on_disk == quality
    graph = onnx.load(str(bag_int8)).graph
    ops = {n.op_type for n in graph.node}
    assert {"QuantizeLinear", "DequantizeLinear", "ArgMax"} <= ops
    # The head stays in float: the argmax reads dequantized (float) logits.
    producers = {o: n for n in graph.node for o in n.output}
    argmax = next(n for n in graph.node if n.op_type == "ArgMax")
    assert producers[argmax.input[0]].op_type != "DequantizeLinear"
    # Per-channel weights: a weight scale with one value per output channel.
    assert any(len(t.dims) == 1 and t.dims[0] > 1 and t.name.endswith("_scale") for t in graph.initializer)


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
def test_int8_file_runs_on_onnx_backends(backend, bag_int8, frames, fp32_labels) -> None:
    from bisenet_ros.inference import Segmenter

    seg = Segmenter(weights=str(bag_int8), backend=backend)
    assert seg.backend.precision == "int8" and "int8" in seg.describe()
    labels = [seg(f, outputs=()).labels for f in frames]
    assert _agreement(labels, fp32_labels) >= AGREEMENT_BOUND


def test_torch_backend_refuses_int8_naming_one_that_can(bag_int8) -> None:
    from bisenet_ros.inference import BackendError, Segmenter

    with pytest.raises((ValueError, BackendError), match="onnxruntime"):
        Segmenter(weights=str(bag_int8), backend="torch")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(BackendError, match="bisenet-ros quantize.*onnxruntime|onnxruntime.*quantize"):
            Segmenter(variant="stdc1", backend="torch", precision="int8", resolution=(128, 64))


def test_quantize_from_image_folder_picks_a_method(fp32_model, frames, tmp_path, capsys) -> None:
    import cv2

    from bisenet_ros.inference.export import read_onnx_info

    folder = tmp_path / "images" / "nested"
    folder.mkdir(parents=True)
    for i, frame in enumerate(frames):
        cv2.imwrite(str(folder / f"frame_{i}.png"), frame)
    out = tmp_path / "int8.onnx"
    assert main(["quantize", str(fp32_model), "--calibration", str(tmp_path / "images"), "-o", str(out),
                 "--frames", "6", "--method", "auto"]) == 0
    info = read_onnx_info(out)
    quality = info.calibration["quality"]
    assert info.calibration["source_kind"] == "images" and info.calibration["frames"] == 4
    assert set(quality["methods"]) == {"minmax", "entropy", "percentile"}
    best = max(m["agreement"] for m in quality["methods"].values())
    assert quality["agreement"] == best == quality["methods"][quality["chosen_method"]]["agreement"]
    assert quality["miou_fp32"] is None
    assert "agree with fp32" in capsys.readouterr().out


def test_quantize_from_cityscapes_root_reports_miou(fp32_model, bag_int8, frames, fp32_labels, tmp_path) -> None:
    import cv2

    from bisenet_ros.inference.export import read_onnx_info

    for i, (frame, truth) in enumerate(zip(frames, fp32_labels)):
        stem = f"city_000000_{i:06d}"
        split = "train" if i < 5 else "val"
        img_dir, gt_dir = tmp_path / "cs" / "leftImg8bit" / split / "city", tmp_path / "cs" / "gtFine" / split / "city"
        img_dir.mkdir(parents=True, exist_ok=True)
        gt_dir.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(img_dir / f"{stem}_leftImg8bit.png"), frame)
        cv2.imwrite(str(gt_dir / f"{stem}_gtFine_labelTrainIds.png"), truth)
    out = tmp_path / "int8.onnx"
    assert main(["quantize", str(fp32_model), "--calibration", str(tmp_path / "cs"), "-o", str(out),
                 "--frames", "10", "--method", "percentile", "--activations", "int8"]) == 0
    calibration = read_onnx_info(out).calibration
    assert calibration["source_kind"] == "cityscapes" and calibration["activations_symmetric"] is True
    quality = calibration["quality"]
    assert quality["miou_fp32"] == pytest.approx(1.0) and 0.5 < quality["miou_int8"] <= 1.0
    assert quality["selection"] == "given by the user"
    # Calibrate on the bag, check on the root's validation split.
    assert main(["quantize", str(fp32_model), "--calibration", str(bag_int8.parent / "drive"), "-o", str(out),
                 "--overwrite", "--frames", "10", "--method", "minmax", "--image-topic", "/camera/image_raw",
                 "--check", str(tmp_path / "cs"),
                 "--split", "val"]) == 0
    calibration = read_onnx_info(out).calibration
    assert calibration["frames"] == 8 and calibration["source_kind"] == "rosbag"
    quality = calibration["quality"]
    assert quality["held_out_frames"] == 5 and quality["checked_on"].endswith("(val)")
    assert quality["miou_fp32"] == pytest.approx(1.0) and quality["agreement"] >= AGREEMENT_BOUND


def _bad(capsys, *argv: str) -> str:
    assert main(["quantize", *argv]) == 2
    out = capsys.readouterr().err.strip().splitlines()  # errors go to stderr
    # One error line; a bag error may list the bag's topics below it, indented.
    assert out[0].startswith("bisenet-ros quantize: error: ") and all(line.startswith("  ") for line in out[1:])
    return "\n".join(out)


def test_bad_inputs_one_clear_error_and_nothing_written(fp32_model, bag_int8, frames, tmp_path, capsys) -> None:
    import cv2
    import onnx
    from onnx import TensorProto, helper

    out = tmp_path / "out.onnx"
    empty = tmp_path / "empty"
    empty.mkdir()
    assert "0 usable frame" in _bad(capsys, str(fp32_model), "--calibration", str(empty), "-o", str(out))
    few = tmp_path / "few"
    few.mkdir()
    for i in range(3):
        cv2.imwrite(str(few / f"{i}.png"), frames[i])
    assert "at least 5" in _bad(capsys, str(fp32_model), "--calibration", str(few), "-o", str(out))
    bag = bag_int8.parent / "drive"
    assert "/nope" in _bad(capsys, str(fp32_model), "--calibration", str(bag), "--image-topic", "/nope",
                           "-o", str(out))
    assert "no such file" in _bad(capsys, str(fp32_model), "--calibration", str(tmp_path / "missing"), "-o", str(out))
    # A foreign ONNX file (no bisenet_ros metadata).
    node = helper.make_node("Relu", ["input"], ["labels"])
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 8, 8])],
                              [helper.make_tensor_value_info("labels", TensorProto.FLOAT, [1, 3, 8, 8])])
    foreign = tmp_path / "foreign.onnx"
    onnx.save(helper.make_model(graph), str(foreign))
    assert "bisenet-ros export" in _bad(capsys, str(foreign), "--calibration", str(bag), "-o", str(out))
    assert "already quantized" in _bad(capsys, str(bag_int8), "--calibration", str(bag), "-o", str(out))
    # An existing output is kept without --overwrite.
    out.write_bytes(b"keep me")
    assert "--overwrite" in _bad(capsys, str(fp32_model), "--calibration", str(bag), "-o", str(out))
    assert out.read_bytes() == b"keep me"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty", "few", "foreign.onnx", "out.onnx"]


def test_training_checkpoint_quantizes_as_it_is_and_a_failure_leaves_nothing(frames, tmp_path, capsys,
                                                                             monkeypatch) -> None:
    import cv2

    from bisenet_ros.inference.export import read_onnx_info
    from trained import NAMES, SIZE, write_training_checkpoint

    weights = str(write_training_checkpoint(tmp_path / "best.pth"))
    images = tmp_path / "images"
    images.mkdir()
    for i, frame in enumerate(frames[:5]):
        cv2.imwrite(str(images / f"{i}.png"), frame)
    out = tmp_path / "int8" / "best_int8.onnx"
    argv = ["quantize", weights, "--calibration", str(images), "-o", str(out), "--frames", "5",
            "--method", "minmax"]
    assert main(argv) == 0   # no --variant, no --resolution: the checkpoint's own
    info = read_onnx_info(out)
    assert (info.variant, info.input_size, info.class_names) == ("stdc1", SIZE, NAMES)
    # The quality check cannot be written: the int8 model goes too, and the folder this run made.
    import bisenet_ros.calibration as calibration

    write = calibration.write_atomic

    def failing(path: str, data: object) -> None:
        if str(path).endswith(".quality.json"):
            raise OSError(f"{path}: No space left on device")
        write(path, data)

    monkeypatch.setattr(calibration, "write_atomic", failing)
    capsys.readouterr()
    fresh = tmp_path / "new" / "best_int8.onnx"
    assert main(argv[:-6] + ["-o", str(fresh), "--frames", "5", "--method", "minmax"]) == 2
    assert "No space left on device" in capsys.readouterr().err
    assert not (tmp_path / "new").exists()


# ----------------------------------------------------------------------------- precision: auto

AVX2 = frozenset({"sse4_2", "avx2", "fma"})
SAPPHIRE_RAPIDS = AVX2 | {"avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_int8"}


@pytest.mark.parametrize("backend, device, file_precision, flags, expected", [
    ("openvino", "cpu", "fp32", SAPPHIRE_RAPIDS, "bf16"),
    ("torch", "cpu", "fp32", AVX2 | {"avx512_bf16"}, "bf16"),
    ("openvino", "cpu", "fp32", AVX2, "fp32"),
    ("onnxruntime", "cpu", "fp32", SAPPHIRE_RAPIDS, "fp32"),
    ("onnxruntime", "cpu", "int8", AVX2, "int8"),
    ("openvino", "cpu", "int8", SAPPHIRE_RAPIDS, "int8"),
    ("onnxruntime", "tensorrt", "fp32", frozenset(), "fp16"),
    ("torch", "cuda", "fp32", frozenset(), "fp16"),
    ("onnxruntime", "cuda", "fp32", frozenset(), "fp32"),
])
def test_auto_precision_follows_the_cpu_flags(backend, device, file_precision, flags, expected) -> None:
    from bisenet_ros.inference.precision import choose_precision

    chosen, reason = choose_precision(backend, device, file_precision, flags)
    assert chosen == expected and reason.startswith(f"{expected}: ") and "\n" not in reason
    if expected == "bf16":
        assert "bf16" in reason.split(":", 1)[1] and backend in reason


def test_segmenter_auto_precision_uses_the_injected_flags(monkeypatch, fp32_model, bag_int8) -> None:
    from bisenet_ros.inference import Segmenter
    from bisenet_ros.inference import precision

    monkeypatch.setattr(precision, "cpu_flags", lambda: AVX2)
    seg = Segmenter(weights=str(fp32_model), backend="openvino", precision="auto")
    assert seg.backend.precision == "fp32" and seg.config.precision == "fp32"
    assert seg.precision_reason.startswith("fp32: CPU has no native bf16")
    seg = Segmenter(weights=str(bag_int8), backend="onnxruntime", precision="auto")
    assert seg.backend.precision == "int8" and seg.precision_reason.startswith("int8: ")
    monkeypatch.setattr(precision, "cpu_flags", lambda: SAPPHIRE_RAPIDS)
    seg = Segmenter(weights=str(bag_int8), backend="openvino", precision="auto")
    assert "avx512_vnni" in seg.precision_reason
    # Given explicitly, there is no reason to report; an int8 file runs in int8.
    assert Segmenter(weights=str(bag_int8), backend="onnxruntime").precision_reason is None
    with pytest.raises(Exception, match="int8 model"):
        Segmenter(weights=str(bag_int8), backend="openvino", precision="bf16")
    with pytest.raises(Exception, match="bisenet-ros quantize"):
        Segmenter(weights=str(fp32_model), backend="onnxruntime", precision="int8")


def test_files_from_before_quantization_read_as_fp32(fp32_model) -> None:
    import onnx

    from bisenet_ros.inference.export import METADATA_KEY, read_onnx_info

    proto = onnx.load(str(fp32_model))
    entry = next(p for p in proto.metadata_props if p.key == METADATA_KEY)
    data = json.loads(entry.value)
    data["format_version"] = 1
    del data["precision"], data["calibration"]
    entry.value = json.dumps(data)
    info = read_onnx_info(proto.SerializeToString())
    assert info.precision == "fp32" and info.calibration is None


def test_tensorrt_takes_the_qdq_file_with_int8_options(bag_int8, tmp_path) -> None:
    from bisenet_ros.inference import BackendError, Segmenter
    from bisenet_ros.inference.backends.onnxruntime_backend import execution_providers

    providers = execution_providers("tensorrt", "int8", str(tmp_path))
    name, options = providers[0]
    assert name == "TensorrtExecutionProvider"
    assert options["trt_int8_enable"] is True and options["trt_fp16_enable"] is True
    assert options["trt_engine_cache_enable"] is True
    assert execution_providers("cpu", "int8", None) == ["CPUExecutionProvider"]
    # uint8 (asymmetric) activations: TensorRT cannot run them; refused with the fix, before any GPU check.
    with pytest.raises(BackendError, match="--activations int8"):
        Segmenter(weights=str(bag_int8), backend="onnxruntime", device="tensorrt")


def test_compressed_image_bag_calibrates(fp32_model, frames, tmp_path) -> None:
    from bisenet_ros.inference.export import read_onnx_info
    from bisenet_ros.replay.bagtools import write_image_bag

    bag = write_image_bag(tmp_path / "jpeg_bag", frames[:6], compressed="jpeg", storage="sqlite3")
    out = tmp_path / "int8.onnx"
    assert main(["quantize", str(fp32_model), "--calibration", str(bag), "-o", str(out), "--method", "minmax"]) == 0
    calibration = read_onnx_info(out).calibration
    assert calibration["frames"] == 4 and calibration["quality"]["held_out_frames"] == 1
    assert calibration["quality"]["agreement"] >= AGREEMENT_BOUND
