# Sourced by scripts/install.sh and scripts/install_browser.sh: one line per install step.
# step LABEL COMMAND...: run COMMAND quietly and print "LABEL ...  N s", or, when it fails, its
# whole output (errors included) and exit with its status.
STEP_LOG=$(mktemp)
trap 'rm -f "$STEP_LOG"' EXIT

step() {
    local label=$1 t0=$SECONDS
    shift
    printf '%-64s' "$label ..."
    if "$@" >"$STEP_LOG" 2>&1; then
        printf ' %3d s\n' $((SECONDS - t0))
    else
        local rc=$?
        printf ' FAILED after %d s\n' $((SECONDS - t0))
        echo "---- output of: $*" >&2
        cat "$STEP_LOG" >&2
        exit "$rc"
    fi
}
