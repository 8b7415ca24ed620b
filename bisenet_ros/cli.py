"""The ``bisenet-ros`` command line.

Each sub-command lives in its own module of :mod:`bisenet_ros.commands` exposing ``add_arguments(parser)`` and
``run(args) -> int``; it is imported only when chosen, so ``bisenet-ros --help`` stays fast and
a missing optional dependency only affects the command that needs it. A user error (bad option,
file or data; a missing package) ends as one line and exit status 2; ``--debug`` anywhere on the
command line shows its traceback.
"""
from __future__ import annotations

import argparse
import importlib
import sys
from typing import Sequence

from bisenet_ros.runtime import pop_debug_flag, prefer_passive_openmp, run_command

# name -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "segment": ("bisenet_ros.commands.segment", "segment image files and write label maps and overlays"),
    "export": ("bisenet_ros.commands.export", "export a model to ONNX with its metadata embedded"),
    "bench": ("bisenet_ros.commands.bench", "benchmark backends and post-processing against the reference pipeline"),
    "quantize": ("bisenet_ros.commands.quantize", "make a static int8 (QDQ) model calibrated on a bag or images"),
    "replay": ("bisenet_ros.commands.replay", "run a rosbag through the engine, write an output bag and a report"),
    "evaluate": ("bisenet_ros.commands.evaluate", "evaluate a model (or model A against B) over many bags, locally or on Ray"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bisenet-ros", description=__doc__.splitlines()[0])
    # Taken off the command line anywhere by pop_debug_flag; declared here for --help.
    parser.add_argument("--debug", action="store_true",
                        help="show the traceback of an error (anywhere on the command line)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (_, summary) in COMMANDS.items():
        sub.add_parser(name, help=summary, add_help=False)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    prefer_passive_openmp()  # before any command imports torch
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = pop_debug_flag(argv)
    if not argv or argv[0] not in COMMANDS:
        parser = build_parser()
        if argv and not argv[0].startswith("-"):
            parser.error(f"unknown command {argv[0]!r}; choose from {', '.join(COMMANDS)}")
        parser.parse_args(argv)
        parser.print_help()
        return 0 if argv else 2
    name = argv[0]
    module = importlib.import_module(COMMANDS[name][0])
    parser = argparse.ArgumentParser(prog=f"bisenet-ros {name}", description=COMMANDS[name][1])
    module.add_arguments(parser)
    args = parser.parse_args(argv[1:])
    return run_command(f"bisenet-ros {name}", module.run, args, debug=debug)


if __name__ == "__main__":
    sys.exit(main())
