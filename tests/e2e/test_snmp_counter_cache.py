"""A steady link seen through a real snmpd's counter cache: per poll it saw-tooths, across the
window it holds, and UplinkSaturated judged on those rows fires once and never flaps.

snmpd (net-snmp 5.9) answers IF-MIB from a cache of the interface table that it refreshes at
most every `nsCacheTimeout` seconds (3 for ifTable, read from the device below). The agent
polls every second, faster than that, while a paced sender in a peer namespace pushes a steady
2 Mbit/s into the device through a veth. The truth is the kernel's own byte counter of that
veth across the run.

veth reports 10 Gbit/s, so 2 Mbit/s is 0.02 % of it: the site's `uplink_util_pct` is set at 90 %
of what the sender pushes, which makes the link "saturated" to the alert engine exactly as a
4 Mbit/s LTE uplink carrying 3.8 Mbit/s would be at the default 90 %.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from fieldmon.agent.probes.snmp import SnmpProbe
from fieldmon.agent.snmp.client import SnmpClient
from fieldmon.collector.alerts import AlertEngine, Transition
from fieldmon.collector.config import AlertingConfig
from fieldmon.core.site.config import SiteConfig
from fieldmon.core.wire.models import Sample
from fieldmon.lab.netns import Namespace, unique_name, veth
from fieldmon.lab.process import wait_for
from fieldmon.lab.secretfiles import write_secret
from fieldmon.lab.servers import SnmpdServer

pytestmark = [
    pytest.mark.integration,
    pytest.mark.netns,
    pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces need root"),
]

SITE, AGENT, DEVICE = "cache-site", "cache-pi", "edge-router"
RATE_BPS = 2_000_000  # what the sender pushes, counted as the veth counts it (Ethernet frames)
POLL_S = 1.0  # the agent's interval: a third of snmpd's interface cache
WINDOW_S = 60.0  # rate_window: the cache period is at most 3 s of it (5 %)
POLLS = 80
VETH_BPS = 10e9  # veth's ifHighSpeed (10000 Mbit/s)
# NET-SNMP-AGENT-MIB::nsCacheTimeout for ifTable (1.3.6.1.2.1.2.2): the cache's lifetime in s.
NS_CACHE_TIMEOUT_IFTABLE = "1.3.6.1.4.1.8072.1.5.3.1.2.1.3.6.1.2.1.2.2"

# A paced UDP sender: whole datagrams, each on time, until it is stopped (by PID).
_SENDER = """
import socket, sys, time
address, rate_bps = sys.argv[1], float(sys.argv[2])
size = 1000
gap = (size + 8 + 20 + 14) * 8 / rate_bps  # what the veth counts per datagram
payload = bytes(size)
sent = 0
with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
    start = time.monotonic()
    while True:
        due = int((time.monotonic() - start) / gap) + 1
        while sent < due:
            sock.sendto(payload, (address, 9))
            sent += 1
        time.sleep(0.002)
"""


def _rx_bytes(namespace: Namespace, ifname: str) -> int:
    """The kernel's own count of bytes received on `ifname` (what IF-MIB reads, uncached)."""
    out = namespace.run("ip", "-s", "-j", "link", "show", "dev", ifname).stdout
    return int(json.loads(out)[0]["stats64"]["rx"]["bytes"])


def _site(community: Path, port: int, address: str, threshold_pct: float) -> SiteConfig:
    data: dict[str, Any] = {
        "site": SITE,
        "name": "Counter cache site",
        "parent_hospital": "test-central",
        "agent": {"id": AGENT, "broker": {"host": "127.0.0.1"}},
        "snmp_devices": [
            {
                "name": DEVICE,
                "address": address,
                "profile": "if-mib",
                "interval": f"{POLL_S}s",
                "rate_window": f"{WINDOW_S}s",
                "snmp": {"version": "2c", "community_file": str(community), "port": port},
            }
        ],
        "alerting": {"uplink_util_pct": threshold_pct, "uplink_saturated_for": "10s"},
    }
    return SiteConfig.model_validate(data)


async def _poll(probe: SnmpProbe) -> list[Sample]:
    rows: list[Sample] = []
    started = time.monotonic()
    for number in range(POLLS):
        # Time passes on purpose: one poll a second, as the agent's scheduler would.
        await asyncio.sleep(max(0.0, started + number * POLL_S - time.monotonic()))
        rows.extend(await probe.collect())
    return rows


def _judge(site: SiteConfig, rows: list[Sample]) -> list[Transition]:
    clock_now = [0.0]
    config = AlertingConfig(condition_clear_for=5)  # a flap would show within the run
    engine = AlertEngine({SITE: site}, config, lambda: clock_now[0])
    out: list[Transition] = []
    for row in rows:
        clock_now[0] = row.time / 1e9 + 0.5  # live: each row arrives as it is polled
        out.extend(t for t in engine.observe(row) if t.alertname == "UplinkSaturated")
    return out


def test_cached_counters_saw_tooth_per_poll_and_hold_across_the_window(tmp_path: Path) -> None:
    with Namespace(unique_name("cachedev")) as device, Namespace(unique_name("cachepeer")) as peer:
        management = veth(None, device)  # the agent (root namespace) <-> device: SNMP only
        data = veth(device, peer)  # device <-> peer: the steady traffic
        snmpd = SnmpdServer(
            tmp_path / "snmpd",
            namespace=device.name,
            listen=(str(management.b_v4.ip),),
            allow_from=str(management.a_v4.network),
        ).start()
        community = tmp_path / "community"
        write_secret(community, snmpd.community)
        address = str(management.b_v4.ip)
        site = _site(community, snmpd.port, address, threshold_pct=0.9 * 100 * RATE_BPS / VETH_BPS)
        sender = subprocess.Popen(
            ["ip", "netns", "exec", peer.name, sys.executable, "-c", _SENDER,
             str(data.a_v4.ip), str(RATE_BPS)],
        )  # fmt: skip
        try:
            start_bytes = _rx_bytes(device, data.a_name)
            wait_for(
                lambda: _rx_bytes(device, data.a_name) > start_bytes + 10_000,
                "the sender's traffic on the device's veth",
                10,
            )

            async def scenario() -> tuple[int | None, list[Sample], float, int, float, int]:
                client = SnmpClient()
                try:
                    target = await client.target(site.snmp_devices[0])
                    cache = (await target.get([NS_CACHE_TIMEOUT_IFTABLE])).get(
                        NS_CACHE_TIMEOUT_IFTABLE
                    )
                    probe = SnmpProbe(site.snmp_devices[0], site=SITE, agent=AGENT, client=client)
                    first_at, first = time.monotonic(), _rx_bytes(device, data.a_name)
                    rows = await _poll(probe)
                    last_at, last = time.monotonic(), _rx_bytes(device, data.a_name)
                    return cache, rows, first_at, first, last_at, last  # type: ignore[return-value]
                finally:
                    client.close()

            cache_s, rows, first_at, first, last_at, last = asyncio.run(scenario())
        finally:
            sender.terminate()
            sender.wait(10)
            snmpd.stop()

    assert cache_s == 3  # net-snmp 5.9's ifTable cache: three polls share one reading
    truth = (last - first) * 8 / (last_at - first_at)
    assert truth == pytest.approx(RATE_BPS, rel=0.05)  # the sender held its pace
    mine = [row for row in rows if row.tags["ifname"] == data.a_name]
    assert len(mine) == POLLS

    # Per poll: the cached value read again (about 0), then three polls' worth at once.
    per_poll = [row.fields["in_bps"] for row in mine if "in_bps" in row.fields]
    assert isinstance(per_poll[0], float)
    low = sum(1 for value in per_poll if value < 0.5 * truth)  # type: ignore[operator]
    high = sum(1 for value in per_poll if value > 2 * truth)  # type: ignore[operator]
    assert low >= 0.5 * len(per_poll) and high >= 0.2 * len(per_poll), per_poll

    # Across the window: within a few % of the truth at every poll once the window is full.
    full = [row.fields for row in mine if float(row.fields.get("window_s", 0)) >= WINDOW_S]
    assert len(full) >= 15
    for fields in full:
        assert fields["in_bps_window"] == pytest.approx(truth, rel=0.05), fields
        assert fields["util_pct_window"] == pytest.approx(100 * truth / VETH_BPS, rel=0.05)

    # The alert engine, fed these rows: one firing, never a resolve; judged per poll (the
    # same rows without the window fields, as an older agent sends them) it never fires.
    judged = _judge(site, mine)
    assert [(t.state.value, t.page) for t in judged] == [("firing", True)]
    windowed = {"in_bps_window", "out_bps_window", "util_pct_window", "window_s"}
    per_poll_rows = [
        dataclasses.replace(row, fields={k: v for k, v in row.fields.items() if k not in windowed})
        for row in mine
    ]
    assert _judge(site, per_poll_rows) == []
