"""A systemd service unit and its drop-ins, merged as systemd does, for the bundle and tests.

The agent's bundle takes what its installer needs from `deploy/systemd/fieldmon-agent.service`
at build time (the program and config the unit runs, its capabilities), and the commissioning
test starts the agent with the command line, user and capabilities of the unit as installed, unit
plus drop-ins, since there is no systemd as PID 1 to do it. Only what those two need is parsed:
`[Section]` headers, `Key=value` lines, comments, line continuations, and the rule that an empty
assignment resets a list setting.
"""

from __future__ import annotations

import shlex
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

# ExecStart= prefixes that change how systemd runs the command, not the command itself.
_EXEC_PREFIXES = "-@:+!|"


class UnitError(ValueError):
    """A unit file that does not say what the caller needs; the message names the setting."""


@dataclass
class Unit:
    """A unit's settings: `settings[section][key]` lists every assignment left after merging."""

    name: str
    settings: dict[str, dict[str, list[str]]] = field(default_factory=dict)

    def values(self, section: str, key: str) -> list[str]:
        """Every value assigned to `key` (an empty assignment resets the ones before it)."""
        return list(self.settings.get(section, {}).get(key, []))

    def value(self, section: str, key: str, default: str | None = None) -> str | None:
        """The last value of a single-valued setting, or `default`."""
        found = self.values(section, key)
        return found[-1] if found else default

    def flag(self, section: str, key: str) -> bool:
        """A boolean setting (systemd's yes/true/on/1)."""
        return (self.value(section, key) or "").lower() in ("1", "yes", "true", "on")

    def exec_start(self) -> list[str]:
        """The service's ExecStart= command as a list of words, prefixes removed."""
        commands = self.values("Service", "ExecStart")
        if len(commands) != 1:
            raise UnitError(f"{self.name}: expected one ExecStart= line, found {len(commands)}")
        words = shlex.split(commands[0])
        if not words:
            raise UnitError(f"{self.name}: ExecStart= is empty")
        words[0] = words[0].lstrip(_EXEC_PREFIXES)
        if not words[0].startswith("/"):
            raise UnitError(f"{self.name}: ExecStart= must start with an absolute path")
        return words

    def option(self, name: str) -> str:
        """The value that follows `name` (e.g. `--config`) in ExecStart=."""
        words = self.exec_start()
        for index, word in enumerate(words):
            if word == name and index + 1 < len(words):
                return words[index + 1]
            if word.startswith(f"{name}="):
                return word.split("=", 1)[1]
        raise UnitError(f"{self.name}: ExecStart= has no {name} option")

    def capabilities(self, key: str = "AmbientCapabilities") -> list[str]:
        """Capabilities named by `key`, lower case without `CAP_` (setpriv's spelling)."""
        names: list[str] = []
        for value in self.values("Service", key):
            for word in value.split():
                cap = word.lower().removeprefix("cap_")
                if cap not in names:
                    names.append(cap)
        return names

    def state_directory(self) -> str | None:
        """Where StateDirectory= puts the service's state (/var/lib/NAME), if it has one."""
        names = " ".join(self.values("Service", "StateDirectory")).split()
        return f"/var/lib/{names[0].split(':')[0]}" if names else None


def _logical_lines(text: str) -> Iterable[str]:
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not pending and (not line or line[0] in "#;"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        yield pending + line
        pending = ""
    if pending:
        yield pending


def parse_into(unit: Unit, text: str, source: str) -> None:
    """Merge one unit file or drop-in (`source` names it in errors) into `unit`."""
    section = ""
    for line in _logical_lines(text):
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1]
            continue
        key, sep, value = line.partition("=")
        if not sep or not section:
            raise UnitError(f"{source}: cannot read {line!r}")
        values = unit.settings.setdefault(section, {}).setdefault(key.strip(), [])
        value = value.strip()
        if value:
            values.append(value)
        else:
            values.clear()  # `Key=` resets what came before, as systemd does


def read_unit(path: Path, dropins: Iterable[Path] | None = None) -> Unit:
    """The unit at `path` merged with `dropins` (by default `PATH.d/*.conf`, in name order)."""
    unit = Unit(path.name)
    parse_into(unit, path.read_text(encoding="utf-8"), str(path))
    if dropins is None:
        dropins = sorted(path.parent.joinpath(f"{path.name}.d").glob("*.conf"))
    for dropin in dropins:
        parse_into(unit, dropin.read_text(encoding="utf-8"), str(dropin))
    return unit
