"""Opening and closing a site against the real thing: Mosquitto from the shipped
deploy/mosquitto.conf, its files written by `fieldmon-collector provision` / `decommission`,
reloaded by SIGHUP to its PID as the commands send it; and a real collector that must stay
quiet while a closed site's agent goes away.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from fieldmon.lab.process import Daemon, http_get, script, start, wait_for, wait_subscribed
from fieldmon.lab.servers import InfluxdServer, free_port

from .security_support import (
    COLLECTOR_CLIENT_ID,
    COLLECTOR_USER,
    SHIPPED_CONF,
    Broker,
    Client,
    Deployment,
    make_deployment,
    start_broker,
)

pytestmark = pytest.mark.integration

NEW_SITE, NEW_AGENT = "tent-3", "tent-3-pi1"
NOT_AUTHORIZED = "Not authorized"


def _granted(reason: object) -> bool:
    return reason is not None and not reason.is_failure  # type: ignore[attr-defined]


def _run(deployment: Deployment, *arguments: object) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [script("fieldmon-collector"), *map(str, arguments)],
        cwd=deployment.directory,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, f"{done.stdout}\n{done.stderr}"
    return done


def _new_site_file(folder: Path) -> Path:
    """The new site as the NOC prepares it (the CA comes from --ca)."""
    folder.mkdir()
    path = folder / f"{NEW_SITE}.yaml"
    path.write_text(
        f"site: {NEW_SITE}\nname: Tent 3\nparent_hospital: central\n"
        f"agent:\n  id: {NEW_AGENT}\n  broker:\n    host: 127.0.0.1\n    port: 8883\n"
        "    tls: {ca_file: secrets/noc-ca.pem}\n"
        f"    username: {NEW_AGENT}\n    password_file: secrets/{NEW_AGENT}.mqtt.pass\n"
        "links:\n  - {name: parent-gw, address: 192.0.2.1, role: parent}\n",
        encoding="utf-8",
    )
    return path


def _topic(site: str, agent: str, kind: str) -> str:
    return f"fieldmon/v1/{site}/{agent}/{kind}"


@pytest.fixture
def noc(tmp_path: Path) -> Deployment:
    """A deployment of its own: these tests change its site_configs and broker files."""
    (tmp_path / "noc").mkdir()
    return make_deployment(tmp_path / "noc")


def test_a_provisioned_agent_logs_in_on_its_own_topics_until_decommissioned(
    noc: Deployment, tmp_path: Path
) -> None:
    broker = start_broker(noc, tmp_path / "mosquitto", SHIPPED_CONF.read_text())
    try:
        _assert_provisioned_then_revoked(broker, noc, tmp_path)
    finally:
        for client in broker.clients:
            client.close()
        broker.server.stop()


def _assert_provisioned_then_revoked(broker: Broker, noc: Deployment, tmp_path: Path) -> None:
    pid = broker.server.pid
    assert pid is not None
    before = broker.agent("a-pi")  # an agent already in the field
    refused = broker.agent(NEW_AGENT, password="not provisioned yet")
    assert not refused.accepted

    handover = tmp_path / "handover-tent-3"
    done = _run(
        noc, "provision", "--config", "collector.yaml", _new_site_file(tmp_path / "new"),
        "--out", handover, "--no-bundle", "--ca", noc.pki.ca,
        "--broker-files", noc.broker_files, "--broker-pid", pid,
    )  # fmt: skip
    assert f"reloaded      Mosquitto (SIGHUP to PID {pid})" in done.stdout
    password = (handover / "secrets" / f"{NEW_AGENT}.mqtt.pass").read_text().strip()
    assert (handover / "secrets" / "noc-ca.pem").read_bytes() == noc.pki.ca.read_bytes()

    # The reload is asynchronous: the new login works once Mosquitto has re-read its files.
    ca = handover / "secrets" / "noc-ca.pem"

    def login() -> Client | None:
        # With the handover's CA file, as the Pi will.
        client = Client(broker.agents_port, username=NEW_AGENT, password=password, ca=ca)
        broker.clients.append(client)
        return client if client.connect().accepted else None

    agent = wait_for(login, "the provisioned agent's login accepted", 15)
    collector = broker.collector()
    collector.subscribe("fieldmon/v1/#")
    for kind in ("samples", "status", "events"):
        assert _granted(agent.publish(_topic(NEW_SITE, NEW_AGENT, kind), kind.encode())), kind
    forgeries = [
        _topic("site-a", "a-pi", "samples"),
        _topic(NEW_SITE, "a-pi", "samples"),
        _topic(NEW_SITE, NEW_AGENT, "ack"),
        f"fieldmon/v1/{NEW_SITE}/alerts",
    ]
    for forged in forgeries:
        reason = agent.publish(forged, b"forged")
        assert reason is not None and reason.getName() == NOT_AUTHORIZED, forged
    agent.subscribe(_topic(NEW_SITE, NEW_AGENT, "ack"), _topic("site-a", "a-pi", "ack"))
    assert _granted(collector.publish(_topic("site-a", "a-pi", "ack"), b"a's"))
    assert _granted(collector.publish(_topic(NEW_SITE, NEW_AGENT, "ack"), b"mine"))
    assert agent.wait_message(_topic(NEW_SITE, NEW_AGENT, "ack")) == b"mine"
    assert agent.topics() == [_topic(NEW_SITE, NEW_AGENT, "ack")]
    collector.wait_message(_topic(NEW_SITE, NEW_AGENT, "events"))
    assert [t for t in collector.topics() if NEW_SITE in t] == [
        _topic(NEW_SITE, NEW_AGENT, kind) for kind in ("samples", "status", "events")
    ]
    # The reload left the agents already connected alone.
    assert _granted(before.publish(_topic("site-a", "a-pi", "events"), b"still here"))
    assert not before.disconnected.is_set(), before.disconnect_reason

    done = _run(
        noc, "decommission", "--config", "collector.yaml", NEW_SITE,
        "--broker-files", noc.broker_files, "--broker-pid", pid,
    )  # fmt: skip
    assert "nothing was deleted in InfluxDB" in done.stdout
    # Mosquitto drops the revoked login at the reload, and refuses it from then on.
    assert agent.disconnected.wait(15), "the decommissioned agent is still connected"
    again = Client(broker.agents_port, username=NEW_AGENT, password=password, ca=ca)
    broker.clients.append(again)
    again.connect()
    assert again.connect_reason is not None and again.connect_reason.getName() == NOT_AUTHORIZED
    assert _granted(before.publish(_topic("site-a", "a-pi", "events"), b"and still"))
    assert not before.disconnected.is_set(), before.disconnect_reason


def _alerts(http_port: int) -> list[dict[str, object]]:
    status, body = http_get(f"http://127.0.0.1:{http_port}/api/v1/alerts")
    assert status == 200
    return json.loads(body)["alerts"]  # type: ignore[no-any-return]


def test_a_running_collector_raises_no_alert_for_a_closed_site(
    noc: Deployment, influxd: InfluxdServer, influx_db: str, tmp_path: Path
) -> None:
    broker = start_broker(noc, tmp_path / "mosquitto", SHIPPED_CONF.read_text())
    collector: Daemon | None = None
    try:
        http_port = free_port()
        config = noc.directory / "collector-run.yaml"
        config.write_text(
            f"broker: {{host: 127.0.0.1, port: {broker.collector_port}, "
            f"username: {COLLECTOR_USER}, password_file: collector.pass, "
            f"client_id: {COLLECTOR_CLIENT_ID}}}\n"
            f'influxdb: {{api: v1, url: "{influxd.url}", database: {influx_db}, '
            "flush_interval: 100ms}\n"
            "site_configs: ./site_configs\n"
            f"http: {{listen: '127.0.0.1:{http_port}'}}\n"
            f"data_dir: {tmp_path / 'collector-data'}\n"
            # An `offline` status pages at the next tick; silence never within the test.
            "alerting: {silence_timeout: 1h, offline_grace: 0s}\n",
            encoding="utf-8",
        )
        collector = start(
            [script("fieldmon-collector"), "run", "--config", config],
            tmp_path / "collector.log",
            cwd=noc.directory,
        )
        wait_subscribed(http_port, daemons=collector)
        staying, closing = broker.agent("a-pi"), broker.agent("b-pi")

        def offline(client: Client, site: str, agent: str, state: str = "offline") -> None:
            """What the agent publishes as it stops (SIGTERM), or `online` as it starts."""
            status = json.dumps({"state": state, "site": site, "agent": agent}).encode()
            assert _granted(client.publish(_topic(site, agent, "status"), status, retain=True))

        def alerting() -> list[tuple[object, ...]]:
            return sorted(
                (a["labels"]["alertname"], a["labels"]["site"]) for a in _alerts(http_port)
            )  # type: ignore[index]

        # site-b's Pi is shut down before the NOC closes the site: it pages (offline_grace 0).
        offline(closing, "site-b", "b-pi")
        wait_for(alerting, "site-b's SiteUnreachable", 15, daemons=collector)
        # The NOC closes site-b; the collector re-reads site_configs and resolves its alert.
        # (The broker's reload is the test above: here b-pi may still publish.)
        _run(
            noc, "decommission", "--config", "collector.yaml", "site-b",
            "--broker-files", noc.broker_files, "--collector-pid", collector.pid,
        )  # fmt: skip

        def closed() -> bool:
            status, body = http_get(f"http://127.0.0.1:{http_port}/api/v1/sites")
            return status == 200 and json.loads(body)["closed"] == ["site-b"] and not alerting()

        wait_for(closed, "site-b closed and its alert resolved", 15, daemons=collector)
        # site-b's Pi comes up and goes again; site-a's stops too, and pages at the next tick:
        # the control, site-b's would come with it.
        offline(closing, "site-b", "b-pi", "online")
        offline(closing, "site-b", "b-pi")
        offline(staying, "site-a", "a-pi")
        fired = wait_for(alerting, "site-a's SiteUnreachable", 15, daemons=collector)
        assert fired == [("SiteUnreachable", "site-a")]

        def states() -> dict[str, list[str]]:
            rows = influxd.query("SELECT * FROM alert", db=influx_db)
            found: dict[str, list[str]] = {}
            for row in rows:
                found.setdefault(str(row["site"]), []).append(str(row["state"]))
            return found if "site-a" in found else {}

        rows = wait_for(states, "site-a's alert row in InfluxDB", 15, daemons=collector)
        assert rows == {"site-b": ["firing", "resolved"], "site-a": ["firing"]}
        assert collector.process.poll() is None
    finally:
        if collector is not None:
            collector.stop()
        for client in broker.clients:
            client.close()
        broker.server.stop()
