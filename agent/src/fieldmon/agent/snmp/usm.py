"""SNMPv3 (and, for comparison, v2c) through pysnmp 7: USM keys, authentication, privacy.

Imported only when a device needs it, so an agent whose devices all speak v2c never loads
pysnmp and pyasn1 (about 20 MB of resident memory on a Pi).

pysnmp's hlapi resolves every request var-bind against a MIB view (make_varbinds), which costs
CPU on each poll and 0.7 s of MIB loading on first use. We keep hlapi's target configuration
(LCD, auth and transport objects) but hand raw (OID, Null) pairs to the command generators,
so no MIB is ever loaded. Several table columns are walked together in one GETBULK stream.

AES-192 and AES-256 need a longer localized key than MD5 and SHA-1 give (and SHA-224, for
AES-256), and vendors stretch it in one of two ways. net-snmp's AES-192/AES-256 and the draft
(draft-blumenthal-aes-usm-04) append hashes of the key so far: pysnmp's
usmAesBlumenthalCfb192/256Protocol, our default. Cisco IOS (and net-snmp's AES-192-C/AES-256-C)
repeat password-to-key on the key (draft-reeder-snmpv3-usm-3desede): pysnmp's
usmAesCfb192/256Protocol, `aes_key_extension: reeder`. With SHA-256 and longer the hash is long
enough, nothing is stretched, and both name the same cipher.

A device refusing our user or keys answers with a REPORT naming a usmStats counter; pysnmp
hands it back as an error indication, and SnmpSecurityError says it in words. A device that
cannot decrypt a request usually says nothing at all (net-snmp drops it as unparseable), which
would look like a dead device: after a timeout we send one engine-discovery request, which needs
no keys, and an answer means the device is up but ignores what we encrypt.
"""

from __future__ import annotations

import asyncio
import secrets
import socket
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from pyasn1.type import univ
from pysnmp.entity.engine import SnmpEngine
from pysnmp.entity.rfc3413 import cmdgen
from pysnmp.hlapi.v3arch.asyncio import auth as hlauth
from pysnmp.hlapi.v3arch.asyncio.lcd import CommandGeneratorLcdConfigurator
from pysnmp.hlapi.v3arch.asyncio.transport import UdpTransportTarget
from pysnmp.proto import errind, rfc1905
from pysnmp.proto.rfc1902 import ObjectName

from fieldmon.agent.snmp import ber
from fieldmon.agent.snmp.errors import SnmpError, SnmpSecurityError, SnmpTimeoutError
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
    "aes192": hlauth.usmAesBlumenthalCfb192Protocol,
    "aes256": hlauth.usmAesBlumenthalCfb256Protocol,
}
_HASH_BYTES = {"md5": 16, "sha": 20, "sha224": 28, "sha256": 32, "sha384": 48, "sha512": 64}
_AES_KEY_BYTES = {"aes192": 24, "aes256": 32}
_PRIV_REEDER = {
    "aes192": hlauth.usmAesCfb192Protocol,
    "aes256": hlauth.usmAesCfb256Protocol,
}

# What a device's REPORT means, by the usmStats counter it names: (stage, problem, counter).
# `{user}` and `{level}` are filled in from the device's settings.
_REPORTS: tuple[tuple[type[errind.ErrorIndication], str, str, str], ...] = (
    (
        errind.WrongDigest,
        "authentication",
        "wrong auth key or auth protocol",
        "usmStatsWrongDigests",
    ),
    (
        errind.UnknownUserName,
        "authentication",
        "the device has no SNMPv3 user {user!r}",
        "usmStatsUnknownUserNames",
    ),
    (
        errind.UnsupportedSecurityLevel,
        "authentication",
        "user {user!r} on the device is not set up for {level} - "
        "give auth and priv exactly as the device's user has them",
        "usmStatsUnsupportedSecLevels",
    ),
    (
        errind.DecryptionError,
        "privacy",
        "wrong priv key or priv protocol",
        "usmStatsDecryptionErrors",
    ),
    (
        errind.NotInTimeWindow,
        "time synchronisation",
        "the device's engine boots and time did not settle (rebooting, or its clock jumps?)",
        "usmStatsNotInTimeWindows",
    ),
    (
        errind.UnknownEngineID,
        "engine discovery",
        "the device refused its own engine ID (another device answering at its address?)",
        "usmStatsUnknownEngineIDs",
    ),
)


def priv_protocol(credentials: SnmpV3Credentials) -> tuple[int, ...]:
    """pysnmp's privacy protocol for a device's `priv` and `aes_key_extension`."""
    if credentials.priv is None:
        return tuple(hlauth.usmNoPrivProtocol)
    if credentials.aes_key_extension == "reeder":
        return tuple(_PRIV_REEDER[credentials.priv])
    return tuple(_PRIV[credentials.priv])


def usm_user(
    credentials: SnmpV3Credentials, auth_key: str | None, priv_key: str | None
) -> hlauth.UsmUserData:
    """pysnmp's USM user for a device's v3 settings and keys."""
    return hlauth.UsmUserData(
        credentials.user,
        authKey=auth_key,
        privKey=priv_key,
        authProtocol=_AUTH[credentials.auth] if credentials.auth else hlauth.usmNoAuthProtocol,
        privProtocol=priv_protocol(credentials),
    )


def security_level(credentials: SnmpV3Credentials) -> str:
    """RFC 3411's name for the level a device's settings ask for."""
    if credentials.priv is not None:
        return "authPriv"
    return "authNoPriv" if credentials.auth is not None else "noAuthNoPriv"


def report_error(
    device: str, credentials: SnmpV3Credentials, indication: object
) -> SnmpSecurityError | None:
    """The words for a USM REPORT pysnmp handed back, or None when it is no such report."""
    for kind, stage, problem, counter in _REPORTS:
        if isinstance(indication, kind):
            words = problem.format(user=credentials.user, level=security_level(credentials))
            if stage == "privacy":
                words += _extension_hint(credentials)
            return SnmpSecurityError(device, stage, words, counter)
    return None


async def answers_discovery(address: tuple[str, int], wait: float) -> bool:
    """True when `address` answers an SNMPv3 engine-discovery request within `wait` seconds."""
    loop = asyncio.get_running_loop()
    message_id = secrets.randbelow(2**31)
    answered: asyncio.Future[bool] = loop.create_future()

    class Listener(asyncio.DatagramProtocol):
        def datagram_received(self, data: bytes, _addr: Any) -> None:
            try:
                ours = ber.v3_message_id(data) == message_id
            except ber.BerError:
                return  # not an SNMPv3 answer to us: keep waiting
            if ours and not answered.done():
                answered.set_result(True)

        def error_received(self, _exc: Exception) -> None:
            if not answered.done():
                answered.set_result(False)  # ICMP port unreachable: nothing listens there

    family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
    try:
        transport, _ = await loop.create_datagram_endpoint(
            Listener, remote_addr=address, family=family
        )
    except OSError:
        return False  # no route to it: as unanswered as a timeout
    try:
        transport.sendto(ber.encode_v3_discovery(message_id))
        return await asyncio.wait_for(answered, wait)
    except TimeoutError:
        return False
    finally:
        transport.close()


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
    v3 = config.snmp if isinstance(config.snmp, SnmpV3Credentials) else None
    return PysnmpTarget(client, config.name, engine, _auth(credentials), transport, v3=v3)


def key_is_stretched(credentials: SnmpV3Credentials) -> bool:
    """True when aes192/aes256 need a longer key than the auth hash gives: then the device's
    way of stretching it (aes_key_extension) matters."""
    needs = _AES_KEY_BYTES.get(credentials.priv or "")
    return needs is not None and _HASH_BYTES.get(credentials.auth or "", 0) < needs


def _extension_hint(credentials: SnmpV3Credentials) -> str:
    if not key_is_stretched(credentials):
        return ""
    if credentials.aes_key_extension == "reeder":
        return ", or a device that needs aes_key_extension: blumenthal (net-snmp)"
    return ", or a device that needs aes_key_extension: reeder (Cisco)"


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
        *,
        v3: SnmpV3Credentials | None = None,
    ) -> None:
        self.client = client
        self.device = device
        self._engine = engine
        self._auth = auth
        self._transport = transport
        self._v3 = v3  # the device's SNMPv3 settings, for errors in words; None for v2c
        self._answered = False  # the device has answered one of our requests: keys that work

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
            await self._raise_for(what, indication)
        self._answered = True
        if status:
            name = status.prettyPrint()
            if self._v3 is not None and name == "authorizationError":
                raise SnmpSecurityError(
                    self.device,
                    "access",
                    f"the device does not let user {self._v3.user!r} read at "
                    f"{security_level(self._v3)} - check its access rules (group, view, level)",
                    "authorizationError",
                )
            raise SnmpError(f"{self.device}: {what}: error-status {name} at {index}")
        self.client.varbinds += len(varbinds)
        return tuple(varbinds)

    async def _raise_for(self, what: str, indication: object) -> None:
        """Raise the error for pysnmp's error indication, in words where we know them."""
        if self._v3 is not None:
            report = report_error(self.device, self._v3, indication)
            if report is not None:
                raise report
        if not isinstance(indication, errind.RequestTimedOut):
            raise SnmpError(f"{self.device}: {what}: {indication}")
        # Silence after answers means a busy or vanished device, not wrong keys; before any
        # answer, a device that answers discovery is up and ignoring what we send it.
        if (
            self._v3 is not None
            and not self._answered
            and await answers_discovery(self._transport.transport_address, self._transport.timeout)
        ):
            if self._v3.priv is not None:
                raise SnmpSecurityError(
                    self.device,
                    "privacy",
                    "the device answers SNMPv3 but not our encrypted requests: wrong priv key "
                    "or priv protocol" + _extension_hint(self._v3),
                    "no answer",
                )
            raise SnmpSecurityError(
                self.device,
                "access",
                f"the device answers SNMPv3 but not user {self._v3.user!r}'s requests "
                "- check the user's settings on the device",
                "no answer",
            )
        raise SnmpTimeoutError(
            f"{self.device}: {what}: no answer within "
            f"{self._transport.timeout:g}s x {self._transport.retries + 1} tries"
        )

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
