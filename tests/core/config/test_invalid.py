"""The table of broken site files: each invalid-*.yaml with the issues its .expected names."""

from __future__ import annotations

import io
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from fieldmon.core.config.errors import ConfigError
from fieldmon.core.site.config import load_site_config
from fieldmon.core.site.validate import validate_site_files

DATA = Path(__file__).resolve().parents[2] / "data" / "config"
CASES = sorted(DATA.glob("invalid-*.yaml"))


@dataclass(frozen=True)
class Expected:
    line: int | None
    path: str
    message: str  # a substring of the issue's message


def _expected(case: Path) -> list[Expected]:
    """Blocks of `line:`, `path:`, `message:` lines; `-` means none."""
    text = case.with_suffix(".expected").read_text(encoding="utf-8")
    expected = []
    for block in text.strip().split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.strip().splitlines())
        expected.append(
            Expected(
                line=None if fields["line"] == "-" else int(fields["line"]),
                path="" if fields["path"] == "-" else fields["path"],
                message=fields["message"],
            )
        )
    return expected


def _rendered(case: Path, expected: Expected) -> str:
    """The start of the `FILE:LINE: FIELD.PATH: message` line the engineer must see."""
    where = f"{case}:{expected.line}" if expected.line else str(case)
    field = f" {expected.path}:" if expected.path else ""
    return f"{where}:{field} "


def test_table_is_complete() -> None:
    assert len(CASES) >= 15
    for case in CASES:
        assert case.with_suffix(".expected").is_file(), f"{case.name} has no .expected file"
    for expected in DATA.glob("invalid-*.expected"):
        assert expected.with_suffix(".yaml").is_file(), f"{expected.name} has no .yaml file"


@pytest.mark.parametrize("case", CASES, ids=lambda case: case.stem)
def test_load_reports_the_expected_issues(case: Path) -> None:
    with pytest.raises(ConfigError) as raised:
        load_site_config(case)
    issues = raised.value.issues
    expected = _expected(case)
    assert [(issue.line, issue.path) for issue in issues] == [
        (item.line, item.path) for item in expected
    ], "\n".join(map(str, issues))
    for issue, item in zip(issues, expected, strict=True):
        assert issue.file == case
        assert item.message in issue.message
        assert str(issue).startswith(_rendered(case, item))
        assert "Value error" not in issue.message  # pydantic's wording is not for engineers


@pytest.mark.parametrize("case", CASES, ids=lambda case: case.stem)
def test_validate_prints_each_issue_on_one_line(case: Path) -> None:
    out, err = io.StringIO(), io.StringIO()
    assert validate_site_files([case], out, err) == 1
    assert out.getvalue() == ""
    lines = err.getvalue().splitlines()
    expected = _expected(case)
    assert len(lines) == len(expected) + 1  # plus the summary
    for line, item in zip(lines, expected, strict=False):
        assert line.startswith(_rendered(case, item))
        assert item.message in line
    assert lines[-1] == "1 of 1 file has problems"


def test_cli_reports_every_broken_file_without_a_traceback() -> None:
    good = DATA / "valid-minimal.yaml"
    command = [sys.executable, "-m", "fieldmon.agent.cli", "validate", str(good)]
    result = subprocess.run(
        [*command, *map(str, CASES)],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
        cwd=DATA.parents[2],  # the repository
    )
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert result.stdout.startswith(f"OK  {good}: site test-site")
    for case in CASES:
        assert f"{case}:" in result.stderr
    assert result.stderr.splitlines()[-1] == f"{len(CASES)} of {len(CASES) + 1} files have problems"
