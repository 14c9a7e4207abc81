"""systemd's service notifications (sd_notify); a watchdog fed only while a daemon makes progress.

The protocol is one datagram of `KEY=VALUE` lines to the AF_UNIX socket named by
`$NOTIFY_SOCKET` (a path, or `@name` for an abstract socket); no library needed. With
`Type=notify` the unit is started once the daemon says `READY=1`; `STATUS=` is the line
`systemctl status` shows; `STOPPING=1` says a stop has begun; with `WatchdogSec=` systemd sets
`$WATCHDOG_USEC` and kills and restarts a daemon that has not sent `WATCHDOG=1` within it.

A watchdog fed from a timer proves only that the timer runs. `Watchdog` runs on the daemon's
event loop, so a blocked loop cannot feed it, and asks a health check before every ping: the
daemon decides what progress means (the agent: every probe finished a run lately; the collector:
ingest is not stuck while messages wait). A stalled daemon then stops pinging and says why in
its STATUS line and its log, and systemd restarts it.

Outside systemd (no `$NOTIFY_SOCKET`) every call does nothing.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import Callable, Iterable, MutableMapping
from dataclasses import dataclass

logger = logging.getLogger(__name__)

# The variables systemd sets for the notification protocol. They are taken out of the
# environment (as sd_notify's unset_environment does): a hook or vcgencmd the daemon starts
# must not talk to systemd on its behalf.
_VARIABLES = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")
# systemd's advice is to ping at half the watchdog interval; a third leaves room for a late
# wakeup of a busy event loop.
PINGS_PER_INTERVAL = 3
# How often STATUS= is refreshed when systemd wants notifications but no watchdog.
STATUS_PERIOD_S = 10.0


def _address(value: str) -> str | None:
    if value.startswith("@"):
        return "\0" + value[1:]  # an abstract socket: a leading NUL byte instead of the "@"
    if value.startswith("/"):
        return value
    return None  # vsock addresses (systemd 253+ in VMs) are not for us


def watchdog_interval(environ: MutableMapping[str, str]) -> float | None:
    """Seconds within which systemd wants a `WATCHDOG=1`, or None when it wants none from us.

    `WATCHDOG_PID`, when set, names the process the watchdog is for (the main process); any
    other process (a child that inherited the environment) must not ping.
    """
    usec = environ.get("WATCHDOG_USEC", "")
    if not usec.isdigit() or int(usec) == 0:
        return None
    pid = environ.get("WATCHDOG_PID", "")
    if pid and (not pid.isdigit() or int(pid) != os.getpid()):
        return None
    return int(usec) / 1e6


class Notifier:
    """Sends notifications to systemd; does nothing when not started by it."""

    def __init__(self, address: str | None = None, watchdog: float | None = None) -> None:
        self._address = address
        self.watchdog = watchdog  # seconds; None: no watchdog
        self._socket: socket.socket | None = None
        self._failed = False

    @classmethod
    def from_environment(cls, environ: MutableMapping[str, str] | None = None) -> Notifier:
        """The notifier systemd asked for through the environment, which it then clears."""
        environ = os.environ if environ is None else environ
        address = _address(environ.get("NOTIFY_SOCKET", ""))
        watchdog = watchdog_interval(environ) if address is not None else None
        for name in _VARIABLES:
            environ.pop(name, None)
        return cls(address, watchdog)

    @property
    def enabled(self) -> bool:
        """True when systemd listens for notifications."""
        return self._address is not None

    def send(self, *lines: str) -> bool:
        """Send `KEY=VALUE` lines in one datagram; False when not sent (no systemd, an error).

        Never raises: a service manager that went away must not take the daemon with it.
        """
        if self._address is None:
            return False
        message = "\n".join(line.replace("\n", " ") for line in lines).encode()
        try:
            if self._socket is None:
                kind = socket.SOCK_DGRAM | socket.SOCK_CLOEXEC | socket.SOCK_NONBLOCK
                self._socket = socket.socket(socket.AF_UNIX, kind)
            self._socket.sendto(message, self._address)
        except OSError as exc:
            if not self._failed:  # once: a missing socket would fail every few seconds
                logger.warning("cannot notify systemd", extra={"error": str(exc)})
                self._failed = True
            return False
        self._failed = False
        return True

    def ready(self, status: str) -> bool:
        """The daemon is serving: systemd finishes `start` and starts the watchdog."""
        return self.send("READY=1", f"STATUS={status}")

    def status(self, status: str) -> bool:
        """The one line `systemctl status` shows."""
        return self.send(f"STATUS={status}")

    def stopping(self, status: str) -> bool:
        """A stop has begun (systemd then expects the process to exit)."""
        return self.send("STOPPING=1", f"STATUS={status}")

    def close(self) -> None:
        """Close the socket (sending again opens a new one)."""
        if self._socket is not None:
            self._socket.close()
            self._socket = None


@dataclass(frozen=True)
class Health:
    """What a daemon's health check found: a status line, and the problem if it is stalled."""

    status: str
    problem: str | None = None  # None: making progress, feed the watchdog


class Watchdog:
    """Feeds systemd's watchdog while `check()` finds the daemon making progress.

    Runs on the daemon's event loop: when the loop is blocked no ping can go out, whatever
    `check` would say. A stalled check stops the pings, puts the problem in STATUS= and logs it
    (once per problem); when the check finds progress again the pings resume, and if they had
    stopped for longer than WatchdogSec systemd has already restarted the daemon.
    """

    def __init__(
        self,
        notifier: Notifier,
        check: Callable[[], Health],
        *,
        period: float | None = None,
    ) -> None:
        self._notifier = notifier
        self._check = check
        if period is None:
            interval = notifier.watchdog
            period = interval / PINGS_PER_INTERVAL if interval else STATUS_PERIOD_S
        self.period = period
        self.pings = 0
        self.stalled: str | None = None  # the problem while stalled, else None

    def tick(self) -> Health:
        """One check, and the ping or stall report it calls for."""
        health = self._check()
        if health.problem is None:
            if self.stalled is not None:
                logger.warning("progress again: feeding the watchdog", extra={"was": self.stalled})
                self.stalled = None
            lines = ["WATCHDOG=1"] if self._notifier.watchdog else []
            if self._notifier.send(*lines, f"STATUS={health.status}") and lines:
                self.pings += 1
            return health
        if health.problem != self.stalled:
            logger.error(
                f"stalled: {health.problem}; not feeding the watchdog",
                extra={"watchdog_s": self._notifier.watchdog},
            )
            self.stalled = health.problem
        self._notifier.status(f"stalled: {health.problem}")
        return health

    async def run(self) -> None:
        """Check and ping every `period` seconds until cancelled."""
        if not self._notifier.enabled:
            return
        while True:
            self.tick()
            await asyncio.sleep(self.period)


def ended_tasks(tasks: Iterable[asyncio.Task[None]]) -> list[str]:
    """Words for each of a daemon's background tasks that has ended: they run until the stop
    cancels them, so one that ended (an exception, most likely) is work no longer done."""
    found = []
    for task in tasks:
        if not task.done():
            continue
        exc = None if task.cancelled() else task.exception()
        why = f"{type(exc).__name__}: {exc}" if exc is not None else "returned"
        found.append(f"the {task.get_name()} task ended ({why})")
    return found
