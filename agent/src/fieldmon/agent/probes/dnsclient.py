"""One DNS question to one server, over UDP and over TCP when the UDP answer is truncated.

dnspython builds and reads the messages (every record type, EDNS, name compression, malformed
answers rejected); the transport is ours, on the agent's event loop with the same bound sockets
as the other service probes (SO_BINDTODEVICE, a source address), so one timeout and one socket
set-up cover DNS, HTTP and TCP alike.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import struct
from dataclasses import dataclass
from typing import Any

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.reversename

from fieldmon.agent.probes.netconn import (
    Connection,
    Failure,
    connect_failure,
    connect_tcp,
    family_of,
    open_socket,
)

# Advertised UDP payload size (EDNS): the DNS flag day 2020 value, safe from IP fragmentation.
EDNS_PAYLOAD = 1232
_MAX_UDP = 65535
# The types a DNS service may ask for, the CNAMEs and DNAMEs on the way, and EDNS's OPT.
_PRELOADED = ("A", "AAAA", "CNAME", "DNAME", "MX", "NS", "PTR", "SOA", "SRV", "TXT", "OPT")


@dataclass(frozen=True)
class Record:
    """One record of the answer section: its type, its text and the forms `expect` may match."""

    type: str
    text: str
    forms: frozenset[str]


@dataclass(frozen=True)
class DnsAnswer:
    """What the server said."""

    rcode: str  # NOERROR, NXDOMAIN, SERVFAIL, REFUSED, ...
    records: tuple[Record, ...]  # the whole answer section, CNAMEs on the way included
    over_tcp: bool  # the UDP answer was truncated and the question was asked again over TCP

    def of_type(self, rdtype: str) -> list[Record]:
        """The answers of the type asked for."""
        return [record for record in self.records if record.type == rdtype]


class DnsQueryError(Exception):
    """The question got no readable answer; `failure` says why in words."""

    def __init__(self, failure: Failure) -> None:
        super().__init__(failure.reason)
        self.failure = failure


def question_name(query: str, rdtype: str) -> dns.name.Name:
    """The name asked for: for PTR of an IP address, its reverse name (in-addr.arpa / ip6.arpa)."""
    if rdtype == "PTR":
        try:
            return dns.reversename.from_address(str(ipaddress.ip_address(query)))
        except ValueError:
            pass
    return dns.name.from_text(query)


def _forms(rdtype: str, rdata: Any) -> tuple[str, frozenset[str]]:
    """The record's text and what an expected answer may be written as."""
    text = rdata.to_text()
    if rdtype in ("A", "AAAA"):
        address = str(ipaddress.ip_address(text))
        return address, frozenset({address})
    if rdtype == "TXT":
        joined = b"".join(rdata.strings).decode("utf-8", "replace")
        return joined, frozenset({joined})
    normal = " ".join(text.lower().split()).rstrip(".")
    forms = {normal}
    if rdtype in ("MX", "SRV"):  # the target alone: `mx.example` for `10 mx.example`
        forms.add(normal.rsplit(" ", 1)[-1].rstrip("."))
    return normal, frozenset(forms)


def _answer(message: dns.message.Message, over_tcp: bool) -> DnsAnswer:
    records = []
    for rrset in message.answer:
        rdtype = dns.rdatatype.to_text(rrset.rdtype)
        for rdata in rrset:
            text, forms = _forms(rdtype, rdata)
            records.append(Record(rdtype, text, forms))
    return DnsAnswer(dns.rcode.to_text(message.rcode()), tuple(records), over_tcp)


def _read(wire: bytes, server: str) -> dns.message.Message:
    try:
        return dns.message.from_wire(wire, ignore_trailing=True)
    except dns.exception.DNSException as exc:
        raise DnsQueryError(
            Failure("protocol", f"the answer from {server} cannot be read ({exc})")
        ) from exc


class DnsClient:
    """Asks one server; `stage` says what it waits for (for a timeout's reason)."""

    def __init__(
        self,
        server: str,
        port: int = 53,
        *,
        interface: str | None = None,
        source: str | None = None,
    ) -> None:
        self.server = server
        self.port = port
        self.interface = interface
        # A source of the other family (an http service's IPv6 source, an IPv4 resolver)
        # cannot carry the question: the kernel picks the source address then.
        same_family = source is not None and family_of(source) == family_of(server)
        self.source = source if same_family else None
        self.stage = ""
        # dnspython imports a record type's module when it first reads one; at start-up, not
        # inside the first run's timing.
        for rdtype in _PRELOADED:
            dns.rdata.get_rdata_class(dns.rdataclass.IN, dns.rdatatype.from_text(rdtype))

    async def ask(self, query: str, rdtype: str) -> DnsAnswer:
        """Ask once over UDP, again over TCP if the answer was truncated; DnsQueryError if none.

        A timeout is the caller's (asyncio.timeout around the call).
        """
        question = dns.message.make_query(
            question_name(query, rdtype),
            dns.rdatatype.from_text(rdtype),
            use_edns=0,
            payload=EDNS_PAYLOAD,
        )
        wire = question.to_wire()
        try:
            reply = await self._udp(question, wire)
            over_tcp = reply is None
            if reply is None:
                reply = await self._tcp(question, wire)
        except OSError as exc:
            raise DnsQueryError(self._os_failure(exc)) from exc
        return _answer(reply, over_tcp)

    async def _udp(self, question: dns.message.Message, wire: bytes) -> dns.message.Message | None:
        """The reply, or None when it came truncated (ask again over TCP)."""
        loop = asyncio.get_running_loop()
        self.stage = "udp"
        sock = open_socket(
            family_of(self.server), socket.SOCK_DGRAM, interface=self.interface, source=self.source
        )
        try:
            # Connected: the kernel drops datagrams from anyone but the server, and reports an
            # ICMP port unreachable as ConnectionRefusedError.
            await loop.sock_connect(sock, (self.server, self.port))
            await loop.sock_sendall(sock, wire)
            while True:
                data = await loop.sock_recv(sock, _MAX_UDP)
                # Truncated (TC, in the flags' first byte) answers to our id go to TCP.
                if len(data) >= 4 and data[:2] == wire[:2] and data[2] & (dns.flags.TC >> 8):
                    return None
                reply = _read(data, self.server)
                if question.is_response(reply):
                    return reply
                # Not an answer to this question (a late one to an earlier run): keep waiting.
        finally:
            sock.close()

    async def _tcp(self, question: dns.message.Message, wire: bytes) -> dns.message.Message:
        self.stage = "tcp"
        connection: Connection | None = None
        try:
            connection = await connect_tcp(
                self.server, self.port, interface=self.interface, source=self.source
            )
            await connection.send_all(struct.pack("!H", len(wire)) + wire)
            try:
                (length,) = struct.unpack("!H", await connection.readexactly(2))
                data = await connection.readexactly(length)
            except asyncio.IncompleteReadError as exc:
                raise DnsQueryError(
                    Failure("protocol", f"{self.server} closed the TCP connection before answering")
                ) from exc
            reply = _read(data, self.server)
            if not question.is_response(reply):
                raise DnsQueryError(
                    Failure("protocol", f"{self.server} answered another question over TCP")
                )
            return reply
        finally:
            if connection is not None:
                connection.close()

    def _os_failure(self, exc: OSError) -> Failure:
        if isinstance(exc, ConnectionRefusedError):
            over = "TCP" if self.stage == "tcp" else "UDP"
            return Failure(
                "refused",
                f"{self.server} refused the query on {over} port {self.port} (nothing listens "
                "there) - is a DNS server running at this address?",
            )
        return connect_failure(
            exc, self.server, self.port, interface=self.interface, source=self.source
        )
