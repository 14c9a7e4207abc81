"""`fieldmon-collector`: run the central collector."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from fieldmon.core.config.types import parse_duration
from fieldmon.core.logsetup import add_logging_arguments, configure_logging


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fieldmon-collector", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="run the collector daemon")
    run.add_argument("--config", required=True, type=Path, help="collector.yaml")
    add_logging_arguments(run)
    validate = commands.add_parser("validate", help="validate the collector file and its inventory")
    validate.add_argument("--config", required=True, type=Path)
    validate.add_argument(
        "--shape-only",
        action="store_true",
        help="secret files must exist, but their content and modes are not checked",
    )
    acl = commands.add_parser(
        "broker-acl",
        help="the broker's ACL and password files from site_configs",
        description="Mosquitto's ACL and password files for the agents' and the collector's "
        "listeners (deploy/mosquitto.conf), generated from the collector's site_configs. "
        "Without --out, prints the two ACLs.",
    )
    acl.add_argument("--config", required=True, type=Path, help="collector.yaml")
    acl.add_argument(
        "--out",
        type=Path,
        help="write agents.acl, agents.passwd, collector.acl, collector.passwd and "
        "secrets/AGENT.mqtt.pass (kept when present, generated 0600 for new agents) here",
    )
    retention = commands.add_parser(
        "retention",
        help="set up InfluxDB's retention and rollups from the retention: section",
        description="Compare the collector file's retention: section with InfluxDB and print "
        "what differs; --apply changes it (retention policies and continuous queries on 1.x, "
        "bucket retention and tasks on 2.x). Running it again changes nothing.",
    )
    retention.add_argument("--config", required=True, type=Path, help="collector.yaml")
    mode = retention.add_mutually_exclusive_group()
    mode.add_argument("--apply", action="store_true", help="make the changes")
    mode.add_argument("--dry-run", action="store_true", help="only print them (the default)")
    retention.add_argument(
        "--backfill",
        type=parse_duration,
        metavar="DURATION",
        help="also roll up this much of the raw rows already stored (e.g. 7d; InfluxDB 1.x)",
    )
    return parser


def _broker_acl(config_path: Path, out: Path | None) -> int:
    from fieldmon.collector import brokeracl
    from fieldmon.collector.config import load_collector_config
    from fieldmon.collector.inventory import load_inventory
    from fieldmon.core.config.errors import ConfigError

    try:
        config = load_collector_config(config_path)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 1
    inventory = load_inventory(config.site_configs)
    if out is None:
        problems = [*inventory.problems, *brokeracl.identity_problems(inventory, config.broker)]
        for problem in problems:
            print(problem, file=sys.stderr)
        print(brokeracl.agents_acl(inventory))
        print(brokeracl.collector_acl(config.broker.username or "collector"), end="")
        return 1 if problems else 0
    try:
        files = brokeracl.write_broker_files(inventory, config.broker, out)
    except brokeracl.BrokerAclError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        print("nothing written: a site file left out would lock its agent out", file=sys.stderr)
        return 1
    print(
        f"wrote {out}: agents.acl, agents.passwd ({len(files.agents)} agents), "
        "collector.acl, collector.passwd"
    )
    for path in files.new_secrets:
        print(
            f"new   {path}: copy it to that agent's Pi as /etc/fieldmon/credentials/mqtt.pass "
            "(root, 0600)"
        )
    for path in files.stale_secrets:
        print(f"stale {path}: its agent is in no site file any more; delete it")
    print("then: reload Mosquitto (systemctl reload mosquitto) to apply them")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `fieldmon-collector` console script."""
    args = _build_parser().parse_args(argv)
    if args.command == "broker-acl":
        return _broker_acl(args.config, args.out)
    if args.command == "validate":
        from fieldmon.collector.config import load_collector_config
        from fieldmon.collector.inventory import load_inventory
        from fieldmon.core.config.errors import ConfigError

        try:
            config = load_collector_config(args.config, shape_only=args.shape_only)
        except ConfigError as exc:
            print(exc, file=sys.stderr)
            if all(issue.kind == "secret" for issue in exc.issues):
                print(
                    "only secret files not ready (everything else is valid) - put the real "
                    "secrets in place, private to the service's user; --shape-only checks the "
                    "rest",
                    file=sys.stderr,
                )
            return 1
        from fieldmon.collector.brokeracl import identity_problems

        inventory = load_inventory(config.site_configs)
        problems = [*inventory.problems, *identity_problems(inventory, config.broker)]
        for problem in problems:
            print(problem, file=sys.stderr)
        print(f"OK  {args.config}: {len(inventory.sites)} sites in {config.site_configs}")
        return 1 if problems else 0
    if args.command == "retention":
        from fieldmon.collector.retention.command import main as retention

        return retention(args.config, apply=args.apply, backfill=args.backfill, out=sys.stdout)
    configure_logging(args.log_format, args.log_level)
    from fieldmon.collector.daemon import run_collector

    return run_collector(args.config)


if __name__ == "__main__":
    sys.exit(main())
