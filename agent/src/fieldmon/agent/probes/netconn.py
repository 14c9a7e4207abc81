"""Service probes' connections: bound sockets, TLS and its certificate, failures in words.

Every socket is non-blocking on the agent's event loop, optionally bound to a device
(SO_BINDTODEVICE, as the ICMP links are) and to a source address. A `Connection` calls the
socket (or, after `start_tls`, the `ssl.SSLSocket`) directly and waits on the loop's selector
only when a call would block: no asyncio transport, protocol or stream, whose machinery cost
more CPU than a probe's few hundred bytes and, for TLS (asyncio's memory-BIO transport), woke
the loop several times per handshake flight (bench/services: the HTTPS handshake took about
0.5 ms longer than the same handshake driven this way). TLS contexts are shared per CA file:
each loads its CA store once (the system's store is about a megabyte), however many services
use it. When a certificate fails verification, `diagnose()` makes a second handshake that skips
only the host-name and date checks, so the reason can say for whom the certificate is and how
many days ago it expired.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import functools
import socket
import ssl
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

# OpenSSL's X509_V_FLAG_NO_CHECK_TIME: verify the chain, ignore the validity dates (diagnosis).
_NO_CHECK_TIME = 0x200000
# OpenSSL verify codes (x509_vfy.h) the reasons tell apart.
_NOT_YET_VALID = 9
_EXPIRED = 10
_HOSTNAME_MISMATCH = 62
_IP_MISMATCH = 64
_UNTRUSTED = frozenset({2, 18, 19, 20, 21})  # no issuer, self-signed, unable to verify
DAY_S = 86400.0


class TlsSetupError(Exception):
    """A CA file that exists but cannot be used (not PEM, no certificate in it)."""


@dataclass(frozen=True)
class CertInfo:
    """The server certificate one handshake saw."""

    host: str  # the name we asked for (SNI) and checked
    names: tuple[str, ...]  # the DNS names and addresses it is for (subjectAltName, else CN)
    not_before: float  # seconds since the epoch
    not_after: float

    def days_left(self, now: float | None = None) -> float:
        """Days until it expires; negative once it has."""
        return (self.not_after - (time.time() if now is None else now)) / DAY_S


def cert_info(host: str, peercert: object) -> CertInfo | None:
    """A verified peer certificate (ssl's dict form) as CertInfo; None when there is none."""
    if not isinstance(peercert, dict) or "notAfter" not in peercert:
        return None
    alt = peercert.get("subjectAltName") or ()
    names = tuple(value for kind, value in alt if kind in ("DNS", "IP Address"))
    if not names:
        names = tuple(
            value
            for rdn in peercert.get("subject") or ()
            for key, value in rdn
            if key == "commonName"
        )
    return CertInfo(
        host=host,
        names=names,
        not_before=float(ssl.cert_time_to_seconds(peercert["notBefore"])),
        not_after=float(ssl.cert_time_to_seconds(peercert["notAfter"])),
    )


# CertInfo by (name asked for, the certificate's DER): a service shows the same certificate run
# after run, and decoding it (ssl's dict, two strptime dates) cost more than the rest of a
# plain run's Python. Bounded: cleared when it reaches this many.
_CERTS_KEPT = 256
_certs: dict[tuple[str, bytes], CertInfo | None] = {}


def peer_cert(host: str, tls: ssl.SSLSocket) -> CertInfo | None:
    """The verified certificate of a finished handshake, as CertInfo; None when there is none."""
    der = tls.getpeercert(binary_form=True)
    if der is None:
        return None
    key = (host, der)
    try:
        return _certs[key]
    except KeyError:
        pass
    if len(_certs) >= _CERTS_KEPT:
        _certs.clear()
    info = _certs[key] = cert_info(host, tls.getpeercert())
    return info


# -- TLS contexts -------------------------------------------------------------------------------


def client_context(ca_file: Path | None, *, diagnostic: bool = False) -> ssl.SSLContext:
    """The shared context for `ca_file` (None: the system's store); TlsSetupError if unusable.

    A diagnostic context verifies the chain but neither the host name nor the dates.
    """
    key = None
    if ca_file is not None:
        stat = ca_file.stat()  # a replaced file (new mtime or size) gets a new context
        key = (str(ca_file), stat.st_mtime_ns, stat.st_size)
    return _context(key, diagnostic)


@functools.cache
def _context(ca_key: tuple[str, int, int] | None, diagnostic: bool) -> ssl.SSLContext:
    try:
        context = ssl.create_default_context(cafile=None if ca_key is None else ca_key[0])
    except ssl.SSLError as exc:
        reason = getattr(exc, "reason", None) or exc
        raise TlsSetupError(
            f"cannot use CA file {ca_key[0] if ca_key else ''} ({reason}) - "
            "is it a PEM certificate (-----BEGIN CERTIFICATE-----)?"
        ) from exc
    if diagnostic:
        context.check_hostname = False
        context.verify_flags |= _NO_CHECK_TIME
    return context


# -- sockets ------------------------------------------------------------------------------------

# Bytes asked of the kernel per read: a probe's answer head, or a chunk of its body.
READ_SIZE = 1 << 16
# A line (an HTTP head) longer than this without its separator is not what we expect
# (asyncio.StreamReader's default limit, which the probes used before).
LINE_LIMIT = 1 << 16


def open_socket(
    family: int, kind: int, *, interface: str | None = None, source: str | None = None
) -> socket.socket:
    """A non-blocking socket bound to `interface` (SO_BINDTODEVICE) and `source`, if given."""
    sock = socket.socket(family, kind)
    try:
        sock.setblocking(False)
        if interface is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, interface.encode())
        if source is not None:
            sock.bind((source, 0))
    except OSError:
        sock.close()
        raise
    return sock


def family_of(address: str) -> int:
    """AF_INET6 for an IPv6 literal, else AF_INET."""
    return socket.AF_INET6 if ":" in address else socket.AF_INET


def _wake(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


class Connection:
    """One connected socket on the event loop: TCP (plain, or TLS after `start_tls`) or UDP.

    Each call goes to the socket at once and waits on the loop's selector only when it would
    block, so a TLS handshake is `do_handshake()` again as soon as the server's flight is
    readable. `read()`, `readuntil()` and `readexactly()` behave as asyncio.StreamReader's do
    (IncompleteReadError at an early end, LimitOverrunError past LINE_LIMIT), over a buffer of
    what the socket gave; `receive()` is one read of the socket itself (a datagram).
    """

    def __init__(self, sock: socket.socket, address: str) -> None:
        self.sock = sock  # an ssl.SSLSocket after start_tls()
        self.address = address  # the peer's address
        self._loop = asyncio.get_running_loop()
        self._buffer = bytearray()
        self._eof = False

    async def _wait(self, *, writable: bool) -> None:
        """Until the socket is readable (writable)."""
        loop, fd = self._loop, self.sock.fileno()
        waiter: asyncio.Future[None] = loop.create_future()
        if writable:
            loop.add_writer(fd, _wake, waiter)
            try:
                await waiter
            finally:
                loop.remove_writer(fd)
        else:
            loop.add_reader(fd, _wake, waiter)
            try:
                await waiter
            finally:
                loop.remove_reader(fd)

    async def connect(self, port: int) -> None:
        """The TCP handshake (or a UDP socket's peer); OSError as asyncio's sock_connect raises."""
        target = (self.address, port)
        try:
            self.sock.connect(target)
        except BlockingIOError:
            await self._wait(writable=True)
            code = self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if code != 0:
                # OSError() picks the subclass by errno (ConnectionRefusedError, ...).
                raise OSError(code, f"Connect call failed {target}") from None

    async def start_tls(self, context: ssl.SSLContext, server_name: str) -> CertInfo | None:
        """The TLS handshake on this connection; the verified certificate it saw."""
        tls = context.wrap_socket(
            self.sock, server_hostname=server_name, do_handshake_on_connect=False
        )
        self.sock = tls
        while True:
            try:
                tls.do_handshake()
            except ssl.SSLWantReadError:
                await self._wait(writable=False)
            except ssl.SSLWantWriteError:
                await self._wait(writable=True)
            else:
                return peer_cert(server_name, tls)

    async def send_all(self, data: bytes) -> None:
        """Send all of `data`."""
        view = memoryview(data)
        while view:
            try:
                sent = self.sock.send(view)
            except (BlockingIOError, ssl.SSLWantWriteError):
                await self._wait(writable=True)
            except ssl.SSLWantReadError:
                await self._wait(writable=False)
            else:
                view = view[sent:]

    async def receive(self, size: int = READ_SIZE) -> bytes:
        """One read of the socket (a datagram, or what a stream has); b"" at the end."""
        while True:
            try:
                return self.sock.recv(size)
            except (BlockingIOError, ssl.SSLWantReadError):
                await self._wait(writable=False)
            except ssl.SSLWantWriteError:
                await self._wait(writable=True)

    async def _fill(self) -> bool:
        """Read more into the buffer; False at the end of the stream."""
        if self._eof:
            return False
        data = await self.receive()
        if not data:
            self._eof = True
            return False
        self._buffer += data
        return True

    async def read(self, size: int) -> bytes:
        """Up to `size` bytes, as soon as there are any; b"" at the end of the stream."""
        if not self._buffer and not await self._fill():
            return b""
        data = bytes(self._buffer[:size])
        del self._buffer[:size]
        return data

    async def readuntil(self, separator: bytes) -> bytes:
        """Everything up to and including `separator`."""
        start = 0
        while True:
            found = self._buffer.find(separator, start)
            if found >= 0:
                end = found + len(separator)
                data = bytes(self._buffer[:end])
                del self._buffer[:end]
                return data
            if len(self._buffer) > LINE_LIMIT:
                raise asyncio.LimitOverrunError(
                    "Separator is not found, and chunk exceed the limit", len(self._buffer)
                )
            start = max(0, len(self._buffer) - len(separator) + 1)
            if not await self._fill():
                partial = bytes(self._buffer)
                self._buffer.clear()
                raise asyncio.IncompleteReadError(partial, None)

    async def readexactly(self, size: int) -> bytes:
        """Exactly `size` bytes."""
        while len(self._buffer) < size:
            if not await self._fill():
                partial = bytes(self._buffer)
                self._buffer.clear()
                raise asyncio.IncompleteReadError(partial, size)
        data = bytes(self._buffer[:size])
        del self._buffer[:size]
        return data

    def close(self, *, graceful: bool = True) -> None:
        """Close now. Gracefully, a TLS connection says close_notify first, without waiting for
        the server's (as curl and Go do), so closing never stretches a run."""
        sock = self.sock
        if graceful and isinstance(sock, ssl.SSLSocket):
            # Sends our close_notify; reads the server's only if it is already there.
            with contextlib.suppress(OSError, ValueError):
                sock.unwrap()
        sock.close()


async def connect_tcp(
    address: str, port: int, *, interface: str | None = None, source: str | None = None
) -> Connection:
    """A TCP connection to an IP literal; OSError when it fails."""
    sock = open_socket(family_of(address), socket.SOCK_STREAM, interface=interface, source=source)
    connection = Connection(sock, address)
    try:
        await connection.connect(port)
    except BaseException:
        sock.close()
        raise
    return connection


async def resolve(host: str, port: int, *, source: str | None = None) -> list[str]:
    """`host`'s addresses from the system's resolver (off the event loop, in a thread), in the
    order it prefers, of the source address's family if one is set; socket.gaierror if none."""
    family = socket.AF_UNSPEC if source is None else family_of(source)
    loop = asyncio.get_running_loop()
    found = await loop.getaddrinfo(host, port, family=family, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in found))


class ConnectError(Exception):
    """No address accepted the connection; `error` is the last attempt's, to `address`."""

    def __init__(self, error: OSError, address: str) -> None:
        super().__init__(str(error))
        self.error = error
        self.address = address


async def connect_first(
    addresses: Sequence[str],
    port: int,
    *,
    interface: str | None = None,
    source: str | None = None,
    trying: Callable[[str], None] | None = None,
) -> Connection:
    """Connect to the first of `addresses` that accepts, in order, as browsers and curl do
    (`localhost` is often ::1 first, for a server that listens on 127.0.0.1 only); its
    `address` is the one it reached. `trying(address)` is told each attempt."""
    last: ConnectError | None = None
    for address in addresses:
        if trying is not None:
            trying(address)
        try:
            return await connect_tcp(address, port, interface=interface, source=source)
        except OSError as exc:
            last = ConnectError(exc, address)
    assert last is not None, "connect_first needs at least one address"
    raise last


async def diagnose(
    address: str,
    port: int,
    server_name: str,
    ca_file: Path | None,
    *,
    interface: str | None = None,
    source: str | None = None,
) -> CertInfo | None:
    """The certificate of a server whose certificate failed verification; None when unknown.

    A second handshake with a context that checks the chain but not the name or the dates:
    what it shows comes from a CA we trust, so its dates and names can be reported.
    """
    connection = None
    try:
        connection = await connect_tcp(address, port, interface=interface, source=source)
        return await connection.start_tls(client_context(ca_file, diagnostic=True), server_name)
    except (OSError, TlsSetupError):  # ssl.SSLError is an OSError: untrusted or no TLS at all
        return None
    finally:
        if connection is not None:
            connection.close()


# -- failures in words --------------------------------------------------------------------------


@dataclass(frozen=True)
class Failure:
    """Why a run failed: a class for the `error` field and a sentence for `check`."""

    error: str
    reason: str


def host_port(address: str, port: int) -> str:
    """`192.0.2.80:104`, `[2001:db8::1]:443`."""
    return f"[{address}]:{port}" if ":" in address else f"{address}:{port}"


# What an errno from setting up a socket or connecting means, by errno; {where}, {address},
# {interface} and {source} are filled in.
_CONNECT_ERRORS = {
    errno.ENODEV: (
        "interface",
        "interface {interface} does not exist - is the NIC or modem plugged in?",
    ),
    errno.ENETUNREACH: (
        "unreachable",
        "no route to {address}{via} - is the uplink up, with an address?",
    ),
    errno.EHOSTUNREACH: (
        "unreachable",
        "host {address} unreachable - is it on this network, and powered?",
    ),
    errno.ECONNRESET: ("reset", "{where} reset the connection"),
    errno.EPIPE: ("reset", "{where} closed the connection"),
}


def connect_failure(
    exc: OSError, address: str, port: int, *, interface: str | None, source: str | None
) -> Failure:
    """A failed socket set-up or TCP connect, in words."""
    where = host_port(address, port)
    code = exc.errno
    if isinstance(exc, ConnectionRefusedError) or code == errno.ECONNREFUSED:
        return Failure(
            "refused",
            f"connection refused by {where} - the service is down or a firewall rejects it",
        )
    if code in (errno.EPERM, errno.EACCES) and interface is not None:
        return Failure(
            "permission",
            f"not permitted to send from interface {interface} - the agent needs root or "
            "CAP_NET_RAW to bind to a device",
        )
    if code == errno.EADDRNOTAVAIL:
        what = f"source address {source} is not on this Pi" if source else "no source address"
        return Failure("source", f"{what} - cannot reach {where}")
    known = _CONNECT_ERRORS.get(code or 0)
    if known is None:
        return Failure("network", f"cannot connect to {where}: {exc.strerror or exc}")
    error, template = known
    via = f" via {interface}" if interface else ""
    return Failure(
        error, template.format(where=where, address=address, interface=interface, via=via)
    )


def tls_failure(exc: ssl.SSLError, host: str, where: str, cert: CertInfo | None) -> Failure:
    """A failed TLS handshake, in words; `cert` is what `diagnose()` found, if anything."""
    if not isinstance(exc, ssl.SSLCertVerificationError):
        reason = getattr(exc, "reason", None) or exc.strerror or str(exc)
        return Failure(
            "tls",
            f"TLS handshake with {where} failed ({reason}) - is this the service's TLS port?",
        )
    code = exc.verify_code
    if code == _EXPIRED:
        return Failure("tls_expired", _expired_reason(host, cert))
    if code == _NOT_YET_VALID:
        since = ""
        if cert is not None:
            since = " until " + datetime.fromtimestamp(cert.not_before, UTC).strftime(
                "%Y-%m-%d %H:%M UTC"
            )
        return Failure(
            "tls_not_yet_valid",
            f"certificate for {host} is not valid{since} - is the Pi's clock set?",
        )
    if code in (_HOSTNAME_MISMATCH, _IP_MISMATCH):
        holder = ", ".join(cert.names) if cert is not None and cert.names else "another name"
        return Failure(
            "tls_hostname",
            f"wrong host: the certificate is for {holder}, not {host} - "
            "use the name the certificate was issued to",
        )
    if code in _UNTRUSTED:
        return Failure(
            "tls_untrusted",
            f"certificate for {host} is not signed by a CA this Pi trusts "
            f"({exc.verify_message}) - set ca_file to the hospital's CA",
        )
    return Failure(
        "tls_invalid", f"certificate for {host} is not accepted: {exc.verify_message or exc}"
    )


def _expired_reason(host: str, cert: CertInfo | None) -> str:
    advice = "is the Pi's clock set? If it is, the hospital must renew it"
    if cert is None:
        return f"certificate for {host} has expired - {advice}"
    days = int(-cert.days_left())
    ago = "less than a day ago" if days < 1 else f"{days} day{'s' if days != 1 else ''} ago"
    return f"certificate for {host} expired {ago} - {advice}"


def expiring_reason(cert: CertInfo, warn_days: int) -> str:
    """A WARN for a certificate with fewer than `warn_days` days left."""
    days = cert.days_left()
    return (
        f"certificate for {cert.host} expires in {days:.0f} days (warning at {warn_days}) - "
        "the hospital must renew it"
    )
