"""Start, wait for and stop the processes tests, benchmarks and the demo run, by PID.

One home for what every integration test needs: a daemon started with its output appended to a
log file (`start`, with `script` for a console script installed beside this interpreter), stopped
by the PID we started (SIGTERM, a wait, then SIGKILL of that same PID), and waits that poll for
readiness instead of sleeping (`wait_for`, `wait_http`, `wait_subscribed`) and, when they give
up, say what they waited for with the tail of the logs that explain why.

Nothing here signals a process it did not start.
"""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Self, TypeVar

BIN = Path(sys.executable).parent
LOOPBACK = "127.0.0.1"
LOG_TAIL_CHARS = 3000
T = TypeVar("T")


class WaitError(AssertionError):
    """A wait ended without what it waited for: it timed out, a process it watched exited, or
    the broker refused a subscription. An AssertionError, so a test fails with the message."""


def script(name: str) -> Path:
    """The console script `name` installed beside this interpreter (`.venv/bin/NAME`)."""
    return BIN / name


def tail(path: Path, chars: int = LOG_TAIL_CHARS) -> str:
    """The last `chars` characters of a log file ("" when it does not exist)."""
    try:
        with path.open("rb") as handle:
            handle.seek(0, os.SEEK_END)
            handle.seek(max(0, handle.tell() - chars))
            return handle.read().decode("utf-8", errors="replace")
    except FileNotFoundError:
        return ""


def stop_process(process: subprocess.Popen[bytes], timeout: float = 20.0) -> int:
    """SIGTERM our PID, wait up to `timeout`, then SIGKILL that PID; returns the exit code
    (negative: the signal that ended it, -9 when it had to be killed)."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            return process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
    return process.wait()


class Daemon:
    """A process we started, its stdout and stderr appended to `log`; signalled by its PID only."""

    def __init__(
        self,
        command: Sequence[str | os.PathLike[str]],
        log: Path,
        *,
        cwd: Path | None = None,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.command = [os.fspath(part) for part in command]
        self.log = log
        log.parent.mkdir(parents=True, exist_ok=True)
        # Where this run's output starts: several runs (a restarted collector) may share a log.
        self.log_offset = log.stat().st_size if log.exists() else 0
        with log.open("ab") as output:
            self.process = subprocess.Popen(
                self.command,
                stdout=output,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=cwd,
                env=dict(env) if env is not None else None,
            )

    @property
    def name(self) -> str:
        """The program's file name, for messages."""
        return Path(self.command[0]).name

    @property
    def pid(self) -> int:
        """The PID we started (`ip netns exec` and `env` exec in place: it stays the program's)."""
        return self.process.pid

    @property
    def returncode(self) -> int | None:
        """The exit code once it has exited, else None."""
        return self.process.poll()

    def running(self) -> bool:
        """True until it exits."""
        return self.process.poll() is None

    def send_signal(self, signum: int) -> None:
        """Signal our PID (SIGSTOP, SIGCONT, SIGHUP, SIGUSR1 ...)."""
        self.process.send_signal(signum)

    def wait(self, timeout: float | None = None) -> int:
        """Wait for it to exit on its own; returns the exit code."""
        return self.process.wait(timeout=timeout)

    def stop(self, timeout: float = 20.0) -> int:
        """SIGTERM, wait up to `timeout`, then SIGKILL; returns the exit code (-9: killed)."""
        return stop_process(self.process, timeout)

    def kill(self) -> int:
        """SIGKILL at once, as a crash or a power cut would; returns the exit code."""
        if self.process.poll() is None:
            self.process.kill()
        return self.process.wait()

    def output(self) -> str:
        """What the log gained since this process started."""
        try:
            with self.log.open("rb") as handle:
                handle.seek(self.log_offset)
                return handle.read().decode("utf-8", errors="replace")
        except FileNotFoundError:
            return ""

    def tail(self, chars: int = LOG_TAIL_CHARS) -> str:
        """The end of the log, for failure messages."""
        return tail(self.log, chars)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()


def start(
    command: Sequence[str | os.PathLike[str]],
    log: Path,
    *,
    cwd: Path | None = None,
    env: Mapping[str, str] | None = None,
) -> Daemon:
    """Start `command` (e.g. `[script("fieldmon-collector"), "run", "--config", path]`) with
    its output appended to `log`."""
    return Daemon(command, log, cwd=cwd, env=env)


def _watched(daemons: Daemon | Iterable[Daemon]) -> list[Daemon]:
    return [daemons] if isinstance(daemons, Daemon) else list(daemons)


def _log_tails(daemons: list[Daemon]) -> str:
    parts = []
    for log in dict.fromkeys(daemon.log for daemon in daemons):
        parts.append(f"--- tail of {log} ---\n{tail(log)}")
    return ("\n" + "\n".join(parts)) if parts else ""


def wait_for(
    predicate: Callable[[], T],
    what: str,
    timeout: float = 30.0,
    *,
    interval: float = 0.1,
    daemons: Daemon | Iterable[Daemon] = (),
) -> T:
    """Poll `predicate` until it returns something truthy, and return that.

    An OSError from it counts as "not yet" (a server still starting, a file not written yet).
    A watched daemon that exits ends the wait at once. Either failure raises WaitError naming
    `what`, the last error seen and the tails of the daemons' logs.
    """
    watched = _watched(daemons)
    deadline = time.monotonic() + timeout
    last_error: OSError | None = None
    while True:
        try:
            result = predicate()
        except OSError as exc:
            last_error = exc
        else:
            if result:
                return result
        for daemon in watched:
            if not daemon.running():
                raise WaitError(
                    f"{daemon.name} (PID {daemon.pid}) exited with {daemon.returncode} while "
                    f"waiting for {what}{_log_tails(watched)}"
                )
        if time.monotonic() >= deadline:
            error = f" (last error: {last_error})" if last_error else ""
            raise WaitError(
                f"timed out after {timeout:g}s waiting for {what}{error}{_log_tails(watched)}"
            )
        time.sleep(interval)


def http_get(url: str, timeout: float = 5.0) -> tuple[int, bytes]:
    """GET `url`: (status, body), for error statuses too; OSError when nothing answers."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as reply:
            return int(reply.status), bytes(reply.read())
    except urllib.error.HTTPError as exc:
        with exc:
            return int(exc.code), bytes(exc.read())


def wait_http(
    url: str,
    what: str | None = None,
    timeout: float = 30.0,
    *,
    interval: float = 0.1,
    daemons: Daemon | Iterable[Daemon] = (),
) -> bytes:
    """Until `url` answers a GET with a 2xx status; returns the body."""

    def answered() -> tuple[bytes] | None:
        status, body = http_get(url)
        # In a tuple: a 2xx answer with an empty body is an answer too.
        return (body,) if 200 <= status < 300 else None

    return wait_for(answered, what or url, timeout, interval=interval, daemons=daemons)[0]


def collector_health(port: int, host: str = LOOPBACK) -> tuple[int, dict[str, Any]]:
    """The collector's /healthz: (200 or 503, its JSON body)."""
    status, body = http_get(f"http://{host}:{port}/healthz")
    return status, dict(json.loads(body))


def wait_subscribed(
    port: int,
    timeout: float = 30.0,
    *,
    host: str = LOOPBACK,
    daemons: Daemon | Iterable[Daemon] = (),
) -> list[dict[str, Any]]:
    """Until the collector whose HTTP listens on `port` reports on /healthz that the broker
    granted every one of its subscriptions (the SUBACKs of its current connection); returns
    them. A refused subscription ends the wait at once: it stays refused until a reconnect."""

    def granted() -> list[dict[str, Any]] | None:
        _status, health = collector_health(port, host)
        subscriptions = list(health.get("subscriptions", []))
        refused = [sub for sub in subscriptions if sub["state"] == "refused"]
        if refused:
            raise WaitError(
                f"the broker refused the collector's subscriptions: {refused}"
                f"{_log_tails(_watched(daemons))}"
            )
        if subscriptions and all(sub["state"] == "granted" for sub in subscriptions):
            return subscriptions
        return None

    return wait_for(
        granted, f"the collector on port {port} to be subscribed", timeout, daemons=daemons
    )


def closed_to_others(path: Path) -> Path | None:
    """The first folder on the way to `path` that other users cannot enter (no o+x), or None.

    Tests that run this checkout's code as `nobody` need every folder above it open: a clone
    made in a `mktemp -d` folder (mode 0700) is not."""
    resolved = path.resolve()
    for folder in [*reversed(resolved.parents), resolved]:
        if not folder.stat().st_mode & stat.S_IXOTH:
            return folder
    return None
