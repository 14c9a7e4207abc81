"""Event hook scripts: where they live and how long one may run."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from pydantic import Field

from fieldmon.core.config.types import Duration, StrictModel


class HooksConfig(StrictModel):
    """Where the site's hook scripts live and how long one may run (docs/contract.md, Hooks)."""

    dir: Path  # every executable file in it runs per event; root's, writable by nobody else
    timeout: Annotated[Duration, Field(gt=0)] = 20.0  # per run; then its process group is killed
