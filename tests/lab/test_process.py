"""fieldmon.lab.process: daemons stopped by their PID, waits that say why they gave up."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest

from fieldmon.lab.process import WaitError, closed_to_others, script, start, wait_for

# Ignores SIGTERM, says so, then sleeps: only SIGKILL ends it.
STUBBORN = (
    "import signal, sys, time\n"
    "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
    "print('ignoring SIGTERM', flush=True)\n"
    "time.sleep(60)\n"
)


def test_stop_kills_a_process_that_ignores_sigterm(tmp_path: Path) -> None:
    daemon = start([sys.executable, "-c", STUBBORN], tmp_path / "stubborn.log")
    wait_for(lambda: "ignoring SIGTERM" in daemon.output(), "the process to start", 10)
    assert daemon.stop(timeout=0.5) == -9
    assert not daemon.running()


def test_a_clean_exit_returns_its_code_and_output_is_this_runs_only(tmp_path: Path) -> None:
    log = tmp_path / "shared.log"
    first = start([sys.executable, "-c", "print('first run')"], log)
    assert first.wait(10) == 0
    second = start([sys.executable, "-c", "print('second run')"], log)
    assert second.wait(10) == 0
    assert second.output() == "second run\n"
    assert "first run" in second.tail() and "second run" in second.tail()


def test_a_watched_daemon_that_exits_ends_the_wait_with_its_log(tmp_path: Path) -> None:
    daemon = start(
        [sys.executable, "-c", "print('cannot bind 127.0.0.1:8480'); raise SystemExit(2)"],
        tmp_path / "failing.log",
    )
    started = time.monotonic()
    with pytest.raises(WaitError) as failure:
        wait_for(lambda: False, "the HTTP listener", 30, daemons=daemon)
    assert time.monotonic() - started < 10  # not the 30 s timeout
    message = str(failure.value)
    assert "exited with 2 while waiting for the HTTP listener" in message
    assert "cannot bind 127.0.0.1:8480" in message


def test_a_timeout_names_what_it_waited_for_and_the_last_error() -> None:
    def refused() -> bool:
        raise ConnectionRefusedError("connection refused")

    with pytest.raises(WaitError, match=r"timed out after 0.3s waiting for /healthz") as failure:
        wait_for(refused, "/healthz", 0.3)
    assert "connection refused" in str(failure.value)


def test_wait_for_returns_the_predicates_value() -> None:
    answers = iter([None, [], {"rows": 1}])
    assert wait_for(lambda: next(answers), "rows", 5, interval=0.01) == {"rows": 1}


def test_scripts_are_the_ones_installed_beside_this_interpreter() -> None:
    assert script("fieldmon-collector") == Path(sys.executable).parent / "fieldmon-collector"
    assert script("fieldmon-collector").is_file()


def test_closed_to_others_names_the_first_folder_others_cannot_enter(tmp_path: Path) -> None:
    outer, inner = tmp_path / "outer", tmp_path / "outer" / "inner"
    inner.mkdir(parents=True)
    outer.chmod(0o755)
    inner.chmod(0o755)
    tmp_path.chmod(0o755)
    assert closed_to_others(inner) is None or closed_to_others(inner) not in (outer, inner)
    outer.chmod(0o700)
    assert closed_to_others(inner) in (outer, *outer.parents)
    if closed_to_others(tmp_path) is None:  # the test's own folder is open: outer is the first
        assert closed_to_others(inner) == outer
