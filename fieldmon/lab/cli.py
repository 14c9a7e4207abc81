"""`fieldmon-lab`: the simulated field hospital on this machine."""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fieldmon-lab", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser("demo", help="run the whole pipeline on this machine")
    demo.add_argument("--duration", type=float, default=90.0, help="seconds (default 90)")
    demo.add_argument("--data-dir", type=Path, help="where servers keep data (default: new temp)")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `fieldmon-lab` console script."""
    args = _build_parser().parse_args(argv)
    if os.geteuid() != 0:
        print("fieldmon-lab needs root: it creates network namespaces and raw ICMP sockets.")
        return 2
    from rich.console import Console

    from fieldmon.lab.demo import run_demo

    workdir = args.data_dir or Path(tempfile.mkdtemp(prefix="fieldmon-demo-"))
    return run_demo(args.duration, workdir, Console())


if __name__ == "__main__":
    sys.exit(main())
