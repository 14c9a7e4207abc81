"""A real snmpd inside a network namespace: its IF-MIB is that namespace's veth interfaces.

The agent polls from the root namespace over a management veth; a second veth joins the
device's namespace to a peer namespace, and the test pushes a known number of bytes through
it each way. The agent's in_bps and out_bps for the data interface must match within 5 %.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from pathlib import Path

import pytest

from fieldmon.agent.probes.snmp import SnmpProbe
from fieldmon.agent.snmp.client import SnmpClient
from fieldmon.core.site.snmp import SnmpDeviceConfig
from fieldmon.core.wire.models import Sample
from fieldmon.lab.netns import Namespace, VethPair, unique_name, veth
from fieldmon.lab.secretfiles import write_secret
from fieldmon.lab.servers import SnmpdServer

pytestmark = [
    pytest.mark.integration,
    pytest.mark.netns,
    pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces need root"),
]

_SEND = """
import socket, sys
address, count, size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
    payload = bytes(size)
    for _ in range(count):
        sock.sendto(payload, (address, 9))
"""
_UDP_IP_ETHERNET = 8 + 20 + 14  # bytes a veth counts around each datagram's payload
# net-snmp refreshes its interface table at most every few seconds; the second poll waits
# past that so it reads counters taken after the last datagram left.
_SNMPD_CACHE_S = 6.0


def _push(source: Namespace, address: str, count: int, size: int) -> int:
    """Send `count` UDP datagrams of `size` bytes from `source`; the bytes the veth counts."""
    source.run(sys.executable, "-c", _SEND, address, str(count), str(size))
    return count * (size + _UDP_IP_ETHERNET)


def _device(tmp_path: Path, snmpd: SnmpdServer, management: VethPair) -> SnmpDeviceConfig:
    community = tmp_path / "community"
    write_secret(community, snmpd.community)
    return SnmpDeviceConfig.model_validate(
        {
            "name": "edge-router",
            "address": str(management.b_v4.ip),
            "profile": "if-mib",
            "snmp": {"version": "2c", "community_file": str(community), "port": snmpd.port},
        }
    )


def test_in_and_out_bps_match_bytes_pushed_through_a_namespace_veth(tmp_path: Path) -> None:
    into_device, into_size = 4000, 1200
    out_of_device, out_size = 2500, 800
    with Namespace(unique_name("snmpdev")) as device, Namespace(unique_name("snmppeer")) as peer:
        management = veth(None, device)  # root (the agent) <-> device: SNMP only
        data = veth(device, peer)  # device <-> peer: the traffic we count
        snmpd = SnmpdServer(
            tmp_path / "snmpd",
            namespace=device.name,
            listen=(str(management.b_v4.ip),),
            allow_from=str(management.a_v4.network),
        ).start()
        config = _device(tmp_path, snmpd, management)

        async def scenario() -> tuple[list[Sample], list[Sample], int, int, float]:
            client = SnmpClient()
            try:
                probe = SnmpProbe(config, site="field-1", agent="pi-1", client=client)
                started = time.monotonic()
                first = await probe.collect()
                pushed_in = await asyncio.to_thread(
                    _push, peer, str(data.a_v4.ip), into_device, into_size
                )
                pushed_out = await asyncio.to_thread(
                    _push, device, str(data.b_v4.ip), out_of_device, out_size
                )
                await asyncio.sleep(max(0.0, _SNMPD_CACHE_S - (time.monotonic() - started)))
                second_started = time.monotonic()
                second = await probe.collect()
                return first, second, pushed_in, pushed_out, second_started - started
            finally:
                client.close()

        try:
            first, second, pushed_in, pushed_out, elapsed = asyncio.run(scenario())
        finally:
            snmpd.stop()

    # The device's IF-MIB is its own namespace's: loopback and its two veth ends, nothing else.
    assert {row.tags["ifname"] for row in first} == {"lo", management.b_name, data.a_name}
    assert all("in_bps" not in row.fields for row in first)  # first poll: no rate yet
    rows = {row.tags["ifname"]: row.fields for row in second}
    data_fields = rows[data.a_name]
    assert data_fields["oper_up"] == 1
    assert data_fields["in_bps"] == pytest.approx(pushed_in * 8 / elapsed, rel=0.05)
    assert data_fields["out_bps"] == pytest.approx(pushed_out * 8 / elapsed, rel=0.05)
    # veth reports 10 Gbit/s: the busier direction's share of it.
    assert data_fields["util_pct"] == pytest.approx(
        100 * max(data_fields["in_bps"], data_fields["out_bps"]) / 10e9, rel=1e-6
    )
    # The management link carried only SNMP: a tiny fraction of the data link's traffic.
    assert rows[management.b_name]["in_bps"] < data_fields["in_bps"] / 100
