"""A DNS service: which resolver to ask, for which name and record type, and what must come back."""

from __future__ import annotations

import ipaddress
from enum import StrEnum
from typing import Annotated, Literal

from pydantic import BeforeValidator, Field, ValidationInfo, field_validator, model_validator

from fieldmon.core.config.errors import FieldValueError
from fieldmon.core.site.service import ServiceConfig, host_name, ip_literal, is_ip_literal


class RecordType(StrEnum):
    """The record types a DNS service may ask for."""

    A = "A"
    AAAA = "AAAA"
    CNAME = "CNAME"
    MX = "MX"
    NS = "NS"
    PTR = "PTR"
    SOA = "SOA"
    SRV = "SRV"
    TXT = "TXT"


def _upper(value: object) -> object:
    return value.upper() if isinstance(value, str) else value


def _as_list(value: object) -> object:
    return [value] if isinstance(value, str) else value


class DnsServiceConfig(ServiceConfig):
    """Asks `server` for `query`'s `type` records over UDP (TCP when the answer is truncated)."""

    kind: Literal["dns"]
    server: str  # the resolver asked: an IPv4 or IPv6 literal
    port: Annotated[int, Field(ge=1, le=65535)] = 53
    type: Annotated[RecordType, BeforeValidator(_upper)] = RecordType.A  # the record type asked
    query: str  # the name asked for; for PTR an IP address may be given instead
    # Answers that must all be among the records: an address for A / AAAA, a name for
    # CNAME / NS / PTR, `10 mx.example` or just `mx.example` for MX, the target (or
    # `priority weight port target`) for SRV, the text for TXT. Unset: any answer will do.
    expect: Annotated[list[str], BeforeValidator(_as_list), Field(min_length=1)] | None = None

    @field_validator("server")
    @classmethod
    def _server_address(cls, value: str) -> str:
        return ip_literal(value)

    @model_validator(mode="after")
    def _source_family(self) -> DnsServiceConfig:
        if self.source is not None and (":" in self.source) != (":" in self.server):
            raise FieldValueError(
                ("source",),
                f"{self.source} and the server {self.server} are not both IPv4 or both IPv6",
            )
        return self

    @field_validator("query")
    @classmethod
    def _query_name(cls, value: str, info: ValidationInfo) -> str:
        if info.data.get("type") is RecordType.PTR and is_ip_literal(value):
            return ip_literal(value)  # the probe asks for its reverse name (in-addr.arpa)
        return host_name(value)

    @field_validator("expect")
    @classmethod
    def _expected_answers(cls, values: list[str] | None, info: ValidationInfo) -> list[str] | None:
        kind = info.data.get("type")
        if values is None or kind is None:
            return values
        return [_expected(kind, index, value) for index, value in enumerate(values)]


def _expected(kind: RecordType, index: int, value: str) -> str:
    """One expected answer in the form the probe compares it."""
    value = str(value).strip()
    if kind in (RecordType.A, RecordType.AAAA):
        version = 4 if kind is RecordType.A else 6
        try:
            address = ipaddress.ip_address(value)
        except ValueError:
            address = None
        if address is None or address.version != version:
            raise FieldValueError(
                (index,), f"{value!r} is not an IPv{version} address, which {kind} records hold"
            )
        return str(address)
    if kind is RecordType.TXT:
        return value
    # Names: no case, no trailing dot, single spaces (MX `10  mx.example.` -> `10 mx.example`).
    return " ".join(value.lower().split()).rstrip(".")
