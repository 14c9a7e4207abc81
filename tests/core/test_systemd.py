"""sd_notify without a library: the datagram, the environment systemd sets, and a watchdog that
pings only while the daemon's health check finds progress."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from fieldmon.core.systemd import Health, Notifier, Watchdog, ended_tasks, watchdog_interval


@pytest.fixture
def notify_socket() -> Iterator[tuple[str, socket.socket]]:
    """A datagram socket on a filesystem path, as systemd's /run/systemd/notify is."""
    # A short directory: a socket path must fit in 108 bytes, pytest's tmp_path may not.
    with tempfile.TemporaryDirectory(prefix="fm-") as directory:
        path = str(Path(directory) / "notify")
        server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        server.bind(path)
        server.settimeout(2)
        try:
            yield path, server
        finally:
            server.close()


def _lines(server: socket.socket) -> list[str]:
    return server.recv(4096).decode().split("\n")


def test_notifications_reach_the_socket_and_the_environment_is_cleared(
    notify_socket: tuple[str, socket.socket],
) -> None:
    path, server = notify_socket
    environ = {"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "30000000", "PATH": "/usr/bin"}
    notifier = Notifier.from_environment(environ)
    # Children the daemon starts must not talk to systemd for it.
    assert environ == {"PATH": "/usr/bin"}
    assert notifier.enabled
    assert notifier.watchdog == 30.0
    assert notifier.ready("probing 3 targets")
    assert _lines(server) == ["READY=1", "STATUS=probing 3 targets"]
    assert notifier.stopping("stopping: one line\nnot two")
    assert _lines(server) == ["STOPPING=1", "STATUS=stopping: one line not two"]
    notifier.close()


def test_an_abstract_socket_address_starts_with_at() -> None:
    name = f"fm-test-{os.getpid()}"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    server.bind("\0" + name)
    server.settimeout(2)
    try:
        notifier = Notifier.from_environment({"NOTIFY_SOCKET": "@" + name})
        assert notifier.status("hello")
        assert _lines(server) == ["STATUS=hello"]
    finally:
        server.close()


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        ({"WATCHDOG_USEC": "5000000"}, 5.0),
        ({"WATCHDOG_USEC": "5000000", "WATCHDOG_PID": str(os.getpid())}, 5.0),
        ({"WATCHDOG_USEC": "5000000", "WATCHDOG_PID": "1"}, None),  # for another process
        ({"WATCHDOG_USEC": "5000000", "WATCHDOG_PID": "x"}, None),
        ({"WATCHDOG_USEC": "0"}, None),
        ({"WATCHDOG_USEC": "soon"}, None),
        ({}, None),
    ],
)
def test_the_watchdog_interval_is_for_this_process_only(
    environ: dict[str, str], expected: float | None
) -> None:
    assert watchdog_interval(environ) == expected


def test_outside_systemd_nothing_is_sent_and_nothing_runs() -> None:
    notifier = Notifier.from_environment({"WATCHDOG_USEC": "1000000"})
    assert not notifier.enabled
    assert notifier.watchdog is None  # no socket, no watchdog
    assert not notifier.ready("x")
    watchdog = Watchdog(notifier, lambda: Health("x"))
    asyncio.run(asyncio.wait_for(watchdog.run(), 1))  # returns at once
    assert watchdog.pings == 0


def test_a_missing_socket_is_logged_once_and_never_raises(
    caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    notifier = Notifier.from_environment({"NOTIFY_SOCKET": str(tmp_path / "gone")})
    with caplog.at_level(logging.WARNING, logger="fieldmon.core.systemd"):
        sent = [notifier.status("x") for _ in range(3)]
    assert sent == [False, False, False]
    assert [r.getMessage() for r in caplog.records] == ["cannot notify systemd"]


def test_the_watchdog_pings_while_healthy_and_says_why_when_stalled(
    notify_socket: tuple[str, socket.socket], caplog: pytest.LogCaptureFixture
) -> None:
    path, server = notify_socket
    notifier = Notifier.from_environment({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "3000000"})
    answers = iter(
        [
            Health("probing 3 targets"),
            Health("probing 3 targets", "no finished probe run lately: ap-1 (95 s)"),
            Health("probing 3 targets", "no finished probe run lately: ap-1 (96 s)"),
            Health("probing 3 targets"),
        ]
    )
    watchdog = Watchdog(notifier, lambda: next(answers))
    assert watchdog.period == 1.0  # a third of WatchdogSec
    with caplog.at_level(logging.WARNING, logger="fieldmon.core.systemd"):
        sent = []
        for _ in range(4):
            watchdog.tick()
            sent.append(_lines(server))
    assert sent == [
        ["WATCHDOG=1", "STATUS=probing 3 targets"],
        ["STATUS=stalled: no finished probe run lately: ap-1 (95 s)"],
        ["STATUS=stalled: no finished probe run lately: ap-1 (96 s)"],
        ["WATCHDOG=1", "STATUS=probing 3 targets"],
    ]
    assert watchdog.pings == 2
    assert [(r.levelname, r.getMessage()) for r in caplog.records] == [
        (
            "ERROR",
            "stalled: no finished probe run lately: ap-1 (95 s); not feeding the watchdog",
        ),
        ("ERROR", "stalled: no finished probe run lately: ap-1 (96 s); not feeding the watchdog"),
        ("WARNING", "progress again: feeding the watchdog"),
    ]


def test_without_a_watchdog_only_the_status_is_refreshed(
    notify_socket: tuple[str, socket.socket],
) -> None:
    path, server = notify_socket
    watchdog = Watchdog(Notifier.from_environment({"NOTIFY_SOCKET": path}), lambda: Health("ok"))
    assert watchdog.period == 10.0
    watchdog.tick()
    assert _lines(server) == ["STATUS=ok"]
    assert watchdog.pings == 0


def test_ended_tasks_are_named_with_why() -> None:
    async def scenario() -> list[str]:
        async def fail() -> None:
            raise RuntimeError("disk gone")

        async def forever() -> None:
            await asyncio.sleep(3600)

        async def done() -> None:
            return

        tasks = [
            asyncio.create_task(fail(), name="sender"),
            asyncio.create_task(forever(), name="batcher"),
            asyncio.create_task(done(), name="ingest"),
        ]
        await asyncio.sleep(0.01)
        found = ended_tasks(tasks)
        tasks[1].cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        return found

    assert asyncio.run(scenario()) == [
        "the sender task ended (RuntimeError: disk gone)",
        "the ingest task ended (returned)",
    ]
