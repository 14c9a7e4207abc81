"""The shipped systemd units: hardened (systemd-analyze security), valid (systemd-analyze
verify), and saying what the daemons rely on."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from fieldmon.lab.systemd import unit_settings

REPO = Path(__file__).resolve().parents[2]
UNITS = REPO / "deploy" / "systemd"
AGENT, COLLECTOR = UNITS / "fieldmon-agent.service", UNITS / "fieldmon-collector.service"
# Where the units expect the installed venv (the offline bundle installs it there).
INSTALLED_BIN = "/opt/fieldmon/.venv/bin/"
MAX_EXPOSURE = 2.5
OVERALL = re.compile(r"Overall exposure level for (\S+): (\d+\.\d+) (\w+)")

needs_analyze = pytest.mark.skipif(
    shutil.which("systemd-analyze") is None, reason="needs systemd-analyze"
)


def exposure(unit: Path) -> float:
    """The unit's overall exposure, as `systemd-analyze security --offline=yes` scores it."""
    completed = subprocess.run(
        ["systemd-analyze", "security", "--offline=yes", "--no-pager", str(unit)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    match = OVERALL.search(completed.stdout + completed.stderr)
    assert match is not None, completed.stdout + completed.stderr
    assert match.group(1) == unit.name
    return float(match.group(2))


@needs_analyze
@pytest.mark.parametrize("unit", [AGENT, COLLECTOR], ids=lambda u: u.stem)
def test_the_unit_is_hardened_and_the_readme_gives_its_score(unit: Path) -> None:
    score = exposure(unit)
    assert score <= MAX_EXPOSURE
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    assert f"`{unit.name}`: **{score:.1f}**" in readme, "README: the exposure score is stale"


@needs_analyze
def test_the_units_and_their_credential_drop_ins_pass_verify(tmp_path: Path) -> None:
    """`verify` checks that ExecStart= exists: the copies start this checkout's console scripts
    (the same venv layout as /opt/fieldmon); every other line is the shipped one. Secrets come
    in a drop-in of LoadCredential= lines (the bundle's install.sh writes it): each example the
    unit gives is checked there too."""
    copies = []
    for unit in (AGENT, COLLECTOR):
        text = unit.read_text(encoding="utf-8")
        assert INSTALLED_BIN in text
        copy = tmp_path / unit.name
        copy.write_text(text.replace(INSTALLED_BIN, f"{Path(sys.executable).parent}/"))
        credentials = [
            line[1:] for line in text.splitlines() if line.startswith("#LoadCredential=")
        ]
        assert credentials, f"{unit.name} names no credential"
        drop_in = tmp_path / f"{unit.name}.d" / "credentials.conf"
        drop_in.parent.mkdir()
        drop_in.write_text("[Service]\n" + "\n".join(credentials) + "\n", encoding="utf-8")
        copies.append(str(copy))
    completed = subprocess.run(
        ["systemd-analyze", "verify", *copies],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    # Unknown or misspelt settings are only warnings: a clean verify says nothing at all.
    assert (completed.returncode, completed.stdout, completed.stderr) == (0, "", "")


@pytest.mark.parametrize("unit", [AGENT, COLLECTOR], ids=lambda u: u.stem)
def test_notify_watchdog_memory_and_a_state_directory_as_the_only_writable_place(
    unit: Path,
) -> None:
    settings = unit_settings(unit)
    assert settings["Type"] == ["notify"]
    assert settings["NotifyAccess"] == ["main"]
    assert float(settings["WatchdogSec"][0]) >= 30
    assert settings["MemoryMax"]
    assert settings["ProtectSystem"] == ["strict"]
    assert len(settings["StateDirectory"]) == 1
    # The state directory is writable (and the agent's hooks' runtime directory), nothing else.
    assert "ReadWritePaths" not in settings
    assert settings["NoNewPrivileges"] == ["yes"]


def test_only_the_agent_gets_cap_net_raw_and_the_video_group() -> None:
    agent, collector = unit_settings(AGENT), unit_settings(COLLECTOR)
    assert agent["AmbientCapabilities"] == ["CAP_NET_RAW"]
    assert agent["CapabilityBoundingSet"] == ["CAP_NET_RAW"]
    assert agent["SupplementaryGroups"] == ["video"]
    assert agent["StateDirectory"] == ["fieldmon"]  # /var/lib/fieldmon: the outbox's default
    # The agent clears its inheritable set with capset; so does the hook runner in each child.
    assert agent["SystemCallFilter"][-1] == "capset"
    assert collector["CapabilityBoundingSet"] == []
    assert collector["AmbientCapabilities"] == []
    assert "SupplementaryGroups" not in collector
    assert collector["StateDirectory"] == ["fieldmon-collector"]
