"""AP profiles (data files) polled from real snmpd serving recorded walks via pass_persist."""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from fieldmon.agent.probes.snmp import SnmpProbe
from fieldmon.agent.snmp.ap import mhz_to_channel
from fieldmon.agent.snmp.client import SnmpClient
from fieldmon.agent.snmp.errors import ProfileError
from fieldmon.agent.snmp.profiles import PROFILES_DIR, available_profiles, load_profile
from fieldmon.core.site.snmp import SnmpDeviceConfig
from fieldmon.core.wire.models import Sample
from fieldmon.lab.secretfiles import write_secret
from fieldmon.lab.servers import SnmpdServer, SnmpV3User
from fieldmon.lab.simap import recorded_walk, walk_server

EXPECTED = {
    "generic-ap": {
        "wlan0": {"up": 1, "channel": 6},
        "wlan1": {"up": 0, "channel": 36},
    },
    "unifi": {
        "ng": {"up": 1, "clients": 7, "channel": 11},
        "na": {"up": 1, "clients": 9, "channel": 44},
    },
    "cisco-wlc": {
        "ap-ward-1/0": {"up": 1, "clients": 5, "channel": 1, "channel_util_pct": 41},
        "ap-ward-1/1": {"up": 1, "clients": 12, "channel": 149, "channel_util_pct": 17},
        "ap-ward-2/0": {"up": 0, "clients": 0, "channel": 6, "channel_util_pct": 0},
    },
    "aruba": {
        "hall-a/0": {"up": 1, "clients": 23, "channel": 36, "channel_util_pct": 58},
        "hall-b/0": {"up": 0, "clients": 0, "channel": 11, "channel_util_pct": 0},
    },
    "mikrotik": {
        "wlan1": {"up": 1, "clients": 14, "channel": 6, "noise_dbm": -95},
        "wlan2": {"up": 0, "clients": 0, "channel": 36, "noise_dbm": -101},
    },
}


@dataclass(frozen=True)
class ApDevice:
    """A simulated AP: its profile name, the walk it serves (a copy tests may edit), snmpd."""

    profile: str
    walk: Path
    server: SnmpdServer


@pytest.fixture
def ap_device(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[ApDevice]:
    """snmpd serving the recorded walk for the profile named by the parameter."""
    walk = tmp_path / "device.walk"
    shutil.copy(recorded_walk(request.param), walk)
    server = walk_server(tmp_path / "snmpd", walk).start()
    try:
        yield ApDevice(request.param, walk, server)
    finally:
        server.stop()


def _config(server: SnmpdServer, tmp_path: Path, profile: str) -> SnmpDeviceConfig:
    community = tmp_path / "community"
    write_secret(community, server.community)
    return SnmpDeviceConfig.model_validate(
        {
            "name": "ap-hall",
            "address": "127.0.0.1",
            "profile": profile,
            "snmp": {"version": "2c", "community_file": str(community), "port": server.port},
        }
    )


def _by_radio(samples: list[Sample]) -> dict[str, dict[str, object]]:
    return {sample.tags["radio"]: dict(sample.fields) for sample in samples}


@pytest.mark.integration
@pytest.mark.parametrize("ap_device", sorted(EXPECTED), indirect=True)
def test_profile_rows_from_recorded_walk(ap_device: ApDevice, tmp_path: Path) -> None:
    name = ap_device.profile
    config = _config(ap_device.server, tmp_path, name)

    async def scenario() -> list[Sample]:
        client = SnmpClient()
        try:
            probe = SnmpProbe(config, site="field-1", agent="pi-1", client=client)
            return await probe.collect()
        finally:
            client.close()

    samples = asyncio.run(scenario())
    assert {sample.measurement for sample in samples} == {"ap"}
    assert all(sample.tags.keys() == {"site", "agent", "device", "radio"} for sample in samples)
    assert _by_radio(samples) == EXPECTED[name]


@pytest.mark.integration
@pytest.mark.parametrize("profile", ["unifi", "generic-ap"])
def test_profile_over_snmpv3_auth_priv_gives_the_same_rows_as_v2c(
    tmp_path: Path, profile: str
) -> None:
    user = SnmpV3User(
        "ap-monitor",
        auth="sha512",
        auth_key="ap-auth-passphrase",
        priv="aes256",
        priv_key="ap-priv-passphrase",
    )
    walk = tmp_path / "device.walk"
    shutil.copy(recorded_walk(profile), walk)
    server = walk_server(tmp_path / "snmpd", walk, v3_users=[user]).start()
    keys = {}
    for kind in ("auth", "priv"):
        keys[kind] = tmp_path / f"{kind}.key"
        write_secret(keys[kind], getattr(user, f"{kind}_key"))
    v3 = SnmpDeviceConfig.model_validate(
        {
            "name": "ap-hall",
            "address": "127.0.0.1",
            "profile": profile,
            "snmp": {
                "version": 3,
                "user": user.name,
                "auth": user.auth,
                "auth_key_file": str(keys["auth"]),
                "priv": user.priv,
                "priv_key_file": str(keys["priv"]),
                "port": server.port,
            },
        }
    )
    v2c = _config(server, tmp_path, profile)

    async def scenario() -> tuple[list[Sample], list[Sample], str]:
        client = SnmpClient()
        try:
            over_v3 = SnmpProbe(v3, site="field-1", agent="pi-1", client=client)
            over_v2c = SnmpProbe(v2c, site="field-1", agent="pi-1", client=client)
            target = await client.target(v3)
            return await over_v3.collect(), await over_v2c.collect(), type(target).__name__
        finally:
            client.close()

    try:
        rows_v3, rows_v2c, v3_target = asyncio.run(scenario())
    finally:
        server.stop()
    assert v3_target == "PysnmpTarget"  # v3 really went through pysnmp's USM path
    assert _by_radio(rows_v3) == _by_radio(rows_v2c) == EXPECTED[profile]
    assert [sample.tags for sample in rows_v3] == [sample.tags for sample in rows_v2c]


@pytest.mark.integration
@pytest.mark.parametrize("ap_device", ["cisco-wlc"], indirect=True)
def test_vanished_ap_reported_down_then_back(ap_device: ApDevice, tmp_path: Path) -> None:
    walk = ap_device.walk
    config = _config(ap_device.server, tmp_path, "cisco-wlc")
    original = walk.read_text(encoding="utf-8")
    without_ward_1 = "\n".join(
        line for line in original.splitlines() if "0.26.43.60.77.94" not in line
    )

    async def scenario() -> list[list[Sample]]:
        client = SnmpClient()
        try:
            probe = SnmpProbe(config, site="field-1", agent="pi-1", client=client)
            polls = [await probe.collect()]
            walk.write_text(without_ward_1 + "\n", encoding="utf-8")
            polls.append(await probe.collect())
            walk.write_text(original, encoding="utf-8")
            polls.append(await probe.collect())
            return polls
        finally:
            client.close()

    before, gone, back = (_by_radio(poll) for poll in asyncio.run(scenario()))
    assert before == EXPECTED["cisco-wlc"]
    assert gone == {
        "ap-ward-1/0": {"up": 0},
        "ap-ward-1/1": {"up": 0},
        "ap-ward-2/0": EXPECTED["cisco-wlc"]["ap-ward-2/0"],
    }
    assert back == EXPECTED["cisco-wlc"]


@pytest.mark.integration
@pytest.mark.parametrize("ap_device", ["generic-ap"], indirect=True)
def test_walk_agent_counters_advance(ap_device: ApDevice, tmp_path: Path) -> None:
    config = _config(ap_device.server, tmp_path, "generic-ap")
    in_octets = "1.3.6.1.2.1.2.2.1.10.2"

    async def scenario() -> tuple[int, int]:
        client = SnmpClient()
        try:
            target = await client.target(config)
            first = (await target.get([in_octets]))[in_octets]
            await asyncio.sleep(1.1)
            second = (await target.get([in_octets]))[in_octets]
            assert isinstance(first, int) and isinstance(second, int)
            return first, second
        finally:
            client.close()

    first, second = asyncio.run(scenario())
    assert second > first >= 1000


def test_every_shipped_profile_loads_and_has_a_recorded_walk() -> None:
    names = [name for name in available_profiles() if name != "if-mib"]
    assert sorted(names) == sorted(EXPECTED)
    for name in names:
        profile = load_profile(name)
        assert profile.name == name
        assert recorded_walk(name).is_file()


def test_unknown_profile_lists_the_known_ones() -> None:
    with pytest.raises(ProfileError, match=r"no SNMP profile 'nope'.*mikrotik"):
        load_profile("nope")


def test_profile_with_unknown_column_is_refused(tmp_path: Path) -> None:
    text = (PROFILES_DIR / "mikrotik.yaml").read_text(encoding="utf-8")
    (tmp_path / "mikrotik.yaml").write_text(
        text.replace("{column: noise}", "{column: noise_floor}"), encoding="utf-8"
    )
    with pytest.raises(ProfileError, match="noise_floor"):
        load_profile("mikrotik", tmp_path)


def test_profile_with_text_oid_is_refused(tmp_path: Path) -> None:
    text = (PROFILES_DIR / "unifi.yaml").read_text(encoding="utf-8")
    (tmp_path / "unifi.yaml").write_text(
        text.replace("1.3.6.1.4.1.41112.1.6.1.2.1.8 ", "unifiVapNumStations "),
        encoding="utf-8",
    )
    with pytest.raises(ProfileError, match=r"unifi\.yaml"):
        load_profile("unifi", tmp_path)


@pytest.mark.parametrize(
    ("mhz", "channel"),
    [
        (2412, 1),
        (2437, 6),
        (2472, 13),
        (2484, 14),
        (5180, 36),
        (5825, 165),
        (5955, 1),
        (6115, 33),
        (900, None),
    ],
)
def test_mhz_to_channel(mhz: int, channel: int | None) -> None:
    assert mhz_to_channel(mhz) == channel


@pytest.mark.integration
@pytest.mark.parametrize("ap_device", ["if32"], indirect=True)
def test_if_mib_falls_back_to_32_bit_counters_across_a_wrap(
    ap_device: ApDevice, tmp_path: Path
) -> None:
    config = _config(ap_device.server, tmp_path, "if-mib")

    async def scenario() -> list[Sample]:
        client = SnmpClient()
        try:
            probe = SnmpProbe(config, site="field-1", agent="pi-1", client=client)
            await probe.collect()
            await asyncio.sleep(2.0)  # the in-counter crosses 2**32 meanwhile
            return await probe.collect()
        finally:
            client.close()

    [row] = asyncio.run(scenario())
    assert row.tags["ifname"] == "wan0"
    fields = row.fields
    assert fields["in_bps"] == pytest.approx(8e6, rel=0.05)
    assert fields["out_bps"] == pytest.approx(2e6, rel=0.05)
    assert fields["in_errors"] == pytest.approx(2.0, abs=1.0)  # whole errors per second
    assert fields["util_pct"] == pytest.approx(8.0, rel=0.05)
    assert fields["out_discards"] == 0
