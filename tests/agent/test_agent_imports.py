"""What the agent loads: the libraries a site does not use stay out of its memory.

scapy never (the echoes are built with struct), pysnmp only for SNMPv3 devices, dnspython only
for DNS services or an HTTP service's own resolver (paho would load its resolver for SRV
lookups fieldmon never makes). Each is megabytes of a Pi agent's 64 MB budget (bench/agent).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from fieldmon.lab.secretfiles import write_secret

# Loads a site file and builds its probes as `fieldmon-agent run` does, then says which of the
# heavy libraries are loaded; a second site file's probes are built in the same process after.
_BUILD = """
import json, sys
from fieldmon.agent.cli import import_paho_without_resolver
import_paho_without_resolver()
from fieldmon.agent import daemon
from fieldmon.agent.probes.base import ProbeResources
from fieldmon.agent.probes.icmp_socket import IcmpPinger
from fieldmon.agent.probes.registry import build_probes
from fieldmon.agent.snmp.client import SnmpClient
from fieldmon.core.site.config import load_site_config

def loaded():
    heavy = {"scapy", "pysnmp", "pyasn1", "dns"}
    return sorted({name.split(".")[0] for name in sys.modules} & heavy)

out = {}
for step, path in enumerate(sys.argv[1:]):
    probes = build_probes(
        load_site_config(path), ProbeResources(pinger=IcmpPinger(), snmp=SnmpClient())
    )
    out[f"site {step}"] = {"probes": len(probes), "loaded": loaded()}
import paho.mqtt.client
out["paho has its resolver"] = paho.mqtt.client.HAVE_DNS
import dns.resolver
out["resolver importable"] = dns.resolver.Resolver is not None
print(json.dumps(out))
"""


def _site(directory: Path, services: list[dict[str, object]]) -> Path:
    write_secret(directory / "community")
    site = {
        "site": "pavilion-2",
        "name": "Field hospital - Pavilion 2",
        "parent_hospital": "hospital-central",
        "agent": {
            "id": "pavilion-2-pi1",
            "broker": {"host": "127.0.0.1", "port": 1883},
            "outbox": {"path": str(directory / "outbox.db")},
        },
        "links": [{"name": "gw", "address": "192.0.2.1", "role": "gateway"}],
        "snmp_devices": [
            {
                "name": "ap-1",
                "address": "192.0.2.2",
                "profile": "if-mib",
                "snmp": {"version": "2c", "community_file": str(directory / "community")},
            }
        ],
        "host": {"interval": "30s"},
        "services": services,
    }
    path = directory / "site.yaml"
    path.write_text(json.dumps(site), encoding="utf-8")  # JSON is YAML
    return path


def test_a_site_loads_only_the_libraries_its_probes_need(tmp_path: Path) -> None:
    (tmp_path / "plain").mkdir()
    (tmp_path / "dns").mkdir()
    plain = _site(
        tmp_path / "plain",
        [
            {"name": "his", "kind": "http", "url": "http://192.0.2.80/health"},
            {"name": "pacs", "kind": "tcp", "address": "192.0.2.80", "port": 104},
        ],
    )
    with_dns = _site(
        tmp_path / "dns",
        [{"name": "resolver", "kind": "dns", "server": "192.0.2.53", "query": "his.example"}],
    )
    out = subprocess.run(
        [sys.executable, "-c", _BUILD, str(plain), str(with_dns)],
        capture_output=True,
        text=True,
        check=True,
    )
    result = json.loads(out.stdout)
    # links, SNMPv2c, the host, HTTP and TCP services: none of them
    assert result["site 0"] == {"probes": 5, "loaded": []}
    # a DNS service brings dnspython (its message parts, not paho's resolver)
    assert result["site 1"] == {"probes": 4, "loaded": ["dns"]}
    assert result["paho has its resolver"] is False
    assert result["resolver importable"] is True
