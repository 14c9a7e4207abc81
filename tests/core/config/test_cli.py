"""`fieldmon-agent validate` as the field engineer runs it: the installed console script."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from fieldmon.lab.process import script

REPO = Path(__file__).resolve().parents[3]
DATA = Path("tests") / "data" / "config"  # relative, as an engineer types it in the repo
GOOD = DATA / "valid-minimal.yaml"
BAD = DATA / "invalid-link-duration.yaml"
SCRIPT = script("fieldmon-agent")


def _validate(*files: Path) -> subprocess.CompletedProcess[str]:
    assert SCRIPT.is_file(), f"{SCRIPT} is not installed; run `bash scripts/setup.sh`"
    command = [str(SCRIPT), "validate", *map(str, files)]
    return subprocess.run(
        command, cwd=REPO, capture_output=True, text=True, check=False, timeout=120
    )


def test_good_file_exits_0_with_one_summary_line() -> None:
    result = _validate(GOOD)
    assert result.returncode == 0, result.stderr
    assert result.stdout == (
        f"OK  {GOOD}: site test-site (agent test-site-pi1), 1 link, 1 SNMP device\n"
    )
    assert result.stderr == ""


def test_bad_file_exits_1_naming_file_line_and_field() -> None:
    result = _validate(BAD)
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr.splitlines() == [
        f"{BAD}:11: links[0].interval: '10 sec' is not a duration; "
        "write it like 10s, 100ms, 5m, 1h or 1d",
        "1 of 1 file has problems",
    ]


def test_good_and_bad_together_exit_1_and_report_both() -> None:
    result = _validate(GOOD, BAD)
    assert result.returncode == 1
    assert result.stdout.startswith(f"OK  {GOOD}: ")
    assert f"{BAD}:11: links[0].interval: " in result.stderr
    assert result.stderr.splitlines()[-1] == "1 of 2 files has problems"


@pytest.mark.parametrize(
    ("target", "reason"),
    [(DATA / "no-such-site.yaml", "No such file or directory"), (DATA, "Is a directory")],
    ids=["missing", "directory"],
)
def test_unreadable_path_is_an_issue_not_a_traceback(target: Path, reason: str) -> None:
    result = _validate(target)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert result.stderr.splitlines()[0] == f"{target}: cannot read file: {reason}"


def test_validate_loads_no_probe_and_no_probing_library() -> None:
    """`validate` needs the site schema (core) only: no scapy, pysnmp or psutil to start up."""
    code = (
        "import sys\n"
        "from fieldmon.agent.cli import main\n"
        f"status = main(['validate', {str(GOOD)!r}])\n"
        "heavy = {name.split('.')[0] for name in sys.modules} & {'scapy', 'pysnmp', 'psutil'}\n"
        "probes = [name for name in sys.modules if name.startswith('fieldmon.agent.probes')]\n"
        "print(status, sorted(heavy), probes)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=False
    )
    assert result.stdout.splitlines()[-1] == "0 [] []", result.stdout + result.stderr
