"""TEST DOUBLE of the rclpy surface used by ``bisenet_ros/node.py`` (ROS 2 Humble/Jazzy API).

ROS 2 cannot be installed on the machines this project is developed on, so the node's ROS wiring
is tested against this in-process stand-in. It implements exactly what ``node.py`` uses, with
rclpy's signatures, and nothing more:

* ``rclpy.init``, ``rclpy.spin``, ``rclpy.try_shutdown``; ``rclpy.executors.ExternalShutdownException``;
  ``rclpy.exceptions.InvalidParameterTypeException`` / ``InvalidParameterValueException``;
* ``rclpy.node.Node``: ``declare_parameter`` (static typing and descriptor ranges enforced as
  rclpy does, overrides from ``parameter_overrides``, ``--ros-args -p name:=value`` and
  ``--params-file``), ``resolve_topic_name``, ``get_name``, ``get_namespace``,
  ``get_logger`` (with ``throttle_duration_sec``), ``get_clock().now()``, ``create_publisher``,
  ``create_subscription``, ``create_timer``, ``get_fully_qualified_name``, ``destroy_node``,
  ``context`` (``ok()``); ``Publisher.publish`` / ``get_subscription_count``, which raise like
  rclpy's once the node is destroyed (``InvalidHandle``) or the context is shut down
  (``RCLError``: "publisher's context is invalid");
* the context's life: ``rclpy.spin`` ends with ``ExternalShutdownException`` because the
  context was shut down (SIGTERM: rclpy's handler shuts every context down; or
  ``rclpy.shutdown()`` from another thread), so threads of the node that still publish fail
  from then on, as they do on a robot;
* names resolved as rcl does (:func:`resolve_topic_name`): the node namespace, ``~`` (the
  node's own name), ``{node}``/``{ns}``, relative and absolute names, then the first matching
  ``-r [node:]from:=to`` rule (the node's ``cli_args`` first, then ``rclpy.init(args=...)``:
  what a launch file's ``remappings``, ``name`` and ``namespace`` become); publishers and
  subscriptions carry the resolved name as ``topic_name``;
* ``rclpy.qos``: ``QoSProfile``, ``ReliabilityPolicy``, ``DurabilityPolicy``, ``HistoryPolicy``;
* ``rclpy.parameter.Parameter`` (what ``declare_parameter`` returns; tests build overrides with it);
* ``rclpy.time.Time`` and ``rclpy.duration.Duration`` (keyword construction, ``nanoseconds``);
* ``tf2_ros`` (``Buffer``, ``TransformListener``, the lookup exceptions): see
  :mod:`ros_double.tf2_double`.

Topics form a small in-process graph (:class:`Graph`): a publication reaches every subscription
of the same type whose QoS is compatible under the DDS request/offered rules (a reliable
subscription does not match a best-effort publisher; a transient-local subscription does not
match a volatile publisher), transient-local publishers replay their last ``depth`` messages to
late subscriptions, and delivery is synchronous in the publishing thread. Message classes come
from the rosbags typestore (real ROS 2 definitions), see :mod:`ros_double.messages`.

:func:`install` puts these modules into ``sys.modules`` (via pytest's ``monkeypatch``).
"""
from __future__ import annotations

import enum
import sys
import threading
import time
import types
from typing import Any, Callable

import yaml

from ros_double.messages import rclpy_style_class


# --------------------------------------------------------------------------------- rclpy.qos
class ReliabilityPolicy(enum.IntEnum):
    SYSTEM_DEFAULT = 0
    RELIABLE = 1
    BEST_EFFORT = 2


class DurabilityPolicy(enum.IntEnum):
    SYSTEM_DEFAULT = 0
    TRANSIENT_LOCAL = 1
    VOLATILE = 2


class HistoryPolicy(enum.IntEnum):
    SYSTEM_DEFAULT = 0
    KEEP_LAST = 1
    KEEP_ALL = 2


class QoSProfile:
    """rclpy.qos.QoSProfile(**kwargs); rclpy requires ``depth`` for KEEP_LAST history."""

    def __init__(self, **kwargs: Any) -> None:
        self.history = kwargs.get("history", HistoryPolicy.KEEP_LAST)
        if self.history == HistoryPolicy.KEEP_LAST and "depth" not in kwargs:
            raise ValueError("History and/or depth settings are required.")
        self.depth = kwargs.get("depth", 0)
        self.reliability = kwargs.get("reliability", ReliabilityPolicy.SYSTEM_DEFAULT)
        self.durability = kwargs.get("durability", DurabilityPolicy.SYSTEM_DEFAULT)

    def __repr__(self) -> str:
        return (f"QoSProfile(depth={self.depth}, reliability={self.reliability.name}, "
                f"durability={self.durability.name})")


def _as_qos(qos_profile: QoSProfile | int) -> QoSProfile:
    # rclpy accepts an int as shorthand for QoSProfile(depth=n) (reliable, volatile by default).
    if isinstance(qos_profile, int):
        return QoSProfile(depth=qos_profile)
    return qos_profile


def _reliable(qos: QoSProfile) -> bool:
    return qos.reliability != ReliabilityPolicy.BEST_EFFORT  # system default is reliable


def _transient(qos: QoSProfile) -> bool:
    return qos.durability == DurabilityPolicy.TRANSIENT_LOCAL


def qos_compatible(pub: QoSProfile, sub: QoSProfile) -> bool:
    """DDS request-vs-offered: the offer (publisher) must be at least as strong as the request."""
    return (_reliable(pub) or not _reliable(sub)) and (_transient(pub) or not _transient(sub))


# --------------------------------------------------------------------------- rclpy.exceptions
class InvalidParameterTypeException(Exception):
    def __init__(self, parameter: "Parameter", expected_type: "Parameter.Type") -> None:
        self.parameter = parameter
        self.expected_type = expected_type
        super().__init__(
            f"Trying to set parameter '{parameter.name}' to '{parameter.value}' of type "
            f"'{parameter.type_.name}', expecting type '{expected_type.name}'")


class InvalidParameterValueException(Exception):
    def __init__(self, parameter: str, value: Any, reason: str) -> None:
        super().__init__(f"Invalid parameter value ({value}) for parameter '{parameter}'. "
                         f"Reason: {reason}")


class ExternalShutdownException(Exception):
    """rclpy.executors.ExternalShutdownException: the context was shut down while spinning."""


class RCLError(RuntimeError):
    """rclpy's RCLError (a RuntimeError): an rcl call failed, e.g. publishing on a shut-down
    context ("Failed to publish: publisher's context is invalid")."""


class InvalidHandle(RuntimeError):
    """rclpy.exceptions.InvalidHandle (a RuntimeError): using an entity after it was destroyed."""


# ---------------------------------------------------------------------------- rclpy.parameter
class Parameter:
    """rclpy.parameter.Parameter(name, type_=None, value=None)."""

    class Type(enum.IntEnum):
        NOT_SET = 0
        BOOL = 1
        INTEGER = 2
        DOUBLE = 3
        STRING = 4
        BYTE_ARRAY = 5
        BOOL_ARRAY = 6
        INTEGER_ARRAY = 7
        DOUBLE_ARRAY = 8
        STRING_ARRAY = 9

        @classmethod
        def from_parameter_value(cls, value: Any) -> "Parameter.Type":
            if value is None:
                return cls.NOT_SET
            if isinstance(value, bool):
                return cls.BOOL
            if isinstance(value, int):
                return cls.INTEGER
            if isinstance(value, float):
                return cls.DOUBLE
            if isinstance(value, str):
                return cls.STRING
            if isinstance(value, (list, tuple)):
                kinds = {cls.from_parameter_value(v) for v in value}
                table = {cls.BOOL: cls.BOOL_ARRAY, cls.INTEGER: cls.INTEGER_ARRAY,
                         cls.DOUBLE: cls.DOUBLE_ARRAY, cls.STRING: cls.STRING_ARRAY}
                if len(kinds) == 1 and next(iter(kinds)) in table:
                    return table[next(iter(kinds))]
            raise TypeError(f"The given value is not one of the allowed types '{value!r}'.")

    def __init__(self, name: str, type_: "Parameter.Type | None" = None, value: Any = None) -> None:
        if type_ is None:
            type_ = Parameter.Type.from_parameter_value(value)
        self._name = name
        self._type_ = type_
        self._value = value

    @property
    def name(self) -> str:
        return self._name

    @property
    def type_(self) -> "Parameter.Type":
        return self._type_

    @property
    def value(self) -> Any:
        return self._value


# ------------------------------------------------------------------ names, command line
def expand_topic_name(name: str, node_name: str, namespace: str) -> str:
    """rcl_expand_topic_name: a fully qualified name from a topic name as a node gives it.

    ``~`` is the node's fully qualified name (``/ns/node``), ``{node}`` / ``{ns}`` /
    ``{namespace}`` are substituted, a relative name is put in the node's namespace and an
    absolute one is kept.
    """
    if not name:
        raise ValueError("topic name must not be empty")
    ns = namespace.rstrip("/")
    if name.startswith("~"):
        if name not in ("~",) and not name.startswith("~/"):
            raise ValueError(f"invalid topic name {name!r}: '~' must be followed by '/'")
        name = f"{ns}/{node_name}{name[1:]}"
    name = name.replace("{node}", node_name).replace("{ns}", namespace).replace(
        "{namespace}", namespace)
    expanded = name if name.startswith("/") else f"{ns}/{name}"
    if expanded.endswith("/") or "//" in expanded:
        raise ValueError(f"invalid topic name {name!r}")
    return expanded


class RemapRule:
    """One ``-r [node:]match:=replacement`` rule (rcl_remap_t); ``__node``/``__ns`` rename the
    node itself."""

    def __init__(self, text: str) -> None:
        match, sep, self.replacement = text.partition(":=")
        if not sep or not match or not self.replacement:
            raise ValueError(f"Couldn't parse remap rule: '{text}'")
        # `node:match` (a node-specific rule); `~/x` or `/a/b` contain no ':' before ':='.
        self.node_name, _, self.match = match.rpartition(":")
        self.node_name = self.node_name or None
        if self.match in ("__node", "__name"):
            self.kind = "node"
        elif self.match == "__ns":
            self.kind = "namespace"
        else:
            self.kind = "topic"

    def applies_to(self, node_name: str) -> bool:
        return self.node_name is None or self.node_name == node_name


def _first_rule(rules: list[RemapRule], kind: str, node_name: str, namespace: str | None = None,
                name: str | None = None) -> RemapRule | None:
    # rcl's _rcl_remap_first_match: the first rule of the kind for this node whose match side,
    # expanded like a topic name, equals the expanded name.
    for rule in rules:
        if rule.kind != kind or not rule.applies_to(node_name):
            continue
        if kind != "topic":
            return rule
        try:
            if expand_topic_name(rule.match, node_name, namespace or "/") == name:
                return rule
        except ValueError:
            continue
    return None


def resolve_topic_name(name: str, node_name: str, namespace: str, local_rules: list[RemapRule],
                       global_rules: list[RemapRule], *, only_expand: bool = False) -> str:
    """rcl_resolve_name: expand ``name``, then apply the first matching remap rule (the node's
    own arguments first, then the process's), whose replacement is expanded too."""
    expanded = expand_topic_name(name, node_name, namespace)
    if only_expand:
        return expanded
    rule = (_first_rule(local_rules, "topic", node_name, namespace, expanded)
            or _first_rule(global_rules, "topic", node_name, namespace, expanded))
    return expanded if rule is None else expand_topic_name(rule.replacement, node_name, namespace)


class RosArguments:
    """What rcl takes from the ``--ros-args`` sections of a command line: remap rules,
    ``-p name:=value`` and ``--params-file`` (in order: a later value wins)."""

    FLAGS_WITH_VALUE = ("--log-level", "--enclave", "-e", "--log-file-name")

    def __init__(self, args: list[str] | None = None) -> None:
        self.remap_rules: list[RemapRule] = []
        self.parameters: list[tuple[str, Any]] = []  # ("-p", (name, value)) / ("file", path)
        items = list(args or [])
        inside = False
        i = 0
        while i < len(items):
            item = items[i]
            if item == "--ros-args":
                inside = True
            elif item == "--":
                inside = False
            elif inside and i + 1 < len(items) and item in ("-r", "--remap", "-p", "--param",
                                                           "--params-file") + self.FLAGS_WITH_VALUE:
                value = items[i + 1]
                i += 1
                if item in ("-r", "--remap"):
                    self.remap_rules.append(RemapRule(value))
                elif item in ("-p", "--param"):
                    key, _, raw = value.partition(":=")
                    self.parameters.append(("-p", (key, yaml.safe_load(raw))))
                elif item == "--params-file":
                    self.parameters.append(("file", value))
            i += 1

    def parameter_values(self, node_name: str, namespace: str) -> dict[str, Any]:
        """The parameter values these arguments give the node ``namespace/node_name``."""
        fqn = f"{namespace.rstrip('/')}/{node_name}"
        values: dict[str, Any] = {}
        for kind, entry in self.parameters:
            if kind == "-p":
                values[entry[0]] = entry[1]
                continue
            with open(entry, encoding="utf-8") as stream:
                document = yaml.safe_load(stream) or {}
            for key, section in document.items():
                # rcl: "/**" and "**" match every node, else the node's name or its FQN.
                if key in ("/**", "**", node_name, fqn, fqn.lstrip("/")):
                    values.update((section or {}).get("ros__parameters", {}))
        return values


# ----------------------------------------------------------------------------- graph, clock
class Graph:
    """The in-process ROS graph of one test: topics, timers, log, clock and init state."""

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.publishers: list[Publisher] = []
        self.subscriptions: list[Subscription] = []
        self.timers: list[Timer] = []
        self.log: list[tuple[str, str, str]] = []  # (logger, level, message) actually emitted
        self.clock_ns: int | None = None  # None: wall clock
        self.initialized = False
        self.arguments = RosArguments()  # what rclpy.init(args=...) was given
        self.spin_hook: Callable[[Node], None] | None = None

    def fire_timers(self) -> None:
        """Run every live timer's callback once (what an executor does when they are due)."""
        for timer in list(self.timers):
            if not timer.cancelled:
                timer.callback()

    def messages(self, level: str | None = None) -> list[str]:
        return [m for _, lvl, m in self.log if level is None or lvl == level]


GRAPH = Graph()


class Time:
    """rclpy.time.Time(*, seconds=0, nanoseconds=0, clock_type=...)."""

    def __init__(self, *, seconds: float = 0, nanoseconds: int = 0, clock_type: Any = None) -> None:
        if seconds < 0 or nanoseconds < 0:
            raise ValueError("Seconds value must not be negative")
        self.nanoseconds = int(seconds * 1_000_000_000) + int(nanoseconds)

    @classmethod
    def from_msg(cls, msg: Any, clock_type: Any = None) -> "Time":
        return cls(seconds=msg.sec, nanoseconds=msg.nanosec)

    def to_msg(self) -> Any:
        msg_cls = rclpy_style_class("builtin_interfaces/msg/Time")
        return msg_cls(sec=self.nanoseconds // 1_000_000_000,
                       nanosec=self.nanoseconds % 1_000_000_000)


class Duration:
    """rclpy.duration.Duration(*, seconds=0, nanoseconds=0)."""

    def __init__(self, *, seconds: float = 0, nanoseconds: int = 0) -> None:
        self.nanoseconds = int(seconds * 1_000_000_000) + int(nanoseconds)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Duration) and other.nanoseconds == self.nanoseconds


class Context:
    """rclpy.context.Context: ``ok()`` until the context is shut down."""

    def ok(self) -> bool:
        return GRAPH.initialized


class Clock:
    def now(self) -> Time:
        return Time(nanoseconds=GRAPH.clock_ns if GRAPH.clock_ns is not None else time.time_ns())


class RcutilsLogger:
    """rclpy's logger: ``info/warning/...(message, **kwargs)``; honours throttle_duration_sec
    per call site, as rclpy does."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._last: dict[tuple[str, int], float] = {}

    def _log(self, level: str, message: str, throttle_duration_sec: float | None = None,
             **kwargs: Any) -> bool:
        unknown = set(kwargs) - {"once", "skip_first", "throttle_time_source_type"}
        if unknown:
            raise TypeError(f"unsupported logging keyword(s) {sorted(unknown)}")
        caller = sys._getframe(2)
        site = (caller.f_code.co_filename, caller.f_lineno)
        now = time.monotonic()
        if throttle_duration_sec and now - self._last.get(site, -1e18) < throttle_duration_sec:
            return False
        self._last[site] = now
        GRAPH.log.append((self.name, level, str(message)))
        return True

    def info(self, message: str, **kwargs: Any) -> bool:
        return self._log("info", message, **kwargs)

    def warning(self, message: str, **kwargs: Any) -> bool:
        return self._log("warning", message, **kwargs)

    def error(self, message: str, **kwargs: Any) -> bool:
        return self._log("error", message, **kwargs)

    def fatal(self, message: str, **kwargs: Any) -> bool:
        return self._log("fatal", message, **kwargs)


# -------------------------------------------------------------------------- pub/sub/timer
class Publisher:
    def __init__(self, msg_type: type, topic: str, qos: QoSProfile) -> None:
        self.msg_type = msg_type
        self.topic_name = topic
        self.qos_profile = qos
        self.history: list[Any] = []  # kept for transient-local late joiners
        self.destroyed = False

    def _matches(self, sub: "Subscription") -> bool:
        return (not sub.destroyed and sub.topic_name == self.topic_name
                and sub.msg_type is self.msg_type and qos_compatible(self.qos_profile, sub.qos_profile))

    def _check_valid(self, what: str) -> None:
        # rclpy: `with self.handle` refuses a destroyed publisher; rcl_publisher_is_valid
        # refuses one whose context was shut down (publish, subscription count alike).
        if self.destroyed:
            raise InvalidHandle("cannot use Destroyable because destruction was requested")
        if not GRAPH.initialized:
            raise RCLError(f"{what}: publisher's context is invalid")

    def publish(self, msg: Any) -> None:
        self._check_valid("Failed to publish")
        if not isinstance(msg, self.msg_type):
            raise TypeError(f"Expected {self.msg_type}, got {type(msg)}")
        with GRAPH.lock:
            if _transient(self.qos_profile):
                self.history = (self.history + [msg])[-max(1, self.qos_profile.depth):]
            targets = [s for s in GRAPH.subscriptions if self._matches(s)]
        for sub in targets:
            sub.callback(msg)

    def get_subscription_count(self) -> int:
        self._check_valid("failed to get subscription count")
        # Like DDS matching: only subscriptions with compatible QoS and type count.
        with GRAPH.lock:
            return sum(1 for s in GRAPH.subscriptions if self._matches(s))


class Subscription:
    def __init__(self, msg_type: type, topic: str, callback: Callable[[Any], None],
                 qos: QoSProfile) -> None:
        self.msg_type = msg_type
        self.topic_name = topic
        self.callback = callback
        self.qos_profile = qos
        self.destroyed = False


class Timer:
    def __init__(self, period: float, callback: Callable[[], None]) -> None:
        self.timer_period_ns = int(period * 1e9)
        self.callback = callback
        self.cancelled = False


# ------------------------------------------------------------------------------- rclpy.node
class Node:
    """rclpy.node.Node (the parts the segmentation node uses)."""

    def __init__(self, node_name: str, *, context: Any = None, cli_args: list[str] | None = None,
                 namespace: str | None = None, use_global_arguments: bool = True,
                 enable_rosout: bool = True, start_parameter_services: bool = True,
                 parameter_overrides: list[Parameter] | None = None,
                 allow_undeclared_parameters: bool = False,
                 automatically_declare_parameters_from_overrides: bool = False) -> None:
        if not GRAPH.initialized:
            raise RuntimeError("rcl node's context is invalid (call rclpy.init() first)")
        self._arguments = RosArguments(cli_args)
        self._global_rules = GRAPH.arguments.remap_rules if use_global_arguments else []
        rules = self._arguments.remap_rules + self._global_rules
        # `-r __node:=name` / `-r __ns:=/ns` (what launch's name= and namespace= become) win
        # over the names given in code.
        renamed = _first_rule(rules, "node", node_name)
        self._name = renamed.replacement if renamed else node_name
        # rcl_node_init matches a namespace rule against the name after the node rules
        moved = _first_rule(rules, "namespace", self._name)
        ns = (moved.replacement if moved else namespace) or "/"
        self._namespace = ns if ns.startswith("/") else "/" + ns
        self._overrides: dict[str, Parameter] = {}
        if use_global_arguments:
            self._overrides.update({k: Parameter(k, value=v) for k, v in
                                    GRAPH.arguments.parameter_values(self._name, self._namespace).items()})
        self._overrides.update({k: Parameter(k, value=v) for k, v in
                                self._arguments.parameter_values(self._name, self._namespace).items()})
        self._overrides.update({p.name: p for p in parameter_overrides or []})
        self._parameters: dict[str, Parameter] = {}
        self.descriptors: dict[str, Any] = {}
        # rcl's logger name: the fully qualified name with dots, e.g. "front.segmentation"
        self._logger = RcutilsLogger(self.get_fully_qualified_name().lstrip("/").replace("/", "."))
        self._clock = Clock()
        self.publishers: list[Publisher] = []
        self.subscriptions: list[Subscription] = []
        self.timers: list[Timer] = []
        self.destroyed = False

    @property
    def context(self) -> Context:
        return Context()

    def get_fully_qualified_name(self) -> str:
        return f"{self._namespace.rstrip('/')}/{self._name}"

    def get_name(self) -> str:
        return self._name

    def get_namespace(self) -> str:
        return self._namespace

    def resolve_topic_name(self, topic: str, *, only_expand: bool = False) -> str:
        """The fully qualified name of ``topic``: expanded, then remapped (unless only_expand)."""
        return resolve_topic_name(topic, self._name, self._namespace, self._arguments.remap_rules,
                                  self._global_rules, only_expand=only_expand)

    def get_logger(self) -> RcutilsLogger:
        return self._logger

    def get_clock(self) -> Clock:
        return self._clock

    def declare_parameter(self, name: str, value: Any = None, descriptor: Any = None,
                          ignore_override: bool = False) -> Parameter:
        if name in self._parameters:
            raise RuntimeError(f"Parameter(s) already declared: {name}")
        if descriptor is None:
            descriptor = rclpy_style_class("rcl_interfaces/msg/ParameterDescriptor")()
        if isinstance(value, Parameter.Type):  # declared by type alone: unset (None) until overridden
            declared_type, value = value, None
        else:
            declared_type = Parameter.Type.from_parameter_value(value)
        parameter = Parameter(name, declared_type, value)
        if name in self._overrides and not ignore_override:
            parameter = self._overrides[name]
        if not descriptor.dynamic_typing and parameter.type_ != declared_type:
            raise InvalidParameterTypeException(parameter, declared_type)
        for rng in descriptor.integer_range or []:
            if not rng.from_value <= parameter.value <= rng.to_value:
                raise InvalidParameterValueException(
                    name, parameter.value,
                    f"Parameter {name} out of range. Min: {rng.from_value}, Max: {rng.to_value}")
        for rng in descriptor.floating_point_range or []:
            if not rng.from_value <= parameter.value <= rng.to_value:
                raise InvalidParameterValueException(
                    name, parameter.value,
                    f"Parameter {name} out of range. Min: {rng.from_value}, Max: {rng.to_value}")
        descriptor.name = name
        descriptor.type = int(declared_type)
        self._parameters[name] = parameter
        self.descriptors[name] = descriptor
        return parameter

    def create_publisher(self, msg_type: type, topic: str, qos_profile: QoSProfile | int, *,
                         callback_group: Any = None, event_callbacks: Any = None,
                         qos_overriding_options: Any = None, publisher_class: Any = None) -> Publisher:
        pub = Publisher(msg_type, self.resolve_topic_name(topic), _as_qos(qos_profile))
        with GRAPH.lock:
            GRAPH.publishers.append(pub)
        self.publishers.append(pub)
        return pub

    def create_subscription(self, msg_type: type, topic: str, callback: Callable[[Any], None],
                            qos_profile: QoSProfile | int, *, callback_group: Any = None,
                            event_callbacks: Any = None, qos_overriding_options: Any = None,
                            raw: bool = False) -> Subscription:
        sub = Subscription(msg_type, self.resolve_topic_name(topic), callback,
                           _as_qos(qos_profile))
        with GRAPH.lock:
            GRAPH.subscriptions.append(sub)
            late = [m for p in GRAPH.publishers if p._matches(sub) and _transient(sub.qos_profile)
                    for m in p.history]
        self.subscriptions.append(sub)
        for msg in late:  # transient local: late joiners get the stored messages
            callback(msg)
        return sub

    def create_timer(self, timer_period_sec: float, callback: Callable[[], None],
                     callback_group: Any = None, clock: Any = None) -> Timer:
        if timer_period_sec <= 0:
            raise ValueError("timer period must be positive")
        timer = Timer(timer_period_sec, callback)
        GRAPH.timers.append(timer)
        self.timers.append(timer)
        return timer

    def destroy_node(self) -> None:
        for entity in self.publishers + self.subscriptions:
            entity.destroyed = True
        for timer in self.timers:
            timer.cancelled = True
        self.destroyed = True


# ------------------------------------------------------------------------------ rclpy (top)
def init(*, args: list[str] | None = None, context: Any = None, domain_id: int | None = None,
         signal_handler_options: Any = None) -> None:
    if GRAPH.initialized:
        raise RuntimeError("Context.init() must only be called once")
    GRAPH.initialized = True
    # The process's (global) arguments: `--ros-args -p name:=value` (values parsed as YAML,
    # like rcl does), `--params-file`, `-r [node:]from:=to`.
    GRAPH.arguments = RosArguments(args)


def spin(node: Node, executor: Any = None) -> None:
    """Runs ``GRAPH.spin_hook(node)`` if set, then behaves as an external shutdown: the context
    is shut down (what ends a real spin with this exception) before it is raised."""
    if GRAPH.spin_hook is not None:
        GRAPH.spin_hook(node)
    GRAPH.initialized = False
    raise ExternalShutdownException()


def try_shutdown(*, context: Any = None, uninstall_handlers: bool | None = None) -> None:
    GRAPH.initialized = False


# --------------------------------------------------------------------------------- install
MESSAGE_MODULES = {
    "sensor_msgs.msg": ["sensor_msgs/msg/Image", "sensor_msgs/msg/CompressedImage",
                        "sensor_msgs/msg/CameraInfo", "sensor_msgs/msg/RegionOfInterest"],
    "nav_msgs.msg": ["nav_msgs/msg/OccupancyGrid", "nav_msgs/msg/MapMetaData"],
    "geometry_msgs.msg": ["geometry_msgs/msg/TransformStamped", "geometry_msgs/msg/Transform",
                          "geometry_msgs/msg/Vector3", "geometry_msgs/msg/Quaternion",
                          "geometry_msgs/msg/Pose", "geometry_msgs/msg/Point"],
    "tf2_msgs.msg": ["tf2_msgs/msg/TFMessage"],
    "std_msgs.msg": ["std_msgs/msg/Header"],
    "builtin_interfaces.msg": ["builtin_interfaces/msg/Time"],
    "vision_msgs.msg": ["vision_msgs/msg/LabelInfo", "vision_msgs/msg/VisionClass"],
    "diagnostic_msgs.msg": ["diagnostic_msgs/msg/DiagnosticArray",
                            "diagnostic_msgs/msg/DiagnosticStatus", "diagnostic_msgs/msg/KeyValue"],
    "rcl_interfaces.msg": ["rcl_interfaces/msg/ParameterDescriptor",
                           "rcl_interfaces/msg/FloatingPointRange", "rcl_interfaces/msg/IntegerRange"],
}


def _module(name: str, **attrs: Any) -> types.ModuleType:
    module = types.ModuleType(name, f"Test double of {name} (see {__name__}).")
    module.__dict__.update(attrs)
    return module


def build_modules() -> dict[str, types.ModuleType]:
    """The fake ``rclpy`` modules and message packages, keyed by module name."""
    mods = {
        "rclpy.node": _module("rclpy.node", Node=Node),
        "rclpy.qos": _module("rclpy.qos", QoSProfile=QoSProfile, ReliabilityPolicy=ReliabilityPolicy,
                             DurabilityPolicy=DurabilityPolicy, HistoryPolicy=HistoryPolicy),
        "rclpy.executors": _module("rclpy.executors",
                                   ExternalShutdownException=ExternalShutdownException),
        "rclpy.exceptions": _module(
            "rclpy.exceptions", InvalidParameterTypeException=InvalidParameterTypeException,
            InvalidParameterValueException=InvalidParameterValueException),
        "rclpy.parameter": _module("rclpy.parameter", Parameter=Parameter),
        "rclpy.time": _module("rclpy.time", Time=Time),
        "rclpy.duration": _module("rclpy.duration", Duration=Duration),
    }
    mods["rclpy"] = _module("rclpy", init=init, spin=spin, try_shutdown=try_shutdown,
                            **{k.split(".")[1]: v for k, v in mods.items()})
    mods["rclpy"].__path__ = []  # a package, so `import rclpy.node` resolves via sys.modules
    for name, msgtypes in MESSAGE_MODULES.items():
        package = name.split(".")[0]
        msg_module = _module(name, **{t.rsplit("/", 1)[1]: rclpy_style_class(t) for t in msgtypes})
        mods[name] = msg_module
        mods[package] = _module(package, msg=msg_module)
        mods[package].__path__ = []
    from ros_double import tf2_double  # it builds on this module's Node and QoS

    mods.update(tf2_double.build_modules())
    return mods


def install(monkeypatch: Any) -> Graph:
    """Install the double into ``sys.modules`` for one test; returns a fresh :class:`Graph`."""
    global GRAPH
    GRAPH = Graph()
    for name, module in build_modules().items():
        monkeypatch.setitem(sys.modules, name, module)
    return GRAPH
