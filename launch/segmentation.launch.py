"""Launch the BiSeNet / STDC semantic segmentation node.

    ros2 launch bisenet_ros segmentation.launch.py variant:=stdc1 resolution:=1024x512 \
        image_topic:=/camera/image_raw weights:=/path/to/model.pth

Parameters come from ``params_file`` (default: ``config/<variant>.yaml`` of this package, the
variant's recommended settings); launch arguments that are set (non-empty) override it.
``image_topic`` is applied as a remapping of the node's ``image`` (and ``image/compressed``) input.
With ``cameras:=front,rear`` the node serves several cameras on one batched engine instead
(``/front/<image_suffix>`` in, ``/front/segmentation/...`` out; see ``multi_camera.launch.py``).
"""
import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, OpaqueFunction
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node
from launch_ros.parameter_descriptions import ParameterValue

VARIANTS = ("bisenetv1", "bisenetv1_xception39", "bisenetv2", "stdc1", "stdc2")

# (name, default, description); an empty default means "keep the value of the params file".
ARGUMENTS = (
    ("variant", "bisenetv2", "Model: " + ", ".join(VARIANTS) + "; selects config/<variant>.yaml."),
    ("resolution", "", "Network input WIDTHxHEIGHT, e.g. 1024x512; empty: the variant's "
                       "recommended size from its params file."),
    ("weights", "", "Checkpoint (.pth) or exported .onnx; empty: the params file's (random weights "
                    "if none: for testing only)."),
    ("backend", "", "torch, onnxruntime or openvino; empty: the params file's."),
    ("device", "", "cpu, cuda, cuda:N or tensorrt (onnxruntime); empty: the params file's."),
    ("image_topic", "image", "Camera topic (sensor_msgs/Image) the node's 'image' input is "
                             "remapped to."),
    ("cameras", "", "Comma-separated camera names served by this one node on one batched "
                    "engine (image_topic is then unused); empty: one camera on image_topic."),
    ("image_suffix", "image_raw", "With cameras: the image topic inside each camera namespace."),
    ("namespace", "", "Namespace of the node (one per camera)."),
    ("node_name", "segmentation", "Name of the node; outputs are ~/mask, ~/overlay, ..."),
    ("params_file", "", "ROS parameter file; empty: config/<variant>.yaml of bisenet_ros."),
    ("use_sim_time", "false", "Use /clock (rosbag replay with --clock)."),
    ("log_level", "info", "Logging level of the node."),
)
# Launch arguments forwarded as string parameters when set.
OVERRIDES = ("resolution", "weights", "backend", "device")


def _launch_node(context, *args, **kwargs):
    """Resolve the arguments (the params file depends on the variant) and build the node."""
    value = {name: LaunchConfiguration(name).perform(context) for name, _, _ in ARGUMENTS}
    variant = value["variant"]
    if variant not in VARIANTS:
        raise RuntimeError(f"variant:={variant!r}: expected one of {', '.join(VARIANTS)}")
    params_file = value["params_file"] or os.path.join(
        get_package_share_directory("bisenet_ros"), "config", f"{variant}.yaml")
    if not os.path.isfile(params_file):
        raise RuntimeError(f"params_file:={params_file!r} does not exist")
    # Explicit string types: a YAML-looking value ("1024x512", a path, "cuda:0") must stay a string.
    overrides = {"variant": ParameterValue(variant, value_type=str),
                 "use_sim_time": value["use_sim_time"].lower() in ("true", "1", "yes")}
    overrides.update({name: ParameterValue(value[name], value_type=str)
                      for name in OVERRIDES if value[name]})
    cameras = [c.strip() for c in value["cameras"].split(",")] if value["cameras"].strip() else []
    if cameras:  # the node refuses an empty or repeated name with one line (exit status 1)
        overrides.update({"cameras": cameras,
                          "image_suffix": ParameterValue(value["image_suffix"], value_type=str)})
    topic = value["image_topic"].rstrip("/") or "image"
    return [Node(
        package="bisenet_ros",
        executable="segmentation_node",
        name=value["node_name"],
        namespace=value["namespace"],
        parameters=[params_file, overrides],
        remappings=[("image", topic), ("image/compressed", topic + "/compressed")],
        arguments=["--ros-args", "--log-level", value["log_level"]],
        output="screen",
        emulate_tty=True,
    )]


def generate_launch_description():
    return LaunchDescription(
        [DeclareLaunchArgument(name, default_value=default, description=description)
         for name, default, description in ARGUMENTS]
        + [OpaqueFunction(function=_launch_node)])
