"""The agent keeps CAP_NET_RAW to itself: no process it starts inherits it.

The unit (deploy/systemd/fieldmon-agent.service) runs the agent as an unprivileged dynamic user
with `AmbientCapabilities=CAP_NET_RAW`: the only way systemd gives a non-root program a
capability, and the agent needs it for as long as it runs (it opens raw ICMP sockets, and
SO_BINDTODEVICE, whenever a round needs a new one, a reload included). But the ambient set is
handed on by execve to every program the agent starts (vcgencmd, hook scripts), and the
inheritable set lets a program with file-inheritable capabilities take it too. So at start the
agent empties both, keeping its own permitted and effective sets: its children start with no
capability. The unit's `NoNewPrivileges=yes` keeps them from gaining one through setuid.

Both are plain system calls (prctl, capget/capset) through ctypes, in
fieldmon.firmware_hooks.privileges beside what the hook runner drops in each child; the unit's
system-call filter allows capset for both.
"""

from __future__ import annotations

import logging
from pathlib import Path

from fieldmon.firmware_hooks.privileges import clear_inheritance

logger = logging.getLogger(__name__)

CAP_NET_RAW = 13


def capability_sets(status: Path = Path("/proc/self/status")) -> dict[str, int]:
    """This process's capability sets as bit masks: CapInh, CapPrm, CapEff, CapBnd, CapAmb."""
    sets = {}
    for line in status.read_text(encoding="ascii").splitlines():
        key, _, value = line.partition(":")
        if key.startswith("Cap"):
            sets[key] = int(value.strip(), 16)
    return sets


def keep_capabilities_to_ourselves() -> list[str]:
    """Empty the ambient and inheritable sets; returns what could not be done, in words.

    Nothing to do (and nothing done) for a process with neither, such as a test run or
    `check` started by a user.
    """
    try:
        before = capability_sets()
    except OSError:
        return []  # no /proc: not Linux, nothing to hand on
    if not before.get("CapAmb") and not before.get("CapInh"):
        return []
    problems = clear_inheritance()
    after = capability_sets()
    logger.info(
        "capabilities kept to the agent, none passed to its child processes"
        if not after.get("CapAmb")
        else "capabilities: the ambient set could not be cleared; child processes inherit it",
        extra={
            "net_raw": bool(after.get("CapEff", 0) & (1 << CAP_NET_RAW)),
            "effective": hex(after.get("CapEff", 0)),
            "ambient": hex(after.get("CapAmb", 0)),
            "inheritable": hex(after.get("CapInh", 0)),
        },
    )
    return problems
