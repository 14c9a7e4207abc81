"""The collector's HTTP endpoint: status page, /healthz, /metrics and the JSON API.

Every response carries security headers: a Content-Security-Policy that allows the status page's
own inline script and style (by their hashes, computed from the page at start) and fetches to the
same origin only, `X-Frame-Options: DENY`, `X-Content-Type-Options: nosniff` and
`Referrer-Policy: no-referrer`. With `http.auth`, everything but /healthz needs a bearer token or
basic credentials.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from importlib import resources
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from fieldmon.collector.alerts import Transition
from fieldmon.collector.alerts.model import SERVICE_ALERTS
from fieldmon.collector.board import SiteView, StatusBoard
from fieldmon.collector.config import HttpAuthConfig
from fieldmon.collector.ingest import IngestPipeline
from fieldmon.collector.metrics import CollectorMetrics
from fieldmon.collector.pointwriter import DurableStore, PointWriter
from fieldmon.core.config.types import read_secret
from fieldmon.core.mqtt.link import MqttLink, SubscriptionState
from fieldmon.core.redact import strip_urls

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
    auth: HttpAuthConfig | None = None  # None: open (the config allows it on loopback only)


# Open without authentication: a load balancer or systemd watchdog probes it, and it names no
# address and no credential.
OPEN_PATHS = frozenset({"/healthz"})
_INLINE = {
    "script": re.compile(rb"<script>(.*?)</script>", re.DOTALL),
    "style": re.compile(rb"<style>(.*?)</style>", re.DOTALL),
}


def content_security_policy(page: bytes) -> str:
    """A policy that lets `page` run its own inline script and style and nothing else: no other
    origin, no plugins, no framing, no forms, and fetches to this origin only."""

    def hashes(kind: str) -> str:
        found = [
            "'sha256-" + base64.b64encode(hashlib.sha256(block).digest()).decode() + "'"
            for block in _INLINE[kind].findall(page)
        ]
        return " ".join(found) or "'none'"

    return "; ".join(
        [
            "default-src 'none'",
            f"script-src {hashes('script')}",
            f"style-src {hashes('style')}",
            "connect-src 'self'",
            "img-src 'self'",
            "base-uri 'none'",
            "form-action 'none'",
            "frame-ancestors 'none'",
        ]
    )


def security_headers(page: bytes) -> dict[str, str]:
    """The headers every response carries."""
    return {
        "Content-Security-Policy": content_security_policy(page),
        "X-Frame-Options": "DENY",
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer",
    }


def _digest(value: bytes) -> bytes:
    # Compared as digests: equal lengths, so the comparison says nothing about the length.
    return hashlib.sha256(value).digest()


class Authenticator:
    """Checks `Authorization:` against the configured bearer token and basic credentials."""

    def __init__(self, config: HttpAuthConfig) -> None:
        # Read once at start-up, like every secret.
        token = read_secret(config.token_file) if config.token_file else None
        self._token = _digest(token.encode("utf-8")) if token else None
        self._basic = None
        if config.username is not None and config.password_file is not None:
            credentials = f"{config.username}:{read_secret(config.password_file)}"
            self._basic = _digest(credentials.encode("utf-8"))
        # A browser asks for a user name and password only when told Basic.
        self.challenge = (
            'Basic realm="fieldmon", charset="UTF-8"'
            if self._basic
            else ('Bearer realm="fieldmon"')
        )

    def allows(self, header: str) -> bool:
        """True when the Authorization header carries a valid token or valid credentials."""
        scheme, _, value = header.strip().partition(" ")
        value = value.strip()
        if scheme.lower() == "bearer" and self._token is not None:
            return hmac.compare_digest(_digest(value.encode("utf-8")), self._token)
        if scheme.lower() == "basic" and self._basic is not None:
            try:
                decoded = base64.b64decode(value, validate=True)
            except (binascii.Error, ValueError):
                return False
            return hmac.compare_digest(_digest(decoded), self._basic)
        return False


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _auth_middleware(authenticator: Authenticator) -> Callable[..., Awaitable[Any]]:
    @web.middleware
    async def authenticate(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path in OPEN_PATHS or authenticator.allows(
            request.headers.get("Authorization", "")
        ):
            return await handler(request)
        return web.json_response(
            {"error": "authentication required (http.auth of the collector's config)"},
            status=401,
            headers={"WWW-Authenticate": authenticator.challenge},
        )

    return authenticate


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
            if alert.labels.get("target") == name and alert.alertname not in SERVICE_ALERTS:
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
    interfaces = [
        {
            "device": interface.device,
            "ifname": interface.ifname,
            "oper_up": interface.oper_up,
            **interface.rates,
            "window_s": interface.window_s,
            "latest_at": interface.latest_at,
        }
        for _key, interface in sorted(view.interfaces.items())
    ]
    return {
        "site": site,
        "name": view.name,
        "parent_hospital": view.parent_hospital,
        "state": site_state,
        "last_seen": view.last_seen,
        "links": links,
        "services": [svc.to_json(name, mine) for name, svc in sorted(view.services.items())],
        "interfaces": interfaces,
        "alerts": [_alert_json(alert) for alert in mine],
    }


def build_app(state: HttpState) -> web.Application:
    """The aiohttp application."""
    page = resources.files("fieldmon.collector").joinpath("static/index.html").read_bytes()
    headers = security_headers(page)

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
            # Writers name the database's URL in their errors (redacted, for the log); /healthz
            # is open, so it names no address at all.
            problems.append(f"database: {strip_urls(points.last_error, 'the database')}")
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
                # Known but closed (site_configs/closed/): no alerts; their rows stay readable.
                "closed": sorted(state.pipeline.inventory.closed),
            }
        )

    async def alerts_handler(_request: web.Request) -> web.Response:
        return web.json_response({"alerts": [_alert_json(a) for a in state.active_alerts()]})

    async def add_headers(_request: web.Request, response: web.StreamResponse) -> None:
        response.headers.update(headers)

    middlewares = [_auth_middleware(Authenticator(state.auth))] if state.auth else []
    app = web.Application(middlewares=middlewares)
    app.on_response_prepare.append(add_headers)
    app.router.add_get("/", index)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", metrics_handler)
    app.router.add_get("/api/v1/sites", sites)
    app.router.add_get("/api/v1/alerts", alerts_handler)
    return app
