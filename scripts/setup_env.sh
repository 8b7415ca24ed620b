#!/usr/bin/env bash
# Create (or reuse) the project virtual environment and install bisenet_ros into it (editable).
# Idempotent: a second run only checks that the requirements are satisfied.
#
# Environment: PYTHON, the interpreter the environment is made from (default: the python3 on
# PATH; any Python 3.10+, e.g. Debian's or Ubuntu's /usr/bin/python3, whose venvs bring an older
# pip: pyproject.toml makes it install through PEP 660); VENV, where the environment goes
# (default .venv; scripts/test.sh and scripts/demo.sh read it too).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}
if [ ! -x "$VENV/bin/python" ]; then
    if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 10))'; then
        echo "setup_env.sh: $PYTHON is Python $("$PYTHON" -c 'import platform; print(platform.python_version())');" \
             "bisenet_ros needs 3.10 or later: run it as PYTHON=/path/to/python3.10+ bash $0" >&2
        exit 1
    fi
    if ! "$PYTHON" -m venv "$VENV"; then
        # Debian's and Ubuntu's python3 without python3-venv stop half-way: leave nothing behind.
        rm -rf "$VENV"
        echo "setup_env.sh: '$PYTHON -m venv $VENV' failed (Debian, Ubuntu: apt install python3-venv)" >&2
        exit 1
    fi
fi
stamp=$VENV/.requirements.sha
want=$(sha256sum requirements.txt setup.py pyproject.toml | sha256sum | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -r requirements.txt
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --no-deps -e .
    echo "$want" > "$stamp"
fi
