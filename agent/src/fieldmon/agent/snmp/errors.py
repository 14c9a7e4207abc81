"""SNMP errors: each names the device and what was being asked."""

from __future__ import annotations


class SnmpError(Exception):
    """A device answered with an error, or not in a way we could use."""


class SnmpTimeoutError(SnmpError):
    """No answer within the device's timeout and retries: dead, unreachable or wrong credentials."""


class SnmpSecurityError(SnmpError):
    """An SNMPv3 device refused our user, keys or protocols, said in words.

    The message reads "SNMPv3 authentication failed for uplink-router: wrong auth key or auth
    protocol (usmStatsWrongDigests)": `stage` (authentication, privacy, access, ...), `device`,
    `problem` and `evidence`, which is the usmStats counter the device's REPORT named, an
    error-status, or "no answer" when it answers engine discovery but ignores our requests.
    """

    def __init__(self, device: str, stage: str, problem: str, evidence: str) -> None:
        super().__init__(f"SNMPv3 {stage} failed for {device}: {problem} ({evidence})")
        self.device = device
        self.stage = stage
        self.problem = problem
        self.evidence = evidence


class CryptoBackendMissingError(RuntimeError):
    """SNMPv3 privacy is configured but the `cryptography` package is not installed."""


class ProfileError(ValueError):
    """A profile data file is missing or malformed; the message names the file and the key."""
