"""`fieldmon-collector run`: subscribe, decode, store, acknowledge; until SIGTERM."""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
import time
from pathlib import Path

from aiohttp import web

from fieldmon.collector import health, routing
from fieldmon.collector.alerting import AlertRole
from fieldmon.collector.alerts import Transition
from fieldmon.collector.board import StatusBoard
from fieldmon.collector.config import CollectorConfig, Role, load_collector_config
from fieldmon.collector.deadletter import DeadLetterFile
from fieldmon.collector.http import HttpState, build_app
from fieldmon.collector.ingest import IngestPipeline
from fieldmon.collector.inventory import Inventory, load_inventory
from fieldmon.collector.metrics import CollectorMetrics
from fieldmon.collector.notify import Dispatcher, build_notifiers
from fieldmon.collector.pointwriter import DurableStore, PointWriter
from fieldmon.collector.seqtrack import SeqTracker
from fieldmon.collector.spool import MIB, Spool, SpoolError
from fieldmon.collector.storage.base import WriteError
from fieldmon.collector.storage.registry import make_writer
from fieldmon.core.config.errors import ConfigError
from fieldmon.core.mqtt.link import MqttLink, SubscriptionState, SubscriptionStatus, new_client
from fieldmon.core.systemd import Health, Notifier, Watchdog, ended_tasks
from fieldmon.core.version import part_version

logger = logging.getLogger(__name__)
VERSION = part_version("fieldmon-collector")


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


async def _open_spool(config: CollectorConfig) -> Spool | None:
    """The disk spool, or None (disabled, or its directory unusable: then writes are retried
    in memory and acknowledgements held while the database is down, which loses nothing)."""
    if not config.spool.enabled:
        return None
    try:
        return await asyncio.to_thread(
            lambda: Spool(
                config.spool_dir,
                max_bytes=int(config.spool.max_mb * MIB),
                segment_bytes=int(config.spool.segment_mb * MIB),
            )
        )
    except SpoolError as exc:
        logger.error("running without the disk spool", extra={"error": str(exc)})
        return None


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


async def _serve(config_path: Path, config: CollectorConfig, notifier: Notifier) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)

    metrics = CollectorMetrics()
    inventory = await asyncio.to_thread(load_inventory, config.site_configs)
    writer = make_writer(config.influxdb)
    points = PointWriter(writer, metrics, DeadLetterFile(config.data_dir / "dead-letter.jsonl"))
    spool = await _open_spool(config)
    store = DurableStore(points, metrics, spool, retry_budget=config.spool.retry_budget)
    link = _mqtt_link(config, loop)

    def count_refusal(status: SubscriptionStatus) -> None:
        if status.state is SubscriptionState.REFUSED:
            metrics.subscriptions_refused.labels(topic=status.topic).inc()

    link.on_subscription.append(count_refusal)
    pipeline = IngestPipeline(
        inventory=inventory,
        points=points,
        metrics=metrics,
        link=link,
        batch_size=config.influxdb.batch_size,
        flush_interval=config.influxdb.flush_interval,
        max_payload_bytes=config.broker.max_payload_bytes,
        max_deliveries=max(1, config.broker.receive_maximum // 2),
        seqs=None if config.broker.shared_group else SeqTracker(config.alerting.data_loss_grace),
        store=store,
        max_time_ahead=config.max_time_ahead,
    )
    board, alerts, dispatcher = _wire_roles(config, inventory, pipeline, store, link)

    reloads: set[asyncio.Task[None]] = set()

    def reload_inventory() -> None:
        async def _reload() -> None:
            pipeline.inventory = await asyncio.to_thread(load_inventory, config.site_configs)
            board.replace_inventory(pipeline.inventory)
            if alerts is not None:
                alerts.replace_inventory(pipeline.inventory)
            logger.info("reloaded site_configs", extra={"sites": sorted(pipeline.inventory.sites)})

        task = asyncio.create_task(_reload())
        reloads.add(task)
        task.add_done_callback(reloads.discard)

    loop.add_signal_handler(signal.SIGHUP, reload_inventory)
    http_state = HttpState(
        pipeline=pipeline,
        points=points,
        metrics=metrics,
        link=link,
        board=board,
        active_alerts=alerts.active_alerts if alerts else list,
        store=store,
        auth=config.http.auth,
    )
    runner = await _start_http(config, build_app(http_state))

    # In the background: a database that is down at start must not keep SIGTERM waiting, and
    # writes before it is ready are retried like any other (a missing database is retryable).
    tasks = [
        asyncio.create_task(_prepare_storage(writer), name="prepare-storage"),
        asyncio.create_task(pipeline.run(), name="ingest"),
        asyncio.create_task(store.drain(), name="spool-drain"),
    ]
    if alerts is not None:
        tasks.append(asyncio.create_task(alerts.run(), name="alerts"))
    if dispatcher is not None:
        dispatcher.start()
    link.start()
    # tasks[0] prepares the database and ends when it has; the others run until the stop.
    supervision = _Supervision(notifier, pipeline, points, store, link, tasks=tasks[1:])
    logger.info("collector started", extra={"version": VERSION, "roles": config.roles})
    await stop.wait()
    supervision.stopping()
    await _shutdown(tasks, pipeline, alerts, link)
    if dispatcher is not None:
        await dispatcher.close(deadline=10.0)
    await runner.cleanup()
    await writer.close()
    if spool is not None:
        await asyncio.to_thread(spool.close)
    supervision.close()
    logger.info("collector stopped")


class _Supervision:
    """What systemd sees of the collector: READY=1 once the broker has answered every
    subscription, STATUS= lines, the watchdog fed while ingest makes progress, STOPPING=1."""

    def __init__(
        self,
        notifier: Notifier,
        pipeline: IngestPipeline,
        points: PointWriter,
        store: DurableStore,
        link: MqttLink,
        *,
        tasks: list[asyncio.Task[None]],
    ) -> None:
        self._notifier = notifier
        self._pipeline = pipeline
        self._points = points
        self._store = store
        self._link = link
        self._tasks = tasks
        self._stopping = False
        self._watchdog = asyncio.create_task(Watchdog(notifier, self.check).run(), name="watchdog")
        self._ready = asyncio.create_task(self._announce_ready(), name="ready")

    def check(self) -> Health:
        """The STATUS= line, and the problem if ingest is stalled (collector.health)."""
        status = health.status_line(
            self._link.subscriptions,
            connected=self._link.connected.is_set(),
            broker_error=self._link.last_error,
            database_error=self._points.last_error,
            pending_points=self._pipeline.pending_points,
            holding=self._store.holding,
        )
        if self._stopping:  # the tasks are cancelled on purpose; the stop has its own bounds
            return Health("stopping: " + status)
        problem = health.judge(
            time.monotonic(),
            flushing_since=self._pipeline.flushing_since,
            last_activity=max(self._points.last_attempt, self._points.resting_until),
            waiting_since=self._pipeline.waiting_since(),
            ended=ended_tasks(self._tasks),
        )
        return Health(status, problem)

    async def _announce_ready(self) -> None:
        # From the broker's answers on, what the agents send reaches us (a refusal is in
        # /healthz and the log, and the collector serves on). Until then STATUS= says what it
        # waits for; a broker that never answers keeps the unit starting until its
        # TimeoutStartSec, and systemd starts it again.
        self._notifier.status(f"waiting for the broker to answer: {self.check().status}")
        await self._link.wait_subscribed()
        self._notifier.ready(self.check().status)
        logger.info("serving: the broker answered every subscription")

    def stopping(self) -> None:
        """SIGTERM: say so; from here on the watchdog asks only that the loop runs."""
        self._stopping = True
        self._ready.cancel()
        self._notifier.stopping("stopping: writing what is pending")

    def close(self) -> None:
        """The stop is done."""
        self._watchdog.cancel()


def _wire_roles(
    config: CollectorConfig,
    inventory: Inventory,
    pipeline: IngestPipeline,
    store: DurableStore,
    link: MqttLink,
) -> tuple[StatusBoard, AlertRole | None, Dispatcher | None]:
    """Subscriptions and message routes for this collector's roles."""
    board = StatusBoard(inventory)
    ingest_role, alerts_role = Role.INGEST in config.roles, Role.ALERTS in config.roles
    alerts, dispatcher = (
        _alert_role(config, inventory, store, link) if alerts_role else (None, None)
    )
    subscriptions = routing.plan(ingest_role, alerts_role, config.broker.shared_group)
    if alerts is not None and any(s.identifier == routing.ALERT_SAMPLES_ID for s in subscriptions):
        alerts.observers.append(board.observe)  # the alert role alone sees the whole stream
    else:
        pipeline.on_accepted.append(board.observe)
        if alerts is not None:
            pipeline.on_accepted.append(alerts.observe_envelope)  # one subscription feeds both
    link.on_message = routing.Router(
        link.client,
        ingest=pipeline.handle if ingest_role else None,
        alert_samples=alerts.handle_samples if alerts else None,
        status=alerts.handle_status if alerts else None,
    )
    for subscription in subscriptions:
        subscription.keep(link)
    return board, alerts, dispatcher


def _alert_role(
    config: CollectorConfig, inventory: Inventory, store: DurableStore, link: MqttLink
) -> tuple[AlertRole, Dispatcher]:
    """The alert engine and the notifiers it pages through (each in its own lane)."""

    def mqtt_publish(topic: str, payload: bytes, retain: bool) -> None:
        link.client.publish(topic, payload, qos=1, retain=retain)

    notify = config.notify
    dispatcher = Dispatcher(
        build_notifiers(notify, mqtt_publish=mqtt_publish),
        queue_size=notify.queue_size,
        max_attempts=notify.max_attempts,
        backoff_max=notify.backoff_max,
    )

    def page(transitions: list[Transition]) -> None:
        for transition in transitions:
            logger.warning(
                "page: %s",
                transition.annotations.get("summary", transition.alertname),
                extra={"labels": transition.labels, "state": str(transition.state)},
            )
        dispatcher.submit(transitions)

    role = AlertRole(
        inventory,
        config.alerting,
        store,
        config.data_dir / "alert-state.json",
        max_payload_bytes=config.broker.max_payload_bytes,
        max_time_ahead=config.max_time_ahead,
        page=page,
    )
    role.restore()
    dispatcher.active_provider = role.active_alerts
    return role, dispatcher


async def _start_http(config: CollectorConfig, app: web.Application) -> web.AppRunner:
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, config.http.host, config.http.port, reuse_address=True)
    await site.start()
    logger.info("http listening", extra={"listen": config.http.listen})
    return runner


async def _shutdown(
    tasks: list[asyncio.Task[None]],
    pipeline: IngestPipeline,
    alerts: AlertRole | None,
    link: MqttLink,
) -> None:
    """Write what is pending and acknowledge it; what cannot be written is re-delivered later."""
    logger.info("stopping: writing what is pending")
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    try:
        await asyncio.wait_for(pipeline.flush(), timeout=10)
        if alerts is not None:
            await asyncio.wait_for(alerts.flush(), timeout=5)
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
    notifier = Notifier.from_environment()
    try:
        asyncio.run(_serve(config_path, config, notifier))
    except OSError as exc:
        if exc.errno is not None and exc.errno in (98, socket.EADDRINUSE):
            logger.error("http.listen address is in use", extra={"listen": config.http.listen})
            return 2
        raise
    return 0
