"""The agent keeps CAP_NET_RAW to itself: no process it starts inherits it.

The unit (deploy/systemd/fieldmon-agent.service) runs the agent as an unprivileged dynamic user
with `AmbientCapabilities=CAP_NET_RAW`: the only way systemd gives a non-root program a
capability, and the agent needs it for as long as it runs (it opens raw ICMP sockets, and
SO_BINDTODEVICE, whenever a round needs a new one, a reload included). But the ambient set is
handed on by execve to every program the agent starts (vcgencmd, hook scripts), and the
inheritable set lets a program with file-inheritable capabilities take it too. So at start the
agent empties both, keeping its own permitted and effective sets: its children start with no
capability. The unit's `NoNewPrivileges=yes` keeps them from gaining one through setuid.

Both are plain system calls (prctl, capget/capset) through ctypes, no library; the unit's
system-call filter allows capset for this (and for the hook runner, which drops what is left in
each child).
"""

from __future__ import annotations

import ctypes
import errno
import logging
import os
from pathlib import Path

logger = logging.getLogger(__name__)

_PR_CAP_AMBIENT = 47
_PR_CAP_AMBIENT_CLEAR_ALL = 4
_LINUX_CAPABILITY_VERSION_3 = 0x20080522
CAP_NET_RAW = 13


class _Header(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _Data(ctypes.Structure):
    _fields_ = [
        ("effective", ctypes.c_uint32),
        ("permitted", ctypes.c_uint32),
        ("inheritable", ctypes.c_uint32),
    ]


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
    # The C library the interpreter already has loaded: ctypes.util.find_library would start a
    # child process (ldconfig) to look for it, with the capabilities still to be dropped.
    libc = ctypes.CDLL(None, use_errno=True)
    problems = []
    # EINVAL: a kernel before 4.3 has no ambient set.
    if libc.prctl(_PR_CAP_AMBIENT, _PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0) != 0:
        code = ctypes.get_errno()
        if code != errno.EINVAL:
            problems.append(f"clearing the ambient capabilities: {os.strerror(code)}")
    header = _Header(_LINUX_CAPABILITY_VERSION_3, 0)
    data = (_Data * 2)()  # version 3: two 32-bit words per set
    if libc.capget(ctypes.byref(header), data) == 0:
        for word in data:
            word.inheritable = 0
        if libc.capset(ctypes.byref(header), data) != 0:
            code = ctypes.get_errno()
            problems.append(f"clearing the inheritable capabilities: {os.strerror(code)}")
    else:
        problems.append(f"reading the capabilities: {os.strerror(ctypes.get_errno())}")
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
