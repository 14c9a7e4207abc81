"""Health of the agent's own host (psutil) and Pi firmware.

Emits `host` (tags: site, agent | fields: cpu_pct, mem_pct, disk_pct, temp_c, undervoltage,
throttled, outbox_depth, uptime_s).
"""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from fieldmon.config.types import Duration, StrictModel


class HostConfig(StrictModel):
    """How often the agent reports on its own host."""

    interval: Annotated[Duration, Field(gt=0)] = 30.0
    disk_path: str = "/"  # the filesystem holding the outbox
