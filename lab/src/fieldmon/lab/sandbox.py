"""Run a command inside what a systemd unit's seccomp settings allow, without systemd.

`python -m fieldmon.lab.sandbox UNIT -- COMMAND...` reads the unit's `SystemCallFilter=`,
`RestrictAddressFamilies=` and `MemoryDenyWriteExecute=`, applies them to itself and execs
COMMAND: the system-call allow list as systemd expands it (`systemd-analyze syscall-filter`),
socket() for the listed families only, no writable-executable memory (the kernel's
PR_SET_MDWE, Linux 6.3+), no new privileges. So a test can run the real daemons under the
shipped unit's filters and see them serve, where a library that needs AF_PACKET, a system call
outside @system-service or JIT memory would make them fail in the field.

What differs from systemd: a refused socket() family fails with EPERM rather than
EAFNOSUPPORT, and the mount-namespace settings (ProtectSystem=, PrivateTmp=, ...) and
capabilities are not applied here (fieldmon.lab.systemd.setpriv_command does the user and
capabilities). Needs libseccomp (Debian's libseccomp2, which systemd itself uses).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import socket
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from fieldmon.lab.systemd import unit_settings

_SCMP_ACT_ALLOW = 0x7FFF0000
_SCMP_ACT_ERRNO = 0x00050000
_SCMP_CMP_EQ = 4
_PR_SET_NO_NEW_PRIVS = 38
_PR_SET_MDWE = 65
_PR_MDWE_REFUSE_EXEC_GAIN = 1


class _ArgCmp(ctypes.Structure):
    _fields_ = [
        ("arg", ctypes.c_uint),
        ("op", ctypes.c_int),
        ("datum_a", ctypes.c_uint64),
        ("datum_b", ctypes.c_uint64),
    ]


def syscall_groups() -> dict[str, list[str]]:
    """systemd's system-call groups (`@system-service` ...), each with its members."""
    listing = subprocess.run(
        ["systemd-analyze", "syscall-filter", "--no-pager"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    groups: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in listing.splitlines():
        if line.startswith("@"):
            current = groups.setdefault(line.strip(), [])
        elif current is not None and line.strip() and not line.strip().startswith("#"):
            current.append(line.strip())
    return groups


def allowed_syscalls(filters: list[str], groups: dict[str, list[str]]) -> set[str]:
    """The allow list `SystemCallFilter=` lines give (the first one an allow list, as ours)."""

    def expand(names: list[str]) -> set[str]:
        found: set[str] = set()
        for name in names:
            found |= expand(groups[name]) if name.startswith("@") else {name}
        return found

    allowed: set[str] = set()
    for value in filters:
        names = expand(value.removeprefix("~").split())
        allowed = allowed - names if value.startswith("~") else allowed | names
    return allowed


def apply(unit: Path) -> str:
    """Apply the unit's filters to this process (for good); returns what was applied."""
    settings = unit_settings(unit)
    allowed = allowed_syscalls(settings["SystemCallFilter"], syscall_groups())
    families = [getattr(socket, name) for name in settings["RestrictAddressFamilies"][0].split()]
    seccomp = ctypes.CDLL(ctypes.util.find_library("seccomp") or "libseccomp.so.2")
    seccomp.seccomp_init.restype = ctypes.c_void_p
    seccomp.seccomp_init.argtypes = [ctypes.c_uint32]
    seccomp.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
    seccomp.seccomp_rule_add_array.argtypes = [
        ctypes.c_void_p,
        ctypes.c_uint32,
        ctypes.c_int,
        ctypes.c_uint,
        ctypes.POINTER(_ArgCmp),
    ]
    seccomp.seccomp_load.argtypes = [ctypes.c_void_p]
    context = seccomp.seccomp_init(_SCMP_ACT_ERRNO | errno.EPERM)
    count = 0
    for name in sorted(allowed - {"socket"}):
        number = seccomp.seccomp_syscall_resolve_name(name.encode())
        if (
            number >= 0
            and seccomp.seccomp_rule_add_array(context, _SCMP_ACT_ALLOW, number, 0, None) == 0
        ):
            count += 1
    number = seccomp.seccomp_syscall_resolve_name(b"socket")
    for family in families:
        condition = (_ArgCmp * 1)(_ArgCmp(0, _SCMP_CMP_EQ, int(family), 0))
        if seccomp.seccomp_rule_add_array(context, _SCMP_ACT_ALLOW, number, 1, condition) != 0:
            raise OSError(f"seccomp refused the socket() rule for {family!r}")
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "no_new_privs")
    mdwe = settings.get("MemoryDenyWriteExecute") == ["yes"]
    if mdwe and libc.prctl(_PR_SET_MDWE, _PR_MDWE_REFUSE_EXEC_GAIN, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "PR_SET_MDWE (Linux 6.3 or later)")
    if seccomp.seccomp_load(context) != 0:
        raise OSError("seccomp_load failed")
    return f"{count} system calls, socket() for {' '.join(str(f.name) for f in families)}" + (
        ", no writable-executable memory" if mdwe else ""
    )


def sandbox_command(unit: Path, command: Sequence[str | os.PathLike[str]]) -> list[str]:
    """`command` run inside `unit`'s seccomp settings."""
    return [sys.executable, "-m", "fieldmon.lab.sandbox", str(unit), "--", *map(os.fspath, command)]


def main(argv: list[str] | None = None) -> None:
    """`python -m fieldmon.lab.sandbox UNIT -- COMMAND...`"""
    arguments = sys.argv[1:] if argv is None else argv
    unit, separator, *command = arguments
    if separator != "--" or not command:
        raise SystemExit("usage: python -m fieldmon.lab.sandbox UNIT -- COMMAND...")
    applied = apply(Path(unit))
    print(f"sandbox of {Path(unit).name}: {applied}", file=sys.stderr, flush=True)
    os.execv(command[0], command)


if __name__ == "__main__":
    main()
