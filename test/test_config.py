"""SegmenterConfig: the one option set shared by engine, node, CLIs and replay."""
from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from bisenet_ros.config import SegmenterConfig, add_config_arguments, config_from_args, parse_resolution


def test_defaults_are_valid() -> None:
    config = SegmenterConfig()
    config.validate()
    assert (config.variant, config.resolution, config.backend, config.precision) == (
        "bisenetv2", (1024, 512), "torch", "fp32")


def test_unknown_option_suggests_the_close_name() -> None:
    with pytest.raises(ValueError, match=r"'resolutoin' \(did you mean 'resolution'\?\)"):
        SegmenterConfig.from_dict({"resolutoin": "1024x512"})


@pytest.mark.parametrize("values, message", [
    ({"resolution": "1024"}, "expected WIDTHxHEIGHT, e.g. 1024x512"),
    ({"resolution": "16x16"}, "width must be an integer in 32..4096"),
    ({"backend": "tensorflow"}, "backend='tensorflow': expected one of torch, onnxruntime, openvino"),
    ({"resize": "crop"}, "expected one of stretch, letterbox"),
    ({"precision": "fp16"}, "precision='fp16' needs a GPU"),
    ({"device": "gpu"}, "expected 'cpu', 'cuda', 'cuda:N' or 'tensorrt'"),
    ({"device": "tensorrt"}, "needs backend='onnxruntime'"),
    ({"variant": "bisenetv3"}, "variant='bisenetv3': expected one of bisenetv1, bisenetv1_xception39"),
    ({"num_classes": 300}, "expected an integer in 1..255"),
    ({"num_classes": "many"}, "num_classes='many': expected an integer"),
    ({"overlay_alpha": 1.5}, "expected a number in 0..1"),
    ({"confidence": "maybe"}, "expected true or false"),
    ({"drivable_classes": ""}, "drivable_classes is empty"),
])
def test_bad_values_name_the_option_and_the_fix(values: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        SegmenterConfig.from_dict(values)


def test_an_onnx_file_needs_no_known_variant() -> None:
    assert SegmenterConfig.from_dict({"weights": "model.onnx", "variant": "custom"}).weights == "model.onnx"


def test_coercion_from_strings() -> None:
    config = SegmenterConfig.from_dict({"resolution": "768X384", "drivable_classes": "road, sidewalk",
                                        "num_classes": "19", "confidence": "true", "weights": ""})
    assert config.resolution == (768, 384)
    assert config.drivable_classes == ("road", "sidewalk")
    assert (config.num_classes, config.confidence, config.weights) == (19, True, None)
    assert parse_resolution([640, 320]) == (640, 320)


def test_ros_parameter_file_and_overrides(tmp_path: Path) -> None:
    path = tmp_path / "params.yaml"
    path.write_text("/**:\n  ros__parameters:\n    variant: stdc1\n    resolution: 1024x512\n"
                    "    max_frame_age: 0.5\n    overlay_alpha: 0.3\n")
    config = SegmenterConfig.from_yaml(path, overlay_alpha=0.7)
    assert (config.variant, config.resolution, config.overlay_alpha) == ("stdc1", (1024, 512), 0.7)


def test_cli_arguments_mirror_the_fields(tmp_path: Path) -> None:
    parser = argparse.ArgumentParser()
    add_config_arguments(parser)
    path = tmp_path / "c.yaml"
    path.write_text("variant: stdc2\nresolution: [1536, 768]\n")
    args = parser.parse_args(["--config", str(path), "--backend", "openvino", "--drivable-classes", "road,parking"])
    config = config_from_args(args)
    assert (config.variant, config.resolution, config.backend) == ("stdc2", (1536, 768), "openvino")
    assert config.drivable_classes == ("road", "parking")
    flags = {a.dest for a in parser._actions}
    assert set(SegmenterConfig.field_names()) <= flags


def test_to_dict_round_trip() -> None:
    config = SegmenterConfig.from_dict({"variant": "stdc1", "resolution": "1024x512"})
    assert SegmenterConfig.from_dict(config.to_dict()) == config


def test_explicit_options_are_told_from_defaults(tmp_path: Path) -> None:
    from bisenet_ros.pipeline import all_parameters, config_from_parameters

    root = Path(__file__).resolve().parents[1]
    # keywords and mappings: what is given is explicit, even when it equals the default
    assert SegmenterConfig.from_dict({"variant": "bisenetv2", "weights": "x.pth"}).explicit == {"variant"}
    assert SegmenterConfig(variant="stdc1", resolution=(1024, 512)).explicit == {"variant"}
    # the shipped parameter files: their sizes are the variants' recommended ones (defaults)
    assert SegmenterConfig.from_yaml(root / "config" / "bisenetv2.yaml").explicit == set()
    assert SegmenterConfig.from_yaml(root / "config" / "bisenetv1.yaml").explicit == {"variant"}
    assert SegmenterConfig.from_yaml(root / "config" / "stdc1.yaml", resolution="640x480").explicit == {
        "variant", "resolution"}
    # the node: every parameter has a value; the declared defaults are defaults
    defaults = {spec.name: spec.default for spec in all_parameters()}
    assert config_from_parameters(defaults).explicit == set()
    assert config_from_parameters({**defaults, "num_classes": 11, "backend": "torch"}).explicit == {"num_classes"}
    # the command line: given options only
    parser = argparse.ArgumentParser()
    add_config_arguments(parser)
    assert config_from_args(parser.parse_args(["--weights", "x.pth", "--backend", "torch"])).explicit == {"backend"}
    # replace() sets options; adopt() takes a file's values without making them the user's
    config = SegmenterConfig(weights="x.pth")
    assert config.replace(variant="stdc1").explicit == {"variant"}
    adopted = config.adopt(variant="stdc1", resolution=(64, 32))
    assert adopted.variant == "stdc1" and adopted.explicit == set()


def test_reading_a_config_never_imports_torch() -> None:
    # An .onnx node with a shipped parameter file whose size is not the 1024x512 default (stdc2:
    # 1536x768) tells its explicit options from the defaults without the model registry: torch
    # costs seconds and hundreds of MB at start, and an onnxruntime-only install has none.
    import subprocess
    import sys

    from bisenet_ros.config import RECOMMENDED_RESOLUTIONS
    from bisenet_ros.models import list_models

    assert sorted(RECOMMENDED_RESOLUTIONS) == list_models()
    root = Path(__file__).resolve().parents[1]
    script = (
        "import sys\n"
        "from bisenet_ros.pipeline import all_parameters, config_from_parameters\n"
        "values = {s.name: s.default for s in all_parameters()}\n"
        "values.update(variant='stdc2', resolution='1536x768', weights='model.onnx', backend='onnxruntime')\n"
        "config = config_from_parameters(values)\n"
        "print(sorted(config.explicit), 'torch' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=root,
                         check=True).stdout.split()
    assert out[-1] == "False", "reading the config imported torch"
    assert "'resolution'," not in out and "'resolution']" not in out  # stdc2's own size is a default
