"""The collector under systemd: READY once the broker answered its subscriptions, STATUS,
STOPPING, and a watchdog fed while its event loop runs and ingest is idle or moving."""

from __future__ import annotations

import os
import re
import signal
from pathlib import Path

import pytest

from fieldmon.lab.process import Daemon, script, start, wait_for
from fieldmon.lab.servers import MosquittoServer, free_port
from fieldmon.lab.systemd import NotifyListener, notify_command, stall_hook, stall_marks

WATCHDOG_S = 1.5  # pings every 0.5 s
STALL_S = 4.0


def _collector(
    tmp: Path, broker_port: int, listener: NotifyListener, env: dict[str, str] | None = None
) -> Daemon:
    (tmp / "site_configs").mkdir(exist_ok=True)
    config = tmp / "collector.yaml"
    # The database is down throughout: an idle collector has nothing to write, and a database
    # that does not answer is no stall.
    config.write_text(
        f"broker: {{host: 127.0.0.1, port: {broker_port}, client_id: systemd-collector}}\n"
        f'influxdb: {{api: v1, url: "http://127.0.0.1:{free_port()}", database: fieldmon}}\n'
        f"site_configs: ./site_configs\nhttp: {{listen: '127.0.0.1:{free_port()}'}}\n"
        "roles: [ingest, alerts]\ndata_dir: ./data\n",
        encoding="utf-8",
    )
    command = notify_command([script("fieldmon-collector"), "run", "--config", config])
    environment = {**os.environ, **listener.environment(watchdog_s=WATCHDOG_S), **(env or {})}
    return start(command, tmp / "collector.log", env=environment)


@pytest.mark.integration
def test_ready_once_subscribed_fed_while_idle_and_not_while_the_loop_is_stalled(
    tmp_path: Path, mosquitto: MosquittoServer
) -> None:
    assert mosquitto.port is not None
    listener = NotifyListener()
    hook = tmp_path / "hook"
    collector = _collector(tmp_path, mosquitto.port, listener, stall_hook(hook, STALL_S))
    try:
        [ready] = wait_for(
            lambda: listener.with_field("READY", "1"), "READY=1", 30, daemons=collector
        )
        # Sent once the broker granted every subscription (samples, status, events), not before.
        assert re.match(r"subscribed to (\d+) of \1 topics;", ready.fields["STATUS"]), ready.fields
        # No agent sends anything: idle is healthy, the watchdog is fed.
        wait_for(
            lambda: len([at for at in listener.pings() if at > ready.at]) >= 5,
            "pings while idle",
            10,
            daemons=collector,
        )

        collector.send_signal(signal.SIGUSR1)  # the hook blocks the event loop's thread
        [begin] = wait_for(lambda: stall_marks(hook)["begin"], "the stall to begin", 5)
        [end] = wait_for(lambda: stall_marks(hook)["end"], "the stall to end", STALL_S + 5)
        assert collector.running(), collector.tail()
        wait_for(lambda: max(listener.pings()) > end, "pings after the stall", 5)
        pings = listener.pings()
        during = [at for at in pings if begin + 0.3 < at < end]
        assert during == [], f"pinged while the loop was blocked: {during}"
        before = max(at for at in pings if at <= begin + 0.3)
        assert min(at for at in pings if at > end) - before >= STALL_S - 0.5

        assert collector.stop() == 0, collector.tail()
        [stopping] = listener.with_field("STOPPING", "1")
        assert stopping.fields["STATUS"] == "stopping: writing what is pending"
    finally:
        collector.stop()
        listener.close()


def test_no_ready_while_the_broker_does_not_answer_and_the_status_says_why(
    tmp_path: Path,
) -> None:
    listener = NotifyListener()
    collector = _collector(tmp_path, free_port(), listener)  # nothing listens there
    try:
        wait_for(
            lambda: [
                n
                for n in listener.with_field("STATUS")
                if "broker not connected (cannot connect to the broker: nothing listens on"
                in n.fields["STATUS"]
            ],
            "a STATUS naming the broker",
            30,
            daemons=collector,
        )
        # Waiting for the broker is no stall: the watchdog is fed meanwhile.
        wait_for(lambda: len(listener.pings()) >= 3, "pings", 5, daemons=collector)
        assert listener.with_field("READY") == []
        assert collector.stop() == 0, collector.tail()
    finally:
        collector.stop()
        listener.close()
