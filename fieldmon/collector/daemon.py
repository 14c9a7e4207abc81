"""`fieldmon-collector run`: subscribe, decode, store, acknowledge; until SIGTERM."""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
from pathlib import Path

from aiohttp import web

from fieldmon import __version__
from fieldmon.collector.config import CollectorConfig, Role, load_collector_config
from fieldmon.collector.deadletter import DeadLetterFile
from fieldmon.collector.http import build_app
from fieldmon.collector.ingest import IngestPipeline
from fieldmon.collector.inventory import load_inventory
from fieldmon.collector.metrics import CollectorMetrics
from fieldmon.collector.storage.base import WriteError
from fieldmon.collector.storage.registry import make_writer
from fieldmon.config.errors import ConfigError
from fieldmon.mqtt import MqttLink, new_client
from fieldmon.wire import topics
from fieldmon.wire.topics import TopicKind

logger = logging.getLogger(__name__)


async def _prepare_storage(writer: object) -> None:
    """Create the database if needed; keep trying, since ingest retries writes anyway."""
    delay = 1.0
    while True:
        try:
            await writer.prepare()  # type: ignore[attr-defined]
        except WriteError as exc:
            logger.warning("database not ready; retrying", extra={"error": str(exc)})
            await asyncio.sleep(delay)
            delay = min(30.0, delay * 2)
        else:
            return


def _mqtt_link(config: CollectorConfig, loop: asyncio.AbstractEventLoop) -> MqttLink:
    broker = config.broker
    client = new_client(broker, client_id=broker.client_id, manual_ack=True)
    return MqttLink(
        client,
        broker,
        loop,
        # A persistent session: the broker queues for us while we are down.
        clean_start=False,
        session_expiry=broker.session_expiry,
        receive_maximum=broker.receive_maximum,
    )


async def _serve(config_path: Path, config: CollectorConfig) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)

    metrics = CollectorMetrics()
    inventory = await asyncio.to_thread(load_inventory, config.site_configs)
    writer = make_writer(config.influxdb)
    link = _mqtt_link(config, loop)
    pipeline = IngestPipeline(
        inventory=inventory,
        writer=writer,
        metrics=metrics,
        link=link,
        dead_letter=DeadLetterFile(config.data_dir / "dead-letter.jsonl"),
        batch_size=config.influxdb.batch_size,
        flush_interval=config.influxdb.flush_interval,
        max_payload_bytes=config.broker.max_payload_bytes,
        max_deliveries=max(1, config.broker.receive_maximum // 2),
    )
    samples_filter = topics.subscription(TopicKind.SAMPLES, config.broker.shared_group)

    def on_connected(_session_present: bool) -> None:
        if Role.INGEST in config.roles:
            link.client.subscribe(samples_filter, qos=1)

    def on_message(message: object) -> None:
        topic = getattr(message, "topic", "")
        if topic.endswith("/" + TopicKind.SAMPLES):
            pipeline.handle(message)  # type: ignore[arg-type]
        elif getattr(message, "qos", 0):
            link.client.ack(message.mid, message.qos)  # type: ignore[attr-defined]

    reloads: set[asyncio.Task[None]] = set()

    def reload_inventory() -> None:
        async def _reload() -> None:
            pipeline.inventory = await asyncio.to_thread(load_inventory, config.site_configs)
            logger.info("reloaded site_configs", extra={"sites": sorted(pipeline.inventory.sites)})

        task = asyncio.create_task(_reload())
        reloads.add(task)
        task.add_done_callback(reloads.discard)

    loop.add_signal_handler(signal.SIGHUP, reload_inventory)
    link.on_connected.append(on_connected)
    link.on_message = on_message

    runner = await _start_http(config, build_app(pipeline, metrics, link))

    await _prepare_storage(writer)
    ingest = asyncio.create_task(pipeline.run(), name="ingest")
    link.start()
    logger.info("collector started", extra={"version": __version__, "roles": config.roles})
    await stop.wait()
    await _shutdown(ingest, pipeline, link)
    await runner.cleanup()
    await writer.close()
    logger.info("collector stopped")


async def _start_http(config: CollectorConfig, app: web.Application) -> web.AppRunner:
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, config.http.host, config.http.port, reuse_address=True)
    await site.start()
    logger.info("http listening", extra={"listen": config.http.listen})
    return runner


async def _shutdown(ingest: asyncio.Task[None], pipeline: IngestPipeline, link: MqttLink) -> None:
    """Write what is pending and acknowledge it; what cannot be written is re-delivered later."""
    logger.info("stopping: writing what is pending")
    ingest.cancel()
    await asyncio.gather(ingest, return_exceptions=True)
    try:
        await asyncio.wait_for(pipeline.flush(), timeout=10)
    except TimeoutError:
        logger.warning("pending points not written in time; the broker will re-deliver them")
    await asyncio.sleep(0.2)  # let paho send the last acks before disconnecting
    link.stop()


def run_collector(config_path: Path) -> int:
    """Run the collector until SIGTERM; returns the process exit status."""
    try:
        config = load_collector_config(config_path)
    except ConfigError as exc:
        logger.error("invalid collector file", extra={"errors": [str(i) for i in exc.issues]})
        return 2
    try:
        asyncio.run(_serve(config_path, config))
    except OSError as exc:
        if exc.errno is not None and exc.errno in (98, socket.EADDRINUSE):
            logger.error("http.listen address is in use", extra={"listen": config.http.listen})
            return 2
        raise
    return 0
