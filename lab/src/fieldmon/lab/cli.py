"""`fieldmon-lab`: the simulated field hospital on this machine.

fieldmon-lab up [NAME]                    build a lab and leave it running
fieldmon-lab status [NAME] [--json]       what is up: links, impairments, counters, APs
fieldmon-lab impair SITE/LINK --loss 30 --delay 50ms --jitter 10ms --rate 1mbit
                    [--cut | --restore] [--for 30s]
fieldmon-lab down [NAME]                  stop its processes, delete its namespaces
fieldmon-lab demo [--duration 90]         the whole pipeline, two sites, one degraded
fieldmon-lab bundle [--platform NAME]     the agent's offline install bundle (dist/bundle/)
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

DEFAULT_LAB = "field"
_DURATION_RE = re.compile(r"^(\d+(?:\.\d+)?)(ms|s|m)?$")
_SCALE_TO_MS = {"ms": 1.0, "s": 1000.0, "m": 60_000.0}


def _milliseconds(default_unit: str) -> Any:
    """An argparse type: `50ms`, `1.5s`, `2m` or a bare number in `default_unit`, as ms."""

    def parse(text: str) -> float:
        match = _DURATION_RE.match(text.strip())
        if match is None:
            raise argparse.ArgumentTypeError(f"{text!r} is not a duration such as 50ms, 2s or 1m")
        return float(match.group(1)) * _SCALE_TO_MS[match.group(2) or default_unit]

    return parse


def _percent(text: str) -> float:
    try:
        value = float(text.rstrip("%"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a percentage such as 30") from None
    if not 0 <= value <= 100:
        raise argparse.ArgumentTypeError(f"loss {text!r} must be between 0 and 100")
    return value


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fieldmon-lab", description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    commands = parser.add_subparsers(dest="command", required=True)

    def lab_command(name: str, help_text: str, *, positional_lab: bool = True) -> Any:
        sub = commands.add_parser(name, help=help_text)
        if positional_lab:
            sub.add_argument("lab", nargs="?", default=DEFAULT_LAB, help="lab name (default field)")
        sub.add_argument(
            "--state-dir", type=Path, default=None, help="where labs keep state (/run/fieldmon-lab)"
        )
        return sub

    up = lab_command("up", "build a lab and leave it running")
    up.add_argument(
        "--site", action="append", dest="sites", metavar="NAME",
        help="a site with one generic AP (repeatable; default: pavilion and school)",
    )  # fmt: skip
    status = lab_command("status", "show a lab: links, impairments, counters, APs")
    status.add_argument("--json", action="store_true", help="machine-readable output")
    lab_command("down", "stop a lab's processes and delete its namespaces")
    impair = lab_command("impair", "impair one link (SITE/LINK)", positional_lab=False)
    impair.add_argument(
        "link", help="SITE/LINK, e.g. pavilion/parent (links: lan, parent, internet)"
    )
    impair.add_argument("--lab", default=DEFAULT_LAB, help="lab name (default field)")
    impair.add_argument("--loss", type=_percent, help="drop this %% of packets (iptables)")
    impair.add_argument("--delay", type=_milliseconds("ms"), help="added echo delay, e.g. 50ms")
    impair.add_argument("--jitter", type=_milliseconds("ms"), help="± spread of the delay")
    impair.add_argument("--rate", help="rate limit (tbf), e.g. 1mbit, 512kbit")
    state = impair.add_mutually_exclusive_group()
    state.add_argument("--cut", action="store_true", help="take the link down")
    state.add_argument("--restore", action="store_true", help="undo every impairment")
    impair.add_argument(
        "--for", dest="duration", type=_milliseconds("s"),
        help="apply for this long (e.g. 30s), then put back what was there",
    )  # fmt: skip

    demo = commands.add_parser("demo", help="run the whole pipeline on this machine")
    demo.add_argument("--duration", type=float, default=90.0, help="seconds (default 90)")
    demo.add_argument("--data-dir", type=Path, help="where servers keep data (default: new temp)")

    from fieldmon.lab import bundle

    bundle.add_arguments(
        commands.add_parser("bundle", help="build the agent's offline install bundle")
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `fieldmon-lab` console script."""
    parser = _build_parser()
    args = parser.parse_args(argv)
    if args.command == "bundle":  # builds files only: no root needed
        from fieldmon.lab import bundle

        return bundle.run(args)
    if os.geteuid() != 0:
        print("fieldmon-lab needs root: it creates network namespaces and raw ICMP sockets.")
        return 2
    console = Console()
    if args.command == "demo":
        from fieldmon.lab.demo import run_demo

        workdir = args.data_dir or Path(tempfile.mkdtemp(prefix="fieldmon-demo-"))
        return run_demo(args.duration, workdir, console)

    from fieldmon.lab.netns import NetnsError
    from fieldmon.lab.topology import DEFAULT_STATE_DIR, LabError

    state_dir = args.state_dir or DEFAULT_STATE_DIR
    try:
        return _COMMANDS[args.command](args, state_dir, console)
    except (LabError, ValueError, NetnsError) as exc:
        print(f"fieldmon-lab {args.command}: error: {exc}", file=sys.stderr)
        return 1


def _up(args: argparse.Namespace, state_dir: Path, console: Console) -> int:
    from fieldmon.lab.topology import DEFAULT_SITES, ApSpec, Lab, SiteSpec

    sites: tuple[SiteSpec, ...] = DEFAULT_SITES
    if args.sites:
        sites = tuple(
            SiteSpec(name, aps=(ApSpec(f"ap-{name}", "generic-ap"),)) for name in args.sites
        )
    lab = Lab.up(args.lab, sites, state_dir)
    console.print(f"lab [bold]{lab.name}[/bold] is up; state in {lab.directory}")
    _print_status(lab.status(), console)
    return 0


def _status(args: argparse.Namespace, state_dir: Path, console: Console) -> int:
    from fieldmon.lab.topology import Lab

    status = Lab.attach(args.lab, state_dir).status()
    if args.json:
        print(json.dumps(status, indent=1))
    else:
        _print_status(status, console)
    return 0


def _down(args: argparse.Namespace, state_dir: Path, console: Console) -> int:
    from fieldmon.lab.topology import Lab

    lab = Lab.from_state_file(args.lab, state_dir)
    lab.down()
    console.print(
        f"lab [bold]{lab.name}[/bold] is down: {len(lab.state.namespaces)} namespaces gone"
    )
    return 0


def _impair(args: argparse.Namespace, state_dir: Path, console: Console) -> int:
    from fieldmon.lab.topology import Lab

    lab = Lab.attach(args.lab, state_dir)
    before = lab.link(args.link).impairments()
    changes: dict[str, Any] = {
        "loss_pct": args.loss,
        "delay_ms": args.delay,
        "jitter_ms": args.jitter,
        "rate": args.rate,
        "cut": True if args.cut else None,
    }
    if args.restore:
        link = lab.restore(args.link)
    elif all(value is None for value in changes.values()):
        raise ValueError(
            "say what to change: --loss, --delay, --jitter, --rate, --cut or --restore"
        )
    else:
        link = lab.impair(args.link, **changes)
    console.print(f"{link.key}: {_describe(link.impairments())}")
    if args.duration:
        try:
            time.sleep(args.duration / 1000)
        finally:  # Ctrl-C included: the link goes back as it was
            link = lab.impair(args.link, **before)
            console.print(f"{link.key} after {args.duration / 1000:g}s: {_describe(before)}")
    return 0


_COMMANDS = {"up": _up, "status": _status, "down": _down, "impair": _impair}


def _describe(impairments: dict[str, Any]) -> str:
    if impairments["cut"]:
        return "cut"
    return (
        f"loss {impairments['loss_pct']:g} %, delay {impairments['delay_ms']:g} ms "
        f"± {impairments['jitter_ms']:g} ms, rate {impairments['rate']}"
    )


def _print_status(status: dict[str, Any], console: Console) -> None:
    links = Table(title=f"lab {status['lab']}: links (the agent pings the far end's address)")
    for column in ("link", "address", "rate", "loss", "delay", "state", "arrived", "dropped"):
        links.add_column(column, no_wrap=column in ("link", "address", "delay"))
    for link in status["links"]:
        delay = f"{link['delay_ms']:g} ± {link['jitter_ms']:g} ms" if link["echo_pid"] else "-"
        links.add_row(
            link["link"],
            link["address"],
            str(link["rate"]),
            f"{link['loss_pct']:g} %",
            delay,
            "[red]cut[/red]" if link["cut"] else "[green]up[/green]",
            str(link["packets_arrived"]),
            str(link["packets_dropped"]),
        )
    console.print(links)
    devices = Table(title="simulated SNMP devices (community fieldmon-lab)")
    for column in ("site", "device", "profile", "address", "pid", "running"):
        devices.add_column(column)
    for device in status["devices"]:
        devices.add_row(
            device["site"],
            device["device"],
            device["profile"],
            device["address"],
            str(device["pid"]),
            "[green]yes[/green]" if device["running"] else "[red]no[/red]",
        )
    console.print(devices)
    missing = [name for name, exists in status["namespaces"].items() if not exists]
    console.print(
        f"{len(status['namespaces'])} namespaces"
        + (f", [red]missing: {', '.join(missing)}[/red]" if missing else "")
    )


if __name__ == "__main__":
    sys.exit(main())
