"""Process-level settings and checks that must come before the heavy libraries are imported, and
how the command-line entry points end on a user error.

The installed commands (``segmentation_node``, ``bisenet-ros``) start here: their scripts run
whatever ``python3`` is first on ``PATH`` (``[build_scripts] executable = /usr/bin/env python3``
in setup.cfg), and when that is not the environment holding the requirements the user gets one
line naming the interpreter, the missing modules and the fix, not a ModuleNotFoundError trace.
"""
from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from typing import Any, Callable, Iterable, Sequence


def prefer_passive_openmp() -> None:
    """Make OpenMP worker threads sleep instead of spin-waiting between parallel regions.

    PyTorch's OpenMP threads spin by default. On a robot, other nodes keep the cores busy, and
    spinning threads then starve them and themselves: measured on a 2-core machine under load,
    eager BiSeNetV2 at 128x64 took 2.5 s per frame instead of 25 ms. Passive waiting costs next to
    nothing on an idle machine. Effective only before torch is first imported; an explicit
    ``OMP_WAIT_POLICY`` in the environment is respected.
    """
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def available_cores() -> int:
    """CPU cores this process may run on (the affinity mask, e.g. under taskset or a container)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


class UserError(Exception):
    """Mixin of the errors a user fixes (a device, a bag, an output path), not bugs.

    The command-line entry points report them, like ``ValueError``, ``OSError`` and
    ``ImportError``, as one line without a traceback (see :func:`run_command`).
    """


#: Exit status of every command (``bisenet-ros ...``, ``python -m training ...``) that refuses what
#: it was given: a bad option, file or data, a missing package. It is argparse's status for a
#: command line it cannot parse, so "the user must change something" is one status. 1 is left for
#: runs that started and could not finish everything (a damaged bag, a bag that failed).
USER_ERROR_STATUS = 2


def is_user_error(error: BaseException) -> bool:
    """Whether ``error`` is the user's to fix (bad option, file, data, missing package)."""
    # ArithmeticError: e.g. a training loss turning NaN ("lower optim.lr"), a setting to change.
    return isinstance(error, (UserError, ValueError, OSError, ImportError, ArithmeticError))


def pop_debug_flag(argv: list[str]) -> bool:
    """Remove every ``--debug`` from ``argv`` (in place); returns whether there was one."""
    debug = "--debug" in argv
    argv[:] = [arg for arg in argv if arg != "--debug"]
    return debug


def run_command(prog: str, run: Callable[[Any], Any], args: Any, *, debug: bool = False) -> int:
    """Run a command's ``run(args)``; a user error ends as one line on stderr and
    :data:`USER_ERROR_STATUS` (2).

    Bugs (any other exception) keep their traceback, and so does everything with ``debug``.

    Args:
        prog: Command name for the message, e.g. ``"python -m training train"``.
        run: The command's entry point; returns an exit status (None = 0).
        args: Its parsed arguments.
        debug: Re-raise user errors too, with their traceback.

    Returns:
        The exit status: ``run``'s, 2 after a user error, 130 after Ctrl-C.
    """
    try:
        return int(run(args) or 0)
    except KeyboardInterrupt:
        if debug:
            raise
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    except Exception as error:  # noqa: BLE001 - sorted into user errors and bugs right here
        if debug or not is_user_error(error):
            raise
        message = " ".join(str(error).split()) or type(error).__name__
        print(f"{prog}: error: {message} (--debug shows the traceback)", file=sys.stderr)
        return USER_ERROR_STATUS


# ---------------------------------------------------------------------------------------------
# Entry points: check the interpreter first, so a wrong `python3` is one clear line
# ---------------------------------------------------------------------------------------------

#: Modules every command needs at start (requirements.txt); the backends (torch, onnxruntime,
#: openvino) are checked when the configured one is loaded, with its own message.
REQUIREMENTS: tuple[str, ...] = ("numpy", "cv2", "yaml")
#: What the node needs from ROS 2 (rclpy and the message packages of package.xml).
ROS_REQUIREMENTS: tuple[str, ...] = ("rclpy", "sensor_msgs", "vision_msgs", "diagnostic_msgs")


def missing_modules(names: Iterable[str]) -> list[str]:
    """The top-level modules of ``names`` this interpreter cannot import (nothing is imported)."""
    missing = []
    for name in names:
        try:
            found = importlib.util.find_spec(name) is not None
        except (ImportError, ValueError):  # a broken parent package, or a stub without a spec
            found = name in sys.modules
        if not found:
            missing.append(name)
    return missing


def environment_error(program: str, missing: Sequence[str]) -> str:
    """One line saying which interpreter runs, what it lacks and how to fix it.

    Args:
        program: the command that is starting (``segmentation_node``, ``bisenet-ros``).
        missing: module names from :func:`missing_modules` (not empty).
    """
    interpreter = f"{sys.executable} (Python {sys.version.split()[0]}, prefix {sys.prefix})"
    fixes = []
    if set(missing) - set(ROS_REQUIREMENTS):
        fixes.append("activate the virtual environment with the requirements (source "
                     "<venv>/bin/activate) before ros2 run/launch, and if this interpreter comes "
                     "from a fixed #! line, rebuild with that environment (python -m colcon build)")
    if set(missing) & set(ROS_REQUIREMENTS):
        fixes.append("source /opt/ros/$ROS_DISTRO/setup.bash and install/setup.bash (a virtual "
                     "environment must come from the system python3 with --system-site-packages)")
    return (f"{program}: {interpreter} cannot import {', '.join(missing)}: "
            + "; ".join(fixes) + "; see README, 'Installing into a ROS 2 workspace'")


def _start(program: str, target: str, needs: Sequence[str]) -> int:
    missing = missing_modules(needs)
    if missing:
        print(environment_error(program, missing), file=sys.stderr)
        return 1
    module, _, function = target.partition(":")
    return int(getattr(importlib.import_module(module), function)() or 0)


def segmentation_node() -> int:
    """Entry point of ``ros2 run bisenet_ros segmentation_node`` (see :func:`bisenet_ros.node.main`)."""
    return _start("segmentation_node", "bisenet_ros.node:main", REQUIREMENTS + ROS_REQUIREMENTS)


def bisenet_ros_cli() -> int:
    """Entry point of ``bisenet-ros`` (see :func:`bisenet_ros.cli.main`)."""
    return _start("bisenet-ros", "bisenet_ros.cli:main", REQUIREMENTS)
