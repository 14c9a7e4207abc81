"""`fieldmon-agent check` run as the engineer runs it, against a real Mosquitto and real links."""

from __future__ import annotations

import asyncio
import datetime
import importlib.util
import ipaddress
import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from fieldmon.agent.check import (
    CheckReport,
    CheckRow,
    Status,
    check_hooks,
    check_probe,
    check_site,
    markdown_report,
    plain_table,
)
from fieldmon.agent.probes import icmp
from fieldmon.agent.probes.base import ProbeKind, Run, Verdict
from fieldmon.agent.probes.icmp import IcmpProbe, judge_round
from fieldmon.agent.probes.icmp_socket import RoundResult
from fieldmon.agent.probes.registry import Planned
from fieldmon.agent.probes.snmp import SnmpProbe
from fieldmon.agent.snmp import client as snmp_client_module
from fieldmon.core.site.config import SiteConfig
from fieldmon.core.site.hooks import HooksConfig
from fieldmon.core.site.host import HostConfig
from fieldmon.core.site.links import IcmpLinkConfig
from fieldmon.core.site.snmp import SnmpDeviceConfig
from fieldmon.core.wire.models import Sample
from fieldmon.lab.netns import Namespace, silent_host, unique_name, veth
from fieldmon.lab.process import script
from fieldmon.lab.secretfiles import write_secret
from fieldmon.lab.servers import MosquittoServer, SnmpdServer, free_port

AGENT = script("fieldmon-agent")
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="namespaces need root")
LOOPBACK_LINK = {
    "name": "site-gateway",
    "address": "127.0.0.1",
    "role": "gateway",
    "count": 3,
    "spacing": "10ms",
    "timeout": "500ms",
}


def _write_site(
    directory: Path,
    *,
    port: int,
    links: list[dict[str, Any]],
    snmp_devices: list[dict[str, Any]] | None = None,
    **broker: Any,
) -> Path:
    site = {
        "site": "pavilion-2",
        "name": "Field hospital - Pavilion 2",
        "parent_hospital": "hospital-central",
        "agent": {
            "id": "pavilion-2-pi1",
            "broker": {"host": "127.0.0.1", "port": port, "connect_timeout": "2s", **broker},
            "outbox": {"path": str(directory / "outbox.db")},
        },
        "links": links,
        "snmp_devices": snmp_devices or [],
    }
    path = directory / "site.yaml"
    # JSON is YAML: no need to hand-write indentation.
    path.write_text(json.dumps(site, indent=2), encoding="utf-8")
    return path


def _check(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(AGENT), "check", "--config", str(config), *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def _rows(completed: subprocess.CompletedProcess[str]) -> dict[str, dict[str, Any]]:
    return {row["name"]: row for row in json.loads(completed.stdout)["rows"]}


@pytest.fixture
def dead_address() -> Iterator[str]:
    with silent_host("chk") as address:
        yield address


# -- against real servers ------------------------------------------------------------------


def test_everything_up_exits_zero(tmp_path: Path, mosquitto: MosquittoServer) -> None:
    assert mosquitto.port is not None
    config = _write_site(tmp_path, port=mosquitto.port, links=[LOOPBACK_LINK])
    completed = _check(config)
    assert completed.returncode == 0, completed.stdout + completed.stderr
    lines = completed.stdout.splitlines()
    # Piped: plain aligned text, no terminal escapes.
    assert "\x1b[" not in completed.stdout
    header = next(line for line in lines if line.startswith("STATUS"))
    gateway = next(line for line in lines if "site-gateway" in line)
    broker = next(line for line in lines if line.startswith("OK") and " broker " in line)
    host = next(line for line in lines if " host " in line)
    assert gateway.startswith("OK")
    assert "3 of 3 echoes answered" in gateway
    assert header.index("REASON") == gateway.index("3 of 3")  # columns line up
    assert "connected and logged in" in broker
    # The host row is this machine's own health: OK, or WARN on a nearly full disk.
    assert host.startswith(("OK", "WARN")), host
    host_ok = host.startswith("OK")
    assert f"{2 + host_ok} OK, {1 - host_ok} WARN, 0 FAIL" in completed.stdout


@pytest.mark.netns
@needs_root
def test_dead_link_fails_with_plain_reason(
    tmp_path: Path, mosquitto: MosquittoServer, dead_address: str
) -> None:
    assert mosquitto.port is not None
    dead = {**LOOPBACK_LINK, "name": "parent-wired", "address": dead_address, "role": "parent"}
    config = _write_site(tmp_path, port=mosquitto.port, links=[LOOPBACK_LINK, dead])
    completed = _check(config, "--json")
    assert completed.returncode == 1, completed.stderr
    rows = _rows(completed)
    assert rows["site-gateway"]["status"] == "OK"
    assert rows["broker"]["status"] == "OK"
    assert rows["parent-wired"]["status"] == "FAIL"
    assert rows["parent-wired"]["reason"] == (
        f"no reply to 3 echoes from {dead_address} - "
        "check the cable or the parent hospital firewall"
    )
    assert rows["parent-wired"]["baseline"]["loss_pct"] == 100.0
    assert "rtt_p50_ms" not in rows["parent-wired"]["baseline"]


@pytest.fixture
def firewalled_address() -> Iterator[str]:
    """A host in our own namespace whose firewall drops every TCP segment (and answers pings)."""
    with Namespace(unique_name("chkfw")) as far:
        link = veth(None, far)
        far.run("iptables", "-A", "INPUT", "-p", "tcp", "-j", "DROP")
        yield str(link.b_v4.ip)


@pytest.mark.netns
@needs_root
def test_broker_behind_a_dropping_firewall_times_out(
    tmp_path: Path, firewalled_address: str
) -> None:
    port = 8883
    link = {**LOOPBACK_LINK, "address": firewalled_address}
    config = _write_site(
        tmp_path, port=port, links=[link], host=firewalled_address, connect_timeout="1s"
    )
    completed = _check(config, "--json")
    assert completed.returncode == 1
    rows = _rows(completed)
    assert rows["site-gateway"]["status"] == "OK"
    assert rows["broker"]["reason"] == (
        f"no answer from {firewalled_address}:{port} within 1s - "
        "a firewall dropping the connection, or the wrong address?"
    )


def test_broker_down_fails_with_plain_reason(tmp_path: Path) -> None:
    port = free_port()  # nothing listens: we just closed it
    config = _write_site(tmp_path, port=port, links=[LOOPBACK_LINK])
    completed = _check(config)
    assert completed.returncode == 1
    broker = next(line for line in completed.stdout.splitlines() if " broker " in line)
    assert broker.startswith("FAIL")
    assert (
        f"nothing listens on 127.0.0.1:{port} - is the broker running / the port right?" in broker
    )


def test_json_has_every_row_with_baseline(tmp_path: Path, mosquitto: MosquittoServer) -> None:
    assert mosquitto.port is not None
    links = [LOOPBACK_LINK, {**LOOPBACK_LINK, "name": "lo-again", "count": 4}]
    completed = _check(_write_site(tmp_path, port=mosquitto.port, links=links), "--json")
    assert completed.returncode == 0, completed.stderr
    data = json.loads(completed.stdout)
    assert data["ok"] is True
    assert data["site"] == "pavilion-2"
    assert data["agent"] == "pavilion-2-pi1"
    assert data["icmp_mode"] in {"raw", "datagram"}
    rows = _rows(completed)
    assert set(rows) == {"site-gateway", "lo-again", "host", "broker"}
    assert [row["kind"] for row in json.loads(completed.stdout)["rows"]] == [
        "link",
        "link",
        "host",
        "broker",
    ]
    assert rows["lo-again"]["baseline"]["sent"] == 4
    assert rows["lo-again"]["baseline"]["received"] == 4
    assert rows["lo-again"]["baseline"]["loss_pct"] == 0.0
    assert rows["lo-again"]["baseline"]["rtt_p50_ms"] > 0
    assert rows["broker"]["target"] == f"127.0.0.1:{mosquitto.port}"
    assert rows["broker"]["baseline"] == {}
    assert 0 <= rows["host"]["baseline"]["disk_pct"] <= 100


def test_report_writes_markdown(tmp_path: Path) -> None:
    port = free_port()
    report = tmp_path / "handover.md"
    completed = _check(_write_site(tmp_path, port=port, links=[LOOPBACK_LINK]), "--report", report)
    assert completed.returncode == 1
    text = report.read_text(encoding="utf-8")
    assert text.startswith("# Commissioning check: Field hospital - Pavilion 2\n")
    assert "- Result: **FAILED**" in text
    assert "| STATUS | KIND | NAME | TARGET | LOSS | RTT min/avg/max | REASON |" in text
    assert "| OK | link | site-gateway | 127.0.0.1 | 0% |" in text
    assert "## To do" in text
    assert f"- **FAIL** broker `broker`: nothing listens on 127.0.0.1:{port}" in text


def test_trace_prints_a_path_table_per_parent_and_internet_link(tmp_path: Path) -> None:
    trace = {"cycles": 3, "interval": "20ms", "protocol": "icmp"}
    links = [
        {**LOOPBACK_LINK, "name": "wan", "role": "parent", "trace": trace},
        {**LOOPBACK_LINK, "name": "inet", "address": "::1", "role": "internet", "trace": trace},
        {**LOOPBACK_LINK, "name": "untraced", "role": "parent", "trace": {"enabled": False}},
    ]
    config = _write_site(tmp_path, port=free_port(), links=links)
    report = tmp_path / "handover.md"
    completed = _check(config, "--trace", "--report", str(report))
    assert completed.returncode == 1, completed.stderr  # the broker, not the traces
    text = completed.stdout
    table_end = text.index("\npath to ")
    assert "FAIL    broker" in text[:table_end]
    assert "path to wan (127.0.0.1), icmp, 3 cycles:" in text
    assert "path to inet (::1), icmp, 3 cycles:" in text
    assert "untraced (" not in text
    lines = text[table_end:].splitlines()
    assert lines[2].split()[:4] == ["HOP", "ADDRESS", "LOSS%", "SNT"]
    assert lines[3].split()[:4] == ["1.", "127.0.0.1", "0.0%", "3"]
    assert "  no loss on the path (3 cycles, 1 hops)" in lines
    assert "## Paths" in report.read_text(encoding="utf-8")
    as_json = json.loads(_check(config, "--trace", "--json").stdout)
    [wan] = [path for path in as_json["traces"] if path["link"] == "wan"]
    assert wan["hops"][0]["address"] == "127.0.0.1" and wan["hops"][0]["sent"] == 3
    assert wan["summary"] == "no loss on the path (3 cycles, 1 hops)"


def test_wrong_password_is_named(tmp_path: Path) -> None:
    passwords = tmp_path / "passwd"
    subprocess.run(
        ["mosquitto_passwd", "-b", "-c", str(passwords), "pavilion-2-pi1", "right"],
        check=True,
        capture_output=True,
    )
    write_secret(tmp_path / "mqtt.pass", "wrong-password")
    with MosquittoServer(
        tmp_path / "broker", allow_anonymous=False, password_file=passwords
    ) as server:
        assert server.port is not None
        config = _write_site(
            tmp_path,
            port=server.port,
            links=[],
            username="pavilion-2-pi1",
            password_file=str(tmp_path / "mqtt.pass"),
        )
        completed = _check(config, "--json")
    assert completed.returncode == 1
    reason = _rows(completed)["broker"]["reason"]
    assert reason.startswith("broker refused the login")
    assert reason.endswith("check agent.broker.username and password_file")


def _tls_files(directory: Path, *, not_before: datetime.datetime) -> tuple[Path, Path, Path]:
    """A CA and a broker certificate for 127.0.0.1 valid from `not_before` (test-only PKI)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    def name(common: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])

    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder()
        .subject_name(name("test-ca"))
        .issuer_name(name("test-ca"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(name("127.0.0.1"))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_before + datetime.timedelta(days=30))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    paths = (directory / "ca.pem", directory / "broker.pem", directory / "broker.key")
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return paths


@pytest.mark.parametrize(
    ("days_from_now", "expected"),
    [
        (-1, None),
        (2, "broker TLS: certificate not yet valid - is the Pi's clock set?"),
        (
            -60,
            "broker TLS: certificate has expired - is the Pi's clock set? "
            "If it is, the NOC must renew the broker certificate",
        ),
    ],
)
def test_broker_tls_certificate_dates(
    tmp_path: Path, days_from_now: int, expected: str | None
) -> None:
    not_before = datetime.datetime.now(datetime.UTC) + datetime.timedelta(days=days_from_now)
    ca, cert, key = _tls_files(tmp_path, not_before=not_before)
    with MosquittoServer(
        tmp_path / "broker", extra_config=f"certfile {cert}\nkeyfile {key}\n"
    ) as server:
        assert server.port is not None
        config = _write_site(tmp_path, port=server.port, links=[], tls={"ca_file": str(ca)})
        completed = _check(config, "--json")
    row = _rows(completed)["broker"]
    if expected is None:
        assert completed.returncode == 0, row
        assert row["status"] == "OK"
    else:
        assert completed.returncode == 1
        assert row["reason"] == expected


def test_plain_mqtt_to_a_tls_port_is_explained(tmp_path: Path) -> None:
    _ca, cert, key = _tls_files(
        tmp_path, not_before=datetime.datetime.now(datetime.UTC) - datetime.timedelta(days=1)
    )
    with MosquittoServer(
        tmp_path / "broker", extra_config=f"certfile {cert}\nkeyfile {key}\n"
    ) as server:
        assert server.port is not None
        completed = _check(_write_site(tmp_path, port=server.port, links=[]), "--json")
    assert completed.returncode == 1
    assert "configure agent.broker.tls" in _rows(completed)["broker"]["reason"]


def test_invalid_site_file_exits_two_with_line(tmp_path: Path) -> None:
    config = _write_site(tmp_path, port=70000, links=[LOOPBACK_LINK])
    completed = _check(config)
    assert completed.returncode == 2
    assert completed.stdout == ""
    assert f"{config}:" in completed.stderr
    assert "agent.broker.port" in completed.stderr
    assert "65535" in completed.stderr


def _snmp_device(directory: Path, name: str, port: int, community: str) -> dict[str, Any]:
    secret = directory / f"{name}.community"
    write_secret(secret, community)
    return {
        "name": name,
        "address": "127.0.0.1",
        "profile": "if-mib",
        "snmp": {
            "version": "2c",
            "community_file": str(secret),
            "port": port,
            "timeout": "500ms",
            "retries": 0,
        },
    }


def test_snmp_devices_answering_and_not(tmp_path: Path) -> None:
    with SnmpdServer(tmp_path / "snmpd") as snmpd:
        assert snmpd.port is not None
        devices = [
            _snmp_device(tmp_path, "core-switch", snmpd.port, snmpd.community),
            _snmp_device(tmp_path, "ap-hall-a", snmpd.port, "not-the-community"),
        ]
        config = _write_site(tmp_path, port=free_port(), links=[], snmp_devices=devices)
        completed = _check(config, "--json")
    rows = _rows(completed)
    assert rows["core-switch"]["status"] == "OK", rows["core-switch"]
    assert rows["core-switch"]["reason"].endswith(" polled")
    assert rows["ap-hall-a"]["status"] == "FAIL"
    assert rows["ap-hall-a"]["reason"] == (
        f"SNMP timeout from ap-hall-a (127.0.0.1:{snmpd.port}) - wrong community or SNMP disabled?"
    )


def _snmpv3_device(
    directory: Path, name: str, server: SnmpdServer, auth_key: str, priv_key: str
) -> dict[str, Any]:
    keys = {}
    for kind, text in (("auth", auth_key), ("priv", priv_key)):
        keys[kind] = directory / f"{name}.{kind}.key"
        write_secret(keys[kind], text)
    return {
        "name": name,
        "address": "127.0.0.1",
        "profile": "if-mib",
        "interfaces": ["lo"],
        "snmp": {
            "version": 3,
            "user": server.v3_user,
            "auth": "sha",
            "auth_key_file": str(keys["auth"]),
            "priv": "aes",
            "priv_key_file": str(keys["priv"]),
            "port": server.port,
            "timeout": "500ms",
            "retries": 0,
        },
    }


def test_snmpv3_refusals_are_fail_rows_in_words_not_timeouts(tmp_path: Path) -> None:
    with SnmpdServer(tmp_path / "snmpd") as snmpd:
        auth, priv = snmpd.v3_auth_key, snmpd.v3_priv_key
        devices = [
            _snmpv3_device(tmp_path, "core-router", snmpd, auth, priv),
            _snmpv3_device(tmp_path, "uplink-router", snmpd, "not-the-auth-key", priv),
            _snmpv3_device(tmp_path, "lte-router", snmpd, auth, "not-the-priv-key"),
        ]
        config = _write_site(tmp_path, port=free_port(), links=[], snmp_devices=devices)
        completed = _check(config, "--json")
    rows = _rows(completed)
    assert completed.returncode == 1
    assert (rows["core-router"]["status"], rows["core-router"]["reason"]) == (
        "OK",
        "1 interface polled",
    )
    assert (rows["uplink-router"]["status"], rows["uplink-router"]["reason"]) == (
        "FAIL",
        "SNMPv3 authentication failed for uplink-router: wrong auth key or auth protocol "
        "(usmStatsWrongDigests)",
    )
    assert (rows["lte-router"]["status"], rows["lte-router"]["reason"]) == (
        "FAIL",
        "SNMPv3 privacy failed for lte-router: the device answers SNMPv3 but not our encrypted "
        "requests: wrong priv key or priv protocol (no answer)",
    )


def test_unknown_profile_is_a_fail_row_not_a_traceback(tmp_path: Path) -> None:
    device = {**_snmp_device(tmp_path, "ap-hall-a", free_port(), "public"), "profile": "nope"}
    config = _write_site(tmp_path, port=free_port(), links=[], snmp_devices=[device])
    completed = _check(config, "--json")
    assert completed.returncode == 1
    assert "Traceback" not in completed.stderr
    row = _rows(completed)["ap-hall-a"]
    assert (row["kind"], row["target"], row["status"]) == ("snmp", "127.0.0.1", "FAIL")
    assert row["reason"].startswith("no SNMP profile 'nope' (")
    assert "known: aruba, cisco-wlc, generic-ap, if-mib, mikrotik, unifi" in row["reason"]


def test_snmpv3_privacy_without_crypto_backend_is_a_fail_row(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    keys = []
    for name in ("auth", "priv"):
        keys.append(tmp_path / f"{name}.key")
        write_secret(keys[-1], "a-long-enough-key")
    device = {
        "name": "uplink-router",
        "address": "127.0.0.1",
        "profile": "if-mib",
        "snmp": {
            "version": 3,
            "user": "fieldmon",
            "auth": "sha",
            "auth_key_file": str(keys[0]),
            "priv": "aes",
            "priv_key_file": str(keys[1]),
        },
    }
    path = _write_site(tmp_path, port=free_port(), links=[], snmp_devices=[device])
    config = SiteConfig.model_validate(json.loads(path.read_text(encoding="utf-8")))
    real_find_spec = importlib.util.find_spec

    def without_cryptography(name: str, *args: Any) -> Any:
        return None if name == "cryptography" else real_find_spec(name, *args)

    monkeypatch.setattr(snmp_client_module.importlib.util, "find_spec", without_cryptography)
    rows = {row.name: row for row in asyncio.run(check_site(config)).rows}
    assert set(rows) == {"uplink-router", "host", "broker"}
    assert rows["uplink-router"].status is Status.FAIL
    assert rows["uplink-router"].reason == (
        "SNMP device uplink-router: SNMPv3 privacy (priv) needs the Python package "
        "'cryptography', which is not installed: pip install cryptography"
    )


# -- the runner, with fake probes (no network) ----------------------------------------------


class _FakeProbe:
    """A probe whose run gives `samples` after `delay` seconds, or raises `error`."""

    def __init__(
        self, *, delay: float = 0.0, error: Exception | None = None, interval: float = 5.0
    ) -> None:
        self.name = "fake"
        self.interval = interval
        self.delay = delay
        self.error = error

    async def collect(self) -> list[Sample]:
        await asyncio.sleep(self.delay)
        if self.error is not None:
            raise self.error
        return [Sample(measurement="host", tags={"site": "s"}, fields={"up": 1}, time=1)]


class _JudgedFakeProbe(_FakeProbe):
    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.runs: list[Run] = []

    def verdict(self, run: Run) -> Verdict:
        self.runs.append(run)
        return Verdict(Status.WARN, "judged", {"answer": 42})


def _plan(probe: Any) -> Planned:
    kind = ProbeKind(
        name="fake",
        config_model=HostConfig,
        site_section="host",
        probe=type(probe),
        measurements=("host",),
        build=lambda *_args: probe,
        label="fake-kind",
        target=lambda _config: "somewhere",
    )
    return Planned(kind, HostConfig(), probe)


def test_runner_asks_a_judged_probe_for_its_verdict_with_the_timed_run() -> None:
    probe = _JudgedFakeProbe(delay=0.05)
    row = asyncio.run(check_probe(_plan(probe)))
    assert row == CheckRow("fake-kind", "fake", "somewhere", Status.WARN, "judged", {"answer": 42})
    [run] = probe.runs
    assert not run.timed_out
    assert len(run.samples) == 1
    assert 0.05 <= run.duration_s < 1.0


def test_runner_cuts_a_run_at_its_interval_and_says_so() -> None:
    probe = _JudgedFakeProbe(delay=5.0, interval=0.1)
    asyncio.run(check_probe(_plan(probe)))
    assert probe.runs == [Run([], 0.1, timed_out=True)]
    plain = asyncio.run(check_probe(_plan(_FakeProbe(delay=5.0, interval=0.1))))
    assert (plain.status, plain.reason) == (Status.FAIL, "no result within 0.1s")


def test_runner_judges_a_probe_without_verdict_by_its_samples() -> None:
    row = asyncio.run(check_probe(_plan(_FakeProbe())))
    assert (row.status, row.reason) == (Status.OK, "1 sample")


def test_a_probe_that_raises_is_a_fail_row_naming_the_error() -> None:
    row = asyncio.run(check_probe(_plan(_FakeProbe(error=KeyError("oops")))))
    assert (row.status, row.reason) == (Status.FAIL, "the probe failed: KeyError: 'oops'")


def test_a_probe_never_built_is_a_fail_row_naming_why() -> None:
    plan = _plan(_FakeProbe())
    unbuilt = Planned(plan.kind, plan.config, None, OSError("secret file unreadable"))
    row = asyncio.run(check_probe(unbuilt))
    assert row == CheckRow("fake-kind", "fake", "somewhere", Status.FAIL, "secret file unreadable")


# -- verdicts on recorded rounds (no network) ----------------------------------------------


def _link(**overrides: Any) -> IcmpLinkConfig:
    return IcmpLinkConfig.model_validate({**LOOPBACK_LINK, "address": "192.0.2.1", **overrides})


class _RecordedPinger:
    """Stands in for the IcmpPinger: every round returns the recorded result."""

    def __init__(self, result: RoundResult) -> None:
        self.result = result

    async def round(self, address: str, **_options: Any) -> RoundResult:
        return self.result


def test_icmp_probe_judges_its_last_round() -> None:
    link = _link(role="parent")
    recorded = RoundResult("192.0.2.1", sent=3)
    probe = IcmpProbe(link, pinger=_RecordedPinger(recorded), site="s", agent="a")  # type: ignore[arg-type]
    samples = asyncio.run(probe.collect())
    verdict = probe.verdict(Run(samples, 0.5))
    assert verdict.status is Status.FAIL
    assert verdict.reason == (
        "no reply to 3 echoes from 192.0.2.1 - check the cable or the parent hospital firewall"
    )
    assert verdict.baseline == samples[0].fields
    cut_short = probe.verdict(Run([], 10.0, timed_out=True))
    assert cut_short.status is Status.FAIL


def test_partial_loss_warns() -> None:
    verdict = judge_round(_link(count=10), RoundResult("192.0.2.1", sent=10, rtts_ms=[5.0] * 7))
    assert verdict.status is Status.WARN
    assert verdict.reason.startswith("3 of 10 echoes lost (30%)")
    assert verdict.baseline["loss_pct"] == pytest.approx(30.0)


def test_slow_link_warns_against_its_threshold() -> None:
    link = _link(thresholds={"rtt_ms": 80})
    verdict = judge_round(link, RoundResult("192.0.2.1", sent=3, rtts_ms=[95.0, 100.0, 120.0]))
    assert verdict.status is Status.WARN
    assert "median RTT 100.00 ms is over this link's 80 ms threshold" in verdict.reason
    ok = judge_round(link, RoundResult("192.0.2.1", sent=3, rtts_ms=[20.0, 30.0, 25.0]))
    assert ok.status is Status.OK


def test_jitter_over_threshold_warns() -> None:
    link = _link(thresholds={"jitter_ms": 5})
    verdict = judge_round(link, RoundResult("192.0.2.1", sent=3, rtts_ms=[10.0, 40.0, 10.0]))
    assert verdict.status is Status.WARN
    assert "jitter 30.00 ms" in verdict.reason


def test_missing_interface_is_named() -> None:
    link = _link(interface="wwan0", role="parent")
    verdict = judge_round(link, RoundResult("192.0.2.1", sent=3, errors={"ENODEV": 3}))
    assert verdict.status is Status.FAIL
    assert icmp.KIND.target(link) == "192.0.2.1 via wwan0"
    assert verdict.reason == (
        "interface wwan0 does not exist - is the NIC or modem plugged in? (ENODEV x3)"
    )


def test_unknown_send_error_is_reported_as_is() -> None:
    verdict = judge_round(_link(), RoundResult("192.0.2.1", sent=2, errors={"EMSGSIZE": 2}))
    assert verdict.status is Status.FAIL
    assert verdict.reason == "echoes to 192.0.2.1 could not be sent (EMSGSIZE x2)"


def test_snmp_verdicts_from_the_last_poll(tmp_path: Path) -> None:
    device = SnmpDeviceConfig.model_validate(_snmp_device(tmp_path, "ap-hall-a", 161, "public"))
    client = snmp_client_module.SnmpClient()
    try:
        probe = SnmpProbe(device, site="s", agent="a", client=client)
    finally:
        client.close()
    silent = probe.verdict(Run([], 0.1))
    assert (silent.status, silent.reason) == (
        Status.WARN,
        "ap-hall-a answers SNMP but reports nothing for profile 'if-mib' - "
        "is that the right profile (or interfaces filter) for this device?",
    )
    probe.last_error = "ap-hall-a: GET sysUpTime: error status genErr"
    failed = probe.verdict(Run([], 0.1))
    assert (failed.status, failed.reason) == (
        Status.FAIL,
        "SNMP error from ap-hall-a: ap-hall-a: GET sysUpTime: error status genErr",
    )
    probe.last_timed_out = True
    assert probe.verdict(Run([], 0.1)).reason == (
        "SNMP timeout from ap-hall-a (127.0.0.1:161) - wrong community or SNMP disabled?"
    )


def test_plain_table_escapes_nothing_and_markdown_escapes_pipes() -> None:
    row = CheckRow("snmp", "ap|1", "192.0.2.9", Status.WARN, "a | b")
    assert "ap|1" in plain_table([row])
    report = CheckReport("s", "S", "a", "p", "2026-01-01T00:00:00+00:00", 0.1, None, [row])
    assert "| WARN | snmp | ap\\|1 | 192.0.2.9 |  |  | a \\| b |" in markdown_report(report)


@pytest.mark.skipif(os.geteuid() != 0, reason="hooks must be root's: the test makes root's files")
def test_hooks_row_names_what_would_run_and_what_would_be_refused(tmp_path: Path) -> None:
    directory = tmp_path / "hooks"
    directory.mkdir()
    directory.chmod(0o755)
    config = HooksConfig(dir=directory)
    assert (check_hooks(config).status, check_hooks(config).reason) == (
        Status.WARN,
        "no executable hook in the directory",
    )
    for name in ("50-lte-failover", "10-diagnostics"):
        (directory / name).write_text("#!/bin/sh\n")
        (directory / name).chmod(0o755)
    row = check_hooks(config)
    assert (row.kind, row.target, row.status) == ("hooks", str(directory), Status.OK)
    assert row.reason == "2 run per event: 10-diagnostics, 50-lte-failover"
    (directory / "50-lte-failover").chmod(0o775)
    row = check_hooks(config)
    assert row.status is Status.FAIL
    assert "50-lte-failover is writable by group or others" in row.reason
    directory.chmod(0o777)
    assert check_hooks(config).reason.endswith("no hook runs")
    assert check_hooks(HooksConfig(dir=tmp_path / "absent")).status is Status.FAIL


# -- reasoning over the verdicts together ------------------------------------------------------


@pytest.fixture
def black_hole() -> Iterator[str]:
    """A host in our own namespace that answers nothing at all (echo, TCP or UDP): what every
    address looks like from a Pi whose cable is out, or beyond a dead uplink."""
    with Namespace(unique_name("chkbh")) as far:
        link = veth(None, far)
        far.run("iptables", "-A", "INPUT", "-j", "DROP")
        yield str(link.b_v4.ip)


@pytest.mark.netns
@needs_root
def test_a_silent_site_network_is_said_first_and_explains_the_snmp_rows(
    tmp_path: Path, black_hole: str
) -> None:
    dead_address = black_hole
    # The Pi's cable is out, as far as it can tell: gateway, AP, uplink and broker all silent.
    gateway = {**LOOPBACK_LINK, "address": dead_address}
    parent = {**LOOPBACK_LINK, "name": "parent-wired", "address": dead_address, "role": "parent"}
    device = {**_snmp_device(tmp_path, "ap-hall-a", 161, "public"), "address": dead_address}
    config = _write_site(
        tmp_path,
        port=1883,
        links=[gateway, parent],
        snmp_devices=[device],
        host=dead_address,
        connect_timeout="1s",
    )
    completed = _check(config, "--json")
    assert completed.returncode == 1, completed.stderr
    data = json.loads(completed.stdout)
    assert data["findings"] == [
        "nothing on the site network answers - is the Pi's cable or Wi-Fi connected?"
    ]
    rows = _rows(completed)
    see_above = "not reached: the site network does not answer (see above)"
    # The gateway's own verdict is the evidence; the rest no longer blame their own target.
    assert rows["site-gateway"]["reason"] == (
        f"no reply to 3 echoes from {dead_address} - "
        "check the cable to the site router and that it is powered"
    )
    assert rows["ap-hall-a"]["reason"] == see_above
    assert rows["parent-wired"]["reason"] == see_above
    assert rows["broker"]["reason"] == see_above
    assert rows["host"]["status"] in {"OK", "WARN"}
    # The table says it before the rows.
    text = _check(config).stdout
    finding = text.index("!! nothing on the site network answers")
    assert finding < text.index("STATUS")


@pytest.mark.netns
@needs_root
def test_a_silent_uplink_behind_an_answering_gateway_is_named(
    tmp_path: Path, black_hole: str
) -> None:
    dead_address = black_hole
    parent = {**LOOPBACK_LINK, "name": "parent-wired", "address": dead_address, "role": "parent"}
    internet = {**parent, "name": "internet", "role": "internet"}
    config = _write_site(
        tmp_path,
        port=1883,
        links=[LOOPBACK_LINK, parent, internet],
        host=dead_address,
        connect_timeout="1s",
    )
    completed = _check(config, "--json")
    assert completed.returncode == 1, completed.stderr
    data = json.loads(completed.stdout)
    assert len(data["findings"]) == 1
    assert data["findings"][0].startswith(
        "the site network answers but nothing beyond it does: the uplink is down"
    )
    rows = _rows(completed)
    assert rows["site-gateway"]["status"] == "OK"
    for name in ("parent-wired", "internet", "broker"):
        assert rows[name]["reason"] == "not reached: the uplink does not answer (see above)"


def _on_a_terminal(*args: str) -> str:
    """What `fieldmon-agent check ARGS` shows on a terminal (stdout and stderr on one pty)."""
    primary, secondary = os.openpty()
    try:
        process = subprocess.Popen(
            [str(AGENT), "check", *args], stdout=secondary, stderr=secondary, close_fds=True
        )
    finally:
        os.close(secondary)
    chunks = []
    try:
        while True:
            try:
                chunk = os.read(primary, 65536)
            except OSError:  # EIO: the child closed the terminal
                break
            if not chunk:
                break
            chunks.append(chunk)
    finally:
        os.close(primary)
        process.wait(timeout=60)
    return b"".join(chunks).decode()


def test_on_a_terminal_only_the_table_unless_asked_for_logs(tmp_path: Path) -> None:
    # An SNMP device on a closed port: its probe logs a warning as it fails.
    device = _snmp_device(tmp_path, "ap-hall-a", free_port(), "public")
    config = _write_site(tmp_path, port=free_port(), links=[LOOPBACK_LINK], snmp_devices=[device])
    shown = _on_a_terminal("--config", str(config))
    lines = shown.splitlines()
    assert lines[0].startswith("fieldmon check: pavilion-2")
    assert not any(line.lstrip().startswith("{") for line in lines), shown
    assert "SNMP poll failed" not in shown
    assert "FAIL" in shown and "OK, 0 WARN" in shown
    verbose = _on_a_terminal("--config", str(config), "--verbose")
    assert "WARNING fieldmon.agent.probes.snmp: SNMP poll failed: ap-hall-a" in verbose
    assert verbose.index("SNMP poll failed") < verbose.index("fieldmon check:")
