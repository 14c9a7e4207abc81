"""The lab's real-server helpers: each server starts, answers, keeps its data, and stops by PID."""

from __future__ import annotations

import socket
import subprocess
import threading
import time
import urllib.request
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from fieldmon.lab import servers
from fieldmon.lab.servers import (
    InfluxdServer,
    MosquittoServer,
    ServerQueryError,
    ServerStartError,
    VictoriaMetricsServer,
)

pytestmark = pytest.mark.integration


class _Subscriber:
    """A paho v5 client that collects what it receives on one topic."""

    def __init__(self, port: int, topic: str, *, client_id: str = "", persistent: bool = False):
        self.received: list[bytes] = []
        self.got = threading.Event()
        self.subscribed = threading.Event()
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5
        )
        self.client.on_message = self._on_message
        self.client.on_subscribe = lambda *_args: self.subscribed.set()
        self.client.on_connect = lambda client, *_args: client.subscribe(topic, qos=1)
        properties = None
        if persistent:
            properties = Properties(PacketTypes.CONNECT)
            properties.SessionExpiryInterval = 3600
        self.client.connect("127.0.0.1", port, clean_start=not persistent, properties=properties)
        self.client.loop_start()
        assert self.subscribed.wait(10), "no SUBACK from the broker"

    def _on_message(self, _client: mqtt.Client, _userdata: object, message: object) -> None:
        self.received.append(message.payload)  # type: ignore[attr-defined]
        self.got.set()

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def _publish(port: int, topic: str, payload: bytes, **credentials: str) -> None:
    client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    if credentials:
        client.username_pw_set(credentials["username"], credentials["password"])
    client.connect("127.0.0.1", port)
    client.loop_start()
    try:
        client.publish(topic, payload, qos=1).wait_for_publish(timeout=10)
    finally:
        client.disconnect()
        client.loop_stop()


def test_mosquitto_round_trip(mosquitto: MosquittoServer) -> None:
    subscriber = _Subscriber(mosquitto.port, "fieldmon/v1/+/+/samples")  # type: ignore[arg-type]
    try:
        _publish(mosquitto.port, "fieldmon/v1/s1/a1/samples", b"hello")  # type: ignore[arg-type]
        assert subscriber.got.wait(10)
        assert subscriber.received == [b"hello"]
    finally:
        subscriber.close()
    assert "New client connected" in mosquitto.log_path.read_text()


def test_mosquitto_restart_keeps_port_and_queued_messages(mosquitto: MosquittoServer) -> None:
    port = mosquitto.port
    assert port is not None
    subscriber = _Subscriber(port, "t/queued", client_id="sleeper", persistent=True)
    subscriber.close()
    _publish(port, "t/queued", b"kept while you were away")
    assert mosquitto.stop() == 0  # SIGTERM: Mosquitto saves its persistence file
    assert not mosquitto.running()
    assert (mosquitto.directory / "mosquitto.db").exists()
    mosquitto.start()
    assert mosquitto.port == port
    subscriber = _Subscriber(port, "t/queued", client_id="sleeper", persistent=True)
    try:
        assert subscriber.got.wait(10)
        assert subscriber.received == [b"kept while you were away"]
    finally:
        subscriber.close()


def test_mosquitto_with_password_file_refuses_strangers(tmp_path: Path) -> None:
    passwords = tmp_path / "passwd"
    subprocess.run(
        ["mosquitto_passwd", "-b", "-c", str(passwords), "pi1", "s3cret"],
        check=True,
        capture_output=True,
    )
    with MosquittoServer(
        tmp_path / "broker", allow_anonymous=False, password_file=passwords
    ) as broker:
        port = broker.port
        assert port is not None
        _publish(port, "t/x", b"1", username="pi1", password="s3cret")
        stranger = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        stranger.username_pw_set("pi1", "wrong")
        refused = threading.Event()
        stranger.on_connect = lambda _c, _u, _f, reason, _p: reason.is_failure and refused.set()
        stranger.connect("127.0.0.1", port)
        stranger.loop_start()
        try:
            assert refused.wait(10)
        finally:
            stranger.loop_stop()


def test_max_queued_messages_reaches_the_config(tmp_path: Path) -> None:
    broker = MosquittoServer(tmp_path, max_queued_messages=123)
    with broker:
        assert "max_queued_messages 123\n" in broker.config_path.read_text()


def test_start_failure_reports_the_log_tail(tmp_path: Path) -> None:
    broker = MosquittoServer(tmp_path, extra_config="no_such_option 1")
    with pytest.raises(ServerStartError, match="no_such_option"):
        broker.start()
    assert not broker.running()


def test_start_retries_when_the_chosen_port_is_taken(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        taken = squatter.getsockname()[1]
        ports = iter([taken, servers.free_port()])
        monkeypatch.setattr(servers, "free_port", lambda: next(ports))
        with MosquittoServer(tmp_path) as broker:
            assert broker.port != taken
            assert servers.tcp_answers("127.0.0.1", broker.port)  # type: ignore[arg-type]
        assert (
            "already in use"
            in (tmp_path / "mosquitto.out").read_text().lower()
            + (tmp_path / "mosquitto.log").read_text().lower()
        )


def test_a_fixed_port_that_is_taken_fails_with_the_reason(tmp_path: Path) -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        broker = MosquittoServer(tmp_path, port=squatter.getsockname()[1])
        with pytest.raises(ServerStartError, match=r"(?i)already in use"):
            broker.start()


def test_a_readiness_timeout_stops_the_server_and_says_so(tmp_path: Path) -> None:
    server = InfluxdServer(tmp_path, startup_timeout=0.001)
    with pytest.raises(ServerStartError, match="did not answer within"):
        server.start()
    assert not server.running()
    assert server.pid is None


def test_stop_ends_only_our_process(tmp_path: Path) -> None:
    broker = MosquittoServer(tmp_path).start()
    pid = broker.pid
    assert pid is not None
    assert Path(f"/proc/{pid}").exists()
    assert broker.stop() == 0
    assert broker.pid is None
    assert broker.stop() is None  # stopping twice is harmless


def test_influxd_write_and_query(influxd: InfluxdServer, influx_db: str) -> None:
    influxd.write(
        'link,site=s1,target=gw loss_pct=2.5,sent=10i,note="a b" 1700000000000000001\n'
        "link,site=s1,target=ap rtt_avg_ms=3.25,sent=10i 1700000000000000002",
        db=influx_db,
    )
    grouped = influxd.query("SELECT * FROM link GROUP BY * ORDER BY time", db=influx_db)
    by_target = {row["target"]: row for row in grouped}
    assert by_target["gw"] == {
        "time": 1700000000000000001,
        "loss_pct": 2.5,
        "note": "a b",
        "rtt_avg_ms": None,
        "sent": 10,
        "site": "s1",
        "target": "gw",
    }
    assert by_target["ap"]["rtt_avg_ms"] == 3.25
    assert "Listening on HTTP" in influxd.log_path.read_text()
    flat = influxd.query("SELECT sent, target FROM link", db=influx_db)
    assert [(row["time"], row["target"]) for row in flat] == [
        (1700000000000000001, "gw"),
        (1700000000000000002, "ap"),
    ]


def test_influxd_errors_are_raised(influxd: InfluxdServer, influx_db: str) -> None:
    with pytest.raises(ServerQueryError, match="error parsing query"):
        influxd.query("SELEKT 1", db=influx_db)
    with pytest.raises(ServerQueryError, match="400"):
        influxd.write("link loss_pct=", db=influx_db)


def test_victoria_metrics_accepts_v2_writes(victoria_metrics: VictoriaMetricsServer) -> None:
    # Recent timestamps: VictoriaMetrics drops rows older than its retention period.
    stamp = (time.time_ns() // 10**9 - 600) * 10**9
    body = f"link,site=vm-smoke,target=gw loss_pct=2.5,sent=10i {stamp}\n".encode()
    request = urllib.request.Request(
        f"{victoria_metrics.url}/api/v2/write?org=o&bucket=b&precision=ns", data=body
    )
    with urllib.request.urlopen(request, timeout=10) as reply:
        assert reply.status == 204
    series = victoria_metrics.export('{site="vm-smoke"}')
    found = {item["metric"]["__name__"]: item for item in series}
    assert set(found) == {"link_loss_pct", "link_sent"}
    assert found["link_loss_pct"]["values"] == [2.5]
    assert found["link_sent"]["values"] == [10]
    assert found["link_loss_pct"]["timestamps"] == [stamp // 10**6]
    assert found["link_loss_pct"]["metric"]["target"] == "gw"
    assert "starting http server at" in victoria_metrics.log_path.read_text()
