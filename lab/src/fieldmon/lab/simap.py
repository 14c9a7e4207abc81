"""Simulated SNMP devices: real snmpd serving the project's recorded walks, counters advancing.

Each walk under `walks/` is the recorded view of one device kind (one per shipped AP profile,
plus `if32` for a switch with 32-bit counters only). snmpd hands the walk's subtrees to
`walk_agent.py` over pass_persist, so polls go through net-snmp's real protocol stack.
"""

from __future__ import annotations

import sys
from pathlib import Path

from fieldmon.lab.servers import SnmpdServer

WALKS_DIR = Path(__file__).parent / "walks"
WALK_AGENT = Path(__file__).parent / "walk_agent.py"

# Subtrees a walk's OIDs belong to; snmpd hands each to the walk agent (priority 1 beats its
# own IF-MIB, so a walk can stand for a whole device's interfaces).
SUBTREES = (
    "1.3.6.1.2.1.2.2",
    "1.3.6.1.2.1.31.1.1",
    "1.2.840.10036",
    "1.3.6.1.4.1.41112",
    "1.3.6.1.4.1.14179",
    "1.3.6.1.4.1.14823",
    "1.3.6.1.4.1.14988",
)


def recorded_walk(name: str) -> Path:
    """The shipped walk for a device kind (`unifi`, `cisco-wlc`, ...); names the known ones."""
    path = WALKS_DIR / f"{name}.walk"
    if not path.is_file():
        known = ", ".join(available_walks())
        raise ValueError(f"no recorded walk named {name!r}; known walks: {known}")
    return path


def available_walks() -> list[str]:
    """Names of the recorded walks shipped with fieldmon."""
    return sorted(path.stem for path in WALKS_DIR.glob("*.walk"))


def walk_subtrees(walk: Path) -> list[str]:
    """The SUBTREES that `walk` has OIDs in."""
    oids = [
        line.split()[0].strip(".")
        for line in walk.read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.startswith("#")
    ]
    return [tree for tree in SUBTREES if any(oid.startswith(tree + ".") for oid in oids)]


def walk_server(directory: Path, walk: Path, **snmpd_options: object) -> SnmpdServer:
    """An snmpd (not yet started) serving `walk`; options go to SnmpdServer (port, community)."""
    lines = [
        f"pass_persist -p 1 .{tree} {sys.executable} {WALK_AGENT} {walk}"
        for tree in walk_subtrees(walk)
    ]
    return SnmpdServer(directory, extra_config="\n".join(lines), **snmpd_options)  # type: ignore[arg-type]
