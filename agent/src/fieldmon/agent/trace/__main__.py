"""`python -m fieldmon.agent.trace ADDRESS [options]`: one path trace, printed as JSON.

The agent runs this as a short-lived subprocess, so the daemon never holds the trace's sockets
or code. `--protocol auto` traces with ICMP and, when ICMP gets no answer from the far end
(filtered beyond some hop, or no permission for raw sockets), again with TCP SYNs to `--port`
(443 unless given); the trace that got further is printed, with `fallback_from` set when it is
the second. Exit status 0 with the trace on stdout, 2 with `{"error": ...}` when no trace could
run at all. `--table` prints an mtr-like table instead.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys

from fieldmon.agent.trace.analysis import Trace, render_table, summarize
from fieldmon.agent.trace.probe import TraceError, run_trace


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m fieldmon.agent.trace", description=__doc__)
    parser.add_argument("address", help="the far end: an IPv4 or IPv6 literal")
    parser.add_argument("--protocol", choices=("auto", "icmp", "udp", "tcp"), default="auto")
    parser.add_argument("--port", type=int, default=None, help="UDP / TCP destination port")
    parser.add_argument("--cycles", type=int, default=10)
    parser.add_argument("--interval", type=float, default=0.5, help="seconds between cycles")
    parser.add_argument("--timeout", type=float, default=1.0, help="seconds per probe")
    parser.add_argument("--max-hops", type=int, default=30)
    parser.add_argument("--interface", default=None, help="send from this device")
    parser.add_argument("--table", action="store_true", help="an mtr-like table, not JSON")
    return parser


def _further(first: Trace, second: Trace) -> Trace:
    """The trace that says more: one that reached the far end, else the one with more hops."""
    if first.reached or (not second.reached and len(first.hops) >= len(second.hops)):
        return first
    return dataclasses.replace(second, fallback_from=first.protocol)


def trace(args: argparse.Namespace) -> Trace:
    """Run the trace the arguments ask for (auto: ICMP, then TCP if ICMP got less far)."""
    options = {
        "port": args.port,
        "cycles": args.cycles,
        "interval": args.interval,
        "timeout": args.timeout,
        "max_hops": args.max_hops,
        "interface": args.interface,
    }
    if args.protocol != "auto":
        return run_trace(args.address, args.protocol, **options)
    try:
        first = run_trace(args.address, "icmp", **options)
    except TraceError:
        # No raw sockets here: TCP connect probes need no privilege.
        return run_trace(args.address, "tcp", **options)
    if first.reached:
        return first
    return _further(first, run_trace(args.address, "tcp", **options))


def main(argv: list[str] | None = None) -> int:
    """Entry point; see the module docstring."""
    args = _parser().parse_args(argv)
    try:
        result = trace(args)
    except TraceError as exc:
        json.dump({"error": str(exc)}, sys.stdout)
        sys.stdout.write("\n")
        return 2
    if args.table:
        sys.stdout.write(render_table(result) + "\n" + summarize(result).text + "\n")
    else:
        json.dump(result.to_json(), sys.stdout)
        sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
