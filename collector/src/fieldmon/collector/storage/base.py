"""The Writer interface every storage backend implements, and how write errors are classified."""

from __future__ import annotations

import json
import math
import time
from abc import ABC, abstractmethod
from collections.abc import Mapping
from email.utils import parsedate_to_datetime
from enum import StrEnum
from types import TracebackType

import aiohttp

from fieldmon.core.redact import redact_text

# Server messages can be long (a partial write quotes the line); keep logs and exceptions readable.
_MAX_DETAIL_CHARS = 1000


class RetryCause(StrEnum):
    """Why a retryable write failed; a fixed set, so it can label a metric."""

    THROTTLED = "throttled"  # 429
    SERVER = "server"  # 5xx and anything unexpected
    TIMEOUT = "timeout"
    UNREACHABLE = "unreachable"  # connection refused / reset, DNS
    AUTH = "auth"  # 401 / 403
    NOT_FOUND = "not_found"  # 404: database or bucket missing


class WriteError(Exception):
    """A batch was not written; `detail` says why in words, with the server's message."""

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class RetryableWriteError(WriteError):
    """Try the same batch again later: at `retry_after` seconds if the server said so."""

    def __init__(
        self,
        detail: str,
        retry_after: float | None = None,
        cause: RetryCause = RetryCause.SERVER,
        status: int | None = None,
    ) -> None:
        super().__init__(detail)
        self.retry_after = retry_after
        self.cause = cause
        self.status = status


class RejectedWriteError(WriteError):
    """The server refused the data itself (400 / 413 / 422): retrying cannot help, drop it.

    On InfluxDB 1.x a 400 "partial write" means the *other* points of the batch were written.
    """

    def __init__(self, detail: str, status: int) -> None:
        super().__init__(detail)
        self.status = status

    @property
    def partial(self) -> bool:
        """True when the server wrote the rest of the batch and dropped only the bad points."""
        return "partial write" in self.detail


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a Retry-After header: delta-seconds or an HTTP-date (RFC 9110)."""
    if value is None:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:
            return None
        seconds = when.timestamp() - (time.time() if now is None else now)
    if not math.isfinite(seconds):  # float() also reads "nan" and "inf"
        return None
    return max(0.0, seconds)


def server_message(body: bytes | str | None) -> str:
    """The error text of a response body: InfluxDB 1.x `{"error"}`, 2.x `{"message"}`, or text."""
    if not body:
        return ""
    text = body.decode("utf-8", "replace") if isinstance(body, bytes) else body
    try:
        document = json.loads(text)
    except ValueError:
        document = None
    if isinstance(document, dict):
        for key in ("error", "message"):
            if isinstance(document.get(key), str):
                text = document[key]
                break
    text = text.strip()
    if len(text) > _MAX_DETAIL_CHARS:
        text = text[:_MAX_DETAIL_CHARS] + "..."
    return text


# 401/403/404 are operator errors (a wrong token, a missing grant, a database nobody created),
# not bad data: every later batch would fail the same way, so dropping them would lose everything
# until someone notices. They are retried with backoff, and the cause names what to fix.
_RETRYABLE_4XX = {
    401: RetryCause.AUTH,
    403: RetryCause.AUTH,
    404: RetryCause.NOT_FOUND,
    408: RetryCause.TIMEOUT,
    429: RetryCause.THROTTLED,
}


def classify_status(
    status: int, body: bytes | str | None, headers: Mapping[str, str] | None, what: str
) -> WriteError | None:
    """The error for an HTTP response, or None for 2xx. `what` names the request for the detail."""
    if 200 <= status <= 299:
        return None
    detail = f"{what}: HTTP {status}: {server_message(body) or 'no message'}"
    if status == 413:
        detail += " (the batch is larger than the server accepts; lower batch_size)"
    retry_after = parse_retry_after((headers or {}).get("Retry-After"))
    if status in _RETRYABLE_4XX:
        return RetryableWriteError(detail, retry_after, _RETRYABLE_4XX[status], status)
    if 400 <= status <= 499:
        # 400 / 413 / 422 are bad data, and any other 4xx is the client's mistake with this
        # request (Telegraf's InfluxDB output agrees): the same bytes would fail forever and
        # block the queue behind them.
        return RejectedWriteError(detail, status)
    return RetryableWriteError(detail, retry_after, RetryCause.SERVER, status)


def transport_error(exc: BaseException, what: str) -> RetryableWriteError:
    """The error for a request that got no HTTP answer: timeout, refused, reset."""
    if isinstance(exc, TimeoutError):
        return RetryableWriteError(f"{what}: timed out", cause=RetryCause.TIMEOUT)
    # aiohttp's errors may quote the request URL, which may carry credentials.
    reason = redact_text(str(exc)) or type(exc).__name__
    return RetryableWriteError(f"{what}: {reason}", cause=RetryCause.UNREACHABLE)


# What a request can raise when the server is down, slow or drops the connection.
# (asyncio.TimeoutError is TimeoutError since Python 3.11, and TimeoutError is an OSError.)
TRANSPORT_ERRORS = (aiohttp.ClientError, OSError)


class Writer(ABC):
    """Writes line-protocol batches to one database. One instance per collector process.

    `prepare` is called once at start, `write` for each batch, `close` on shutdown. Every method
    raises a WriteError subclass, never a transport exception.
    """

    @abstractmethod
    async def prepare(self) -> None:
        """Get the target ready (create the database where the API allows); idempotent."""

    @abstractmethod
    async def write(self, body: bytes, points: int) -> None:
        """Write `body` (newline-separated lines holding `points` points) or raise WriteError.

        A body without a line (empty, or only whitespace) returns at once and sends nothing:
        InfluxDB 2.x would refuse it as bad data ("writing requires points").
        """

    @abstractmethod
    async def ping(self) -> None:
        """Return when the server answers; raise RetryableWriteError when it does not."""

    @abstractmethod
    async def close(self) -> None:
        """Release connections. The writer cannot be used afterwards."""

    async def __aenter__(self) -> Writer:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()
