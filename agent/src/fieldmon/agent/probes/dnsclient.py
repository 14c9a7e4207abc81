"""One DNS question to one server, over UDP and over TCP when the UDP answer is truncated.

dnspython builds each question's message once (the name, a PTR's reverse name, EDNS); a run
only puts a fresh id into the kept wire form. The common answer (one question echoed, A, AAAA
and CNAME records, no authority records, at most an OPT without options) is read by
`_quick_records`, which gives exactly what dnspython would (a property test holds them to it);
dnspython reads every other answer (MX, NS, PTR, SOA, SRV, TXT, DNAME records, an NXDOMAIN's
SOA, EDNS options, an odd question) and says what is wrong with a malformed one. dnspython's
generic objects cost about 0.5 ms of CPU per question and answer (bench/services); the quick
path a few tens of microseconds. The transport is ours, on the agent's event loop with the same
bound sockets as the other service probes (SO_BINDTODEVICE, a source address), so one timeout
and one socket set-up cover DNS, HTTP and TCP alike.
"""

from __future__ import annotations

import asyncio
import ipaddress
import secrets
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
# Questions kept per client, wire form built (a DNS service asks one; an http resolver a few).
_QUERIES_KEPT = 16


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


def _records(message: dns.message.Message) -> tuple[Record, ...]:
    records = []
    for rrset in message.answer:
        rdtype = dns.rdatatype.to_text(rrset.rdtype)
        for rdata in rrset:
            text, forms = _forms(rdtype, rdata)
            records.append(Record(rdtype, text, forms))
    return tuple(records)


def _read(wire: bytes, server: str) -> dns.message.Message:
    try:
        return dns.message.from_wire(wire, ignore_trailing=True)
    except dns.exception.DNSException as exc:
        raise DnsQueryError(
            Failure("protocol", f"the answer from {server} cannot be read ({exc})")
        ) from exc


# -- the common answer, read without dnspython ---------------------------------------------------

_TYPE_A, _TYPE_CNAME, _TYPE_AAAA, _TYPE_OPT = 1, 5, 28, 41
_CLASS_IN = 1
_QR = 0x8000
# Label bytes that dnspython's to_text() writes as they are (no escape), lowercase or not.
_PLAIN_LABEL = frozenset(b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_*")
_MAX_NAME = 255
_RCODES = {int(rcode): dns.rcode.to_text(rcode) for rcode in dns.rcode.Rcode}


class _NotQuickError(Exception):
    """Something the quick reader leaves to dnspython."""


@dataclass(frozen=True)
class _Query:
    """One question, its wire form built once by dnspython; each ask gives it a fresh id."""

    wire: bytes  # with id 0
    name: bytes  # the question's name, wire form, lowercase
    tail: bytes  # its type and class


def _name(wire: bytes, offset: int) -> tuple[str, int]:
    """The (possibly compressed) name at `offset`, lowercase text without the final dot, and
    where the record continues; _NotQuickError for what dnspython would escape or refuse."""
    labels: list[str] = []
    length = 1
    end = -1
    floor = offset  # compression pointers must point backwards, as dnspython requires
    while (count := wire[offset]) != 0:
        if count >= 0xC0:
            target = ((count & 0x3F) << 8) | wire[offset + 1]
            if target >= floor:
                raise _NotQuickError
            if end < 0:
                end = offset + 2
            offset = floor = target
            continue
        label = wire[offset + 1 : offset + 1 + count]
        if count >= 0x40 or len(label) != count or not _PLAIN_LABEL.issuperset(label):
            raise _NotQuickError
        labels.append(label.decode("ascii").lower())
        length += count + 1
        offset += count + 1
    if not labels or length > _MAX_NAME:
        raise _NotQuickError
    return ".".join(labels), (end if end >= 0 else offset + 1)


def _quick_records(wire: bytes, query: _Query, ident: int) -> tuple[str, tuple[Record, ...]] | None:
    """The rcode and answer records of the answer to `query` (id `ident`), when it is of the
    common kind: one question, A / AAAA / CNAME answers, no authority records, at most EDNS's
    OPT without options. None for anything else (dnspython reads it then, and says what is
    wrong with it). The records come as dnspython gives them: grouped by owner and type in the
    order they first appear, repeated records once, the last of several CNAMEs of one owner."""
    try:
        got, flags, questions, answers, authority, additional = struct.unpack_from("!6H", wire)
        # A response (QR) to our id, opcode QUERY, echoing our one question.
        if got != ident or not flags & _QR or flags & 0x7800 or questions != 1:
            return None
        name_end = 12 + len(query.name)
        offset = name_end + len(query.tail)
        if wire[12:name_end].lower() != query.name or wire[name_end:offset] != query.tail:
            return None
        if authority or additional > 1:
            return None
        groups: dict[tuple[str, int], dict[str, Record]] = {}
        for _ in range(answers):
            offset = _record(wire, offset, groups)
        rcode = flags & 0xF
        if additional:
            rcode |= _opt_rcode(wire, offset)
    except (_NotQuickError, IndexError, struct.error, ValueError):
        return None
    text = _RCODES.get(rcode) or dns.rcode.to_text(rcode)  # type: ignore[arg-type]
    return text, tuple(record for group in groups.values() for record in group.values())


def _record(wire: bytes, offset: int, groups: dict[tuple[str, int], dict[str, Record]]) -> int:
    """Read the answer record at `offset` into its group; where the next one starts."""
    owner, offset = _name(wire, offset)
    rdtype, rdclass, _ttl, size = struct.unpack_from("!HHIH", wire, offset)
    start = offset + 10
    end = start + size
    if rdclass != _CLASS_IN or end > len(wire):
        raise _NotQuickError
    if rdtype == _TYPE_A and size == 4:
        text = socket.inet_ntoa(wire[start:end])
        record = Record("A", text, frozenset({text}))
    elif rdtype == _TYPE_AAAA and size == 16:
        text = str(ipaddress.IPv6Address(wire[start:end]))
        record = Record("AAAA", text, frozenset({text}))
    elif rdtype == _TYPE_CNAME:
        text, target_end = _name(wire, start)
        if target_end != end:
            raise _NotQuickError
        record = Record("CNAME", text, frozenset({text}))
    else:
        raise _NotQuickError
    group = groups.setdefault((owner, rdtype), {})
    if rdtype == _TYPE_CNAME:
        group.clear()  # a singleton type: the last one stands
    group.setdefault(record.text, record)
    return end


def _opt_rcode(wire: bytes, offset: int) -> int:
    """The extended rcode's upper bits from the OPT record at `offset` (owner: the root)."""
    if wire[offset] != 0:
        raise _NotQuickError
    rdtype, _payload, ttl, size = struct.unpack_from("!HHIH", wire, offset + 1)
    if rdtype != _TYPE_OPT or size:
        raise _NotQuickError
    return (ttl >> 20) & 0xFF0


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
        self._queries: dict[tuple[str, str], _Query] = {}
        # dnspython imports a record type's module when it first reads one; at start-up, not
        # inside the first run's timing.
        for rdtype in _PRELOADED:
            dns.rdata.get_rdata_class(dns.rdataclass.IN, dns.rdatatype.from_text(rdtype))

    def _query(self, query: str, rdtype: str) -> _Query:
        known = self._queries.get((query, rdtype))
        if known is not None:
            return known
        message = dns.message.make_query(
            question_name(query, rdtype),
            dns.rdatatype.from_text(rdtype),
            use_edns=0,
            payload=EDNS_PAYLOAD,
        )
        message.id = 0
        wire = message.to_wire()
        question = wire[12 : 12 + len(message.question[0].name.to_wire()) + 4]
        if len(self._queries) >= _QUERIES_KEPT:
            self._queries.clear()
        made = self._queries[(query, rdtype)] = _Query(wire, question[:-4].lower(), question[-4:])
        return made

    async def ask(self, query: str, rdtype: str) -> DnsAnswer:
        """Ask once over UDP, again over TCP if the answer was truncated; DnsQueryError if none.

        A timeout is the caller's (asyncio.timeout around the call).
        """
        question = self._query(query, rdtype)
        # A fresh unpredictable id per question (the kernel picks a fresh source port too).
        ident = secrets.randbits(16)
        wire = ident.to_bytes(2, "big") + question.wire[2:]
        try:
            answer = await self._udp(question, ident, wire)
            over_tcp = answer is None
            if answer is None:
                answer = await self._tcp(question, ident, wire)
        except OSError as exc:
            raise DnsQueryError(self._os_failure(exc)) from exc
        rcode, records = answer
        return DnsAnswer(rcode, records, over_tcp)

    def _slow(self, data: bytes, wire: bytes) -> tuple[str, tuple[Record, ...]] | None:
        """dnspython's reading of an answer; None when it answers another question."""
        reply = _read(data, self.server)
        if not dns.message.from_wire(wire).is_response(reply):
            return None
        return dns.rcode.to_text(reply.rcode()), _records(reply)

    async def _udp(
        self, question: _Query, ident: int, wire: bytes
    ) -> tuple[str, tuple[Record, ...]] | None:
        """The rcode and records, or None when the answer came truncated (ask again over TCP)."""
        self.stage = "udp"
        sock = open_socket(
            family_of(self.server), socket.SOCK_DGRAM, interface=self.interface, source=self.source
        )
        connection = Connection(sock, self.server)
        try:
            # Connected: the kernel drops datagrams from anyone but the server, and reports an
            # ICMP port unreachable as ConnectionRefusedError.
            await connection.connect(self.port)
            await connection.send_all(wire)
            while True:
                data = await connection.receive(_MAX_UDP)
                # Truncated (TC, in the flags' first byte) answers to our id go to TCP.
                if len(data) >= 4 and data[:2] == wire[:2] and data[2] & (dns.flags.TC >> 8):
                    return None
                answer = _quick_records(data, question, ident) or self._slow(data, wire)
                if answer is not None:
                    return answer
                # Not an answer to this question (a late one to an earlier run): keep waiting.
        finally:
            sock.close()

    async def _tcp(
        self, question: _Query, ident: int, wire: bytes
    ) -> tuple[str, tuple[Record, ...]]:
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
            answer = _quick_records(data, question, ident) or self._slow(data, wire)
            if answer is None:
                raise DnsQueryError(
                    Failure("protocol", f"{self.server} answered another question over TCP")
                )
            return answer
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
