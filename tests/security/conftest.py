"""Fixtures of the security suite (the deployment itself is in security_support.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from fieldmon.lab.process import Daemon, script, start, wait_subscribed
from fieldmon.lab.servers import InfluxdServer, free_port

from .security_support import (
    SHIPPED_CONF,
    Broker,
    Deployment,
    make_deployment,
    start_broker,
)


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Deployment:
    """Site files, the collector's secret, generated broker files and a PKI, once per module."""
    return make_deployment(tmp_path_factory.mktemp("noc"))


@pytest.fixture
def broker(deployment: Deployment, tmp_path: Path) -> Iterator[Broker]:
    """Mosquitto from the shipped conf, fresh for each test."""
    running = start_broker(deployment, tmp_path / "mosquitto", SHIPPED_CONF.read_text())
    try:
        yield running
    finally:
        for client in running.clients:
            client.close()
        running.server.stop()


@pytest.fixture
def collector(
    broker: Broker, influxd: InfluxdServer, influx_db: str, tmp_path: Path
) -> Iterator[tuple[Daemon, int]]:
    """The real collector on its listener, subscribed; yields it and its HTTP port."""
    http_port = free_port()
    deployment = broker.deployment
    config = deployment.collector_config(
        broker.collector_port, influxd, influx_db, http_port, tmp_path / "collector-data"
    )
    daemon = start(
        [script("fieldmon-collector"), "run", "--config", config],
        tmp_path / "collector.log",
        cwd=deployment.directory,
    )
    try:
        wait_subscribed(http_port, daemons=daemon)
        yield daemon, http_port
    finally:
        daemon.stop()
