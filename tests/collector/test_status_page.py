"""The status page in a real headless Chromium: every site shown, a degraded site turns amber,
behind basic authentication, with the Content-Security-Policy enforced and nothing refused."""

from __future__ import annotations

import base64
import http.server
import json
import shutil
import subprocess
import threading
import time
import urllib.request
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from fieldmon.core.wire.codec import encode
from fieldmon.core.wire.models import Envelope, Sample
from fieldmon.lab.process import script, start, wait_for, wait_subscribed
from fieldmon.lab.secretfiles import write_secret
from fieldmon.lab.servers import InfluxdServer, MosquittoServer, free_port

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
pytestmark = pytest.mark.integration

CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    # Without these Chromium floods this closed network with refused connections.
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--virtual-time-budget=6000",
    # The page's console on stderr: a script or style the Content-Security-Policy blocked is
    # reported there ("Executing inline script violates the following Content Security Policy
    # directive ... The action has been blocked.").
    "--enable-logging=stderr",
    "--v=0",
]


def _site_file(folder: Path, site: str, port: int) -> None:
    if not (folder / "community").exists():
        write_secret(folder / "community")
    (folder / f"{site}.yaml").write_text(
        f"site: {site}\nname: Hall {site}\nparent_hospital: central\n"
        f"agent: {{id: {site}-pi, broker: {{host: 127.0.0.1, port: {port}}}}}\n"
        "links:\n  - {name: parent-gw, address: 127.0.0.1, role: parent}\n"
        "services:\n  - {name: his, kind: http, url: 'https://his.example/', interval: 10s}\n"
        "snmp_devices:\n  - {name: router, address: 127.0.0.1, profile: if-mib,\n"
        "     snmp: {version: 2c, community_file: community}}\n",
        encoding="utf-8",
    )


def _round(site: str, seq: int, loss: float, at_ns: int) -> bytes:
    fields: dict[str, float | int] = {"sent": 10, "received": round(10 * (1 - loss / 100))}
    fields |= {"loss_pct": loss, "rtt_p95_ms": 12.0 + seq, "jitter_ms": 1.0, "mos": 4.2}
    sample = Sample(
        measurement="link",
        tags={"site": site, "agent": f"{site}-pi", "target": "parent-gw", "role": "parent"},
        fields=fields,  # type: ignore[arg-type]
        time=at_ns,
    )
    services = [_service_run(site, target, loss == 0.0, at_ns) for target in ("his", "ghost")]
    return encode(
        Envelope(site=site, agent=f"{site}-pi", seq=seq, sent_at=at_ns, samples=[sample, *services])
    )


def _service_run(site: str, target: str, up: bool, at_ns: int) -> Sample:
    """A run of the site's HIS: up with its certificate's days, or refused (no TLS reached)."""
    fields: dict[str, float | int | bool | str] = {"up": up, "duration_ms": 12.5 if up else 0.4}
    fields |= {"status_code": 200, "cert_days_left": 41.2} if up else {"error": "refused"}
    return Sample(
        measurement="service",
        tags={"site": site, "agent": f"{site}-pi", "target": target, "kind": "http"},
        fields=fields,
        time=at_ns,
    )


def _interface(site: str, seq: int, at_ns: int) -> bytes:
    # Polled faster than the router's counter cache: 0 this poll, the window says 95 %.
    fields: dict[str, float | int] = {"oper_up": 1, "in_bps": 0.0, "out_bps": 0.0}
    fields |= {"util_pct": 0.0, "in_bps_window": 3.8e6, "out_bps_window": 2.5e5}
    fields |= {"util_pct_window": 95.0, "window_s": 120.0}
    sample = Sample(
        measurement="snmp_if",
        tags={"site": site, "agent": f"{site}-pi", "device": "router", "ifname": "wan0"},
        fields=fields,  # type: ignore[arg-type]
        time=at_ns,
    )
    return encode(Envelope(site=site, agent=f"{site}-pi", seq=seq, sent_at=at_ns, samples=[sample]))


def _sites(http_port: int, password: str) -> dict[str, dict[str, object]]:
    request = urllib.request.Request(f"http://127.0.0.1:{http_port}/api/v1/sites")
    credentials = base64.b64encode(f"noc:{password}".encode()).decode()
    request.add_header("Authorization", f"Basic {credentials}")
    with urllib.request.urlopen(request, timeout=5) as reply:
        body = reply.read()
    return {site["site"]: site for site in json.loads(body)["sites"]}


def _chromium(*args: str, profile: Path) -> tuple[str, str]:
    binary = shutil.which("chromium")
    assert binary, "chromium is installed by scripts/setup.sh"
    result = subprocess.run(
        [binary, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args],
        capture_output=True,
        text=True,
        timeout=90,
        check=True,
    )
    return result.stdout, result.stderr


def test_status_page_shows_every_site_and_the_degraded_one(
    tmp_path: Path, mosquitto: MosquittoServer, influxd: InfluxdServer, influx_db: str
) -> None:
    sites = tmp_path / "site_configs"
    sites.mkdir()
    for site in ("hall-a", "hall-b"):
        _site_file(sites, site, mosquitto.port)
    http_port = free_port()
    password = write_secret(tmp_path / "http.pass")
    config = tmp_path / "collector.yaml"
    config.write_text(
        f"broker: {{host: 127.0.0.1, port: {mosquitto.port}, client_id: page-collector}}\n"
        f'influxdb: {{api: v1, url: "{influxd.url}", database: {influx_db}}}\n'
        f"site_configs: ./site_configs\nhttp: {{listen: '127.0.0.1:{http_port}', "
        "auth: {username: noc, password_file: http.pass}}\n"
        "data_dir: ./data\n",
        encoding="utf-8",
    )
    collector = start(
        [script("fieldmon-collector"), "run", "--config", config], tmp_path / "collector.log"
    )
    try:
        wait_subscribed(http_port, daemons=collector)
        client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        client.connect("127.0.0.1", mosquitto.port)
        client.loop_start()
        now = time.time_ns()
        for seq in range(4):  # four rounds, 10 s apart, ending now
            at = now - (3 - seq) * 10_000_000_000
            for site, loss in (("hall-a", 0.0), ("hall-b", 40.0)):
                client.publish(
                    f"fieldmon/v1/{site}/{site}-pi/samples", _round(site, seq, loss, at), qos=1
                ).wait_for_publish(5)
        client.publish(
            "fieldmon/v1/hall-a/hall-a-pi/samples", _interface("hall-a", 4, now), qos=1
        ).wait_for_publish(5)
        client.loop_stop()
        client.disconnect()
        wait_for(
            lambda: (
                _sites(http_port, password)["hall-b"]["state"] == "degraded"
                and _sites(http_port, password)["hall-b"]["services"][0]["state"] == "down"
            ),
            "hall-b judged degraded, its HIS down",
            20,
            daemons=collector,
        )
        # Only the services the site file names: the `ghost` rows show nowhere.
        services = {site: body["services"] for site, body in _sites(http_port, password).items()}
        assert {site: [s["name"] for s in rows] for site, rows in services.items()} == {  # type: ignore[union-attr]
            "hall-a": ["his"],
            "hall-b": ["his"],
        }
        assert services["hall-b"][0]["alerts"] == ["ServiceDown"]  # type: ignore[index]
        wait_for(
            lambda: _sites(http_port, password)["hall-a"]["interfaces"],
            "hall-a's interface row on the board",
            20,
            daemons=collector,
        )

        # The page's own fetches carry the credentials the browser was given for the page.
        url = f"http://noc:{password}@127.0.0.1:{http_port}/"
        dom, console = _chromium("--dump-dom", url, profile=tmp_path / "chromium-dom")
        assert "Content Security Policy" not in console, console
        assert 'data-site="hall-a" data-state="ok"' in dom
        assert 'data-site="hall-b" data-state="degraded"' in dom
        assert "LinkDegraded" in dom
        # A service row per service: its state, last run, duration, status and certificate.
        assert 'data-service="his" data-state="ok"' in dom
        assert 'data-service="his" data-state="down"' in dom
        assert "failed: refused" in dom and "41.2" in dom and "12.5 ms" in dom
        assert "ServiceDown his" in dom
        # The interface row shows the window (3.8 Mbit/s, 95 %), not the cached poll's 0.
        row = dom[dom.index('data-interface="router/wan0"') :].split("</tr>")[0]
        assert "3.8 Mbit/s" in row and 'data-util="95"' in row and "120 s" in row, row
        ARTIFACTS.mkdir(exist_ok=True)
        screenshot = ARTIFACTS / "status-page.png"
        screenshot.unlink(missing_ok=True)
        _chromium(
            f"--screenshot={screenshot}",
            "--window-size=1280,720",
            url,
            profile=tmp_path / "chromium-shot",
        )
        assert screenshot.stat().st_size > 10_000
    finally:
        collector.stop()


class _StrictPage(http.server.BaseHTTPRequestHandler):
    """A page whose inline script its policy does not allow (the hash is of something else)."""

    body = (
        b"<!doctype html><html><body><div id='x'>before</div>"
        b"<script>document.getElementById('x').textContent = 'ran';</script></body></html>"
    )

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header(
            "Content-Security-Policy",
            "default-src 'none'; script-src 'sha256-AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA='",
        )
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, *_args: object) -> None:
        pass  # quiet: the test reads Chromium's console, not the server's


def test_the_console_check_sees_what_a_policy_refuses(tmp_path: Path) -> None:
    # The status page test above asserts that Chromium reports no refusal; this shows it would.
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _StrictPage)
    thread = threading.Thread(target=server.serve_forever, name="strict-page", daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/"
        dom, console = _chromium("--dump-dom", url, profile=tmp_path / "chromium-strict")
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)
    assert ">before<" in dom  # the script did not run
    assert "Executing inline script violates the following Content Security Policy" in console
