"""Writer for InfluxDB 1.x through the v1 HTTP API: POST /write, and CREATE DATABASE on start."""

from __future__ import annotations

import asyncio
import base64
import gzip
import json
import logging

import aiohttp

from fieldmon.collector.storage.base import (
    TRANSPORT_ERRORS,
    RetryableWriteError,
    Writer,
    classify_status,
    server_message,
    transport_error,
)
from fieldmon.collector.storage.config import InfluxV1Config
from fieldmon.core.config.types import read_secret
from fieldmon.core.redact import redact_url

log = logging.getLogger(__name__)

# gzip level 1: line protocol shrinks ~5x (level 6: ~7x) for half the CPU time of level 6.
_GZIP_LEVEL = 1
# Compressing bigger bodies than this in the event loop would stall it for milliseconds.
_GZIP_IN_THREAD_BYTES = 256 * 1024


class InfluxV1Writer(Writer):
    """POST {url}/write?db=&rp=&precision=ns with basic auth; gzip above `gzip_min_bytes`."""

    def __init__(self, config: InfluxV1Config) -> None:
        self._config = config
        self._base_url = str(config.url).rstrip("/")
        # For messages, which are logged: the URL may carry user:password@ or a token.
        self._shown_url = redact_url(self._base_url)
        # The secret is read once here, at start-up, not from the event loop on every request.
        password = read_secret(config.password_file) if config.password_file else None
        self._headers: dict[str, str] = {}
        if config.username is not None:
            # Built by hand: aiohttp 3.14 deprecates BasicAuth, and older ones lack its successor.
            credentials = f"{config.username}:{password or ''}".encode()
            self._headers["Authorization"] = "Basic " + base64.b64encode(credentials).decode()
        self._write_params = {"db": config.database, "precision": "ns"}
        if config.retention_policy:
            self._write_params["rp"] = config.retention_policy
        self._timeout = aiohttp.ClientTimeout(total=config.timeout)
        self._session: aiohttp.ClientSession | None = None

    def _client(self) -> aiohttp.ClientSession:
        # Created on first use: an aiohttp session belongs to the running event loop.
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(headers=self._headers, timeout=self._timeout)
        return self._session

    async def prepare(self) -> None:
        """CREATE DATABASE (idempotent in 1.x); without admin rights, assume it exists."""
        what = f"creating database {self._config.database!r} at {self._shown_url}"
        query = f'CREATE DATABASE "{_quote_identifier(self._config.database)}"'
        try:
            async with self._client().post(
                f"{self._base_url}/query", data={"q": query}
            ) as response:
                body = await response.read()
                status, headers = response.status, response.headers
        except TRANSPORT_ERRORS as exc:
            raise transport_error(exc, what) from exc
        if status == 403:
            # A write-only user may not create databases; an administrator made it, or the first
            # write says "database not found".
            log.warning(
                "cannot create the database; assuming it exists",
                extra={"database": self._config.database, "detail": server_message(body)},
            )
            return
        error = classify_status(status, body, headers, what)
        if error is not None:
            raise error
        _raise_statement_error(body, what)

    async def write(self, body: bytes, points: int) -> None:
        """POST one batch; raises RetryableWriteError or RejectedWriteError."""
        if not body.strip():
            return  # no points: nothing to send (see Writer.write)
        what = f"writing {points} points to {self._config.database!r} at {self._shown_url}"
        headers = {"Content-Type": "text/plain; charset=utf-8"}
        threshold = self._config.gzip_min_bytes
        if threshold is not None and len(body) >= threshold:
            body = await _gzip(body)
            headers["Content-Encoding"] = "gzip"
        try:
            async with self._client().post(
                f"{self._base_url}/write", params=self._write_params, data=body, headers=headers
            ) as response:
                reply = await response.read()
                status, reply_headers = response.status, response.headers
        except TRANSPORT_ERRORS as exc:
            raise transport_error(exc, what) from exc
        error = classify_status(status, reply, reply_headers, what)
        if error is not None:
            raise error

    async def ping(self) -> None:
        """GET /ping must answer 204."""
        what = f"pinging {self._shown_url}"
        try:
            async with self._client().get(f"{self._base_url}/ping") as response:
                body = await response.read()
                status, headers = response.status, response.headers
        except TRANSPORT_ERRORS as exc:
            raise transport_error(exc, what) from exc
        error = classify_status(status, body, headers, what)
        if error is not None:
            raise RetryableWriteError(error.detail, status=status) from error

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


def _quote_identifier(name: str) -> str:
    return name.replace("\\", "\\\\").replace('"', '\\"')


async def _gzip(body: bytes) -> bytes:
    if len(body) >= _GZIP_IN_THREAD_BYTES:
        # zlib releases the GIL, so a thread keeps the event loop free while it compresses.
        return await asyncio.to_thread(gzip.compress, body, _GZIP_LEVEL)
    return gzip.compress(body, _GZIP_LEVEL)


def _raise_statement_error(body: bytes, what: str) -> None:
    """/query answers 200 even when a statement fails; the error is inside `results`."""
    try:
        document = json.loads(body)
    except ValueError:
        return
    for result in document.get("results", []) if isinstance(document, dict) else []:
        if isinstance(result, dict) and result.get("error"):
            raise RetryableWriteError(f"{what}: {result['error']}")
