"""Config of the InfluxDB backends: v1 `/write` or v2 via influxdb-client."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, HttpUrl

from fieldmon.core.config.types import Duration, SecretFile, StrictModel


class _InfluxCommon(StrictModel):
    url: HttpUrl
    timeout: Annotated[Duration, Field(gt=0)] = 10.0
    batch_size: Annotated[int, Field(ge=1, le=100_000)] = 5000  # points per HTTP request
    flush_interval: Annotated[Duration, Field(gt=0)] = 1.0  # longest a point waits to be sent


class InfluxV1Config(_InfluxCommon):
    """InfluxDB 1.x (and compatible servers) through the v1 `/write` endpoint."""

    api: Literal["v1"]
    database: Annotated[str, Field(min_length=1)]
    retention_policy: str | None = None
    username: str | None = None
    password_file: SecretFile | None = None
    # Send bodies of at least this many bytes gzip-compressed (None: never). Off by default: on
    # loopback gzip cost ~40 % of write throughput (5000-point batch: 61 ms plain, 88 ms gzip);
    # it shrinks line protocol ~5x, so turn it on when InfluxDB is across a link slower than
    # about 1 Gbit/s (e.g. 65536).
    gzip_min_bytes: Annotated[int, Field(ge=0)] | None = None


class InfluxV2Config(_InfluxCommon):
    """InfluxDB 2.x / 3.x / Cloud through influxdb-client's v2 write API."""

    api: Literal["v2"]
    org: Annotated[str, Field(min_length=1)]
    bucket: Annotated[str, Field(min_length=1)]
    token_file: SecretFile | None = None
    # gzip every write (influxdb-client's switch is all-or-nothing, at gzip's slow default level
    # 9: ~6x slower writes on loopback); for slow links to a remote InfluxDB only.
    gzip: bool = False


InfluxConfig = Annotated[InfluxV1Config | InfluxV2Config, Field(discriminator="api")]
