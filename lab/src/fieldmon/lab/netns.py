"""Network namespaces and veth links for tests and the lab, named `fm-*` and always removed.

Everything runs `ip` and friends with argument lists (never a shell). Addresses come from
ranges that never leave this machine: 198.18.0.0/15 (RFC 2544, benchmarking) for IPv4 and a
unique-local fd00::/8 prefix (RFC 4193) for IPv6.

    with Namespace(unique_name("silent")) as far:
        link = veth(None, far)                 # root namespace <-> far
        far.sysctl("net.ipv4.icmp_echo_ignore_all", "1")
        ... ping link.b_v4.ip from the root namespace ...
"""

from __future__ import annotations

import contextlib
import ipaddress
import itertools
import json
import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from types import TracebackType
from typing import Self

PREFIX = "fm-"
IPV4_POOL = ipaddress.IPv4Network("198.18.0.0/15")
IPV6_POOL = ipaddress.IPv6Network("fd00:666d::/32")  # inside fd00::/8; "fm" in hex
_COMMAND_TIMEOUT_S = 30.0
_IFNAME_MAX = 15  # IFNAMSIZ - 1
_counter = itertools.count()


class NetnsError(RuntimeError):
    """A namespace command failed; `command` and `stderr` say which and why."""

    def __init__(self, command: list[str], returncode: int, stderr: str) -> None:
        super().__init__(f"{' '.join(command)} failed ({returncode}): {stderr.strip()}")
        self.command = command
        self.returncode = returncode
        self.stderr = stderr


def _run(*cmd: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    command = list(cmd)
    completed = subprocess.run(
        command, capture_output=True, text=True, timeout=_COMMAND_TIMEOUT_S, check=False
    )
    if check and completed.returncode != 0:
        raise NetnsError(command, completed.returncode, completed.stderr)
    return completed


def _serial() -> int:
    """A number unique within this process; mixed with the PID into names and subnets."""
    return next(_counter)


def unique_name(tag: str) -> str:
    """A namespace name unique to this process and call, e.g. `fm-silent-4711-0`."""
    return f"{PREFIX}{tag}-{os.getpid()}-{_serial()}"


def _check_name(name: str) -> None:
    if not name.startswith(PREFIX) or "/" in name or len(name) > 200:
        raise ValueError(f"namespace name {name!r} must start with {PREFIX!r} and contain no '/'")


def list_namespaces() -> list[str]:
    """Names of every network namespace `ip netns` knows."""
    out = _run("ip", "netns", "list").stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


class Namespace:
    """A network namespace named `fm-*`: created on `create()`/`with`, deleted on `delete()`/exit.

    `delete()` is idempotent. Deleting a namespace also destroys the veth pairs with an end in it,
    so nothing is left in the root namespace either.
    """

    def __init__(self, name: str) -> None:
        _check_name(name)
        self.name = name

    def __repr__(self) -> str:
        return f"Namespace({self.name!r})"

    def create(self) -> Self:
        """Add the namespace and bring its loopback up."""
        _run("ip", "netns", "add", self.name)
        try:
            self.ip("link", "set", "lo", "up")
        except NetnsError:
            self.delete()
            raise
        return self

    def delete(self) -> None:
        """Remove the namespace, and its veth pairs, if it exists."""
        if self.exists():
            _delete_namespace(self.name)

    def exists(self) -> bool:
        """True while the namespace exists."""
        return self.name in list_namespaces()

    def run(self, *cmd: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run `cmd` inside the namespace (`ip netns exec`); text output captured."""
        return run(self, *cmd, check=check)

    def ip(self, *args: str) -> subprocess.CompletedProcess[str]:
        """`ip -n NAME ARGS...`."""
        return _run("ip", "-n", self.name, *args)

    def sysctl(self, key: str, value: str) -> None:
        """Set a per-namespace sysctl, e.g. `net.ipv4.icmp_echo_ignore_all`."""
        self.run("sysctl", "-q", "-w", f"{key}={value}")

    def __enter__(self) -> Self:
        return self.create()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.delete()


def _delete_namespace(name: str, *, check: bool = True) -> None:
    # The kernel dismantles a deleted namespace later, in a work queue; deleting the veth ends
    # first removes the pairs (and their root-side ends and routes) before we return.
    listing = _run("ip", "-n", name, "-j", "link", "show", "type", "veth", check=False)
    if listing.returncode == 0 and listing.stdout.strip():
        for link in json.loads(listing.stdout):
            _run("ip", "-n", name, "link", "delete", link["ifname"], check=False)
    _run("ip", "netns", "delete", name, check=check)


def run(
    ns: Namespace | str | None, *cmd: str, check: bool = True
) -> subprocess.CompletedProcess[str]:
    """Run `cmd` in namespace `ns` (None: the root namespace); raises NetnsError on failure."""
    if ns is None:
        return _run(*cmd, check=check)
    name = ns.name if isinstance(ns, Namespace) else ns
    _check_name(name)
    return _run("ip", "netns", "exec", name, *cmd, check=check)


@dataclass(frozen=True)
class VethPair:
    """A veth link: end `a` in namespace `a_ns` (None = root), end `b` in `b_ns`."""

    a_ns: Namespace | None
    b_ns: Namespace
    a_name: str
    b_name: str
    a_v4: ipaddress.IPv4Interface
    b_v4: ipaddress.IPv4Interface
    a_v6: ipaddress.IPv6Interface
    b_v6: ipaddress.IPv6Interface


def link_addresses(
    index: int,
) -> tuple[
    ipaddress.IPv4Interface,
    ipaddress.IPv4Interface,
    ipaddress.IPv6Interface,
    ipaddress.IPv6Interface,
]:
    """Addresses for link number `index`: a /30 from 198.18.0.0/15 and a /64 from fd00::/8."""
    slots = IPV4_POOL.num_addresses // 4
    base = int(IPV4_POOL.network_address) + (index % slots) * 4
    v6_net = ipaddress.IPv6Network((int(IPV6_POOL.network_address) + (index << 64), 64))
    v6_a = ipaddress.IPv6Interface((int(v6_net.network_address) + 1, 64))
    v6_b = ipaddress.IPv6Interface((int(v6_net.network_address) + 2, 64))
    v4_a = ipaddress.IPv4Interface((base + 1, 30))
    v4_b = ipaddress.IPv4Interface((base + 2, 30))
    return v4_a, v4_b, v6_a, v6_b


def _link_index() -> int:
    # Spread processes over the pool so concurrent test runs pick different subnets.
    return (os.getpid() * 64 + _serial()) % 32768


def spare_address() -> ipaddress.IPv4Interface:
    """An IPv4 address from the pool that no veth of this process uses (a loopback alias)."""
    return link_addresses(_link_index())[1]


def veth(a_ns: Namespace | None, b_ns: Namespace, *, index: int | None = None) -> VethPair:
    """Join `a_ns` (None = the root namespace) and `b_ns` with an addressed, up veth pair.

    The pair gets a /30 from 198.18.0.0/15 and a /64 from fd00::/8 (`link_addresses`), with
    duplicate address detection off so IPv6 works at once.
    """
    index = _link_index() if index is None else index
    a_v4, b_v4, a_v6, b_v6 = link_addresses(index)
    stem = f"fv{os.getpid():x}x{_serial():x}"[: _IFNAME_MAX - 1]
    a_name, b_name = f"{stem}a", f"{stem}b"
    a_ip = ("ip",) if a_ns is None else ("ip", "-n", a_ns.name)
    _run(*a_ip, "link", "add", a_name, "type", "veth", "peer", "name", b_name, "netns", b_ns.name)
    try:
        b_ip = ("ip", "-n", b_ns.name)
        for ip, name, v4, v6 in ((a_ip, a_name, a_v4, a_v6), (b_ip, b_name, b_v4, b_v6)):
            _run(*ip, "addr", "add", str(v4), "dev", name)
            _run(*ip, "-6", "addr", "add", str(v6), "dev", name, "nodad")
            _run(*ip, "link", "set", name, "up")
    except NetnsError:
        _run(*a_ip, "link", "delete", a_name, check=False)
        raise
    return VethPair(a_ns, b_ns, a_name, b_name, a_v4, b_v4, a_v6, b_v6)


def remove_stale(prefix: str = PREFIX) -> list[str]:
    """Delete leftover namespaces whose names start with `prefix` (itself `fm-...`).

    For a crashed earlier run: pass a prefix specific enough not to touch namespaces another
    live test run is using, e.g. `fm-silent-`.
    """
    _check_name(prefix)
    removed = []
    for name in list_namespaces():
        if name.startswith(prefix):
            _delete_namespace(name, check=False)
            removed.append(name)
    return removed


@contextlib.contextmanager
def silent_host(tag: str = "silent") -> Iterator[str]:
    """A host in a namespace of our own, reachable from the root namespace, that never answers
    echoes; yields its IPv4 address and deletes everything on exit."""
    with Namespace(unique_name(tag)) as far:
        link = veth(None, far)
        far.sysctl("net.ipv4.icmp_echo_ignore_all", "1")
        yield str(link.b_v4.ip)
