"""The daemons serve inside the shipped units' system-call filter, socket families and
MemoryDenyWriteExecute (applied without systemd by fieldmon.lab.sandbox)."""

from __future__ import annotations

import ctypes.util
import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from fieldmon.lab.process import http_get, script, start, wait_for
from fieldmon.lab.sandbox import sandbox_command
from fieldmon.lab.servers import MosquittoServer, free_port
from fieldmon.lab.sitefiles import loopback_site
from fieldmon.lab.systemd import NotifyListener

UNITS = Path(__file__).resolve().parents[2] / "deploy" / "systemd"
AGENT, COLLECTOR = UNITS / "fieldmon-agent.service", UNITS / "fieldmon-collector.service"


def _kernel_has_mdwe() -> bool:
    release = platform.release().split("-")[0].split(".")
    return tuple(int(part) for part in release[:2] if part.isdigit()) >= (6, 3)


pytestmark = pytest.mark.skipif(
    shutil.which("systemd-analyze") is None
    or ctypes.util.find_library("seccomp") is None
    or not _kernel_has_mdwe(),
    reason="needs systemd-analyze, libseccomp and Linux 6.3+ (PR_SET_MDWE)",
)


def _python_in(unit: Path, code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        sandbox_command(unit, [sys.executable, "-c", code]),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_the_sandbox_refuses_what_the_unit_refuses() -> None:
    """The control: without it, the daemons' runs below would prove nothing."""
    allowed = _python_in(AGENT, "import socket; socket.socket(socket.AF_NETLINK, socket.SOCK_RAW)")
    assert allowed.returncode == 0, allowed.stderr
    packet = _python_in(AGENT, "import socket; socket.socket(socket.AF_PACKET, socket.SOCK_RAW)")
    assert packet.returncode == 1
    assert "PermissionError" in packet.stderr
    netlink = _python_in(COLLECTOR, "import socket; socket.socket(socket.AF_NETLINK, 3)")
    assert "PermissionError" in netlink.stderr
    jit = _python_in(AGENT, "import mmap; mmap.mmap(-1, 4096, prot=7)")  # read, write, exec
    assert "PermissionError" in jit.stderr
    setuid = _python_in(AGENT, "import os; os.setuid(0)")  # ~@privileged
    assert "PermissionError" in setuid.stderr


def test_the_agent_probes_and_feeds_its_watchdog_inside_the_units_filters(
    tmp_path: Path,
) -> None:
    config = loopback_site(tmp_path, outbox=tmp_path / "outbox.db")
    listener = NotifyListener()
    env = {**os.environ, **listener.environment(watchdog_s=1.5)}
    command = sandbox_command(AGENT, [script("fieldmon-agent"), "run", "--config", config])
    agent = start(command, tmp_path / "agent.log", env=env)
    try:
        wait_for(lambda: listener.with_field("READY", "1"), "READY=1", 60, daemons=agent)
        # Fed only while every probe finishes its runs: the ICMP round and the host probe work.
        wait_for(lambda: len(listener.pings()) >= 6, "watchdog pings", 15, daemons=agent)
        assert agent.stop() == 0, agent.tail()
    finally:
        agent.stop()
        listener.close()
    output = agent.output()
    assert "sandbox of fieldmon-agent.service:" in output
    assert '"mode": "raw"' in output
    assert '"level": "error"' not in output


@pytest.mark.integration
def test_the_collector_serves_inside_the_units_filters(
    tmp_path: Path, mosquitto: MosquittoServer
) -> None:
    (tmp_path / "site_configs").mkdir()
    port = free_port()
    config = tmp_path / "collector.yaml"
    config.write_text(
        f"broker: {{host: 127.0.0.1, port: {mosquitto.port}, client_id: sandboxed}}\n"
        f'influxdb: {{api: v1, url: "http://127.0.0.1:{free_port()}", database: fieldmon}}\n'
        f"site_configs: ./site_configs\nhttp: {{listen: '127.0.0.1:{port}'}}\ndata_dir: ./data\n",
        encoding="utf-8",
    )
    listener = NotifyListener()
    env = {**os.environ, **listener.environment(watchdog_s=1.5)}
    command = sandbox_command(COLLECTOR, [script("fieldmon-collector"), "run", "--config", config])
    collector = start(command, tmp_path / "collector.log", env=env)
    try:
        wait_for(lambda: listener.with_field("READY", "1"), "READY=1", 60, daemons=collector)
        status, body = http_get(f"http://127.0.0.1:{port}/healthz")
        wait_for(lambda: len(listener.pings()) >= 3, "watchdog pings", 10, daemons=collector)
        assert collector.stop() == 0, collector.tail()
    finally:
        collector.stop()
        listener.close()
    assert status == 200, body
    assert "sandbox of fieldmon-collector.service:" in collector.output()
