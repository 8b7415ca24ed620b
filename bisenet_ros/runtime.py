"""Process-level behaviour: settings made before the heavy libraries are imported, and how the
command-line entry points end on a user error."""
from __future__ import annotations

import os
import sys
from typing import Any, Callable


def prefer_passive_openmp() -> None:
    """Make OpenMP worker threads sleep instead of spin-waiting between parallel regions.

    PyTorch's OpenMP threads spin by default. On a robot, other nodes keep the cores busy, and
    spinning threads then starve them and themselves: measured on a 2-core machine under load,
    eager BiSeNetV2 at 128x64 took 2.5 s per frame instead of 25 ms. Passive waiting costs next to
    nothing on an idle machine. Effective only before torch is first imported; an explicit
    ``OMP_WAIT_POLICY`` in the environment is respected.
    """
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


class UserError(Exception):
    """Mixin of the errors a user fixes (a device, a bag, an output path), not bugs.

    The command-line entry points report them, like ``ValueError``, ``OSError`` and
    ``ImportError``, as one line without a traceback (see :func:`run_command`).
    """


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
    """Run a command's ``run(args)``; a user error ends as one line on stderr and exit status 1.

    Bugs (any other exception) keep their traceback, and so does everything with ``debug``.

    Args:
        prog: Command name for the message, e.g. ``"python -m training train"``.
        run: The command's entry point; returns an exit status (None = 0).
        args: Its parsed arguments.
        debug: Re-raise user errors too, with their traceback.

    Returns:
        The exit status: ``run``'s, 1 after a user error, 130 after Ctrl-C.
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
        return 1
