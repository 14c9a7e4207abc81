#!/usr/bin/env bash
# Installs everything fieldmon's tests and demo need on Debian 12, as root: Debian packages with
# apt-get, Python packages in .venv at the repository root. Idempotent and quick when done before.
set -euo pipefail
cd "$(dirname "$0")/.."

DEBIAN_PACKAGES=(
  python3 python3-venv make git ca-certificates
  mosquitto mosquitto-clients          # the MQTT broker, started by tests on ephemeral ports
  influxdb influxdb-client             # influxd 1.6.7 and the influx CLI
  victoria-metrics                     # a real /api/v2/write server for the v2 writer's test
  snmpd snmp                           # SNMP agents for the probes' tests, snmpbulkwalk for benches
  fping iproute2 iptables procps kmod  # ICMP reference, namespaces, loss injection, sysctl
  mtr-tiny traceroute                  # path-trace references beside fieldmon's own traces
  prometheus-alertmanager              # the recommended notification route
  prometheus prometheus-blackbox-exporter  # the usual alternative, beside fieldmon in bench/alert_latency
  strace                               # bench/outbox counts the outbox's fsyncs
  dnsmasq-base nginx                   # a DNS server and HTTPS servers for the service probes' tests
  chromium fonts-dejavu-core           # headless browser test of the collector's status page
)

missing=()
for package in "${DEBIAN_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" \
    || missing+=("$package")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing Debian packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q
  # Our tests start their own servers; keep the packages' system services from starting.
  policy_added=0
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
    policy_added=1
  fi
  apt-get install -y -q --no-install-recommends "${missing[@]}"
  [ "$policy_added" = 1 ] && rm -f /usr/sbin/policy-rc.d
fi

# Python: Debian 12's python3 is 3.11; a python3.11 earlier on PATH (pyenv) is fine too.
PYTHON=${PYTHON:-$(command -v python3.11 || command -v python3)}
# uv installs the workspace from uv.lock. It comes from PyPI into .tools/ (ignored by git), pinned,
# unless a uv of that version is already on PATH.
UV_VERSION=0.13.9
UV=.tools/uv/bin/uv
if command -v uv >/dev/null 2>&1 && [ "$(uv --version | cut -d' ' -f2)" = "$UV_VERSION" ]; then
  UV=$(command -v uv)
elif [ ! -x "$UV" ] || [ "$("$UV" --version | cut -d' ' -f2)" != "$UV_VERSION" ]; then
  echo "setup: installing uv $UV_VERSION into .tools/uv"
  rm -rf .tools/uv
  "$PYTHON" -m venv .tools/uv
  .tools/uv/bin/python -m pip install -q "uv==$UV_VERSION"
fi
# A venv made at another path (a moved clone) has scripts that start with that path.
if [ -f .venv/bin/pytest ] && [ "$(head -c 200 .venv/bin/pytest | head -n 1)" != "#!$PWD/.venv/bin/python" ]; then
  echo "setup: .venv was made at another path; making it again"
  rm -rf .venv
fi
stamp=.venv/.fieldmon-synced
if [ ! -f "$stamp" ] || [ uv.lock -nt "$stamp" ] || [ -n "$(find . -name pyproject.toml -newer "$stamp" -not -path './.venv/*' -print -quit)" ]; then
  echo "setup: installing the workspace (uv.lock) into .venv"
  # --frozen: exactly the committed lock; a pyproject change without `uv lock` fails the sync.
  "$UV" sync --frozen --python "$PYTHON" --quiet
  touch "$stamp"
fi
