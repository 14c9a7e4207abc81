"""SNMPv3 (and, for comparison, v2c) through pysnmp 7: USM keys, authentication, privacy.

Imported only when a device needs it, so an agent whose devices all speak v2c never loads
pysnmp and pyasn1 (about 20 MB of resident memory on a Pi).

pysnmp's hlapi resolves every request var-bind against a MIB view (make_varbinds), which costs
CPU on each poll and 0.7 s of MIB loading on first use. We keep hlapi's target configuration
(LCD, auth and transport objects) but hand raw (OID, Null) pairs to the command generators,
so no MIB is ever loaded. Several table columns are walked together in one GETBULK stream.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from pyasn1.type import univ
from pysnmp.entity.engine import SnmpEngine
from pysnmp.entity.rfc3413 import cmdgen
from pysnmp.hlapi.v3arch.asyncio import auth as hlauth
from pysnmp.hlapi.v3arch.asyncio.lcd import CommandGeneratorLcdConfigurator
from pysnmp.hlapi.v3arch.asyncio.transport import UdpTransportTarget
from pysnmp.proto import rfc1905
from pysnmp.proto.rfc1902 import ObjectName

from fieldmon.agent.snmp.errors import SnmpError, SnmpTimeoutError
from fieldmon.agent.snmp.values import Column, Value
from fieldmon.core.site.snmp import SnmpDeviceConfig, SnmpV3Credentials

if TYPE_CHECKING:
    # A type only: the client imports this module lazily, when a device needs SNMPv3.
    from fieldmon.agent.snmp.client import Credentials, SnmpClient

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


def usm_user(
    credentials: SnmpV3Credentials, auth_key: str | None, priv_key: str | None
) -> hlauth.UsmUserData:
    """pysnmp's USM user for a device's v3 settings and keys."""
    return hlauth.UsmUserData(
        credentials.user,
        authKey=auth_key,
        privKey=priv_key,
        authProtocol=_AUTH[credentials.auth] if credentials.auth else hlauth.usmNoAuthProtocol,
        privProtocol=_PRIV[credentials.priv] if credentials.priv else hlauth.usmNoPrivProtocol,
    )


def _auth(credentials: Credentials) -> hlauth.CommunityData | hlauth.UsmUserData:
    if credentials.user is not None:
        return credentials.user
    assert credentials.community is not None and credentials.community_index is not None
    community = credentials.community.decode("utf-8")
    return hlauth.CommunityData(credentials.community_index, community, mpModel=1)


async def pysnmp_target(
    client: SnmpClient, config: SnmpDeviceConfig, credentials: Credentials
) -> PysnmpTarget:
    """A pysnmp handle on one device; its engine shared by devices with the same credentials."""
    engines = client.pysnmp_engines
    engine = engines.get(credentials.engine_key)
    if engine is None:
        engine = engines[credentials.engine_key] = SnmpEngine()
    transport = await UdpTransportTarget.create(
        (config.address, config.snmp.port),
        timeout=config.snmp.timeout,
        retries=config.snmp.retries,
    )
    return PysnmpTarget(client, config.name, engine, _auth(credentials), transport)


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


class PysnmpTarget:
    """GET and walk against one device; errors name the device and what was asked."""

    def __init__(
        self,
        client: SnmpClient,
        device: str,
        engine: SnmpEngine,
        auth: hlauth.CommunityData | hlauth.UsmUserData,
        transport: UdpTransportTarget,
    ) -> None:
        self.client = client
        self.device = device
        self._engine = engine
        self._auth = auth
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
