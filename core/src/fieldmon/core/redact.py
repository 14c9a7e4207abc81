"""Keep secrets out of logs: URLs lose their userinfo, tokens and query; known secrets vanish.

Webhook URLs often carry their token in the path (`/services/T0/B0/XXXX`) or the query
(`?token=`), and an InfluxDB or Alertmanager URL may carry `user:password@`. Everything the
daemons log, and everything /healthz shows, passes through here (`fieldmon.core.logsetup` applies
`redact_text` to every log record as a last line of defence; the code redacts at the source too).
"""

from __future__ import annotations

import re
import urllib.parse

MASK = "***"
# A URL inside free text: scheme://, then anything up to whitespace or a quote.
_URL_IN_TEXT = re.compile(r"""\b[A-Za-z][A-Za-z0-9+.-]*://[^\s'"<>`]+""")
# Punctuation that ends a sentence rather than the URL ("POST http://x/hook: timed out").
_TRAILING = ".,;:!?)]}"
# A path segment kept as it is: a plain word (hooks, api, alerts, index.html), a version (v2) or
# a short number (a port-like id). Anything else (mixed letters and digits, long, encoded) may be
# a token and is masked.
_PLAIN_SEGMENT = re.compile(r"[A-Za-z]{1,40}(?:[-_.][A-Za-z]{1,40}){0,4}|v\d{1,2}|\d{1,6}|")
# Secret values read by this process (config.secrets.read_secret registers them). Shorter ones
# would mask ordinary words in log lines.
MIN_SECRET_LENGTH = 4
_known_secrets: set[str] = set()


def register_secret(value: str) -> None:
    """Mask `value` wherever it would appear in a log line from now on."""
    if len(value) >= MIN_SECRET_LENGTH:
        _known_secrets.add(value)


def redact_url(url: str) -> str:
    """`url` without userinfo, query, fragment or token-like path segments.

    `https://user:pw@hooks.example.org/services/T0AB12/B0CD34/XyZ123abc?x=1` becomes
    `https://***@hooks.example.org/services/***/***/***?***`: the host and the shape of the path
    stay, so a log still says where a request went.
    """
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError:  # e.g. an unclosed IPv6 bracket
        return f"<unparsable URL {MASK}>"
    host = parts.netloc.rpartition("@")[2]
    netloc = f"{MASK}@{host}" if "@" in parts.netloc else host
    segments = [s if _PLAIN_SEGMENT.fullmatch(s) else MASK for s in parts.path.split("/")]
    text = f"{parts.scheme}://{netloc}" + "/".join(segments)
    if parts.query:
        text += f"?{MASK}"
    if parts.fragment:
        text += f"#{MASK}"
    return text


def _replace_url(match: re.Match[str], replacement: str | None) -> str:
    url = match.group(0)
    stripped = url.rstrip(_TRAILING)
    tail = url[len(stripped) :]
    return (redact_url(stripped) if replacement is None else replacement) + tail


def redact_text(text: str) -> str:
    """`text` with every URL redacted (`redact_url`) and every registered secret masked."""
    if "://" in text:
        text = _URL_IN_TEXT.sub(lambda match: _replace_url(match, None), text)
    for secret in _known_secrets:
        if secret in text:
            text = text.replace(secret, MASK)
    return text


def strip_urls(text: str, replacement: str = "the server") -> str:
    """`text` with every URL replaced by words: for /healthz, which names no address at all."""
    if "://" in text:
        text = _URL_IN_TEXT.sub(lambda match: _replace_url(match, replacement), text)
    for secret in _known_secrets:
        if secret in text:
            text = text.replace(secret, MASK)
    return text
