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
    provision = commands.add_parser(
        "provision",
        help="register a new site and write the handover folder for its Pi",
        description="Check a new site file in full (its secret files beside it: secrets/NAME, "
        "credentials/NAME for credential:NAME), then: generate its agent's MQTT password, copy "
        "the file into site_configs/, regenerate the broker's password files and ACLs, and "
        "write the handover folder the field engineer carries to the Pi (site.yaml, secrets/, "
        "the broker's CA, the agent bundle, HANDOVER.txt). On any error it changes nothing. "
        "Run again with the same file, it rebuilds the handover with the same password.",
    )
    provision.add_argument("--config", required=True, type=Path, help="collector.yaml")
    provision.add_argument("site_file", type=Path, metavar="SITE_FILE", help="the new site file")
    provision.add_argument(
        "--out", required=True, type=Path, help="the handover folder to write (handover-SITE)"
    )
    bundle = provision.add_mutually_exclusive_group(required=True)
    bundle.add_argument(
        "--bundle",
        type=Path,
        metavar="FILE",
        help="the agent bundle to put in the handover (fieldmon-agent-bundle-VERSION.tar, "
        "built once per release with deploy/bundle/build.sh)",
    )
    bundle.add_argument(
        "--no-bundle",
        action="store_true",
        help="leave the bundle out (the engineer brings it separately)",
    )
    provision.add_argument(
        "--ca",
        type=Path,
        metavar="FILE",
        help="the CA certificate that signed the broker's certificate, for the site file's "
        "agent.broker.tls.ca_file (default: the file the site file names)",
    )
    _broker_options(provision)
    decommission = commands.add_parser(
        "decommission",
        help="close a site: revoke its agent's broker login, silence its alerts, keep its data",
        description="Move the site's file to site_configs/closed/ (known but closed: no alerts, "
        "its agent's data refused, its rows in InfluxDB kept and its ids never reused) and "
        "remove its agent's password entry and ACL lines from the broker's files.",
    )
    decommission.add_argument("--config", required=True, type=Path, help="collector.yaml")
    decommission.add_argument("site", metavar="SITE_ID", help="the site to close")
    _broker_options(decommission)
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


def _broker_options(parser: argparse.ArgumentParser) -> None:
    from fieldmon.collector.provision import DEFAULT_BROKER_FILES

    parser.add_argument(
        "--broker-files",
        type=Path,
        default=DEFAULT_BROKER_FILES,
        metavar="DIR",
        help="the broker's generated files (`broker-acl --out`; default %(default)s, where "
        "deploy/mosquitto.conf reads them)",
    )
    broker = parser.add_mutually_exclusive_group()
    broker.add_argument(
        "--broker-pid", type=int, metavar="PID", help="send Mosquitto (this PID) a SIGHUP after"
    )
    broker.add_argument(
        "--broker-unit", metavar="UNIT", help="`systemctl reload UNIT` after (mosquitto)"
    )
    parser.add_argument(
        "--collector-pid",
        type=int,
        action="append",
        default=[],
        metavar="PID",
        help="send this collector a SIGHUP after (repeat for each collector)",
    )
    parser.add_argument(
        "--collector-unit",
        action="append",
        default=[],
        metavar="UNIT",
        help="`systemctl reload UNIT` after (fieldmon-collector; repeatable)",
    )


def _provision(args: argparse.Namespace) -> int:
    from fieldmon.collector import provision as provisioning

    try:
        plan = provisioning.plan_provision(
            args.config,
            args.site_file,
            args.out,
            broker_files=args.broker_files,
            ca=args.ca,
            bundle=args.bundle,
        )
        result = provisioning.provision(plan)
    except provisioning.ProvisionError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        if not exc.changed:
            print(f"nothing changed: {args.site_file} was not provisioned", file=sys.stderr)
        return 1
    for warning in plan.warnings:
        print(warning)
    site, agent = plan.site.site, plan.agent
    print(
        f"OK  {args.site_file}: site {site} (agent {agent})"
        + (" was provisioned already: handover rebuilt, password kept" if plan.again else "")
    )
    print(f"site file     {result.site_path}")
    password = "new" if result.new_password else "kept"
    print(
        f"broker files  {result.broker.directory}: agents.passwd, agents.acl "
        f"({len(result.broker.agents)} agents), collector.passwd, collector.acl; "
        f"{agent}'s password {password} in {plan.secret_path} (0600)"
    )
    for path in result.broker.new_secrets:
        if path != plan.secret_path:
            print(f"new           {path}: another agent had no password yet; copy it to that Pi")
    for path in result.broker.stale_secrets:
        print(f"stale         {path}: its agent is in no site file any more; delete it")
    contents = sorted(
        {str(reference.handover).split("/")[0] + "/" for reference in plan.references}
    )
    if plan.bundle is not None:
        contents.append(plan.bundle.path.name)
    print(
        f"handover      {result.handover}/: site.yaml, {', '.join(contents)}, "
        f"{provisioning.SHEET}; it holds the site's passwords: give it to the field engineer "
        "alone"
    )
    if plan.bundle is None:
        print("              no bundle in it (--no-bundle): the engineer brings it separately")
    # The broker first: the new login must work before the agent's first connection.
    status = _reload_broker(args, f"so that {agent} can log in")
    return max(status, _reload_collectors(args, f"until then it refuses {site}'s data"))


def _decommission(args: argparse.Namespace) -> int:
    from fieldmon.collector import provision as provisioning

    try:
        result = provisioning.decommission(args.config, args.site, broker_files=args.broker_files)
    except provisioning.ProvisionError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        if not exc.changed:
            print(f"nothing changed: {args.site} was not closed", file=sys.stderr)
        return 1
    for warning in result.warnings:
        print(f"WARN  {warning}", file=sys.stderr)
    if result.moved_from is None:
        print(f"site {result.site} was closed already ({result.closed_file})")
    else:
        print(f"closed        {result.site}: {result.moved_from} -> {result.closed_file}")
    how = "rewritten" if result.regenerated else "edited in place"
    changed = ", ".join(path.name for path in result.broker_changed) or "nothing left to remove"
    print(f"revoked       {result.agent}: its password entry and ACL lines ({how}: {changed})")
    print(
        f"data kept     nothing was deleted in InfluxDB: {result.site}'s rows stay readable "
        "(dashboards, queries); retention ages them out as any other's"
    )
    # The collector first: once it has forgotten the site, the agent's last will (sent when the
    # broker drops its login) pages nobody.
    status = _reload_collectors(args, "so that it stops alerting for the site")
    return max(status, _reload_broker(args, f"it then disconnects {result.agent} and refuses it"))


def _reload_broker(args: argparse.Namespace, why: str) -> int:
    from fieldmon.collector.provision import ReloadError, reload_pid, reload_unit

    try:
        if args.broker_pid is not None:
            reload_pid(args.broker_pid, "mosquitto")
            print(f"reloaded      Mosquitto (SIGHUP to PID {args.broker_pid}): {why}")
        elif args.broker_unit is not None:
            reload_unit(args.broker_unit)
            print(f"reloaded      {args.broker_unit} (systemctl reload): {why}")
        else:
            print(
                "next          systemctl reload mosquitto  (or kill -HUP its PID): Mosquitto "
                f"re-reads its password and ACL files on SIGHUP, {why}"
            )
    except ReloadError as exc:
        print(f"FAIL  {exc}", file=sys.stderr)
        return 1
    return 0


def _reload_collectors(args: argparse.Namespace, why: str) -> int:
    from fieldmon.collector.provision import ReloadError, reload_pid, reload_unit

    status = 0
    for pid in args.collector_pid:
        try:
            reload_pid(pid, "fieldmon-collector")
            print(f"reloaded      the collector (SIGHUP to PID {pid}): {why}")
        except ReloadError as exc:
            print(f"FAIL  {exc}", file=sys.stderr)
            status = 1
    for unit in args.collector_unit:
        try:
            reload_unit(unit)
            print(f"reloaded      {unit} (systemctl reload): {why}")
        except ReloadError as exc:
            print(f"FAIL  {exc}", file=sys.stderr)
            status = 1
    if not args.collector_pid and not args.collector_unit:
        print(
            "next          systemctl reload fieldmon-collector  (every collector): it re-reads "
            f"site_configs on SIGHUP, {why}"
        )
    return status


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
    sites = {"provision": _provision, "decommission": _decommission}
    if args.command in sites:
        return sites[args.command](args)
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
