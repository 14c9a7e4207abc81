"""What systemd does for a daemon, done by a test: listen on its notify socket, and stall it.

`NotifyListener` binds the datagram socket a `Type=notify` unit's `$NOTIFY_SOCKET` names and
keeps every notification with the time it arrived; `environment()` gives the variables systemd
would set (`WATCHDOG_PID` is set by `notify_command`, which execs in place so the PID stays the
daemon's). `stall_hook(dir)` writes a `sitecustomize.py` that, in a process started with that
directory on PYTHONPATH, turns SIGUSR1 into a blocking sleep of the event loop's thread for
`FIELDMON_TEST_STALL_S` seconds, recording when it began and ended: a loop that is stuck while
the process lives, which SIGSTOP cannot show (a stopped process is not running at all).
"""

from __future__ import annotations

import os
import pwd
import secrets
import socket
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

STALL_SECONDS_VARIABLE = "FIELDMON_TEST_STALL_S"
STALL_MARKS_VARIABLE = "FIELDMON_TEST_STALL_MARKS"

_STALL_HOOK = f'''"""Test hook (fieldmon.lab.systemd): SIGUSR1 blocks the event loop's thread."""

import os
import signal
import time

_SECONDS = os.environ.get("{STALL_SECONDS_VARIABLE}")
_MARKS = os.environ.get("{STALL_MARKS_VARIABLE}")


def _stall(_signum, _frame):
    with open(_MARKS, "a") as marks:
        marks.write(f"begin {{time.monotonic()}}\\n")
    time.sleep(float(_SECONDS))
    with open(_MARKS, "a") as marks:
        marks.write(f"end {{time.monotonic()}}\\n")


if _SECONDS and _MARKS:
    signal.signal(signal.SIGUSR1, _stall)
'''


@dataclass(frozen=True)
class Notification:
    """One datagram: when it arrived (time.monotonic) and its KEY=VALUE lines."""

    at: float
    fields: dict[str, str]


class NotifyListener:
    """A `$NOTIFY_SOCKET` on an abstract address, read by a thread until `close()`."""

    def __init__(self) -> None:
        self.address = f"@fieldmon-test-{secrets.token_hex(6)}"
        self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._socket.bind("\0" + self.address[1:])
        self._socket.settimeout(0.2)
        self._lock = threading.Lock()
        self._received: list[Notification] = []
        self._closed = False
        self._thread = threading.Thread(target=self._read, name="notify-listener", daemon=True)
        self._thread.start()

    def _read(self) -> None:
        while not self._closed:
            try:
                data = self._socket.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                return
            fields = dict(line.partition("=")[::2] for line in data.decode().splitlines())
            with self._lock:
                self._received.append(Notification(time.monotonic(), fields))

    def environment(self, watchdog_s: float | None = None) -> dict[str, str]:
        """The variables systemd sets: NOTIFY_SOCKET, and WATCHDOG_USEC for a watchdog."""
        env = {"NOTIFY_SOCKET": self.address}
        if watchdog_s is not None:
            env["WATCHDOG_USEC"] = str(int(watchdog_s * 1e6))
        return env

    @property
    def received(self) -> list[Notification]:
        """Every notification so far, in arrival order."""
        with self._lock:
            return list(self._received)

    def with_field(self, key: str, value: str | None = None) -> list[Notification]:
        """The notifications carrying `key` (with this value, if given)."""
        return [
            n
            for n in self.received
            if key in n.fields and (value is None or n.fields[key] == value)
        ]

    def pings(self) -> list[float]:
        """Arrival times of every WATCHDOG=1."""
        return [n.at for n in self.with_field("WATCHDOG", "1")]

    def close(self) -> None:
        """Stop reading and close the socket."""
        self._closed = True
        self._thread.join(timeout=2)
        self._socket.close()


def notify_command(command: Sequence[str | os.PathLike[str]]) -> list[str]:
    """`command` run through sh, which sets WATCHDOG_PID to its own PID and execs in place, as
    systemd sets it to the main process's: the daemon then sees the watchdog is for it."""
    return ["/bin/sh", "-c", 'WATCHDOG_PID=$$; export WATCHDOG_PID; exec "$0" "$@"'] + [
        os.fspath(part) for part in command
    ]


def stall_hook(directory: Path, seconds: float) -> dict[str, str]:
    """Write the SIGUSR1 stall hook into `directory`; returns the environment that enables it
    (PYTHONPATH and the stall's length and marks file, `directory/stall-marks`)."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "sitecustomize.py").write_text(_STALL_HOOK, encoding="utf-8")
    return {
        "PYTHONPATH": str(directory),
        STALL_SECONDS_VARIABLE: str(seconds),
        STALL_MARKS_VARIABLE: str(directory / "stall-marks"),
    }


def stall_marks(directory: Path) -> dict[str, list[float]]:
    """When each stall began and ended (time.monotonic, shared by every process)."""
    marks: dict[str, list[float]] = {"begin": [], "end": []}
    path = directory / "stall-marks"
    if path.exists():
        for line in path.read_text(encoding="utf-8").splitlines():
            kind, _, value = line.partition(" ")
            marks[kind].append(float(value))
    return marks


def unit_settings(unit: Path) -> dict[str, list[str]]:
    """The [Service] settings of a unit file, each key with its values in order (a key may be
    given more than once; an empty assignment resets it, as systemd reads it)."""
    settings: dict[str, list[str]] = {}
    section = ""
    for raw in unit.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line
            continue
        if section != "[Service]":
            continue
        key, _, value = line.partition("=")
        if value.strip():
            settings.setdefault(key.strip(), []).append(value.strip())
        else:
            settings[key.strip()] = []
    return settings


def _capabilities(values: list[str]) -> str:
    names = [name.lower().removeprefix("cap_") for value in values for name in value.split()]
    return ",".join(["-all", *(f"+{name}" for name in names)])


def setpriv_command(
    unit: Path, command: Sequence[str | os.PathLike[str]], *, user: str = "nobody"
) -> list[str]:
    """`command` run by setpriv(1) with the user, groups and capabilities `unit` gives its
    service (AmbientCapabilities, CapabilityBoundingSet, SupplementaryGroups,
    NoNewPrivileges), as systemd would start it; `user` stands in for DynamicUser."""
    settings = unit_settings(unit)
    entry = pwd.getpwnam(user)
    groups = [group for value in settings.get("SupplementaryGroups", []) for group in value.split()]
    ambient = _capabilities(settings.get("AmbientCapabilities", []))
    arguments = [
        "setpriv",
        f"--reuid={entry.pw_uid}",
        f"--regid={entry.pw_gid}",
        f"--groups={','.join(groups)}" if groups else "--clear-groups",
        # An ambient capability must be inheritable too; systemd raises it there as well.
        f"--inh-caps={ambient}",
        f"--ambient-caps={ambient}",
        f"--bounding-set={_capabilities(settings.get('CapabilityBoundingSet', []))}",
    ]
    if settings.get("NoNewPrivileges") == ["yes"]:
        arguments.append("--no-new-privs")
    return [*arguments, "--", *(os.fspath(part) for part in command)]
