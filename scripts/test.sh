#!/usr/bin/env bash
# The README's test command: set-up (idempotent), then the checks a change must pass: nothing
# built tracked by git, ruff lint and format, the architecture contracts, and the whole pytest
# suite (unit tests and integration tests on real servers started on loopback).
set -euo pipefail
cd "$(dirname "$0")/.."

# A built or ignored file in git (a venv, a cache, a wheel) breaks clones at other paths.
if git rev-parse --is-inside-work-tree >/dev/null 2>&1; then
  tracked=$(git ls-files -ci --exclude-standard)
  if [ -n "$tracked" ]; then
    echo "test: these files are ignored by .gitignore but tracked by git; git rm --cached them:" >&2
    echo "$tracked" | head -20 >&2
    exit 1
  fi
fi

bash scripts/setup.sh
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/lint-imports --no-cache
# Two workers (pytest-xdist): the suite mostly waits on real servers. FIELDMON_TEST_WORKERS=0
# runs it in this process; arguments given here come last and win.
exec .venv/bin/pytest -n "${FIELDMON_TEST_WORKERS:-2}" "$@"
