"""TLS to a real Mosquitto: each failure named for what it is (in the daemons' link, their logs
and `check`), client certificates, and insecure_skip_verify only for a broker on loopback."""

from __future__ import annotations

import asyncio
import datetime
import io
import json
import logging
import secrets
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from fieldmon.core.mqtt.failures import AGENT, COLLECTOR, Phrasing
from fieldmon.core.mqtt.link import MqttLink, new_client
from fieldmon.core.mqtt.settings import BrokerConfig
from fieldmon.core.site.validate import validate_site_files
from fieldmon.lab.pki import Issued, TestCa
from fieldmon.lab.process import script, start, wait_for
from fieldmon.lab.servers import MosquittoServer

pytestmark = pytest.mark.integration
AGENT_SCRIPT = script("fieldmon-agent")
DAY = datetime.timedelta(days=1)


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _broker(directory: Path, server: Issued, client_ca: TestCa | None = None) -> MosquittoServer:
    extra = f"certfile {server.cert}\nkeyfile {server.key}\n"
    if client_ca is not None:
        extra += f"cafile {client_ca.cert_file}\nrequire_certificate true\n"
    return MosquittoServer(directory, extra_config=extra)


@dataclass(frozen=True)
class Outcome:
    """A link's first outcome: connected, or the reason it is not."""

    connected: bool
    last_error: str | None


async def _connect(config: BrokerConfig, phrasing: Phrasing, within: float = 20.0) -> Outcome:
    link = MqttLink(
        new_client(config, f"tls-{secrets.token_hex(3)}"),
        config,
        asyncio.get_running_loop(),
        phrasing=phrasing,
    )
    link.start()
    try:
        deadline = time.monotonic() + within
        while link.last_error is None and not link.connected.is_set():
            assert time.monotonic() < deadline, "neither connected nor failed"
            await asyncio.sleep(0.05)
        # Read before stopping: the clean disconnect clears `connected`.
        return Outcome(link.connected.is_set(), link.last_error)
    finally:
        link.stop()


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        (
            "expired",
            "broker TLS: certificate has expired - is this machine's clock set? If it is, the "
            "NOC must renew the broker certificate",
        ),
        ("not-yet-valid", "broker TLS: certificate not yet valid - is this machine's clock set?"),
        (
            "wrong-host",
            "broker TLS: the certificate is not for the configured host name - check "
            "broker.host (use the name the certificate was issued to)",
        ),
        ("unknown-ca", "broker TLS: the broker's certificate is not signed by a CA we trust"),
    ],
)
def test_the_link_names_the_tls_reason_and_logs_it(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, case: str, expected: str
) -> None:
    ca = TestCa(tmp_path / "pki")
    not_before = {"expired": _now() - 60 * DAY, "not-yet-valid": _now() + 2 * DAY}.get(case)
    server = ca.issue("broker", not_before=not_before)
    trusted = TestCa(tmp_path / "other", "another CA") if case == "unknown-ca" else ca
    with _broker(tmp_path / "broker", server) as broker:
        config = BrokerConfig(
            host="localhost" if case == "wrong-host" else "127.0.0.1",
            port=broker.port,
            tls={"ca_file": trusted.cert_file},  # type: ignore[arg-type]
        )
        with caplog.at_level(logging.WARNING, logger="fieldmon.core.mqtt.link"):
            link = asyncio.run(_connect(config, COLLECTOR))
    assert link.last_error is not None and not link.connected
    assert link.last_error.startswith(f"cannot connect to the broker: {expected}")
    assert link.last_error.endswith("; retrying")
    assert str(broker.port) not in link.last_error  # /healthz shows it: no address
    (record,) = [r for r in caplog.records if r.getMessage() == link.last_error]
    assert record.broker == f"{config.host}:{broker.port}"  # type: ignore[attr-defined]


def _agent_site(directory: Path, port: int, tls: dict[str, Any]) -> Path:
    site = {
        "site": "tls-site",
        "name": "TLS site",
        "parent_hospital": "hospital-a",
        "agent": {
            "id": "tls-site-pi1",
            "broker": {"host": "127.0.0.1", "port": port, "connect_timeout": "3s", "tls": tls},
            "outbox": {"path": str(directory / "outbox.db")},
        },
        "host": {"interval": "1h"},
    }
    path = directory / "site.yaml"
    path.write_text(json.dumps(site), encoding="utf-8")
    return path


def test_the_agent_daemon_logs_an_expired_certificate_as_such(tmp_path: Path) -> None:
    ca = TestCa(tmp_path / "pki")
    server = ca.issue("broker", not_before=_now() - 60 * DAY)
    with _broker(tmp_path / "broker", server) as broker:
        site = _agent_site(tmp_path, broker.port, {"ca_file": str(ca.cert_file)})
        agent = start([AGENT_SCRIPT, "run", "--config", site], tmp_path / "agent.log")
        try:
            line = wait_for(
                lambda: next(
                    (
                        json.loads(text)
                        for text in (tmp_path / "agent.log").read_text().splitlines()
                        if "certificate has expired" in text
                    ),
                    None,
                ),
                "the agent's log line about the expired certificate",
                30,
                daemons=agent,
            )
        finally:
            agent.stop()
    assert line["msg"] == (
        "cannot connect to the broker: broker TLS: certificate has expired - is the Pi's clock "
        "set? If it is, the NOC must renew the broker certificate; retrying"
    )
    assert line["broker"] == f"127.0.0.1:{broker.port}"
    assert "cannot reach the broker" not in (tmp_path / "agent.log").read_text()


# -- client certificates (mutual TLS) -------------------------------------------------------


def test_a_client_certificate_logs_in_where_the_broker_requires_one(tmp_path: Path) -> None:
    ca = TestCa(tmp_path / "pki")
    client = ca.issue("tls-site-pi1", client=True)
    with _broker(tmp_path / "broker", ca.issue("broker"), client_ca=ca) as broker:
        tls = {"ca_file": ca.cert_file, "cert_file": client.cert, "key_file": client.key}
        config = BrokerConfig(host="127.0.0.1", port=broker.port, tls=tls)  # type: ignore[arg-type]
        link = asyncio.run(_connect(config, AGENT))
        assert link.connected, link.last_error
        # And `check`, with the site file's tls section, says so in its broker row.
        site = _agent_site(tmp_path, broker.port, {k: str(v) for k, v in tls.items()})
        completed = subprocess.run(
            [AGENT_SCRIPT, "check", "--config", site, "--json"],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    rows = {row["name"]: row for row in json.loads(completed.stdout)["rows"]}
    assert rows["broker"]["status"] == "OK", rows["broker"]
    assert rows["broker"]["reason"] == "connected and logged in"


@pytest.mark.parametrize(
    ("client", "words"),
    [
        # The broker's TLS alert, when the client gets to read it ("the broker requires a client
        # certificate"), or the close that won the race ("does it require a client
        # certificate?"): either way the reason names the client certificate and the keys.
        ("none", ("client certificate", "agent.broker.tls.cert_file", "tls.key_file")),
        ("unknown-ca", ("this client certificate", "agent.broker.tls.cert_file")),
    ],
)
def test_a_refused_client_certificate_is_named(
    tmp_path: Path, client: str, words: tuple[str, ...]
) -> None:
    ca = TestCa(tmp_path / "pki")
    tls: dict[str, Any] = {"ca_file": ca.cert_file}
    if client == "unknown-ca":
        stranger = TestCa(tmp_path / "stranger", "stranger CA").issue("tls-site-pi1", client=True)
        tls |= {"cert_file": stranger.cert, "key_file": stranger.key}
    with _broker(tmp_path / "broker", ca.issue("broker"), client_ca=ca) as broker:
        config = BrokerConfig(host="127.0.0.1", port=broker.port, tls=tls)  # type: ignore[arg-type]
        link = asyncio.run(_connect(config, AGENT))
        site = _agent_site(tmp_path, broker.port, {k: str(v) for k, v in tls.items()})
        completed = subprocess.run(
            [AGENT_SCRIPT, "check", "--config", site, "--json"],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    assert not link.connected and link.last_error is not None
    assert link.last_error.startswith("cannot connect to the broker: broker ")
    assert completed.returncode == 1
    reason = {row["name"]: row for row in json.loads(completed.stdout)["rows"]}["broker"]["reason"]
    for text in (link.last_error, reason):
        assert all(word in text for word in words), text


def test_a_key_without_its_certificate_is_a_config_error(tmp_path: Path) -> None:
    key = TestCa(tmp_path / "pki").issue("tls-site-pi1", client=True).key
    site = _agent_site(tmp_path, 8883, {"key_file": str(key)})
    out, err = io.StringIO(), io.StringIO()
    assert validate_site_files([site], out, err) == 1
    assert f"{site}:1: agent.broker.tls.cert_file: key_file is given without cert_file" in (
        err.getvalue()
    )


# -- insecure_skip_verify ----------------------------------------------------------------------


def test_skipping_verification_is_refused_beyond_loopback(tmp_path: Path) -> None:
    site = _agent_site(tmp_path, 8883, {"insecure_skip_verify": True})
    document = json.loads(site.read_text())
    document["agent"]["broker"]["host"] = "noc.example.org"
    site.write_text(json.dumps(document, indent=1), encoding="utf-8")
    out, err = io.StringIO(), io.StringIO()
    assert validate_site_files([site], out, err) == 1
    (issue, _summary) = err.getvalue().splitlines()
    assert issue.startswith(f"{site}:12: agent.broker.tls.insecure_skip_verify: is only allowed ")
    assert "not 'noc.example.org'" in issue
    assert "give tls.ca_file the CA that signed the broker's certificate instead" in issue


def test_skipping_verification_works_for_a_broker_on_loopback(tmp_path: Path) -> None:
    server = TestCa(tmp_path / "pki").issue("broker")  # signed by a CA nobody trusts
    with _broker(tmp_path / "broker", server) as broker:
        for host in ("127.0.0.1", "localhost"):
            config = BrokerConfig(
                host=host,
                port=broker.port,
                tls={"insecure_skip_verify": True},  # type: ignore[arg-type]
            )
            link = asyncio.run(_connect(config, AGENT))
            assert link.connected, link.last_error
