"""HTTP(S) services: does the application staff use answer, correctly and in good time?

Our own HTTP/1.1 client on the service probes' connections (fieldmon.agent.probes.netconn:
the socket's own calls on the event loop), so each phase is measured where it happens and the
agent loads no HTTP library: resolve the URL's host (the system's resolver, or `resolver`
through fieldmon.agent.probes.dnsclient), connect (a bound socket, as links use), TLS
handshake (certificate checked, its days left kept), send the request, wait for the first byte,
read the whole answer (Content-Length, chunked, or to the close; the first MiB kept for the
body match). Redirects are followed up to `max_redirects`, each over a new connection.

Phases are the end of each phase in milliseconds since the final request started, as curl's
`-w` `time_namelookup`, `time_connect`, `time_appconnect`, `time_starttransfer` give them, so
dns_ms <= connect_ms <= tls_ms <= ttfb_ms <= duration_ms. A phase's own length is the difference
to the one before, as blackbox_exporter's `probe_http_duration_seconds{phase}` reports it
(resolve, connect, tls, processing = ttfb - tls, transfer = total - ttfb).

Emits one `service` row per run, timestamped at the run's start (ns since the epoch):
- tags: site, agent, target (the service's name), kind (`http`)
- fields: up (bool), duration_ms (float, the whole run including redirects, up to its failure
  if it failed), dns_ms, connect_ms, tls_ms (https only), ttfb_ms (floats, phase ends in ms of
  the final request; a phase it did not reach is left out), status_code (integer, of the final
  answer; left out when none came), redirects (integer, followed), redirect_ms (float, time
  spent on the redirects before the final request; only when there were any), cert_days_left
  (float days until the first-expiring certificate the run saw expires, negative once it has;
  https only), error (string, the failure class, only when up is false: timeout, dns, refused,
  unreachable, reset, interface, permission, source, network, tls, tls_expired,
  tls_not_yet_valid, tls_hostname, tls_untrusted, tls_invalid, protocol, status, body,
  redirects).
"""

from __future__ import annotations

import asyncio
import re
import socket
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol
from urllib.parse import urljoin

from fieldmon.agent.probes.base import ProbeKind, ProbeResources
from fieldmon.agent.probes.netconn import (
    LINE_LIMIT,
    READ_SIZE,
    ConnectError,
    Failure,
    TlsSetupError,
    client_context,
    connect_failure,
    connect_first,
    diagnose,
    host_port,
    resolve,
    tls_failure,
)
from fieldmon.agent.probes.service import ServiceProbe, Trace, cert_words
from fieldmon.core.site.config import SiteConfig
from fieldmon.core.site.http import HttpServiceConfig, split_url
from fieldmon.core.site.service import is_ip_literal
from fieldmon.core.version import part_version

if TYPE_CHECKING:
    from fieldmon.agent.probes.dnsclient import DnsClient

REDIRECTS = frozenset({301, 302, 303, 307, 308})
BODY_KEEP = 1 << 20  # bytes of the body kept for body_contains / body_regex; the rest is read
_READ = READ_SIZE
_HEAD_LIMIT = LINE_LIMIT  # a status line and headers longer than this are not an HTTP answer
_NO_BODY = frozenset({204, 304})
USER_AGENT = f"fieldmon-agent/{part_version('fieldmon-agent')}"


class ProtocolError(Exception):
    """The server's answer is not HTTP/1.x as we read it."""


class Reader(Protocol):
    """What reading an answer needs: a Connection, or an asyncio.StreamReader (tests)."""

    async def read(self, size: int) -> bytes: ...

    async def readuntil(self, separator: bytes) -> bytes: ...

    async def readexactly(self, size: int) -> bytes: ...


@dataclass
class Answer:
    """One HTTP answer: status, headers (lowercase names), the first BODY_KEEP bytes."""

    status: int
    headers: dict[str, str]
    body: bytes


class HttpProbe(ServiceProbe):
    """Requests one URL each run and judges the final answer."""

    kind = "http"
    config: HttpServiceConfig

    def __init__(self, config: HttpServiceConfig, *, site: str, agent: str) -> None:
        super().__init__(config, site=site, agent=agent)
        # Loaded here, so an unusable CA file fails at start-up, not per run; an http URL
        # loads the store only if it redirects to https (contexts are shared per CA file).
        if config.parts[0] == "https":
            client_context(config.ca_file)
        self._regex = re.compile(config.body_regex) if config.body_regex else None
        self._resolver: DnsClient | None = None
        if config.resolver is not None:
            from fieldmon.agent.probes.dnsclient import DnsClient

            self._resolver = DnsClient(
                config.resolver, interface=config.interface, source=config.source
            )
        self.last_url = config.url  # the URL of the last request made (after redirects)
        self.last_status: int | None = None

    async def measure(self, trace: Trace) -> None:
        """Request the URL, follow redirects, judge the final answer."""
        config = self.config
        url, method, followed = config.url, config.method, 0
        self.last_status = None
        trace.fields["redirects"] = 0
        while True:
            self.last_url = url
            answer = await self._request(trace, url, method)
            if answer is None:
                return
            self.last_status = answer.status
            # The final answer's status: a hop's goes when the next request starts.
            trace.fields["status_code"] = answer.status
            location = answer.headers.get("location")
            # A redirect listed in expect_status is the answer wanted, not a hop.
            wanted = config.expect_status is not None and answer.status in config.expect_status
            if (
                answer.status not in REDIRECTS
                or not location
                or config.max_redirects == 0
                or wanted
            ):
                break
            if followed == config.max_redirects:
                trace.fail(
                    Failure(
                        "redirects",
                        f"more than {config.max_redirects} redirects from {config.url} "
                        f"(the last from {url} to {location}) - a redirect loop?",
                    )
                )
                return
            target = urljoin(url, location)
            try:
                split_url(target)
            except ValueError as exc:
                trace.fail(Failure("redirects", f"{url} redirects to {location}: {exc}"))
                return
            followed += 1
            trace.fields["redirects"] = followed
            trace.fields["redirect_ms"] = round(trace.elapsed_ms(), 3)
            trace.restart_request()
            del trace.fields["status_code"]
            if answer.status == 303 or (answer.status in (301, 302) and method == "POST"):
                method = "GET" if method != "HEAD" else "HEAD"  # as browsers do
            url = target
        failure = self._judge(url, answer)
        if failure is not None:
            trace.fail(failure)

    async def _request(self, trace: Trace, url: str, method: str) -> Answer | None:
        """One request over a new connection; None (and trace.fail) when it failed."""
        config = self.config
        scheme, host, port, path = split_url(url)
        addresses = await self._resolve(trace, host, port)
        if not addresses:
            return None
        trace.mark("dns_ms")

        def trying(address: str) -> None:
            trace.stage = f"connecting to {host_port(address, port)}"

        connection = None
        address = addresses[0]
        try:
            try:
                connection = await connect_first(
                    addresses,
                    port,
                    interface=config.interface,
                    source=config.source,
                    trying=trying,
                )
            except ConnectError as exc:
                trace.fail(
                    connect_failure(
                        exc.error,
                        exc.address,
                        port,
                        interface=config.interface,
                        source=config.source,
                    )
                )
                return None
            address = connection.address
            trace.mark("connect_ms")
            if scheme == "https":
                where = host_port(address, port)
                trace.stage = f"TLS handshake with {host} ({where})"
                try:
                    context = client_context(config.ca_file)
                    trace.saw(await connection.start_tls(context, host))
                except ssl.SSLError as exc:
                    trace.fail(tls_failure(exc, host, where, None))
                    await self._diagnose(trace, exc, address, port, host)
                    return None
                trace.mark("tls_ms")
            trace.stage = f"waiting for {url} to answer"
            await connection.send_all(self._request_bytes(method, host, port, scheme, path))
            answer = await self._read_answer(trace, connection, method, url)
            trace.done()
            return answer
        except ProtocolError as exc:
            trace.fail(Failure("protocol", f"the answer from {url} is not HTTP as expected: {exc}"))
        except (asyncio.IncompleteReadError, ConnectionResetError, BrokenPipeError) as exc:
            trace.fail(Failure("reset", f"{url} closed the connection {_when(trace)} ({exc})"))
        except OSError as exc:
            trace.fail(
                connect_failure(
                    exc, address, port, interface=config.interface, source=config.source
                )
            )
        finally:
            if connection is not None:
                connection.close(graceful=trace.up)
        return None

    async def _resolve(self, trace: Trace, host: str, port: int) -> list[str]:
        """The addresses to try; [] (and trace.fail) when the name does not resolve."""
        if is_ip_literal(host):
            return [host]
        trace.stage = f"resolving {host}"
        if self._resolver is not None:
            return await self._ask_resolver(trace, self._resolver, host)
        try:
            return await resolve(host, port, source=self.config.source)
        except socket.gaierror as exc:
            trace.fail(
                Failure(
                    "dns",
                    f"cannot resolve {host} ({exc.strerror}) - check the URL and this Pi's DNS",
                )
            )
            return []

    async def _ask_resolver(self, trace: Trace, resolver: DnsClient, host: str) -> list[str]:
        from fieldmon.agent.probes.dnsclient import DnsQueryError

        # A (then AAAA) unless the source address says IPv6.
        order = ("AAAA", "A") if self.config.source and ":" in self.config.source else ("A", "AAAA")
        for rdtype in order:
            try:
                answer = await resolver.ask(host, rdtype)
            except DnsQueryError as exc:
                trace.fail(Failure("dns", f"resolving {host}: {exc.failure.reason}"))
                return []
            if answer.rcode != "NOERROR":
                trace.fail(Failure("dns", f"DNS {answer.rcode} for {host} from {resolver.server}"))
                return []
            records = answer.of_type(rdtype)
            if records:
                return [record.text for record in records]
        trace.fail(Failure("dns", f"{resolver.server} has no address for {host}"))
        return []

    async def _diagnose(
        self, trace: Trace, exc: ssl.SSLError, address: str, port: int, host: str
    ) -> None:
        if not isinstance(exc, ssl.SSLCertVerificationError):
            return
        config = self.config
        cert = await diagnose(
            address,
            port,
            host,
            config.ca_file,
            interface=config.interface,
            source=config.source,
        )
        if cert is not None:
            trace.saw(cert)
            trace.failure = tls_failure(exc, host, host_port(address, port), cert)

    def _request_bytes(self, method: str, host: str, port: int, scheme: str, path: str) -> bytes:
        default_port = 443 if scheme == "https" else 80
        authority = f"[{host}]" if ":" in host else host
        if port != default_port:
            authority += f":{port}"
        headers = {
            "Host": authority,
            "User-Agent": USER_AGENT,
            "Accept": "*/*",
            "Connection": "close",
        }
        given = {name.lower(): name for name in self.config.headers}
        for name in list(headers):
            if name.lower() in given:
                del headers[name]
        headers.update(self.config.headers)
        lines = [f"{method} {path} HTTP/1.1", *(f"{k}: {v}" for k, v in headers.items())]
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")

    async def _read_answer(self, trace: Trace, reader: Reader, method: str, url: str) -> Answer:
        """Status line, headers and body; the first byte marks ttfb_ms."""
        first = await reader.read(1)
        if not first:
            raise ProtocolError("the server closed the connection without answering")
        trace.mark("ttfb_ms")
        trace.stage = f"reading the answer from {url}"
        while True:
            status, headers = _parse_head(first + await _read_head(reader))
            if not 100 <= status < 200:
                break
            first = b""  # an interim answer (100 Continue, 103 Early Hints): the real one follows
        if method == "HEAD" or status in _NO_BODY:
            return Answer(status, headers, b"")
        body = await _read_body(reader, headers)
        return Answer(status, headers, body)

    def _judge(self, url: str, answer: Answer) -> Failure | None:
        config, status = self.config, answer.status
        expected = config.expect_status
        good = status in expected if expected else 200 <= status < 300
        if not good:
            return Failure("status", _status_reason(url, answer, expected))
        if config.body_contains is not None or self._regex is not None:
            text = answer.body.decode("utf-8", "replace")
            if config.body_contains is not None and config.body_contains not in text:
                return Failure(
                    "body",
                    f"the answer from {url} does not contain {config.body_contains!r} - "
                    "the service answers but not as expected",
                )
            if self._regex is not None and not self._regex.search(text):
                return Failure(
                    "body",
                    f"the answer from {url} does not match {self._regex.pattern!r} - "
                    "the service answers but not as expected",
                )
        return None

    def timeout_reason(self, trace: Trace) -> str:
        """No answer, or no end to one phase, within the timeout."""
        timeout = f"{self.config.timeout:g}s"
        stage = trace.stage or f"waiting for {self.last_url}"
        if stage.startswith("resolving"):
            via = f" from {self.config.resolver}" if self.config.resolver else ""
            return f"no answer{via} when {stage} within {timeout} - is DNS reachable?"
        if stage.startswith("connecting"):
            return (
                f"no connection when {stage} within {timeout} - a firewall drops it, "
                "or the host is down"
            )
        url = self.last_url
        if stage.startswith("waiting"):
            return f"{url} sent no answer within {timeout} - the service is stuck or overloaded"
        if stage.startswith("reading"):
            return f"{url} did not finish its answer within {timeout} - a slow link or server"
        return f"{stage} did not finish within {timeout}"

    def ok_reason(self, trace: Trace) -> str:
        """`HTTP 200 in 23 ms, certificate valid 41 more days`."""
        redirects = trace.fields.get("redirects", 0)
        via = f" after {redirects} redirect{'s' if redirects != 1 else ''}" if redirects else ""
        return f"HTTP {self.last_status}{via} in {trace.duration_ms:.0f} ms" + cert_words(
            trace.cert
        )


def _when(trace: Trace) -> str:
    return "before answering" if "ttfb_ms" not in trace.phases else "in the middle of its answer"


def _status_reason(url: str, answer: Answer, expected: list[int] | None) -> str:
    status = answer.status
    head = f"HTTP {status} from {url}"
    if status >= 500:
        return f"{head} - the service answers but fails"
    if status in (401, 403):
        return f"{head} - the service refuses this request: check the headers (credentials)"
    if status == 404:
        return f"{head} - no such page: check the URL"
    if status >= 400:
        return f"{head} - the service rejects this request: check the URL, method and headers"
    if status in REDIRECTS:
        location = answer.headers.get("location", "nowhere")
        return f"{head} (redirect to {location}) - probe that URL, or allow max_redirects"
    wanted = ", ".join(str(code) for code in expected) if expected else "2xx"
    return f"{head}, expected {wanted}"


async def _read_head(reader: Reader) -> bytes:
    try:
        return await reader.readuntil(b"\r\n\r\n")
    except asyncio.LimitOverrunError as exc:
        raise ProtocolError(f"headers longer than {_HEAD_LIMIT} bytes") from exc


def _parse_head(head: bytes) -> tuple[int, dict[str, str]]:
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not parts[1].isdigit():
        raise ProtocolError(f"status line {lines[0][:80]!r}")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if not line:
            continue
        name, sep, value = line.partition(":")
        if not sep:
            raise ProtocolError(f"header line {line[:80]!r}")
        key = name.strip().lower()
        value = value.strip()
        headers[key] = f"{headers[key]}, {value}" if key in headers else value
    return int(parts[1]), headers


async def _read_body(reader: Reader, headers: dict[str, str]) -> bytes:
    """The whole body read, its first BODY_KEEP bytes returned."""
    kept = bytearray()

    def keep(data: bytes) -> None:
        room = BODY_KEEP - len(kept)
        if room > 0:
            kept.extend(data[:room])

    if "chunked" in headers.get("transfer-encoding", "").lower():
        while True:
            line = await reader.readuntil(b"\r\n")
            size_text = line.split(b";", 1)[0].strip()
            try:
                size = int(size_text, 16)
            except ValueError as exc:
                raise ProtocolError(f"chunk size {size_text[:20]!r}") from exc
            if size == 0:
                while (await reader.readuntil(b"\r\n")) != b"\r\n":
                    pass  # trailer fields
                return bytes(kept)
            await _read_exactly(reader, size, keep)
            if await reader.readexactly(2) != b"\r\n":
                raise ProtocolError("a chunk does not end with CRLF")
    length = headers.get("content-length")
    if length is not None:
        try:
            remaining = int(length.split(",")[0])
        except ValueError as exc:
            raise ProtocolError(f"Content-Length {length[:20]!r}") from exc
        await _read_exactly(reader, remaining, keep)
        return bytes(kept)
    while data := await reader.read(_READ):  # no length: the body ends with the connection
        keep(data)
    return bytes(kept)


async def _read_exactly(reader: Reader, size: int, keep: Callable[[bytes], None]) -> None:
    remaining = size
    while remaining > 0:
        data = await reader.read(min(remaining, _READ))
        if not data:
            raise asyncio.IncompleteReadError(b"", remaining)
        keep(data)
        remaining -= len(data)


def _build(service: HttpServiceConfig, site: SiteConfig, _resources: ProbeResources) -> HttpProbe:
    return HttpProbe(service, site=site.site, agent=site.agent.id)


def _target(service: HttpServiceConfig) -> str:
    where = service.url if service.method == "GET" else f"{service.method} {service.url}"
    return where if service.interface is None else f"{where} via {service.interface}"


KIND = ProbeKind(
    name="http",
    config_model=HttpServiceConfig,
    site_section="services",
    probe=HttpProbe,
    measurements=("service",),
    build=_build,
    label="http",
    target=_target,
    setup_errors=(TlsSetupError, OSError),  # an unusable or unreadable CA file
)
