"""What a user is told must be true: the model named in reports, metrics.json, /diagnostics and the
bench is the one that ran (not the configured defaults), and the replay copies headers bit for bit."""
from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from bisenet_ros.commands.replay import main as replay_main
from bisenet_ros.inference import Segmenter, engine_provenance
from bisenet_ros.inference.export import export_onnx
from bisenet_ros.inference.segmenter import load_torch_model, resolve_class_set
from bisenet_ros.config import SegmenterConfig
from bisenet_ros.replay.bagtools import write_image_bag

REALBAGS = Path(__file__).resolve().parents[2] / "shared" / "realbags"

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def stdc1_onnx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An STDC1 exported at 64x32: neither the default variant (bisenetv2) nor size (1024x512)."""
    torch.manual_seed(0)
    config = SegmenterConfig(variant="stdc1")
    with pytest.warns(UserWarning, match="randomly initialised"):
        model = load_torch_model(config)
    path = tmp_path_factory.mktemp("onnx") / "stdc1_64x32.onnx"
    export_onnx(model, str(path), resolution=(64, 32), class_set=resolve_class_set(config, model))
    return path


def test_provenance_comes_from_the_file_not_the_defaults(stdc1_onnx: Path) -> None:
    seg = Segmenter(weights=str(stdc1_onnx), backend="onnxruntime")   # variant/resolution defaults
    info = seg.provenance()
    assert info["variant"] == "stdc1" and info["resolution"] == [64, 32]
    assert info["num_classes"] == 19 and info["class_set"]
    assert info["backend"] == "onnxruntime" and info["device"] == "cpu" and info["precision"] == "fp32"
    assert info["weights"] == str(stdc1_onnx)
    assert info["weights_sha256"] == hashlib.sha256(stdc1_onnx.read_bytes()).hexdigest()[:12]
    assert engine_provenance(seg) == info


def test_replay_report_names_the_model_that_ran(stdc1_onnx: Path, tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    bag = write_image_bag(tmp_path / "in", [rng.integers(0, 256, (24, 40, 3), dtype=np.uint8)] * 2)
    report = tmp_path / "report"
    # The replay's defaults say bisenetv2 at 1024x512; the .onnx file is an STDC1 at 64x32.
    rc = replay_main([str(bag), "-o", str(tmp_path / "out"), "--weights", str(stdc1_onnx),
                      "--backend", "onnxruntime", "--no-progress", "--report", str(report)])
    assert rc == 0
    engine = json.loads((report / "metrics.json").read_text())["engine"]
    assert engine["variant"] == "stdc1" and engine["resolution"] == [64, 32]
    assert engine["backend"] == "onnxruntime" and engine["precision"] == "fp32"
    assert engine["weights_sha256"] == hashlib.sha256(stdc1_onnx.read_bytes()).hexdigest()[:12]
    page = (report / "report.html").read_text()
    assert "stdc1 at 64x32, 19 classes, onnxruntime/cpu fp32" in page
    assert "bisenetv2" not in page


def test_replay_copies_unnormalized_stamps_bit_for_bit(tmp_path: Path) -> None:
    """ros2bag_tools' images.bag: stamps {0, 0}, {0, 1e9}, {0, 2e9} (nanosec out of range)."""
    from rosbags.rosbag2 import Reader

    from bisenet_ros.replay.messages import deserialize

    source = REALBAGS / "ros2bag_tools_images"
    bag = tmp_path / "images"
    shutil.copytree(source, bag)
    out, report = tmp_path / "out", tmp_path / "report"
    rc = replay_main([str(bag), "-o", str(out), "--resolution", "64x32", "--no-progress",
                      "--report", str(report)])
    assert rc == 0
    stamps: dict[str, list[tuple[int, int, str]]] = {}
    for path, topic_filter in ((bag, None), (out, "/segmentation/mask")):
        with Reader(path) as reader:
            for connection, _, raw in reader.messages():
                if topic_filter is not None and connection.topic != topic_filter:
                    continue
                header = deserialize(raw, connection.msgtype).header
                stamps.setdefault(str(path), []).append(
                    (header.stamp.sec, header.stamp.nanosec, header.frame_id))
    expected = [(0, 0, "camera_optical_frame"), (0, 1_000_000_000, "camera_optical_frame"),
                (0, 2_000_000_000, "camera_optical_frame")]
    assert stamps[str(bag)] == expected
    assert stamps[str(out)] == expected
    warnings = json.loads((report / "metrics.json").read_text())["status"]["warnings"]
    assert any("2 image message(s) carry a header stamp with nanosec outside" in w for w in warnings)
