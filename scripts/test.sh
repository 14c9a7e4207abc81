#!/usr/bin/env bash
# The README's test command: set-up (idempotent), lint, then the whole pytest suite
# (unit tests and integration tests on real servers started on loopback).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/ruff check .
.venv/bin/ruff format --check .
exec .venv/bin/pytest "$@"
