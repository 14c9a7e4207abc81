"""SNMPv3 against a real net-snmp snmpd: every auth/priv pair it supports, refusals in words."""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import pytest
from pysnmp.proto import errind

from fieldmon.agent.probes.base import Run, Status
from fieldmon.agent.probes.snmp import SnmpProbe
from fieldmon.agent.snmp import usm
from fieldmon.agent.snmp.client import SnmpClient
from fieldmon.agent.snmp.errors import SnmpError, SnmpSecurityError, SnmpTimeoutError
from fieldmon.core.site.snmp import SnmpDeviceConfig, SnmpV3Credentials
from fieldmon.core.wire.models import Sample
from fieldmon.lab.secretfiles import write_secret
from fieldmon.lab.servers import SnmpdServer, SnmpV3User

pytestmark = pytest.mark.integration

AUTHS = ("md5", "sha", "sha224", "sha256", "sha384", "sha512")
PRIVS = (None, "des", "aes", "aes192", "aes256")


def _user(auth: str | None, priv: str | None, extension: str = "blumenthal") -> SnmpV3User:
    name = f"u-{auth or 'noauth'}-{priv or 'nopriv'}" + ("-c" if extension == "reeder" else "")
    # Keys of their own per user, so a poll can only work with this user's own keys.
    return SnmpV3User(
        name,
        auth=auth,
        auth_key=f"{name}-auth-key",
        priv=priv,
        priv_key=f"{name}-priv-key",
        aes_key_extension=extension,
    )


USERS = [_user(None, None)] + [
    _user(auth, priv, extension)
    for auth in AUTHS
    for priv in PRIVS
    for extension in (("blumenthal", "reeder") if priv in ("aes192", "aes256") else ("blumenthal",))
]
BY_NAME = {user.name: user for user in USERS}


@pytest.fixture(scope="module")
def snmpd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SnmpdServer]:
    """One snmpd with a user for every auth/priv combination (and each AES key extension)."""
    server = SnmpdServer(tmp_path_factory.mktemp("snmpd-v3"), v3_users=USERS)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def _config(
    server: SnmpdServer, directory: Path, account: SnmpV3User, **overrides: Any
) -> SnmpDeviceConfig:
    """The site file's device for `account` on `server`; `overrides` replace `snmp` keys (a key
    given as text: `auth_key`, `priv_key`; None removes a key)."""
    keys = {"auth_key": account.auth_key, "priv_key": account.priv_key}
    keys.update({name: overrides.pop(name) for name in list(overrides) if name in keys})
    snmp: dict[str, Any] = {
        "version": 3,
        "user": account.name,
        "port": server.port,
        "timeout": "1s",
        "retries": 0,
        "auth": account.auth,
        "priv": account.priv,
    }
    if account.aes_key_extension == "reeder":
        snmp["aes_key_extension"] = "reeder"
    snmp.update(overrides)
    for kind in ("auth", "priv"):
        if snmp.get(kind) is not None:
            path = directory / f"{account.name}.{kind}.key"
            write_secret(path, keys[f"{kind}_key"])
            snmp[f"{kind}_key_file"] = str(path)
    snmp = {key: value for key, value in snmp.items() if value is not None}
    return SnmpDeviceConfig.model_validate(
        {
            "name": "router-v3",
            "address": "127.0.0.1",
            "profile": "if-mib",
            "interfaces": ["lo"],
            "snmp": snmp,
        }
    )


def _polls(config: SnmpDeviceConfig, count: int = 1) -> tuple[list[list[Sample]], SnmpProbe]:
    async def scenario() -> tuple[list[list[Sample]], SnmpProbe]:
        client = SnmpClient()
        try:
            probe = SnmpProbe(config, site="field-1", agent="pi-1", client=client)
            return [await probe.collect() for _ in range(count)], probe
        finally:
            client.close()

    return asyncio.run(scenario())


def _failure(config: SnmpDeviceConfig) -> str:
    """The reason `check` gives for one poll of `config`, which must have failed."""
    [rows], probe = _polls(config)
    assert rows == []
    verdict = probe.verdict(Run(rows, 0.1))
    assert verdict.status is Status.FAIL
    return verdict.reason


@pytest.mark.parametrize("user", USERS, ids=lambda user: user.name)
def test_a_poll_returns_rows_with_every_auth_and_priv_protocol(
    snmpd: SnmpdServer, tmp_path: Path, user: SnmpV3User
) -> None:
    [rows], probe = _polls(_config(snmpd, tmp_path, user))
    assert probe.last_error is None
    assert [(row.tags["ifname"], row.fields["oper_up"]) for row in rows] == [("lo", 1)]


@pytest.mark.parametrize(
    ("user", "extension"),
    [
        ("u-sha-aes256", "reeder"),
        ("u-md5-aes192", "reeder"),
        ("u-sha224-aes256", "reeder"),
        ("u-sha-aes256-c", "blumenthal"),
        ("u-md5-aes192-c", "blumenthal"),
    ],
)
def test_the_other_aes_key_extension_fails_in_words_when_the_key_is_stretched(
    snmpd: SnmpdServer, tmp_path: Path, user: str, extension: str
) -> None:
    config = _config(snmpd, tmp_path, BY_NAME[user], aes_key_extension=extension)
    other = "reeder (Cisco)" if extension == "blumenthal" else "blumenthal (net-snmp)"
    assert _failure(config) == (
        "SNMPv3 privacy failed for router-v3: the device answers SNMPv3 but not our encrypted "
        f"requests: wrong priv key or priv protocol, or a device that needs aes_key_extension: "
        f"{other} (no answer)"
    )


@pytest.mark.parametrize("user", ["u-sha256-aes256", "u-sha512-aes192", "u-sha384-aes256-c"])
@pytest.mark.parametrize("extension", ["blumenthal", "reeder"])
def test_the_aes_key_extension_does_not_matter_when_the_hash_is_long_enough(
    snmpd: SnmpdServer, tmp_path: Path, user: str, extension: str
) -> None:
    [rows], _probe = _polls(_config(snmpd, tmp_path, BY_NAME[user], aes_key_extension=extension))
    assert [row.tags["ifname"] for row in rows] == ["lo"]


def test_wrong_auth_key_is_said_in_words(snmpd: SnmpdServer, tmp_path: Path) -> None:
    config = _config(snmpd, tmp_path, BY_NAME["u-sha256-aes"], auth_key="not-the-auth-key")
    assert _failure(config) == (
        "SNMPv3 authentication failed for router-v3: wrong auth key or auth protocol "
        "(usmStatsWrongDigests)"
    )


def test_wrong_auth_protocol_is_said_in_words(snmpd: SnmpdServer, tmp_path: Path) -> None:
    config = _config(snmpd, tmp_path, BY_NAME["u-sha-aes"], auth="sha256")
    assert _failure(config) == (
        "SNMPv3 authentication failed for router-v3: wrong auth key or auth protocol "
        "(usmStatsWrongDigests)"
    )


@pytest.mark.parametrize(
    ("user", "overrides"),
    [
        ("u-sha512-aes256", {"priv_key": "not-the-priv-key"}),
        ("u-sha-aes", {"priv_key": "not-the-priv-key"}),
        ("u-sha256-aes", {"priv": "des"}),
    ],
)
def test_wrong_priv_key_or_protocol_is_said_in_words(
    snmpd: SnmpdServer, tmp_path: Path, user: str, overrides: dict[str, str]
) -> None:
    config = _config(snmpd, tmp_path, BY_NAME[user], **overrides)
    assert _failure(config) == (
        "SNMPv3 privacy failed for router-v3: the device answers SNMPv3 but not our encrypted "
        "requests: wrong priv key or priv protocol (no answer)"
    )


def test_unknown_user_is_said_in_words(snmpd: SnmpdServer, tmp_path: Path) -> None:
    config = _config(snmpd, tmp_path, BY_NAME["u-sha-aes"], user="nobody")
    assert _failure(config) == (
        "SNMPv3 authentication failed for router-v3: the device has no SNMPv3 user 'nobody' "
        "(usmStatsUnknownUserNames)"
    )


def test_security_level_the_user_lacks_is_said_in_words(snmpd: SnmpdServer, tmp_path: Path) -> None:
    # The device's user has authentication only; we ask for privacy as well.
    config = _config(snmpd, tmp_path, BY_NAME["u-sha-nopriv"], priv="aes")
    assert _failure(config) == (
        "SNMPv3 authentication failed for router-v3: user 'u-sha-nopriv' on the device is not "
        "set up for authPriv - give auth and priv exactly as the device's user has them "
        "(usmStatsUnsupportedSecLevels)"
    )


def test_access_rules_refusing_the_level_are_said_in_words(
    snmpd: SnmpdServer, tmp_path: Path
) -> None:
    # The user has privacy and its access rule demands it; we authenticate but do not encrypt.
    config = _config(snmpd, tmp_path, BY_NAME["u-sha-aes"], priv=None)
    assert _failure(config) == (
        "SNMPv3 access failed for router-v3: the device does not let user 'u-sha-aes' read at "
        "authNoPriv - check its access rules (group, view, level) (authorizationError)"
    )


def test_a_refusal_is_logged_once_per_episode_not_at_every_poll(
    snmpd: SnmpdServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="fieldmon.agent.probes.snmp")
    config = _config(snmpd, tmp_path, BY_NAME["u-sha512-aes256"], auth_key="not-the-auth-key")
    polls, probe = _polls(config, 3)
    assert polls == [[], [], []]
    messages = [record.getMessage() for record in caplog.records]
    assert messages == [f"SNMP poll failed: {probe.last_error}"]
    assert "usmStatsWrongDigests" in messages[0]


@pytest.mark.parametrize("listener", ["closed port", "silent socket"])
def test_a_dead_device_is_still_a_timeout(tmp_path: Path, listener: str) -> None:
    # The engine-discovery check after the timeout gets no answer either: refused at once by
    # a closed port, unanswered by a socket that reads nothing.
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:
        silent.bind(("127.0.0.1", 0))
        port = int(silent.getsockname()[1])
        if listener == "closed port":
            silent.close()
        server = SnmpdServer(tmp_path / "never-started", port=port)
        config = _config(server, tmp_path, BY_NAME["u-sha-aes"], timeout="300ms")
        [rows], probe = _polls(config)
    assert rows == []
    assert probe.last_timed_out
    assert probe.last_error == "router-v3: GET 3 OIDs: no answer within 0.3s x 1 tries"
    assert probe.verdict(Run(rows, 0.3)).reason == (
        f"SNMP timeout from router-v3 (127.0.0.1:{port}) - "
        "wrong SNMPv3 user or keys or SNMP disabled?"
    )


def test_polls_go_on_across_a_device_restart_and_log_the_episode(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # After a restart the device's engine boots and time no longer match what the first polls
    # learnt: pysnmp hears usmStatsNotInTimeWindows, learns them again and asks once more.
    caplog.set_level(logging.INFO, logger="fieldmon.agent.probes.snmp")
    user = _user("sha256", "aes256")
    server = SnmpdServer(tmp_path / "snmpd", v3_users=[user]).start()
    config = _config(server, tmp_path, user, timeout="300ms")

    async def scenario() -> list[list[Sample]]:
        client = SnmpClient()
        try:
            probe = SnmpProbe(config, site="field-1", agent="pi-1", client=client)
            polls = [await probe.collect()]
            await asyncio.to_thread(server.stop)
            polls += [await probe.collect(), await probe.collect()]
            await asyncio.to_thread(server.start)  # same port, same engine ID, boots + 1
            polls.append(await probe.collect())
            return polls
        finally:
            client.close()

    try:
        before, down_1, down_2, after = asyncio.run(scenario())
    finally:
        server.stop()
    assert [row.tags["ifname"] for row in before] == ["lo"]
    assert down_1 == down_2 == []
    assert [row.tags["ifname"] for row in after] == ["lo"]
    messages = [record.getMessage() for record in caplog.records]
    assert len(messages) == 2, messages
    assert messages[0].startswith("SNMP poll failed: router-v3: ")
    assert "no answer within 0.3s x 1 tries" in messages[0]
    assert messages[1] == "SNMP device router-v3 answers again after 2 failed polls"


def _v3_settings(**snmp: Any) -> SnmpDeviceConfig:
    secret = Path(__file__)  # never read: these settings are never sent anywhere
    return SnmpDeviceConfig.model_validate(
        {
            "name": "uplink-router",
            "address": "127.0.0.1",
            "profile": "if-mib",
            "snmp": {
                "version": 3,
                "user": "fieldmon",
                "auth_key_file": str(secret),
                "priv_key_file": str(secret),
                **snmp,
            },
        },
        context={"check_files": False},  # paths only, as the collector's inventory reads them
    )


@pytest.mark.parametrize(
    ("indication", "settings", "expected"),
    [
        (
            errind.wrongDigest,
            {"auth": "sha", "priv": "aes"},
            "SNMPv3 authentication failed for uplink-router: wrong auth key or auth protocol "
            "(usmStatsWrongDigests)",
        ),
        (
            errind.decryptionError,
            {"auth": "sha256", "priv": "aes256"},
            "SNMPv3 privacy failed for uplink-router: wrong priv key or priv protocol "
            "(usmStatsDecryptionErrors)",
        ),
        (
            errind.decryptionError,
            {"auth": "sha", "priv": "aes256"},
            "SNMPv3 privacy failed for uplink-router: wrong priv key or priv protocol, or a "
            "device that needs aes_key_extension: reeder (Cisco) (usmStatsDecryptionErrors)",
        ),
        (
            errind.notInTimeWindow,
            {"auth": "sha", "priv": "aes"},
            "SNMPv3 time synchronisation failed for uplink-router: the device's engine boots "
            "and time did not settle (rebooting, or its clock jumps?) (usmStatsNotInTimeWindows)",
        ),
        (
            errind.unknownEngineID,
            {"auth": "sha", "priv": "aes"},
            "SNMPv3 engine discovery failed for uplink-router: the device refused its own "
            "engine ID (another device answering at its address?) (usmStatsUnknownEngineIDs)",
        ),
    ],
)
def test_reports_net_snmp_does_not_send_here_are_said_in_words_too(
    indication: object, settings: dict[str, str], expected: str
) -> None:
    # net-snmp stays silent on a wrong priv key, and pysnmp settles time windows and engine
    # IDs itself; other devices send these REPORTs, and pysnmp hands them back like this.
    credentials = _v3_settings(**settings).snmp
    assert isinstance(credentials, SnmpV3Credentials)
    error = usm.report_error("uplink-router", credentials, indication)
    assert error is not None and str(error) == expected
    assert usm.report_error("uplink-router", credentials, errind.requestTimedOut) is None


class _Echo(asyncio.DatagramProtocol):
    """Sends every datagram back: it "answers" engine discovery (same msgID) and nothing else."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)
        self.echoed = 0

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.transport.sendto(data, addr)
        self.echoed += 1


@pytest.mark.parametrize("answered_before", [False, True])
def test_silence_is_a_privacy_failure_only_if_the_keys_never_worked(
    tmp_path: Path, answered_before: bool
) -> None:
    async def scenario() -> tuple[SnmpError, int]:
        loop = asyncio.get_running_loop()
        echo, responder = await loop.create_datagram_endpoint(_Echo, local_addr=("127.0.0.1", 0))
        port = echo.get_extra_info("sockname")[1]
        config = _v3_settings(auth="sha", priv="aes", port=port, timeout="300ms", retries=0)
        client = SnmpClient()
        try:
            target = await client.target(config)
            assert isinstance(target, usm.PysnmpTarget)
            # What a first answered request leaves behind: these keys have worked.
            target._answered = answered_before
            with pytest.raises(SnmpError) as caught:
                await target.get(["1.3.6.1.2.1.1.3.0"])
            return caught.value, responder.echoed
        finally:
            client.close()
            echo.close()

    error, echoed = asyncio.run(scenario())
    # pysnmp sends its own discovery requests, which the echo answers with garbage for it.
    assert echoed >= 1, "the echo server answered something"
    if answered_before:
        assert isinstance(error, SnmpTimeoutError)
        assert str(error) == "uplink-router: GET 1 OIDs: no answer within 0.3s x 1 tries"
    else:
        assert isinstance(error, SnmpSecurityError)
        assert str(error) == (
            "SNMPv3 privacy failed for uplink-router: the device answers SNMPv3 but not our "
            "encrypted requests: wrong priv key or priv protocol (no answer)"
        )
