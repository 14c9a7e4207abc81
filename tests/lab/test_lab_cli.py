"""`fieldmon-lab up|status|impair|down` as a user runs them: separate processes, one state file."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

from fieldmon.lab.netns import run
from fieldmon.lab.process import script
from fieldmon.lab.topology import lab_namespaces

pytestmark = [
    pytest.mark.netns,
    pytest.mark.skipif(os.geteuid() != 0, reason="the lab creates namespaces (needs root)"),
]
LAB = script("fieldmon-lab")


def lab_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(LAB), *args],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
        env={**os.environ, "COLUMNS": "200"},
    )


def status(name: str, state_dir: Path) -> dict[str, Any]:
    completed = lab_cli("status", name, "--state-dir", str(state_dir), "--json")
    assert completed.returncode == 0, completed.stderr
    return dict(json.loads(completed.stdout))


def link_status(name: str, state_dir: Path, link: str) -> dict[str, Any]:
    return next(entry for entry in status(name, state_dir)["links"] if entry["link"] == link)


def answers(address: str) -> bool:
    return run(None, "fping", "-t", "300", "-r", "2", "-q", address, check=False).returncode == 0


def test_up_status_impair_down(tmp_path: Path) -> None:
    name = f"cli{os.getpid()}"
    where = ("--state-dir", str(tmp_path))
    try:
        up = lab_cli("up", name, "--site", "tent", *where)
        assert up.returncode == 0, up.stdout + up.stderr
        assert f"lab {name} is up" in up.stdout
        assert "tent/parent" in up.stdout and "ap-tent" in up.stdout  # the status tables

        # `up` has exited; the lab runs on, described by its state file.
        state = status(name, tmp_path)
        assert all(state["namespaces"].values())
        assert [d["device"] for d in state["devices"]] == ["uplink-router", "ap-tent"]
        assert all(d["running"] for d in state["devices"])
        parent = link_status(name, tmp_path, "tent/parent")
        assert answers(parent["address"])

        again = lab_cli("up", name, "--site", "tent", *where)
        assert again.returncode == 1 and f"lab '{name}' is already up" in again.stderr

        impair = lab_cli(
            "impair", "tent/parent", "--lab", name, *where,
            "--loss", "30", "--delay", "50ms", "--jitter", "10ms", "--rate", "1mbit",
        )  # fmt: skip
        assert impair.returncode == 0, impair.stderr
        assert "tent/parent: loss 30 %, delay 50 ms ± 10 ms, rate 1mbit" in impair.stdout
        parent = link_status(name, tmp_path, "tent/parent")
        assert (parent["loss_pct"], parent["delay_ms"], parent["jitter_ms"], parent["rate"]) == (
            30,
            50,
            10,
            "1mbit",
        )
        assert parent["echo_running"]  # the responder outlived the `impair` that started it
        rtts = run(None, "fping", "-C", "10", "-p", "100", "-q", parent["address"], check=False)
        values = rtts.stderr.split(" : ", 1)[1].split()
        answered = [float(v) for v in values if v != "-"]
        assert answered and min(answered) >= 39.5, values
        assert link_status(name, tmp_path, "tent/parent")["ipv4_packets_dropped"] == values.count(
            "-"
        )

        cut = lab_cli("impair", "tent/parent", "--lab", name, *where, "--cut", "--for", "1s")
        assert cut.returncode == 0, cut.stderr
        assert "tent/parent: cut" in cut.stdout and "after 1s: loss 30 %" in cut.stdout
        assert not link_status(name, tmp_path, "tent/parent")["cut"]  # put back as it was

        restore = lab_cli("impair", "tent/parent", "--lab", name, *where, "--restore")
        assert restore.returncode == 0, restore.stderr
        parent = link_status(name, tmp_path, "tent/parent")
        assert (parent["loss_pct"], parent["echo_running"], parent["rate"]) == (0, False, "10mbit")

        table = lab_cli("status", name, *where)
        assert table.returncode == 0 and "tent/internet" in table.stdout
    finally:
        down = lab_cli("down", name, *where)
    assert down.returncode == 0, down.stderr
    assert f"lab {name} is down" in down.stdout
    assert lab_namespaces(name) == []
    assert not (tmp_path / name).exists()


def test_mistakes_name_what_is_wrong(tmp_path: Path) -> None:
    where = ("--state-dir", str(tmp_path))
    missing = lab_cli("status", "nosuchlab", *where)
    assert missing.returncode == 1
    assert "lab 'nosuchlab' is not up" in missing.stderr and "no lab is up" in missing.stderr
    assert lab_cli("down", "nosuchlab", *where).returncode == 1
    bad_name = lab_cli("up", "Bad_Name", *where)
    assert bad_name.returncode == 1 and "lab name 'Bad_Name'" in bad_name.stderr
    bad_delay = lab_cli("impair", "a/parent", "--delay", "soon", *where)
    assert bad_delay.returncode == 2 and "'soon' is not a duration" in bad_delay.stderr
    bad_loss = lab_cli("impair", "a/parent", "--loss", "150", *where)
    assert bad_loss.returncode == 2 and "between 0 and 100" in bad_loss.stderr


def test_unknown_link_and_empty_impair_are_refused(tmp_path: Path) -> None:
    name = f"clj{os.getpid()}"
    where = ("--state-dir", str(tmp_path))
    assert lab_cli("up", name, "--site", "tent", *where).returncode == 0
    try:
        unknown = lab_cli("impair", "tent/satellite", "--lab", name, "--loss", "5", *where)
        assert unknown.returncode == 1
        assert "no link 'tent/satellite'" in unknown.stderr and "tent/parent" in unknown.stderr
        nothing = lab_cli("impair", "tent/parent", "--lab", name, *where)
        assert nothing.returncode == 1 and "say what to change" in nothing.stderr
        bad_rate = lab_cli("impair", "tent/parent", "--lab", name, "--rate", "fast", *where)
        assert bad_rate.returncode == 1 and "rate 'fast'" in bad_rate.stderr
    finally:
        assert lab_cli("down", name, *where).returncode == 0
