#!/usr/bin/env bash
# What book_tests/ (the browser test of the built book) needs, installed only where it is missing:
#   - Debian's Chromium at /usr/bin/chromium (apt-get, non-interactive; needs root or sudo);
#   - the Python driver, Playwright from PyPI, in the project's venv (pinned in constraints.txt).
# Playwright drives that system Chromium through `executable_path`: Playwright's own browser
# downloads (`playwright install`) are never used, and would fail offline anyway.
# Idempotent: with both present it only prints their versions (well under a second of work).
# Override the interpreter with PYTHON=... (default .venv/bin/python) and the browser with
# CHROMIUM=... (then nothing is installed with apt-get; the test reads the same variable).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
CHROMIUM=${CHROMIUM:-/usr/bin/chromium}

if [ ! -x "$CHROMIUM" ]; then
  if [ "$CHROMIUM" != /usr/bin/chromium ]; then
    echo "install_browser.sh: CHROMIUM=$CHROMIUM is not an executable" >&2
    exit 1
  fi
  sudo=()
  if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null; then sudo=(sudo); else
      echo "install_browser.sh: /usr/bin/chromium is missing and installing it needs root" \
           "(apt-get install chromium)" >&2
      exit 1
    fi
  fi
  echo "install_browser.sh: installing Debian's chromium with apt-get (about a minute)"
  export DEBIAN_FRONTEND=noninteractive
  "${sudo[@]}" apt-get update -qq
  "${sudo[@]}" apt-get install -y -qq chromium >/dev/null
fi

if ! "$PY" -c "import playwright" 2>/dev/null; then
  echo "install_browser.sh: installing the Playwright Python package (the driver only, no browsers)"
  "$PY" -m pip install --quiet -c constraints.txt playwright
fi

echo "install_browser.sh: $("$CHROMIUM" --version 2>/dev/null | head -n1)," \
     "playwright $("$PY" -c 'from importlib.metadata import version; print(version("playwright"))')"
