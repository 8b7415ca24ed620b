"""Several cameras, each under its own namespace: one batched node, or one node per camera.

    ros2 launch bisenet_ros multi_camera.launch.py cameras:=front,left,right variant:=stdc1

``mode:=batched`` (default) starts one node, ``/segmentation``, that serves every camera on one
engine (the node's ``cameras`` parameter): one model in memory, the cameras' newest frames run
as one batch, and ``/segmentation/drivable_grid`` fuses every camera's view. ``mode:=separate``
starts one node per camera, ``/front/segmentation`` and so on, each loading its own model on its
own device (``devices:=cuda:0,cuda:1``, cycled).

Either way camera ``front`` is read from ``/front/image_raw`` (set ``image_suffix`` for another
driver layout) and its outputs are ``/front/segmentation/mask`` and so on, so subscribers do not
change with the mode.
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
    ("mode", "batched", "batched: one node serves every camera on one engine; separate: one "
                        "node (and model) per camera."),
    ("image_suffix", "image_raw", "Camera image topic inside the camera namespace."),
    ("variant", "stdc1", "Model variant for every camera."),
    ("resolution", "", "Network input WIDTHxHEIGHT; empty: the variant's recommended size."),
    ("weights", "", "Checkpoint or .onnx file for every camera."),
    ("backend", "", "Inference backend; empty: the params file's."),
    ("devices", "", "mode:=separate: comma-separated device per camera (cycled), e.g. "
                    "cuda:0,cuda:1; mode:=batched: the one device of the engine; empty: the "
                    "params file's."),
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
    if value["mode"] not in ("batched", "separate"):
        raise RuntimeError(f"mode:={value['mode']!r}: expected batched or separate")
    devices = [d.strip() for d in value["devices"].split(",") if d.strip()]
    if value["mode"] == "batched" and len(devices) > 1:
        raise RuntimeError(f"devices:={value['devices']!r} names {len(devices)} devices, but "
                           "mode:=batched runs one engine: give one device, or use "
                           "mode:=separate for one node per device")
    single = os.path.join(get_package_share_directory("bisenet_ros"), "launch",
                          "segmentation.launch.py")
    model = {name: value[name] for name in ("variant", "resolution", "weights", "backend",
                                            "params_file", "use_sim_time")}
    if value["mode"] == "batched":
        runs = [{**model, "cameras": ",".join(cameras), "image_suffix": value["image_suffix"],
                 "device": devices[0] if devices else ""}]
    else:
        runs = [{**model, "namespace": camera,
                 "image_topic": f"/{camera}/{value['image_suffix'].strip('/')}",
                 "device": devices[index % len(devices)] if devices else ""}
                for index, camera in enumerate(cameras)]
    # A scoped group: each include's launch arguments stay inside it.
    return [GroupAction([IncludeLaunchDescription(
        PythonLaunchDescriptionSource(single), launch_arguments=run.items())]) for run in runs]


def generate_launch_description():
    return LaunchDescription(
        [DeclareLaunchArgument(name, default_value=default, description=description)
         for name, default, description in ARGUMENTS]
        + [OpaqueFunction(function=_launch_cameras)])
