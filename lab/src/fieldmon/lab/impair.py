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
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import Self

from fieldmon.lab.echo_responder import Impairment
from fieldmon.lab.netns import Namespace, run

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

    @classmethod
    def attach(cls, namespace: Namespace, pid: int, state_dir: Path) -> EchoResponder:
        """The responder another process started in `namespace` (the lab's state records its PID
        and directory); the kernel's echo answers were on before it, as in a fresh namespace."""
        responder = cls(namespace, state_dir=state_dir)
        responder.impairment = Impairment.from_file(responder.settings)
        responder.pid = pid
        responder._saved_sysctls = dict.fromkeys(ECHO_SYSCTLS, "0")
        return responder

    def running(self) -> bool:
        """True while the responder process is alive."""
        return self.pid is not None and process_alive(self.pid, self.MARKER)

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


# --- link impairments applied by the kernel: loss (iptables statistic), rate (tbf), cut ---

LOSS_CHAIN = "FM-LOSS"
_RATE_RE = re.compile(r"^(\d+(?:\.\d+)?)(bit|kbit|mbit|gbit)$")
_RATE_UNITS = {"bit": 1, "kbit": 1_000, "mbit": 1_000_000, "gbit": 1_000_000_000}


def rate_bps(rate: str) -> int:
    """Bits per second of a tc rate such as `1mbit`, `512kbit`; a clear error otherwise."""
    match = _RATE_RE.match(rate.strip().lower())
    if match is None:
        raise ValueError(f"rate {rate!r} is not a number with bit, kbit, mbit or gbit (e.g. 1mbit)")
    bps = float(match.group(1)) * _RATE_UNITS[match.group(2)]
    if bps < 8_000:
        raise ValueError(f"rate {rate!r} is below 8kbit, too slow for a link")
    return int(bps)


def set_rate(ns: Namespace | None, dev: str, rate: str | None) -> None:
    """Shape what `dev` sends to `rate` with a token bucket (tbf); None removes the limit."""
    if rate is None:
        run(ns, "tc", "qdisc", "del", "dev", dev, "root", check=False)
        return
    bps = rate_bps(rate)
    # A burst of 5 ms of traffic, at least a few full frames, keeps TCP near the rate.
    burst = max(4 * 1514, bps // 8 // 200)
    run(
        ns,
        "tc", "qdisc", "replace", "dev", dev, "root", "tbf",
        "rate", str(bps), "burst", str(burst), "latency", "100ms",
    )  # fmt: skip


def set_loss(ns: Namespace | None, dev: str, loss_pct: float) -> None:
    """Drop `loss_pct` % of the packets arriving on `dev` (both families), at random.

    The rules sit in the raw table's PREROUTING, so forwarded and local traffic alike are hit.
    A first, target-less rule counts every packet that arrives; the second counts the drops
    (`loss_counters`). Changing the loss starts both counts again.
    """
    if not 0 <= loss_pct <= 100:
        raise ValueError(f"loss must be between 0 and 100 %, got {loss_pct}")
    for tool in ("iptables", "ip6tables"):
        run(ns, tool, "-t", "raw", "-N", LOSS_CHAIN, check=False)  # exists after the first call
        if run(ns, tool, "-t", "raw", "-C", "PREROUTING", "-j", LOSS_CHAIN, check=False).returncode:
            run(ns, tool, "-t", "raw", "-A", "PREROUTING", "-j", LOSS_CHAIN)
        run(ns, tool, "-t", "raw", "-F", LOSS_CHAIN)
        run(ns, tool, "-t", "raw", "-A", LOSS_CHAIN, "-i", dev)
        if loss_pct > 0:
            run(
        ns,
                tool, "-t", "raw", "-A", LOSS_CHAIN, "-i", dev, "-m", "statistic",
                "--mode", "random", "--probability", f"{loss_pct / 100:.6f}", "-j", "DROP",
            )  # fmt: skip


ICMP_LIMIT_CHAIN = "FM-ICMPLIMIT"


def set_icmp_limit(ns: Namespace | None, drop_pct: float) -> None:
    """Drop `drop_pct` % of the time-exceeded messages this namespace sends (both families).

    A router that rate-limits ICMP answers fewer probes addressed to itself (their TTL ends
    there), while what it forwards is untouched: a trace sees loss at that hop only. The
    rules sit in the filter table's OUTPUT, which only locally made packets pass.
    """
    if not 0 <= drop_pct <= 100:
        raise ValueError(f"an ICMP limit is between 0 and 100 %, got {drop_pct}")
    kinds = {"iptables": ("icmp", "--icmp-type"), "ip6tables": ("icmpv6", "--icmpv6-type")}
    for tool, (protocol, option) in kinds.items():
        run(ns, tool, "-N", ICMP_LIMIT_CHAIN, check=False)
        if run(ns, tool, "-C", "OUTPUT", "-j", ICMP_LIMIT_CHAIN, check=False).returncode:
            run(ns, tool, "-A", "OUTPUT", "-j", ICMP_LIMIT_CHAIN)
        run(ns, tool, "-F", ICMP_LIMIT_CHAIN)
        if drop_pct > 0:
            run(
                ns,
                tool, "-A", ICMP_LIMIT_CHAIN, "-p", protocol, option, "time-exceeded",
                "-m", "statistic", "--mode", "random", "--probability", f"{drop_pct / 100:.6f}",
                "-j", "DROP",
            )  # fmt: skip


def loss_counters(
    ns: Namespace | None, dev: str, families: tuple[str, ...] = ("ipv4", "ipv6")
) -> tuple[int, int]:
    """(packets arrived, packets dropped) on `dev` since the loss was last set; (0, 0) if never."""
    arrived = dropped = 0
    for tool in ({"ipv4": "iptables", "ipv6": "ip6tables"}[family] for family in families):
        listing = run(ns, tool, "-t", "raw", "-L", LOSS_CHAIN, "-v", "-x", "-n", check=False)
        for line in listing.stdout.splitlines()[2:]:
            fields = line.split()
            if len(fields) < 2 or dev not in fields:
                continue
            if "DROP" in fields:
                dropped += int(fields[0])
            else:
                arrived += int(fields[0])
    return arrived, dropped


def set_link_state(ns: Namespace | None, dev: str, up: bool, routes: list[list[str]]) -> None:
    """Cut (`up=False`: the far end goes down, so the near end loses carrier) or restore.

    Taking a device down deletes the routes through it; `routes` (`ip` argument lists such as
    `["-6", "route", "replace", "default", "via", ...]`) are put back when it comes up again.
    """
    ip = ("ip",) if ns is None else ("ip", "-n", ns.name)
    run(None, *ip, "link", "set", dev, "up" if up else "down")
    if up:
        for route in routes:
            run(None, *ip, *route)
        _wait_carrier(ns, dev)


def _wait_carrier(ns: Namespace | None, dev: str, timeout: float = 2.0) -> None:
    """Return once `dev` reports LOWER_UP (its peer is up too), or after `timeout`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        flags = run(ns, "ip", "-br", "link", "show", dev, check=False).stdout
        if "LOWER_UP" in flags:
            return
        time.sleep(0.02)
