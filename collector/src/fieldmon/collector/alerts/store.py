"""Alert engine state on disk: one JSON file, replaced atomically, so a restart resumes episodes.

Written whenever the engine is `dirty` (an alert fired or resolved, a last will, an outage
report). The write is blocking file I/O: from asyncio call it through `asyncio.to_thread`.
Streak counters are saved as of the last such change, so a restart may restart a streak in
progress (at most for_rounds - 1 rounds of extra delay); it never re-pages and never loses a
resolve, because the visible alert and whether it was paged are saved with it.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Any

from fieldmon.collector.alerts.engine import AlertEngine

logger = logging.getLogger(__name__)


class AlertStateError(Exception):
    """The state file exists but cannot be read back."""


class AlertStateStore:
    """Saves and loads `AlertEngine.snapshot()` documents at `path`."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)

    def save(self, snapshot: dict[str, Any]) -> None:
        """Write atomically: a crash leaves the old file or the new one, never half of one."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        data = json.dumps(snapshot, separators=(",", ":"), sort_keys=True).encode()
        fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", dir=self.path.parent)
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, self.path)
        except OSError:
            Path(tmp).unlink(missing_ok=True)
            raise
        _fsync_dir(self.path.parent)

    def load(self) -> dict[str, Any] | None:
        """The saved snapshot, or None when there is none yet."""
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return None
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise AlertStateError(f"{self.path}: not valid JSON: {exc}") from exc
        if not isinstance(data, dict):
            raise AlertStateError(f"{self.path}: expected a JSON object")
        return data

    def save_if_dirty(self, engine: AlertEngine) -> bool:
        """Save when the engine changed since the last snapshot; True when it wrote."""
        if not engine.dirty:
            return False
        self.save(engine.snapshot())
        return True

    def restore_into(self, engine: AlertEngine) -> bool:
        """Load the saved state into `engine`; True when there was one."""
        data = self.load()
        if data is None:
            return False
        try:
            engine.restore(data)
        except (KeyError, TypeError, ValueError) as exc:
            raise AlertStateError(f"{self.path}: cannot restore alert state: {exc}") from exc
        logger.info("alert state restored", extra={"path": str(self.path)})
        return True


def _fsync_dir(folder: Path) -> None:
    # The rename is durable only once the directory entry is on disk.
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
