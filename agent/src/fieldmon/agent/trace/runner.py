"""The daemon's side of path traces: when to trace, the subprocess, and the rows it publishes.

`PathTracer` listens to the agent's link events (fieldmon.agent.events). When its own judgement
of a parent or internet link turns degraded or down, it traces that link's path; when the link
is judged up (after a start, or back from an episode) it traces once more, for the route later
traces are compared with. Limits, so a flapping link costs little: one trace at a time per
link, at most two at once for the agent, a trace of a bad state at most every
`trace.min_interval` (5 min) per link, a trace of a good state only when no trace of the link
ran within that interval; and only on a change of state, never per round.

A trace runs as `python -m fieldmon.agent.trace ...` (its own process: the daemon holds none of
its sockets or code), which prints JSON; the agent waits for it without blocking (asyncio
subprocess), so probing never stalls. What it publishes, through the outbox:

- `path`, one row per hop at the trace's start: tags site, agent, target (the link), hop (the
  TTL) | address ("*" when nothing answered), loss_pct, sent, received, rtt_last_ms,
  rtt_avg_ms, rtt_best_ms, rtt_worst_ms, rtt_stdev_ms, rtt_p50_ms, rtt_p95_ms (ms, left out
  when nothing answered), protocol, trace_id;
- `event` kind `path` when it ends: message (the summary line, `path to LINK: ...`), summary,
  target, trace_id, trigger (the link event), protocol, hops, reached, destination, and
  loss_hop, loss_address, rate_limited, fallback_from, errors where they apply;
- `event` kind `path_change` when the hop list differs from the last one traced while the link
  was up (kept beside the outbox, `<outbox>.paths.json`, across restarts): message, target,
  old_route, new_route, trace_id.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from fieldmon.agent.trace.analysis import Trace, route_change, summarize
from fieldmon.core.site.config import SiteConfig
from fieldmon.core.site.links import IcmpLinkConfig
from fieldmon.core.wire.models import FieldValue, Sample
from fieldmon.firmware_hooks.hooks import EventName, HookEvent

logger = logging.getLogger(__name__)

RowSink = Callable[[list[Sample]], None]
Command = Callable[[IcmpLinkConfig], list[str]]

MAX_PARALLEL = 2  # traces at once for the whole agent (each is a process of its own)
_BAD = frozenset({EventName.LINK_DEGRADED, EventName.LINK_DOWN})
_TRIGGERS = _BAD | {EventName.LINK_UP}
_GRACE_S = 10.0  # beyond the trace's own longest time before its process is killed


def trace_command(link: IcmpLinkConfig) -> list[str]:
    """The subprocess that traces `link` as its site file says."""
    trace = link.trace
    command = [
        sys.executable, "-m", "fieldmon.agent.trace", link.address,
        "--protocol", trace.protocol.value,
        "--cycles", str(trace.cycles),
        "--interval", f"{trace.interval:g}",
        "--timeout", f"{trace.timeout:g}",
        "--max-hops", str(trace.max_hops),
    ]  # fmt: skip
    if trace.port is not None:
        command += ["--port", str(trace.port)]
    if link.interface is not None:
        command += ["--interface", link.interface]
    return command


class TraceFailedError(Exception):
    """The trace subprocess gave no trace; the message says why."""


async def run_trace_process(
    link: IcmpLinkConfig, command: Command = trace_command, *, limit: float | None = None
) -> Trace:
    """Run the trace subprocess for `link` and read its JSON; killed after `limit` seconds
    (by default twice the trace's longest time, an automatic fallback included, plus 10 s)."""
    limit = 2 * link.trace.duration + _GRACE_S if limit is None else limit
    process = await asyncio.create_subprocess_exec(
        *command(link),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        stdout, stderr = await asyncio.wait_for(process.communicate(), limit)
    except (TimeoutError, asyncio.CancelledError):
        with contextlib.suppress(ProcessLookupError):
            process.kill()
        await process.wait()
        raise
    try:
        data = json.loads(stdout)
    except ValueError as exc:
        words = stderr.decode("utf-8", "replace").strip()[-300:]
        raise TraceFailedError(
            f"trace of {link.name} exited {process.returncode} without a trace: {words}"
        ) from exc
    if isinstance(data, dict) and "error" in data:
        raise TraceFailedError(f"trace of {link.name}: {data['error']}")
    try:
        return Trace.from_json(data)
    except (KeyError, TypeError, ValueError) as exc:
        raise TraceFailedError(f"trace of {link.name}: not a trace ({exc!r})") from exc


def path_rows(site: str, agent: str, link: str, trace: Trace, trace_id: str) -> list[Sample]:
    """One `path` row per hop (see the module docstring)."""
    rows = []
    for hop in trace.hops:
        fields: dict[str, FieldValue] = {
            "address": hop.address,
            "loss_pct": hop.loss_pct,
            "sent": hop.sent,
            "received": hop.received,
            **hop.figures(),
            "protocol": trace.protocol,
            "trace_id": trace_id,
        }
        rows.append(
            Sample(
                measurement="path",
                tags={"site": site, "agent": agent, "target": link, "hop": str(hop.ttl)},
                fields=fields,
                time=trace.started_ns or time.time_ns(),
            )
        )
    return rows


@dataclass
class _LinkTraces:
    running: asyncio.Task[None] | None = None
    last_any: float | None = None  # monotonic start of the latest trace
    last_bad: float | None = None  # ... of the latest trace of a degraded or down link


class PathTracer:
    """Traces links on their state changes and publishes the results (module docstring)."""

    def __init__(
        self,
        config: SiteConfig,
        rows: RowSink,
        *,
        state_file: Path | None = None,
        command: Command = trace_command,
        monotonic: Callable[[], float] = time.monotonic,
        max_parallel: int = MAX_PARALLEL,
    ) -> None:
        self._site, self._agent = config.site, config.agent.id
        self._links = {link.name: link for link in config.links if link.traced}
        self._rows = rows
        self._state_file = state_file
        self._command = command
        self._monotonic = monotonic
        self._slots = asyncio.Semaphore(max_parallel)
        self._traces: dict[str, _LinkTraces] = {}
        self._routes: dict[str, list[str]] = _load_routes(state_file)
        self.finished: list[tuple[str, Trace]] = []  # the latest traces, newest last (tests)

    def reconfigure(self, config: SiteConfig) -> None:
        """A reloaded site file: which links are traced, and how."""
        self._links = {link.name: link for link in config.links if link.traced}

    def on_event(self, event: HookEvent) -> None:
        """An agent event: traces a traced link whose state changed, within the limits."""
        if event.event not in _TRIGGERS or event.target not in self._links:
            return
        link = self._links[event.target]
        state = self._traces.setdefault(link.name, _LinkTraces())
        now, interval = self._monotonic(), link.trace.min_interval
        bad = event.event in _BAD
        # A good state's trace (a baseline) never holds back the trace of a bad one.
        last = state.last_bad if bad else state.last_any
        if state.running is not None and not state.running.done():
            reason = "a trace of this link is running"
        elif last is not None and now - last < interval:
            reason = (
                f"its last trace {'of a bad state ' if bad else ''}began under {interval:g}s ago"
            )
        else:
            reason = None
        if reason is not None:
            logger.info(
                "no trace of %s for %s: %s",
                link.name,
                event.event.value,
                reason,
                extra={"target": link.name, "event": event.event.value},
            )
            return
        state.last_any = now
        if event.event in _BAD:
            state.last_bad = now
        state.running = asyncio.create_task(
            self._trace(link, event.event.value), name=f"trace:{link.name}"
        )

    async def close(self) -> None:
        """Stop running traces (their processes are killed); nothing more is published."""
        tasks = [s.running for s in self._traces.values() if s.running and not s.running.done()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def wait(self) -> None:
        """Until the traces running now have published (tests)."""
        tasks = [s.running for s in self._traces.values() if s.running is not None]
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _trace(self, link: IcmpLinkConfig, trigger: str) -> None:
        async with self._slots:
            logger.info("tracing %s (%s)", link.name, trigger, extra={"target": link.name})
            try:
                trace = await run_trace_process(link, self._command)
            except (TraceFailedError, TimeoutError, OSError) as exc:
                logger.warning(
                    "path trace failed", extra={"target": link.name, "error": str(exc) or "timeout"}
                )
                return
        self.finished = [*self.finished[-19:], (link.name, trace)]
        await self._publish(link, trace, trigger)

    async def _publish(self, link: IcmpLinkConfig, trace: Trace, trigger: str) -> None:
        trace_id = secrets.token_hex(6)
        summary = summarize(trace)
        rows = path_rows(self._site, self._agent, link.name, trace, trace_id)
        fields: dict[str, FieldValue | None] = {
            "message": f"path to {link.name}: {summary.text}",
            "summary": summary.text,
            "target": link.name,
            "trace_id": trace_id,
            "trigger": trigger,
            "protocol": trace.protocol,
            "hops": len(trace.hops),
            "reached": trace.reached,
            "destination": trace.destination,
            "loss_hop": summary.loss_hop,
            "loss_address": summary.loss_address,
            "rate_limited": ",".join(map(str, summary.rate_limited)) or None,
            "fallback_from": trace.fallback_from,
            "errors": ", ".join(f"{k} x{v}" for k, v in sorted(trace.errors.items())) or None,
        }
        rows.append(self._event("path", fields))
        extra = {"target": link.name, "trace": trace_id}
        logger.info("path to %s: %s", link.name, summary.text, extra=extra)
        rows += await self._route(link, trace, trace_id, good=trigger == EventName.LINK_UP.value)
        self._rows(rows)

    async def _route(
        self, link: IcmpLinkConfig, trace: Trace, trace_id: str, *, good: bool
    ) -> list[Sample]:
        """The `path_change` row when the hop list changed; a good trace becomes the one
        later traces are compared with."""
        route = list(trace.route)
        old = self._routes.get(link.name)
        rows = []
        words = route_change(tuple(old), trace.route) if old is not None and trace.reached else None
        if old is not None and words is not None:
            rows.append(
                self._event(
                    "path_change",
                    {
                        "message": f"route to {link.name} changed: {words}",
                        "target": link.name,
                        "old_route": " > ".join(old),
                        "new_route": " > ".join(route),
                        "trace_id": trace_id,
                    },
                )
            )
        if good and trace.reached and route != old:
            self._routes[link.name] = route
            if self._state_file is not None:
                await asyncio.to_thread(_save_routes, self._state_file, dict(self._routes))
        return rows

    def _event(self, kind: str, values: dict[str, FieldValue | None]) -> Sample:
        return Sample(
            measurement="event",
            tags={"site": self._site, "agent": self._agent, "kind": kind},
            fields={key: value for key, value in values.items() if value is not None},
            time=time.time_ns(),
        )


def _load_routes(path: Path | None) -> dict[str, list[str]]:
    if path is None:
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict):
        return {}
    return {
        str(name): [str(hop) for hop in route]
        for name, route in data.items()
        if isinstance(route, list)
    }


def _save_routes(path: Path, routes: dict[str, list[str]]) -> None:
    temporary = path.with_name(path.name + ".tmp")
    try:
        temporary.write_text(json.dumps(routes), encoding="utf-8")
        temporary.replace(path)
    except OSError as exc:
        logger.warning(
            "cannot keep the traced routes", extra={"file": str(path), "error": str(exc)}
        )
