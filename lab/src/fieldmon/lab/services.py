"""Real DNS and web servers for the service probes: dnsmasq, nginx, a slow upstream, a test CA.

Each runs inside a network namespace the caller made (`ip netns exec`, which keeps the PID), from
a directory of its own, and is stopped by that PID. Readiness is the process itself holding its
listening socket, read from /proc/PID/net (the process's own namespace), never a sleep.

    ca = TestCa.create()
    ca.issue(tmp / "his", ["his.hospital.example"], days=30)
    with Namespace(unique_name("svc")) as ns:
        link = veth(None, ns)
        dns = DnsmasqServer(tmp / "dns", ns.name, str(link.b_v4.ip),
                            records=["host-record=his.hospital.example,198.18.0.2"]).start()
"""

from __future__ import annotations

import datetime
import ipaddress
import json
import os
import socket
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from fieldmon.lab.servers import _ServerProcess, udp_bound_by

DAY = datetime.timedelta(days=1)


# -- certificates -------------------------------------------------------------------------------


@dataclass(frozen=True)
class IssuedCert:
    """A leaf certificate and its key, as PEM files, and the dates it holds."""

    cert_file: Path
    key_file: Path
    not_before: datetime.datetime
    not_after: datetime.datetime


@dataclass(frozen=True)
class TestCa:
    """A throwaway CA (EC P-256) that issues server certificates for tests."""

    __test__ = False  # not a pytest test class, despite the name

    key: ec.EllipticCurvePrivateKey
    cert: x509.Certificate

    @classmethod
    def create(cls, name: str = "fieldmon test CA") -> TestCa:
        """A new CA, valid from yesterday for ten years."""
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        now = datetime.datetime.now(datetime.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - DAY)
            .not_valid_after(now + 3650 * DAY)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(
                x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False
            )
            .sign(key, hashes.SHA256())
        )
        return cls(key, cert)

    def write(self, path: Path) -> Path:
        """The CA certificate as a PEM file (what a probe's `ca_file` names)."""
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(self.cert.public_bytes(serialization.Encoding.PEM))
        return path

    def issue(
        self,
        stem: Path,
        names: Sequence[str],
        *,
        not_before: datetime.datetime | None = None,
        not_after: datetime.datetime | None = None,
        days: float = 30.0,
    ) -> IssuedCert:
        """A server certificate for `names` (DNS names or IP addresses), written to
        `stem`.crt and `stem`.key. By default valid from a day ago for `days` days from now;
        `not_after` in the past makes an expired one."""
        now = datetime.datetime.now(datetime.UTC)
        not_before = not_before or now - DAY
        not_after = not_after or now + datetime.timedelta(days=days)
        key = ec.generate_private_key(ec.SECP256R1())
        alt: list[x509.GeneralName] = []
        for name in names:
            try:
                alt.append(x509.IPAddress(ipaddress.ip_address(name)))
            except ValueError:
                alt.append(x509.DNSName(name))
        issuer_key_id = x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key())
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(not_before)
            .not_valid_after(not_after)
            .add_extension(x509.SubjectAlternativeName(alt), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(issuer_key_id, critical=False)
            .sign(self.key, hashes.SHA256())
        )
        stem.parent.mkdir(parents=True, exist_ok=True)
        cert_file, key_file = stem.with_suffix(".crt"), stem.with_suffix(".key")
        cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        key_file.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        os.chmod(key_file, 0o600)
        return IssuedCert(cert_file, key_file, not_before, not_after)


# -- readiness ----------------------------------------------------------------------------------


def tcp_listening_by(pid: int, port: int, host: str) -> bool:
    """True when process `pid` itself holds a listening TCP socket on host:port (IPv4 or IPv6),
    read from its own /proc/PID/net, so right also inside another network namespace."""
    if ":" in host:
        packed = socket.inet_pton(socket.AF_INET6, host)
        # /proc shows each 32-bit word of the address in host (little-endian) order.
        ip_hex = "".join(packed[i : i + 4][::-1].hex() for i in range(0, 16, 4)).upper()
        table_name = "tcp6"
    else:
        ip_hex = socket.inet_aton(host)[::-1].hex().upper()
        table_name = "tcp"
    wanted = f"{ip_hex}:{port:04X}"
    try:
        with open(f"/proc/{pid}/net/{table_name}", encoding="ascii") as table:
            inodes = {
                f"socket:[{fields[9]}]"
                for fields in (line.split() for line in table.readlines()[1:])
                if fields[1] == wanted and fields[3] == "0A"  # 0A: LISTEN
            }
        fds = Path(f"/proc/{pid}/fd")
        return any(os.readlink(fd) in inodes for fd in fds.iterdir()) if inodes else False
    except (FileNotFoundError, ProcessLookupError):
        return False


# -- servers ------------------------------------------------------------------------------------


class DnsmasqServer(_ServerProcess):
    """dnsmasq as an authoritative-only server for test records, on `address`:`port` inside
    `namespace`. `records` are dnsmasq option lines (`host-record=NAME,IPV4,IPV6`,
    `txt-record=...`, `mx-host=...`, `srv-host=...`, `cname=...`, `ptr-record=...`);
    names under `local_domains` that no record names get NXDOMAIN. No upstream, no DHCP, no
    /etc/hosts; logs (every query) to its output."""

    name = "dnsmasq"

    def __init__(
        self,
        directory: Path | str,
        namespace: str,
        address: str,
        *,
        records: Sequence[str] = (),
        local_domains: Sequence[str] = ("hospital.example",),
        port: int = 53,
        startup_timeout: float = 15.0,
    ) -> None:
        super().__init__(directory, startup_timeout=startup_timeout)
        self.namespace = namespace
        self.host = address
        self.port = port
        self._fixed_ports = True  # its own namespace: the port is free
        self.records = list(records)
        self.local_domains = list(local_domains)

    @property
    def config_path(self) -> Path:
        """The dnsmasq.conf written at each start."""
        return self.directory / "dnsmasq.conf"

    def config_text(self) -> str:
        """The configuration this server starts with."""
        lines = [
            "no-resolv",
            "no-poll",
            "no-hosts",
            "bind-interfaces",
            f"listen-address={self.host}",
            f"port={self.port}",
            "user=root",
            "log-facility=-",
            "log-queries",
            "pid-file=",
            *(f"local=/{domain}/" for domain in self.local_domains),
            *self.records,
        ]
        return "\n".join(lines) + "\n"

    def _choose_ports(self) -> None:
        pass

    def _prepare(self) -> list[str]:
        self.config_path.write_text(self.config_text(), encoding="utf-8")
        return [
            "ip",
            "netns",
            "exec",
            self.namespace,
            "dnsmasq",
            "--keep-in-foreground",
            f"--conf-file={self.config_path}",
        ]

    def _ready(self) -> bool:
        assert self.process is not None
        pid = self.process.pid
        return udp_bound_by(pid, self.port, self.host) and tcp_listening_by(
            pid, self.port, self.host
        )


class NginxServer(_ServerProcess):
    """nginx (one process: no master, no workers) inside `namespace`, serving the `server { }`
    blocks in `servers`; `listens` are the (address, port) pairs those blocks listen on, which
    readiness waits for. Its error log, pid and temporary files live in `directory`."""

    name = "nginx"

    def __init__(
        self,
        directory: Path | str,
        namespace: str,
        servers: str,
        listens: Sequence[tuple[str, int]],
        *,
        startup_timeout: float = 15.0,
    ) -> None:
        super().__init__(directory, startup_timeout=startup_timeout)
        self.namespace = namespace
        self.servers = servers
        self.listens = list(listens)
        self.host, self.port = self.listens[0]
        self._fixed_ports = True

    @property
    def config_path(self) -> Path:
        """The nginx.conf written at each start."""
        return self.directory / "nginx.conf"

    @property
    def log_path(self) -> Path:
        """nginx's error log."""
        return self.directory / "error.log"

    @property
    def _output_path(self) -> Path:
        return self.directory / "nginx.out"

    def config_text(self) -> str:
        """The nginx.conf this server starts with."""
        tmp = self.directory / "tmp"
        temp_paths = "\n".join(
            f"    {kind}_temp_path {tmp / kind};"
            for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
        )
        return f"""daemon off;
master_process off;
pid {self.directory / "nginx.pid"};
error_log {self.log_path} info;
events {{ worker_connections 256; }}
http {{
    access_log off;
    default_type text/plain;
{temp_paths}
{self.servers}
}}
"""

    def _choose_ports(self) -> None:
        pass

    def _prepare(self) -> list[str]:
        (self.directory / "tmp").mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(self.config_text(), encoding="utf-8")
        return [
            "ip",
            "netns",
            "exec",
            self.namespace,
            "nginx",
            "-p",
            str(self.directory),
            "-e",
            str(self.log_path),
            "-c",
            str(self.config_path),
        ]

    def _ready(self) -> bool:
        assert self.process is not None
        pid = self.process.pid
        return all(tcp_listening_by(pid, port, host) for host, port in self.listens)


class SlowUpstream(_ServerProcess):
    """`python -m fieldmon.lab.slow_http`: an HTTP/1.1 server in `namespace` that waits
    `delay_ms` (or the request's `?delay_ms=N`) before it answers, for nginx to proxy to. With
    `control`, `set(delay_ms=..., status=...)` changes how it answers while it runs."""

    name = "slow-upstream"

    def __init__(
        self,
        directory: Path | str,
        namespace: str,
        address: str,
        port: int,
        *,
        delay_ms: float = 300.0,
        control: Path | None = None,
        startup_timeout: float = 15.0,
    ) -> None:
        super().__init__(directory, startup_timeout=startup_timeout)
        self.namespace = namespace
        self.host = address
        self.port = port
        self.delay_ms = delay_ms
        self.control = control
        self._fixed_ports = True

    def set(self, *, delay_ms: float, status: int = 200) -> None:
        """From the next request on, wait `delay_ms` and answer `status` (needs `control`)."""
        if self.control is None:
            raise ValueError("this upstream was started without a control file")
        tmp = self.control.with_suffix(".tmp")
        tmp.write_text(json.dumps({"delay_ms": delay_ms, "status": status}), encoding="utf-8")
        tmp.replace(self.control)  # a request never reads half a file

    def _choose_ports(self) -> None:
        pass

    def _prepare(self) -> list[str]:
        return [
            "ip",
            "netns",
            "exec",
            self.namespace,
            sys.executable,
            "-m",
            "fieldmon.lab.slow_http",
            "--listen",
            f"{self.host}:{self.port}",
            "--delay-ms",
            str(self.delay_ms),
            *(["--control", str(self.control)] if self.control is not None else []),
        ]

    def _ready(self) -> bool:
        assert self.process is not None
        return tcp_listening_by(self.process.pid, self.port, self.host)
