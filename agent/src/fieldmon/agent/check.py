"""`fieldmon-agent check`: one run of every probe and a broker connection, judged in plain words.

For the engineer commissioning a site. The probes are the daemon's own, built from the same
registry (fieldmon.agent.probes.registry) with the same shared pinger and SNMP client; this
runner gives each one `collect()` within its interval, times it, and asks the probe for its
verdict. Everything runs at once, so the command takes about as long as the slowest check (an
ICMP round, an SNMP timeout or the broker's connect_timeout). Exit status: 0 when nothing
failed (warnings allowed), 1 on any FAIL, 2 when the site file itself is invalid.

`--trace` then traces the path of every parent and internet link (the daemon's trace
subprocess, fieldmon.agent.trace, all links at once) and prints an mtr-like table per link
under the check's table, with the one-line summary the NOC would see. Traces inform; they
never change the exit status.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import errno
import json
import logging
import secrets
import socket
import ssl
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

import paho.mqtt.client as mqtt
from paho.mqtt.reasoncodes import ReasonCode

from fieldmon.agent.diagnose import Seen, diagnose, read_network_facts
from fieldmon.agent.probes.base import (
    Judged,
    ProbeResources,
    Run,
    Status,
    plain_verdict,
)
from fieldmon.agent.probes.icmp_socket import IcmpPinger
from fieldmon.agent.probes.registry import Planned, plan_probes
from fieldmon.agent.snmp.client import SnmpClient
from fieldmon.agent.trace.analysis import render_table, summarize
from fieldmon.agent.trace.runner import TraceFailedError, run_trace_process
from fieldmon.core.config.errors import ConfigError
from fieldmon.core.mqtt.failures import (
    AGENT,
    closed_reason,
    connect_failure_reason,
    peer_alert_reason,
    timeout_reason,
)
from fieldmon.core.mqtt.link import new_client
from fieldmon.core.mqtt.settings import BrokerConfig
from fieldmon.core.site.config import SiteConfig, load_site_config
from fieldmon.core.site.hooks import HooksConfig
from fieldmon.core.site.links import IcmpLinkConfig
from fieldmon.core.site.security import security_warnings
from fieldmon.firmware_hooks.hooks import candidates, check_directory, check_hook

__all__ = [
    "CheckReport",
    "CheckRow",
    "Status",
    "check_probe",
    "check_site",
    "run_check",
    "security_rows",
]

logger = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_FAIL = 1
EXIT_INVALID_CONFIG = 2

# MQTT v5 CONNACK reason codes an engineer can fix on site.
_LOGIN_REFUSED = {134, 135}  # bad user name or password; not authorized
_CLIENT_ID_REFUSED = 133


@dataclass
class CheckRow:
    """One line of the result: a probe's target (link, SNMP device, host) or the broker."""

    kind: str  # a probe kind's label (link, snmp, host) or broker
    name: str
    target: str
    status: Status
    reason: str
    baseline: dict[str, float | int] = field(default_factory=dict)  # e.g. links: loss and RTT
    silent: bool = False  # nothing answered at all (the verdict's `silent`)
    role: str | None = None  # a link's role (gateway, ap, parent, internet)


@dataclass
class PathReport:
    """`--trace`: one link's path, hop by hop, and what it means."""

    link: str
    target: str  # address, and interface when the link has one
    protocol: str | None
    cycles: int
    summary: str  # the one line, or why no trace could run
    hops: list[dict[str, Any]] = field(default_factory=list)  # ttl, address, mtr's figures
    table: str = ""  # mtr-like, for the terminal and the Markdown report
    error: str | None = None


@dataclass
class CheckReport:
    """Everything one `check` run found, for the table, JSON and the Markdown report."""

    site: str
    site_name: str
    agent: str
    parent_hospital: str
    started: str  # ISO 8601, UTC
    duration_s: float
    icmp_mode: str | None
    rows: list[CheckRow]
    traces: list[PathReport] = field(default_factory=list)
    # What the rows mean together, said before them (fieldmon.agent.diagnose): "nothing on the
    # site network answers - ...". The rows they explain say "not reached: ... (see above)".
    findings: list[str] = field(default_factory=list)

    @property
    def failed(self) -> bool:
        """True when any row is FAIL."""
        return any(row.status is Status.FAIL for row in self.rows)

    def as_json(self) -> dict[str, Any]:
        """The report as plain JSON data."""
        data = asdict(self)
        data["rows"] = [{**asdict(row), "status": row.status.value} for row in self.rows]
        data["ok"] = not self.failed
        return data


# -- entry point -------------------------------------------------------------------------------


def run_check(config_path: Path, *, as_json: bool, report: Path | None, trace: bool = False) -> int:
    """Check the site described by `config_path`; print the result; return the exit status."""
    try:
        config = load_site_config(config_path)
    except ConfigError as exc:
        print(f"{config_path} is not a usable site file:", file=sys.stderr)
        for issue in exc.issues:
            print(f"  {issue}", file=sys.stderr)
        print("Fix these, then run the check again.", file=sys.stderr)
        return EXIT_INVALID_CONFIG
    result = asyncio.run(check_site(config))
    if trace:
        result.traces = asyncio.run(trace_links(config))
    # The report first: it is the record, and a closed stdout pipe must not lose it.
    if report is not None:
        report.write_text(markdown_report(result), encoding="utf-8")
    if as_json:
        json.dump(result.as_json(), sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        render(result, sys.stdout)
    return EXIT_FAIL if result.failed else EXIT_OK


async def check_site(config: SiteConfig) -> CheckReport:
    """Run every probe of the site once, and the broker check, concurrently."""
    started = datetime.now(UTC)
    clock = time.perf_counter()
    async with IcmpPinger() as pinger:
        snmp = SnmpClient()
        try:
            planned = plan_probes(config, ProbeResources(pinger=pinger, snmp=snmp))
            probe_rows, broker = await asyncio.gather(
                asyncio.gather(*(check_probe(plan) for plan in planned)),
                check_broker(config.agent.broker, config.agent.id),
            )
        finally:
            snmp.close()
        mode = pinger.mode
    extra = [check_hooks(config.hooks)] if config.hooks else []
    extra += security_rows(config)
    rows = [*probe_rows, broker, *extra]
    interfaces = [getattr(plan.config, "interface", None) for plan in planned]
    interfaces += [None] * (1 + len(extra))
    findings = reason_together(rows, interfaces)
    return CheckReport(
        site=config.site,
        site_name=config.name,
        agent=config.agent.id,
        parent_hospital=config.parent_hospital,
        started=started.isoformat(timespec="seconds"),
        duration_s=round(time.perf_counter() - clock, 3),
        icmp_mode=mode if config.links else None,
        rows=rows,
        findings=findings,
    )


async def trace_links(config: SiteConfig) -> list[PathReport]:
    """A path trace of every parent and internet link, all at once."""
    links = [link for link in config.links if link.traced]
    return list(await asyncio.gather(*(trace_link(link) for link in links)))


async def trace_link(link: IcmpLinkConfig) -> PathReport:
    """One link's trace as the daemon would run it; a failed trace is a report that says why."""
    target = link.address if link.interface is None else f"{link.address} via {link.interface}"
    try:
        trace = await run_trace_process(link)
    except (TraceFailedError, TimeoutError, OSError) as exc:
        reason = str(exc) or "the trace did not finish in time"
        return PathReport(link.name, target, None, link.trace.cycles, reason, error=reason)
    hops = [
        {"ttl": hop.ttl, "address": hop.address, "sent": hop.sent, "loss_pct": hop.loss_pct}
        | hop.figures()
        for hop in trace.hops
    ]
    protocol = trace.protocol
    if trace.fallback_from:
        protocol += f" (after {trace.fallback_from} got no further)"
    return PathReport(
        link.name,
        target,
        protocol,
        trace.cycles,
        summarize(trace).text,
        hops,
        render_table(trace),
    )


def check_hooks(hooks: HooksConfig) -> CheckRow:
    """The hooks the agent would run: FAIL for a directory or hook it would refuse."""
    directory = hooks.dir
    problem = check_directory(directory)
    if problem is not None:
        return CheckRow("hooks", "hooks", str(directory), Status.FAIL, f"{problem}: no hook runs")
    found = candidates(directory)
    refused = [reason for reason in map(check_hook, found) if reason is not None]
    if refused:
        return CheckRow("hooks", "hooks", str(directory), Status.FAIL, "; ".join(refused))
    if not found:
        return CheckRow(
            "hooks", "hooks", str(directory), Status.WARN, "no executable hook in the directory"
        )
    names = ", ".join(path.name for path in found)
    return CheckRow(
        "hooks", "hooks", str(directory), Status.OK, f"{len(found)} run per event: {names}"
    )


def security_rows(config: SiteConfig) -> list[CheckRow]:
    """A WARN row per setting that works but exposes the site (plain MQTT beyond this machine,
    SNMPv3 without privacy, MD5 or DES): NAME is the key to change (unique, unlike the broker's
    or a device's own row), TARGET what it concerns."""
    return [
        CheckRow("security", warning.path, warning.target, Status.WARN, warning.message)
        for warning in security_warnings(config)
    ]


def reason_together(rows: list[CheckRow], interfaces: list[str | None]) -> list[str]:
    """Apply fieldmon.agent.diagnose to the rows (their reasons are rewritten in place where a
    finding explains them); returns the findings."""
    try:
        facts = read_network_facts()
    except OSError:
        facts = None  # no /proc: reason over the verdicts alone
    seen = [
        Seen(row.kind, row.status, row.silent, row.role, interface)
        for row, interface in zip(rows, interfaces, strict=True)
    ]
    diagnosis = diagnose(seen, facts)
    for index, reason in diagnosis.reasons.items():
        rows[index].reason = reason
    return diagnosis.findings


# -- probes ------------------------------------------------------------------------------------


async def check_probe(plan: Planned) -> CheckRow:
    """One run of one probe within its interval, judged; a probe never built is a FAIL row."""
    kind, target = plan.kind, plan.kind.target(plan.config)
    probe = plan.probe
    role = getattr(plan.config, "role", None)
    role = None if role is None else str(role)
    if probe is None:
        return CheckRow(kind.label, plan.name, target, Status.FAIL, str(plan.error), role=role)
    budget = probe.interval  # as in the daemon: a run may take at most one interval
    clock = time.perf_counter()
    try:
        samples = await asyncio.wait_for(probe.collect(), budget)
    except TimeoutError:
        run = Run([], budget, timed_out=True)
    except Exception as exc:
        # The per-target boundary, as in the scheduler: a bug in one probe must not hide the
        # other rows. The row names the error; the traceback goes to the log.
        logger.exception("probe run failed", extra={"target": probe.name})
        reason = f"the probe failed: {type(exc).__name__}: {exc}"
        return CheckRow(kind.label, probe.name, target, Status.FAIL, reason, role=role)
    else:
        run = Run(samples, time.perf_counter() - clock)
    verdict = probe.verdict(run) if isinstance(probe, Judged) else plain_verdict(run, budget)
    return CheckRow(
        kind.label,
        probe.name,
        target,
        verdict.status,
        verdict.reason,
        dict(verdict.baseline),
        silent=verdict.silent,
        role=role,
    )


# -- broker ------------------------------------------------------------------------------------


class _BrokerError(Exception):
    """The broker check failed; the message is the plain-words reason."""


class _NoAnswerError(_BrokerError):
    """Nothing answered at all: a timeout, no route, a name the resolver could not reach."""


def _no_answer(exc: OSError) -> bool:
    if isinstance(exc, socket.gaierror):
        return exc.errno == socket.EAI_AGAIN  # no DNS server answered
    return isinstance(exc, TimeoutError) or exc.errno in (errno.ENETUNREACH, errno.EHOSTUNREACH)


async def check_broker(config: BrokerConfig, agent_id: str) -> CheckRow:
    """Connect once with MQTT v5, the site's TLS and credentials, then disconnect."""
    target = f"{config.host}:{config.port}" + (" (TLS)" if config.tls is not None else "")
    done: concurrent.futures.Future[None] = concurrent.futures.Future()
    # A daemon thread, not the default executor: a resolver that hangs past the deadline must
    # not keep the command from exiting.
    worker = threading.Thread(
        target=_connect_into, args=(config, agent_id, done), name="check-broker", daemon=True
    )
    worker.start()
    try:
        # Margin over connect_timeout: paho's own socket timeout should fire first.
        await asyncio.wait_for(asyncio.wrap_future(done), config.connect_timeout + 1.0)
    except TimeoutError:
        reason = timeout_reason(config, AGENT)
        return CheckRow("broker", "broker", target, Status.FAIL, reason, silent=True)
    except _BrokerError as exc:
        silent = isinstance(exc, _NoAnswerError)
        return CheckRow("broker", "broker", target, Status.FAIL, str(exc), silent=silent)
    return CheckRow("broker", "broker", target, Status.OK, "connected and logged in")


def _connect_into(
    config: BrokerConfig, agent_id: str, done: concurrent.futures.Future[None]
) -> None:
    try:
        _connect(config, agent_id)
    except _BrokerError as exc:
        done.set_exception(exc)
    else:
        done.set_result(None)


def _connect(config: BrokerConfig, agent_id: str) -> None:
    # A client id of its own: reusing the agent's would disconnect the running agent.
    client_id = f"{agent_id}-check-{secrets.token_hex(3)}"
    try:
        client = new_client(config, client_id)
    except ssl.SSLError as exc:
        raise _BrokerError(
            f"broker TLS: cannot use the certificate files ({exc.reason or exc}) - "
            "check agent.broker.tls"
        ) from exc
    except OSError as exc:
        raise _BrokerError(f"cannot read a broker secret file: {exc}") from exc
    client.connect_timeout = config.connect_timeout
    answer: list[ReasonCode] = []
    client.on_connect = lambda _c, _u, _f, reason_code, _p: answer.append(reason_code)
    # paho turns a socket error in its loop into "connection lost" and only logs the error; with
    # TLS 1.3 that is where the broker's refusal of our client certificate shows.
    errors: list[str] = []

    def keep_errors(_client: mqtt.Client, _userdata: object, level: int, text: str) -> None:
        if level == mqtt.MQTT_LOG_ERR:
            errors.append(text)

    client.on_log = keep_errors
    deadline = time.monotonic() + config.connect_timeout
    try:
        client.connect(config.host, config.port, keepalive=max(5, int(config.keepalive)))
        while not answer and time.monotonic() < deadline:
            # A refused CONNACK arrives and closes the connection in the same loop call.
            if client.loop(timeout=0.1) != mqtt.MQTT_ERR_SUCCESS and not answer:
                alerts = (peer_alert_reason(text, AGENT) for text in reversed(errors))
                raise _BrokerError(next(filter(None, alerts), closed_reason(config, AGENT)))
        if not answer:
            raise _NoAnswerError(timeout_reason(config, AGENT))
        _judge_connack(answer[0], config)
    except OSError as exc:
        error = _NoAnswerError if _no_answer(exc) else _BrokerError
        raise error(connect_failure_reason(exc, config, AGENT)) from exc
    finally:
        if answer and not answer[0].is_failure:
            client.disconnect()


def _judge_connack(reason: ReasonCode, config: BrokerConfig) -> None:
    if not reason.is_failure:
        return
    if reason.value in _LOGIN_REFUSED:
        raise _BrokerError(
            f"broker refused the login ({reason}) - check agent.broker.username and password_file"
        )
    if reason.value == _CLIENT_ID_REFUSED:
        raise _BrokerError(f"broker refused the client id ({reason}) - check the broker ACL")
    raise _BrokerError(f"broker refused the connection: {reason}")


# -- output ------------------------------------------------------------------------------------

_COLUMNS = ("STATUS", "KIND", "NAME", "TARGET", "LOSS", "RTT min/avg/max", "REASON")
# ANSI colours for the status cell on a terminal: green, yellow, bold red.
_COLOUR = {Status.OK: "\033[32m", Status.WARN: "\033[33m", Status.FAIL: "\033[1;31m"}
_RESET = "\033[0m"


def _loss(row: CheckRow) -> str:
    loss = row.baseline.get("loss_pct")
    return "" if loss is None else f"{loss:.0f}%"


def _rtt(row: CheckRow) -> str:
    values = [row.baseline.get(key) for key in ("rtt_min_ms", "rtt_avg_ms", "rtt_max_ms")]
    if any(value is None for value in values):
        return ""
    return "/".join(f"{value:.2f}" for value in values) + " ms"


def _cells(row: CheckRow) -> tuple[str, ...]:
    return (row.status.value, row.kind, row.name, row.target, _loss(row), _rtt(row), row.reason)


def _summary(result: CheckReport) -> str:
    counts = {status: sum(row.status is status for row in result.rows) for status in Status}
    mode = f", ICMP {result.icmp_mode} sockets" if result.icmp_mode else ""
    return (
        f"{counts[Status.OK]} OK, {counts[Status.WARN]} WARN, {counts[Status.FAIL]} FAIL "
        f"in {result.duration_s:.1f}s{mode}"
    )


def render(result: CheckReport, out: TextIO) -> None:
    """Aligned columns; on a terminal the status is coloured (the Pi has no table library).

    What the rows mean together comes first, between the title and the table.
    """
    colour = out.isatty()
    title = f"fieldmon check: {result.site} ({result.site_name}), agent {result.agent}"
    table = plain_table(result.rows, colour=colour)
    mark = f"{_COLOUR[Status.FAIL]}!!{_RESET}" if colour else "!!"
    findings = "".join(f"{mark} {finding}\n" for finding in result.findings)
    out.write(f"{title}\n\n{findings}{chr(10) if findings else ''}{table}\n{_summary(result)}\n")
    for path in result.traces:
        out.write(f"\n{_path_title(path)}\n")
        if path.table:
            out.write(f"{path.table}\n")
        out.write(f"  {path.summary}\n")


def _path_title(path: PathReport) -> str:
    if path.protocol is None:
        return f"path to {path.link} ({path.target}): no trace"
    return f"path to {path.link} ({path.target}), {path.protocol}, {path.cycles} cycles:"


def plain_table(rows: list[CheckRow], *, colour: bool = False) -> str:
    """Rows as left-aligned columns; the reason column last so it may run long."""
    lines = [_COLUMNS, *(_cells(row) for row in rows)]
    widths = [max(len(line[i]) for line in lines) for i in range(len(_COLUMNS) - 1)]
    text = []
    for index, line in enumerate(lines):
        cells = [cell.ljust(width) for cell, width in zip(line, widths, strict=False)]
        if colour and index > 0:
            status = rows[index - 1].status
            cells[0] = f"{_COLOUR[status]}{cells[0]}{_RESET}"
        text.append("  ".join(cells) + f"  {line[-1]}\n")
    return "".join(text)


def markdown_report(result: CheckReport) -> str:
    """A handover report: what was checked, when, the verdicts and what to do next."""
    verdict = "FAILED" if result.failed else "passed"
    lines = [
        f"# Commissioning check: {result.site_name}",
        "",
        f"- Site: `{result.site}` (parent hospital `{result.parent_hospital}`)",
        f"- Agent: `{result.agent}`",
        f"- Checked: {result.started}, took {result.duration_s:.2f}s",
        f"- Result: **{verdict}** - {_summary(result)}",
        "",
        *(f"**{finding}**\n" for finding in result.findings),
        "| " + " | ".join(_COLUMNS) + " |",
        "|" + "---|" * len(_COLUMNS),
    ]
    lines += ["| " + " | ".join(_md(cell) for cell in _cells(row)) + " |" for row in result.rows]
    todo = [row for row in result.rows if row.status is not Status.OK]
    if todo:
        lines += ["", "## To do", ""]
        lines += [f"- **{row.status.value}** {row.kind} `{row.name}`: {row.reason}" for row in todo]
    if result.traces:
        lines += ["", "## Paths", ""]
    for path in result.traces:
        lines += [f"{_path_title(path)} {path.summary}", ""]
        if path.table:
            lines += ["```", path.table, "```", ""]
    return "\n".join(lines).rstrip("\n") + "\n"


def _md(cell: str) -> str:
    return cell.replace("|", "\\|")
