"""Why a connection to the broker failed, in plain words: shared by both daemons and `check`.

An expired or wrong-host certificate is not "cannot reach the broker": each failure names its
cause and the setting or fact that fixes it (the clock, `broker.host`, `broker.tls.ca_file`,
the client certificate). `Phrasing` says where the settings live (`agent.broker` in a site file,
`broker` in the collector's) and whether the broker's address may be named: /healthz names none.
"""

from __future__ import annotations

import socket
import ssl
from dataclasses import dataclass

from fieldmon.core.mqtt.settings import BrokerConfig


@dataclass(frozen=True)
class Phrasing:
    """How reasons are worded for one reader."""

    section: str = "broker"  # the settings' path in the config file: agent.broker, broker
    machine: str = "this machine"  # whose clock to suspect: "the Pi" on the agent
    name_address: bool = True  # False: never name host or port (for /healthz)


AGENT = Phrasing(section="agent.broker", machine="the Pi")
COLLECTOR = Phrasing(section="broker")

# What a peer's TLS alert (seen as the text of an SSLError, often only on the first read after
# the handshake with TLS 1.3) says about our client certificate.
_CLIENT_CERTIFICATE_ALERTS = (
    ("certificate required", "the broker requires a client certificate - set {s}.tls.cert_file "
     "and {s}.tls.key_file"),
    ("unknown ca", "the broker does not trust this client certificate (signed by a CA it does "
     "not know) - check {s}.tls.cert_file"),
    ("certificate expired", "the broker refused this client certificate as expired - is "
     "{m}'s clock set? If it is, the certificate must be renewed"),
    ("certificate revoked", "the broker refused this client certificate: it is revoked"),
    ("bad certificate", "the broker refused this client certificate - check {s}.tls.cert_file "
     "and {s}.tls.key_file"),
)  # fmt: skip


def _where(config: BrokerConfig, phrasing: Phrasing) -> str:
    return f"{config.host}:{config.port}" if phrasing.name_address else "the broker's address"


def _host(config: BrokerConfig, phrasing: Phrasing) -> str:
    return repr(config.host) if phrasing.name_address else "the configured host name"


def peer_alert_reason(text: str, phrasing: Phrasing = COLLECTOR) -> str | None:
    """The reason for a TLS alert the broker sent about our client certificate, if `text` (an
    SSLError's text, or paho's log line carrying it) is one; None otherwise."""
    lowered = text.lower().replace("_", " ")
    if "alert" not in lowered:
        return None
    for needle, template in _CLIENT_CERTIFICATE_ALERTS:
        if needle in lowered:
            return "broker TLS: " + template.format(s=phrasing.section, m=phrasing.machine)
    return None


def _verify_reason(message: str, config: BrokerConfig, phrasing: Phrasing) -> str:
    section, machine = phrasing.section, phrasing.machine
    if "not yet valid" in message:
        return f"broker TLS: certificate not yet valid - is {machine}'s clock set?"
    if "expired" in message:
        return (
            f"broker TLS: certificate has expired - is {machine}'s clock set? "
            "If it is, the NOC must renew the broker certificate"
        )
    if "mismatch" in message.lower():
        return (
            f"broker TLS: the certificate is not for {_host(config, phrasing)} - check "
            f"{section}.host (use the name the certificate was issued to)"
        )
    if "issuer" in message or "self-signed" in message or "self signed" in message:
        return (
            f"broker TLS: the broker's certificate is not signed by a CA we trust ({message}) "
            f"- check {section}.tls.ca_file (the CA that signed the broker's certificate)"
        )
    return f"broker TLS verify failed ({message}) - check {section}.tls.ca_file"


def tls_reason(exc: ssl.SSLError, config: BrokerConfig, phrasing: Phrasing = COLLECTOR) -> str:
    """Expired, not yet valid, wrong host, unknown CA, client certificate refused, or no TLS."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return _verify_reason(exc.verify_message or str(exc), config, phrasing)
    alert = peer_alert_reason(str(exc), phrasing)
    if alert is not None:
        return alert
    return (
        f"broker TLS handshake failed ({exc.reason or exc}) - is {_where(config, phrasing)} "
        "the broker's TLS port? Plain MQTT is usually 1883, MQTT over TLS 8883"
    )


def timeout_reason(config: BrokerConfig, phrasing: Phrasing = COLLECTOR) -> str:
    """No answer within connect_timeout."""
    return (
        f"no answer from {_where(config, phrasing)} within {config.connect_timeout:g}s - "
        "a firewall dropping the connection, or the wrong address?"
    )


def closed_reason(config: BrokerConfig, phrasing: Phrasing = COLLECTOR) -> str:
    """The broker closed the connection before its CONNACK.

    Over TLS 1.3 a broker that refuses our client certificate does so after the handshake, with
    an alert the client only sometimes gets to read (when the CONNACK-less close wins the race,
    the alert is lost): without it, the hint names the client certificate all the same.
    """
    where, section = _where(config, phrasing), phrasing.section
    if config.tls is None:
        return (
            f"broker at {where} closed the connection before answering - is this a TLS-only "
            f"port? Then configure {section}.tls"
        )
    if config.tls.cert_file is None:
        return (
            f"broker at {where} closed the TLS connection before answering - does it require a "
            f"client certificate? Then set {section}.tls.cert_file and {section}.tls.key_file "
            "(or is this not its TLS listener?)"
        )
    return (
        f"broker at {where} closed the TLS connection before answering - does it accept this "
        f"client certificate? Check {section}.tls.cert_file against the broker's CA (or is this "
        "not its TLS listener?)"
    )


def _socket_reason(exc: BaseException, config: BrokerConfig, phrasing: Phrasing) -> str:
    if isinstance(exc, ConnectionRefusedError):
        return (
            f"nothing listens on {_where(config, phrasing)} - is the broker running / the port "
            "right?"
        )
    if isinstance(exc, socket.gaierror):
        return (
            f"cannot resolve broker name {_host(config, phrasing)} ({exc.strerror}) - check "
            f"{phrasing.section}.host and {phrasing.machine}'s DNS"
        )
    if isinstance(exc, OSError):
        return f"cannot connect to {_where(config, phrasing)}: {exc.strerror or exc}"
    return f"cannot connect to {_where(config, phrasing)}: {type(exc).__name__}: {exc}"


def connect_failure_reason(
    exc: BaseException, config: BrokerConfig, phrasing: Phrasing = COLLECTOR
) -> str:
    """Why connecting failed, for any exception paho's connect or handshake raises."""
    if isinstance(exc, ssl.SSLError):
        return tls_reason(exc, config, phrasing)
    if isinstance(exc, TimeoutError):
        return timeout_reason(config, phrasing)
    if isinstance(exc, ConnectionResetError | BrokenPipeError):
        return closed_reason(config, phrasing)
    return _socket_reason(exc, config, phrasing)
