"""The lab API on real namespaces: links that carry traffic, impairments measured by real pings,
TCP and iptables counters, SNMP devices answering, status, teardown and stale leftovers."""

from __future__ import annotations

import ipaddress
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from fieldmon.lab.impair import EchoResponder, loss_counters, process_alive
from fieldmon.lab.netns import Namespace, list_namespaces, run
from fieldmon.lab.process import wait_for
from fieldmon.lab.topology import (
    ApSpec,
    Lab,
    LabError,
    LabNotUpError,
    Schedule,
    SiteSpec,
    Step,
    UnknownLinkError,
    lab_namespaces,
    remove_stale_labs,
)

pytestmark = [
    pytest.mark.netns,
    pytest.mark.skipif(os.geteuid() != 0, reason="the lab creates namespaces (needs root)"),
]
SITE = SiteSpec("ward", aps=(ApSpec("ap-a", "generic-ap"),), parent_rate="10mbit")


def fping(address: str, count: int, period_ms: int = 50) -> list[float | None]:
    """RTTs in ms of `count` echoes from the root namespace, None where none came back."""
    completed = run(
        None, "fping", "-C", str(count), "-p", str(period_ms), "-t", "500", "-q", address,
        check=False,
    )  # fmt: skip
    values = completed.stderr.split(" : ", 1)[1].split()
    assert len(values) == count, completed.stderr
    return [None if value == "-" else float(value) for value in values]


def answers(address: str) -> bool:
    """Alive within three tries (a link just restored may still be resolving neighbours)."""
    return run(None, "fping", "-t", "300", "-r", "2", "-q", address, check=False).returncode == 0


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    with Lab.up(f"t{os.getpid()}", [SITE], tmp_path_factory.mktemp("labs")) as lab:
        yield lab


@pytest.fixture
def ward(lab: Lab) -> Iterator[Lab]:
    """The module's lab, every link restored after the test."""
    yield lab
    for link in lab.links:
        lab.restore(link.key)


def test_every_link_carries_both_families_through_the_site_router(ward: Lab) -> None:
    assert [link.key for link in ward.links] == ["ward/lan", "ward/parent", "ward/internet"]
    for link in ward.links:
        assert answers(link.address), link
        assert answers(link.address_v6), link
    # The parent hospital is reached through the site router, not directly.
    route = run(None, "ip", "route", "get", ward.link("ward/parent").address).stdout
    assert f"via {ward.link('ward/lan').address}" in route


def test_simulated_ap_and_router_answer_snmp(ward: Lab) -> None:
    ap, router = (
        next(d for d in ward.devices if d.name == name) for name in ("ap-a", "uplink-router")
    )
    assert (ap.profile, router.profile) == ("generic-ap", "if-mib")

    def get(device: object, oid: str) -> str:
        target = f"{device.address}:{device.port}"  # type: ignore[attr-defined]
        community = device.community  # type: ignore[attr-defined]
        out = run(None, "snmpget", "-v2c", "-c", community, "-Oqv", target, oid).stdout
        return out.strip()

    # The AP serves its recorded walk, counters advancing (ifInOctets.2: +2000 per second).
    first = int(get(ap, ".1.3.6.1.2.1.2.2.1.10.2"))
    time.sleep(1.1)  # a second of counter growth
    assert int(get(ap, ".1.3.6.1.2.1.2.2.1.10.2")) >= first + 2000
    # The router serves its namespace's real interfaces, named after the links.
    names = run(
        None, "snmpwalk", "-v2c", "-c", router.community, "-Oqv",
        f"{router.address}:{router.port}", ".1.3.6.1.2.1.31.1.1.1.1",
    ).stdout  # fmt: skip
    assert {"lan0", "wan-parent", "wan-internet", "port1"} <= set(names.replace('"', "").split())


def test_loss_seen_by_pings_equals_the_iptables_drop_count(ward: Lab) -> None:
    link = ward.impair("ward/parent", loss_pct=30)
    assert link.loss_pct == 30
    far = Namespace(link.far_ns)
    assert loss_counters(far, link.far_dev, ("ipv4",)) == (0, 0)
    rtts = fping(link.address, 200, period_ms=10)
    lost = rtts.count(None)
    arrived, dropped = loss_counters(far, link.far_dev, ("ipv4",))
    assert (arrived, dropped) == (200, lost)
    assert 30 <= lost <= 90  # 30 % of 200, loosely (binomial spread)
    status = next(s for s in ward.status()["links"] if s["link"] == "ward/parent")
    assert status["packets_dropped"] >= lost
    ward.impair("ward/parent", loss_pct=0)
    assert None not in fping(link.address, 20, period_ms=10)


def test_delay_and_jitter_come_from_an_echo_responder_at_the_far_end(ward: Lab) -> None:
    link = ward.impair("ward/parent", delay_ms=40, jitter_ms=10)
    assert link.echo_pid is not None and process_alive(link.echo_pid, EchoResponder.MARKER)
    rtts = [rtt for rtt in fping(link.address, 20, period_ms=100) if rtt is not None]
    assert len(rtts) == 20
    assert min(rtts) >= 29.5 and 37 <= statistics.median(rtts) <= 50, rtts
    assert max(rtts) - min(rtts) >= 6, rtts
    # Other links keep their own latency.
    assert statistics.median(r for r in fping(ward.link("ward/internet").address, 5) if r) < 10
    ward.impair("ward/parent", delay_ms=5, jitter_ms=0)  # changed in place, same process
    assert ward.link("ward/parent").echo_pid == link.echo_pid
    fast = [rtt for rtt in fping(link.address, 5) if rtt is not None]
    assert 4.9 <= statistics.median(fast) < 15, fast
    ward.impair("ward/parent", delay_ms=0, jitter_ms=0)
    assert ward.link("ward/parent").echo_pid is None
    assert not process_alive(link.echo_pid, EchoResponder.MARKER)
    assert None not in fping(link.address, 3)  # the kernel answers again


RECEIVER = """
import socket, sys, time
server = socket.create_server((sys.argv[1], 0))
print(server.getsockname()[1], flush=True)
conn, _ = server.accept()
conn.recv(65536)
start = time.monotonic() + 0.5
total = 0
while (now := time.monotonic()) < start + 2.0:
    data = conn.recv(65536)
    if now >= start:
        total += len(data)
print(total * 8 / 2.0, flush=True)
"""


def tcp_rate_bps(far_ns: str, address: str) -> float:
    """Bits per second a TCP stream from the root namespace reaches `address` with (2 s)."""
    receiver = subprocess.Popen(
        ["ip", "netns", "exec", far_ns, sys.executable, "-c", RECEIVER, address],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert receiver.stdout is not None
        port = int(receiver.stdout.readline())
        import socket

        chunk = b"x" * 65536
        with socket.create_connection((address, port), timeout=5) as sender:
            deadline = time.monotonic() + 4
            try:
                while receiver.poll() is None and time.monotonic() < deadline:
                    sender.sendall(chunk)
            except OSError:
                pass  # the receiver is done and closed
        return float(receiver.stdout.readline())
    finally:
        receiver.kill()
        receiver.wait()


def test_rate_limits_throughput_with_tbf(ward: Lab) -> None:
    link = ward.impair("ward/parent", rate="2mbit")
    qdisc = run(None, "ip", "netns", "exec", link.near_ns or "", "tc", "qdisc", "show",
                "dev", link.near_dev).stdout  # fmt: skip
    assert "tbf" in qdisc and "2Mbit" in qdisc
    slow = tcp_rate_bps(link.far_ns, link.address)
    ward.impair("ward/parent", rate="8mbit")
    fast = tcp_rate_bps(link.far_ns, link.address)
    assert 1.0e6 <= slow <= 2.3e6, slow
    assert 4.0e6 <= fast <= 9.0e6, fast
    assert fast / slow > 2.5


def test_cut_takes_the_far_end_down_and_restore_brings_back_routes(ward: Lab) -> None:
    link = ward.impair("ward/parent", cut=True)
    assert link.cut
    assert not answers(link.address)
    assert not answers(link.address_v6)
    state = run(None, "ip", "-n", link.far_ns, "-br", "link", "show", link.far_dev).stdout
    assert "DOWN" in state
    assert answers(ward.link("ward/internet").address)  # the other uplink is unaffected
    status = next(s for s in ward.status()["links"] if s["link"] == "ward/parent")
    assert status["cut"] is True
    ward.restore("ward/parent")
    assert answers(link.address)
    assert answers(link.address_v6)  # the far end's default routes are back


def test_status_reports_namespaces_links_and_devices(ward: Lab) -> None:
    ward.impair("ward/internet", loss_pct=10, rate="1mbit")
    status = ward.status()
    assert status["lab"] == ward.name
    assert all(status["namespaces"].values()) and len(status["namespaces"]) == 3
    internet = next(s for s in status["links"] if s["link"] == "ward/internet")
    assert (internet["loss_pct"], internet["rate"], internet["cut"]) == (10, "1mbit", False)
    assert {d["device"] for d in status["devices"]} == {"ap-a", "uplink-router"}
    assert all(d["running"] for d in status["devices"])
    # Another process sees the same lab through the state file.
    again = Lab.attach(ward.name, Path(ward.state.state_dir).parent)
    assert again.link("ward/internet").rate == "1mbit"


def test_unknown_links_and_bad_values_are_named(ward: Lab) -> None:
    with pytest.raises(UnknownLinkError, match=r"no link 'ward/satellite'.*ward/parent"):
        ward.impair("ward/satellite", loss_pct=1)
    with pytest.raises(ValueError, match="rate 'fast'"):
        ward.impair("ward/parent", rate="fast")
    with pytest.raises(ValueError, match="loss must be between 0 and 100"):
        ward.impair("ward/parent", loss_pct=120)


def test_a_schedule_applies_its_steps_in_order_never_early(ward: Lab) -> None:
    seen: list[str] = []
    steps = [
        Step(1.0, "ward/parent", "restore", restore=True),
        Step(0.0, "ward/parent", "lossy", loss_pct=50),
        Step(0.5, "ward/parent", "cut", cut=True),
        # An action step needs no link of the lab; its failure is recorded, not raised.
        Step(0.7, "ward/his", "his slow", action=lambda: seen.append("action ran")),
        Step(0.8, "ward/his", "his broken", action=lambda: Path("/nonexistent/x").write_text("")),
        Step(60, "ward/parent", "never: stopped before", loss_pct=1),
    ]
    schedule = Schedule(ward, steps, lambda step: seen.append(step.label)).start()
    try:
        wait_for(lambda: len(seen) >= 5, "the first steps", 15, interval=0.05)
    finally:
        schedule.stop()  # returns at once, though a step was still due in a minute
    assert seen == ["lossy", "cut", "action ran", "his slow", "restore"]
    assert len(schedule.errors) == 1 and schedule.errors[0].startswith("his broken at 0.8s: ")
    assert all(at >= step.at_s for at, step in schedule.applied)
    assert ward.link("ward/parent").impairments() == {
        "loss_pct": 0, "delay_ms": 0, "jitter_ms": 0, "rate": "10mbit", "cut": False
    }  # fmt: skip
    assert answers(ward.link("ward/parent").address)
    with pytest.raises(UnknownLinkError):
        Schedule(ward, [Step(1, "ward/nope")])


def test_down_leaves_nothing_behind(tmp_path: Path) -> None:
    lab = Lab.up(f"d{os.getpid()}", [SITE], tmp_path)
    parent = lab.impair("ward/parent", delay_ms=5)
    pids = [d.pid for d in lab.devices] + [parent.echo_pid]
    root_ends = [link.near_dev for link in lab.links if link.near_ns is None]
    assert all(pid is not None and Path(f"/proc/{pid}").exists() for pid in pids)
    lab.down()
    assert lab_namespaces(lab.name) == []
    assert not any(Path(f"/proc/{pid}").exists() for pid in pids)
    routes = run(None, "ip", "route", "show").stdout.splitlines()
    far_networks = [str(ipaddress.IPv4Interface(link.far_v4).network) for link in lab.links]
    assert not [route for route in routes if route.split()[0] in far_networks]
    for dev in root_ends:
        assert run(None, "ip", "link", "show", dev, check=False).returncode != 0
    assert not (tmp_path / lab.name).exists()
    with pytest.raises(LabNotUpError, match=f"lab '{lab.name}' is not up"):
        Lab.attach(lab.name, tmp_path)


def test_up_refuses_a_running_lab_and_clears_a_crashed_one(tmp_path: Path) -> None:
    name = f"s{os.getpid()}"
    # A crash half-way through an earlier `up`: a namespace of ours, a process inside, no state.
    leftover = Namespace(f"fm-lab.{name}.ward.gw").create()
    sleeper = subprocess.Popen(["ip", "netns", "exec", leftover.name, "sleep", "60"])
    try:
        with Lab.up(name, [SiteSpec("ward", router=False)], tmp_path) as lab:
            assert sleeper.wait(timeout=10) != 0  # stopped: it ran in our stale namespace
            with pytest.raises(LabError, match=f"lab '{name}' is already up"):
                Lab.up(name, [SiteSpec("ward", router=False)], tmp_path)
            assert Lab.attach(name, tmp_path).links == lab.links
    finally:
        sleeper.kill()
        sleeper.wait()
    assert lab_namespaces(name) == []


def test_remove_stale_labs_touches_only_dead_owners(tmp_path: Path) -> None:
    stem = f"st{os.getpid()}x"
    dead = subprocess.Popen(["true"])
    dead.wait()
    stale = Namespace(f"fm-lab.{stem}{dead.pid}.a.gw").create()
    alive = Namespace(f"fm-lab.{stem}{os.getpid()}.a.gw").create()
    other = Namespace(f"fm-lab.{stem}{dead.pid}x.a.gw").create()  # not STEM<pid>: not ours
    try:
        assert remove_stale_labs(stem) == [stale.name]
        names = list_namespaces()
        assert alive.name in names and other.name in names and stale.name not in names
    finally:
        for ns in (stale, alive, other):
            ns.delete()
