"""SnmpProbe with the if-mib profile against a real net-snmp snmpd on 127.0.0.1 (v2c and v3)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from fieldmon.agent.probes.snmp import SnmpProbe
from fieldmon.agent.snmp import client as client_module
from fieldmon.agent.snmp.client import SnmpClient
from fieldmon.agent.snmp.errors import CryptoBackendMissingError, SnmpTimeoutError
from fieldmon.agent.snmp.ifmib import IfMibPoller
from fieldmon.core.site.snmp import SnmpDeviceConfig
from fieldmon.core.wire.models import Sample
from fieldmon.lab.netns import Namespace, unique_name, veth
from fieldmon.lab.secretfiles import write_secret
from fieldmon.lab.servers import SnmpdServer, free_port

pytestmark = pytest.mark.integration

RATE_FIELDS = {"in_bps", "out_bps", "in_errors", "out_errors", "in_discards", "out_discards"}


@pytest.fixture
def snmpd(tmp_path: Path) -> Iterator[SnmpdServer]:
    """A real snmpd serving this host's IF-MIB on an ephemeral UDP port of 127.0.0.1."""
    server = SnmpdServer(tmp_path / "snmpd")
    server.start()
    try:
        yield server
    finally:
        server.stop()


def _v2c(server: SnmpdServer, tmp_path: Path, **extra: Any) -> SnmpDeviceConfig:
    community = tmp_path / "community"
    write_secret(community, server.community)
    snmp = {"version": "2c", "community_file": str(community), "port": server.port}
    snmp.update(extra.pop("snmp", {}))
    return SnmpDeviceConfig.model_validate(
        {"name": "router-a", "address": "127.0.0.1", "profile": "if-mib", "snmp": snmp, **extra}
    )


def _v3(server: SnmpdServer, tmp_path: Path, priv_key: str | None = None) -> SnmpDeviceConfig:
    auth, priv = tmp_path / "auth", tmp_path / "priv"
    write_secret(auth, server.v3_auth_key)
    write_secret(priv, priv_key or server.v3_priv_key)
    snmp = {
        "version": 3,
        "user": server.v3_user,
        "auth": "sha",
        "auth_key_file": str(auth),
        "priv": "aes",
        "priv_key_file": str(priv),
        "port": server.port,
        "timeout": "1s",
        "retries": 0,
    }
    return SnmpDeviceConfig.model_validate(
        {"name": "router-v3", "address": "127.0.0.1", "profile": "if-mib", "snmp": snmp}
    )


async def _polls(probe: SnmpProbe, count: int, gap: float = 0.3) -> list[list[Sample]]:
    results = []
    for number in range(count):
        if number:
            await asyncio.sleep(gap)
        results.append(await probe.collect())
    return results


def _by_ifname(samples: list[Sample]) -> dict[str, Sample]:
    return {sample.tags["ifname"]: sample for sample in samples}


def _run(config: SnmpDeviceConfig, count: int, **probe_args: Any) -> list[list[Sample]]:
    async def scenario() -> list[list[Sample]]:
        client = SnmpClient()
        try:
            probe = SnmpProbe(config, site="field-1", agent="pi-1", client=client, **probe_args)
            return await _polls(probe, count)
        finally:
            client.close()

    return asyncio.run(scenario())


def test_v2c_loopback_rows_first_poll_has_no_rates(snmpd: SnmpdServer, tmp_path: Path) -> None:
    first, second = _run(_v2c(snmpd, tmp_path, interfaces=["lo"]), 2)
    [lo1] = first
    assert lo1.measurement == "snmp_if"
    assert lo1.tags == {"site": "field-1", "agent": "pi-1", "device": "router-a", "ifname": "lo"}
    assert lo1.fields == {"oper_up": 1}  # first poll: status only, no rate
    [lo2] = second
    assert lo2.fields["oper_up"] == 1
    assert set(lo2.fields) >= RATE_FIELDS
    assert all(lo2.fields[name] >= 0 for name in RATE_FIELDS)
    assert lo2.fields["util_pct"] >= 0  # net-snmp gives lo an ifHighSpeed of 10 Mbit/s


def test_v3_auth_priv_polls_every_interface(snmpd: SnmpdServer, tmp_path: Path) -> None:
    first, second = _run(_v3(snmpd, tmp_path), 2)
    assert "lo" in _by_ifname(first)
    assert set(_by_ifname(first)) == set(_by_ifname(second))
    assert "in_bps" in _by_ifname(second)["lo"].fields


def test_v3_wrong_priv_key_gives_no_rows_and_names_the_device(
    snmpd: SnmpdServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    [rows] = _run(_v3(snmpd, tmp_path, priv_key="not-the-key"), 1)
    assert rows == []
    assert any("router-v3" in record.getMessage() for record in caplog.records)


def test_index_walked_once_then_cached(snmpd: SnmpdServer, tmp_path: Path) -> None:
    config = _v2c(snmpd, tmp_path)

    async def scenario() -> tuple[int, list[int]]:
        client = SnmpClient()
        try:
            poller = IfMibPoller(await client.target(config), None)
            per_poll = []
            for _ in range(4):
                before = client.requests
                rows = await poller.poll()
                assert "lo" in {row.ifname for row in rows}
                per_poll.append(client.requests - before)
            return poller.index_walks, per_poll
        finally:
            client.close()

    walks, per_poll = asyncio.run(scenario())
    assert walks == 1
    # The first poll walks the index; each later one only GETs the instances it knows (how
    # many GETs depends on how many interfaces this host has), the same number every time.
    first, *later = per_poll
    assert len(set(later)) == 1, per_poll
    assert later[0] < first, per_poll


def test_dead_device_gives_no_rows_and_a_warning_while_others_answer(
    snmpd: SnmpdServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    live = _v2c(snmpd, tmp_path, interfaces=["lo"])
    dead = live.model_copy(
        update={
            "name": "ap-dead",
            "snmp": live.snmp.model_copy(update={"port": free_port(), "timeout": 0.3}),
        }
    )
    dead.snmp.retries = 0

    async def scenario() -> tuple[list[Sample], list[Sample], SnmpProbe]:
        client = SnmpClient(concurrency=2)
        try:
            dead_probe = SnmpProbe(dead, site="field-1", agent="pi-1", client=client)
            live_probe = SnmpProbe(live, site="field-1", agent="pi-1", client=client)
            dead_rows, live_rows = await asyncio.gather(dead_probe.collect(), live_probe.collect())
            return dead_rows, live_rows, dead_probe
        finally:
            client.close()

    dead_rows, live_rows, dead_probe = asyncio.run(scenario())
    assert dead_rows == []
    assert [row.tags["ifname"] for row in live_rows] == ["lo"]
    assert dead_probe.last_error is not None and "ap-dead" in dead_probe.last_error
    assert "no answer" in dead_probe.last_error
    assert any("ap-dead" in record.getMessage() for record in caplog.records)


def test_unknown_interface_in_filter_is_logged(
    snmpd: SnmpdServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    [rows] = _run(_v2c(snmpd, tmp_path, interfaces=["lo", "wan9"]), 1)
    assert [row.tags["ifname"] for row in rows] == ["lo"]
    assert any("wan9" in record.getMessage() for record in caplog.records)


def test_agent_restart_gives_no_rates_and_counts_a_discontinuity(
    snmpd: SnmpdServer, tmp_path: Path
) -> None:
    config = _v2c(snmpd, tmp_path, interfaces=["lo"])

    async def scenario() -> tuple[list[Sample], list[Sample], int]:
        client = SnmpClient()
        try:
            probe = SnmpProbe(config, site="field-1", agent="pi-1", client=client)
            await probe.collect()
            await asyncio.sleep(1.5)  # sysUpTime must have grown past what a fresh agent shows
            before = await probe.collect()
            await asyncio.to_thread(snmpd.stop)
            await asyncio.to_thread(snmpd.start)  # same port, sysUpTime starts again at 0
            after = await probe.collect()
            assert isinstance(probe._poller, IfMibPoller)
            return before, after, probe._poller.discontinuities
        finally:
            client.close()

    before, after, discontinuities = asyncio.run(scenario())
    assert "in_bps" in before[0].fields
    [lo] = after
    assert lo.fields == {"oper_up": 1}
    assert discontinuities == 1


def test_missing_crypto_backend_fails_at_start_up(
    snmpd: SnmpdServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = _v3(snmpd, tmp_path)
    real_find_spec = client_module.importlib.util.find_spec

    def without_cryptography(name: str, *args: Any) -> Any:
        return None if name == "cryptography" else real_find_spec(name, *args)

    monkeypatch.setattr(client_module.importlib.util, "find_spec", without_cryptography)
    with pytest.raises(CryptoBackendMissingError, match=r"router-v3.*cryptography"):
        SnmpProbe(config, site="field-1", agent="pi-1", client=SnmpClient())


_SEND = """
import socket, sys
address, count, size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
    payload = bytes(size)
    for _ in range(count):
        sock.sendto(payload, (address, 9))
"""
_UDP_IP_ETHERNET = 8 + 20 + 14  # bytes a veth counts around each datagram's payload


@pytest.mark.netns
@pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces need root")
def test_in_bps_matches_bytes_pushed_through_a_veth(tmp_path: Path) -> None:
    count, size = 4000, 1200
    with Namespace(unique_name("snmp")) as far:
        link = veth(None, far)
        # Started after the veth exists, so snmpd's first interface scan already has it.
        snmpd = SnmpdServer(tmp_path / "snmpd").start()
        config = _v2c(snmpd, tmp_path, interfaces=[link.a_name])

        async def scenario() -> tuple[Sample, float]:
            client = SnmpClient()
            try:
                probe = SnmpProbe(config, site="field-1", agent="pi-1", client=client)
                started = time.monotonic()
                [first] = await probe.collect()
                assert first.fields == {"oper_up": 1}
                await asyncio.to_thread(
                    far.run, sys.executable, "-c", _SEND, str(link.a_v4.ip), str(count), str(size)
                )
                # Past snmpd's interface cache (a few seconds), so the second poll is fresh.
                await asyncio.sleep(max(0.0, 6.0 - (time.monotonic() - started)))
                second_started = time.monotonic()
                [second] = await probe.collect()
                return second, second_started - started
            finally:
                client.close()

        try:
            second, elapsed = asyncio.run(scenario())
        finally:
            snmpd.stop()
    expected_bps = count * (size + _UDP_IP_ETHERNET) * 8 / elapsed
    assert second.tags["ifname"] == link.a_name
    assert second.fields["in_bps"] == pytest.approx(expected_bps, rel=0.05)
    assert second.fields["oper_up"] == 1


def test_devices_sharing_a_community_both_answer(snmpd: SnmpdServer, tmp_path: Path) -> None:
    # pysnmp maps an answer's community to the first index configured with it; two devices
    # with the same community once made the second one time out.
    first = _v2c(snmpd, tmp_path, interfaces=["lo"])
    second = first.model_copy(update={"name": "router-b"})

    async def scenario() -> list[list[Sample]]:
        client = SnmpClient()
        try:
            probes = [
                SnmpProbe(config, site="field-1", agent="pi-1", client=client)
                for config in (first, second)
            ]
            return list(await asyncio.gather(*(probe.collect() for probe in probes)))
        finally:
            client.close()

    rows_a, rows_b = asyncio.run(scenario())
    assert [(row.tags["device"], row.tags["ifname"]) for row in rows_a + rows_b] == [
        ("router-a", "lo"),
        ("router-b", "lo"),
    ]


def test_v3_devices_with_one_user_name_and_same_or_other_keys(tmp_path: Path) -> None:
    # Same user and keys on two agents (two engine IDs), and the same user name with other
    # keys on a third: pysnmp keeps one USM entry per user name per engine.
    servers = [
        SnmpdServer(tmp_path / "a"),
        SnmpdServer(tmp_path / "b"),
        SnmpdServer(tmp_path / "c", v3_auth_key="other-auth-2", v3_priv_key="other-priv-2"),
    ]
    configs = []
    try:
        for number, server in enumerate(servers):
            server.start()
            directory = tmp_path / f"keys-{number}"
            directory.mkdir()
            config = _v3(server, directory)
            configs.append(config.model_copy(update={"name": f"router-{number}"}))

        async def scenario() -> list[list[Sample]]:
            client = SnmpClient()
            try:
                probes = [
                    SnmpProbe(config, site="field-1", agent="pi-1", client=client)
                    for config in configs
                ]
                polls = []
                for _ in range(2):  # sequential and concurrent use must both work
                    polls.append([row for probe in probes for row in await probe.collect()])
                    rows = await asyncio.gather(*(probe.collect() for probe in probes))
                    polls.append([row for part in rows for row in part])
                return polls
            finally:
                client.close()

        polls = asyncio.run(scenario())
    finally:
        for server in servers:
            server.stop()
    for poll in polls:
        devices = {row.tags["device"] for row in poll if row.tags["ifname"] == "lo"}
        assert devices == {"router-0", "router-1", "router-2"}


_STABLE_COLUMNS = [
    "1.3.6.1.2.1.31.1.1.1.1",  # ifName (OCTET STRING)
    "1.3.6.1.2.1.2.2.1.3",  # ifType (INTEGER)
    "1.3.6.1.2.1.2.2.1.6",  # ifPhysAddress (OCTET STRING, binary)
    "1.3.6.1.2.1.31.1.1.1.15",  # ifHighSpeed (Gauge32)
]
_STABLE_SCALARS = [
    "1.3.6.1.2.1.1.1.0",  # sysDescr
    "1.3.6.1.2.1.1.2.0",  # sysObjectID (OBJECT IDENTIFIER)
    "1.3.6.1.2.1.2.1.0",  # ifNumber
    "1.3.6.1.2.1.1.99.0",  # absent: left out by both
]


def test_own_v2c_codec_reads_a_real_snmpd_exactly_as_pysnmp_does(
    snmpd: SnmpdServer, tmp_path: Path
) -> None:
    config = _v2c(snmpd, tmp_path)

    async def read(client: SnmpClient) -> tuple[str, dict[str, Any], dict[str, Any]]:
        try:
            target = await client.target(config)
            # Two repetitions: every walk takes several GETBULK rounds and column exits.
            columns = await target.walk(_STABLE_COLUMNS, max_repetitions=2)
            return type(target).__name__, await target.get(_STABLE_SCALARS), columns
        finally:
            client.close()

    ours = asyncio.run(read(SnmpClient()))
    theirs = asyncio.run(read(SnmpClient(pysnmp_v2c=True)))
    assert (ours[0], theirs[0]) == ("V2cTarget", "PysnmpTarget")
    assert ours[1:] == theirs[1:]
    assert ours[2][_STABLE_COLUMNS[0]]  # not vacuous: interfaces were read
    assert isinstance(ours[1]["1.3.6.1.2.1.1.2.0"], str)


def test_v2c_silent_device_is_asked_retries_plus_one_times_then_times_out(
    tmp_path: Path,
) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:
        silent.bind(("127.0.0.1", 0))
        silent.setblocking(False)
        config = _v2c_to(silent.getsockname()[1], tmp_path, timeout="0.2s", retries=2)

        async def scenario() -> tuple[str, float]:
            client = SnmpClient()
            try:
                target = await client.target(config)
                started = time.monotonic()
                with pytest.raises(SnmpTimeoutError) as caught:
                    await target.get(["1.3.6.1.2.1.1.3.0"])
                return str(caught.value), time.monotonic() - started
            finally:
                client.close()

        message, elapsed = asyncio.run(scenario())
        copies = []
        with contextlib.suppress(BlockingIOError):
            while True:
                copies.append(silent.recv(2048))
    assert message == "router-a: GET 1 OIDs: no answer within 0.2s x 3 tries"
    assert 0.6 <= elapsed < 1.5
    assert len(copies) == 3 and len(set(copies)) == 1  # the same request-id each time


def _v2c_to(port: int, tmp_path: Path, **snmp: Any) -> SnmpDeviceConfig:
    community = tmp_path / "community"
    write_secret(community, "fieldmon-test")
    return SnmpDeviceConfig.model_validate(
        {
            "name": "router-a",
            "address": "127.0.0.1",
            "profile": "if-mib",
            "snmp": {"version": "2c", "community_file": str(community), "port": port, **snmp},
        }
    )
