"""What a hook's process must not inherit from the agent: its capabilities, and new privileges.

The agent's unit gives it CAP_NET_RAW as an ambient capability (raw ICMP without root). Ambient
capabilities survive execve, so a hook would inherit it. `drop_privileges()` runs in the forked
child just before execve (subprocess's `preexec_fn`) and:

- clears the ambient set (prctl PR_CAP_AMBIENT_CLEAR_ALL; kernels before 4.3 have none);
- for an agent that is not root: empties the effective, permitted and inheritable sets (capset),
  so the hook starts with no capability at all, and a binary with file capabilities gains none
  from us either;
- for an agent running as root: empties only the inheritable set. Root's own capabilities are
  root's, as for NetworkManager's dispatcher.d scripts (a hook that changes routes needs them);
- sets no_new_privs, so no setuid binary or file capability raises the hook above that.

It calls only libc functions resolved at import, on buffers made at import: after fork in a
process with threads (paho's, the outbox's), the child must not take locks another thread held.
"""

from __future__ import annotations

import ctypes
import errno
import os

_PR_SET_NO_NEW_PRIVS = 38
_PR_CAP_AMBIENT = 47
_PR_CAP_AMBIENT_CLEAR_ALL = 4
_LINUX_CAPABILITY_VERSION_3 = 0x20080522


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [
        ("effective", ctypes.c_uint32),
        ("permitted", ctypes.c_uint32),
        ("inheritable", ctypes.c_uint32),
    ]


# The C library the interpreter already has loaded: ctypes.util.find_library would start a child
# process (ldconfig), which would inherit the agent's ambient capabilities before they are cleared.
_libc = ctypes.CDLL(None, use_errno=True)
_prctl = _libc.prctl
_prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
_prctl.restype = ctypes.c_int
_capget = _libc.capget
_capset = _libc.capset
_capget.restype = _capset.restype = ctypes.c_int
# Made once: the child only fills them in (version 3 takes two 32-bit words per set).
_HEADER = _CapHeader(_LINUX_CAPABILITY_VERSION_3, 0)
_DATA = (_CapData * 2)()


class PrivilegeError(OSError):
    """The child could not drop what it must not keep; the hook does not run."""


def _check(result: int, what: str, tolerated: tuple[int, ...] = ()) -> None:
    if result == 0:
        return
    code = ctypes.get_errno()
    if code in tolerated:
        return
    raise PrivilegeError(code, f"{what}: {os.strerror(code)}")


def clear_inheritance() -> list[str]:
    """Empty this process's ambient and inheritable sets, keeping its own permitted and effective
    ones, so that no program it starts inherits a capability (the agent at start,
    fieldmon.agent.capabilities). Returns what could not be done, in words."""
    problems = []
    # EINVAL: a kernel before 4.3 has no ambient set.
    if _prctl(_PR_CAP_AMBIENT, _PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0) != 0:
        code = ctypes.get_errno()
        if code != errno.EINVAL:
            problems.append(f"clearing the ambient capabilities: {os.strerror(code)}")
    header = _CapHeader(_LINUX_CAPABILITY_VERSION_3, 0)
    data = (_CapData * 2)()
    if _capget(ctypes.byref(header), data) != 0:
        problems.append(f"reading the capabilities: {os.strerror(ctypes.get_errno())}")
        return problems
    for word in data:
        word.inheritable = 0
    if _capset(ctypes.byref(header), data) != 0:
        code = ctypes.get_errno()
        problems.append(f"clearing the inheritable capabilities: {os.strerror(code)}")
    return problems


def drop_privileges() -> None:
    """Run in the child before execve; see the module docstring."""
    # EINVAL: a kernel before 4.3 has no ambient set, so there is nothing to clear.
    _check(
        _prctl(_PR_CAP_AMBIENT, _PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0),
        "clearing the ambient capabilities",
        (errno.EINVAL,),
    )
    _HEADER.version, _HEADER.pid = _LINUX_CAPABILITY_VERSION_3, 0
    _check(_capget(ctypes.byref(_HEADER), _DATA), "reading the capabilities")
    for word in _DATA:
        word.inheritable = 0
        if os.geteuid() != 0:
            word.effective = word.permitted = 0
    _check(_capset(ctypes.byref(_HEADER), _DATA), "dropping the capabilities")
    _check(_prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "setting no_new_privs")
