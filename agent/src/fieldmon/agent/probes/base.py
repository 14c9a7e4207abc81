"""The probe contract: something with a name and an interval that collects samples."""

from __future__ import annotations

from typing import Protocol

from fieldmon.core.wire.models import Sample


class Probe(Protocol):
    """One target measured on its own interval; the scheduler times and judges each run."""

    name: str  # the target's name, used in logs
    interval: float  # seconds between the starts of two runs

    async def collect(self) -> list[Sample]:
        """Measure once. A dead target yields samples that say so, not an exception."""
        ...
