"""Hook scripts run on events, on the model of NetworkManager's dispatcher.d.

For every event, every executable regular file in the hooks directory runs, in name order
(dot-files and editor backups ending in `~` are skipped; other files without an execute bit,
such as a hook's own config, are left alone). A hook runs directly (no shell) as
`HOOK EVENT [TARGET]`, with the event as one JSON object on stdin (`event`, `site`, `agent`,
`at` in ns since the epoch, `target` for link and service events, and the event's details), in
`/`, in a clean environment: PATH, LANG, and FIELDMON_EVENT, FIELDMON_TARGET (link and service
events), FIELDMON_SITE, FIELDMON_AGENT, FIELDMON_AT. Nothing else of the agent's environment,
and none of its capabilities (fieldmon.firmware_hooks.privileges).

Refused, with an error that says why: a hooks directory or a script not owned by root, or
writable by group or others (whoever can write it would run code as the agent).

Each hook has its own bounded queue of events and one worker: its runs are in event order and
never overlap, one slow hook never delays another or the probes (asyncio subprocesses; the event
loop never blocks on a hook). A full queue drops its oldest event, counted in the next run's
`queue_dropped`. A run may take `timeout` seconds; then its whole process group (each hook
starts a session of its own) is killed. A hook that must leave work running beyond its run
starts it in a session of its own (`setsid`), with its output redirected.

Output: stdout and stderr are each read to the end and kept up to `output_cap` bytes (the rest
is counted, not kept). Every run is logged in one line (hook, event, target, exit status,
duration) and handed to `on_run` as a `HookRun`, which the agent sends as an `event` row.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import stat
import subprocess
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

from fieldmon.firmware_hooks.privileges import drop_privileges

logger = logging.getLogger(__name__)

QUEUE_SIZE = 16  # events waiting per hook; past it the oldest is dropped and counted
OUTPUT_CAP = 64 * 1024  # bytes kept of each of stdout and stderr per run
EXCERPT_CHARS = 1024  # of stdout, in the event row and the log line
STDERR_EXCERPT_CHARS = 512  # of stderr (its end: where an error is)
# After the hook exits (or is killed), how long its output may still take to reach EOF: only a
# process that escaped its group (setsid) without redirecting can hold the pipes longer.
OUTPUT_GRACE_S = 1.0
SAFE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
_MAX_STDIN_BYTES = 60_000  # under a pipe's 64 KiB: written whole before the hook starts


class EventName(StrEnum):
    """The events hooks run on (docs/contract.md, Hooks)."""

    LINK_DOWN = "link_down"
    LINK_DEGRADED = "link_degraded"
    LINK_UP = "link_up"
    SERVICE_DOWN = "service_down"
    SERVICE_UP = "service_up"
    BOOT = "boot"
    POWER = "power"
    BROKER_DOWN = "broker_down"
    BROKER_UP = "broker_up"
    OUTBOX_DROPPING = "outbox_dropping"


# Events about one link or service: they carry its name as `target`.
TARGETED = frozenset(
    {
        EventName.LINK_DOWN,
        EventName.LINK_DEGRADED,
        EventName.LINK_UP,
        EventName.SERVICE_DOWN,
        EventName.SERVICE_UP,
    }
)

Detail = str | int | float | bool | None


@dataclass(frozen=True)
class HookEvent:
    """One event as hooks see it."""

    event: EventName
    site: str
    agent: str
    at: int  # ns since the epoch, when the agent saw it
    target: str | None = None
    details: Mapping[str, Detail] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if (self.target is not None) != (self.event in TARGETED):
            raise ValueError(f"{self.event} events carry a target exactly when they are about one")

    def document(self) -> dict[str, Detail]:
        """The JSON object on stdin: the event's own keys first, then its details."""
        head: dict[str, Detail] = {
            "event": self.event.value,
            "site": self.site,
            "agent": self.agent,
            "at": self.at,
        }
        if self.target is not None:
            head["target"] = self.target
        return {**{k: v for k, v in self.details.items() if k not in head}, **head}

    def stdin(self) -> bytes:
        """`document()` as one line of JSON."""
        data = json.dumps(self.document(), separators=(",", ":")).encode() + b"\n"
        if len(data) > _MAX_STDIN_BYTES:
            raise ValueError(f"the {self.event} event's details are too big for a hook's stdin")
        return data

    def environment(self) -> dict[str, str]:
        """The whole environment of a hook's process."""
        env = {
            "PATH": SAFE_PATH,
            "LANG": "C.UTF-8",
            "FIELDMON_EVENT": self.event.value,
            "FIELDMON_SITE": self.site,
            "FIELDMON_AGENT": self.agent,
            "FIELDMON_AT": str(self.at),
        }
        if self.target is not None:
            env["FIELDMON_TARGET"] = self.target
        return env

    def arguments(self) -> list[str]:
        """`EVENT [TARGET]`, as dispatcher.d passes interface and action."""
        return [self.event.value] + ([self.target] if self.target is not None else [])


@dataclass(frozen=True)
class HookRun:
    """What one run of one hook for one event came to."""

    hook: str  # the file's name
    event: HookEvent
    started_ns: int
    duration_s: float
    exit_status: int | None  # None: it never ran (refused, could not start); -N: killed by N
    timed_out: bool = False
    stdout: str = ""
    stderr: str = ""
    output_dropped: int = 0  # bytes past output_cap, not kept
    queue_dropped: int = 0  # events this hook's full queue dropped before this run
    refused: str | None = None  # why it was not run
    error: str | None = None  # why it could not start

    @property
    def ok(self) -> bool:
        """Ran, in time, and exited 0."""
        return self.exit_status == 0 and not self.timed_out

    def excerpt(self, limit: int = EXCERPT_CHARS) -> str:
        """The start of stdout (where a hook prints its one-line summary), stripped."""
        text = self.stdout.strip()
        return text if len(text) <= limit else text[: limit - 3] + "..."

    def stderr_excerpt(self, limit: int = STDERR_EXCERPT_CHARS) -> str:
        """The end of stderr, stripped (where an error is)."""
        text = self.stderr.strip()
        return text if len(text) <= limit else "..." + text[-(limit - 3) :]

    def outcome(self) -> str:
        """In words, for the log and the event row's message."""
        if self.refused is not None:
            return f"refused: {self.refused}"
        if self.error is not None:
            return f"could not start: {self.error}"
        took = f"{self.duration_s * 1000:.0f} ms"
        if self.timed_out:
            return f"timed out after {took}; its process group was killed"
        if self.exit_status is not None and self.exit_status < 0:
            return f"killed by signal {-self.exit_status} after {took}"
        return f"exit {self.exit_status} in {took}"


# --- who may run ---------------------------------------------------------------------------


def ownership_problem(path: Path, st: os.stat_result, what: str) -> str | None:
    """Why `path` may not be trusted (not root's, or writable by group or others), or None."""
    if st.st_uid != 0:
        return f"{what} {path} is owned by uid {st.st_uid}, not root"
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        return (
            f"{what} {path} is writable by group or others (mode {stat.S_IMODE(st.st_mode):04o}); "
            f"only root may be able to change what runs: chmod go-w {path}"
        )
    return None


def check_directory(directory: Path) -> str | None:
    """Why no hook in `directory` may run, or None."""
    try:
        st = directory.stat()
    except OSError as exc:
        return f"hooks directory {directory} cannot be read: {exc.strerror}"
    if not stat.S_ISDIR(st.st_mode):
        return f"hooks directory {directory} is not a directory"
    return ownership_problem(directory, st, "hooks directory")


def _skipped(name: str) -> bool:
    return name.startswith(".") or name.endswith("~")


def candidates(directory: Path) -> list[Path]:
    """Executable regular files in `directory`, in name order (symlinks followed)."""
    found = []
    try:
        entries = list(os.scandir(directory))
    except OSError:
        return []
    for entry in entries:
        if _skipped(entry.name):
            continue
        try:
            st = os.stat(entry.path)
        except OSError:
            continue  # a dangling link, or gone since the listing
        if stat.S_ISREG(st.st_mode) and st.st_mode & (stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH):
            found.append(Path(entry.path))
    return sorted(found, key=lambda path: path.name)


def check_hook(path: Path) -> str | None:
    """Why `path` may not run now, or None (checked again right before each run)."""
    try:
        st = path.stat()
    except OSError as exc:
        return f"hook {path} cannot be read: {exc.strerror}"
    if not stat.S_ISREG(st.st_mode):
        return f"hook {path} is not a regular file"
    return ownership_problem(path, st, "hook")


# --- one run ---------------------------------------------------------------------------------


class _Capture(asyncio.Protocol):
    """Reads one pipe to its end, keeping the first `cap` bytes."""

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self.data = bytearray()
        self.dropped = 0
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def data_received(self, data: bytes) -> None:
        room = max(0, self.cap - len(self.data))
        self.data += data[:room]
        self.dropped += len(data) - min(room, len(data))

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed.done():
            self.closed.set_result(None)

    def text(self) -> str:
        return self.data.decode("utf-8", errors="replace")


async def _reader(fd: int, cap: int) -> tuple[asyncio.ReadTransport, _Capture]:
    loop = asyncio.get_running_loop()
    capture = _Capture(cap)
    transport, _ = await loop.connect_read_pipe(lambda: capture, os.fdopen(fd, "rb", buffering=0))
    return transport, capture


def _kill_group(pgid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


def _stdin_pipe(data: bytes) -> int:
    """A pipe already holding `data` and closed for writing; returns its read end."""
    read_end, write_end = os.pipe()
    try:
        os.write(write_end, data)
    finally:
        os.close(write_end)
    return read_end


async def run_hook(
    path: Path,
    event: HookEvent,
    *,
    time_limit: float,
    output_cap: int = OUTPUT_CAP,
    queue_dropped: int = 0,
) -> HookRun:
    """Run one hook for one event (see the module docstring); never raises for the hook's faults."""
    started_ns, started = time.time_ns(), time.monotonic()

    def finished(**outcome: object) -> HookRun:
        return HookRun(
            hook=path.name,
            event=event,
            started_ns=started_ns,
            duration_s=time.monotonic() - started,
            queue_dropped=queue_dropped,
            **outcome,  # type: ignore[arg-type]
        )

    refusal = check_hook(path)
    if refusal is not None:
        return finished(exit_status=None, refused=refusal)
    stdin = _stdin_pipe(event.stdin())
    out_read, out_write = os.pipe()
    err_read, err_write = os.pipe()
    try:
        process = await asyncio.create_subprocess_exec(
            str(path),
            *event.arguments(),
            stdin=stdin,
            stdout=out_write,
            stderr=err_write,
            env=event.environment(),
            cwd="/",
            start_new_session=True,  # its own process group: killed whole at the timeout
            preexec_fn=drop_privileges,
        )
    except (OSError, subprocess.SubprocessError) as exc:
        for fd in (out_read, err_read):
            os.close(fd)
        return finished(exit_status=None, error=str(exc))
    finally:
        for fd in (stdin, out_write, err_write):
            os.close(fd)
    out_transport, out = await _reader(out_read, output_cap)
    err_transport, err = await _reader(err_read, output_cap)
    timed_out = False
    try:
        try:
            status = await asyncio.wait_for(process.wait(), time_limit)
        except TimeoutError:
            timed_out = True
            _kill_group(process.pid)
            status = await process.wait()
        pipes = asyncio.gather(out.closed, err.closed)
        try:
            await asyncio.wait_for(asyncio.shield(pipes), OUTPUT_GRACE_S)
        except TimeoutError:
            # Something it left in its process group still holds the pipes.
            _kill_group(process.pid)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(pipes), OUTPUT_GRACE_S)
    finally:
        if process.returncode is None:  # cancelled (the agent stops): take the hook with us
            _kill_group(process.pid)
        out_transport.close()
        err_transport.close()
    return finished(
        exit_status=status,
        timed_out=timed_out,
        stdout=out.text(),
        stderr=err.text(),
        output_dropped=out.dropped + err.dropped,
    )


# --- the runner ------------------------------------------------------------------------------


def log_run(run: HookRun) -> None:
    """One line per run: hook, event, target, exit status, duration."""
    level = logging.INFO if run.ok else logging.WARNING
    if run.refused is not None or run.error is not None:
        level = logging.ERROR
    logger.log(
        level,
        "hook %s for %s%s: %s",
        run.hook,
        run.event.event.value,
        f" {run.event.target}" if run.event.target else "",
        run.outcome(),
        extra={
            "hook": run.hook,
            "event": run.event.event.value,
            "target": run.event.target,
            "exit_status": run.exit_status,
            "duration_ms": round(run.duration_s * 1000, 1),
            "timed_out": run.timed_out,
            "output": run.excerpt(),
            "stderr": run.stderr_excerpt(),
            "queue_dropped": run.queue_dropped,
        },
    )


class _HookQueue:
    """One hook's pending events and the worker that runs them one at a time."""

    def __init__(self, runner: HookRunner, path: Path) -> None:
        self.path = path
        self.pending: deque[HookEvent] = deque()
        self.dropped = 0
        self.busy = False  # a run of this hook is under way
        self._runner = runner
        self._wake = asyncio.Event()
        self.task = asyncio.create_task(self._work(), name=f"hook:{path.name}")

    def put(self, event: HookEvent) -> None:
        if len(self.pending) >= self._runner.queue_size:
            oldest = self.pending.popleft()
            self.dropped += 1
            logger.warning(
                "hook %s is behind: dropped its oldest queued event (%s)",
                self.path.name,
                oldest.event.value,
                extra={"hook": self.path.name, "dropped_total": self.dropped},
            )
        self.pending.append(event)
        self._wake.set()

    async def _work(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self.pending:
                event = self.pending.popleft()
                dropped, self.dropped = self.dropped, 0
                self.busy = True
                try:
                    run = await run_hook(
                        self.path,
                        event,
                        time_limit=self._runner.timeout,
                        output_cap=self._runner.output_cap,
                        queue_dropped=dropped,
                    )
                finally:
                    self.busy = False
                self._runner.finished(run)


class HookRunner:
    """Dispatches events to the hooks in `directory`; create and use it on the event loop."""

    def __init__(
        self,
        directory: Path,
        *,
        timeout: float,
        on_run: Callable[[HookRun], None] | None = None,
        queue_size: int = QUEUE_SIZE,
        output_cap: int = OUTPUT_CAP,
    ) -> None:
        self.directory = directory
        self.timeout = timeout
        self.queue_size = queue_size
        self.output_cap = output_cap
        self._on_run = on_run
        self._queues: dict[str, _HookQueue] = {}
        self.runs = 0

    def dispatch(self, event: HookEvent) -> list[str]:
        """Queue `event` for every hook now in the directory; returns their names, in order.

        A refused directory or hook is logged and reported as a run that never happened.
        """
        problem = check_directory(self.directory)
        if problem is not None:
            self.finished(
                HookRun(
                    hook=str(self.directory),
                    event=event,
                    started_ns=time.time_ns(),
                    duration_s=0.0,
                    exit_status=None,
                    refused=f"{problem}: no hook runs",
                )
            )
            return []
        names = []
        for path in candidates(self.directory):
            queue = self._queues.get(path.name)
            if queue is None or queue.task.done():
                queue = self._queues[path.name] = _HookQueue(self, path)
            queue.put(event)
            names.append(path.name)
        return names

    def finished(self, run: HookRun) -> None:
        """A run ended (or was refused): log it and hand it on."""
        self.runs += 1
        log_run(run)
        if self._on_run is not None:
            self._on_run(run)

    def pending(self) -> int:
        """Events queued or running, over every hook."""
        return sum(len(q.pending) + q.busy for q in self._queues.values())

    async def close(self, grace: float = 0.0) -> None:
        """Give queued and running hooks up to `grace` seconds, then cancel them (a running
        hook's process group is killed)."""
        deadline = time.monotonic() + grace
        while self.pending() and time.monotonic() < deadline:  # noqa: ASYNC110 - polls counts
            await asyncio.sleep(0.05)
        for queue in self._queues.values():
            queue.task.cancel()
        await asyncio.gather(*(q.task for q in self._queues.values()), return_exceptions=True)
        self._queues.clear()
