"""`fieldmon-agent check` run as the engineer runs it, against a real Mosquitto and real links."""

from __future__ import annotations

import asyncio
import datetime
import importlib
import ipaddress
import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from fieldmon.agent import check as check_module
from fieldmon.agent.check import (
    CheckReport,
    CheckRow,
    Status,
    judge_link,
    markdown_report,
    plain_table,
)
from fieldmon.agent.probes.icmp_socket import RoundResult
from fieldmon.core.site.config import SiteConfig
from fieldmon.core.site.links import IcmpLinkConfig
from fieldmon.lab.netns import Namespace, silent_host, unique_name, veth
from fieldmon.lab.process import script
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
    assert gateway.startswith("OK")
    assert "3 of 3 echoes answered" in gateway
    assert header.index("REASON") == gateway.index("3 of 3")  # columns line up
    assert "connected and logged in" in broker
    assert "2 OK, 0 WARN, 0 FAIL" in completed.stdout


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
    assert set(rows) == {"site-gateway", "lo-again", "broker"}
    assert rows["lo-again"]["baseline"]["sent"] == 4
    assert rows["lo-again"]["baseline"]["received"] == 4
    assert rows["lo-again"]["baseline"]["loss_pct"] == 0.0
    assert rows["lo-again"]["baseline"]["rtt_p50_ms"] > 0
    assert rows["broker"]["target"] == f"127.0.0.1:{mosquitto.port}"
    assert rows["broker"]["baseline"] == {}


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


def test_wrong_password_is_named(tmp_path: Path) -> None:
    passwords = tmp_path / "passwd"
    subprocess.run(
        ["mosquitto_passwd", "-b", "-c", str(passwords), "pavilion-2-pi1", "right"],
        check=True,
        capture_output=True,
    )
    (tmp_path / "mqtt.pass").write_text("wrong\n", encoding="utf-8")
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
    secret.write_text(community + "\n", encoding="utf-8")
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
    assert rows["core-switch"]["reason"].endswith("interfaces polled")
    assert rows["ap-hall-a"]["status"] == "FAIL"
    assert rows["ap-hall-a"]["reason"] == (
        f"SNMP timeout from ap-hall-a (127.0.0.1:{snmpd.port}) - wrong community or SNMP disabled?"
    )


def test_snmp_rows_say_so_when_the_build_has_no_snmp_probe(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    snmp_module = importlib.import_module("fieldmon.agent.probes.snmp")
    monkeypatch.delattr(snmp_module, "SnmpProbe", raising=False)
    device = _snmp_device(tmp_path, "ap-hall-a", 161, "public")
    config = SiteConfig.model_validate(
        json.loads(_write_site(tmp_path, port=1883, links=[], snmp_devices=[device]).read_text())
    )
    rows = asyncio.run(check_module.check_snmp_devices(config))
    assert [(row.name, row.status, row.reason) for row in rows] == [
        ("ap-hall-a", Status.WARN, "SNMP check not available in this build")
    ]


# -- verdicts on recorded rounds (no network) ----------------------------------------------


def _link(**overrides: Any) -> IcmpLinkConfig:
    return IcmpLinkConfig.model_validate({**LOOPBACK_LINK, "address": "192.0.2.1", **overrides})


def test_partial_loss_warns() -> None:
    row = judge_link(_link(count=10), RoundResult("192.0.2.1", sent=10, rtts_ms=[5.0] * 7))
    assert row.status is Status.WARN
    assert row.reason.startswith("3 of 10 echoes lost (30%)")
    assert row.baseline["loss_pct"] == pytest.approx(30.0)


def test_slow_link_warns_against_its_threshold() -> None:
    link = _link(thresholds={"rtt_ms": 80})
    row = judge_link(link, RoundResult("192.0.2.1", sent=3, rtts_ms=[95.0, 100.0, 120.0]))
    assert row.status is Status.WARN
    assert "median RTT 100.00 ms is over this link's 80 ms threshold" in row.reason
    ok = judge_link(link, RoundResult("192.0.2.1", sent=3, rtts_ms=[20.0, 30.0, 25.0]))
    assert ok.status is Status.OK


def test_jitter_over_threshold_warns() -> None:
    link = _link(thresholds={"jitter_ms": 5})
    row = judge_link(link, RoundResult("192.0.2.1", sent=3, rtts_ms=[10.0, 40.0, 10.0]))
    assert row.status is Status.WARN
    assert "jitter 30.00 ms" in row.reason


def test_missing_interface_is_named() -> None:
    link = _link(interface="wwan0", role="parent")
    row = judge_link(link, RoundResult("192.0.2.1", sent=3, errors={"ENODEV": 3}))
    assert row.status is Status.FAIL
    assert row.target == "192.0.2.1 via wwan0"
    assert row.reason == (
        "interface wwan0 does not exist - is the NIC or modem plugged in? (ENODEV x3)"
    )


def test_unknown_send_error_is_reported_as_is() -> None:
    row = judge_link(_link(), RoundResult("192.0.2.1", sent=2, errors={"EMSGSIZE": 2}))
    assert row.status is Status.FAIL
    assert row.reason == "echoes to 192.0.2.1 could not be sent (EMSGSIZE x2)"


def test_plain_table_escapes_nothing_and_markdown_escapes_pipes() -> None:
    row = CheckRow("snmp", "ap|1", "192.0.2.9", Status.WARN, "a | b")
    assert "ap|1" in plain_table([row])
    report = CheckReport("s", "S", "a", "p", "2026-01-01T00:00:00+00:00", 0.1, None, [row])
    assert "| WARN | snmp | ap\\|1 | 192.0.2.9 |  |  | a \\| b |" in markdown_report(report)
