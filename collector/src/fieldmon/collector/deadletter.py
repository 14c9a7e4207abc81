"""Points the database refused as bad data, kept with the reason instead of blocking the queue."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path


class DeadLetterFile:
    """Append-only JSON-lines file: one refused point per line with the server's reason."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def append(self, lines: list[str], reason: str) -> None:
        """Record refused line-protocol points; blocking, call from a worker thread.

        fsync'd before it returns: the batch around these points is acknowledged next, so this
        file is then the only copy of them.
        """
        self.path.parent.mkdir(parents=True, exist_ok=True)
        now = time.time()
        with self.path.open("a", encoding="utf-8") as handle:
            for line in lines:
                handle.write(json.dumps({"at": now, "reason": reason, "line": line}) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
