"""Small site files for tests that run the real agent against loopback."""

from __future__ import annotations

import json
from pathlib import Path

from fieldmon.lab.servers import free_port


def loopback_site(
    directory: Path, *, outbox: Path, echoes: int = 2, broker_port: int | None = None
) -> Path:
    """`directory/site.yaml`: one agent pinging 127.0.0.1 every second (`echoes` per round,
    10 ms apart) and reading the host every second. Without `broker_port` the broker address
    is a free port nothing listens on: the agent serves offline, as a site without an uplink."""
    site = {
        "site": "pavilion-2",
        "name": "Field hospital - Pavilion 2",
        "parent_hospital": "hospital-central",
        "agent": {
            "id": "pavilion-2-pi1",
            "broker": {"host": "127.0.0.1", "port": broker_port or free_port()},
            "outbox": {"path": str(outbox)},
        },
        "links": [
            {
                "name": "site-gateway",
                "address": "127.0.0.1",
                "role": "gateway",
                "interval": "1s",
                "count": echoes,
                "spacing": "10ms",
                "timeout": "200ms",
            }
        ],
        "host": {"interval": "1s"},
    }
    path = directory / "site.yaml"
    path.write_text(json.dumps(site), encoding="utf-8")
    return path
