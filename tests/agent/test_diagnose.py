"""check reasons like an engineer: one cause behind many failures is said first, and the rows it
explains say so instead of each blaming its own target."""

from __future__ import annotations

from pathlib import Path

import pytest

from fieldmon.agent.diagnose import (
    NO_ADDRESS,
    NO_DEFAULT_ROUTE,
    SITE_SILENT,
    UPLINK_DOWN,
    NetworkFacts,
    Seen,
    diagnose,
    read_network_facts,
)
from fieldmon.agent.probes.base import Status

OK, WARN, FAIL = Status.OK, Status.WARN, Status.FAIL
SITE_WHY = "not reached: the site network does not answer (see above)"
UPLINK_WHY = "not reached: the uplink does not answer (see above)"
ROUTE_WHY = "not reached: this Pi has no default route (see above)"
ADDRESS_WHY = "not reached: this Pi has no network address (see above)"


def link(role: str, status: Status = OK, *, interface: str | None = None) -> Seen:
    return Seen("link", status, status is FAIL, role, interface)


def snmp(status: Status = OK) -> Seen:
    return Seen("snmp", status, status is FAIL)


def broker(status: Status = OK, *, silent: bool | None = None) -> Seen:
    return Seen("broker", status, status is FAIL if silent is None else silent)


HOST = Seen("host", OK)
CONNECTED = NetworkFacts(frozenset({"eth0"}), frozenset({"lo", "eth0", "wwan0"}), True)

CASES = {
    "all well": ([link("gateway"), snmp(), link("parent"), HOST, broker()], [], {}),
    "one AP silent: its own verdict stands": (
        [link("gateway"), snmp(FAIL), link("parent"), HOST, broker()],
        [],
        {},
    ),
    "the gateway silent: the site is, say it first and explain the rest": (
        [link("gateway", FAIL), snmp(FAIL), snmp(FAIL), link("parent", FAIL), HOST, broker(FAIL)],
        [SITE_SILENT],
        {1: SITE_WHY, 2: SITE_WHY, 3: SITE_WHY, 5: SITE_WHY},
    ),
    "the gateway silent but an AP answers: the gateway's own problem": (
        [link("gateway", FAIL), link("ap"), snmp(FAIL), HOST, broker()],
        [],
        {},
    ),
    "no gateway link and every link and device silent": (
        [link("ap", FAIL), snmp(FAIL), link("parent", FAIL), link("internet", FAIL), HOST],
        [SITE_SILENT],
        {0: SITE_WHY, 1: SITE_WHY, 2: SITE_WHY, 3: SITE_WHY},
    ),
    "no gateway link, a device answers: the site is there, the uplink is not": (
        [link("ap", FAIL), snmp(), link("parent", FAIL), HOST, broker(FAIL)],
        [UPLINK_DOWN],
        {2: UPLINK_WHY, 4: UPLINK_WHY},
    ),
    "the site answers, nothing beyond it: the uplink": (
        [link("gateway"), snmp(), link("parent", FAIL), link("internet", FAIL), broker(FAIL)],
        [UPLINK_DOWN],
        {2: UPLINK_WHY, 3: UPLINK_WHY, 4: UPLINK_WHY},
    ),
    "the parent silent but the broker connects: the parent link's own problem": (
        [link("gateway"), link("parent", FAIL), link("internet"), broker()],
        [],
        {},
    ),
    "the broker refuses the login: something beyond answers, no uplink finding": (
        [link("gateway"), link("parent", FAIL), broker(FAIL, silent=False)],
        [],
        {},
    ),
    "a slow gateway (WARN) still answers": (
        [link("gateway", WARN), link("parent", FAIL), link("internet", FAIL), broker(FAIL)],
        [UPLINK_DOWN],
        {1: UPLINK_WHY, 2: UPLINK_WHY, 3: UPLINK_WHY},
    ),
    "services: explained when the site is silent": (
        [link("gateway", FAIL), Seen("tcp", FAIL, True), Seen("http", FAIL, False), broker(FAIL)],
        [SITE_SILENT],
        {1: SITE_WHY, 3: SITE_WHY},  # the http row got an answer (a 503, say): its own words
    ),
    "services: never evidence of the uplink, and not blamed on it (they may be on site)": (
        [
            link("gateway"),
            link("parent", FAIL),
            Seen("dns", OK),
            Seen("tcp", FAIL, True),
            broker(FAIL),
        ],
        [UPLINK_DOWN],
        {1: UPLINK_WHY, 4: UPLINK_WHY},
    ),
    "kinds the reasoning does not know are left alone": (
        [link("gateway", FAIL), Seen("hooks", FAIL), Seen("security", WARN), broker(FAIL)],
        [SITE_SILENT],
        {3: SITE_WHY},
    ),
}


@pytest.mark.parametrize(("rows", "findings", "reasons"), CASES.values(), ids=CASES.keys())
def test_diagnose_over_the_verdicts(
    rows: list[Seen], findings: list[str], reasons: dict[int, str]
) -> None:
    diagnosis = diagnose(rows, CONNECTED)
    assert (diagnosis.findings, diagnosis.reasons) == (findings, reasons)
    # Without the host's facts the verdicts alone give the same answer in these cases.
    assert diagnose(rows).findings == findings


FACT_CASES = {
    "no address at all: nothing can answer": (
        NetworkFacts(frozenset(), frozenset({"lo", "eth0"}), False),
        [link("gateway", FAIL), snmp(FAIL), link("parent", FAIL), broker(FAIL)],
        [NO_ADDRESS],
        {0: ADDRESS_WHY, 1: ADDRESS_WHY, 2: ADDRESS_WHY, 3: ADDRESS_WHY},
    ),
    "no address, but nothing failed: nothing to say": (
        NetworkFacts(frozenset(), frozenset({"lo"}), False),
        [link("gateway"), broker()],
        [],
        {},
    ),
    "the site answers, no default route: that, rather than the uplink": (
        NetworkFacts(frozenset({"eth0"}), frozenset({"lo", "eth0"}), False),
        [link("gateway"), snmp(), link("parent", FAIL), broker(FAIL)],
        [NO_DEFAULT_ROUTE],
        {2: ROUTE_WHY, 3: ROUTE_WHY},
    ),
    "no default route but everything answers (static routes): nothing to say": (
        NetworkFacts(frozenset({"eth0"}), frozenset({"lo", "eth0"}), False),
        [link("gateway"), link("parent"), broker()],
        [],
        {},
    ),
    "a link bound to an interface without an address": (
        CONNECTED,
        [link("gateway"), link("parent", FAIL, interface="wwan0"), link("internet"), broker()],
        [
            "interface wwan0 has no address - is its cable plugged in or its modem connected, "
            "and does its DHCP answer?"
        ],
        {1: "not reached: wwan0 has no address (see above)"},
    ),
    "a link bound to an interface that does not exist: the ICMP verdict says so": (
        CONNECTED,
        [link("gateway"), link("parent", FAIL, interface="eth9"), broker()],
        [],
        {},
    ),
}


@pytest.mark.parametrize(
    ("facts", "rows", "findings", "reasons"), FACT_CASES.values(), ids=FACT_CASES.keys()
)
def test_diagnose_with_the_hosts_network(
    facts: NetworkFacts, rows: list[Seen], findings: list[str], reasons: dict[int, str]
) -> None:
    diagnosis = diagnose(rows, facts)
    assert (diagnosis.findings, diagnosis.reasons) == (findings, reasons)


ROUTE_HEADER = "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT"


@pytest.mark.parametrize(
    ("ipv4", "ipv6", "expected"),
    [
        (["eth0\t00000000\t0100000A\t0003\t0\t0\t100\t00000000\t0\t0\t0"], [], True),
        (["eth0\t0000000A\t00000000\t0001\t0\t0\t100\t00FFFFFF\t0\t0\t0"], [], False),
        (["eth0\t00000000\t0100000A\t0002\t0\t0\t100\t00000000\t0\t0\t0"], [], False),  # not up
        (
            [],
            [
                "00000000000000000000000000000000 00 00000000000000000000000000000000 00 "
                "fe800000000000000000000000000001 00000400 00000001 00000000 00000003 eth0"
            ],
            True,
        ),
        (
            [],
            [
                "00000000000000000000000000000000 00 00000000000000000000000000000000 00 "
                "00000000000000000000000000000000 ffffffff 00000001 00000000 00200200 lo"
            ],
            False,  # the kernel's unreachable default on lo
        ),
    ],
)
def test_the_default_route_is_read_from_proc(
    tmp_path: Path, ipv4: list[str], ipv6: list[str], expected: bool
) -> None:
    (tmp_path / "net").mkdir()
    (tmp_path / "net" / "route").write_text("\n".join([ROUTE_HEADER, *ipv4]) + "\n")
    (tmp_path / "net" / "ipv6_route").write_text("\n".join(ipv6) + "\n")
    assert read_network_facts(tmp_path).default_route is expected


def test_this_hosts_facts_name_its_interfaces() -> None:
    facts = read_network_facts()
    assert "lo" in facts.interfaces
    assert "lo" not in facts.addressed  # loopback addresses do not count
