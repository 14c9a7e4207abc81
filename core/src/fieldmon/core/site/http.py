"""An HTTP(S) service: the URL staff use, what a good answer looks like, whom to trust for TLS."""

from __future__ import annotations

import re
from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import BeforeValidator, Field, field_validator, model_validator

from fieldmon.core.config.errors import FieldValueError
from fieldmon.core.site.service import (
    ReadableFile,
    ServiceConfig,
    host_name,
    ip_literal,
    is_ip_literal,
)

# RFC 9110 token characters: what a header name may hold.
_TOKEN_RE = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
# Set by the probe itself; a site file that sets them would break the request.
_RESERVED_HEADERS = frozenset({"connection", "content-length", "transfer-encoding"})


def _upper(value: object) -> object:
    return value.upper() if isinstance(value, str) else value


def _as_list(value: object) -> object:
    return [value] if isinstance(value, int) and not isinstance(value, bool) else value


def split_url(url: str) -> tuple[str, str, int, str]:
    """(scheme, host, port, path with query) of an http(s) URL; ValueError when it is not one."""
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError as exc:
        raise ValueError(f"{url!r} is not a URL: {exc}") from exc
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        raise ValueError(f"{url!r} is not an http:// or https:// URL")
    if not parts.hostname:
        raise ValueError(f"{url!r} has no host")
    if parts.username is not None or parts.password is not None:
        raise ValueError(
            f"{url!r} holds a user name or password: the site file keeps no secrets inline"
        )
    host = parts.hostname
    host = ip_literal(host) if is_ip_literal(host) else host_name(host)
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    if any(ord(c) <= 32 or ord(c) == 127 for c in path):
        raise ValueError(f"{url!r} has spaces or control characters in its path: encode them")
    return scheme, host, port or (443 if scheme == "https" else 80), path


class HttpServiceConfig(ServiceConfig):
    """Requests `url` (HTTP/1.1), follows redirects, and judges the final answer."""

    kind: Literal["http"]
    url: str  # http:// or https:// URL, e.g. https://his.hospital.example/health
    method: Annotated[
        Literal["GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH"],
        BeforeValidator(_upper),
    ] = "GET"
    # Status codes that count as up, one or a list; unset: any 2xx.
    expect_status: (
        Annotated[list[Annotated[int, Field(ge=100, le=599)]], BeforeValidator(_as_list)] | None
    ) = None
    body_contains: Annotated[str, Field(min_length=1)] | None = None  # text the body must hold
    body_regex: Annotated[str, Field(min_length=1)] | None = None  # a regex the body must match
    headers: dict[str, str] = Field(default_factory=dict)  # extra request headers
    # CA bundle (PEM) for https, also for https URLs a redirect leads to; unset: the system's
    # store.
    ca_file: ReadableFile | None = None
    # Redirects followed; 0 reports a redirect's status instead, as does a redirect status
    # listed in expect_status.
    max_redirects: Annotated[int, Field(ge=0, le=30)] = 10
    # Resolve the URL's host by asking this DNS server (an IP literal) instead of the
    # system's resolver; the dns_ms phase is then that query.
    resolver: str | None = None
    # Fewer days left on the certificate than this: WARN in `check`, CertificateExpiring.
    cert_warn_days: Annotated[int, Field(ge=0, le=3650)] = 14

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        split_url(value)
        return value.strip()

    @field_validator("body_regex")
    @classmethod
    def _regex_compiles(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                re.compile(value)
            except re.error as exc:
                raise ValueError(f"{value!r} is not a valid regular expression: {exc}") from exc
        return value

    @field_validator("headers")
    @classmethod
    def _header_lines(cls, value: dict[str, str]) -> dict[str, str]:
        for name, text in value.items():
            if not _TOKEN_RE.match(name):
                raise FieldValueError((name,), f"{name!r} is not a valid header name")
            if name.lower() in _RESERVED_HEADERS:
                raise FieldValueError((name,), f"{name} is set by the probe itself")
            if not isinstance(text, str) or any(c in text for c in "\r\n\0"):
                raise FieldValueError((name,), "a header value must be one line of text")
        return value

    @field_validator("resolver")
    @classmethod
    def _resolver_address(cls, value: str | None) -> str | None:
        return None if value is None else ip_literal(value)

    @model_validator(mode="after")
    def _consistent(self) -> HttpServiceConfig:
        if self.method == "HEAD" and (self.body_contains or self.body_regex):
            where = "body_contains" if self.body_contains else "body_regex"
            raise FieldValueError((where,), "a HEAD request gets no body to match")
        return self

    @property
    def parts(self) -> tuple[str, str, int, str]:
        """(scheme, host, port, path with query) of `url`."""
        return split_url(self.url)
