"""tests/leakcheck.py catches planted leaks: each case runs its own pytest with the plugin."""

from __future__ import annotations

from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
PLANTED = """
import logging
from pathlib import Path

import pytest

from fieldmon.core.redact import redact_url
from fieldmon.lab.secretfiles import write_secret


def test_logs_a_secret(tmp_path: Path) -> None:
    token = write_secret(tmp_path / "token")
    logging.getLogger("fieldmon.planted").warning("sending with %s", token)
    assert token


def test_logs_a_secret_in_an_extra_field(tmp_path: Path) -> None:
    token = write_secret(tmp_path / "token")
    logging.getLogger("fieldmon.planted").error("delivery failed", extra={"url": f"h/{token}"})
    assert token


def test_prints_a_secret(tmp_path: Path) -> None:
    print("password:", write_secret(tmp_path / "password"))
    assert True


def test_a_daemon_logs_a_secret(tmp_path: Path) -> None:
    password = write_secret(tmp_path / "mqtt.pass")
    (tmp_path / "agent.log").write_text(f'{{"msg": "login with {password}"}}\\n')
    assert password


@pytest.fixture(scope="session")
def session_server(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("server")


def test_a_session_server_logs_a_secret(session_server: Path, tmp_path: Path) -> None:
    password = write_secret(tmp_path / "server.pass")
    (session_server / "server.log").write_text(f"user fieldmon password {password}\\n")
    assert password


def test_logs_only_redacted_urls(tmp_path: Path) -> None:
    token = write_secret(tmp_path / "token")
    url = f"https://hooks.example.org/services/{token}"
    logging.getLogger("fieldmon.planted").warning("POST %s failed", redact_url(url))
    (tmp_path / "collector.log").write_text(f"POST {redact_url(url)} failed\\n")
    assert token not in redact_url(url)
"""


@pytest.fixture
def planted(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> pytest.Pytester:
    pytester.makepyfile(test_planted=PLANTED)
    monkeypatch.setenv("PYTHONPATH", str(TESTS))  # the subprocess imports leakcheck from here
    return pytester


def _run(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    # A process of its own: the secrets it writes are never known to this session.
    return pytester.runpytest_subprocess("-p", "leakcheck", "-p", "no:cacheprovider", *args)


@pytest.mark.parametrize(
    ("test", "where"),
    [
        ("test_logs_a_secret", "Captured log call"),
        ("test_logs_a_secret_in_an_extra_field", "log record of fieldmon.planted (ERROR)"),
        ("test_prints_a_secret", "Captured stdout call"),
        ("test_a_daemon_logs_a_secret", "agent.log, line 1"),
    ],
)
def test_a_leak_fails_its_test_and_says_where(
    planted: pytest.Pytester, test: str, where: str
) -> None:
    result = _run(planted, f"test_planted.py::{test}")
    result.assert_outcomes(passed=1, errors=1)  # the test passed; its teardown found the leak
    result.stdout.fnmatch_lines(
        ["*a secret appears in a log:*", f"*{where}*: the secret test... (* characters)"]
    )


def test_a_leak_in_a_session_folder_fails_the_session(planted: pytest.Pytester) -> None:
    result = _run(planted, "test_planted.py::test_a_session_server_logs_a_secret")
    result.assert_outcomes(passed=1)
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines(
        ["*secrets in logs*", "*server.log, line 1: the secret test... (* characters)"]
    )


def test_redacted_logs_pass_and_the_secret_is_never_printed(planted: pytest.Pytester) -> None:
    result = _run(planted, "test_planted.py::test_logs_only_redacted_urls")
    result.assert_outcomes(passed=1)
    assert result.ret == pytest.ExitCode.OK
    leaked = _run(planted, "test_planted.py::test_logs_a_secret")
    # The report names the secret by its first characters only: the report is a log too.
    assert "(35 characters)" in leaked.stdout.str()
    assert not any(
        len(word) > 20 and word.startswith("test-token-") for word in leaked.stdout.str().split()
    )
