#!/usr/bin/env bash
# Quick start 1: install, then run the main job on the embedded model.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
export OMP_WAIT_POLICY=PASSIVE  # see fv_exercises/__init__.py
.venv/bin/python -m fv_exercises run "$@"
