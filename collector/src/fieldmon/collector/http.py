"""The collector's HTTP endpoint: status page, /healthz, /metrics and the JSON API."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from fieldmon.collector.alerts import Transition
from fieldmon.collector.board import SiteView, StatusBoard
from fieldmon.collector.ingest import IngestPipeline
from fieldmon.collector.metrics import CollectorMetrics
from fieldmon.collector.pointwriter import DurableStore, PointWriter
from fieldmon.core.mqtt.link import MqttLink, SubscriptionState

# /healthz turns unhealthy when the database has refused writes for this long.
WRITE_STALL_S = 60.0
# Worst first: the site's colour is its worst alert.
_STATE_BY_ALERT = {
    "SiteUnreachable": "unreachable",
    "LinkDown": "down",
    "LinkFlapping": "degraded",
    "LinkDegraded": "degraded",
}
_STATE_RANK = {"ok": 0, "unknown": 1, "degraded": 2, "down": 3, "unreachable": 4}


@dataclass
class HttpState:
    """What the handlers read; they never change it."""

    pipeline: IngestPipeline
    points: PointWriter
    metrics: CollectorMetrics
    link: MqttLink
    board: StatusBoard
    active_alerts: Callable[[], list[Transition]]
    store: DurableStore | None = None


def _alert_json(alert: Transition) -> dict[str, Any]:
    return {
        "labels": alert.labels,
        "annotations": alert.annotations,
        "state": str(alert.state),
        "starts_at": alert.starts_at,
        "value": alert.value,
    }


def _site_json(site: str, view: SiteView, alerts: list[Transition]) -> dict[str, Any]:
    mine = [alert for alert in alerts if alert.labels.get("site") == site]
    site_state = "ok" if view.last_seen is not None else "unknown"
    links = []
    for name, link in sorted(view.links.items()):
        link_state = "ok" if link.latest else "unknown"
        for alert in mine:
            if alert.labels.get("target") == name:
                candidate = _STATE_BY_ALERT.get(str(alert.alertname), "degraded")
                if _STATE_RANK[candidate] > _STATE_RANK[link_state]:
                    link_state = candidate
        links.append(
            {
                "name": name,
                "role": link.role,
                "state": link_state,
                "latest": link.latest,
                "latest_at": link.latest_at,
                "history": [[t, loss, rtt] for t, loss, rtt in link.history],
                "path": link.path,
                "path_at": link.path_at or None,
            }
        )
    for alert in mine:
        candidate = _STATE_BY_ALERT.get(str(alert.alertname), "degraded")
        if _STATE_RANK[candidate] > _STATE_RANK[site_state]:
            site_state = candidate
    return {
        "site": site,
        "name": view.name,
        "parent_hospital": view.parent_hospital,
        "state": site_state,
        "last_seen": view.last_seen,
        "links": links,
        "alerts": [_alert_json(alert) for alert in mine],
    }


def build_app(state: HttpState) -> web.Application:
    """The aiohttp application."""
    page = resources.files("fieldmon.collector").joinpath("static/index.html").read_bytes()

    async def index(_request: web.Request) -> web.Response:
        return web.Response(body=page, content_type="text/html", charset="utf-8")

    async def healthz(_request: web.Request) -> web.Response:
        problems = []
        if not state.link.connected.is_set():
            problems.append(f"mqtt: not connected ({state.link.last_error or 'connecting'})")
        subscriptions = state.link.subscriptions
        problems.extend(
            f"mqtt: the broker refused the subscription to {sub.topic} ({sub.reason})"
            for sub in subscriptions
            if sub.state is SubscriptionState.REFUSED
        )
        points = state.points
        if points.last_error and (
            points.last_ok is None or time.time() - points.last_ok > WRITE_STALL_S
        ):
            problems.append(f"database: {points.last_error}")
        if state.store is not None and state.store.holding:
            problems.append(
                "spool: full; batches wait unacknowledged until the database takes writes"
            )
        body = {
            "status": "ok" if not problems else "unhealthy",
            "problems": problems,
            # Topic filters and the broker's answers (no addresses, no credentials): tests and
            # deploy scripts wait for "granted" here instead of sleeping.
            "subscriptions": [sub.as_json() for sub in subscriptions],
        }
        return web.json_response(body, status=200 if not problems else 503)

    async def metrics_handler(_request: web.Request) -> web.Response:
        state.metrics.mqtt_connected.set(1 if state.link.connected.is_set() else 0)
        response = web.Response(body=generate_latest(state.metrics.registry))
        response.content_type = CONTENT_TYPE_LATEST.split(";")[0]
        response.charset = "utf-8"
        return response

    async def sites(_request: web.Request) -> web.Response:
        alerts = state.active_alerts()
        return web.json_response(
            {
                "now": time.time(),
                "sites": [
                    _site_json(site, view, alerts)
                    for site, view in sorted(state.board.sites.items())
                ],
                "problems": state.pipeline.inventory.problems,
            }
        )

    async def alerts_handler(_request: web.Request) -> web.Response:
        return web.json_response({"alerts": [_alert_json(a) for a in state.active_alerts()]})

    app = web.Application()
    app.router.add_get("/", index)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", metrics_handler)
    app.router.add_get("/api/v1/sites", sites)
    app.router.add_get("/api/v1/alerts", alerts_handler)
    return app
