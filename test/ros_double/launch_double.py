"""TEST DOUBLE of the ROS 2 ``launch`` / ``launch_ros`` / ``ament_index_python`` surface used by
``launch/*.launch.py`` (ROS 2 cannot be installed here).

It provides exactly the classes the launch files use, with the real constructors' argument
names, and :func:`evaluate`, which runs a launch description the way ``ros2 launch`` does for
these entities: declared arguments get the command-line value or their default (a missing
argument without default is an error), ``OpaqueFunction``s run with the context, a
``GroupAction`` scopes launch configurations, and an ``IncludeLaunchDescription`` loads the
included Python launch file and passes its ``launch_arguments`` (an argument the included file
does not declare is reported, which real launch silently ignores). The result is the list of
``launch_ros.actions.Node`` actions that would be started, with their keyword arguments.

``get_package_share_directory('bisenet_ros')`` returns the source tree: ``setup.py`` installs
``launch/`` and ``config/`` unchanged into the share directory.
"""
from __future__ import annotations

import importlib.util
import sys
import types
from pathlib import Path
from typing import Any, Callable, Iterable

ROOT = Path(__file__).resolve().parents[2]


class LaunchDescription:
    def __init__(self, initial_entities: Iterable[Any] | None = None, *,
                 deprecated_reason: str | None = None) -> None:
        self.entities = list(initial_entities or [])


class DeclareLaunchArgument:
    def __init__(self, name: str, *, default_value: Any = None, description: str | None = None,
                 choices: list[str] | None = None, **kwargs: Any) -> None:
        self.name = name
        self.default_value = default_value
        self.description = description
        self.choices = choices


class OpaqueFunction:
    def __init__(self, *, function: Callable[..., Any], args: Any = None, kwargs: Any = None,
                 **left_over_kwargs: Any) -> None:
        self.function = function
        self.args = args or []
        self.kwargs = kwargs or {}


class GroupAction:
    def __init__(self, actions: Iterable[Any], *, condition: Any = None, scoped: bool = True,
                 forwarding: bool = True, launch_configurations: Any = None, **kwargs: Any) -> None:
        self.actions = list(actions)
        self.scoped = scoped


class PythonLaunchDescriptionSource:
    def __init__(self, launch_file_path: Any) -> None:
        self.location = str(launch_file_path)


class IncludeLaunchDescription:
    def __init__(self, launch_description_source: Any, *, launch_arguments: Any = None,
                 **kwargs: Any) -> None:
        self.launch_description_source = launch_description_source
        self.launch_arguments = list(launch_arguments or [])


class LaunchConfiguration:
    def __init__(self, variable_name: str, *, default: Any = None) -> None:
        self.variable_name = variable_name

    def perform(self, context: "LaunchContext") -> str:
        if self.variable_name not in context.launch_configurations:
            raise KeyError(f"launch configuration '{self.variable_name}' does not exist")
        return context.launch_configurations[self.variable_name]


class Node:
    """launch_ros.actions.Node: records its keyword arguments."""

    def __init__(self, *, executable: str, package: str | None = None, name: str | None = None,
                 namespace: str | None = None, exec_name: str | None = None,
                 parameters: list[Any] | None = None, remappings: list[tuple[str, str]] | None = None,
                 ros_arguments: list[str] | None = None, arguments: list[str] | None = None,
                 **kwargs: Any) -> None:
        self.executable = executable
        self.package = package
        self.name = name
        self.namespace = namespace
        self.parameters = parameters or []
        self.remappings = remappings or []
        self.arguments = arguments or []
        self.ros_arguments = ros_arguments or []
        self.kwargs = kwargs

    def command_line(self, params_dir: str | Path) -> list[str]:
        """The arguments the node process gets (after the executable), built as launch_ros
        builds them: ``arguments``, ``--ros-args`` with ``ros_arguments``, then ``-r
        __node:=name``, ``-r __ns:=/namespace`` (a relative namespace made absolute),
        ``--params-file`` per parameter entry (a dict is written to a ``/**`` YAML file in
        ``params_dir``) and ``-r from:=to`` per remapping, in order."""
        import yaml

        cmd = list(self.arguments)
        if self.ros_arguments:
            cmd += ["--ros-args", *self.ros_arguments]
        cmd.append("--ros-args")
        if self.name:
            cmd += ["-r", f"__node:={self.name}"]
        if self.namespace:
            cmd += ["-r", "__ns:=" + (self.namespace if self.namespace.startswith("/")
                                      else "/" + self.namespace)]
        for index, entry in enumerate(self.parameters):
            if isinstance(entry, dict):
                values = {k: v.value if isinstance(v, ParameterValue) else v
                          for k, v in entry.items()}
                path = Path(params_dir) / f"launch_params_{index}.yaml"
                path.write_text(yaml.safe_dump({"/**": {"ros__parameters": values}}))
                entry = str(path)
            cmd += ["--params-file", str(entry)]
        for source, target in self.remappings:
            cmd += ["-r", f"{source}:={target}"]
        return cmd


class ParameterValue:
    def __init__(self, value: Any, *, value_type: Any = None) -> None:
        self.value = value
        self.value_type = value_type


def get_package_share_directory(package_name: str, print_warning: bool = True) -> str:
    if package_name != "bisenet_ros":
        raise LookupError(f"package '{package_name}' not found")  # PackageNotFoundError
    return str(ROOT)


class LaunchContext:
    def __init__(self, launch_configurations: dict[str, str] | None = None) -> None:
        self.launch_configurations = dict(launch_configurations or {})


def _module(name: str, **attrs: Any) -> types.ModuleType:
    module = types.ModuleType(name, f"Test double of {name} (see {__name__}).")
    module.__dict__.update(attrs)
    return module


def build_modules() -> dict[str, types.ModuleType]:
    mods = {
        "launch.actions": _module("launch.actions", DeclareLaunchArgument=DeclareLaunchArgument,
                                  OpaqueFunction=OpaqueFunction, GroupAction=GroupAction,
                                  IncludeLaunchDescription=IncludeLaunchDescription),
        "launch.substitutions": _module("launch.substitutions", LaunchConfiguration=LaunchConfiguration),
        "launch.launch_description_sources": _module(
            "launch.launch_description_sources",
            PythonLaunchDescriptionSource=PythonLaunchDescriptionSource),
        "launch_ros.actions": _module("launch_ros.actions", Node=Node),
        "launch_ros.parameter_descriptions": _module("launch_ros.parameter_descriptions",
                                                     ParameterValue=ParameterValue),
        "ament_index_python.packages": _module(
            "ament_index_python.packages", get_package_share_directory=get_package_share_directory),
    }
    mods["launch"] = _module("launch", LaunchDescription=LaunchDescription)
    mods["launch_ros"] = _module("launch_ros")
    mods["ament_index_python"] = _module("ament_index_python")
    for name in ("launch", "launch_ros", "ament_index_python"):
        mods[name].__path__ = []
    return mods


def install(monkeypatch: Any) -> None:
    for name, module in build_modules().items():
        monkeypatch.setitem(sys.modules, name, module)


def load(path: str | Path) -> types.ModuleType:
    """Import a ``*.launch.py`` file as a module (as ``ros2 launch`` does)."""
    spec = importlib.util.spec_from_file_location(Path(path).stem.replace(".", "_"), path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def evaluate(description: LaunchDescription, arguments: dict[str, str] | None = None,
             context: LaunchContext | None = None) -> list[Node]:
    """The Node actions ``description`` starts with ``arguments`` (``name:=value`` pairs)."""
    context = context or LaunchContext()
    arguments = dict(arguments or {})
    declared = {e.name for e in description.entities if isinstance(e, DeclareLaunchArgument)}
    unknown = set(arguments) - declared
    if unknown:
        raise ValueError(f"arguments not declared by the launch file: {sorted(unknown)}")
    context.launch_configurations.update(arguments)
    return _visit(description.entities, context)


def _visit(entities: Iterable[Any], context: LaunchContext) -> list[Node]:
    nodes: list[Node] = []
    for entity in entities:
        if isinstance(entity, DeclareLaunchArgument):
            if entity.name not in context.launch_configurations:
                if entity.default_value is None:
                    raise RuntimeError(f"Included launch description missing required argument "
                                       f"'{entity.name}'")
                context.launch_configurations[entity.name] = entity.default_value
            if entity.choices and context.launch_configurations[entity.name] not in entity.choices:
                raise RuntimeError(f"argument {entity.name} not in {entity.choices}")
        elif isinstance(entity, OpaqueFunction):
            nodes += _visit(entity.function(context, *entity.args, **entity.kwargs) or [], context)
        elif isinstance(entity, GroupAction):
            scope = LaunchContext(context.launch_configurations) if entity.scoped else context
            nodes += _visit(entity.actions, scope)
        elif isinstance(entity, IncludeLaunchDescription):
            included = load(entity.launch_description_source.location).generate_launch_description()
            args = {str(k): str(v) for k, v in entity.launch_arguments}
            nodes += evaluate(included, args, LaunchContext(context.launch_configurations))
        elif isinstance(entity, LaunchDescription):
            nodes += _visit(entity.entities, context)
        elif isinstance(entity, Node):
            nodes.append(entity)
        else:
            raise TypeError(f"the launch double does not know {type(entity).__name__}")
    return nodes
