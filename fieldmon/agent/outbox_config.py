"""Config of the agent's on-disk outbox."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from pydantic import Field

from fieldmon.config.types import StrictModel


class OutboxConfig(StrictModel):
    """Where unacknowledged envelopes wait, and how much disk they may take."""

    path: Path = Path("/var/lib/fieldmon/outbox.db")
    max_mb: Annotated[float, Field(gt=0)] = 200.0
