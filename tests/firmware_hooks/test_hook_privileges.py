"""A hook run by an agent that holds CAP_NET_RAW in its ambient set (as the agent's systemd unit
gives it) has no capability at all, and no_new_privs.

The runner runs as `nobody` under `setpriv` with CAP_NET_RAW raised into its ambient set; the
hook prints its own /proc status lines. The control run spawns the same hook with a plain
subprocess from the same process, and shows the capability would otherwise be inherited.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from fieldmon.lab.process import closed_to_others

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="setpriv --reuid needs root"),
    pytest.mark.skipif(shutil.which("setpriv") is None, reason="needs util-linux setpriv"),
    pytest.mark.skipif(
        (closed := closed_to_others(Path(sys.prefix))) is not None,
        reason=f"runs this checkout as nobody, but {closed} is closed to others (chmod o+x it)",
    ),
]
NET_RAW = 1 << 13  # CAP_NET_RAW's bit in the /proc/PID/status masks

PROGRAM = """
import asyncio, json, subprocess, sys
from pathlib import Path
from fieldmon.lab.process import closed_to_others
from fieldmon.firmware_hooks.hooks import EventName, HookEvent, run_hook

def status(text):
    return dict(line.split(":", 1) for line in text.splitlines() if ":" in line)

hook = Path(sys.argv[1])
event = HookEvent(EventName.BOOT, "s", "a", 1)
run = asyncio.run(run_hook(hook, event, time_limit=10))
plain = subprocess.run([str(hook)], capture_output=True, text=True, check=True).stdout
print(json.dumps({
    "runner": status(Path("/proc/self/status").read_text()),
    "hook": status(run.stdout),
    "plain": status(plain),
    "problem": run.error or run.refused,
}))
"""

HOOK = """#!/bin/sh
while read -r line; do
  case "$line" in Cap*|NoNewPrivs*|Uid*) echo "$line" ;; esac
done < /proc/$$/status
"""


@pytest.fixture
def hook() -> Iterator[Path]:
    """A root-owned hook in a directory `nobody` can enter (pytest's tmp_path is root's only)."""
    directory = Path(tempfile.mkdtemp(prefix="fm-hook-caps-"))
    try:
        directory.chmod(0o755)
        path = directory / "10-caps"
        path.write_text(HOOK, encoding="ascii")
        path.chmod(0o755)
        yield path
    finally:
        shutil.rmtree(directory)


def _mask(status: dict[str, str], key: str) -> int:
    return int(status[key].strip(), 16)


def test_a_hook_gets_none_of_the_agent_s_ambient_capabilities(hook: Path) -> None:
    completed = subprocess.run(
        [
            "setpriv",
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--inh-caps=+net_raw",
            "--ambient-caps=+net_raw",
            "--",
            sys.executable,
            "-c",
            PROGRAM,
            str(hook),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr
    seen = json.loads(completed.stdout)
    assert seen["problem"] is None
    runner, in_hook, plain = seen["runner"], seen["hook"], seen["plain"]
    # The runner is what the agent is under its unit: nobody, CAP_NET_RAW ambient and effective.
    assert runner["Uid"].split()[0] == "65534"
    assert _mask(runner, "CapAmb") == NET_RAW
    assert _mask(runner, "CapEff") & NET_RAW
    # Control: a child spawned without the runner inherits it.
    assert _mask(plain, "CapAmb") == NET_RAW
    assert _mask(plain, "CapEff") & NET_RAW
    # The hook: nothing, and nothing to gain.
    assert in_hook["Uid"].split()[0] == "65534"
    for key in ("CapAmb", "CapEff", "CapPrm", "CapInh"):
        assert _mask(in_hook, key) == 0, (key, in_hook)
    assert in_hook["NoNewPrivs"].strip() == "1"


def test_a_root_agent_s_hooks_are_root_without_ambient_or_inheritable_capabilities(
    hook: Path,
) -> None:
    # As NetworkManager's dispatcher.d: a root agent's hooks are root (the LTE failover hook
    # changes routes), but nothing ambient or inheritable, and no new privileges.
    completed = subprocess.run(
        ["setpriv", "--inh-caps=+net_raw", "--ambient-caps=+net_raw", "--", sys.executable,
         "-c", PROGRAM, str(hook)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert completed.returncode == 0, completed.stderr
    seen = json.loads(completed.stdout)
    assert _mask(seen["plain"], "CapAmb") == NET_RAW
    in_hook = seen["hook"]
    assert in_hook["Uid"].split()[0] == "0"
    assert _mask(in_hook, "CapAmb") == 0
    assert _mask(in_hook, "CapInh") == 0
    assert _mask(in_hook, "CapEff") & NET_RAW  # root's own
    assert in_hook["NoNewPrivs"].strip() == "1"
