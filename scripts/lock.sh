#!/usr/bin/env bash
# Refresh constraints.txt, the version set the README's commands and CI install.
#
# Builds a fresh virtual environment (.venv-latest) from pyproject.toml with no
# constraints, so pip takes the newest release of everything the extras allow;
# runs the test suite in it; and only if the suite passes, writes what was
# installed to constraints.txt. Commit the new file with the test run's result.
# A failure leaves constraints.txt as it was and .venv-latest behind to debug in:
# this is also how to test conveyor against the newest releases.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
VENV=.venv-latest
rm -rf "$VENV"
"$PYTHON" -m venv "$VENV"
"$VENV/bin/python" -m pip install --quiet --upgrade pip
# torch first, pinned: 2.13.0 is the CPU build on disk (see the Makefile).
"$VENV/bin/python" -m pip install --quiet torch==2.13.0
"$VENV/bin/python" -m pip install --quiet -e '.[docs,serve,ray,store,dataset,bench,dev]'
"$VENV/bin/python" -m pip check
./scripts/system-deps.sh
"$VENV/bin/python" -m pytest -q
{
    echo "# The version set the README's commands and CI install, verified together:"
    echo "# the whole test suite passed on it ($("$VENV/bin/python" --version), $(date -u +%Y-%m-%d))."
    echo "# Written by scripts/lock.sh (make lock); do not edit by hand."
    "$VENV/bin/python" -m pip freeze --all --exclude-editable | sed -e 's/^torch==\([0-9.]*\)+cpu$/torch==\1/'
} > constraints.txt.new
mv constraints.txt.new constraints.txt
echo "constraints.txt updated: $(grep -vc '^#' constraints.txt) packages"
