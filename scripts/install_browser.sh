#!/usr/bin/env bash
# What the browser tests (tests/test_browser.py) need beyond the course: Debian's Chromium and
# Playwright for Python (the `browser` extra of pyproject.toml, pinned there). Learners do not
# need either, so scripts/install.sh does not install them; scripts/test.sh calls this script
# after it. Idempotent. Playwright's own browser download is not used (it cannot be reached from
# every machine): the tests drive /usr/bin/chromium (or $FV_CHROMIUM).
set -euo pipefail
cd "$(dirname "$0")/.."
CHROMIUM=${FV_CHROMIUM:-/usr/bin/chromium}
START=$SECONDS
source scripts/steps.sh  # step LABEL COMMAND...

echo "Installing what the browser tests need"
# the pin of pyproject's `browser` extra, alone (pip install -e .[browser] would re-resolve the rest)
PLAYWRIGHT=$(.venv/bin/python -c 'import tomllib; print(*tomllib.load(open("pyproject.toml", "rb"))["project"]["optional-dependencies"]["browser"])')
step "Playwright ($PLAYWRIGHT, pyproject's browser extra)" \
    .venv/bin/python -m pip install --quiet $PLAYWRIGHT
if [ -x "$CHROMIUM" ]; then
    printf '%-64s %s\n' "Chromium ($CHROMIUM) ..." "present"
elif [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    step "Chromium (Debian's package; apt-get, about 100 MB)" bash -c \
        'apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium'
else
    # Not fatal here: the browser tests then fail, with this instruction.
    printf '%-64s %s\n' "Chromium ..." \
        "missing: the browser tests will fail; install it: sudo apt-get install chromium"
fi
echo "browser test tools ready in $((SECONDS - START)) s"
