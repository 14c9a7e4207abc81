"""The collector file's `retention:` section: how long raw rows live, the rollups kept longer."""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import Field, model_validator

from fieldmon.core.config.types import Duration, StrictModel, format_duration

DAY = 86400.0
DEFAULT_RAW = 30 * DAY
DEFAULT_ROLLUP_EVERY = 300.0
DEFAULT_ROLLUP_KEEP = 730 * DAY


class RollupLevel(StrictModel):
    """One rollup: every measurement summarised in `every`-long buckets, kept for `keep`."""

    every: Annotated[Duration, Field(ge=60, le=DAY)] = DEFAULT_ROLLUP_EVERY  # bucket width
    keep: Annotated[Duration, Field(ge=3600)] = DEFAULT_ROLLUP_KEEP  # how long its rows live
    # The retention policy (v1) or the bucket's suffix (v2); default rollup_<every>: rollup_5m.
    name: Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]{0,62}$")] | None = None

    @property
    def policy(self) -> str:
        """The retention policy's name (v1), and the suffix of the bucket's name (v2)."""
        return self.name or "rollup_" + re.sub(r"[^a-z0-9]", "_", format_duration(self.every))


class RetentionConfig(StrictModel):
    """Raw rows for `raw`, then only the rollups; `fieldmon-collector retention` applies it."""

    raw: Annotated[Duration, Field(ge=3600)] = DEFAULT_RAW  # the raw rows' retention
    rollups: list[RollupLevel] = Field(default_factory=lambda: [RollupLevel()])
    # Each continuous query (task) run recomputes its buckets this far back, so rows that
    # arrive late (an agent's outbox replaying an outage) are still rolled up; older ones need
    # `fieldmon-collector retention --backfill`.
    recompute: Annotated[Duration, Field(ge=60, le=7 * DAY)] = 3600.0

    @model_validator(mode="after")
    def _levels_grow(self) -> RetentionConfig:
        names = [level.policy for level in self.rollups]
        if len(set(names)) != len(names):
            raise ValueError(f"rollups need distinct names, not {names}")
        previous_every, previous_keep = 0.0, self.raw
        for level in self.rollups:
            if level.every <= previous_every:
                raise ValueError("each rollup's `every` must be longer than the one before")
            if level.keep <= previous_keep:
                raise ValueError(
                    f"rollup {level.policy} keeps {format_duration(level.keep)}: it must keep "
                    f"longer than {format_duration(previous_keep)} (raw rows, or the rollup "
                    "before), or it is never the one a dashboard reads"
                )
            previous_every, previous_keep = level.every, level.keep
        return self
