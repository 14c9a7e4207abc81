"""CAP_NET_RAW is the agent's alone: run with the unit's user, groups and capabilities (setpriv),
the agent pings over raw sockets, and the vcgencmd it starts has no capability left and cannot
open a raw socket, while it keeps the `video` group it needs."""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from fieldmon.agent.capabilities import CAP_NET_RAW, capability_sets
from fieldmon.lab.process import closed_to_others, script, start, wait_for
from fieldmon.lab.sitefiles import loopback_site
from fieldmon.lab.systemd import setpriv_command

UNIT = Path(__file__).resolve().parents[2] / "deploy" / "systemd" / "fieldmon-agent.service"
NOBODY = 65534
VIDEO_GID = 44  # Debian's `video` group

pytestmark = [
    pytest.mark.skipif(
        os.geteuid() != 0 or shutil.which("setpriv") is None, reason="needs root and setpriv"
    ),
    pytest.mark.skipif(
        (closed := closed_to_others(Path(sys.prefix))) is not None,
        reason=f"runs this checkout as nobody, but {closed} is closed to others (chmod o+x it)",
    ),
]

# Stands in for vcgencmd: records what it was started with, then answers like the real one.
# Debian's python3, which any user may run (this venv's interpreter may live under /root).
FAKE_VCGENCMD = """#!/usr/bin/python3
import json, os, socket, sys
caps = {}
for line in open("/proc/self/status"):
    key, _, value = line.partition(":")
    if key.startswith("Cap") or key == "Groups":
        caps[key] = value.strip()
try:
    socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP).close()
    raw = "opened"
except PermissionError:
    raw = "refused"
with open(os.environ["FAKE_VCGENCMD_REPORT"], "a") as report:
    report.write(json.dumps({"status": caps, "raw_socket": raw}) + "\\n")
print("throttled=0x0" if sys.argv[1] == "get_throttled" else "temp=41.0'C")
"""


@pytest.fixture
def workdir() -> Iterator[Path]:
    """A directory the unprivileged agent can reach (pytest's tmp_path is root's alone)."""
    directory = Path(tempfile.mkdtemp(prefix="fm-caps-"))
    directory.chmod(0o755)
    try:
        yield directory
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def _site(directory: Path) -> Path:
    state = directory / "state"
    state.mkdir()
    os.chown(state, NOBODY, NOBODY)
    path = loopback_site(directory, outbox=state / "outbox.db")
    path.chmod(0o644)
    return path


def _log_records(text: str) -> list[dict[str, object]]:
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


def test_the_agent_keeps_cap_net_raw_and_its_children_get_none(workdir: Path) -> None:
    bin_dir = workdir / "bin"
    bin_dir.mkdir(mode=0o755)
    fake = bin_dir / "vcgencmd"
    fake.write_text(FAKE_VCGENCMD, encoding="utf-8")
    fake.chmod(0o755)
    report = workdir / "children.jsonl"
    report.touch()
    os.chown(report, NOBODY, NOBODY)
    env = {
        **os.environ,
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
        "FAKE_VCGENCMD_REPORT": str(report),
    }
    command = setpriv_command(UNIT, [script("fieldmon-agent"), "run", "--config", _site(workdir)])
    agent = start(command, workdir / "agent.log", env=env)
    try:
        children = wait_for(
            lambda: [json.loads(line) for line in report.read_text().splitlines()],
            "the agent to start vcgencmd",
            60,
            daemons=agent,
        )
        own = capability_sets(Path(f"/proc/{agent.pid}/status"))
        records = _log_records(agent.output())
        assert agent.stop() == 0, agent.tail()
    finally:
        agent.stop()
    # The agent itself: CAP_NET_RAW effective, nothing left to hand on.
    assert own["CapEff"] == own["CapPrm"] == 1 << CAP_NET_RAW
    assert own["CapAmb"] == own["CapInh"] == 0
    [ready] = [r for r in records if r["msg"] == "ICMP sockets ready"]
    assert ready["mode"] == "raw"
    [kept] = [r for r in records if str(r["msg"]).startswith("capabilities kept to the agent")]
    assert kept["net_raw"] is True
    # Its child: no capability in any set, no raw socket, but the video group for /dev/vchiq.
    for child in children:
        status = child["status"]
        assert [status[key] for key in ("CapInh", "CapPrm", "CapEff", "CapAmb")] == ["0" * 16] * 4
        assert child["raw_socket"] == "refused"
        assert str(VIDEO_GID) in status["Groups"].split()
