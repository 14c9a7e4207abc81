#!/usr/bin/env bash
# Builds the agent's offline install bundle: dist/bundle/fieldmon-agent-bundle-VERSION.tar, one
# file with the agent's wheels and every dependency's for each platform that has them, pip,
# the systemd unit and install.sh. Prints its size and what it left out. Options: see
# `.venv/bin/fieldmon-lab bundle --help` (--platform NAME, --out DIR, --json).
set -euo pipefail
cd "$(dirname "$0")/../.."
bash scripts/setup.sh
exec .venv/bin/fieldmon-lab bundle "$@"
