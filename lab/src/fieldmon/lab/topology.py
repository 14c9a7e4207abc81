"""The simulated field hospital: sites in network namespaces, links to impair, APs that answer SNMP.

Per site, with the agent in the root namespace (the Pi) and the collector's servers on loopback:

    root (agent) --lan--> SITE.gw (site router, APs) --parent---> SITE.parent   (parent hospital)
                                                     --internet-> SITE.internet (the internet)
    root --port--> each AP: a real snmpd in SITE.gw, on its own address, serving a recorded walk

A site with `lte_rate` has a second uplink to its parent hospital, as a site with an LTE modem
beside its wired line: `SITE.gw --lte--> SITE.parent`. The site router then has a default route
over the wired uplink (`wan-parent`; LTE failover moves it to `wan-lte`), the parent hospital
a `core` address on its loopback that is reached over whichever uplink carries the default
route, and routes back over either (the wired one preferred). A site with `noc` also has the
NOC behind its parent hospital: `root --noc--> SITE.parent`, with the parent hospital
masquerading what it forwards to the NOC, so an agent run in the site router reaches a broker
listening on the NOC end (`Lab.noc_address`) over the site's uplinks, and nothing else.

`gw` forwards between the links, so the agent's pings to the parent hospital cross `lan` and
`parent`, as they cross the site LAN and the uplink in the field. Every link is a veth pair with a
token-bucket rate limit on both ends. `Lab.impair()` changes one link: loss (iptables statistic on
the far end, counted), delay and jitter (an `EchoResponder` at the far end: the kernel has no
netem, so added latency applies to the echoes that far end answers), rate (tbf) and cut (the
far end goes down). Namespaces are named `fm-lab.NAME.SITE.ROLE`; the state file under
`state_dir/NAME/` records them with every PID and address, so another process (the
`fieldmon-lab` CLI) can impair, show and tear down a lab that `up` left running.

    with Lab.up("t1", [SiteSpec("pavilion", aps=(ApSpec("ap-hall", "generic-ap"),))], tmp) as lab:
        lab.impair("pavilion/parent", loss_pct=30, delay_ms=50, jitter_ms=10)
        ... ping lab.link("pavilion/parent").address ...
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import re
import shutil
import signal
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from fieldmon.lab.impair import (
    EchoResponder,
    loss_counters,
    process_alive,
    set_icmp_limit,
    set_link_state,
    set_loss,
    set_rate,
    stop_pid,
)
from fieldmon.lab.netns import (
    Namespace,
    NetnsError,
    VethPair,
    list_namespaces,
    run,
    spare_address,
    veth,
)
from fieldmon.lab.servers import SnmpdServer
from fieldmon.lab.simap import recorded_walk, walk_server

LAB_PREFIX = "fm-lab."
DEFAULT_STATE_DIR = Path("/run/fieldmon-lab")
STATE_FILE = "state.json"
COMMUNITY = "fieldmon-lab"
LINK_NAMES = ("lan", "parent", "internet", "lte", "noc")
_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,39}$")
_GW_DEVICES = {
    "lan": "lan0",
    "parent": "wan-parent",
    "internet": "wan-internet",
    "lte": "wan-lte",
}
LTE_METRIC = "200"  # the parent hospital's route back over LTE, used while the wired one is cut


class LabError(RuntimeError):
    """The lab cannot do what was asked; the message names what is wrong."""


class LabNotUpError(LabError):
    """No lab of that name is up (no state file, or its namespaces are gone)."""


class UnknownLinkError(LabError, KeyError):
    """A link name that is not in the lab; the message lists the ones that are."""

    def __str__(self) -> str:
        return str(self.args[0])


def check_name(kind: str, name: str) -> str:
    """`name` if it is a valid lab or site name (lower-case letters, digits, '-')."""
    if not _NAME_RE.match(name):
        raise ValueError(
            f"{kind} name {name!r} must be 1-40 lower-case letters, digits or '-', "
            "starting with a letter or digit"
        )
    return name


@dataclass(frozen=True)
class ApSpec:
    """A simulated SNMP device: its device name and the recorded walk it serves."""

    name: str
    walk: str  # a walk under fieldmon/lab/walks (simap.available_walks())

    @property
    def profile(self) -> str:
        """The agent's SNMP profile for this walk (walks are named after their profile)."""
        return "if-mib" if self.walk == "if32" else self.walk


@dataclass(frozen=True)
class SiteSpec:
    """One field hospital: its APs and the rate of each link."""

    name: str
    aps: tuple[ApSpec, ...] = ()
    lan_rate: str = "100mbit"
    parent_rate: str = "10mbit"
    internet_rate: str = "20mbit"
    router: bool = True  # snmpd on the site router serving its real IF-MIB (`uplink-router`)
    lte_rate: str | None = None  # a second, LTE uplink to the parent hospital at this rate
    noc: bool = False  # the NOC behind the parent hospital (needs lte_rate: the core address)
    transit: int = 0  # routers between the site router and the parent hospital (a carrier's)
    transit_rate: str = "100mbit"

    def __post_init__(self) -> None:
        if self.noc and self.lte_rate is None:
            raise ValueError(f"site {self.name!r}: `noc` needs `lte_rate` (its core address)")
        if not 0 <= self.transit <= 8:
            raise ValueError(f"site {self.name!r}: `transit` is 0 to 8 routers")
        if self.transit and self.lte_rate is not None:
            raise ValueError(f"site {self.name!r}: `transit` and `lte_rate` do not mix (yet)")

    def rate(self, link: str) -> str:
        """The configured rate of `link` (lan, parent, internet, lte, noc)."""
        if link == "noc":
            return "100mbit"
        if link.startswith("transit"):
            return self.transit_rate
        return str(getattr(self, f"{link}_rate"))


DEFAULT_SITES = (
    SiteSpec("pavilion", aps=(ApSpec("ap-hall-a", "generic-ap"), ApSpec("ap-hall-b", "unifi"))),
    SiteSpec("school", aps=(ApSpec("ap-gym", "mikrotik"),)),
)


@dataclass
class LinkState:
    """One link as built and as impaired now; `far_*` is the end the agent pings."""

    site: str
    name: str
    near_ns: str | None  # None: the root namespace
    far_ns: str
    near_dev: str
    far_dev: str
    near_v4: str
    far_v4: str
    near_v6: str
    far_v6: str
    base_rate: str
    far_routes: list[list[str]] = field(default_factory=list)
    rate: str | None = None
    loss_pct: float = 0.0
    delay_ms: float = 0.0
    jitter_ms: float = 0.0
    cut: bool = False
    echo_pid: int | None = None
    icmp_limit_pct: float = 0.0  # of the far end's own time-exceeded answers, dropped

    @property
    def key(self) -> str:
        """`SITE/LINK`, as the CLI names it."""
        return f"{self.site}/{self.name}"

    @property
    def address(self) -> str:
        """The far end's IPv4 address: what the agent pings for this link."""
        return str(ipaddress.IPv4Interface(self.far_v4).ip)

    @property
    def address_v6(self) -> str:
        """The far end's IPv6 address."""
        return str(ipaddress.IPv6Interface(self.far_v6).ip)

    def impairments(self) -> dict[str, Any]:
        """What is applied now, for `--for` to put back."""
        return {
            "loss_pct": self.loss_pct,
            "delay_ms": self.delay_ms,
            "jitter_ms": self.jitter_ms,
            "rate": self.rate,
            "cut": self.cut,
        }


@dataclass
class DeviceState:
    """One snmpd of the lab: a simulated AP (walk) or the site router (its own IF-MIB)."""

    site: str
    name: str
    walk: str | None
    profile: str
    namespace: str
    address: str
    port: int
    community: str
    directory: str
    pid: int | None = None

    @property
    def marker(self) -> str:
        """A string in this snmpd's command line (its config path): guards stop-by-PID."""
        return str(Path(self.directory) / "snmpd.conf")


@dataclass
class LabState:
    """Everything `down`, `status` and `impair` need, as written to the state file."""

    name: str
    state_dir: str
    owner_pid: int
    created: float
    sites: list[str]
    namespaces: list[str] = field(default_factory=list)
    links: list[LinkState] = field(default_factory=list)
    devices: list[DeviceState] = field(default_factory=list)
    cores: dict[str, str] = field(default_factory=dict)  # site -> its parent hospital's core

    def save(self, path: Path) -> None:
        """Write atomically (a reader never sees half a file)."""
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(self), indent=1), encoding="utf-8")
        tmp.replace(path)

    @classmethod
    def load(cls, path: Path) -> LabState:
        """Read a state file written by `save`."""
        data = json.loads(path.read_text(encoding="utf-8"))
        data["links"] = [LinkState(**link) for link in data["links"]]
        data["devices"] = [DeviceState(**device) for device in data["devices"]]
        known = {f.name for f in fields(cls)}
        return cls(**{key: value for key, value in data.items() if key in known})


def namespace_name(lab: str, site: str, role: str) -> str:
    """`fm-lab.LAB.SITE.ROLE`: dots cannot occur in lab or site names, so prefixes are exact."""
    return f"{LAB_PREFIX}{lab}.{site}.{role}"


def lab_namespaces(lab: str) -> list[str]:
    """Namespaces of lab `lab` that exist now."""
    prefix = f"{LAB_PREFIX}{lab}."
    return [name for name in list_namespaces() if name.startswith(prefix)]


def _pids_in(namespace: str) -> list[int]:
    listing = run(None, "ip", "netns", "pids", namespace, check=False)
    return [int(pid) for pid in listing.stdout.split() if pid.isdigit()]


def _kill_processes_in(namespace: str) -> None:
    """Stop every process still inside our namespace (a crashed lab's snmpd or responder)."""
    pids = _pids_in(namespace)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 5
    while (left := _pids_in(namespace)) and time.monotonic() < deadline:
        time.sleep(0.05)
    for pid in left:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def delete_namespaces(names: Iterable[str]) -> None:
    """Stop what runs inside each (ours: it runs in a namespace of ours) and delete it."""
    for name in names:
        if name in list_namespaces():
            _kill_processes_in(name)
            Namespace(name).delete()


def remove_stale_labs(stem: str) -> list[str]:
    """Delete namespaces of labs named STEM<pid> whose process <pid> is gone (crashed demos).

    Only names of exactly that shape are touched, so a lab of the same stem that another live
    process runs, and every other lab, stay as they are.
    """
    check_name("lab stem", stem)
    pattern = re.compile(rf"^{re.escape(LAB_PREFIX)}{re.escape(stem)}(\d+)\.")
    stale = [
        name
        for name in list_namespaces()
        if (match := pattern.match(name)) and not Path(f"/proc/{match.group(1)}").exists()
    ]
    delete_namespaces(stale)
    return stale


def _rename(ns: Namespace, old: str, new: str) -> None:
    ns.ip("link", "set", old, "down")
    ns.ip("link", "set", old, "name", new)
    ns.ip("link", "set", new, "up")


def _prepared(ns: Namespace) -> Namespace:
    """Renaming and cutting take devices down: keep their IPv6 addresses meanwhile. No
    duplicate address detection: a link-local address still tentative cannot receive the
    neighbour advertisements a router needs to forward to the next hop. Every ICMP error
    answered: a lab node never rate-limits its time-exceeded and unreachable messages unless
    a test asks for it (`Lab.impair(..., icmp_limit_pct=...)`), so traces measure the links."""
    for scope in ("all", "default"):
        ns.sysctl(f"net.ipv6.conf.{scope}.keep_addr_on_down", "1")
        ns.sysctl(f"net.ipv6.conf.{scope}.accept_dad", "0")
    ns.sysctl("net.ipv4.icmp_ratelimit", "0")
    ns.sysctl("net.ipv6.icmp.ratelimit", "0")
    return ns


def _router(ns: Namespace) -> None:
    """Forwarding on, both families."""
    ns.sysctl("net.ipv4.ip_forward", "1")
    ns.sysctl("net.ipv6.conf.all.forwarding", "1")


def _interface(value: object) -> str:
    return str(value)


class Lab:
    """A running lab: build it with `Lab.up`, reach one `up` left running with `Lab.attach`."""

    def __init__(self, state: LabState) -> None:
        self.state = state
        self.directory = Path(state.state_dir)
        self._servers: dict[str, SnmpdServer] = {}  # snmpd we started in this process
        self._responders: dict[str, EchoResponder] = {}  # echo responders we started, by link
        self._lock = threading.Lock()

    # --- building and finding ----------------------------------------------------------------

    @classmethod
    def up(cls, name: str, sites: Iterable[SiteSpec], state_dir: Path = DEFAULT_STATE_DIR) -> Lab:
        """Build lab `name` and write its state file; tears down what it built if it fails.

        A state file of a lab that is still up is an error; leftovers of a crashed or
        rebooted lab of this name (state file or namespaces) are removed first.
        """
        check_name("lab", name)
        sites = list(sites)
        if not sites:
            raise ValueError("a lab needs at least one site")
        for site in sites:
            check_name("site", site.name)
        if len({site.name for site in sites}) != len(sites):
            raise ValueError("site names in a lab must differ")
        directory = state_dir / name
        state_path = directory / STATE_FILE
        if state_path.exists():
            try:
                existing = cls.attach(name, state_dir)
            except LabNotUpError:
                existing = cls(LabState.load(state_path))
            else:
                raise LabError(
                    f"lab {name!r} is already up (state in {state_path}); "
                    f"run `fieldmon-lab down {name}` first"
                )
            existing.down()
        delete_namespaces(lab_namespaces(name))
        directory.mkdir(parents=True, exist_ok=True)
        state = LabState(name, str(directory), os.getpid(), time.time(), [s.name for s in sites])
        lab = cls(state)
        try:
            for site in sites:
                lab._build_site(site)
            lab._save()
        except BaseException:
            lab.down()
            raise
        return lab

    @classmethod
    def attach(cls, name: str, state_dir: Path = DEFAULT_STATE_DIR) -> Lab:
        """The lab `up` left running; LabNotUpError if there is none of that name."""
        check_name("lab", name)
        state_path = state_dir / name / STATE_FILE
        if not state_path.exists():
            others = sorted(p.parent.name for p in state_dir.glob(f"*/{STATE_FILE}"))
            known = f"labs up: {', '.join(others)}" if others else "no lab is up"
            raise LabNotUpError(f"lab {name!r} is not up (no {state_path}); {known}")
        state = LabState.load(state_path)
        missing = sorted(set(state.namespaces) - set(list_namespaces()))
        if missing:
            raise LabNotUpError(
                f"lab {name!r} is not up: its namespaces {', '.join(missing)} are gone "
                f"(run `fieldmon-lab down {name}` to clear its state)"
            )
        return cls(state)

    @classmethod
    def from_state_file(cls, name: str, state_dir: Path = DEFAULT_STATE_DIR) -> Lab:
        """The lab as its state file records it, up or not (for `down` after a crash)."""
        state_path = state_dir / name / STATE_FILE
        if not state_path.exists():
            raise LabNotUpError(f"lab {name!r} is not up (no {state_path})")
        return cls(LabState.load(state_path))

    def _build_site(self, site: SiteSpec) -> None:
        lab = self.state.name
        spaces = {}
        for role in ("gw", "parent", "internet"):
            ns = Namespace(namespace_name(lab, site.name, role))
            self.state.namespaces.append(ns.name)  # recorded first: teardown finds it
            spaces[role] = _prepared(ns.create())
        gw = spaces["gw"]
        _router(gw)
        lan = veth(None, gw)
        _rename(gw, lan.b_name, _GW_DEVICES["lan"])
        self._add_link(site, "lan", lan, lan.a_name, _GW_DEVICES["lan"], [])
        if site.transit:
            self._build_transit(site, spaces, lan)
        for role in ("parent", "internet")[1 if site.transit else 0 :]:
            pair = veth(gw, spaces[role])
            _rename(gw, pair.a_name, _GW_DEVICES[role])
            _rename(spaces[role], pair.b_name, "eth0")
            routes = [
                ["route", "replace", "default", "via", str(pair.a_v4.ip)],
                ["-6", "route", "replace", "default", "via", str(pair.a_v6.ip)],
            ]
            set_link_state(spaces[role], "eth0", True, routes)
            # The agent reaches the far networks through the site router.
            run(None, "ip", "route", "replace", str(pair.b_v4.network), "via", str(lan.b_v4.ip))
            run(
                None, "ip", "-6", "route", "replace", str(pair.b_v6.network),
                "via", str(lan.b_v6.ip),
            )  # fmt: skip
            self._add_link(site, role, pair, _GW_DEVICES[role], "eth0", routes)
        if site.lte_rate is not None:
            self._build_lte(site, spaces, lan)
        if site.noc:
            self._build_noc(site, spaces["parent"])
        ports = []
        for number in range(1, len(site.aps) + 1):
            port = veth(None, gw)  # an AP's switch port
            _rename(gw, port.b_name, f"port{number}")
            ports.append(port)
        if site.router:  # after the ports: snmpd caches the interface table it starts with
            self._start_device(site, "uplink-router", None, gw, lan)
        for ap, port in zip(site.aps, ports, strict=True):
            self._start_device(site, ap.name, ap, gw, port)

    def _build_transit(self, site: SiteSpec, spaces: dict[str, Namespace], lan: VethPair) -> None:
        """gw -> transit1 -> ... -> transitN -> parent: a carrier's routers on the wired uplink.

        Link `transitK` ends in router K (its far end), link `parent` in the parent hospital.
        Every node routes the networks further along via the next router, and everything else
        back via the previous one, so traces from the agent see one hop per router.
        """
        nodes = [spaces["gw"]]
        for number in range(1, site.transit + 1):
            ns = Namespace(namespace_name(self.state.name, site.name, f"transit{number}"))
            self.state.namespaces.append(ns.name)
            _router(_prepared(ns.create()))
            nodes.append(ns)
        nodes.append(spaces["parent"])
        pairs: list[VethPair] = []
        for index in range(len(nodes) - 1):
            near, far = nodes[index], nodes[index + 1]
            pair = veth(near, far)
            near_dev = _GW_DEVICES["parent"] if index == 0 else "eth1"
            _rename(near, pair.a_name, near_dev)
            _rename(far, pair.b_name, "eth0")
            routes = [
                ["route", "replace", "default", "via", str(pair.a_v4.ip)],
                ["-6", "route", "replace", "default", "via", str(pair.a_v6.ip)],
            ]
            set_link_state(far, "eth0", True, routes)
            name = "parent" if index == len(nodes) - 2 else f"transit{index + 1}"
            self._add_link(site, name, pair, near_dev, "eth0", routes)
            pairs.append(pair)
        # Each segment's network: from the agent via the site router, from every node before
        # its near end via the next node.
        for index, pair in enumerate(pairs):
            v4, v6 = str(pair.b_v4.network), str(pair.b_v6.network)
            run(None, "ip", "route", "replace", v4, "via", str(lan.b_v4.ip))
            run(None, "ip", "-6", "route", "replace", v6, "via", str(lan.b_v6.ip))
            for before in range(index):
                hop = pairs[before]
                nodes[before].ip("route", "replace", v4, "via", str(hop.b_v4.ip))
                nodes[before].ip("-6", "route", "replace", v6, "via", str(hop.b_v6.ip))

    def _build_lte(self, site: SiteSpec, spaces: dict[str, Namespace], lan: VethPair) -> None:
        """The LTE uplink, the parent hospital's core address and the routes that use them."""
        gw, parent = spaces["gw"], spaces["parent"]
        pair = veth(gw, parent)
        _rename(gw, pair.a_name, _GW_DEVICES["lte"])
        _rename(parent, pair.b_name, "lte0")
        routes = [["route", "replace", "default", "via", str(pair.a_v4.ip), "metric", LTE_METRIC]]
        set_link_state(parent, "lte0", True, routes)
        self._add_link(site, "lte", pair, _GW_DEVICES["lte"], "lte0", routes)
        core = str(spare_address().ip)
        parent.ip("addr", "add", f"{core}/32", "dev", "lo")
        self.state.cores[site.name] = core
        wired = self.link(f"{site.name}/parent")
        gw.ip("route", "replace", "default", "via", wired.address, "dev", wired.near_dev)
        run(None, "ip", "route", "replace", f"{core}/32", "via", str(lan.b_v4.ip))

    def _build_noc(self, site: SiteSpec, parent: Namespace) -> None:
        """root <-> parent hospital; the parent masquerades what it forwards to the NOC."""
        parent.sysctl("net.ipv4.ip_forward", "1")
        pair = veth(None, parent)
        _rename(parent, pair.b_name, "noc0")
        parent.run("iptables", "-t", "nat", "-A", "POSTROUTING", "-o", "noc0", "-j", "MASQUERADE")
        self._add_link(site, "noc", pair, pair.a_name, "noc0", [])

    def core_address(self, site: str) -> str:
        """The parent hospital's core address of an LTE site (on its loopback)."""
        try:
            return self.state.cores[site]
        except KeyError:
            raise LabError(f"site {site!r} of lab {self.name!r} has no LTE uplink") from None

    def noc_address(self, site: str) -> str:
        """The root namespace's end of the site's NOC link: where a broker for it listens."""
        link = self.link(f"{site}/noc")
        return str(ipaddress.IPv4Interface(link.near_v4).ip)

    def _add_link(  # noqa: PLR0917 - private, one call site per link kind
        self,
        site: SiteSpec,
        name: str,
        pair: VethPair,
        near_dev: str,
        far_dev: str,
        far_routes: list[list[str]],
    ) -> None:
        link = LinkState(
            site=site.name,
            name=name,
            near_ns=pair.a_ns.name if pair.a_ns is not None else None,
            far_ns=pair.b_ns.name,
            near_dev=near_dev,
            far_dev=far_dev,
            near_v4=_interface(pair.a_v4),
            far_v4=_interface(pair.b_v4),
            near_v6=_interface(pair.a_v6),
            far_v6=_interface(pair.b_v6),
            base_rate=site.rate(name),
            far_routes=far_routes,
        )
        self.state.links.append(link)
        self._apply_rate(link, link.base_rate)
        set_loss(Namespace(link.far_ns), link.far_dev, 0)  # the counting rule

    def _start_device(
        self, site: SiteSpec, name: str, ap: ApSpec | None, gw: Namespace, port: VethPair
    ) -> None:
        directory = self.directory / "snmpd" / f"{site.name}-{name}"
        address = str(port.b_v4.ip)
        options: dict[str, Any] = {
            "port": 161,
            "community": COMMUNITY,
            "namespace": gw.name,
            "listen": (address,),
            "allow_from": str(port.a_v4.network),
        }
        if ap is None:
            server = SnmpdServer(directory, **options)
        else:
            server = walk_server(directory, recorded_walk(ap.walk), **options)
        device = DeviceState(
            site=site.name,
            name=name,
            walk=ap.walk if ap else None,
            profile=ap.profile if ap else "if-mib",
            namespace=gw.name,
            address=address,
            port=161,
            community=COMMUNITY,
            directory=str(directory),
        )
        self.state.devices.append(device)
        server.start()
        device.pid = server.pid
        self._servers[device.marker] = server

    # --- the links ---------------------------------------------------------------------------

    @property
    def name(self) -> str:
        """The lab's name."""
        return self.state.name

    @property
    def links(self) -> list[LinkState]:
        """Every link, site by site."""
        return list(self.state.links)

    @property
    def devices(self) -> list[DeviceState]:
        """Every snmpd (APs and site routers)."""
        return list(self.state.devices)

    def link(self, key: str) -> LinkState:
        """The link `SITE/LINK` (or just `LINK` in a one-site lab); the error lists the known."""
        for link in self.state.links:
            if key in (link.key, link.name if len(self.state.sites) == 1 else None):
                return link
        known = ", ".join(link.key for link in self.state.links)
        raise UnknownLinkError(f"lab {self.name!r} has no link {key!r}; its links: {known}")

    def site_links(self, site: str) -> list[LinkState]:
        """The links of one site."""
        return [link for link in self.state.links if link.site == site]

    def site_devices(self, site: str) -> list[DeviceState]:
        """The snmpd devices of one site."""
        return [device for device in self.state.devices if device.site == site]

    def impair(
        self,
        key: str,
        *,
        loss_pct: float | None = None,
        delay_ms: float | None = None,
        jitter_ms: float | None = None,
        rate: str | None = None,
        cut: bool | None = None,
        icmp_limit_pct: float | None = None,
    ) -> LinkState:
        """Change link `key`; what is None stays as it is. Returns the link as it is now.

        `icmp_limit_pct` makes the link's far end (a router) drop that share of the
        time-exceeded messages it sends itself, as a router rate-limiting ICMP does: traffic
        through it is untouched, only traces that stop there see loss.
        """
        with self._lock:
            link = self.link(key)
            far = Namespace(link.far_ns)
            if rate is not None:
                self._apply_rate(link, rate)
            if loss_pct is not None:
                set_loss(far, link.far_dev, float(loss_pct))
                link.loss_pct = float(loss_pct)
            if delay_ms is not None or jitter_ms is not None:
                self._apply_delay(
                    link,
                    link.delay_ms if delay_ms is None else float(delay_ms),
                    link.jitter_ms if jitter_ms is None else float(jitter_ms),
                )
            if icmp_limit_pct is not None:
                set_icmp_limit(far, float(icmp_limit_pct))
                link.icmp_limit_pct = float(icmp_limit_pct)
            if cut is not None and cut != link.cut:
                set_link_state(far, link.far_dev, not cut, link.far_routes)
                link.cut = cut
            self._save()
            return replace(link)

    def restore(self, key: str) -> LinkState:
        """Undo every impairment of link `key`: no loss, no delay, its own rate, not cut."""
        link = self.link(key)
        return self.impair(
            key, loss_pct=0, delay_ms=0, jitter_ms=0, rate=link.base_rate, cut=False,
            icmp_limit_pct=0 if link.icmp_limit_pct else None,
        )  # fmt: skip

    def _apply_rate(self, link: LinkState, rate: str) -> None:
        near = Namespace(link.near_ns) if link.near_ns else None
        set_rate(near, link.near_dev, rate)
        set_rate(Namespace(link.far_ns), link.far_dev, rate)
        link.rate = rate

    def _apply_delay(self, link: LinkState, delay_ms: float, jitter_ms: float) -> None:
        responder = self._responders.pop(link.key, None)
        pid = link.echo_pid
        if responder is None and pid is not None and process_alive(pid, EchoResponder.MARKER):
            # Started by another process (`fieldmon-lab impair`): the state file has its PID.
            responder = EchoResponder.attach(Namespace(link.far_ns), pid, self.directory / "echo")
        if delay_ms == 0 and jitter_ms == 0:
            if responder is not None:
                responder.stop()
            link.echo_pid = None
        else:
            if responder is not None:
                responder.update(delay_ms=delay_ms, jitter_ms=jitter_ms)
            else:
                responder = EchoResponder(
                    Namespace(link.far_ns), delay_ms, jitter_ms, state_dir=self.directory / "echo"
                ).start()
            self._responders[link.key] = responder
            link.echo_pid = responder.pid
        link.delay_ms, link.jitter_ms = delay_ms, jitter_ms

    # --- status and teardown -----------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        """The lab as it is now: namespaces, links with impairments and counters, devices."""
        existing = set(list_namespaces())
        links = []
        for link in self.state.links:
            far = Namespace(link.far_ns)
            present = link.far_ns in existing
            arrived, dropped = loss_counters(far, link.far_dev) if present else (0, 0)
            _, dropped_v4 = loss_counters(far, link.far_dev, ("ipv4",)) if present else (0, 0)
            links.append(
                {
                    "link": link.key,
                    "address": link.address,
                    "address_v6": link.address_v6,
                    "rate": link.rate,
                    "loss_pct": link.loss_pct,
                    "delay_ms": link.delay_ms,
                    "jitter_ms": link.jitter_ms,
                    "cut": link.cut,
                    "icmp_limit_pct": link.icmp_limit_pct,
                    "echo_pid": link.echo_pid,
                    "echo_running": link.echo_pid is not None
                    and process_alive(link.echo_pid, EchoResponder.MARKER),
                    "packets_arrived": arrived,
                    "packets_dropped": dropped,
                    "ipv4_packets_dropped": dropped_v4,
                }
            )
        devices = [
            {
                "site": device.site,
                "device": device.name,
                "profile": device.profile,
                "walk": device.walk,
                "address": f"{device.address}:{device.port}",
                "pid": device.pid,
                "running": device.pid is not None and process_alive(device.pid, device.marker),
            }
            for device in self.state.devices
        ]
        return {
            "lab": self.name,
            "state_dir": self.state.state_dir,
            "created": self.state.created,
            "namespaces": {name: name in existing for name in self.state.namespaces},
            "links": links,
            "devices": devices,
        }

    def down(self, *, keep_files: bool = False) -> None:
        """Stop every process by PID, delete every namespace, remove the lab's directory (its
        state file, snmpd configs and logs) unless `keep_files`."""
        for link in self.state.links:
            responder = self._responders.pop(link.key, None)
            if responder is not None:
                responder.stop()  # and reaped: it is our child
            elif link.echo_pid is not None:
                stop_pid(link.echo_pid, EchoResponder.MARKER)
            link.echo_pid = None
        for device in self.state.devices:
            server = self._servers.pop(device.marker, None)
            if server is not None:
                server.stop()
            elif device.pid is not None:
                stop_pid(device.pid, device.marker)
            device.pid = None
        with contextlib.suppress(NetnsError):
            delete_namespaces(self.state.namespaces)
        # Our own name's leftovers too (a crash between creating one and recording it).
        delete_namespaces(lab_namespaces(self.name))
        (self.directory / STATE_FILE).unlink(missing_ok=True)
        if not keep_files:
            shutil.rmtree(self.directory, ignore_errors=True)

    def _save(self) -> None:
        self.state.save(self.directory / STATE_FILE)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.down()


@dataclass(frozen=True)
class Step:
    """At `at_s` seconds into a schedule, impair `link` (None keeps a value) or restore it; or,
    with `action`, call that instead (a server of the lab's made slow, say; `link` is then only
    a name for messages)."""

    at_s: float
    link: str
    label: str = ""
    loss_pct: float | None = None
    delay_ms: float | None = None
    jitter_ms: float | None = None
    rate: str | None = None
    cut: bool | None = None
    restore: bool = False
    action: Callable[[], None] | None = None


class Schedule:
    """Applies steps to a lab at their times, in a thread; `stop()` ends it early.

    `applied` lists (elapsed seconds, step) as they happen; `on_step` is called after each.
    """

    def __init__(
        self,
        lab: Lab,
        steps: Iterable[Step],
        on_step: Callable[[Step], None] | None = None,
    ) -> None:
        self.lab = lab
        self.steps = sorted(steps, key=lambda step: step.at_s)
        for step in self.steps:
            if step.action is None:
                lab.link(step.link)  # an unknown link fails now, not half-way through
        self.on_step = on_step
        self.applied: list[tuple[float, Step]] = []
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="lab-schedule", daemon=True)
        self._started = 0.0

    def start(self) -> Self:
        """Start the clock at zero now."""
        self._started = time.monotonic()
        self._thread.start()
        return self

    def _run(self) -> None:
        for step in self.steps:
            if self._stop.wait(max(0.0, self._started + step.at_s - time.monotonic())):
                return
            try:
                if step.action is not None:
                    step.action()
                elif step.restore:
                    self.lab.restore(step.link)
                else:
                    self.lab.impair(
                        step.link, loss_pct=step.loss_pct, delay_ms=step.delay_ms,
                        jitter_ms=step.jitter_ms, rate=step.rate, cut=step.cut,
                    )  # fmt: skip
            except (NetnsError, LabError, OSError, ValueError) as exc:
                self.errors.append(f"{step.label or step.link} at {step.at_s:g}s: {exc}")
                continue
            self.applied.append((time.monotonic() - self._started, step))
            if self.on_step is not None:
                self.on_step(step)

    def stop(self) -> None:
        """Stop applying steps (what was applied stays)."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
