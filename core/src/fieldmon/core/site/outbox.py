"""Config of the agent's on-disk outbox."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from pydantic import Field

from fieldmon.core.config.types import Duration, StrictModel

MIB = 1024 * 1024


class OutboxConfig(StrictModel):
    """Where unacknowledged envelopes wait, how much disk they may take, how fast they replay."""

    path: Path = Path("/var/lib/fieldmon/outbox.db")
    # Payload MiB kept; past it the oldest bulk envelopes are dropped and counted.
    max_mb: Annotated[float, Field(gt=0)] = 200.0
    # Most backlog envelopes replayed per second after a reconnect; live ones are not limited.
    # Below it the pace follows the uplink (the queue ahead of live data stays short); the
    # ceiling keeps a fast link from turning a drain into a CPU burst. 300/s replays a day of a
    # 100-link site in under 5 minutes.
    replay_rate: Annotated[float, Field(gt=0, le=10_000)] = 300.0
    # Envelopes created this recently when the link comes back count as live (fresh-first):
    # at least one round of every link at the site's usual intervals.
    fresh_window: Annotated[Duration, Field(gt=0, le=3600)] = 60.0

    @property
    def max_bytes(self) -> int:
        """`max_mb` in bytes."""
        return int(self.max_mb * MIB)
