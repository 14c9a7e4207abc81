#!/usr/bin/env bash
# The README's demo command: set-up (idempotent), then the whole pipeline on this machine.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/fieldmon-lab demo "$@"
