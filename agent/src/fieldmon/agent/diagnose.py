"""What `check`'s verdicts mean together: the one cause behind many failures, said first.

Each probe judges its own target ("SNMP timeout from ap-hall-a - wrong community or SNMP
disabled?"). That is the right guess when that target alone is silent, and the wrong one when
nothing answers because the Pi's cable is out: then every row blames its own target. So before
the table is printed, `diagnose` looks at the verdicts together, the way an engineer would:

1. this Pi has no network address (no interface with a usable one, or the interface a link is
   bound to has none): nothing can answer;
2. the site network does not answer: the site gateway (the `role: gateway` links), or, with no
   gateway link, every link and device is silent;
3. the Pi has no default route, and what lies beyond the site network is silent;
4. the site network answers but nothing beyond it does (every parent / internet link and the
   broker are silent): the uplink is down.

Service rows (dns, http, tcp) may be on either side: a silent one is explained by the first two
rules, and is never evidence for the others. The first rule that holds gives the finding printed
above the table, and the rows it explains
say "not reached: ... (see above)" instead of their own guess; the rows that are its evidence
(the gateway's own "no reply") keep their words. When no rule holds, every row keeps its own
verdict. Pure logic over `Seen` rows and `NetworkFacts`; `read_network_facts` reads the host.
"""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path

import psutil

from fieldmon.agent.probes.base import Status

# The kinds and link roles `check` reports, by where their target sits seen from the Pi.
_SITE_ROLES = frozenset({"gateway", "ap"})
_UPLINK_ROLES = frozenset({"parent", "internet"})
_SERVICE_KINDS = frozenset({"dns", "http", "tcp"})


class Zone(Enum):
    """Where a row's target sits, seen from the Pi."""

    SITE = "site"  # on the site network: its gateway, access points, switches, the site router
    UPLINK = "uplink"  # beyond it: the parent hospital, the internet, the NOC's broker
    # On either side (a service: the HIS at the hospital, DNS on the site router). Explained
    # when nothing answers at all, never evidence for where the trouble is.
    EITHER = "either"


def zone_of(kind: str, role: str | None) -> Zone | None:
    """The zone of a row of `check` (its KIND column and, for links, role); None: not a
    network target (the host row) or a kind this reasoning does not know."""
    if kind == "link":
        if role in _UPLINK_ROLES:
            return Zone.UPLINK
        return Zone.SITE if role in _SITE_ROLES else None
    if kind == "snmp":
        return Zone.SITE
    if kind == "broker":
        return Zone.UPLINK
    if kind in _SERVICE_KINDS:
        return Zone.EITHER
    return None


@dataclass(frozen=True)
class Seen:
    """One row of `check` as the reasoning sees it."""

    kind: str  # link, snmp, host, broker, ...
    status: Status
    silent: bool = False  # nothing answered at all (no echo, no SNMP response, no TCP answer)
    role: str | None = None  # a link's role
    interface: str | None = None  # the device a link is bound to


@dataclass(frozen=True)
class NetworkFacts:
    """What this host's network looks like: interfaces with a usable address, default route."""

    addressed: frozenset[str]  # interfaces (not loopback) with a global IPv4 or IPv6 address
    interfaces: frozenset[str]  # every interface that exists
    default_route: bool  # IPv4 or IPv6


@dataclass
class Diagnosis:
    """Findings to print before the table, and the new reason of each row they explain."""

    findings: list[str] = field(default_factory=list)
    reasons: dict[int, str] = field(default_factory=dict)  # row index -> reason


NO_ADDRESS = (
    "this Pi has no network address - is its cable plugged in or its Wi-Fi connected, "
    "and does the site's DHCP answer?"
)
SITE_SILENT = "nothing on the site network answers - is the Pi's cable or Wi-Fi connected?"
NO_DEFAULT_ROUTE = (
    "this Pi has no default route, so nothing beyond the site network can be reached - "
    "did DHCP give it a gateway? (check its network settings)"
)
UPLINK_DOWN = (
    "the site network answers but nothing beyond it does: the uplink is down - check the site "
    "router's WAN side, the modem or satellite terminal, and the line to the parent hospital"
)


def _failed_silent(row: Seen) -> bool:
    return row.status is Status.FAIL and row.silent


def diagnose(rows: list[Seen], facts: NetworkFacts | None = None) -> Diagnosis:
    """The finding that explains most of the failures, if one does (see the module docstring)."""
    zones = [zone_of(row.kind, row.role) for row in rows]
    network = [i for i, zone in enumerate(zones) if zone is not None]
    silent = [i for i in network if _failed_silent(rows[i])]
    if not silent:
        return Diagnosis()
    if facts is not None:
        found = _no_address(rows, silent, facts)
        if found is not None:
            return found
    site = [i for i in network if zones[i] is Zone.SITE]
    uplink = [i for i in network if zones[i] is Zone.UPLINK]
    gateways = [i for i in site if rows[i].kind == "link" and rows[i].role == "gateway"]
    # The site gateway when there is one; else every link and device on either side. Anything
    # on the site that answers (an access point) means the site network itself is there.
    judged = gateways or [i for i in site + uplink if rows[i].kind in ("link", "snmp")]
    site_answers = any(not rows[i].silent for i in (gateways or site))
    all_judged_silent = bool(judged) and all(_failed_silent(rows[i]) for i in judged)
    if all_judged_silent and not any(not rows[i].silent for i in site):
        why = "the site network does not answer"
        return _explain(SITE_SILENT, why, silent, keep=gateways)
    silent_uplink = [i for i in uplink if _failed_silent(rows[i])]
    if facts is not None and not facts.default_route and silent_uplink:
        return _explain(NO_DEFAULT_ROUTE, "this Pi has no default route", silent_uplink)
    uplink_links = [i for i in uplink if rows[i].kind == "link"]
    if uplink_links and site_answers and all(_failed_silent(rows[i]) for i in uplink):
        return _explain(UPLINK_DOWN, "the uplink does not answer", uplink)
    return Diagnosis()


def _no_address(rows: list[Seen], silent: list[int], facts: NetworkFacts) -> Diagnosis | None:
    if not facts.addressed:
        return _explain(NO_ADDRESS, "this Pi has no network address", silent)
    bare = sorted(
        {
            rows[i].interface
            for i in silent
            if rows[i].interface in facts.interfaces and rows[i].interface not in facts.addressed
        }
        - {None}
    )
    if not bare:
        return None
    diagnosis = Diagnosis()
    for interface in bare:
        diagnosis.findings.append(
            f"interface {interface} has no address - is its cable plugged in or its modem "
            "connected, and does its DHCP answer?"
        )
        for i in silent:
            if rows[i].interface == interface:
                diagnosis.reasons[i] = f"not reached: {interface} has no address (see above)"
    return diagnosis


def _explain(finding: str, why: str, rows: list[int], keep: list[int] | None = None) -> Diagnosis:
    kept = set(keep or ())
    return Diagnosis(
        [finding], {i: f"not reached: {why} (see above)" for i in rows if i not in kept}
    )


# -- the host's network, read -----------------------------------------------------------------


def _usable(address: str) -> bool:
    try:
        parsed = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return False
    return not (parsed.is_loopback or parsed.is_link_local or parsed.is_unspecified)


def _default_route(proc: Path) -> bool:
    try:
        ipv4 = (proc / "net" / "route").read_text(encoding="ascii").splitlines()[1:]
    except OSError:
        ipv4 = []
    for line in ipv4:
        fields = line.split()
        # Destination 0.0.0.0 with mask 0, route up (flag 0x1).
        default = len(fields) > 7 and fields[1] == "00000000" and fields[7] == "00000000"
        if default and int(fields[3], 16) & 0x1:
            return True
    try:
        ipv6 = (proc / "net" / "ipv6_route").read_text(encoding="ascii").splitlines()
    except OSError:
        ipv6 = []
    for line in ipv6:
        fields = line.split()
        # ::/0 through an interface other than loopback (the kernel lists an unreachable ::/0
        # on lo); flags 0x1 is RTF_UP.
        default = len(fields) == 10 and fields[0] == "0" * 32 and fields[1] == "00"
        if default and fields[9] != "lo" and int(fields[8], 16) & 0x1:
            return True
    return False


def read_network_facts(proc: Path = Path("/proc")) -> NetworkFacts:
    """This host's interfaces, their addresses and whether it has a default route."""
    families = (socket.AF_INET, socket.AF_INET6)
    interfaces = psutil.net_if_addrs()
    addressed = frozenset(
        name
        for name, addresses in interfaces.items()
        if any(a.family in families and _usable(a.address) for a in addresses)
    )
    return NetworkFacts(addressed, frozenset(interfaces), _default_route(proc))
