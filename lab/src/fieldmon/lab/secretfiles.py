"""Secret files for tests, benchmarks and the demo: private (0600) as the daemons require, and
remembered, so the test suite can prove that none of them appears in a log (tests/leakcheck.py).
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

# Every secret value written (or registered) by this process.
_written: set[str] = set()


def remember_secret(value: str) -> str:
    """Count `value` as a secret that must never be logged; returns it."""
    _written.add(value)
    return value


def written_secrets() -> frozenset[str]:
    """Every secret written or remembered so far by this process."""
    return frozenset(_written)


def new_secret(what: str = "secret") -> str:
    """A fresh, unmistakable test secret: `test-{what}-` and 24 hex digits."""
    return remember_secret(f"test-{what}-{secrets.token_hex(12)}")


def write_secret(path: Path, value: str | None = None, *, remember: bool = True) -> str:
    """Write `value` (a fresh `new_secret()` when None) and a newline to `path`, mode 0600 (also
    when the file existed with another mode); returns the value.

    `remember=False` for a value that is not secret in the tests' world and would turn up in logs
    for good reasons (a lab's well-known SNMP community).
    """
    value = new_secret(path.stem.replace(".", "-")) if value is None else value
    if remember:
        remember_secret(value)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w", encoding="utf-8") as file:
        file.write(value + "\n")
    path.chmod(0o600)  # O_CREAT's mode only applies to a new file
    return value
