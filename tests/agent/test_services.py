"""The service probes' logic without a network: config rules, the row, reasons in words, parsing.

Real servers (dnsmasq, nginx) test the same probes end to end in test_services_netns.py; here
each piece is fed what a server would send, through the probes' own seams.
"""

from __future__ import annotations

import asyncio
import errno
import ssl
import struct
import time
from pathlib import Path
from typing import Any

import dns.message
import dns.name
import dns.rcode
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from fieldmon.agent.probes import dns as dns_probe
from fieldmon.agent.probes import http, registry, tcp
from fieldmon.agent.probes.base import ProbeResources, Run, Status
from fieldmon.agent.probes.dnsclient import (
    DnsAnswer,
    DnsClient,
    Record,
    _forms,
    _quick_records,
    question_name,
)
from fieldmon.agent.probes.dnsclient import _records as _dns_records
from fieldmon.agent.probes.http import Answer, HttpProbe, _parse_head, _read_body, _status_reason
from fieldmon.agent.probes.netconn import (
    CertInfo,
    Failure,
    TlsSetupError,
    cert_info,
    client_context,
    connect_failure,
    tls_failure,
)
from fieldmon.agent.probes.service import Trace
from fieldmon.core.site.config import SiteConfig
from fieldmon.core.site.dns import DnsServiceConfig, RecordType
from fieldmon.core.site.http import HttpServiceConfig
from fieldmon.core.site.tcp import TcpServiceConfig

SITE = {
    "site": "pavilion-2",
    "name": "Pavilion 2",
    "parent_hospital": "hospital-central",
    "agent": {"id": "pavilion-2-pi1", "broker": {"host": "127.0.0.1"}},
}
HIS = "https://his.hospital.example/"


def _site(services: list[dict[str, Any]]) -> SiteConfig:
    return SiteConfig.model_validate({**SITE, "services": services})


def _http(**keys: Any) -> HttpServiceConfig:
    return HttpServiceConfig.model_validate({"name": "his", "kind": "http", "url": HIS, **keys})


def _dns(**keys: Any) -> DnsServiceConfig:
    base = {"name": "dns", "kind": "dns", "server": "192.0.2.53", "query": "his.hospital.example"}
    return DnsServiceConfig.model_validate({**base, **keys})


def _verification_error(code: int, message: str) -> ssl.SSLCertVerificationError:
    error = ssl.SSLCertVerificationError(1, f"[SSL: CERTIFICATE_VERIFY_FAILED] {message}")
    error.verify_code = code
    error.verify_message = message
    return error


def _cert(host: str, days_left: float, names: tuple[str, ...] = ()) -> CertInfo:
    now = time.time()
    return CertInfo(host, names or (host,), now - 86400 * 30, now + 86400 * days_left)


# -- the site file ------------------------------------------------------------------------------


def test_services_of_three_kinds_load_with_their_defaults() -> None:
    site = _site(
        [
            {"name": "his", "kind": "http", "url": HIS},
            {"name": "pacs", "kind": "tcp", "address": "192.0.2.80", "port": 104},
            {
                "name": "dns",
                "kind": "dns",
                "server": "192.0.2.53",
                "query": "His.Hospital.Example.",
            },
        ]
    )
    his, pacs, resolver = site.services
    assert isinstance(his, HttpServiceConfig) and his.method == "GET"
    assert (his.interval, his.timeout, his.max_redirects, his.cert_warn_days) == (30, 5, 10, 14)
    assert his.expect_status is None and his.slow_ms is None and his.ca_file is None
    assert (
        isinstance(pacs, TcpServiceConfig) and pacs.tls is False and pacs.tls_name == "192.0.2.80"
    )
    assert isinstance(resolver, DnsServiceConfig) and resolver.type is RecordType.A
    assert resolver.query == "his.hospital.example"  # no case, no trailing dot
    assert resolver.port == 53


def test_each_kind_takes_only_its_own_entries_from_the_shared_section() -> None:
    site = _site(
        [
            {"name": "his", "kind": "http", "url": HIS},
            {"name": "pacs", "kind": "tcp", "address": "192.0.2.80", "port": 104},
            {"name": "dns", "kind": "dns", "server": "192.0.2.53", "query": "his.hospital.example"},
            {"name": "lab", "kind": "http", "url": "http://192.0.2.81/"},
        ]
    )
    taken = {k.name: [k.target_name(c) for c in k.configs(site)] for k in registry.PROBE_KINDS}
    assert taken["http"] == ["his", "lab"]
    assert taken["tcp"] == ["pacs"]
    assert taken["dns"] == ["dns"]
    resources = ProbeResources(pinger=None, snmp=None)  # type: ignore[arg-type]
    built = [plan.probe for plan in registry.plan_probes(site, resources)]
    assert [type(probe).__name__ for probe in built if probe is not None][-4:] == [
        "DnsProbe",
        "HttpProbe",
        "HttpProbe",
        "TcpProbe",
    ]


@pytest.mark.parametrize(
    ("entry", "words"),
    [
        ({"kind": "dns", "type": "AXFR"}, "Input should be 'A', 'AAAA'"),
        ({"kind": "dns", "type": "A", "expect": "2001:db8::1"}, "is not an IPv4 address"),
        ({"kind": "dns", "query": "his hospital"}, "is not a host name"),
        ({"kind": "dns", "server": "dns.example"}, "is not an IPv4 or IPv6 address"),
        ({"kind": "dns", "source": "2001:db8::9"}, "not both IPv4 or both IPv6"),
        ({"kind": "http", "url": "ftp://his.hospital.example/"}, "not an http:// or https://"),
        ({"kind": "http", "url": "https://u:p@his.hospital.example/"}, "no secrets inline"),
        ({"kind": "http", "url": HIS, "body_regex": "(unclosed"}, "not a valid regular expression"),
        ({"kind": "http", "url": HIS, "headers": {"Connection": "keep-alive"}}, "set by the probe"),
        ({"kind": "http", "url": HIS, "headers": {"X-A": "a\r\nb"}}, "one line of text"),
        ({"kind": "http", "url": HIS, "method": "HEAD", "body_contains": "ok"}, "HEAD request"),
        ({"kind": "http", "url": HIS, "timeout": "1m"}, "longer than the interval"),
        ({"kind": "http", "url": HIS, "interface": "a-very-long-interface"}, "interface name"),
        ({"kind": "http", "url": HIS, "source": "eth0"}, "is not an IPv4 or IPv6 address"),
        ({"kind": "tcp", "address": "192.0.2.80", "port": 104, "server_name": "x"}, "needs tls"),
        ({"kind": "tcp", "address": "192.0.2.80", "port": 104, "cert_warn_days": 3}, "needs tls"),
        ({"kind": "tcp", "address": "192.0.2.80", "port": 0}, "greater than or equal to 1"),
    ],
)
def test_a_bad_service_is_refused_with_words_that_name_it(
    entry: dict[str, Any], words: str
) -> None:
    defaults = {
        "dns": {"server": "192.0.2.53", "query": "his.hospital.example"},
        "http": {},
        "tcp": {},
    }[entry["kind"]]
    with pytest.raises(ValidationError, match=words.replace("(", r"\(")) as caught:
        _site([{"name": "svc", **defaults, **entry}])
    assert caught.value.errors()[0]["loc"][:2] == ("services", 0)


def test_a_ca_file_is_relative_to_the_site_file_and_must_exist(tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("x", encoding="utf-8")
    config = HttpServiceConfig.model_validate(
        {"name": "his", "kind": "http", "url": HIS, "ca_file": "ca.pem"},
        context={"config_dir": tmp_path},
    )
    assert config.ca_file == ca
    with pytest.raises(ValidationError, match="does not exist or is not a file"):
        _http(ca_file=str(tmp_path / "missing.pem"))


def test_expected_answers_are_kept_in_the_form_they_are_compared() -> None:
    assert _dns(type="aaaa", expect="2001:DB8::0:1").expect == ["2001:db8::1"]
    assert _dns(type="MX", expect=["10  Mail.Hospital.Example.", "mx2.example"]).expect == [
        "10 mail.hospital.example",
        "mx2.example",
    ]
    assert _dns(type="TXT", expect="v=spf1 -all").expect == ["v=spf1 -all"]
    ptr = _dns(type="PTR", query="192.0.2.80")
    assert ptr.query == "192.0.2.80"
    assert question_name(ptr.query, "PTR").to_text() == "80.2.0.192.in-addr.arpa."


# -- the row ------------------------------------------------------------------------------------


def test_a_failed_run_reports_the_phases_it_got_through_and_why() -> None:
    trace = Trace()
    trace.mark("dns_ms")
    trace.fail(Failure("refused", "connection refused by 192.0.2.80:104"))
    trace.fail(Failure("timeout", "later failures do not replace the first"))
    sample = trace.sample({"site": "s", "agent": "a", "target": "pacs", "kind": "tcp"})
    assert sample.measurement == "service"
    assert sample.tags == {"site": "s", "agent": "a", "target": "pacs", "kind": "tcp"}
    assert sample.fields["up"] is False and sample.fields["error"] == "refused"
    assert set(sample.fields) == {"up", "duration_ms", "dns_ms", "error"}
    assert isinstance(sample.fields["duration_ms"], float)
    assert sample.fields["dns_ms"] <= sample.fields["duration_ms"]


def test_cert_days_left_is_of_the_certificate_that_expires_first() -> None:
    trace = Trace()
    trace.saw(_cert("a.example", 80))
    trace.saw(_cert("b.example", 5))
    trace.saw(_cert("c.example", 40))
    fields = trace.sample({"kind": "http"}).fields
    assert trace.cert is not None and trace.cert.host == "b.example"
    assert fields["cert_days_left"] == pytest.approx(5, abs=0.01)
    assert fields["up"] is True and "error" not in fields


def test_cert_info_reads_the_verified_certificate_dict() -> None:
    peercert = {
        "subject": ((("commonName", "his.hospital.example"),),),
        "notBefore": "Jan  1 00:00:00 2026 GMT",
        "notAfter": "Jan 31 00:00:00 2026 GMT",
        "subjectAltName": (("DNS", "his.hospital.example"), ("IP Address", "192.0.2.80")),
    }
    info = cert_info("his.hospital.example", peercert)
    assert info is not None
    assert info.names == ("his.hospital.example", "192.0.2.80")
    assert info.not_after - info.not_before == 30 * 86400
    assert cert_info("x", {}) is None  # CERT_NONE connections give an empty dict


# -- reasons in words ---------------------------------------------------------------------------


def test_tls_failures_say_what_is_wrong_with_the_certificate() -> None:
    where = "192.0.2.80:443"
    expired = tls_failure(
        _verification_error(10, "certificate has expired"),
        "his.hospital.example",
        where,
        _cert("his.hospital.example", -3.2),
    )
    assert expired == Failure(
        "tls_expired",
        "certificate for his.hospital.example expired 3 days ago - is the Pi's clock set? "
        "If it is, the hospital must renew it",
    )
    wrong = tls_failure(
        _verification_error(62, "Hostname mismatch"),
        "his.hospital.example",
        where,
        _cert("his.hospital.example", 20, ("other.example",)),
    )
    assert wrong.error == "tls_hostname"
    assert wrong.reason.startswith("wrong host: the certificate is for other.example")
    untrusted = tls_failure(
        _verification_error(20, "unable to get local issuer certificate"), "his", where, None
    )
    assert untrusted.error == "tls_untrusted" and "set ca_file" in untrusted.reason
    unknown_date = tls_failure(_verification_error(10, "expired"), "his", where, None)
    assert unknown_date.reason.startswith("certificate for his has expired - is the Pi's clock")
    not_tls = tls_failure(ssl.SSLError(1, "wrong version number"), "his", where, None)
    assert not_tls.error == "tls" and "is this the service's TLS port?" in not_tls.reason


def test_connection_failures_say_where_and_what_to_look_at() -> None:
    def failure(code: int, **keys: Any) -> Failure:
        exc = OSError(code, "whatever")
        if code == errno.ECONNREFUSED:
            exc = ConnectionRefusedError(code, "Connection refused")
        return connect_failure(
            exc, "192.0.2.80", 104, interface=keys.get("interface"), source=keys.get("source")
        )

    assert failure(errno.ECONNREFUSED) == Failure(
        "refused",
        "connection refused by 192.0.2.80:104 - the service is down or a firewall rejects it",
    )
    assert failure(errno.ENODEV, interface="wwan0").reason.startswith(
        "interface wwan0 does not exist"
    )
    assert failure(errno.EADDRNOTAVAIL, source="192.0.2.9").error == "source"
    assert failure(errno.ENETUNREACH, interface="eth0").reason.startswith(
        "no route to 192.0.2.80 via eth0"
    )
    assert failure(errno.EHOSTUNREACH).error == "unreachable"
    refused_v6 = connect_failure(
        ConnectionRefusedError(errno.ECONNREFUSED, "refused"),
        "2001:db8::80",
        104,
        interface=None,
        source=None,
    )
    assert "by [2001:db8::80]:104" in refused_v6.reason


def test_dns_answers_are_judged_by_rcode_type_and_expected_records() -> None:
    config = _dns(expect="192.0.2.80")
    a_80 = Record("A", "192.0.2.80", frozenset({"192.0.2.80"}))
    cname = Record("CNAME", "his.hospital.example", frozenset({"his.hospital.example"}))
    nxdomain = dns_probe.judge_answer(config, DnsAnswer("NXDOMAIN", (), False))
    assert nxdomain is not None and nxdomain.error == "rcode"
    assert nxdomain.reason.startswith("DNS NXDOMAIN for his.hospital.example from 192.0.2.53")
    nodata = dns_probe.judge_answer(config, DnsAnswer("NOERROR", (cname,), False))
    assert nodata is not None and nodata.error == "nodata"
    assert dns_probe.judge_answer(config, DnsAnswer("NOERROR", (cname, a_80), False)) is None
    other = Record("A", "192.0.2.81", frozenset({"192.0.2.81"}))
    wrong = dns_probe.judge_answer(config, DnsAnswer("NOERROR", (other,), False))
    assert wrong is not None and wrong.error == "answer"
    assert "is 192.0.2.81, without 192.0.2.80" in wrong.reason


def test_the_dns_timeout_names_the_server_and_the_time() -> None:
    probe = dns_probe.DnsProbe(_dns(timeout="5s"), site="s", agent="a")
    assert probe.timeout_reason(Trace()) == "no answer from 192.0.2.53 within 5s"
    other_port = dns_probe.DnsProbe(_dns(port=5353, timeout="2s"), site="s", agent="a")
    assert other_port.timeout_reason(Trace()) == "no answer from 192.0.2.53:5353 within 2s"


@pytest.mark.parametrize(
    ("rdtype", "text", "forms"),
    [
        ("A", "192.0.2.80", {"192.0.2.80"}),
        ("AAAA", "2001:db8:0::1", {"2001:db8::1"}),
        ("CNAME", "His.Hospital.Example.", {"his.hospital.example"}),
        ("MX", "10 Mail.Hospital.Example.", {"10 mail.hospital.example", "mail.hospital.example"}),
        (
            "SRV",
            "0 5 5060 sip.hospital.example.",
            {"0 5 5060 sip.hospital.example", "sip.hospital.example"},
        ),
        ("TXT", '"v=spf1 " "-all"', {"v=spf1 -all"}),
    ],
)
def test_each_record_type_can_be_expected_in_the_forms_the_docs_name(
    rdtype: str, text: str, forms: set[str]
) -> None:
    rdata = dns.rdata.from_text(dns.rdataclass.IN, dns.rdatatype.from_text(rdtype), text)
    assert _forms(rdtype, rdata)[1] == forms


# The quick reader of common DNS answers (A, AAAA, CNAME) must read exactly what dnspython reads:
# answers built record by record (owners in any case, compressed or not, repeated records, more
# than one CNAME for an owner), then cut short or with one byte changed. Whenever the quick
# reader answers, dnspython reads the same message to the same rcode and records.
_QNAME = "his.hospital.example"
_OWNERS = (_QNAME, "HIS.hospital.example", "cdn.hospital.example", "x-1.Edge.example")
_RECORD = st.one_of(
    st.tuples(
        st.sampled_from(_OWNERS),
        st.just(1),
        st.sampled_from([b"\xc0\x00\x02\x50", b"\x0a\0\0\x01"]),
    ),
    st.tuples(
        st.sampled_from(_OWNERS),
        st.just(28),
        st.sampled_from([bytes(15) + b"\x01", b"\x20\x01\x0d\xb8" + bytes(12)]),
    ),
    st.tuples(st.sampled_from(_OWNERS), st.just(5), st.sampled_from(_OWNERS)),
)


def _wire_name(name: str, compress: bool) -> bytes:
    if compress and name.lower() == _QNAME:
        return b"\xc0\x0c"  # the question's name, at offset 12
    return b"".join(bytes([len(label)]) + label.encode() for label in name.split(".")) + b"\0"


def _dns_answer(
    ident: int, rcode: int, records: list[tuple[str, int, Any]], edns: bool, compress: bool
) -> bytes:
    body = b""
    for owner, rdtype, rdata in records:
        data = _wire_name(rdata, compress) if rdtype == 5 else rdata
        body += _wire_name(owner, compress) + struct.pack("!HHIH", rdtype, 1, 300, len(data)) + data
    opt = b"\0" + struct.pack("!HHIH", 41, 1232, (rcode >> 4) << 24, 0) if edns else b""
    header = struct.pack("!6H", ident, 0x8180 | (rcode & 0xF), 1, len(records), 0, int(edns))
    return header + _wire_name(_QNAME, False) + b"\0\x01\0\x01" + body + opt


@settings(max_examples=300)
@given(
    ident=st.integers(0, 0xFFFF),
    rcode=st.sampled_from([0, 2, 3, 5, 16]),
    records=st.lists(_RECORD, max_size=6),
    edns=st.booleans(),
    compress=st.booleans(),
    cut=st.integers(0, 400),
    flip=st.tuples(st.integers(0, 400), st.integers(0, 255)),
)
def test_the_quick_dns_reader_reads_what_dnspython_reads(
    *,
    ident: int,
    rcode: int,
    records: list[tuple[str, int, Any]],
    edns: bool,
    compress: bool,
    cut: int,
    flip: tuple[int, int],
) -> None:
    client = DnsClient("192.0.2.53")
    query = client._query(_QNAME, "A")
    asked = dns.message.from_wire(ident.to_bytes(2, "big") + query.wire[2:])
    whole = _dns_answer(ident, rcode if edns else rcode & 0xF, records, edns, compress)
    changed = bytearray(whole)
    if flip[0] < len(changed):
        changed[flip[0]] = flip[1]
    assert _quick_records(whole, query, ident) is not None  # the common kind: read quickly
    for wire in (whole, whole[:cut], bytes(changed)):
        quick = _quick_records(wire, query, ident)
        if quick is None:
            continue
        reply = dns.message.from_wire(wire, ignore_trailing=True)
        assert asked.is_response(reply)
        assert quick == (dns.rcode.to_text(reply.rcode()), _dns_records(reply))


def test_dns_answers_the_quick_reader_leaves_to_dnspython() -> None:
    client = DnsClient("192.0.2.53")
    query = client._query(_QNAME, "A")
    plain = _dns_answer(7, 0, [(_QNAME, 1, b"\xc0\x00\x02\x50")], True, True)
    assert _quick_records(plain, query, 7) == (
        "NOERROR",
        (Record("A", "192.0.2.80", frozenset({"192.0.2.80"})),),
    )
    assert _quick_records(plain, query, 8) is None  # another id
    mx = _dns_answer(7, 0, [(_QNAME, 15, b"\0\x0a\xc0\x0c")], True, True)
    assert _quick_records(mx, query, 7) is None  # MX: dnspython's
    escaped = _dns_answer(7, 0, [(_QNAME, 5, "a b.example")], False, False)
    assert _quick_records(escaped, query, 7) is None  # a label dnspython writes escaped
    other_question = plain.replace(b"\x03his", b"\x03her")
    assert _quick_records(other_question, query, 7) is None
    # An owner that points forwards, to the name in its own record's data: dnspython refuses it.
    target = _wire_name("cdn.hospital.example", False)
    record = b"\xc0\x32" + struct.pack("!HHIH", 5, 1, 300, len(target)) + target
    forward = _dns_answer(7, 0, [], False, False)[:38] + record
    forward = forward[:6] + b"\0\x01" + forward[8:]
    with pytest.raises(dns.name.BadPointer):
        dns.message.from_wire(forward)
    assert _quick_records(forward, query, 7) is None


def test_http_status_reasons_by_class() -> None:
    def reason(status: int, expected: list[int] | None = None, **headers: str) -> str:
        return _status_reason(HIS, Answer(status, headers, b""), expected)

    assert reason(503) == f"HTTP 503 from {HIS} - the service answers but fails"
    assert "check the headers (credentials)" in reason(401)
    assert "no such page" in reason(404)
    assert "(redirect to /login)" in reason(302, location="/login")
    assert reason(200, [204]) == f"HTTP 200 from {HIS}, expected 204"


def test_slow_runs_and_expiring_certificates_warn() -> None:
    probe = HttpProbe(_http(slow_ms=100, cert_warn_days=14), site="s", agent="a")
    trace = Trace()
    trace.fields["status_code"] = 200
    trace.saw(_cert("his.hospital.example", 5))
    trace.end = trace.start + 0.250  # a 250 ms run
    probe.last, probe.last_status = trace, 200
    verdict = probe.verdict(Run([], 0.25))
    assert verdict.status is Status.WARN
    assert verdict.reason.startswith("slow: 250 ms, over this service's 100 ms (slow_ms)")
    assert "certificate for his.hospital.example expires in 5 days (warning at 14)" in (
        verdict.reason
    )
    assert verdict.baseline["duration_ms"] == pytest.approx(250)
    fast = Trace()
    fast.saw(_cert("his.hospital.example", 60))
    fast.end = fast.start + 0.020
    probe.last = fast
    ok = probe.verdict(Run([], 0.02))
    assert ok.status is Status.OK
    assert ok.reason == "HTTP 200 in 20 ms, certificate valid 60 more days"


def test_an_unusable_ca_file_fails_when_the_probe_is_built(tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("EXAMPLE ONLY - not a certificate.\n", encoding="utf-8")
    config = TcpServiceConfig.model_validate(
        {
            "name": "lab",
            "kind": "tcp",
            "address": "192.0.2.81",
            "port": 2762,
            "tls": True,
            "ca_file": str(ca),
        }
    )
    with pytest.raises(TlsSetupError, match="is it a PEM certificate"):
        tcp.TcpProbe(config, site="s", agent="a")
    assert TlsSetupError in tcp.KIND.setup_errors


def test_contexts_are_shared_per_ca_file() -> None:
    assert client_context(None) is client_context(None)
    diagnostic = client_context(None, diagnostic=True)
    assert diagnostic is not client_context(None)
    assert diagnostic.check_hostname is False
    assert diagnostic.verify_mode is ssl.CERT_REQUIRED


# -- reading HTTP -------------------------------------------------------------------------------


def _reader(data: bytes) -> asyncio.StreamReader:
    reader = asyncio.StreamReader()
    reader.feed_data(data)
    reader.feed_eof()
    return reader


def test_status_line_and_headers_are_read_with_repeated_headers_joined() -> None:
    status, headers = _parse_head(
        b"HTTP/1.1 301 Moved Permanently\r\nLocation: /new\r\nVary: a\r\nvary: b\r\n\r\n"
    )
    assert status == 301
    assert headers == {"location": "/new", "vary": "a, b"}
    with pytest.raises(http.ProtocolError, match="status line"):
        _parse_head(b"SSH-2.0-OpenSSH_9.2\r\n\r\n")


def test_bodies_are_read_whole_chunked_by_length_or_to_the_close() -> None:
    async def body(data: bytes, **headers: str) -> bytes:
        return await _read_body(_reader(data), headers)

    chunked = b"5;ext=1\r\nhello\r\n7\r\n, world\r\n0\r\nX-Trailer: 1\r\n\r\n"
    assert asyncio.run(body(chunked, **{"transfer-encoding": "chunked"})) == b"hello, world"
    assert asyncio.run(body(b"abcdefgh", **{"content-length": "5"})) == b"abcde"
    assert asyncio.run(body(b"until the end")) == b"until the end"
    with pytest.raises(asyncio.IncompleteReadError):
        asyncio.run(body(b"abc", **{"content-length": "10"}))
    big = b"x" * (http.BODY_KEEP + 1000)
    kept = asyncio.run(body(big, **{"content-length": str(len(big))}))
    assert len(kept) == http.BODY_KEEP  # all of it read, only the first MiB kept
