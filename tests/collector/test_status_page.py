"""The status page in a real headless Chromium: every site shown, a degraded site turns amber."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from fieldmon.core.wire.codec import encode
from fieldmon.core.wire.models import Envelope, Sample
from fieldmon.lab.process import http_get, script, start, wait_for, wait_subscribed
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
]


def _site_file(folder: Path, site: str, port: int) -> None:
    (folder / f"{site}.yaml").write_text(
        f"site: {site}\nname: Hall {site}\nparent_hospital: central\n"
        f"agent: {{id: {site}-pi, broker: {{host: 127.0.0.1, port: {port}}}}}\n"
        "links:\n  - {name: parent-gw, address: 127.0.0.1, role: parent}\n",
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
    return encode(Envelope(site=site, agent=f"{site}-pi", seq=seq, sent_at=at_ns, samples=[sample]))


def _sites(http_port: int) -> dict[str, dict[str, object]]:
    _status, body = http_get(f"http://127.0.0.1:{http_port}/api/v1/sites")
    return {site["site"]: site for site in json.loads(body)["sites"]}


def _chromium(*args: str, profile: Path) -> str:
    binary = shutil.which("chromium")
    assert binary, "chromium is installed by scripts/setup.sh"
    result = subprocess.run(
        [binary, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args],
        capture_output=True,
        text=True,
        timeout=90,
        check=True,
    )
    return result.stdout


def test_status_page_shows_every_site_and_the_degraded_one(
    tmp_path: Path, mosquitto: MosquittoServer, influxd: InfluxdServer, influx_db: str
) -> None:
    sites = tmp_path / "site_configs"
    sites.mkdir()
    for site in ("hall-a", "hall-b"):
        _site_file(sites, site, mosquitto.port)
    http_port = free_port()
    config = tmp_path / "collector.yaml"
    config.write_text(
        f"broker: {{host: 127.0.0.1, port: {mosquitto.port}, client_id: page-collector}}\n"
        f'influxdb: {{api: v1, url: "{influxd.url}", database: {influx_db}}}\n'
        f"site_configs: ./site_configs\nhttp: {{listen: '127.0.0.1:{http_port}'}}\n"
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
        client.loop_stop()
        client.disconnect()
        wait_for(
            lambda: _sites(http_port)["hall-b"]["state"] == "degraded",
            "hall-b judged degraded",
            20,
            daemons=collector,
        )

        url = f"http://127.0.0.1:{http_port}/"
        dom = _chromium("--dump-dom", url, profile=tmp_path / "chromium-dom")
        assert 'data-site="hall-a" data-state="ok"' in dom
        assert 'data-site="hall-b" data-state="degraded"' in dom
        assert "LinkDegraded" in dom
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
