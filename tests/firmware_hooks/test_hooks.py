"""The hook runner on real scripts: order, stdin, arguments and a clean environment; refusals;
timeouts that kill the process group; capped output; per-hook queues that drop the oldest; one
slow hook delaying nothing else; one log line per run."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from fieldmon.firmware_hooks.hooks import (
    OUTPUT_CAP,
    EventName,
    HookEvent,
    HookRun,
    HookRunner,
    candidates,
    check_directory,
    run_hook,
)

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0, reason="hooks must be root's: the tests make root-owned scripts"
)
NOBODY = 65534


def _event(name: EventName = EventName.LINK_DOWN, target: str | None = "parent-gw") -> HookEvent:
    return HookEvent(
        event=name,
        site="pavilion-2",
        agent="pavilion-2-pi1",
        at=1_800_000_000_000_000_000,
        target=target,
        details={"state": "down", "loss_pct": 100.0, "previous": "ok"},
    )


def _hooks(tmp_path: Path) -> Path:
    directory = tmp_path / "hooks"
    directory.mkdir(mode=0o755)
    directory.chmod(0o755)  # whatever the umask
    return directory


def _hook(directory: Path, name: str, body: str, mode: int = 0o755) -> Path:
    path = directory / name
    path.write_text("#!/bin/sh\n" + body, encoding="utf-8")
    path.chmod(mode)
    return path


class Runs:
    """Collects what the runner reports, and waits for it."""

    def __init__(self) -> None:
        self.runs: list[HookRun] = []

    def __call__(self, run: HookRun) -> None:
        self.runs.append(run)

    async def until(self, predicate: Callable[[list[HookRun]], bool], within: float = 10) -> None:
        deadline = time.monotonic() + within
        while not predicate(self.runs):
            assert time.monotonic() < deadline, f"timed out; runs so far: {self.runs}"
            await asyncio.sleep(0.02)


def test_every_executable_runs_in_name_order_with_the_event_and_a_clean_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FIELDMON_TEST_SECRET", "do-not-leak")
    directory = _hooks(tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    record = f'cat > {out}/"${{0##*/}}.stdin"; env > {out}/"${{0##*/}}.env"; '
    record += f'echo "$@" > {out}/"${{0##*/}}.args"; pwd > {out}/"${{0##*/}}.pwd"; echo ran\n'
    for name in ("20-second", "10-first", "30-third"):
        _hook(directory, name, record)
    _hook(directory, "notes.conf", record, mode=0o644)  # not executable: a hook's config
    _hook(directory, ".hidden", record)
    _hook(directory, "10-first~", record)  # an editor's backup
    runs = Runs()

    async def scenario() -> list[str]:
        runner = HookRunner(directory, timeout=10, on_run=runs)
        names = runner.dispatch(_event())
        await runs.until(lambda r: len(r) == 3)
        await runner.close()
        return names

    names = asyncio.run(scenario())
    assert names == ["10-first", "20-second", "30-third"]
    started = sorted(runs.runs, key=lambda run: run.started_ns)
    assert [run.hook for run in started] == names
    assert all(run.ok and run.excerpt() == "ran" for run in runs.runs)
    assert sorted(p.name for p in out.glob("*.args")) == [f"{n}.args" for n in sorted(names)]
    document = json.loads((out / "10-first.stdin").read_text())
    assert document == {
        "event": "link_down",
        "site": "pavilion-2",
        "agent": "pavilion-2-pi1",
        "at": 1_800_000_000_000_000_000,
        "target": "parent-gw",
        "state": "down",
        "loss_pct": 100.0,
        "previous": "ok",
    }
    env = dict(
        line.split("=", 1) for line in (out / "10-first.env").read_text().splitlines() if line
    )
    env.pop("PWD", None)  # the shell's own
    env.pop("SHLVL", None)
    assert env == {
        "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "LANG": "C.UTF-8",
        "FIELDMON_EVENT": "link_down",
        "FIELDMON_TARGET": "parent-gw",
        "FIELDMON_SITE": "pavilion-2",
        "FIELDMON_AGENT": "pavilion-2-pi1",
        "FIELDMON_AT": "1800000000000000000",
    }
    assert (out / "10-first.args").read_text() == "link_down parent-gw\n"
    assert (out / "10-first.pwd").read_text() == "/\n"


def test_an_event_without_a_target_has_none(tmp_path: Path) -> None:
    directory = _hooks(tmp_path)
    _hook(directory, "10-env", 'echo "${FIELDMON_TARGET-unset} $# $1"; cat\n')
    run = asyncio.run(run_hook(directory / "10-env", _event(EventName.BOOT, None), time_limit=5))
    line, document = run.stdout.splitlines()
    assert line == "unset 1 boot"
    assert "target" not in json.loads(document)
    with pytest.raises(ValueError, match="target"):
        _event(EventName.BOOT, "parent-gw")


def test_hooks_and_directories_not_root_s_or_writable_by_others_are_refused(
    tmp_path: Path,
) -> None:
    directory = _hooks(tmp_path)
    _hook(directory, "10-fine", "echo fine\n")
    os.chown(_hook(directory, "20-nobodys", "echo bad\n"), NOBODY, NOBODY)
    _hook(directory, "30-group-writable", "echo bad\n", mode=0o775)
    _hook(directory, "40-world-writable", "echo bad\n", mode=0o757)
    runs = Runs()

    async def dispatch(where: Path) -> None:
        runner = HookRunner(where, timeout=5, on_run=runs)
        runner.dispatch(_event())
        await runs.until(lambda r: len(r) >= (4 if where == directory else 5))
        await runner.close()

    asyncio.run(dispatch(directory))
    by_hook = {run.hook: run for run in runs.runs}
    assert by_hook["10-fine"].ok
    assert by_hook["20-nobodys"].refused == (
        f"hook {directory / '20-nobodys'} is owned by uid {NOBODY}, not root"
    )
    assert by_hook["30-group-writable"].refused is not None
    assert "writable by group or others (mode 0775)" in by_hook["30-group-writable"].refused
    assert "mode 0757" in str(by_hook["40-world-writable"].refused)
    assert all(run.exit_status is None for run in runs.runs if run.refused)
    assert not any(run.stdout for run in runs.runs if run.refused)

    # A directory others may write into: nothing in it runs, not even a good hook.
    directory.chmod(0o777)
    assert "hooks directory" in str(check_directory(directory))
    asyncio.run(dispatch(directory.parent / "hooks"))
    [refused] = runs.runs[4:]
    assert refused.hook == str(directory)
    assert refused.refused is not None and refused.refused.endswith("no hook runs")
    directory.chmod(0o755)
    assert check_directory(directory) is None
    assert check_directory(tmp_path / "absent") is not None


def test_the_timeout_kills_the_whole_process_group(tmp_path: Path) -> None:
    directory = _hooks(tmp_path)
    pid_file = tmp_path / "child.pid"
    _hook(directory, "10-hangs", f"sleep 60 & echo $! > {pid_file}\necho started\nsleep 60\n")
    started = time.monotonic()
    run = asyncio.run(run_hook(directory / "10-hangs", _event(), time_limit=0.5))
    took = time.monotonic() - started
    assert run.timed_out
    assert run.exit_status == -9
    assert run.stdout == "started\n"  # what it printed before it was killed is kept
    assert took < 5
    child = int(pid_file.read_text())
    # The background child died with its group (a zombie until init reaps it counts as dead).
    stat = Path(f"/proc/{child}/stat")
    assert not stat.exists() or stat.read_text().split(") ")[1].startswith("Z")
    assert "timed out" in run.outcome()


def test_output_is_read_to_the_end_but_kept_only_up_to_the_cap(tmp_path: Path) -> None:
    directory = _hooks(tmp_path)
    _hook(
        directory,
        "10-chatty",
        "echo 'summary: all good'\nhead -c 200000 /dev/zero | tr '\\0' x\necho oops >&2\nexit 3\n",
    )
    run = asyncio.run(run_hook(directory / "10-chatty", _event(), time_limit=10))
    assert run.exit_status == 3 and not run.ok
    assert len(run.stdout.encode()) == OUTPUT_CAP
    assert run.output_dropped == 200000 + len("summary: all good\n") - OUTPUT_CAP
    assert run.stderr == "oops\n"
    assert run.stderr_excerpt() == "oops"
    excerpt = run.excerpt()
    assert excerpt.startswith("summary: all good") and len(excerpt) == 1024
    assert run.outcome().startswith("exit 3 in ")


def test_a_script_that_cannot_be_executed_is_reported_not_raised(tmp_path: Path) -> None:
    directory = _hooks(tmp_path)
    path = directory / "10-no-shebang"
    path.write_bytes(b"echo hi\n")
    path.chmod(0o755)
    run = asyncio.run(run_hook(path, _event(), time_limit=5))
    assert run.exit_status is None
    assert run.error is not None and "Exec format error" in run.error


def test_a_process_that_escapes_its_group_does_not_hold_the_run(tmp_path: Path) -> None:
    directory = _hooks(tmp_path)
    pid_file = tmp_path / "escapee.pid"
    # setsid without redirecting: the escapee keeps the hook's stdout open.
    _hook(directory, "10-escapes", f"setsid sleep 30 & echo $! > {pid_file}\necho done\n")
    started = time.monotonic()
    try:
        run = asyncio.run(run_hook(directory / "10-escapes", _event(), time_limit=10))
    finally:
        escapee = int(pid_file.read_text())
        os.kill(escapee, 9)
    assert time.monotonic() - started < 5
    assert run.ok and run.stdout == "done\n"


def test_a_full_queue_drops_the_oldest_event_and_counts_it(tmp_path: Path) -> None:
    directory = _hooks(tmp_path)
    _hook(directory, "10-slow", "sleep 0.3; echo $2\n")
    runs = Runs()

    async def scenario() -> None:
        runner = HookRunner(directory, timeout=5, on_run=runs, queue_size=2)
        runner.dispatch(_event(target="e1"))
        deadline = time.monotonic() + 5
        while not runner._queues["10-slow"].busy:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.01)
        for name in ("e2", "e3", "e4", "e5"):
            runner.dispatch(_event(target=name))
        await runs.until(lambda r: len(r) == 3)
        await runner.close()

    asyncio.run(scenario())
    assert [run.excerpt() for run in runs.runs] == ["e1", "e4", "e5"]
    assert [run.queue_dropped for run in runs.runs] == [0, 2, 0]


def test_a_slow_hook_delays_neither_another_hook_nor_the_event_loop(tmp_path: Path) -> None:
    directory = _hooks(tmp_path)
    _hook(directory, "10-slow", "sleep 3\n")
    _hook(directory, "20-fast", "echo quick\n")
    runs = Runs()
    lags: list[float] = []

    async def ticker() -> None:
        while True:
            before = time.monotonic()
            await asyncio.sleep(0.02)
            lags.append(time.monotonic() - before - 0.02)

    async def scenario() -> float:
        tick = asyncio.create_task(ticker())
        runner = HookRunner(directory, timeout=10, on_run=runs)
        started = time.monotonic()
        runner.dispatch(_event())
        await runs.until(lambda r: any(run.hook == "20-fast" for run in r))
        fast_done = time.monotonic() - started
        assert runner._queues["10-slow"].busy, "the slow one is still running"
        await runs.until(lambda r: len(r) == 2)
        tick.cancel()
        await runner.close()
        return fast_done

    fast_done = asyncio.run(scenario())
    assert fast_done < 1.5
    assert max(lags) < 0.25, "the event loop stalled while a hook ran"


def test_one_log_line_per_run_names_hook_event_status_and_duration(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    directory = _hooks(tmp_path)
    _hook(directory, "10-ok", "echo fine\n")
    _hook(directory, "20-fails", "echo broken >&2; exit 2\n")
    runs = Runs()

    async def scenario() -> None:
        runner = HookRunner(directory, timeout=5, on_run=runs)
        runner.dispatch(_event())
        await runs.until(lambda r: len(r) == 2)
        await runner.close()

    with caplog.at_level(logging.INFO, logger="fieldmon.firmware_hooks.hooks"):
        asyncio.run(scenario())
    records = {record.hook: record for record in caplog.records}  # type: ignore[attr-defined]
    assert len(caplog.records) == 2
    ok, failed = records["10-ok"], records["20-fails"]
    assert ok.levelno == logging.INFO
    assert ok.getMessage().startswith("hook 10-ok for link_down parent-gw: exit 0 in ")
    assert failed.levelno == logging.WARNING
    assert (failed.event, failed.exit_status, failed.stderr) == ("link_down", 2, "broken")
    assert isinstance(failed.duration_ms, float)


def test_candidates_follow_symlinks_and_skip_what_is_not_a_program(tmp_path: Path) -> None:
    directory = _hooks(tmp_path)
    target = _hook(tmp_path, "real-script", "echo linked\n")
    (directory / "50-linked").symlink_to(target)
    (directory / "60-dangling").symlink_to(tmp_path / "absent")
    (directory / "70-dir").mkdir()
    _hook(directory, "80-plain", "echo\n", mode=0o644)
    assert [path.name for path in candidates(directory)] == ["50-linked"]
