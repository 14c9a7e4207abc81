"""The collector's HTTP endpoint: /healthz, /metrics, and the sites API."""

from __future__ import annotations

import time

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from fieldmon.collector.ingest import IngestPipeline
from fieldmon.collector.metrics import CollectorMetrics
from fieldmon.collector.pointwriter import PointWriter
from fieldmon.mqtt import MqttLink

# /healthz turns unhealthy when the database has refused writes for this long.
WRITE_STALL_S = 60.0


def build_app(
    pipeline: IngestPipeline, points: PointWriter, metrics: CollectorMetrics, link: MqttLink
) -> web.Application:
    """The aiohttp application; handlers read state, they never change it."""

    async def healthz(_request: web.Request) -> web.Response:
        problems = []
        if not link.connected.is_set():
            problems.append(f"mqtt: not connected ({link.last_error or 'connecting'})")
        if points.last_error and (
            points.last_ok is None or time.time() - points.last_ok > WRITE_STALL_S
        ):
            problems.append(f"database: {points.last_error}")
        body = {"status": "ok" if not problems else "unhealthy", "problems": problems}
        return web.json_response(body, status=200 if not problems else 503)

    async def metrics_handler(_request: web.Request) -> web.Response:
        metrics.mqtt_connected.set(1 if link.connected.is_set() else 0)
        response = web.Response(body=generate_latest(metrics.registry))
        response.content_type = CONTENT_TYPE_LATEST.split(";")[0]
        response.charset = "utf-8"
        return response

    async def sites(_request: web.Request) -> web.Response:
        inventory = pipeline.inventory
        return web.json_response(
            {
                "sites": [
                    {
                        "site": config.site,
                        "name": config.name,
                        "parent_hospital": config.parent_hospital,
                        "agent": config.agent.id,
                        "links": [link.name for link in config.links],
                    }
                    for config in inventory.sites.values()
                ],
                "problems": inventory.problems,
            }
        )

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", metrics_handler)
    app.router.add_get("/api/v1/sites", sites)
    return app
