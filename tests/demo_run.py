"""One run of `fieldmon-lab demo` for the whole session: tests/lab/test_demo.py reads what it
printed, tests/dashboards/ queries what it left in InfluxDB. The demo takes well over a minute;
running it once for both halves the suite's longest wait.

With several workers (pytest-xdist), both modules are in one group, so on one worker: they share
one run too (tests/conftest.py).
"""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from fieldmon.lab.demo import LAB_STEM
from fieldmon.lab.process import script

# Long enough for the collector's first `agent` rows (written once a minute), for the HIS to be
# slow, then failing, then healed, and for the parent link, degraded and cut, to page and resolve.
DEMO_SECONDS = 80


@dataclass(frozen=True)
class DemoRun:
    """What one `fieldmon-lab demo` printed and where its data stayed."""

    data_dir: Path
    returncode: int
    stdout: str
    stderr: str
    lab: str  # the lab the demo brought up: its namespaces are `fm-lab.LAB.*`

    def failure(self) -> str:
        return self.stdout[-3000:] + self.stderr[-3000:]


@pytest.fixture(scope="session")
def demo_run(tmp_path_factory: pytest.TempPathFactory) -> DemoRun:
    """Run the demo once (needs root: it creates namespaces and raw sockets)."""
    assert os.geteuid() == 0, "the lab demo creates namespaces and raw sockets (needs root)"
    data_dir = tmp_path_factory.mktemp("demo")
    with subprocess.Popen(
        [script("fieldmon-lab"), "demo", "--duration", str(DEMO_SECONDS),
         "--data-dir", str(data_dir)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "COLUMNS": "160"},
    ) as demo:  # fmt: skip
        try:
            stdout, stderr = demo.communicate(timeout=DEMO_SECONDS + 120)
        finally:
            if demo.poll() is None:
                demo.kill()
    return DemoRun(data_dir, demo.returncode, stdout, stderr, lab=f"{LAB_STEM}{demo.pid}")
