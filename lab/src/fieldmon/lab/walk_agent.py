"""net-snmp pass_persist agent serving a recorded walk file, with counters that advance.

Walk lines: `OID TYPE VALUE [+PER_SECOND]`, TYPE one of pass_persist's (integer, gauge,
counter, counter64, timeticks, string, objectid, ipaddress). A `+N` suffix makes the value
grow by N per second since start, so rates are non-zero. `#` starts a comment. The file is
read again when it changes, so a test can edit it (e.g. remove a radio) while snmpd runs.
"""

from __future__ import annotations

import sys
import time
from bisect import bisect_right
from pathlib import Path

_WRAP = {"counter": 2**32, "counter64": 2**64, "timeticks": 2**32, "gauge": 2**32}


def _key(oid: str) -> tuple[int, ...]:
    return tuple(int(part) for part in oid.strip(".").split("."))


class Walk:
    """The walk file's rows, sorted by OID, reloaded when the file's mtime changes."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.mtime = -1.0
        self.keys: list[tuple[int, ...]] = []
        self.rows: dict[tuple[int, ...], tuple[str, str, float]] = {}
        self.started = time.monotonic()

    def refresh(self) -> None:
        mtime = self.path.stat().st_mtime
        if mtime == self.mtime:
            return
        self.mtime = mtime
        rows = {}
        for raw in self.path.read_text(encoding="utf-8").splitlines():
            line = raw.split("#", 1)[0].strip()
            if not line:
                continue
            oid, kind, rest = line.split(None, 2)
            step = 0.0
            if " +" in rest and kind in _WRAP:
                rest, step_text = rest.rsplit(" +", 1)
                step = float(step_text)
            rows[_key(oid)] = (kind, rest.strip(), step)
        self.rows = rows
        self.keys = sorted(rows)

    def answer(self, key: tuple[int, ...]) -> str:
        kind, value, step = self.rows[key]
        if step:
            grown = int(value) + int(step * (time.monotonic() - self.started))
            value = str(grown % _WRAP[kind])
        elif kind == "string" and value.startswith('"') and value.endswith('"'):
            value = value[1:-1]
        oid = "." + ".".join(map(str, key))
        return f"{oid}\n{kind}\n{value}\n"

    def get(self, oid: str) -> str:
        key = _key(oid)
        return self.answer(key) if key in self.rows else "NONE\n"

    def getnext(self, oid: str) -> str:
        position = bisect_right(self.keys, _key(oid))
        return self.answer(self.keys[position]) if position < len(self.keys) else "NONE\n"


def main() -> None:
    walk = Walk(Path(sys.argv[1]))
    stdin, stdout = sys.stdin, sys.stdout
    while True:
        command = stdin.readline()
        if not command:
            return
        command = command.strip()
        if command == "PING":
            stdout.write("PONG\n")
        elif command in ("get", "getnext"):
            oid = stdin.readline().strip()
            walk.refresh()
            stdout.write(walk.get(oid) if command == "get" else walk.getnext(oid))
        elif command == "set":
            stdin.readline()
            stdin.readline()
            stdout.write("not-writable\n")
        else:
            stdout.write("NONE\n")
        stdout.flush()


if __name__ == "__main__":
    main()
