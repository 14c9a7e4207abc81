"""`fieldmon-agent run`: probes -> batcher -> outbox -> sender -> MQTT, until SIGTERM.

Beside the batcher, `AgentEvents` judges the rounds as they complete and runs the site's hooks
on what it finds, the broker link's state (debounced), a boot and the outbox's drop episodes;
its link events also start path traces (fieldmon.agent.trace.runner) of parent and internet
links, in subprocesses.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from fieldmon.agent import health
from fieldmon.agent.batcher import EnvelopeBatcher
from fieldmon.agent.capabilities import keep_capabilities_to_ourselves
from fieldmon.agent.events import AgentEvents, note_boot, read_boot_id
from fieldmon.agent.health import RunClocks
from fieldmon.agent.outbox import Outbox
from fieldmon.agent.probes.base import Probe, ProbeResources
from fieldmon.agent.probes.host import outbox_age_s
from fieldmon.agent.probes.icmp_socket import IcmpPinger
from fieldmon.agent.probes.registry import build_probes, setup_errors
from fieldmon.agent.scheduler import run_probe_forever
from fieldmon.agent.sender import Sender
from fieldmon.agent.snmp.client import SnmpClient
from fieldmon.agent.trace.runner import PathTracer
from fieldmon.agent.watch import BrokerWatch, Seen
from fieldmon.core.config.errors import ConfigError
from fieldmon.core.mqtt.failures import AGENT
from fieldmon.core.mqtt.link import MqttLink, new_client
from fieldmon.core.site.config import SiteConfig, load_site_config
from fieldmon.core.systemd import Health, Notifier, Watchdog, ended_tasks
from fieldmon.core.version import part_version
from fieldmon.core.wire import topics
from fieldmon.core.wire.codec import encode
from fieldmon.core.wire.models import FieldValue, Sample, StatusMessage
from fieldmon.firmware_hooks.hooks import EventName, HookRun, HookRunner

logger = logging.getLogger(__name__)
VERSION = part_version("fieldmon-agent")

# What building probes from a valid site file can still raise, as each kind declares it: a
# profile file that is missing or malformed, SNMPv3 privacy without the crypto backend, an
# unreadable secret file.
PROBE_SETUP_ERRORS = setup_errors()

# How long a clean shutdown waits for in-flight envelopes to be acknowledged.
SHUTDOWN_GRACE_S = 3.0
# How long a clean shutdown lets queued and running hooks finish before killing them.
HOOKS_GRACE_S = 5.0
# Bounds on the other steps of a clean stop, so that the agent is gone well within the unit's
# TimeoutStopSec (45 s) whatever hangs: the probes' tasks to end, the last outbox commit, the
# outbox to close (a disk that stopped answering), paho's thread (MqttLink.stop, 3 s).
PROBES_STOP_S = 3.0
FLUSH_TIMEOUT_S = 5.0
CLOSE_TIMEOUT_S = 5.0


def _status(config: SiteConfig, state: str, reason: str | None = None) -> bytes:
    return encode(
        StatusMessage(
            state=state,  # type: ignore[arg-type]
            site=config.site,
            agent=config.agent.id,
            at=time.time_ns(),
            version=VERSION,
            reason=reason,
        )
    )


def agent_event(config: SiteConfig, kind: str, message: str, **fields: FieldValue) -> Sample:
    """An `event` row: something the agent noticed that is not a periodic reading.

    Tags site, agent, kind | fields message (words for the NOC) and the kind's own values. The
    outbox classes it EVENT: it goes out before bulk samples and is dropped last.
    """
    return Sample(
        measurement="event",
        tags={"site": config.site, "agent": config.agent.id, "kind": kind},
        fields={"message": message, **fields},
        time=time.time_ns(),
    )


def _outbox_full_event(config: SiteConfig, outbox: Outbox) -> Sample:
    return agent_event(
        config,
        "outbox_dropping",
        f"the outbox reached its cap of {config.agent.outbox.max_mb:g} MB: "
        "dropping the oldest bulk samples until the uplink drains it",
        dropped_samples=outbox.dropped_samples,
        waiting_samples=outbox.waiting_samples,
    )


def _outbox_corrupt_event(config: SiteConfig, outbox: Outbox) -> Sample:
    return agent_event(
        config,
        "outbox_corrupt",
        f"the outbox file was corrupt; moved it to {outbox.moved_aside} and started a fresh queue",
        moved_to=str(outbox.moved_aside),
    )


def _connect_link(config: SiteConfig, loop: asyncio.AbstractEventLoop) -> MqttLink:
    client = new_client(config.agent.broker, client_id=config.agent.id)
    status_topic = topics.status_topic(config.site, config.agent.id)
    # The broker publishes this retained "offline" if we vanish without a clean disconnect.
    client.will_set(status_topic, _status(config, "offline", "connection lost"), qos=1, retain=True)
    link = MqttLink(client, config.agent.broker, loop, phrasing=AGENT)

    def birth(_session_present: bool) -> None:
        client.publish(status_topic, _status(config, "online"), qos=1, retain=True)

    link.on_connected.append(birth)
    return link


class ProbeSet:
    """The running probe tasks; replaced as a whole when SIGHUP brings a new config.

    `clocks` hears when each probe finishes a run: the watchdog's evidence of progress.
    """

    def __init__(
        self, sink: Callable[[list[Sample]], None], clocks: RunClocks | None = None
    ) -> None:
        self._sink = sink
        self.clocks = clocks if clocks is not None else RunClocks()
        self._tasks: list[asyncio.Task[None]] = []

    def start(self, probes: list[Probe]) -> None:
        self.clocks.watch(probes)
        self._tasks = [
            asyncio.create_task(
                run_probe_forever(probe, self._sink, finished=self.clocks.finished),
                name=f"probe:{probe.name}",
            )
            for probe in probes
        ]
        logger.info("probing", extra={"targets": [probe.name for probe in probes]})

    async def stop(self, grace: float = PROBES_STOP_S) -> list[str]:
        """Cancel every probe task and wait for them, at most `grace` seconds; returns the
        names of the tasks still running then (a probe that ignores cancellation), left behind.

        A task that swallowed its cancellation is cancelled once more halfway through.
        """
        tasks, self._tasks = self._tasks, []
        self.clocks.watch([])
        if not tasks:
            return []
        for task in tasks:
            task.cancel()
        _, pending = await asyncio.wait(tasks, timeout=grace / 2)
        for task in pending:
            task.cancel()
        if pending:
            _, pending = await asyncio.wait(pending, timeout=grace / 2)
        left = sorted(task.get_name() for task in pending)
        if left:
            logger.error("probe tasks did not stop; leaving them", extra={"tasks": left})
        return left


async def _serve(config_path: Path, config: SiteConfig, notifier: Notifier) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    reload = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    loop.add_signal_handler(signal.SIGHUP, reload.set)

    # One thread for every SQLite call: disk I/O never blocks the event loop.
    disk = ThreadPoolExecutor(max_workers=1, thread_name_prefix="outbox")
    outbox = await loop.run_in_executor(
        disk,
        lambda: Outbox(
            config.agent.outbox.path,
            site=config.site,
            agent=config.agent.id,
            max_bytes=config.agent.outbox.max_bytes,
        ),
    )
    link = _connect_link(config, loop)
    sender, batcher, events = _wire_events(config, outbox, link, disk)
    outbox_path = config.agent.outbox.path
    tracer = PathTracer(
        config, batcher.add, state_file=outbox_path.with_name(outbox_path.name + ".paths.json")
    )
    events.listeners.append(tracer.on_event)
    async with IcmpPinger() as pinger:
        probes = ProbeSet(events.sink)
        snmp = SnmpClient()
        resources = ProbeResources(
            pinger=pinger,
            snmp=snmp,
            outbox_depth=lambda: outbox.waiting_samples,
            outbox_dropped=lambda: outbox.dropped_samples,
            outbox_age_s=lambda: outbox_age_s(outbox.oldest_created_ns, time.time_ns()),
        )
        probes.start(build_probes(config, resources))
        broker_watch = asyncio.create_task(_watch_broker(config, link, events), name="broker-watch")
        background = [
            asyncio.create_task(batcher.run(), name="batcher"),
            asyncio.create_task(sender.run(), name="sender"),
            broker_watch,
        ]
        link.start()
        stopping = asyncio.Event()
        check = _health_check(
            probes, outbox, batcher, link, background=background, stopping=stopping
        )
        watchdog = asyncio.create_task(Watchdog(notifier, check).run(), name="watchdog")
        # Serving: the outbox is open and every probe scheduled; the broker may come later.
        notifier.ready(check().status)
        logger.info(
            "agent started",
            extra={"site": config.site, "agent": config.agent.id, "version": VERSION},
        )
        await _announce_boot(config, events)
        while not stop.is_set():
            waiters = [asyncio.create_task(stop.wait()), asyncio.create_task(reload.wait())]
            await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
            for waiter in waiters:
                waiter.cancel()
            if reload.is_set() and not stop.is_set():
                reload.clear()
                config = await _reloaded(config_path, config, probes, resources, events)
                tracer.reconfigure(config)
        logger.info("stopping: flushing the outbox")
        stopping.set()
        notifier.stopping("stopping: flushing the outbox")
        await probes.stop()
        broker_watch.cancel()  # no new event from here on
        await tracer.close()
        await _stop_hooks(events)  # their rows go into this last flush
        await _hand_over_last(config, batcher, sender, link, background)
        snmp.close()
    await _close_outbox(outbox, disk)
    watchdog.cancel()
    logger.info("agent stopped", extra={"unacknowledged": sender.in_flight()})


async def _hand_over_last(
    config: SiteConfig,
    batcher: EnvelopeBatcher,
    sender: Sender,
    link: MqttLink,
    background: list[asyncio.Task[None]],
) -> None:
    """Commit the last samples, send what the window allows, say `offline`, disconnect."""
    await _flush_last(batcher)
    await _drain(sender)
    sender.before_clean_disconnect()
    await _publish_offline(config, link)
    for task in background:
        task.cancel()
    # Their awaits are on futures that cancel at once (the disk thread's work runs on).
    await asyncio.wait(background, timeout=1.0)
    link.stop()


def _health_check(
    probes: ProbeSet,
    outbox: Outbox,
    batcher: EnvelopeBatcher,
    link: MqttLink,
    *,
    background: list[asyncio.Task[None]],
    stopping: asyncio.Event,
) -> Callable[[], Health]:
    """What the watchdog asks before each ping (fieldmon.agent.health says what counts)."""

    def check() -> Health:
        if stopping.is_set():  # the probes are stopped on purpose; the stop has its own bounds
            return Health(f"stopping: {outbox.waiting_samples} samples waiting in the outbox")
        status = health.status_line(
            len(probes.clocks), outbox.waiting_samples, link.connected.is_set(), link.last_error
        )
        writing = batcher.writing_since
        problem = health.judge(
            probes.clocks.overdue(),
            None if writing is None else time.monotonic() - writing,
            ended_tasks(background),
        )
        return Health(status, problem)

    return check


async def _flush_last(batcher: EnvelopeBatcher) -> None:
    """Commit what the probes measured last, within a bound."""
    try:
        await asyncio.wait_for(batcher.flush(), FLUSH_TIMEOUT_S)
    except TimeoutError:
        logger.error(
            "the last outbox commit did not finish in time - is the disk failing?",
            extra={"timeout_s": FLUSH_TIMEOUT_S},
        )


async def _publish_offline(config: SiteConfig, link: MqttLink) -> None:
    """The retained `offline` status of a clean stop (the broker then drops the last will)."""
    if not link.connected.is_set():
        return
    info = link.client.publish(
        topics.status_topic(config.site, config.agent.id),
        _status(config, "offline", "stopped"),
        qos=1,
        retain=True,
    )
    with contextlib.suppress(RuntimeError, ValueError):
        await asyncio.wait_for(asyncio.to_thread(info.wait_for_publish, 2.0), 2.5)


async def _close_outbox(outbox: Outbox, disk: ThreadPoolExecutor) -> None:
    """Close the outbox in its disk thread, within a bound."""
    try:
        await asyncio.wait_for(
            asyncio.get_running_loop().run_in_executor(disk, outbox.close), CLOSE_TIMEOUT_S
        )
    except TimeoutError:
        # The thread is still in SQLite; waiting for it would hold the stop as long as the disk.
        logger.error("the outbox did not close in time - is the disk failing?")
        disk.shutdown(wait=False)
    else:
        disk.shutdown(wait=True)


def _wire_events(
    config: SiteConfig, outbox: Outbox, link: MqttLink, disk: ThreadPoolExecutor
) -> tuple[Sender, EnvelopeBatcher, AgentEvents]:
    """The pipeline, and the events beside it: what the probes' samples go through (`sink`)."""
    hub: list[AgentEvents] = []  # made after the batcher it writes to

    def drop_started() -> None:
        for events in hub:
            events.emit(_outbox_dropping(config, outbox))

    sender, batcher = build_pipeline(config, outbox, link, disk, on_drop_start=drop_started)
    events = AgentEvents(config, batcher.add)
    events.runner = _hook_runner(config, events.hook_ran)
    hub.append(events)
    return sender, batcher, events


async def _stop_hooks(events: AgentEvents) -> None:
    """Let queued and running hooks finish for a moment, then kill what is left."""
    runner, events.runner = events.runner, None
    if runner is not None:
        await runner.close(grace=HOOKS_GRACE_S)


def _hook_runner(config: SiteConfig, on_run: Callable[[HookRun], None]) -> HookRunner | None:
    """The site's hook runner, or None when the site file has no `hooks`."""
    if config.hooks is None:
        return None
    return HookRunner(config.hooks.dir, timeout=config.hooks.timeout, on_run=on_run)


def _outbox_dropping(config: SiteConfig, outbox: Outbox) -> Seen:
    return Seen(
        EventName.OUTBOX_DROPPING,
        time.time_ns(),
        details={
            "dropped_samples": outbox.dropped_samples,
            "waiting_samples": outbox.waiting_samples,
            "max_mb": config.agent.outbox.max_mb,
        },
    )


async def _announce_boot(config: SiteConfig, events: AgentEvents) -> None:
    """`boot` when this is the agent's first start since the machine booted (boot id)."""
    path = config.agent.outbox.path
    seen_file = path.with_name(path.name + ".boot-id")
    boot_id = await asyncio.to_thread(read_boot_id)
    try:
        booted = await asyncio.to_thread(note_boot, seen_file, boot_id)
    except OSError as exc:
        logger.warning(
            "cannot record the boot id", extra={"file": str(seen_file), "error": str(exc)}
        )
        return
    if booted:
        uptime = round(time.clock_gettime(time.CLOCK_BOOTTIME), 1)
        events.emit(
            Seen(EventName.BOOT, time.time_ns(), details={"boot_id": boot_id, "uptime_s": uptime})
        )


async def _watch_broker(config: SiteConfig, link: MqttLink, events: AgentEvents) -> None:
    """broker_down / broker_up from the MQTT link's state, debounced (fieldmon.agent.watch)."""
    broker = f"{config.agent.broker.host}:{config.agent.broker.port}"
    watch = BrokerWatch(time.monotonic())
    outage_began = 0.0
    while True:
        await asyncio.sleep(1.0)
        now = time.monotonic()
        found = watch.observe(link.connected.is_set(), now)
        if found is EventName.BROKER_DOWN:
            outage_began = now - watch.held(now)
            details: dict[str, FieldValue | None] = {
                "broker": broker,
                "down_s": round(watch.held(now), 1),
                "error": link.last_error,
            }
        elif found is EventName.BROKER_UP:
            came_back = now - watch.held(now)
            details = {"broker": broker, "down_s": round(came_back - outage_began, 1)}
        else:
            continue
        events.emit(Seen(found, time.time_ns(), details=details))


def build_pipeline(
    config: SiteConfig,
    outbox: Outbox,
    link: MqttLink,
    disk: ThreadPoolExecutor,
    *,
    on_drop_start: Callable[[], None] | None = None,
) -> tuple[Sender, EnvelopeBatcher]:
    """The sender (fed acks from `link`) and the batcher that commits to the outbox;
    `on_drop_start` is told when the outbox starts dropping (the outbox_dropping event)."""
    sender = Sender(
        outbox,
        link,
        site=config.site,
        agent=config.agent.id,
        disk=disk,
        replay_rate=config.agent.outbox.replay_rate,
        fresh_window=config.agent.outbox.fresh_window,
    )
    ack_topic = topics.ack_topic(config.site, config.agent.id)
    ack_tasks: set[asyncio.Task[None]] = set()

    def on_message(message: object) -> None:
        if getattr(message, "topic", None) == ack_topic:
            task = asyncio.create_task(
                sender.handle_ack(message.payload, getattr(message, "properties", None))  # type: ignore[attr-defined]
            )
            ack_tasks.add(task)
            task.add_done_callback(ack_tasks.discard)

    link.on_message = on_message

    def committed() -> None:
        sender.notify()
        if outbox.take_drop_start():
            batcher.add([_outbox_full_event(config, outbox)])
            if on_drop_start is not None:
                on_drop_start()

    batcher = EnvelopeBatcher(
        outbox,
        disk,
        max_samples=config.agent.max_samples_per_envelope,
        linger=config.agent.linger,
        on_committed=committed,
    )
    if outbox.moved_aside is not None:
        batcher.add([_outbox_corrupt_event(config, outbox)])
    return sender, batcher


async def _drain(sender: Sender) -> None:
    """Give in-flight envelopes a moment to be acknowledged; what is left stays on disk."""
    deadline = time.monotonic() + SHUTDOWN_GRACE_S
    sender.notify()
    while sender.in_flight() and time.monotonic() < deadline:  # noqa: ASYNC110 - polls a count
        await asyncio.sleep(0.05)


async def _reloaded(
    path: Path,
    current: SiteConfig,
    probes: ProbeSet,
    resources: ProbeResources,
    events: AgentEvents,
) -> SiteConfig:
    """Apply a changed site file's probes; identity and broker changes need a restart."""
    try:
        fresh = await asyncio.to_thread(load_site_config, path)
        new_probes = build_probes(fresh, resources)
    except ConfigError as exc:
        logger.error("reload refused: the site file is invalid", extra={"errors": str(exc)})
        return current
    except PROBE_SETUP_ERRORS as exc:
        logger.error("reload refused: a probe cannot start", extra={"error": str(exc)})
        return current
    if (fresh.site, fresh.agent) != (current.site, current.agent):
        logger.warning("reload: site, agent id, broker and outbox changes need a restart")
    await probes.stop()
    events.reconfigure(fresh)
    await _reload_hooks(fresh, events)
    probes.start(new_probes)
    logger.info("reloaded the site file", extra={"file": str(path)})
    return fresh.model_copy(update={"site": current.site, "agent": current.agent})


async def _reload_hooks(config: SiteConfig, events: AgentEvents) -> None:
    """A reloaded `hooks` section: the runner follows it (queued events stay queued)."""
    runner = events.runner
    if config.hooks is None:
        events.runner = None
        if runner is not None:
            await runner.close(grace=HOOKS_GRACE_S)
    elif runner is None:
        events.runner = _hook_runner(config, events.hook_ran)
    else:
        runner.directory, runner.timeout = config.hooks.dir, config.hooks.timeout


def run_agent(config_path: Path) -> int:
    """Run the agent until SIGTERM; returns the process exit status."""
    # Before anything can start a child process: none may inherit CAP_NET_RAW, nor talk to
    # systemd for us.
    for problem in keep_capabilities_to_ourselves():
        logger.warning("child processes may inherit capabilities", extra={"problem": problem})
    notifier = Notifier.from_environment()
    try:
        config = load_site_config(config_path)
    except ConfigError as exc:
        logger.error("invalid site file", extra={"errors": [str(i) for i in exc.issues]})
        return 2
    try:
        asyncio.run(_serve(config_path, config, notifier))
    except PROBE_SETUP_ERRORS as exc:
        logger.error("a probe cannot start", extra={"error": str(exc)})
        return 2
    return 0
