"""The shipped hooks (deploy/hooks) on their own: the diagnostics hook's one line and report, and
the LTE failover hook's decisions in a namespace of the test's own (two dummy uplinks). The lab
test (tests/e2e/test_hooks_lab.py) runs both under the agent on a real cut."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from fieldmon.firmware_hooks.hooks import EventName, HookEvent, run_hook
from fieldmon.lab.netns import Namespace, unique_name, veth

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="hooks are root's; namespaces too")
SHIPPED = Path(__file__).resolve().parents[2] / "deploy" / "hooks"


def _install(directory: Path, name: str, conf: str) -> Path:
    directory.mkdir(mode=0o755, exist_ok=True)
    directory.chmod(0o755)
    hook = directory / name
    shutil.copy(SHIPPED / name, hook)
    hook.chmod(0o755)
    stem = name.split("-", 1)[1]
    (directory / f"{stem}.conf").write_text(conf, encoding="ascii")
    (directory / f"{stem}.conf").chmod(0o644)
    return hook


def _event(name: EventName, target: str | None) -> HookEvent:
    return HookEvent(name, "field", "field-pi", time.time_ns(), target, {"state": "down"})


def test_diagnostics_prints_one_line_and_keeps_a_report(tmp_path: Path) -> None:
    reports = tmp_path / "reports"
    hook = _install(tmp_path / "hooks", "10-diagnostics", f"REPORT_DIR={reports}\nKEEP=2\n")
    run = asyncio.run(run_hook(hook, _event(EventName.LINK_DOWN, "parent-gw"), time_limit=20))
    assert run.ok, run.stderr
    [line] = run.stdout.splitlines()
    assert re.fullmatch(
        r"diag link_down parent-gw: default \S.*; down \S+; neigh failed \d+; errors .+; "
        r"kernel: .*; report "
        + re.escape(str(reports))
        + r"/\d{8}T\d{6}Z-link_down-parent-gw\.txt",
        line,
    ), line
    [report] = reports.iterdir()
    assert line.endswith(str(report))
    text = report.read_text()
    for section in ("## routes", "## addresses", "## interface counters", "## neighbours"):
        assert section in text
    assert "## kernel messages" in text
    event = json.loads(text.split("## event\n", 1)[1].split("\n", 1)[0])
    assert (event["event"], event["target"]) == ("link_down", "parent-gw")
    # Not an event it reports on: nothing printed, nothing written.
    quiet = asyncio.run(run_hook(hook, _event(EventName.LINK_UP, "parent-gw"), time_limit=20))
    assert quiet.ok and quiet.stdout == ""
    assert len(list(reports.iterdir())) == 1
    # Old reports are pruned to KEEP.
    for _ in range(3):
        time.sleep(1.05)  # report names carry the second: let each be its own
        asyncio.run(run_hook(hook, _event(EventName.BROKER_DOWN, None), time_limit=20))
    assert len(list(reports.iterdir())) == 2


@dataclass(frozen=True)
class Site:
    """A namespace with two uplinks to a peer namespace, the default route on the wired one."""

    ns: Namespace
    wired_gw: str
    lte_gw: str


@pytest.fixture
def site() -> Iterator[Site]:
    with Namespace(unique_name("failover")) as ns, Namespace(unique_name("upstream")) as peer:
        gateways = []
        for device in ("wired0", "lte0"):
            pair = veth(ns, peer)
            ns.ip("link", "set", pair.a_name, "down")
            ns.ip("link", "set", pair.a_name, "name", device)
            ns.ip("link", "set", device, "up")
            gateways.append(str(pair.b_v4.ip))
        ns.ip("route", "add", "default", "via", gateways[0], "dev", "wired0")
        yield Site(ns, *gateways)


class Failover:
    """Runs the installed failover hook inside the namespace, as the agent would."""

    def __init__(self, ns: Namespace, hook: Path, state: Path) -> None:
        self.ns, self.hook, self.state = ns, hook, state

    def __call__(self, *args: str, event: str | None = None) -> subprocess.CompletedProcess[str]:
        env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"}
        if event is not None:
            env |= {"FIELDMON_EVENT": event, "FIELDMON_TARGET": args[1] if len(args) > 1 else ""}
        return subprocess.run(
            ["ip", "netns", "exec", self.ns.name, str(self.hook), *args],
            input="{}\n", capture_output=True, text=True, env=env, timeout=20, check=False,
        )  # fmt: skip

    def on(self, event: str, target: str = "parent-wired") -> str:
        done = self(event, target, event=event)
        assert done.returncode == 0, done.stderr
        return done.stdout.strip()

    def device(self) -> str:
        route = self.ns.run("ip", "-4", "route", "show", "default").stdout
        return route.split(" dev ")[1].split()[0]

    def log(self) -> str:
        path = self.state / "log"
        return path.read_text() if path.exists() else ""


@pytest.fixture
def failover(tmp_path: Path, site: Site) -> Iterator[Failover]:
    state = tmp_path / "state"
    conf = (
        f"WIRED_LINK=parent-wired\nWIRED_DEV=wired0\nWIRED_GW={site.wired_gw}\n"
        f"LTE_DEV=lte0\nLTE_GW={site.lte_gw}\nHOLD=1\nSTATE_DIR={state}\n"
    )
    yield Failover(site.ns, _install(tmp_path / "hooks", "50-lte-failover", conf), state)
    # A hold timer still sleeping (a test that failed half-way) ends within HOLD anyway.


def _until(predicate, within: float) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


def test_failover_moves_the_route_and_comes_back_only_after_the_hold(failover: Failover) -> None:
    assert failover.on("link_up") == "lte-failover: parent-wired up; the default route is on wired0"
    assert failover.device() == "wired0"
    assert failover.on("link_down", "parent-lte") == ""  # another link: none of its business
    assert failover.on("link_degraded") == ""  # not in FAIL_ON by default
    assert (
        failover.on("link_down")
        == "lte-failover: parent-wired link_down: default route moved to lte0"
    )
    assert failover.device() == "lte0"
    assert failover("status").stdout.startswith("mode=lte wired=down")
    assert failover.on("link_down").endswith("the default route stays on lte0")
    # Up, then down again within the hold: the waiting timer stands down.
    assert failover.on("link_up") == (
        "lte-failover: parent-wired up; the default route goes back to wired0 if it stays up 1s"
    )
    failover.on("link_down")
    assert _until(lambda: "stood down" in failover.log(), 5), failover.log()
    assert failover.device() == "lte0"
    # Up for good: back after the hold, not before.
    failover.on("link_up")
    went_up = time.monotonic()
    assert failover.device() == "lte0"
    assert _until(lambda: failover.device() == "wired0", 5)
    assert time.monotonic() - went_up >= 0.9
    # The hold's timer logs once the route has moved: the line may trail the route.
    back = "wired link parent-wired up for 1s: default route back via wired0"
    assert _until(lambda: back in failover.log(), 5), failover.log()
    assert failover("status").stdout.startswith("mode=wired wired=up")


def test_failover_with_apply_systemd_only_decides_and_apply_acts(failover: Failover) -> None:
    conf = failover.hook.parent / "lte-failover.conf"
    conf.write_text(conf.read_text() + "APPLY=systemd\n", encoding="ascii")
    assert failover.on("link_down").endswith("default route moved to lte0")
    assert failover.device() == "wired0"  # decided, not applied
    assert (failover.state / "state").read_text().startswith("mode=lte\n")
    applied = failover("apply")  # what fieldmon-uplink.service runs, as root
    assert applied.returncode == 0, applied.stderr
    assert failover.device() == "lte0"


def test_failover_ignores_a_config_others_may_write(failover: Failover) -> None:
    conf = failover.hook.parent / "lte-failover.conf"
    conf.chmod(0o666)
    done = failover("link_down", "parent-wired", event="link_down")
    assert "ignoring" in done.stderr and "(0 666)" in done.stderr
    # The defaults then name another link (parent-gw): nothing happens to this one.
    assert done.stdout == ""
    assert failover.device() == "wired0"
