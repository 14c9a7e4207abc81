"""Async SNMP GET and GETBULK column walks by numeric OID (asyncio, no MIB lookups).

SNMPv2c goes through our own lean codec and one shared UDP socket (fieldmon.agent.snmp.v2c):
pysnmp's generic pyasn1 decoding cost about 150 us of CPU per polled OID, several times what
the rest of a poll costs. SNMPv3 (USM keys, authentication, privacy) goes through pysnmp 7
(fieldmon.agent.snmp.usm), imported only when a device needs it.
"""

from __future__ import annotations

import asyncio
import hashlib
import importlib.util
import logging
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from fieldmon.agent.snmp.errors import CryptoBackendMissingError, SnmpError
from fieldmon.agent.snmp.v2c import V2cTarget, V2cTransport
from fieldmon.agent.snmp.values import Column, Value
from fieldmon.core.config.types import read_secret
from fieldmon.core.site.snmp import SnmpDeviceConfig

logger = logging.getLogger(__name__)


def require_crypto_backend(device: str) -> None:
    """Raise CryptoBackendMissingError when SNMPv3 privacy is configured but cannot work.

    pysnmp imports `cryptography` lazily and only fails on the first encrypted packet, which
    would look like a silent timeout in the field; we check at start-up instead.
    """
    if importlib.util.find_spec("cryptography") is None:
        raise CryptoBackendMissingError(
            f"SNMP device {device}: SNMPv3 privacy (priv) needs the Python package "
            "'cryptography', which is not installed: pip install cryptography"
        )


@dataclass(frozen=True)
class Credentials:
    """A device's credentials (v2c community, or a pysnmp v3 user) and its engine key."""

    # pysnmp keeps one USM entry per user name per engine (the last configured wins), so
    # devices whose v3 user shares a name but not its keys each need an engine of their own.
    engine_key: str
    community: bytes | None = None  # v2c
    # pysnmp maps an answer's community back to the FIRST index configured with it and drops
    # the answer when that index differs from the request's: devices that share a community
    # (the usual case) must share one index, so it derives from the community.
    community_index: str | None = None  # v2c through pysnmp
    user: Any = None  # v3: pysnmp's UsmUserData


def _digest(*parts: object) -> str:
    return hashlib.sha256(repr(parts).encode("utf-8")).hexdigest()[:16]


def auth_data(config: SnmpDeviceConfig) -> Credentials:
    """A device's credentials: reads its secret files, checks the crypto backend for v3."""
    device, credentials = config.name, config.snmp
    if credentials.version == "2c":
        community = read_secret(credentials.community_file)
        return Credentials("v2c", community.encode("utf-8"), "fm-" + _digest(community))
    auth_key = read_secret(credentials.auth_key_file) if credentials.auth_key_file else None
    priv_key = read_secret(credentials.priv_key_file) if credentials.priv_key_file else None
    if credentials.priv is not None:
        require_crypto_backend(device)
    from fieldmon.agent.snmp import usm

    key = _digest(
        credentials.user,
        credentials.auth,
        auth_key,
        credentials.priv,
        credentials.aes_key_extension,
        priv_key,
    )
    return Credentials(f"v3-{key}", user=usm.usm_user(credentials, auth_key, priv_key))


class SnmpTarget(Protocol):
    """One device: GET scalars and walk columns by numeric OID."""

    client: SnmpClient
    device: str

    async def get(self, oids: Sequence[str]) -> dict[str, Value]:
        """GET scalars; objects the device lacks are left out of the result."""
        ...

    async def walk(
        self, columns: Sequence[str], *, max_repetitions: int | None = None
    ) -> dict[str, Column]:
        """Walk table columns together; {column OID: {index: value}}."""
        ...


class SnmpClient:
    """What every device shares: the v2c socket, pysnmp engines for v3, a limit in flight.

    `pysnmp_v2c` sends v2c through pysnmp as well (the benchmark's comparison, a fallback).
    """

    def __init__(
        self, *, concurrency: int = 16, max_repetitions: int = 25, pysnmp_v2c: bool = False
    ) -> None:
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        self.pysnmp_v2c = pysnmp_v2c
        self._v2c = V2cTransport()
        self.pysnmp_engines: dict[str, Any] = {}  # engine key -> pysnmp SnmpEngine
        self.max_repetitions = max_repetitions
        self.semaphore = asyncio.Semaphore(concurrency)
        self.requests = 0  # PDUs sent, for CPU-per-OID accounting
        self.varbinds = 0  # var-binds received, including a walk's overshoot past its columns
        self.values = 0  # values kept: the OIDs actually polled (CPU per OID divides by this)

    async def target(
        self, config: SnmpDeviceConfig, credentials: Credentials | None = None
    ) -> SnmpTarget:
        """A handle on one device (`credentials` from auth_data() at start-up, or read now)."""
        creds = credentials if credentials is not None else auth_data(config)
        if creds.community is not None and not self.pysnmp_v2c:
            family, address = await _resolve(config.address, config.snmp.port)
            return V2cTarget(
                self,
                config.name,
                self._v2c,
                family,
                address,
                creds.community,
                config.snmp.timeout,
                config.snmp.retries,
            )
        from fieldmon.agent.snmp import usm

        return await usm.pysnmp_target(self, config, creds)

    def close(self) -> None:
        """Close every socket."""
        self._v2c.close()
        for engine in self.pysnmp_engines.values():
            engine.close_dispatcher()
        self.pysnmp_engines.clear()


async def _resolve(host: str, port: int) -> tuple[int, tuple[str, int]]:
    """Address family and (address, port) for a device's address or name."""
    loop = asyncio.get_running_loop()
    try:
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_DGRAM)
    except socket.gaierror as exc:
        raise SnmpError(f"cannot resolve SNMP device address {host!r}: {exc}") from exc
    family, _type, _proto, _name, sockaddr = infos[0]
    return family, (str(sockaddr[0]), int(sockaddr[1]))
