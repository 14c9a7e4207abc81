"""One aiohttp POST shared by the HTTP notifiers: every failure becomes a typed NotifyError."""

from __future__ import annotations

import aiohttp

from fieldmon.collector.notify.base import PermanentNotifyError, RetryableNotifyError
from fieldmon.core.redact import redact_text, redact_url

_DETAIL_CHARS = 300


def _retry_after(value: str | None) -> float | None:
    # Only the delta-seconds form; an HTTP date is rare from the receivers we talk to.
    try:
        return max(0.0, float(value)) if value else None
    except ValueError:
        return None


async def post(
    session: aiohttp.ClientSession,
    notifier: str,
    url: str,
    body: bytes,
    *,
    headers: dict[str, str],
    seconds: float,
) -> None:
    """POST `body`; 2xx returns, 5xx/429/network/timeout is retryable, other 4xx is permanent.

    Errors name the URL redacted (no userinfo, token-like path segments or query): webhook URLs
    often carry their token, and these errors are logged.
    """
    shown = redact_url(url)
    try:
        async with session.post(
            url, data=body, headers=headers, timeout=aiohttp.ClientTimeout(total=seconds)
        ) as reply:
            if reply.status < 300:
                return
            detail = (await reply.text(errors="replace"))[:_DETAIL_CHARS].strip()
            message = f"POST {shown} answered {reply.status}: {redact_text(detail)}"
            if reply.status >= 500 or reply.status in (408, 429):
                raise RetryableNotifyError(
                    notifier, message, retry_after=_retry_after(reply.headers.get("Retry-After"))
                )
            raise PermanentNotifyError(notifier, message)
    except TimeoutError as exc:
        raise RetryableNotifyError(
            notifier, f"POST {shown}: no answer within {seconds:g} s"
        ) from exc
    except aiohttp.ClientError as exc:
        raise RetryableNotifyError(notifier, f"POST {shown}: {redact_text(str(exc))}") from exc
