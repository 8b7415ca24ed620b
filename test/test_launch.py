"""launch/*.launch.py and config/*.yaml: declared arguments, the node and parameters they start.

ROS 2's ``launch`` is not installed here, so the launch files run against the launch double in
``test/ros_double/launch_double.py`` (same classes and argument names, ``ros2 launch``'s
argument/include semantics). The parameters they pass are then resolved like rclpy does (params
file, then overrides; value types checked against the declared parameters) and validated with
the node's own validation, so a launch that passes here starts a node with a valid config.
Where ROS 2 is installed, test_launch_integration.py launches the real thing.
"""
from __future__ import annotations

import ast
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from bisenet_ros.config import SegmenterConfig
from bisenet_ros.pipeline import all_parameters, config_from_parameters, node_options_from_parameters
from ros_double import launch_double
from test_node import ros  # noqa: F401  (a fixture: the rclpy double and the node module)

ROOT = Path(__file__).resolve().parents[1]
SINGLE = ROOT / "launch" / "segmentation.launch.py"
MULTI = ROOT / "launch" / "multi_camera.launch.py"
VARIANTS = ("bisenetv1", "bisenetv1_xception39", "bisenetv2", "stdc1", "stdc2")
DECLARED_TYPES = {spec.name: type(spec.default) for spec in all_parameters()}


@pytest.fixture
def launch(monkeypatch: pytest.MonkeyPatch):
    launch_double.install(monkeypatch)
    return launch_double


def _run(launch: Any, path: Path, **arguments: str) -> list[Any]:
    description = launch.load(path).generate_launch_description()
    return launch.evaluate(description, arguments)


def _ros_parameters(path: str) -> dict[str, Any]:
    data = yaml.safe_load(Path(path).read_text())
    assert list(data) == ["/**"], "params files apply to any node name/namespace"
    return dict(data["/**"]["ros__parameters"])


def effective_parameters(node: Any) -> dict[str, Any]:
    """What rclpy would give the node: files and dicts in order, later entries win."""
    values: dict[str, Any] = {}
    for entry in node.parameters:
        if isinstance(entry, str):
            values.update(_ros_parameters(entry))
        else:
            for key, value in entry.items():
                if isinstance(value, launch_double.ParameterValue):
                    assert value.value_type is str  # YAML-looking strings stay strings
                    value = value.value
                values[key] = value
    for key, value in values.items():
        if key == "use_sim_time":
            assert isinstance(value, bool)
            continue
        # rclpy rejects an override whose type differs from the declared default's
        assert key in DECLARED_TYPES, f"{key} is not a parameter of the node"
        assert type(value) is DECLARED_TYPES[key], (key, value)
    return values


def _declared(path: Path) -> dict[str, Any]:
    description = launch_double.load(path).generate_launch_description()
    return {e.name: e for e in description.entities
            if isinstance(e, launch_double.DeclareLaunchArgument)}


def test_segmentation_launch_declares_the_documented_arguments(launch: Any) -> None:
    declared = _declared(SINGLE)
    for name in ("variant", "resolution", "weights", "backend", "device", "image_topic",
                 "namespace", "params_file"):
        assert name in declared, name
        assert declared[name].description
    assert declared["variant"].default_value == SegmenterConfig().variant


def test_documented_command_starts_the_node_with_its_parameters(launch: Any) -> None:
    # ros2 launch bisenet_ros segmentation.launch.py variant:=stdc1 resolution:=1024x512
    (node,) = _run(launch, SINGLE, variant="stdc1", resolution="1024x512")
    assert (node.package, node.executable, node.name) == ("bisenet_ros", "segmentation_node",
                                                          "segmentation")
    setup = (ROOT / "setup.py").read_text()
    assert "segmentation_node = bisenet_ros.runtime:segmentation_node" in setup
    assert node.parameters[0] == str(ROOT / "config" / "stdc1.yaml")
    values = effective_parameters(node)
    config = config_from_parameters(values)
    assert config.variant == "stdc1" and config.resolution == (1024, 512)
    assert node_options_from_parameters(values).qos == "sensor_data"
    assert node.remappings == [("image", "image"), ("image/compressed", "image/compressed")]


def test_defaults_use_the_variant_params_file(launch: Any) -> None:
    (node,) = _run(launch, SINGLE)
    assert node.parameters[0].endswith("config/bisenetv2.yaml")
    overrides = node.parameters[1]
    assert set(overrides) == {"variant", "use_sim_time"}  # empty arguments keep the file's values
    assert overrides["use_sim_time"] is False
    (v1,) = _run(launch, SINGLE, variant="bisenetv1")
    assert config_from_parameters(effective_parameters(v1)).resolution == (1536, 768)


def test_overrides_topic_namespace_and_params_file(launch: Any, tmp_path: Path) -> None:
    params = tmp_path / "robot.yaml"
    params.write_text("/**:\n  ros__parameters:\n    variant: stdc2\n    max_frame_age: 0.2\n")
    (node,) = _run(launch, SINGLE, variant="stdc2", weights="/models/stdc2.pth", device="cuda:0",
                   backend="onnxruntime", image_topic="/front/image_raw", namespace="front",
                   params_file=str(params), use_sim_time="true", log_level="debug")
    assert node.namespace == "front"
    assert node.remappings == [("image", "/front/image_raw"),
                               ("image/compressed", "/front/image_raw/compressed")]
    values = effective_parameters(node)
    assert values["weights"] == "/models/stdc2.pth" and values["device"] == "cuda:0"
    assert values["backend"] == "onnxruntime" and values["max_frame_age"] == 0.2
    assert values["use_sim_time"] is True
    assert node.arguments == ["--ros-args", "--log-level", "debug"]


@pytest.mark.parametrize("arguments, image, info, mask", [
    ({"image_topic": "/x/image_raw"}, "/x/image_raw", "/x/camera_info", "/segmentation/mask"),
    ({"image_topic": "/x/image_raw", "namespace": "front", "node_name": "seg"}, "/x/image_raw",
     "/x/camera_info", "/front/seg/mask"),
    ({"namespace": "front"}, "/front/image", "/front/camera_info", "/front/segmentation/mask"),
])
def test_launched_node_resolves_its_topics_like_rcl(launch: Any, ros: Any, tmp_path: Path,
                                                    arguments: dict, image: str, info: str,
                                                    mask: str) -> None:
    # Exactly as a user starts it: `ros2 launch bisenet_ros segmentation.launch.py
    # image_topic:=/x/image_raw`; the process gets the command line launch_ros builds
    # (--params-file, -r __node/__ns, the launch file's remappings as -r rules).
    from ros_double.fake_engine import FakeSegmenter

    (action,) = _run(launch, SINGLE, **arguments)
    ros.rclpy.try_shutdown()
    ros.rclpy.init(args=["segmentation_node", *action.command_line(tmp_path)])
    node = ros.module.SegmentationNode(segmenter_factory=FakeSegmenter)
    try:
        assert node._subscription.topic_name == image
        assert node._camera_info_subscription.topic_name == info
        assert node._image_publishers["mask"].topic_name == mask
        assert node.config.variant == "bisenetv2"  # the params file reached the node
        start = next(m for m in ros.graph.messages("info") if m.startswith("segmenting"))
        assert f"segmenting {image} " in start and f"CameraInfo {info} " in start
    finally:
        node.destroy_node()


@pytest.mark.parametrize("arguments, match", [
    ({"variant": "bisenetv3"}, "variant:='bisenetv3': expected one of bisenetv1"),
    ({"params_file": "/nonexistent.yaml"}, "does not exist"),
])
def test_bad_launch_arguments_fail_at_launch(launch: Any, arguments: dict, match: str) -> None:
    with pytest.raises(RuntimeError, match=re.escape(match)):
        _run(launch, SINGLE, **arguments)


def test_multi_camera_launch_one_node_per_namespace(launch: Any) -> None:
    nodes = _run(launch, MULTI, cameras="front, left,right", devices="cuda:0,cuda:1",
                 variant="bisenetv2", mode="separate")
    assert [n.namespace for n in nodes] == ["front", "left", "right"]
    assert [n.remappings[0] for n in nodes] == [
        ("image", "/front/image_raw"), ("image", "/left/image_raw"), ("image", "/right/image_raw")]
    devices = [effective_parameters(n)["device"] for n in nodes]
    assert devices == ["cuda:0", "cuda:1", "cuda:0"]
    for node in nodes:
        assert node.parameters[0].endswith("config/bisenetv2.yaml")
        assert node.executable == "segmentation_node"
    default = _run(launch, MULTI, mode="separate")
    assert [n.namespace for n in default] == ["front", "rear"]
    # devices not given: the params file's device is kept
    assert "device" not in default[0].parameters[1]
    with pytest.raises(RuntimeError, match="names a camera twice"):
        _run(launch, MULTI, cameras="front,front")
    with pytest.raises(RuntimeError, match="is empty"):
        _run(launch, MULTI, cameras=" , ")


def test_multi_camera_launch_batched_is_one_node_for_every_camera(launch: Any) -> None:
    (node,) = _run(launch, MULTI, cameras="front, left,/right/", devices="cuda:1",
                   image_suffix="image_rect", variant="bisenetv2")  # mode:=batched by default
    assert (node.executable, node.name, node.namespace) == ("segmentation_node", "segmentation", "")
    values = effective_parameters(node)
    assert values["cameras"] == ["front", "left", "right"]
    assert values["image_suffix"] == "image_rect" and values["device"] == "cuda:1"
    assert node.parameters[0].endswith("config/bisenetv2.yaml")
    options = node_options_from_parameters(values)
    assert options.cameras == ("front", "left", "right")
    with pytest.raises(RuntimeError, match="mode:=batched runs one engine"):
        _run(launch, MULTI, devices="cuda:0,cuda:1")
    with pytest.raises(RuntimeError, match="expected batched or separate"):
        _run(launch, MULTI, mode="both")
    with pytest.raises(RuntimeError, match="names a camera twice"):
        _run(launch, MULTI, cameras="front,front")
    # The single-camera launch file without cameras passes none (the one-camera node).
    (single,) = _run(launch, SINGLE)
    assert "cameras" not in single.parameters[1]


def test_launched_batched_node_reads_and_writes_every_camera_namespace(
        launch: Any, ros: Any, tmp_path: Path) -> None:
    from ros_double.fake_engine import FakeSegmenter

    (action,) = _run(launch, MULTI, cameras="front,rear")
    ros.rclpy.try_shutdown()
    ros.rclpy.init(args=["segmentation_node", *action.command_line(tmp_path)])
    node = ros.module.SegmentationNode(segmenter_factory=FakeSegmenter)
    try:
        subscribed = {s.topic_name for s in node.subscriptions}
        assert {"/front/image_raw", "/front/camera_info", "/rear/image_raw",
                "/rear/camera_info"} <= subscribed
        published = {p.topic_name for p in node.publishers}
        # the names one node per camera (mode:=separate) gives them: subscribers do not change
        assert {"/front/segmentation/mask", "/rear/segmentation/overlay/compressed",
                "/rear/segmentation/label_info", "/segmentation/drivable_grid"} <= published
        assert node.get_fully_qualified_name() == "/segmentation"
    finally:
        node.destroy_node()


@pytest.mark.parametrize("variant", VARIANTS)
def test_config_file_per_variant_is_valid_for_the_node(variant: str) -> None:
    path = ROOT / "config" / f"{variant}.yaml"
    text = path.read_text()
    values = _ros_parameters(str(path))
    assert values["variant"] == variant
    for key, value in values.items():
        assert key in DECLARED_TYPES, f"{path.name}: {key} is not a node parameter"
        assert type(value) is DECLARED_TYPES[key], f"{path.name}: {key}={value!r} has the wrong type"
    config = config_from_parameters(values)
    node_options_from_parameters(values)
    # the engine/replay read the same file
    assert SegmenterConfig.from_yaml(path) == config
    # normalization is stated (it travels with the weights)
    assert "mean (0." in text and "std (0." in text
    expected = "0.3257, 0.3690, 0.3223" if variant in ("bisenetv1", "bisenetv2") else "0.485, 0.456, 0.406"
    assert expected in text


def test_launch_files_use_only_real_launch_api() -> None:
    # Independent of the double: the names imported exist in ROS 2 Humble/Jazzy launch packages.
    known = {
        "launch": {"LaunchDescription"},
        "launch.actions": {"DeclareLaunchArgument", "OpaqueFunction", "IncludeLaunchDescription",
                           "GroupAction"},
        "launch.substitutions": {"LaunchConfiguration"},
        "launch.launch_description_sources": {"PythonLaunchDescriptionSource"},
        "launch_ros.actions": {"Node"},
        "launch_ros.parameter_descriptions": {"ParameterValue"},
        "ament_index_python.packages": {"get_package_share_directory"},
    }
    for path in (SINGLE, MULTI):
        tree = ast.parse(path.read_text())
        functions = {n.name for n in tree.body if isinstance(n, ast.FunctionDef)}
        assert "generate_launch_description" in functions
        for item in ast.walk(tree):
            if isinstance(item, ast.ImportFrom) and item.module.split(".")[0] in (
                    "launch", "launch_ros", "ament_index_python"):
                names = {a.name for a in item.names}
                assert names <= known[item.module], (path.name, item.module, names)
