"""Every backend available here gives the torch backend's labels on the same weights.

A real registry model (BiSeNetV2, random weights saved as this project's checkpoint) runs at a
small resolution through torch, and through onnxruntime and openvino both from the .pth (the
engine exports it in memory) and from an exported .onnx file that carries its own metadata.
"""
from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch

from bisenet_ros.inference import Segmenter
from bisenet_ros.inference.export import export_onnx, read_onnx_info
from bisenet_ros.models import build_model, make_checkpoint

RESOLUTION = (128, 64)
ONNX_BACKENDS = [b for b in ("onnxruntime", "openvino") if importlib.util.find_spec(b) is not None]


# Tiny inputs: one thread is faster, and immune to OpenMP spin-waits on a busy machine.
pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> tuple[str, torch.nn.Module]:
    torch.manual_seed(0)
    model = build_model("bisenetv2", num_classes=5)
    # Random BatchNorm statistics, so that the check covers folded BN too.
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.2, 0.2)
            module.running_var.uniform_(0.5, 1.5)
    path = tmp_path_factory.mktemp("weights") / "bisenetv2_5.pth"
    names = ["ground", "obstacle", "sky", "person", "vehicle"]
    palette = [[10, 20, 30], [40, 50, 60], [70, 80, 90], [100, 110, 120], [130, 140, 150]]
    torch.save(make_checkpoint(model, class_names=names, palette=palette), path)
    return str(path), model


@pytest.fixture(scope="module")
def frame() -> np.ndarray:
    rng = np.random.default_rng(1)
    # Smooth random image (blocks) so predictions form regions, as on a real frame.
    small = rng.integers(0, 256, (6, 10, 3), dtype=np.uint8)
    import cv2

    return cv2.resize(small, (200, 120), interpolation=cv2.INTER_LINEAR)


def _torch_reference(seg: Segmenter, model: torch.nn.Module, frame: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    _, blob, _ = seg.preprocess(frame, "bgr")
    with torch.inference_mode():
        logits = model.eval()(torch.from_numpy(blob.copy()))[0].numpy()
    top2 = np.sort(logits, axis=0)[-2:]
    return logits.argmax(0), top2[1] - top2[0]


def _assert_same_labels(labels: np.ndarray, reference: np.ndarray, gap: np.ndarray) -> None:
    differ = labels != reference
    # Labels may only differ where the top-2 logits are tied to float rounding.
    assert not (differ & (gap > 1e-3)).any(), f"{differ.sum()} pixels differ, at gaps {gap[differ][:5]}"
    assert differ.mean() < 1e-3


@pytest.fixture(scope="module")
def torch_seg(checkpoint) -> Segmenter:
    path, _ = checkpoint
    return Segmenter(weights=path, variant="bisenetv2", num_classes=5, resolution=RESOLUTION,
                     drivable_classes=["ground"], confidence=True)


@pytest.fixture(scope="module")
def exported(checkpoint, torch_seg, tmp_path_factory) -> str:
    path, _ = checkpoint
    onnx_path = tmp_path_factory.mktemp("onnx") / "model.onnx"
    model = build_model("bisenetv2", num_classes=5, weights=path)
    export_onnx(model, onnx_path, resolution=RESOLUTION, class_set=torch_seg.class_set, confidence=True)
    return str(onnx_path)


def test_torch_backend_matches_the_model(checkpoint, torch_seg, frame) -> None:
    _, model = checkpoint
    assert torch_seg.class_names == ["ground", "obstacle", "sky", "person", "vehicle"]   # from the checkpoint
    assert torch_seg.palette[1].tolist() == [40, 50, 60]
    reference, gap = _torch_reference(torch_seg, model, frame)
    _, blob, _ = torch_seg.preprocess(frame)
    labels = torch_seg.backend.run(blob).labels
    _assert_same_labels(labels, reference, gap)
    assert len(np.unique(labels)) >= 2   # a real prediction, not a constant map


@pytest.mark.parametrize("backend", ONNX_BACKENDS)
def test_exported_onnx_runs_with_no_other_input_and_matches_torch(checkpoint, torch_seg, exported, frame,
                                                                  backend) -> None:
    _, model = checkpoint
    # Only the file: no variant, no class count, no resolution, no normalization given.
    seg = Segmenter(weights=exported, backend=backend, drivable_classes=["ground"], confidence=True)
    assert seg.network_size == RESOLUTION and seg.config.num_classes == 5
    assert seg.config.variant == "bisenetv2" and seg.describe().startswith("bisenetv2 128x64")
    assert seg.class_names == torch_seg.class_names
    np.testing.assert_array_equal(seg.palette, torch_seg.palette)
    assert seg.normalization.mean == torch_seg.normalization.mean
    assert seg.normalization.std == torch_seg.normalization.std
    reference, gap = _torch_reference(torch_seg, model, frame)
    _, blob, _ = seg.preprocess(frame)
    net = seg.backend.run(blob)
    _assert_same_labels(net.labels, reference, gap)
    # The whole pipeline at camera resolution, confidence included.
    result, expected = seg(frame), torch_seg(frame)
    assert result.labels.shape == frame.shape[:2]
    assert (result.labels == expected.labels).mean() > 0.999
    np.testing.assert_allclose(result.confidence, expected.confidence, atol=1e-4)
    if backend == "openvino":   # fp32 by explicit hint, whatever the CPU would default to
        hint = seg.backend.compiled.get_property("INFERENCE_PRECISION_HINT")
        assert "32" in str(hint)


@pytest.mark.skipif("onnxruntime" not in ONNX_BACKENDS, reason="onnxruntime not installed")
def test_checkpoint_on_onnxruntime_is_exported_in_memory(checkpoint, torch_seg, frame) -> None:
    path, model = checkpoint
    seg = Segmenter(weights=path, variant="bisenetv2", num_classes=5, resolution=RESOLUTION,
                    drivable_classes=["ground"], backend="onnxruntime", output_resolution="network")
    assert seg.class_names == torch_seg.class_names
    reference, gap = _torch_reference(torch_seg, model, frame)
    _assert_same_labels(seg(frame).labels, reference, gap)


def test_onnx_file_needs_an_onnx_backend(exported) -> None:
    assert read_onnx_info(exported).class_names == ["ground", "obstacle", "sky", "person", "vehicle"]
    with pytest.raises(ValueError, match="use backend='onnxruntime' or 'openvino'"):
        Segmenter(weights=exported, backend="torch")


def test_tensorrt_provider_options(tmp_path) -> None:
    # Cannot run here (no GPU): check the provider list that would be handed to onnxruntime.
    from bisenet_ros.inference.backends.base import BackendError
    from bisenet_ros.inference.backends.onnxruntime_backend import execution_providers

    providers = execution_providers("tensorrt", "fp16", str(tmp_path / "trt"))
    (trt, trt_options), (cuda, cuda_options), cpu = providers
    assert (trt, cuda, cpu) == ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")
    assert trt_options["trt_fp16_enable"] is True and trt_options["trt_engine_cache_enable"] is True
    assert trt_options["trt_engine_cache_path"] == str(tmp_path / "trt")
    assert trt_options["trt_timing_cache_enable"] is True and trt_options["device_id"] == 0
    assert not (tmp_path / "trt").exists()   # created only once the provider is known to exist
    assert execution_providers("tensorrt", "fp32", None)[0][1]["trt_fp16_enable"] is False
    assert execution_providers("cuda:1", "fp32", None)[0] == ("CUDAExecutionProvider", {"device_id": 1})
    assert execution_providers("cpu", "fp32", None) == ["CPUExecutionProvider"]
    with pytest.raises(BackendError, match="needs device='tensorrt'"):
        execution_providers("cuda", "fp16", None)


def test_bench_command_smoke(tmp_path, capsys) -> None:
    import json

    from bisenet_ros.cli import main as cli_main

    output = tmp_path / "bench.json"
    code = cli_main(["bench", "--camera", "96x64", "--resolution", "64x32", "--backends", "torch,onnxruntime",
                     "--precisions", "fp32,fp16,int8", "--frames", "1", "--warmup", "0", "--rounds", "1",
                     "--output", str(output), "--markdown", str(tmp_path / "bench.md")])
    assert code == 0, capsys.readouterr().out
    report = json.loads(output.read_text())
    rows = {(r["backend"], r["precision"]): r for r in report["results"]}
    assert rows[("torch", "fp16")]["status"] == "unavailable"      # fp16 needs a GPU
    assert rows[("torch", "int8")]["status"] == "unavailable" and "onnxruntime" in rows[("torch", "int8")]["reason"]
    int8 = rows[("onnxruntime", "int8")]
    assert int8["status"] == "ok" and int8["engine"]["precision"] == "int8" and int8["speedup_vs_fp32"] > 0
    assert 0.5 <= int8["agreement_vs_fp32"] <= 1.0
    assert report["meta"]["model_gops"]["bisenetv2"] > 0 and isinstance(report["meta"]["cpu_flags"], list)
    assert int8["gops_per_s"] > 0 and int8["peak"]["isa"] in ("VNNI", "AVX2 (3-instruction int8 dot product)")
    for key in (("torch", "fp32"), ("onnxruntime", "fp32")):
        row = rows[key]
        assert row["status"] == "ok", row
        assert row["e2e_ms"]["median"] > 0 and row["peak_rss_mb"] > 50
        assert 0.9 <= row["agreement_vs_baseline"] <= 1.0 and row["speedup_vs_baseline"] > 0
    baseline = [r for r in report["results"] if r["backend"].startswith("baseline")]
    assert baseline and baseline[0]["status"] == "ok"
    assert "| bisenetv2 | onnxruntime | fp32 |" in (tmp_path / "bench.md").read_text()


def test_peak_follows_the_instruction_set() -> None:
    from bisenet_ros.benchmark import peak_gops

    avx2 = {"avx2", "fma"}
    intel = avx2 | {"avx512f", "avx512_vnni", "avx512_bf16"}
    assert peak_gops("fp32", avx2, 2, 3.0)["gops"] == 2 * 3.0 * 32
    assert peak_gops("fp32", intel, 2, 3.0)["gops"] == 2 * 3.0 * 64            # two 512-bit FMA pipes
    assert peak_gops("fp32", intel, 2, 3.0, "AuthenticAMD", "25")["gops"] == 2 * 3.0 * 32  # Zen 4: 256-bit pipes
    assert peak_gops("int8", intel, 1, 1.0)["ops_per_cycle_per_core"] == 256     # VPDPBUSD: 4 MACs per lane
    assert peak_gops("int8", avx2, 1, 1.0)["ops_per_cycle_per_core"] == 128 // 3
    assert peak_gops("bf16", avx2, 1, 1.0)["isa"] == "FMA"                      # no native bf16: fp32 peak
    assert peak_gops("bf16", intel, 1, 1.0)["ops_per_cycle_per_core"] == 128


def test_bench_agreements_compare_bf16_with_fp32_and_everything_with_the_baseline() -> None:
    from bisenet_ros.benchmark import _agreements

    base = np.zeros((4, 4), np.uint8)
    half = base.copy()
    half[:2] = 1
    rows = [
        {"backend": "openvino", "precision": "fp32", "status": "ok", "_job": 0, "e2e_ms": {"median": 50.0}},
        {"backend": "openvino", "precision": "bf16", "status": "ok", "_job": 1, "e2e_ms": {"median": 25.0}},
        {"backend": "baseline (eager torch, NumPy post)", "precision": "fp32", "status": "ok", "_job": 2,
         "e2e_ms": {"median": 100.0}},
    ]
    labels = {0: {"0": base}, 1: {"0": half}, 2: {"0": base}}
    _agreements(rows, labels)
    assert rows[0]["agreement_vs_baseline"] == 1.0 and rows[0]["speedup_vs_baseline"] == 2.0
    assert rows[1]["agreement_vs_fp32"] == 0.5 and rows[1]["speedup_vs_baseline"] == 4.0
    assert rows[1]["speedup_vs_fp32"] == 2.0
    assert "agreement_vs_fp32" not in rows[0]


def test_bench_takes_variant_and_size_from_a_training_checkpoint(tmp_path) -> None:
    import argparse

    from bisenet_ros.commands import bench
    from trained import SIZE, write_training_checkpoint

    parser = argparse.ArgumentParser()
    bench.add_arguments(parser)
    weights = str(write_training_checkpoint(tmp_path / "best.pth"))
    assert bench._model(parser.parse_args(["--weights", weights])) == (["stdc1"], SIZE)
    assert bench._model(parser.parse_args(["--weights", weights, "--resolution", "96x48"])) == (["stdc1"], (96, 48))
    assert bench._model(parser.parse_args([])) == (["bisenetv2"], (1024, 512))
    with pytest.raises(ValueError, match="variant=stdc2 contradicts"):
        bench._model(parser.parse_args(["--weights", weights, "--variants", "stdc2"]))
    (tmp_path / "m.onnx").write_bytes(b"")
    with pytest.raises(ValueError, match="give the checkpoint the file was exported from"):
        bench._model(parser.parse_args(["--weights", str(tmp_path / "m.onnx")]))
