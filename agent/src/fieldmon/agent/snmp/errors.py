"""SNMP errors: each names the device and what was being asked."""

from __future__ import annotations


class SnmpError(Exception):
    """A device answered with an error, or not in a way we could use."""


class SnmpTimeoutError(SnmpError):
    """No answer within the device's timeout and retries: dead, unreachable or wrong credentials."""


class CryptoBackendMissingError(RuntimeError):
    """SNMPv3 privacy is configured but the `cryptography` package is not installed."""


class ProfileError(ValueError):
    """A profile data file is missing or malformed; the message names the file and the key."""
