#!/usr/bin/env bash
# Set up the environment (first run only) and run the whole test suite (PYTHON, VENV: see
# scripts/setup_env.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
exec "${VENV:-.venv}/bin/python" -m pytest -q "$@"
