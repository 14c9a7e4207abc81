"""The dns, http and tcp probes against real servers in a field hospital of their own.

One network namespace per module, joined to the root namespace (the Pi) by a veth, runs
dnsmasq (the hospital's DNS: A, AAAA, CNAME, MX, TXT, SRV, PTR, NXDOMAIN, a TXT set too big
for UDP), nginx (HTTPS with a valid, an expired and a wrong-host certificate from a test CA,
redirects, a 503, plain HTTP that redirects to HTTPS) and a slow Python backend behind nginx.
The probes run in the root namespace, as the agent does, and the tests check what they report:
phases present and in order, status, certificate days left within a day of what was issued,
rcode and answers, the failure class and the words `check` shows.
"""

from __future__ import annotations

import asyncio
import datetime
import os
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from fieldmon.agent.check import check_probe
from fieldmon.agent.probes import dns, tcp
from fieldmon.agent.probes import http as http_probe
from fieldmon.agent.probes.base import Run, Status, Verdict
from fieldmon.agent.probes.registry import Planned
from fieldmon.agent.probes.service import ServiceProbe
from fieldmon.core.site.dns import DnsServiceConfig
from fieldmon.core.site.http import HttpServiceConfig
from fieldmon.core.site.tcp import TcpServiceConfig
from fieldmon.core.wire.models import FieldValue
from fieldmon.lab.netns import Namespace, VethPair, unique_name, veth
from fieldmon.lab.servers import stop_quietly
from fieldmon.lab.services import DnsmasqServer, IssuedCert, NginxServer, SlowUpstream, TestCa

pytestmark = [
    pytest.mark.integration,
    pytest.mark.netns,
    pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces need root"),
]

UPSTREAM_PORT = 8081  # inside the namespace, on its loopback
UPSTREAM_DELAY_MS = 300.0
BIG_TXT_RECORDS = 20  # 20 x 100 bytes: more than the 1232 bytes a UDP answer may carry
PHASES = ("dns_ms", "connect_ms", "tls_ms", "ttfb_ms", "duration_ms")


@dataclass
class Hospital:
    """The namespace, its servers and what the test CA issued."""

    ns: Namespace
    link: VethPair
    address: str  # the hospital's IPv4 address (dnsmasq and nginx)
    address6: str
    ca_file: Path
    certs: dict[str, IssuedCert]

    @property
    def resolver(self) -> str:
        """The hospital's DNS server."""
        return self.address


def _records(v4: str, v6: str) -> list[str]:
    big = [
        f"txt-record=big.hospital.example,{str(i).zfill(2) * 50}" for i in range(BIG_TXT_RECORDS)
    ]
    return [
        f"host-record=his.hospital.example,{v4},{v6}",
        f"host-record=expired.hospital.example,{v4}",
        f"host-record=wrong.hospital.example,{v4}",
        "cname=records.hospital.example,his.hospital.example",
        "mx-host=hospital.example,mail.hospital.example,10",
        'txt-record=hospital.example,"v=spf1 -all"',
        "srv-host=_sip._tcp.hospital.example,sip.hospital.example,5060,0,5",
        "ptr-record=10.2.0.192.in-addr.arpa,pacs.hospital.example",
        *big,
    ]


def _nginx_servers(v4: str, v6: str, certs: dict[str, IssuedCert]) -> str:
    def tls(name: str) -> str:
        cert = certs[name]
        return f"ssl_certificate {cert.cert_file}; ssl_certificate_key {cert.key_file};"

    return f"""
    server {{
        listen {v4}:80;
        location / {{ return 301 https://his.hospital.example$request_uri; }}
    }}
    server {{
        listen {v4}:443 ssl default_server;
        listen [{v6}]:443 ssl;
        server_name his.hospital.example;
        {tls("his")}
        location = /health {{ return 200 "status: ok\\n"; }}
        location = /broken {{ return 503 "down for maintenance\\n"; }}
        location = /old {{ return 301 /health; }}
        location = /loop {{ return 302 /loop; }}
        location /slow {{ proxy_pass http://127.0.0.1:{UPSTREAM_PORT}; }}
    }}
    server {{
        listen {v4}:443 ssl;
        server_name expired.hospital.example;
        {tls("expired")}
        location / {{ return 200 "ok\\n"; }}
    }}
    server {{
        listen {v4}:443 ssl;
        server_name wrong.hospital.example;
        {tls("wrong")}
        location / {{ return 200 "ok\\n"; }}
    }}
"""


@pytest.fixture(scope="module")
def hospital(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hospital]:
    tmp = tmp_path_factory.mktemp("hospital")
    ca = TestCa.create()
    now = datetime.datetime.now(datetime.UTC)
    certs = {
        "his": ca.issue(tmp / "his", ["his.hospital.example"], days=30),
        "expired": ca.issue(
            tmp / "expired",
            ["expired.hospital.example"],
            not_before=now - datetime.timedelta(days=33),
            not_after=now - datetime.timedelta(days=3),
        ),
        "wrong": ca.issue(tmp / "wrong", ["other.example"], days=30),
    }
    with Namespace(unique_name("svc")) as ns:
        link = veth(None, ns)
        v4, v6 = str(link.b_v4.ip), str(link.b_v6.ip)
        servers = []
        try:
            servers.append(DnsmasqServer(tmp / "dnsmasq", ns.name, v4, records=_records(v4, v6)))
            servers[-1].start()
            servers.append(
                SlowUpstream(
                    tmp / "upstream",
                    ns.name,
                    "127.0.0.1",
                    UPSTREAM_PORT,
                    delay_ms=UPSTREAM_DELAY_MS,
                )
            )
            servers[-1].start()
            listens = [(v4, 80), (v4, 443), (v6, 443)]
            servers.append(
                NginxServer(tmp / "nginx", ns.name, _nginx_servers(v4, v6, certs), listens)
            )
            servers[-1].start()
            yield Hospital(ns, link, v4, v6, ca.write(tmp / "ca.pem"), certs)
        finally:
            for server in reversed(servers):
                stop_quietly(server)


# -- helpers ------------------------------------------------------------------------------------


def _run(probe: ServiceProbe) -> tuple[dict[str, FieldValue], Verdict]:
    """One run of a probe: its row's fields and its verdict."""
    started = time.perf_counter()
    samples = asyncio.run(probe.collect())
    assert len(samples) == 1 and samples[0].measurement == "service"
    assert samples[0].tags["target"] == probe.name and samples[0].tags["kind"] == probe.kind
    return samples[0].fields, probe.verdict(Run(samples, time.perf_counter() - started))


def _dns(hospital: Hospital, **keys: Any) -> dns.DnsProbe:
    config = {"name": "hospital-dns", "kind": "dns", "server": hospital.resolver, **keys}
    config.setdefault("query", "his.hospital.example")
    return dns.DnsProbe(DnsServiceConfig.model_validate(config), site="field-1", agent="pi-1")


def _http(hospital: Hospital, url: str, **keys: Any) -> http_probe.HttpProbe:
    """A probe of `url` resolved by the hospital's DNS, trusting the test CA (ca_file=None:
    the system's store)."""
    config = {
        "name": "his",
        "kind": "http",
        "url": url,
        "resolver": hospital.resolver,
        "ca_file": str(hospital.ca_file),
        "timeout": "3s",
        **keys,
    }
    config = {key: value for key, value in config.items() if value is not None}
    return http_probe.HttpProbe(
        HttpServiceConfig.model_validate(config), site="field-1", agent="pi-1"
    )


def _tcp(**keys: Any) -> tcp.TcpProbe:
    config = {"name": "pacs", "kind": "tcp", "timeout": "3s", **keys}
    return tcp.TcpProbe(TcpServiceConfig.model_validate(config), site="field-1", agent="pi-1")


def _phases_in_order(fields: dict[str, FieldValue], *phases: str) -> list[float]:
    values = [fields[phase] for phase in (*phases, "duration_ms")]
    assert all(isinstance(value, float) and value >= 0 for value in values), fields
    assert values == sorted(values), (
        f"phases out of order: {dict(zip(phases, values, strict=False))}"
    )
    return values  # type: ignore[return-value]


# -- dns ----------------------------------------------------------------------------------------


def test_dns_a_and_aaaa_answers(hospital: Hospital) -> None:
    fields, verdict = _run(_dns(hospital, expect=hospital.address))
    assert fields["up"] is True and "error" not in fields
    assert (fields["rcode"], fields["answers"], fields["tcp"]) == ("NOERROR", 1, False)
    assert 0 < fields["duration_ms"] < 1000
    assert verdict.status is Status.OK
    assert verdict.reason.endswith(f": {hospital.address}")
    fields6, verdict6 = _run(_dns(hospital, type="AAAA", expect=hospital.address6))
    assert fields6["up"] is True and fields6["answers"] == 1
    assert verdict6.reason.endswith(f": {hospital.address6}")


def test_dns_nxdomain_fails_in_words(hospital: Hospital) -> None:
    fields, verdict = _run(_dns(hospital, query="nothere.hospital.example"))
    assert fields["up"] is False and fields["error"] == "rcode"
    assert (fields["rcode"], fields["answers"]) == ("NXDOMAIN", 0)
    assert verdict.status is Status.FAIL
    assert verdict.reason.startswith(
        f"DNS NXDOMAIN for nothere.hospital.example from {hospital.address} - "
    )


@pytest.mark.parametrize(
    ("rdtype", "query", "expect", "answers"),
    [
        ("CNAME", "records.hospital.example", "his.hospital.example", 1),
        ("A", "records.hospital.example", None, 2),  # the CNAME and the address it leads to
        ("MX", "hospital.example", "mail.hospital.example", 1),
        ("MX", "hospital.example", "10 mail.hospital.example", 1),
        ("TXT", "hospital.example", "v=spf1 -all", 1),
        ("SRV", "_sip._tcp.hospital.example", "0 5 5060 sip.hospital.example", 1),
        ("PTR", "192.0.2.10", "pacs.hospital.example", 1),
    ],
)
def test_dns_record_types(
    hospital: Hospital, rdtype: str, query: str, expect: str | None, answers: int
) -> None:
    keys = {"type": rdtype, "query": query} | ({"expect": expect} if expect else {})
    fields, verdict = _run(_dns(hospital, **keys))
    assert fields["up"] is True, verdict.reason
    assert fields["answers"] == answers
    assert verdict.status is Status.OK


def test_dns_a_missing_expected_answer_or_record_type_fails(hospital: Hospital) -> None:
    fields, verdict = _run(_dns(hospital, expect="198.18.255.1"))
    assert fields["error"] == "answer" and fields["rcode"] == "NOERROR"
    assert f"is {hospital.address}, without 198.18.255.1" in verdict.reason
    nodata, nodata_verdict = _run(_dns(hospital, type="AAAA", query="expired.hospital.example"))
    assert nodata["error"] == "nodata" and nodata["answers"] == 0
    assert nodata_verdict.reason.startswith("no AAAA record for expired.hospital.example")


def test_a_truncated_udp_answer_is_asked_again_over_tcp(hospital: Hospital) -> None:
    fields, verdict = _run(_dns(hospital, type="TXT", query="big.hospital.example"))
    assert fields["up"] is True, verdict.reason
    assert fields["tcp"] is True
    assert fields["answers"] == BIG_TXT_RECORDS
    assert "over TCP" in verdict.reason


def test_a_silent_dns_server_times_out_and_a_closed_port_refuses(hospital: Hospital) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:
        silent.bind(("127.0.0.1", 0))  # holds the port and never answers
        port = silent.getsockname()[1]
        probe = _dns(hospital, server="127.0.0.1", port=port, timeout="1s")
        fields, verdict = _run(probe)
    assert fields["up"] is False and fields["error"] == "timeout"
    assert "rcode" not in fields and "answers" not in fields
    assert 1000 <= fields["duration_ms"] < 1500
    assert verdict.reason == f"no answer from 127.0.0.1:{port} within 1s"
    refused, refused_verdict = _run(_dns(hospital, port=5354))
    assert refused["error"] == "refused"
    assert refused_verdict.reason.startswith(f"{hospital.address} refused the query on UDP port")


# -- http ---------------------------------------------------------------------------------------


def test_https_with_a_valid_certificate(hospital: Hospital) -> None:
    probe = _http(hospital, "https://his.hospital.example/health", body_contains="status: ok")
    fields, verdict = _run(probe)
    assert fields["up"] is True, verdict.reason
    assert fields["status_code"] == 200 and fields["redirects"] == 0
    dns_ms, connect_ms, tls_ms, ttfb_ms, total = _phases_in_order(fields, *PHASES[:-1])
    # On a veth each phase is quick: nothing here waits for a timer.
    assert total < 1000 and connect_ms - dns_ms < 200 and ttfb_ms - tls_ms < 200
    issued = hospital.certs["his"].not_after
    days = (issued - datetime.datetime.now(datetime.UTC)).total_seconds() / 86400
    assert abs(fields["cert_days_left"] - days) < 1 and 29 < fields["cert_days_left"] <= 30
    assert verdict.status is Status.OK
    assert verdict.reason.startswith("HTTP 200 in ")
    assert verdict.reason.endswith("certificate valid 30 more days")


def test_an_expired_certificate(hospital: Hospital) -> None:
    fields, verdict = _run(_http(hospital, "https://expired.hospital.example/"))
    assert fields["up"] is False and fields["error"] == "tls_expired"
    _phases_in_order(fields, "dns_ms", "connect_ms")
    assert "tls_ms" not in fields and "ttfb_ms" not in fields and "status_code" not in fields
    assert -4 < fields["cert_days_left"] <= -2.99  # issued to expire 3 days ago
    assert verdict.status is Status.FAIL
    assert verdict.reason == (
        "certificate for expired.hospital.example expired 3 days ago - is the Pi's clock set? "
        "If it is, the hospital must renew it"
    )


def test_a_certificate_for_another_host(hospital: Hospital) -> None:
    fields, verdict = _run(_http(hospital, "https://wrong.hospital.example/"))
    assert fields["error"] == "tls_hostname"
    assert 29 < fields["cert_days_left"] <= 30
    assert verdict.reason.startswith(
        "wrong host: the certificate is for other.example, not wrong.hospital.example"
    )


def test_a_certificate_from_a_ca_the_pi_does_not_trust(hospital: Hospital) -> None:
    fields, verdict = _run(_http(hospital, "https://his.hospital.example/health", ca_file=None))
    assert fields["error"] == "tls_untrusted"
    assert "cert_days_left" not in fields  # nothing vouches for what it says
    assert "set ca_file to the hospital's CA" in verdict.reason


def test_a_503_and_a_body_that_does_not_match(hospital: Hospital) -> None:
    fields, verdict = _run(_http(hospital, "https://his.hospital.example/broken"))
    assert fields["up"] is False and fields["error"] == "status" and fields["status_code"] == 503
    _phases_in_order(fields, *PHASES[:-1])  # it answered: every phase is there
    assert verdict.reason == (
        "HTTP 503 from https://his.hospital.example/broken - the service answers but fails"
    )
    body, body_verdict = _run(
        _http(hospital, "https://his.hospital.example/health", body_regex=r"status: (degraded|up)")
    )
    assert body["error"] == "body" and body["status_code"] == 200
    assert "does not match" in body_verdict.reason
    expected, _ = _run(
        _http(hospital, "https://his.hospital.example/broken", expect_status=[200, 503])
    )
    assert expected["up"] is True


def test_redirects_are_followed_up_to_the_limit(hospital: Hospital) -> None:
    fields, verdict = _run(_http(hospital, "https://his.hospital.example/old"))
    assert fields["up"] is True and fields["status_code"] == 200 and fields["redirects"] == 1
    _phases_in_order(fields, *PHASES[:-1])
    assert 0 < fields["redirect_ms"] < fields["duration_ms"]
    assert verdict.reason.startswith("HTTP 200 after 1 redirect in ")
    # Plain HTTP redirects to HTTPS: the final request's phases include TLS.
    upgraded, _ = _run(_http(hospital, "http://his.hospital.example/health"))
    assert upgraded["up"] is True and upgraded["redirects"] == 1
    _phases_in_order(upgraded, *PHASES[:-1])
    assert 29 < upgraded["cert_days_left"] <= 30
    untrusted, _ = _run(_http(hospital, "http://his.hospital.example/health", ca_file=None))
    assert untrusted["error"] == "tls_untrusted"  # the system's store lacks the test CA
    assert untrusted["redirects"] == 1 and "status_code" not in untrusted  # no final answer
    not_followed, _ = _run(_http(hospital, "http://his.hospital.example/health", max_redirects=0))
    assert not_followed["error"] == "status" and not_followed["status_code"] == 301
    wanted, _ = _run(_http(hospital, "http://his.hospital.example/health", expect_status=301))
    assert wanted["up"] is True and wanted["status_code"] == 301 and wanted["redirects"] == 0
    loop, loop_verdict = _run(_http(hospital, "https://his.hospital.example/loop", max_redirects=3))
    assert loop["error"] == "redirects" and loop["redirects"] == 3
    assert loop_verdict.reason.startswith("more than 3 redirects from")


def test_a_slow_backend_is_slow_and_a_stuck_one_times_out(hospital: Hospital) -> None:
    slow = _http(hospital, "https://his.hospital.example/slow", slow_ms=100, body_contains="fine")
    fields, verdict = _run(slow)
    assert fields["up"] is True, verdict.reason
    _dns_ms, _connect_ms, tls_ms, ttfb_ms, _total = _phases_in_order(fields, *PHASES[:-1])
    assert ttfb_ms - tls_ms >= UPSTREAM_DELAY_MS  # nginx waited for the backend
    assert ttfb_ms - tls_ms < UPSTREAM_DELAY_MS + 500
    assert verdict.status is Status.WARN
    assert verdict.reason.startswith("slow: ")
    assert "ms, over this service's 100 ms (slow_ms)" in verdict.reason
    stuck = _http(hospital, "https://his.hospital.example/slow?delay_ms=3000", timeout="1s")
    stuck_fields, stuck_verdict = _run(stuck)
    assert stuck_fields["error"] == "timeout"
    assert "tls_ms" in stuck_fields and "ttfb_ms" not in stuck_fields
    assert 1000 <= stuck_fields["duration_ms"] < 1500
    assert stuck_verdict.reason == (
        "https://his.hospital.example/slow?delay_ms=3000 sent no answer within 1s - "
        "the service is stuck or overloaded"
    )


def test_probes_share_the_event_loop_without_blocking_each_other(hospital: Hospital) -> None:
    slow = _http(hospital, "https://his.hospital.example/slow?delay_ms=1500")
    quick = [_dns(hospital), _tcp(address=hospital.address, port=443)]

    async def together() -> list[float]:
        done: list[float] = []
        started = time.perf_counter()

        async def timed(probe: ServiceProbe) -> None:
            await probe.collect()
            done.append(time.perf_counter() - started)

        await asyncio.gather(timed(slow), *(timed(probe) for probe in quick))
        return done

    finished = asyncio.run(together())
    assert len(finished) == 3
    assert max(finished[:2]) < 0.5  # the quick ones did not wait for the slow one
    assert finished[2] >= 1.5
    assert slow.last is not None and slow.last.up


# -- tcp ----------------------------------------------------------------------------------------


def test_tcp_closed_port_open_port_and_tls(hospital: Hospital) -> None:
    closed, closed_verdict = _run(_tcp(address=hospital.address, port=104))
    assert closed["up"] is False and closed["error"] == "refused"
    assert "connect_ms" not in closed
    assert closed_verdict.reason == (
        f"connection refused by {hospital.address}:104 - the service is down or a firewall "
        "rejects it"
    )
    plain, plain_verdict = _run(_tcp(address=hospital.address, port=80))
    assert plain["up"] is True and plain_verdict.reason.startswith("connected in ")
    _phases_in_order(plain, "connect_ms")
    secure, secure_verdict = _run(
        _tcp(
            address=hospital.address,
            port=443,
            tls=True,
            server_name="his.hospital.example",
            ca_file=str(hospital.ca_file),
        )
    )
    assert secure["up"] is True, secure_verdict.reason
    _phases_in_order(secure, "connect_ms", "tls_ms")
    assert 29 < secure["cert_days_left"] <= 30
    expired, expired_verdict = _run(
        _tcp(
            address=hospital.address,
            port=443,
            tls=True,
            server_name="expired.hospital.example",
            ca_file=str(hospital.ca_file),
            cert_warn_days=40,
        )
    )
    assert expired["error"] == "tls_expired" and -4 < expired["cert_days_left"] <= -2.99
    assert expired_verdict.reason.startswith("certificate for expired.hospital.example expired")
    not_tls, not_tls_verdict = _run(
        _tcp(address=hospital.address, port=80, tls=True, ca_file=str(hospital.ca_file))
    )
    assert not_tls["error"] == "tls" and "connect_ms" in not_tls
    assert "is this the service's TLS port?" in not_tls_verdict.reason


# -- source interface and address ---------------------------------------------------------------


def test_the_interface_and_source_address_are_the_ones_given(hospital: Hospital) -> None:
    link = hospital.link
    url = "https://his.hospital.example/health"
    via_veth, _ = _run(_http(hospital, url, interface=link.a_name))
    assert via_veth["up"] is True
    # Bound to loopback, the hospital is out of reach: the binding is really applied.
    via_lo, via_lo_verdict = _run(_tcp(address=hospital.address, port=443, interface="lo"))
    assert via_lo["up"] is False and via_lo["error"] in ("unreachable", "timeout"), via_lo_verdict
    missing, missing_verdict = _run(_tcp(address=hospital.address, port=443, interface="fm-none0"))
    assert missing["error"] == "interface"
    assert missing_verdict.reason.startswith("interface fm-none0 does not exist")
    from_a, _ = _run(_tcp(address=hospital.address, port=443, source=str(link.a_v4.ip)))
    assert from_a["up"] is True
    foreign, foreign_verdict = _run(_tcp(address=hospital.address, port=443, source="192.0.2.123"))
    assert foreign["error"] == "source"
    assert foreign_verdict.reason.startswith("source address 192.0.2.123 is not on this Pi")
    dns_via_lo, _ = _run(_dns(hospital, interface="lo", timeout="1s"))
    assert dns_via_lo["up"] is False


def test_ipv6_source_resolves_aaaa_and_connects_over_ipv6(hospital: Hospital) -> None:
    probe = _http(
        hospital, "https://his.hospital.example/health", source=str(hospital.link.a_v6.ip)
    )
    fields, verdict = _run(probe)
    assert fields["up"] is True, verdict.reason
    tcp6, _ = _run(_tcp(address=hospital.address6, port=443))
    assert tcp6["up"] is True


# -- the system's resolver ----------------------------------------------------------------------


class _Quiet(SimpleHTTPRequestHandler):
    def log_message(self, *_args: Any) -> None:
        pass


def test_the_systems_resolver_finds_localhost(tmp_path: Path) -> None:
    (tmp_path / "health").write_text("ok\n", encoding="utf-8")
    handler = lambda *args: _Quiet(*args, directory=str(tmp_path))  # noqa: E731
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    worker = threading.Thread(target=server.serve_forever, daemon=True)
    worker.start()
    try:
        port = server.server_address[1]
        config = {"name": "local", "kind": "http", "url": f"http://localhost:{port}/health"}
        probe = http_probe.HttpProbe(
            HttpServiceConfig.model_validate(config), site="field-1", agent="pi-1"
        )
        fields, verdict = _run(probe)
        # localhost may be ::1 first: the probe moves on to 127.0.0.1, as browsers do.
        assert fields["up"] is True, verdict.reason
        _phases_in_order(fields, "dns_ms", "connect_ms", "ttfb_ms")
        unknown = dict(config, url="http://no-such-host.invalid/")
        missing, missing_verdict = _run(
            http_probe.HttpProbe(HttpServiceConfig.model_validate(unknown), site="s", agent="a")
        )
        assert missing["error"] == "dns" and "dns_ms" not in missing
        assert missing_verdict.reason.startswith("cannot resolve no-such-host.invalid")
    finally:
        server.shutdown()
        server.server_close()


# -- what `check` shows -------------------------------------------------------------------------


def test_check_shows_each_service_in_words(hospital: Hospital) -> None:
    plans = [
        Planned(http_probe.KIND, probe.config, probe)
        for probe in (
            _http(hospital, "https://his.hospital.example/health"),
            _http(hospital, "https://his.hospital.example/broken"),
        )
    ]
    plans.append(Planned(tcp.KIND, (pacs := _tcp(address=hospital.address, port=104)).config, pacs))
    plans.append(Planned(dns.KIND, (resolver := _dns(hospital)).config, resolver))

    async def rows() -> list[Any]:
        return list(await asyncio.gather(*(check_probe(plan) for plan in plans)))

    health, broken, closed, name = asyncio.run(rows())
    assert (health.kind, health.status, health.target) == (
        "http",
        Status.OK,
        "https://his.hospital.example/health",
    )
    assert health.baseline["status_code"] == 200 and "tls_ms" in health.baseline
    assert (broken.status, broken.reason) == (
        Status.FAIL,
        "HTTP 503 from https://his.hospital.example/broken - the service answers but fails",
    )
    assert (closed.kind, closed.status, closed.target) == (
        "tcp",
        Status.FAIL,
        f"{hospital.address}:104",
    )
    assert closed.reason.startswith(f"connection refused by {hospital.address}:104")
    assert (name.kind, name.status, name.target) == (
        "dns",
        Status.OK,
        f"A his.hospital.example @{hospital.address}",
    )
