"""Process-level settings that must be made before the heavy libraries are imported."""
from __future__ import annotations

import os


def prefer_passive_openmp() -> None:
    """Make OpenMP worker threads sleep instead of spin-waiting between parallel regions.

    PyTorch's OpenMP threads spin by default. On a robot, other nodes keep the cores busy, and
    spinning threads then starve them and themselves: measured on a 2-core machine under load,
    eager BiSeNetV2 at 128x64 took 2.5 s per frame instead of 25 ms. Passive waiting costs next to
    nothing on an idle machine. Effective only before torch is first imported; an explicit
    ``OMP_WAIT_POLICY`` in the environment is respected.
    """
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
