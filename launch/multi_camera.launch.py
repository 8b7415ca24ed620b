"""Several cameras, one segmentation node each, under the camera's namespace.

    ros2 launch bisenet_ros multi_camera.launch.py cameras:=front,left,right variant:=stdc1

For camera ``front`` the node is ``/front/segmentation``, reads ``/front/image_raw`` (set
``image_suffix`` for another driver layout) and publishes ``/front/segmentation/mask`` and so on.
Each node loads its own model: on one GPU, prefer a small variant (stdc1, bisenetv2) or one
node per GPU (``devices:=cuda:0,cuda:1``).
"""
import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import (
    DeclareLaunchArgument, GroupAction, IncludeLaunchDescription, OpaqueFunction)
from launch.launch_description_sources import PythonLaunchDescriptionSource
from launch.substitutions import LaunchConfiguration

ARGUMENTS = (
    ("cameras", "front,rear", "Comma-separated camera names; each is a namespace."),
    ("image_suffix", "image_raw", "Camera image topic inside the camera namespace."),
    ("variant", "stdc1", "Model variant for every camera."),
    ("resolution", "", "Network input WIDTHxHEIGHT; empty: the variant's recommended size."),
    ("weights", "", "Checkpoint or .onnx file for every camera."),
    ("backend", "", "Inference backend; empty: the params file's."),
    ("devices", "", "Comma-separated device per camera (cycled), e.g. cuda:0,cuda:1; empty: "
                    "the params file's."),
    ("params_file", "", "ROS parameter file; empty: config/<variant>.yaml."),
    ("use_sim_time", "false", "Use /clock."),
)


def _launch_cameras(context, *args, **kwargs):
    value = {name: LaunchConfiguration(name).perform(context) for name, _, _ in ARGUMENTS}
    cameras = [c.strip().strip("/") for c in value["cameras"].split(",") if c.strip().strip("/")]
    if not cameras:
        raise RuntimeError("cameras:= is empty: name at least one camera, e.g. cameras:=front")
    if len(set(cameras)) != len(cameras):
        raise RuntimeError(f"cameras:={value['cameras']!r} names a camera twice")
    devices = [d.strip() for d in value["devices"].split(",") if d.strip()]
    single = os.path.join(get_package_share_directory("bisenet_ros"), "launch",
                          "segmentation.launch.py")
    actions = []
    for index, camera in enumerate(cameras):
        launch_arguments = {
            "namespace": camera,
            "image_topic": f"/{camera}/{value['image_suffix'].strip('/')}",
            "variant": value["variant"],
            "resolution": value["resolution"],
            "weights": value["weights"],
            "backend": value["backend"],
            "device": devices[index % len(devices)] if devices else "",
            "params_file": value["params_file"],
            "use_sim_time": value["use_sim_time"],
        }
        # A scoped group: each camera's launch arguments stay inside its own include.
        actions.append(GroupAction([IncludeLaunchDescription(
            PythonLaunchDescriptionSource(single), launch_arguments=launch_arguments.items())]))
    return actions


def generate_launch_description():
    return LaunchDescription(
        [DeclareLaunchArgument(name, default_value=default, description=description)
         for name, default, description in ARGUMENTS]
        + [OpaqueFunction(function=_launch_cameras)])
