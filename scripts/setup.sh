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
  prometheus-alertmanager              # the recommended notification route
  prometheus prometheus-blackbox-exporter  # the usual alternative, beside fieldmon in bench/alert_latency
  strace                               # bench/outbox counts the outbox's fsyncs
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
if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv with $PYTHON"
  "$PYTHON" -m venv .venv
fi
stamp=.venv/.fieldmon-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  echo "setup: installing Python packages into .venv"
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q -e '.[test]'
  touch "$stamp"
fi
