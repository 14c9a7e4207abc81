"""Async SNMP GET and GETBULK column walks by numeric OID (asyncio, no MIB lookups).

SNMPv2c goes through our own lean codec and one shared UDP socket (fieldmon.agent.snmp.v2c):
pysnmp's generic pyasn1 decoding cost about 150 us of CPU per polled OID, several times what
the rest of a poll costs. SNMPv3 (USM keys, authentication, privacy) stays on pysnmp 7.

pysnmp's hlapi resolves every request var-bind against a MIB view (make_varbinds), which costs
CPU on each poll and 0.7 s of MIB loading on first use. We keep hlapi's target configuration
(LCD, auth and transport objects) but hand raw (OID, Null) pairs to the command generators,
so no MIB is ever loaded. Several table columns are walked together in one GETBULK stream.
"""

from __future__ import annotations

import asyncio
import hashlib
import importlib.util
import logging
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from pyasn1.type import univ
from pysnmp.entity.engine import SnmpEngine
from pysnmp.entity.rfc3413 import cmdgen
from pysnmp.hlapi.v3arch.asyncio import auth as hlauth
from pysnmp.hlapi.v3arch.asyncio.lcd import CommandGeneratorLcdConfigurator
from pysnmp.hlapi.v3arch.asyncio.transport import UdpTransportTarget
from pysnmp.proto import rfc1905
from pysnmp.proto.rfc1902 import ObjectName

from fieldmon.agent.snmp.errors import CryptoBackendMissingError, SnmpError, SnmpTimeoutError
from fieldmon.agent.snmp.v2c import V2cTarget, V2cTransport
from fieldmon.agent.snmp.values import Column, Value
from fieldmon.config.types import read_secret

if TYPE_CHECKING:
    # Only types: the probe module that defines them imports this one.
    from fieldmon.agent.probes.snmp import SnmpDeviceConfig

logger = logging.getLogger(__name__)


_LCD = CommandGeneratorLcdConfigurator()
_NULL = univ.Null("")
_EMPTY_CONTEXT = b""
_END_MARKERS = (rfc1905.NoSuchObject, rfc1905.NoSuchInstance, rfc1905.EndOfMibView)

_AUTH = {
    "md5": hlauth.usmHMACMD5AuthProtocol,
    "sha": hlauth.usmHMACSHAAuthProtocol,
    "sha224": hlauth.usmHMAC128SHA224AuthProtocol,
    "sha256": hlauth.usmHMAC192SHA256AuthProtocol,
    "sha384": hlauth.usmHMAC256SHA384AuthProtocol,
    "sha512": hlauth.usmHMAC384SHA512AuthProtocol,
}
_PRIV = {
    "des": hlauth.usmDESPrivProtocol,
    "aes": hlauth.usmAesCfb128Protocol,
    "aes192": hlauth.usmAesCfb192Protocol,
    "aes256": hlauth.usmAesCfb256Protocol,
}


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
    """pysnmp auth data for a device and the key of the SNMP engine it may share."""

    auth: hlauth.CommunityData | hlauth.UsmUserData
    # pysnmp keeps one USM entry per user name per engine (the last configured wins), so
    # devices whose v3 user shares a name but not its keys each need an engine of their own.
    engine_key: str
    community: bytes | None = None  # v2c only: what our own codec sends


def _digest(*parts: object) -> str:
    return hashlib.sha256(repr(parts).encode("utf-8")).hexdigest()[:16]


def auth_data(config: SnmpDeviceConfig) -> Credentials:
    """pysnmp credentials for a device: reads its secret files, checks the crypto backend."""
    device, credentials = config.name, config.snmp
    if credentials.version == "2c":
        community = read_secret(credentials.community_file)
        # pysnmp maps an answer's community back to the FIRST index configured with it and
        # drops the answer when that index differs from the request's: devices that share a
        # community (the usual case) must share one index, so it derives from the community.
        index = "fm-" + _digest(community)
        return Credentials(
            hlauth.CommunityData(index, community, mpModel=1), "v2c", community.encode("utf-8")
        )
    auth_key = read_secret(credentials.auth_key_file) if credentials.auth_key_file else None
    priv_key = read_secret(credentials.priv_key_file) if credentials.priv_key_file else None
    if credentials.priv is not None:
        require_crypto_backend(device)
    user = hlauth.UsmUserData(
        credentials.user,
        authKey=auth_key,
        privKey=priv_key,
        authProtocol=_AUTH[credentials.auth] if credentials.auth else hlauth.usmNoAuthProtocol,
        privProtocol=_PRIV[credentials.priv] if credentials.priv else hlauth.usmNoPrivProtocol,
    )
    key = _digest(credentials.user, credentials.auth, auth_key, credentials.priv, priv_key)
    return Credentials(user, f"v3-{key}")


def _python_value(value: Any) -> Value | None:
    if isinstance(value, _END_MARKERS):
        return None
    if isinstance(value, univ.Integer):  # Integer32, Counter32/64, Gauge32, TimeTicks
        return int(value)
    if isinstance(value, univ.OctetString):  # incl. IpAddress, Opaque
        return bytes(value)
    if isinstance(value, univ.ObjectIdentifier):
        return str(value)
    return None


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
        self._engines: dict[str, SnmpEngine] = {}
        self.max_repetitions = max_repetitions
        self.semaphore = asyncio.Semaphore(concurrency)
        self.requests = 0  # PDUs sent, for CPU-per-OID accounting
        self.varbinds = 0  # var-binds received, including a walk's overshoot past its columns
        self.values = 0  # values kept: the OIDs actually polled (CPU per OID divides by this)

    def engine(self, key: str) -> SnmpEngine:
        """The SNMP engine for one set of credentials (v2c devices all share one)."""
        if key not in self._engines:
            self._engines[key] = SnmpEngine()
        return self._engines[key]

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
        transport = await UdpTransportTarget.create(
            (config.address, config.snmp.port),
            timeout=config.snmp.timeout,
            retries=config.snmp.retries,
        )
        return PysnmpTarget(self, config.name, creds, transport)

    def close(self) -> None:
        """Close every socket."""
        self._v2c.close()
        for engine in self._engines.values():
            engine.close_dispatcher()
        self._engines.clear()


async def _resolve(host: str, port: int) -> tuple[int, tuple[str, int]]:
    """Address family and (address, port) for a device's address or name."""
    loop = asyncio.get_running_loop()
    try:
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_DGRAM)
    except socket.gaierror as exc:
        raise SnmpError(f"cannot resolve SNMP device address {host!r}: {exc}") from exc
    family, _type, _proto, _name, sockaddr = infos[0]
    return family, (str(sockaddr[0]), int(sockaddr[1]))


class PysnmpTarget:
    """GET and walk against one device; errors name the device and what was asked."""

    def __init__(
        self,
        client: SnmpClient,
        device: str,
        credentials: Credentials,
        transport: UdpTransportTarget,
    ) -> None:
        self.client = client
        self.device = device
        self._engine = client.engine(credentials.engine_key)
        self._auth = credentials.auth
        self._transport = transport

    def _configure(self) -> str:
        addr_name, _params = _LCD.configure(
            self._engine, self._auth, self._transport, _EMPTY_CONTEXT
        )
        return str(addr_name)

    async def _request(self, what: str, send: Any, *args: Any) -> tuple[Any, ...]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[tuple[Any, ...]] = loop.create_future()

        def done(_engine, _handle, indication, status, index, varbinds, _ctx) -> None:  # type: ignore[no-untyped-def]
            if not future.cancelled():
                future.set_result((indication, status, index, varbinds))

        async with self.client.semaphore:
            target = self._configure()
            send(self._engine, target, None, _EMPTY_CONTEXT, *args, done)
            indication, status, index, varbinds = await future
        self.client.requests += 1
        if indication:
            text = str(indication)
            if "timeout" in text.lower():
                raise SnmpTimeoutError(
                    f"{self.device}: {what}: no answer within "
                    f"{self._transport.timeout:g}s x {self._transport.retries + 1} tries"
                )
            raise SnmpError(f"{self.device}: {what}: {text}")
        if status:
            raise SnmpError(
                f"{self.device}: {what}: error-status {status.prettyPrint()} at {index}"
            )
        self.client.varbinds += len(varbinds)
        return tuple(varbinds)

    async def get(self, oids: Sequence[str]) -> dict[str, Value]:
        """GET scalars by numeric OID; objects the device lacks are left out of the result."""
        varbinds = [(ObjectName(oid), _NULL) for oid in oids]
        answer = await self._request(
            f"GET {len(oids)} OIDs", cmdgen.GetCommandGenerator().send_varbinds, varbinds
        )
        result: dict[str, Value] = {}
        for name, value in answer:
            converted = _python_value(value)
            if converted is not None:
                result[str(name)] = converted
        self.client.values += len(result)
        return result

    async def walk(
        self, columns: Sequence[str], *, max_repetitions: int | None = None
    ) -> dict[str, Column]:
        """Walk table columns together with GETBULK; {column OID: {index: value}}.

        Each column leaves the request once the agent answers past its subtree, so a short
        column does not drag the others' rows back with it.
        """
        repetitions = max_repetitions or self.client.max_repetitions
        roots = {column: ObjectName(column) for column in columns}
        result: dict[str, Column] = {column: {} for column in columns}
        cursor = dict(roots)  # column -> last OID seen
        while cursor:
            active = list(cursor)
            request = [(cursor[column], _NULL) for column in active]
            answer = await self._request(
                f"GETBULK {len(active)} columns from {active[0]}",
                cmdgen.BulkCommandGeneratorSingleRun().send_varbinds,
                0,
                repetitions,
                request,
            )
            self._absorb(answer, active, roots, cursor, result)
        self.client.values += sum(len(column) for column in result.values())
        return result

    @staticmethod
    def _absorb(
        answer: tuple[Any, ...],
        active: list[str],
        roots: dict[str, ObjectName],
        cursor: dict[str, ObjectName],
        result: dict[str, Column],
    ) -> None:
        width = len(active)
        finished: set[str] = set()
        progressed: set[str] = set()
        # GETBULK answers row-major: repetition r carries one var-bind per requested column.
        for position, (name, value) in enumerate(answer):
            column = active[position % width]
            if column in finished:
                continue
            root = roots[column]
            if isinstance(value, rfc1905.EndOfMibView) or not root.isPrefixOf(name):
                finished.add(column)
                continue
            if name <= cursor[column]:
                finished.add(column)  # not increasing: a broken agent; stop, do not loop
                continue
            cursor[column] = name
            progressed.add(column)
            converted = _python_value(value)
            if converted is not None:
                index = ".".join(str(part) for part in name[len(root) :])
                result[column][index] = converted
        for column in active:
            if column in finished or column not in progressed:
                cursor.pop(column, None)
