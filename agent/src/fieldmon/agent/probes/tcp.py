"""TCP services: does host:port accept a connection, and (optionally) complete a TLS handshake?

For services that speak no HTTP (DICOM on 104, HL7, a database): connect, optionally shake hands
with TLS and check the certificate, then close. A host name is resolved by the system's resolver
first (`dns_ms`). Phases are milliseconds since the run started, each the end of its phase.

Emits one `service` row per run, timestamped at the run's start (ns since the epoch):
- tags: site, agent, target (the service's name), kind (`tcp`)
- fields: up (bool), duration_ms (float, the whole run, up to its failure if it failed),
  dns_ms (float, a host name's resolution; left out for an address), connect_ms (float, TCP
  connected), tls_ms (float, TLS handshake done; with `tls: true`), cert_days_left (float days
  until the server certificate expires, negative once it has; with `tls: true`), error (string,
  the failure class, only when up is false: timeout, dns, refused, unreachable, reset,
  interface, permission, source, network, tls, tls_expired, tls_not_yet_valid, tls_hostname,
  tls_untrusted, tls_invalid). A phase the run did not reach is left out.
"""

from __future__ import annotations

import socket
import ssl

from fieldmon.agent.probes.base import ProbeKind, ProbeResources
from fieldmon.agent.probes.netconn import (
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
from fieldmon.core.site.service import is_ip_literal
from fieldmon.core.site.tcp import TcpServiceConfig


class TcpProbe(ServiceProbe):
    """Connects to one TCP service each run; with `tls`, also checks its certificate."""

    kind = "tcp"
    config: TcpServiceConfig

    def __init__(self, config: TcpServiceConfig, *, site: str, agent: str) -> None:
        super().__init__(config, site=site, agent=agent)
        # Loaded here, so an unusable CA file fails at start-up (TlsSetupError), not per run.
        self._context = client_context(config.ca_file) if config.tls else None
        self._address = config.address if is_ip_literal(config.address) else None

    async def measure(self, trace: Trace) -> None:
        """Resolve (a name), connect, shake hands (TLS), close."""
        config = self.config
        addresses = [self._address] if self._address else await self._resolve(trace)
        if not addresses:
            return

        def trying(address: str) -> None:
            trace.stage = f"connecting to {host_port(address, config.port)}"

        connection = None
        try:
            try:
                connection = await connect_first(
                    addresses,
                    config.port,
                    interface=config.interface,
                    source=config.source,
                    trying=trying,
                )
            except ConnectError as exc:
                trace.fail(
                    connect_failure(
                        exc.error,
                        exc.address,
                        config.port,
                        interface=config.interface,
                        source=config.source,
                    )
                )
                return
            trace.mark("connect_ms")
            if self._context is None:
                trace.done()
                return
            address = connection.address
            where = host_port(address, config.port)
            trace.stage = f"TLS handshake with {where}"
            try:
                trace.saw(await connection.start_tls(self._context, config.tls_name))
            except ssl.SSLError as exc:
                trace.fail(tls_failure(exc, config.tls_name, where, None))
                await self._diagnose(trace, exc, address)
                return
            except OSError as exc:
                trace.fail(
                    connect_failure(
                        exc, address, config.port, interface=config.interface, source=config.source
                    )
                )
                return
            trace.mark("tls_ms")
            trace.done()
        finally:
            if connection is not None:
                connection.close(graceful=trace.up)

    async def _resolve(self, trace: Trace) -> list[str]:
        config = self.config
        trace.stage = f"resolving {config.address}"
        try:
            addresses = await resolve(config.address, config.port, source=config.source)
        except socket.gaierror as exc:
            trace.fail(
                Failure(
                    "dns",
                    f"cannot resolve {config.address} ({exc.strerror}) - check the name and "
                    "this Pi's DNS",
                )
            )
            return []
        trace.mark("dns_ms")
        return addresses

    async def _diagnose(self, trace: Trace, exc: ssl.SSLError, address: str) -> None:
        """After a failed verification: what the certificate says, for the reason and the row."""
        if not isinstance(exc, ssl.SSLCertVerificationError):
            return
        config = self.config
        cert = await diagnose(
            address,
            config.port,
            config.tls_name,
            config.ca_file,
            interface=config.interface,
            source=config.source,
        )
        if cert is not None:
            trace.saw(cert)
            where = host_port(address, config.port)
            trace.failure = tls_failure(exc, config.tls_name, where, cert)

    def timeout_reason(self, trace: Trace) -> str:
        """No connection, or no end to the handshake, within the timeout."""
        timeout = f"{self.config.timeout:g}s"
        stage = trace.stage
        if stage.startswith("resolving"):
            return f"could not resolve {self.config.address} within {timeout} - is DNS reachable?"
        if stage.startswith("TLS"):
            return f"{stage} did not finish within {timeout} - is this the service's TLS port?"
        return (
            f"no answer from {host_port(self._address or self.config.address, self.config.port)}"
            f" within {timeout} - a firewall drops the connection, or the host is down"
        )

    def ok_reason(self, trace: Trace) -> str:
        """`connected in 0.4 ms, TLS in 3.1 ms, certificate valid 41 more days`."""
        words = f"connected in {trace.phases.get('connect_ms', 0.0):.1f} ms"
        if "tls_ms" in trace.phases:
            words += f", TLS done at {trace.phases['tls_ms']:.1f} ms"
        return words + cert_words(trace.cert)


def _build(service: TcpServiceConfig, site: SiteConfig, _resources: ProbeResources) -> TcpProbe:
    return TcpProbe(service, site=site.site, agent=site.agent.id)


def _target(service: TcpServiceConfig) -> str:
    where = host_port(service.address, service.port)
    if service.tls:
        where += f" (TLS {service.tls_name})" if service.server_name else " (TLS)"
    return where if service.interface is None else f"{where} via {service.interface}"


KIND = ProbeKind(
    name="tcp",
    config_model=TcpServiceConfig,
    site_section="services",
    probe=TcpProbe,
    measurements=("service",),
    build=_build,
    label="tcp",
    target=_target,
    setup_errors=(TlsSetupError, OSError),  # an unusable or unreadable CA file
)
