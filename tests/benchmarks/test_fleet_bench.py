"""bench/fleet's smallest configuration, briefly, so the fleet simulator cannot rot."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench import fleet

pytestmark = pytest.mark.integration


def test_a_small_fleet_is_written_acknowledged_and_measured(tmp_path: Path) -> None:
    output = tmp_path / "fleet.json"
    smallest = ["--sites", "4", "--ingest", "1", "--replaying", "1", "--quick", "--no-disk"]
    code = fleet.main([*smallest, "--json", str(output)])
    assert code == 0
    (result,) = json.loads(output.read_text())
    assert result["sites"] == 4
    # 4 sites commit 10 samples a second each; the replaying one adds its joined backlog.
    assert 30 <= result["live_samples_per_s_committed"] <= 50
    assert result["backlog_samples_per_s_acked"] > 0
    assert result["backlog_messages_left"] == 0
    assert result["stored_over_offered"] >= 0.9
    assert result["live_envelopes_unacked_at_end"] == 0
    p95 = result["lag_p95"]
    assert p95.endswith(" s") and 0 < float(p95.removesuffix(" s")) < 5, p95
    assert result["cores_ingest1"] > 0 and result["rss_mb_alerts"] > 0
