"""Link impairments without netem: a userspace echo responder, iptables loss, tbf rate, link cut.

    with Namespace(unique_name("far")) as far:
        link = veth(None, far)
        with EchoResponder(far, delay_ms=50, jitter_ms=10):
            ... pings to link.b_v4.ip now take 50 ± 10 ms longer ...

`EchoResponder` runs `fieldmon.lab.echo_responder` inside the namespace (`ip netns exec`) with the
kernel's own echo answers switched off there, and stops it by PID. Its settings live in a small
JSON file, so another process (the `fieldmon-lab impair` command) can change them while it runs.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import Self

from fieldmon.lab.echo_responder import Impairment
from fieldmon.lab.netns import Namespace

ECHO_SYSCTLS = ("net.ipv4.icmp_echo_ignore_all", "net.ipv6.icmp.echo_ignore_all")
_READY_TIMEOUT_S = 10.0
_STOP_TIMEOUT_S = 5.0


class ImpairError(RuntimeError):
    """An impairment could not be applied; the message says which and why."""


def process_alive(pid: int, marker: str) -> bool:
    """True if `pid` runs and its command line contains `marker` (guards against PID reuse)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
    except OSError:
        return False
    return marker.encode() in cmdline


def stop_pid(pid: int, marker: str, timeout: float = _STOP_TIMEOUT_S) -> bool:
    """SIGTERM `pid` if it is still ours (`marker` in its command line), SIGKILL after `timeout`.

    Returns True if it was running. Works for processes another invocation started (the lab's
    state file records their PIDs), so it polls /proc rather than waiting on a child.
    """
    if not process_alive(pid, marker):
        return False
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while process_alive(pid, marker):  # a zombie's command line is empty: it counts as gone
        if time.monotonic() > deadline:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            deadline = time.monotonic() + timeout
        time.sleep(0.02)
    return True


class EchoResponder:
    """Answer echo requests inside `namespace` after `delay_ms` ± `jitter_ms`, dropping
    `loss_pct` % of them; a subprocess started by `start()`/`with`, stopped by PID.

    While it runs, the namespace's kernel ignores echo requests (IPv4 and IPv6); `stop()` puts
    the previous sysctl values back. `update()` changes the settings of the running responder;
    they hold for every request after it returns. `counts` holds requests/answered/dropped
    after `stop()`.
    """

    MARKER = "fieldmon.lab.echo_responder"

    def __init__(
        self,
        namespace: Namespace,
        delay_ms: float = 0,
        jitter_ms: float = 0,
        loss_pct: float = 0,
        *,
        state_dir: Path | None = None,
    ) -> None:
        self.namespace = namespace
        self.impairment = Impairment(float(delay_ms), float(jitter_ms), float(loss_pct))
        self._own_dir = state_dir is None
        self.state_dir = state_dir or Path(tempfile.mkdtemp(prefix="fm-echo-"))
        self.settings = self.state_dir / f"echo-{namespace.name}.json"
        self.log = self.state_dir / f"echo-{namespace.name}.log"
        self.pid: int | None = None
        self.counts: dict[str, int] = {}
        self._process: subprocess.Popen[bytes] | None = None
        self._saved_sysctls: dict[str, str] = {}

    def __repr__(self) -> str:
        return f"EchoResponder({self.namespace.name!r}, {self.impairment}, pid={self.pid})"

    def start(self) -> Self:
        """Switch the kernel's echo answers off in the namespace and start answering ourselves."""
        try:
            self._start()
        except BaseException:
            self.stop()
            raise
        return self

    def _start(self) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.impairment.write(self.settings)
        for key in ECHO_SYSCTLS:
            self._saved_sysctls[key] = self.namespace.run("sysctl", "-n", key).stdout.strip()
            self.namespace.sysctl(key, "1")
        with self.log.open("wb") as log:
            self._process = subprocess.Popen(
                ["ip", "netns", "exec", self.namespace.name, sys.executable, "-m", self.MARKER,
                 "--settings", str(self.settings)],
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # outlives a `fieldmon-lab impair` that started it
            )  # fmt: skip
        self.pid = self._process.pid  # `ip netns exec` execs the command: same PID
        self._wait_ready()

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + _READY_TIMEOUT_S
        while time.monotonic() < deadline:
            text = self.log.read_text(encoding="utf-8", errors="replace")
            if "ready" in text.splitlines():
                return
            if self._process is not None and self._process.poll() is not None:
                raise ImpairError(
                    f"echo responder in {self.namespace.name} exited "
                    f"({self._process.returncode}): {text.strip()[-500:]}"
                )
            time.sleep(0.02)
        raise ImpairError(f"echo responder in {self.namespace.name} not ready after 10 s")

    def update(
        self,
        delay_ms: float | None = None,
        jitter_ms: float | None = None,
        loss_pct: float | None = None,
    ) -> None:
        """Change the running responder's settings; unchanged ones stay as they were."""
        current = self.impairment
        self.impairment = Impairment(
            current.delay_ms if delay_ms is None else float(delay_ms),
            current.jitter_ms if jitter_ms is None else float(jitter_ms),
            current.loss_pct if loss_pct is None else float(loss_pct),
        )
        self.impairment.write(self.settings)

    def stop(self) -> None:
        """Stop the responder by PID, collect its counts and give echoes back to the kernel."""
        if self.pid is not None:
            stop_pid(self.pid, self.MARKER)
            if self._process is not None:
                self._process.wait()
            self.counts = read_counts(self.log)
            self.pid = None
        if self.namespace.exists():
            for key, value in self._saved_sysctls.items():
                self.namespace.sysctl(key, value)
        self._saved_sysctls.clear()
        if self._own_dir:
            for path in (self.settings, self.log):
                path.unlink(missing_ok=True)
            with contextlib.suppress(OSError):
                self.state_dir.rmdir()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()


def read_counts(log: Path) -> dict[str, int]:
    """The counts line a stopped responder wrote last to its log (empty if it was killed)."""
    try:
        lines = log.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return {}
    for line in reversed(lines):
        if line.startswith("{"):
            with contextlib.suppress(ValueError):
                return dict(json.loads(line))
    return {}
