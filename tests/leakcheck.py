"""No secret in any log: a pytest plugin that fails a test, or the session, that leaks one.

The secrets are every value the tests wrote with `fieldmon.lab.secretfiles` (passwords, tokens,
communities, webhook secrets; fresh random ones by default) and the repository's example and test
secret files. Where it looks:
- per test, at its teardown: everything pytest captured for it (stdout, stderr, log lines of
  setup, call and teardown), every log record it emitted with its `extra` fields and traceback
  (pytest's log lines show only the message), and every `*.log` file under its `tmp_path` (the
  daemons' logs);
- at the end of the session: every `*.log` file under the session's temporary folder (servers and
  daemons of session fixtures, folders from `tmp_path_factory`).
A leak fails the test (or the session's exit status) and names where it was found; the secret
itself is never printed, only its first characters.

tests/test_leakcheck.py runs this plugin on planted leaks in a pytest of its own.
"""

from __future__ import annotations

import logging
import traceback
from collections.abc import Generator, Iterable
from pathlib import Path

import pytest

from fieldmon.lab.secretfiles import written_secrets

REPO = Path(__file__).resolve().parents[1]
# Secret files kept in the repository: the examples' placeholders and the tests' own data.
SECRET_FOLDERS = (
    REPO / "deploy" / "secrets",
    REPO / "site_configs" / "secrets",
    REPO / "tests" / "data" / "config" / "secrets",
)
# Shorter values would match ordinary words ("x", "right"); test secrets are longer on purpose.
MIN_LENGTH = 8
LOG_GLOB = "*.log"

_session_leaks: list[str] = []
_basetemp: list[Path] = []
# Attributes every LogRecord has; the others came from `extra=`.
_STANDARD_ATTRS = frozenset(vars(logging.makeLogRecord({}))) | {"message", "asctime"}


class _Records(logging.Handler):
    """Keeps every record that reaches the root logger during one test."""

    def __init__(self) -> None:
        super().__init__(logging.NOTSET)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


_RECORDS = pytest.StashKey[_Records]()


def record_text(record: logging.LogRecord) -> str:
    """The message, every `extra` field and the traceback of a record."""
    try:
        parts = [record.getMessage()]
    except (TypeError, ValueError):
        parts = [str(record.msg), repr(record.args)]
    parts += [f"{k}={v!r}" for k, v in vars(record).items() if k not in _STANDARD_ATTRS]
    if record.exc_info and record.exc_info[1] is not None:
        parts.append("".join(traceback.format_exception(record.exc_info[1])))
    return "\n".join(parts)


def repository_secrets() -> set[str]:
    """The content of every secret file kept in the repository."""
    found = set()
    for folder in SECRET_FOLDERS:
        for path in sorted(folder.glob("*")):
            if path.is_file() and path.suffix != ".md":
                found.add(path.read_text(encoding="utf-8").strip())
    return found


_REPOSITORY_SECRETS = repository_secrets()


def known_secrets() -> set[str]:
    """Every secret a log must not carry, as of now."""
    return {s for s in _REPOSITORY_SECRETS | written_secrets() if len(s) >= MIN_LENGTH}


def _shown(secret: str) -> str:
    return f"{secret[:4]}... ({len(secret)} characters)"


def _masked(text: str, secrets: Iterable[str]) -> str:
    for secret in secrets:
        text = text.replace(secret, _shown(secret))
    return text


def leaks_in(text: str, where: str, secrets: Iterable[str]) -> list[str]:
    """One line per secret found in `text`, naming `where` and the line number."""
    found = []
    for secret in secrets:
        index = text.find(secret)
        if index >= 0:
            line = text.count("\n", 0, index) + 1
            found.append(f"{where}, line {line}: the secret {_shown(secret)}")
    return found


def leaks_in_files(folder: Path, secrets: Iterable[str]) -> list[str]:
    """Leaks in every `*.log` file under `folder`."""
    secrets = list(secrets)
    found = []
    for path in sorted(folder.rglob(LOG_GLOB)):
        if path.is_file():
            text = path.read_text(encoding="utf-8", errors="replace")
            found.extend(leaks_in(text, str(path), secrets))
    return found


@pytest.fixture(autouse=True, scope="session")
def _leakcheck_basetemp(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Remember the session's temporary folder for the scan at the end of the session."""
    _basetemp.append(tmp_path_factory.getbasetemp())


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    handler = _Records()
    item.stash[_RECORDS] = handler
    logging.getLogger().addHandler(handler)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    if report.when != "teardown":
        return report
    secrets = known_secrets()
    leaks = []
    for title, content in report.sections:
        leaks.extend(leaks_in(content, title, secrets))
    handler = item.stash.get(_RECORDS, None)
    if handler is not None:
        logging.getLogger().removeHandler(handler)
        for record in handler.records:
            where = f"log record of {record.name} ({record.levelname})"
            leaks.extend(leaks_in(record_text(record), where, secrets))
    tmp_path = getattr(item, "funcargs", {}).get("tmp_path")
    if isinstance(tmp_path, Path) and tmp_path.is_dir():
        leaks.extend(leaks_in_files(tmp_path, secrets))
    if leaks:
        report.outcome = "failed"
        report.longrepr = "a secret appears in a log:\n  " + "\n  ".join(leaks)
        # pytest shows a failed report's captured output: masked, or the report leaks it again.
        report.sections = [(title, _masked(content, secrets)) for title, content in report.sections]
    return report


@pytest.hookimpl(tryfirst=True)
def pytest_sessionfinish(session: pytest.Session) -> None:
    for folder in _basetemp:
        if folder.is_dir():
            _session_leaks.extend(leaks_in_files(folder, known_secrets()))
    if _session_leaks:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if _session_leaks:
        terminalreporter.section("secrets in logs", sep="=", red=True)
        for leak in _session_leaks:
            terminalreporter.write_line(leak)
