"""ONNX export: graph outputs, embedded metadata, dynamic sizes and the `bisenet-ros export` command."""
from __future__ import annotations

import json
import warnings

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from torch import nn

from bisenet_ros.cli import main as cli_main
from bisenet_ros.inference import Segmenter
from bisenet_ros.inference.export import (METADATA_KEY, export_onnx, export_onnx_bytes, read_onnx_info,
                                         without_outputs)
from bisenet_ros.labels import cityscapes, make_class_set
from bisenet_ros.models import Normalization


class TinyNet(nn.Module):
    """A small conv net with the attributes registry models carry."""

    def __init__(self, num_classes: int = 19) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, num_classes, 3, padding=1))
        self.normalization = Normalization((0.4, 0.5, 0.6), (0.2, 0.25, 0.3))
        self.num_classes = num_classes
        self.variant = "tiny"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


# Tiny inputs: one thread is faster, and immune to OpenMP spin-waits on a busy machine.
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _logits(model: nn.Module, x: np.ndarray) -> np.ndarray:
    with torch.inference_mode():
        return model.eval()(torch.from_numpy(x)).numpy()


def test_argmax_and_confidence_outputs_and_metadata(tmp_path) -> None:
    model = TinyNet()
    path = tmp_path / "tiny.onnx"
    info = export_onnx(model, path, resolution=(48, 32), class_set=cityscapes(), confidence=True)
    assert info.outputs == ["labels", "confidence"] and info.argmax_in_graph
    proto = onnx.load(str(path))
    onnx.checker.check_model(proto)
    assert proto.opset_import[0].version >= 17
    meta = json.loads({p.key: p.value for p in proto.metadata_props}[METADATA_KEY])
    assert meta["variant"] == "tiny" and meta["num_classes"] == 19
    assert meta["class_names"][0] == "road" and meta["palette"][0] == [128, 64, 128]
    assert meta["normalization"] == {"mean": [0.4, 0.5, 0.6], "std": [0.2, 0.25, 0.3]}
    assert meta["input"]["size"] == [48, 32] and meta["input"]["color_order"] == "rgb"
    read = read_onnx_info(path)
    assert read == info

    x = np.random.default_rng(0).standard_normal((1, 3, 32, 48)).astype(np.float32)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    labels, confidence = session.run(None, {"input": x})
    logits = _logits(model, x)
    assert labels.dtype == np.uint8 and labels.shape == (1, 32, 48)
    np.testing.assert_array_equal(labels, logits.argmax(1))
    softmax = np.exp(logits - logits.max(1, keepdims=True))
    softmax /= softmax.sum(1, keepdims=True)
    np.testing.assert_allclose(confidence, softmax.max(1), rtol=1e-5)


def test_logits_export_runs_through_the_numpy_path(tmp_path) -> None:
    model = TinyNet(num_classes=3)
    classes = make_class_set(["a", "b", "c"])
    path = tmp_path / "logits.onnx"
    info = export_onnx(model, path, resolution=(40, 32), class_set=classes, argmax=False)
    assert info.outputs == ["logits"] and not info.argmax_in_graph
    frame = np.random.default_rng(1).integers(0, 256, (32, 40, 3), dtype=np.uint8)
    seg = Segmenter(weights=str(path), backend="onnxruntime", drivable_classes=["a"], confidence=True)
    result = seg(frame)
    _, blob, _ = seg.preprocess(frame)
    np.testing.assert_array_equal(result.labels, _logits(model, blob.copy())[0].argmax(0))
    assert result.confidence.min() >= 1 / 3 - 1e-6 and result.confidence.max() <= 1.0
    # Batches take the same path on both ONNX backends: this file side by side (two workers), and
    # a batch-2 file in runs of two frames (the last one padded).
    export_onnx(model, tmp_path / "logits_b2.onnx", resolution=(40, 32), class_set=classes, argmax=False, batch=2)
    frames = [frame, frame[::-1].copy(), frame[:, ::-1].copy()]
    for backend, name in (("onnxruntime", "logits.onnx"), ("openvino", "logits.onnx"),
                          ("onnxruntime", "logits_b2.onnx"), ("openvino", "logits_b2.onnx")):
        engine = Segmenter(weights=str(tmp_path / name), backend=backend, drivable_classes=["a"],
                           confidence=True, num_threads=2)
        for got, one in zip(engine.segment_batch(frames), frames):
            expected = seg(one)
            np.testing.assert_array_equal(got.labels, expected.labels, err_msg=f"{backend} {name}")
            np.testing.assert_allclose(got.confidence, expected.confidence, atol=1e-6, err_msg=f"{backend} {name}")


def test_dynamic_export_runs_at_any_size(tmp_path) -> None:
    model = TinyNet()
    data, info = export_onnx_bytes(model, resolution=(48, 32), class_set=cityscapes(), dynamic=True)
    assert info.input_size is None
    session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    for height, width in ((32, 48), (40, 72)):
        x = np.random.default_rng(height).standard_normal((1, 3, height, width)).astype(np.float32)
        (labels,) = session.run(None, {"input": x})
        np.testing.assert_array_equal(labels, _logits(model, x).argmax(1))
    path = tmp_path / "dynamic.onnx"
    path.write_bytes(data)
    seg = Segmenter(weights=str(path), backend="onnxruntime", resolution=(64, 40), output_resolution="network")
    assert seg(np.zeros((50, 80, 3), np.uint8)).labels.shape == (40, 64)


def test_export_refuses_inconsistent_requests() -> None:
    with pytest.raises(ValueError, match="has 3 classes but the model predicts 19"):
        export_onnx_bytes(TinyNet(), resolution=(32, 32), class_set=make_class_set(["a", "b", "c"]))
    with pytest.raises(ValueError, match="export with argmax"):
        export_onnx_bytes(TinyNet(), resolution=(32, 32), class_set=cityscapes(), argmax=False, confidence=True)


def test_files_without_metadata_are_refused(tmp_path) -> None:
    plain = tmp_path / "plain.onnx"
    with warnings.catch_warnings():   # the legacy exporter's deprecation notice: a plain third-party file
        warnings.simplefilter("ignore")
        torch.onnx.export(TinyNet().eval(), (torch.zeros(1, 3, 16, 16),), str(plain), dynamo=False,
                          input_names=["input"], output_names=["logits"])
    with pytest.raises(ValueError, match="no 'bisenet_ros' metadata.*bisenet-ros export"):
        read_onnx_info(plain)
    with pytest.raises(ValueError, match="no 'bisenet_ros' metadata"):
        Segmenter(weights=str(plain), backend="onnxruntime")
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"not a protobuf at all \x00\xff")
    with pytest.raises(ValueError, match="cannot be read as an ONNX model"):
        read_onnx_info(garbage)
    with pytest.raises(ValueError, match="no such ONNX file"):
        read_onnx_info(tmp_path / "missing.onnx")


def test_export_command(tmp_path, capsys) -> None:
    output = tmp_path / "out" / "v2.onnx"
    with pytest.warns(UserWarning, match="randomly initialised"):
        code = cli_main(["export", "--variant", "bisenetv2", "--resolution", "64x32", "-o", str(output),
                         "--confidence"])
    printed = capsys.readouterr().out
    assert code == 0, printed
    assert "verified with onnxruntime" in printed and output.is_file()
    info = read_onnx_info(output)
    assert info.variant == "bisenetv2" and info.input_size == (64, 32)
    assert info.outputs == ["labels", "confidence"]
    seg = Segmenter(weights=str(output), backend="onnxruntime", confidence=True)
    result = seg(np.zeros((30, 50, 3), np.uint8))
    assert result.labels.shape == (30, 50) and result.confidence.shape == (30, 50)

    assert cli_main(["export", "--weights", str(tmp_path / "missing.pth"), "-o", str(output)]) == 2
    assert "no such file" in capsys.readouterr().err  # errors go to stderr


def test_export_command_takes_a_training_checkpoint_as_it_is(tmp_path, capsys, monkeypatch) -> None:
    from trained import NAMES, SIZE, write_training_checkpoint

    weights = str(write_training_checkpoint(tmp_path / "best.pth"))
    monkeypatch.chdir(tmp_path)
    assert cli_main(["export", "--weights", weights, "--no-verify"]) == 0   # named after the file's variant and size
    info = read_onnx_info(tmp_path / "stdc1_64x32.onnx")
    assert (info.variant, info.num_classes, info.class_names, info.input_size) == ("stdc1", 5, NAMES, SIZE)
    capsys.readouterr()
    # A file that does not reproduce PyTorch is reported and never written.
    monkeypatch.setattr("bisenet_ros.commands.export.verify_export", lambda *args: 0.5)
    assert cli_main(["export", "--weights", weights, "-o", "sub/bad.onnx"]) == 1
    assert "sub/bad.onnx was not written" in capsys.readouterr().err
    assert not (tmp_path / "sub").exists()
    # An explicit contradiction names both values (exit status 2, nothing written).
    assert cli_main(["export", "--weights", weights, "--num-classes", "19", "-o", "x.onnx"]) == 2
    assert "num_classes=19 contradicts" in capsys.readouterr().err and not (tmp_path / "x.onnx").exists()


def _street_frames(count: int) -> list[np.ndarray]:
    import cv2

    rng = np.random.default_rng(7)
    return [cv2.resize(rng.integers(0, 256, (4, 6, 3), dtype=np.uint8), (80 + 8 * i, 40), interpolation=cv2.INTER_LINEAR)
            for i in range(count)]


@pytest.mark.parametrize("variant", ["bisenetv2", "stdc1"])
def test_batch_dynamic_export_equals_batch_one_label_for_label(tmp_path, capsys, variant) -> None:
    torch.manual_seed(0)
    weights = tmp_path / f"{variant}.pth"
    from bisenet_ros.models import build_model, make_checkpoint

    torch.save(make_checkpoint(build_model(variant, num_classes=19)), weights)
    one, dynamic = tmp_path / "b1.onnx", tmp_path / "dyn.onnx"
    base = ["export", "--variant", variant, "--weights", str(weights), "--resolution", "64x32"]
    assert cli_main(base + ["-o", str(one)]) == 0
    assert cli_main(base + ["-o", str(dynamic), "--batch", "dynamic", "--max-batch", "3"]) == 0
    assert "dynamic batch (up to 3)" in capsys.readouterr().out
    info = read_onnx_info(dynamic)
    assert (info.batch, info.max_batch) == (None, 3) and (read_onnx_info(one).batch, read_onnx_info(one).max_batch) == (1, 1)
    # The graph itself: one Run of three frames against three Runs of the batch-1 file.
    x = np.random.default_rng(0).standard_normal((3, 3, 32, 64)).astype(np.float32)
    batched = ort.InferenceSession(str(dynamic), providers=["CPUExecutionProvider"]).run(["labels"], {"input": x})[0]
    single = ort.InferenceSession(str(one), providers=["CPUExecutionProvider"])
    assert batched.shape == (3, 32, 64)
    for i in range(3):
        np.testing.assert_array_equal(batched[i], single.run(["labels"], {"input": x[i:i + 1]})[0][0])
    # Through the engine, on every ONNX backend: the frames of three cameras.
    frames = _street_frames(3)
    for backend in ("onnxruntime", "openvino"):
        reference = Segmenter(weights=str(one), backend=backend)
        engine = Segmenter(weights=str(dynamic), backend=backend)
        for got, frame in zip(engine.segment_batch(frames), frames):
            np.testing.assert_array_equal(got.labels, reference(frame).labels, err_msg=backend)


def test_a_confidence_nobody_reads_is_not_computed_on_the_cpu(tmp_path) -> None:
    # A file exported with --confidence, run by an engine that does not ask for it: its sessions
    # (the frame-by-frame one and the batch one) hold the graph without the confidence nodes,
    # and give the same labels as an engine that does ask for it.
    model = TinyNet()
    frames = _street_frames(2)
    for name, batch, largest in (("fixed", 1, None), ("dynamic", None, 2)):
        path = tmp_path / f"{name}.onnx"
        export_onnx(model, path, resolution=(48, 32), class_set=cityscapes(), confidence=True,
                    batch=batch, max_batch=largest)
        full = onnx.load(str(path))
        smaller = onnx.load_from_string(without_outputs(str(path), ("confidence",)))
        onnx.checker.check_model(smaller)
        assert [o.name for o in smaller.graph.output] == ["labels"]
        assert len(smaller.graph.node) < len(full.graph.node)
        assert smaller.ir_version == full.ir_version
        assert without_outputs(str(path), ("logits",)) is None  # nothing to drop: run the file
        plain = Segmenter(weights=str(path), backend="onnxruntime", num_threads=2)
        asking = Segmenter(weights=str(path), backend="onnxruntime", confidence=True)
        assert [o.name for o in plain.backend.session.get_outputs()] == ["labels"]
        assert [o.name for o in asking.backend.session.get_outputs()] == ["labels", "confidence"]
        for got, frame in zip(plain.segment_batch(frames), frames):
            wanted = asking(frame)
            np.testing.assert_array_equal(got.labels, wanted.labels, err_msg=name)
            assert got.confidence is None and wanted.confidence is not None
        assert [o.name for o in plain.backend.batch_session.get_outputs()] == ["labels"]


def test_fixed_batch_export_runs_padded_and_old_files_read_as_batch_one(tmp_path) -> None:
    model = TinyNet()
    path = tmp_path / "b2.onnx"
    info = export_onnx(model, path, resolution=(48, 32), class_set=cityscapes(), batch=2)
    assert (info.batch, info.max_batch) == (2, 2)
    assert [d.dim_value for d in onnx.load(str(path)).graph.input[0].type.tensor_type.shape.dim] == [2, 3, 32, 48]
    frames = _street_frames(3)
    export_onnx(model, tmp_path / "b1.onnx", resolution=(48, 32), class_set=cityscapes())
    reference = Segmenter(weights=str(tmp_path / "b1.onnx"), backend="onnxruntime")
    for backend in ("onnxruntime", "openvino"):
        engine = Segmenter(weights=str(path), backend=backend)
        assert engine.backend.file_batch == 2
        # Three frames = a run of two and a padded run; one frame = a padded run.
        for got, frame in zip(engine.segment_batch(frames), frames):
            np.testing.assert_array_equal(got.labels, reference(frame).labels, err_msg=backend)
        np.testing.assert_array_equal(engine(frames[0]).labels, reference(frames[0]).labels)
    # A file from before format_version 3 has no batch keys: batch 1.
    proto = onnx.load(str(path))
    meta = json.loads({p.key: p.value for p in proto.metadata_props}[METADATA_KEY])
    meta["format_version"] = 2
    del meta["input"]["batch"], meta["input"]["max_batch"]
    old = json.dumps(meta)
    from bisenet_ros.inference.export import OnnxModelInfo

    assert (OnnxModelInfo.from_json(old).batch, OnnxModelInfo.from_json(old).max_batch) == (1, 1)
    with pytest.raises(ValueError, match="batch=0: expected a frame count"):
        export_onnx_bytes(model, resolution=(48, 32), class_set=cityscapes(), batch=0)
    with pytest.raises(ValueError, match="max_batch is for a dynamic batch"):
        export_onnx_bytes(model, resolution=(48, 32), class_set=cityscapes(), batch=2, max_batch=4)
    with pytest.raises(SystemExit):   # argparse: usage and one line
        cli_main(["export", "--batch", "zero"])


def test_tensorrt_profile_covers_one_to_the_largest_batch() -> None:
    from bisenet_ros.inference.backends.onnxruntime_backend import execution_providers

    (_, options), _, _ = execution_providers("tensorrt", "fp16", None, ("input", (3, 512, 1024), 4))
    assert options["trt_profile_min_shapes"] == "input:1x3x512x1024"
    assert options["trt_profile_opt_shapes"] == "input:4x3x512x1024"
    assert options["trt_profile_max_shapes"] == "input:4x3x512x1024"
    (_, fixed), _, _ = execution_providers("tensorrt", "fp16", None)
    assert not any(key.startswith("trt_profile") for key in fixed)
