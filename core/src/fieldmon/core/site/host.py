"""The agent's report on its own host: how often, and which filesystem holds the outbox."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from fieldmon.core.config.types import Duration, StrictModel


class HostConfig(StrictModel):
    """How often the agent reports on its own host."""

    interval: Annotated[Duration, Field(gt=0)] = 30.0
    disk_path: str = "/"  # the filesystem holding the outbox
