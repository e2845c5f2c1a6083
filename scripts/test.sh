#!/usr/bin/env bash
# Quick start 2: install, then run the whole test suite (fast tests, then notebook round trips).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
export OMP_WAIT_POLICY=PASSIVE  # see fv_exercises/__init__.py
export PATH="$PWD/.venv/bin:$PATH"  # nbgrader shells out to alembic and jupyter by name
.venv/bin/python -m pytest "$@"
