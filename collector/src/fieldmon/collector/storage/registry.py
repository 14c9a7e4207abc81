"""Which Writer serves which `influxdb.api` value: one line per backend."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fieldmon.collector.storage.base import Writer
from fieldmon.collector.storage.config import InfluxV1Config, InfluxV2Config
from fieldmon.collector.storage.influx_v1 import InfluxV1Writer


def _influx_v2_writer(config: InfluxV2Config) -> Writer:
    # influxdb-client (and its dependencies) cost about 15 MB and a second of start-up on a
    # small machine: loaded only by collectors that write to InfluxDB 2.x/3.x.
    from fieldmon.collector.storage.influx_v2 import InfluxV2Writer

    return InfluxV2Writer(config)


WRITERS: dict[str, Callable[[Any], Writer]] = {
    "v1": InfluxV1Writer,
    "v2": _influx_v2_writer,
}


def make_writer(config: InfluxV1Config | InfluxV2Config) -> Writer:
    """The writer for `config.api`, not yet connected (reads its secret file now)."""
    try:
        factory = WRITERS[config.api]
    except KeyError:
        raise ValueError(
            f"no storage writer for api {config.api!r}; known: {', '.join(sorted(WRITERS))}"
        ) from None
    return factory(config)
