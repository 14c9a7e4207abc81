"""Writer for the InfluxDB v2 write API (2.x, 3.x, Cloud, 1.8+) on influxdb-client's async API."""

from __future__ import annotations

from influxdb_client.client.influxdb_client_async import InfluxDBClientAsync
from influxdb_client.client.write_api_async import WriteApiAsync
from influxdb_client.domain.write_precision import WritePrecision
from influxdb_client.rest import ApiException
from influxdb_client.service.ping_service import PingService

from fieldmon.collector.storage.base import (
    TRANSPORT_ERRORS,
    RetryableWriteError,
    WriteError,
    Writer,
    classify_status,
    transport_error,
)
from fieldmon.collector.storage.config import InfluxV2Config
from fieldmon.core.config.types import read_secret
from fieldmon.core.redact import redact_text, redact_url


class InfluxV2Writer(Writer):
    """POST /api/v2/write?org=&bucket=&precision=ns with `Authorization: Token ...`."""

    def __init__(self, config: InfluxV2Config) -> None:
        self._config = config
        self._url = str(config.url).rstrip("/")
        # For messages, which are logged: the URL may carry user:password@ or a token.
        self._shown_url = redact_url(self._url)
        # The secret is read once here, at start-up, not from the event loop on every request.
        self._token = read_secret(config.token_file) if config.token_file else None
        self._client: InfluxDBClientAsync | None = None
        self._write_api: WriteApiAsync | None = None

    def _api(self) -> tuple[InfluxDBClientAsync, WriteApiAsync]:
        # Created on first use: the async client insists on a running event loop.
        if self._client is None or self._write_api is None:
            self._client = InfluxDBClientAsync(
                url=self._url,
                token=self._token or "",  # empty: no Authorization header
                org=self._config.org,
                timeout=int(self._config.timeout * 1000),
                enable_gzip=self._config.gzip,
            )
            self._write_api = self._client.write_api()
        return self._client, self._write_api

    async def prepare(self) -> None:
        """Nothing to create: making a bucket needs an all-access token the collector should not
        hold. A missing bucket shows up as a 404 on write (retryable, cause `not_found`)."""

    async def write(self, body: bytes, points: int) -> None:
        """POST one batch; raises RetryableWriteError or RejectedWriteError."""
        if not body.strip():
            return  # no points: nothing to send (see Writer.write)
        what = f"writing {points} points to bucket {self._config.bucket!r} at {self._shown_url}"
        _, write_api = self._api()
        try:
            # The result is False for a 2xx other than 201/204; any 2xx means the server took it.
            await write_api.write(
                bucket=self._config.bucket,
                org=self._config.org,
                record=body,
                write_precision=WritePrecision.NS,  # type: ignore[arg-type]  # a str constant
            )
        except ApiException as exc:
            raise _http_error(exc, what) from exc
        except TRANSPORT_ERRORS as exc:
            raise transport_error(exc, what) from exc

    async def ping(self) -> None:
        """GET /ping must answer 2xx."""
        what = f"pinging {self._shown_url}"
        client, _ = self._api()
        try:
            # Not client.ping(): it swallows the reason and returns False.
            await PingService(client.api_client).get_ping_async()  # type: ignore[no-untyped-call]
        except ApiException as exc:
            error = _http_error(exc, what)
            raise RetryableWriteError(error.detail, status=exc.status) from exc
        except TRANSPORT_ERRORS as exc:
            raise transport_error(exc, what) from exc

    async def close(self) -> None:
        if self._client is not None:
            await self._client.close()  # type: ignore[no-untyped-call]
            self._client = None
            self._write_api = None


def _http_error(exc: ApiException, what: str) -> WriteError:
    status = int(exc.status or 0)
    error = classify_status(status, exc.body, exc.headers, what)
    if error is None:  # a 2xx raised as an exception: nothing in influxdb-client does that today
        return RetryableWriteError(
            f"{what}: unexpected answer {redact_text(str(exc))}", status=status
        )
    return error
