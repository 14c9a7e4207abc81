"""The slow backend (fieldmon.lab.slow_http) on loopback: its delay, and the control file that
makes it slower or failing while it runs."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from fieldmon.lab.process import http_get, start, wait_http
from fieldmon.lab.servers import free_port


def _timed_get(url: str) -> tuple[int, bytes, float]:
    started = time.monotonic()
    status, body = http_get(url)
    return status, body, time.monotonic() - started


def test_control_file_changes_delay_and_status_while_it_runs(tmp_path: Path) -> None:
    port = free_port()
    control = tmp_path / "control.json"
    url = f"http://127.0.0.1:{port}/health"
    command = [sys.executable, "-m", "fieldmon.lab.slow_http", "--listen", f"127.0.0.1:{port}",
               "--delay-ms", "0", "--control", str(control)]  # fmt: skip
    with start(command, tmp_path / "slow.log") as backend:
        # No control file yet: the command line's delay and 200.
        assert wait_http(url, timeout=20, daemons=backend) == b"slow but fine\n"
        control.write_text(json.dumps({"delay_ms": 400}), encoding="utf-8")
        status, body, took = _timed_get(url)
        assert (status, body) == (200, b"slow but fine\n") and took >= 0.4
        control.write_text(json.dumps({"delay_ms": 0, "status": 503}), encoding="utf-8")
        status, body, took = _timed_get(url)
        assert (status, body) == (503, b"Service Unavailable\n") and took < 0.4
        # A request's own ?delay_ms still wins over the file.
        status, _, took = _timed_get(f"{url}?delay_ms=300")
        assert status == 503 and took >= 0.3
        control.write_text("not json", encoding="utf-8")
        assert http_get(url) == (200, b"slow but fine\n")
