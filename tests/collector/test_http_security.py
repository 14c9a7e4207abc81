"""The collector's HTTP: authentication (bearer token, basic), required beyond loopback; security
headers on every response; /healthz open but naming no URL or credential."""

from __future__ import annotations

import base64
import json
import time
import urllib.error
import urllib.request
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from fieldmon.collector.config import load_collector_config
from fieldmon.collector.http import content_security_policy
from fieldmon.core.config.errors import ConfigError
from fieldmon.core.wire.codec import encode
from fieldmon.core.wire.models import Envelope, Sample
from fieldmon.lab.process import collector_health, script, start, wait_for, wait_subscribed
from fieldmon.lab.secretfiles import new_secret, write_secret
from fieldmon.lab.servers import MosquittoServer, free_port

SECURITY_HEADERS = ("Content-Security-Policy", "X-Frame-Options", "X-Content-Type-Options")


def _get(url: str, authorization: str | None = None) -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(url)
    if authorization is not None:
        request.add_header("Authorization", authorization)
    try:
        with urllib.request.urlopen(request, timeout=5) as reply:
            return int(reply.status), dict(reply.headers), bytes(reply.read())
    except urllib.error.HTTPError as exc:
        with exc:
            return int(exc.code), dict(exc.headers), bytes(exc.read())


def _basic(username: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{username}:{password}".encode()).decode()


def _config(folder: Path, listen: str, auth: str = "") -> Path:
    (folder / "site_configs").mkdir(exist_ok=True)
    path = folder / "collector.yaml"
    path.write_text(
        "broker: {host: 127.0.0.1, port: 1883}\n"
        "influxdb: {api: v1, url: 'http://127.0.0.1:8086', database: fieldmon}\n"
        f"site_configs: ./site_configs\nhttp: {{listen: '{listen}'{auth}}}\n",
        encoding="utf-8",
    )
    return path


@pytest.mark.parametrize("listen", ["0.0.0.0:8480", "[::]:8480", "192.0.2.7:8480"])
def test_listening_beyond_loopback_without_auth_is_refused(tmp_path: Path, listen: str) -> None:
    with pytest.raises(ConfigError) as raised:
        load_collector_config(_config(tmp_path, listen))
    (issue,) = raised.value.issues
    assert (issue.path, issue.line) == ("http.listen", 4)
    assert issue.message.startswith(f"{listen!r} is reachable from other machines")
    assert "add http.auth (token_file, or username and password_file)" in issue.message


@pytest.mark.parametrize("listen", ["127.0.0.1:8480", "[::1]:8480", "localhost:8480"])
def test_loopback_needs_no_auth(tmp_path: Path, listen: str) -> None:
    assert load_collector_config(_config(tmp_path, listen)).http.auth is None


def test_beyond_loopback_with_auth_loads(tmp_path: Path) -> None:
    write_secret(tmp_path / "http.token")
    config = load_collector_config(
        _config(tmp_path, "0.0.0.0:8480", ", auth: {token_file: http.token}")
    )
    assert config.http.auth is not None and config.http.auth.token_file == tmp_path / "http.token"
    with pytest.raises(ConfigError, match="username and password_file go together"):
        load_collector_config(_config(tmp_path, "0.0.0.0:8480", ", auth: {username: noc}"))
    with pytest.raises(ConfigError, match="give token_file, or username and password_file"):
        load_collector_config(_config(tmp_path, "0.0.0.0:8480", ", auth: {}"))


def test_the_policy_allows_exactly_the_pages_inline_blocks() -> None:
    page = b"<style>a{}</style><script>go()</script><script>more()</script>"
    policy = content_security_policy(page)
    assert "default-src 'none'" in policy
    # sha256 of "a{}", "go()" and "more()", base64, as a browser computes them
    assert "style-src 'sha256-X1RutGBrXCt9KkSaXMK7tHftWiRscFHOhxsS8tv8hBk='" in policy
    assert policy.count("'sha256-") == 3
    assert "connect-src 'self'" in policy and "frame-ancestors 'none'" in policy
    assert "unsafe-inline" not in policy


def _envelope(site: str, agent: str) -> bytes:
    now = time.time_ns()
    sample = Sample(
        measurement="link",
        tags={"site": site, "agent": agent, "target": "parent-gw", "role": "parent"},
        fields={"sent": 10, "received": 10, "loss_pct": 0.0},
        time=now,
    )
    return encode(Envelope(site=site, agent=agent, seq=1, sent_at=now, samples=[sample]))


@pytest.mark.integration
def test_auth_headers_and_a_healthz_without_urls(
    tmp_path: Path, mosquitto: MosquittoServer
) -> None:
    token = write_secret(tmp_path / "http.token")
    password = write_secret(tmp_path / "http.pass")
    # A database URL with credentials in it, which answers nothing: its errors reach the log
    # and /healthz, and neither may show the URL or the password.
    database_password = new_secret("influx-url-password")
    sites = tmp_path / "site_configs"
    sites.mkdir()
    (sites / "hall-a.yaml").write_text(
        "site: hall-a\nname: Hall A\nparent_hospital: central\n"
        "agent: {id: hall-a-pi, broker: {host: 127.0.0.1}}\n"
        # The link the test's rows name: the collector refuses a target the site file does not.
        "links:\n  - {name: parent-gw, address: 192.0.2.1, role: parent}\n",
        encoding="utf-8",
    )
    port = free_port()
    config = tmp_path / "collector.yaml"
    config.write_text(
        f"broker: {{host: 127.0.0.1, port: {mosquitto.port}, client_id: http-security}}\n"
        "influxdb: {api: v1, database: fieldmon, "
        f"url: 'http://fieldmon:{database_password}@127.0.0.1:{free_port()}'}}\n"
        "site_configs: ./site_configs\ndata_dir: ./data\n"
        f"http: {{listen: '127.0.0.1:{port}', auth: {{token_file: http.token, username: noc, "
        "password_file: http.pass}}\n",
        encoding="utf-8",
    )
    collector = start(
        [script("fieldmon-collector"), "run", "--config", config], tmp_path / "collector.log"
    )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_subscribed(port, daemons=collector)  # /healthz needs no credentials
        for path in ("/", "/api/v1/sites", "/api/v1/alerts", "/metrics"):
            status, headers, _ = _get(base + path)
            assert status == 401, path
            assert headers["WWW-Authenticate"] == 'Basic realm="fieldmon", charset="UTF-8"'
            assert all(name in headers for name in SECURITY_HEADERS), (path, headers)
            assert _get(base + path, f"Bearer {token}")[0] == 200, path
            assert _get(base + path, _basic("noc", password))[0] == 200, path
        for wrong in (f"Bearer {token}x", _basic("noc", password + "x"), _basic("x", password)):
            assert _get(base + "/api/v1/sites", wrong)[0] == 401
        assert _get(base + "/api/v1/sites", "Basic not-base64!")[0] == 401

        status, headers, page = _get(base + "/", f"Bearer {token}")
        assert headers["Content-Security-Policy"] == content_security_policy(page)
        assert headers["X-Frame-Options"] == "DENY"
        assert headers["X-Content-Type-Options"] == "nosniff"
        assert headers["Referrer-Policy"] == "no-referrer"
        status, headers, _ = _get(base + "/no-such-page", f"Bearer {token}")
        assert status == 404 and headers["X-Frame-Options"] == "DENY"

        client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        client.connect("127.0.0.1", mosquitto.port)
        client.loop_start()
        client.publish(
            "fieldmon/v1/hall-a/hall-a-pi/samples", _envelope("hall-a", "hall-a-pi"), qos=1
        ).wait_for_publish(5)
        client.loop_stop()
        client.disconnect()
        _, health = wait_for(
            lambda: next(
                (
                    (status, body)
                    for status, body in [collector_health(port)]
                    if any(p.startswith("database:") for p in body["problems"])
                ),
                None,
            ),
            "the database problem on /healthz",
            30,
            daemons=collector,
        )
    finally:
        collector.stop()
    text = json.dumps(health)
    assert "writing 1 points to 'fieldmon' at the database" in text
    assert "http" not in text and database_password not in text and "fieldmon:" not in text
    log = (tmp_path / "collector.log").read_text(encoding="utf-8")
    assert "database write failed" in log
    assert "http://***@127.0.0.1:" in log  # the URL, redacted, says where writes went
    assert database_password not in log and token not in log and password not in log
