"""The README's demo command runs the whole pipeline and shows what reached InfluxDB."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [
    pytest.mark.integration,
    pytest.mark.netns,
    pytest.mark.skipif(os.geteuid() != 0, reason="the lab creates namespaces and raw sockets"),
]


def test_demo_runs_end_to_end_and_tears_down(tmp_path: Path) -> None:
    before = set(
        subprocess.run(
            ["ip", "netns", "list"], capture_output=True, text=True, check=True
        ).stdout.split()
    )
    result = subprocess.run(
        [str(Path(sys.executable).parent / "fieldmon-lab"), "demo", "--duration", "16",
         "--data-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
        env={**os.environ, "COLUMNS": "120"},
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    summary = result.stdout[result.stdout.index("What the demo wrote") :]
    for link in ("parent-gw", "internet", "site-gateway"):
        assert link in summary
    assert "parent link 30 % loss" in result.stdout
    # Every row count in the summary is positive: data reached InfluxDB for every link.
    counts = [
        int(cells[1])
        for line in summary.splitlines()
        if (cells := [c.strip() for c in line.split("│") if c.strip()]) and len(cells) == 4
        and cells[1].isdigit()
    ]  # fmt: skip
    assert len(counts) == 3 and min(counts) >= 1, summary
    after = set(
        subprocess.run(
            ["ip", "netns", "list"], capture_output=True, text=True, check=True
        ).stdout.split()
    )
    assert not {name for name in after - before if name.startswith("fm-demo-")}
