"""The Pi installs the agent part alone: wheels built here, versions from uv.lock, nothing else.

Builds the wheels of `fieldmon-agent` and the workspace parts it depends on, installs them into
an empty venv with exactly the third-party versions `uv.lock` pins for the agent, and runs the
installed `fieldmon-agent validate` and `check` against a real broker. None of the collector's
or the lab's libraries may be there.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from fieldmon.lab.servers import MosquittoServer

REPO = Path(__file__).resolve().parents[1]
AGENT_PARTS = ("fieldmon-core", "fieldmon-firmware-hooks", "fieldmon-agent")
# Imported by the collector or the lab, never by the agent; the Pi must not carry them.
NOT_ON_THE_PI = (
    "aiohttp",
    "influxdb_client",
    "prometheus_client",
    "rich",
    "fieldmon.collector",
    "fieldmon.lab",
)


def _uv() -> str:
    pinned = REPO / ".tools" / "uv" / "bin" / "uv"
    found = str(pinned) if pinned.is_file() else shutil.which("uv")
    assert found, "uv is not installed; run bash scripts/setup.sh"
    return found


def _run(*command: str | Path, cwd: Path = REPO) -> str:
    completed = subprocess.run(
        [str(part) for part in command],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        env={**os.environ, "UV_PYTHON_DOWNLOADS": "never", "VIRTUAL_ENV": ""},
    )
    assert completed.returncode == 0, f"{command}: {completed.stdout}{completed.stderr}"
    return completed.stdout


@pytest.fixture(scope="module")
def agent_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An empty venv holding only what `uv.lock` says the agent needs, from wheels built here."""
    work = tmp_path_factory.mktemp("pi")
    dist = work / "dist"
    uv = _uv()
    for part in AGENT_PARTS:
        _run(uv, "build", "--wheel", "--out-dir", dist, "--package", part)
    requirements = work / "requirements.txt"
    export = ("export", "--frozen", "--package", "fieldmon-agent", "--no-dev")
    _run(uv, *export, "--no-emit-workspace", "--no-header", "--output-file", requirements)
    venv = work / "venv"
    _run(uv, "venv", "--python", sys.executable, venv)
    python = venv / "bin" / "python"
    _run(uv, "pip", "install", "--python", python, "--require-hashes", "-r", requirements)
    wheels = sorted(dist.glob("*.whl"))
    assert len(wheels) == len(AGENT_PARTS), wheels
    _run(uv, "pip", "install", "--python", python, "--no-deps", *wheels)
    return venv


def test_the_agent_part_installs_only_what_the_lock_pins_for_it(agent_venv: Path) -> None:
    installed = json.loads(
        _run(_uv(), "pip", "list", "--python", agent_venv / "bin" / "python", "--format", "json")
    )
    names = {package["name"] for package in installed}
    assert set(AGENT_PARTS) <= names
    assert not names & {"fieldmon-collector", "fieldmon-lab", "aiohttp", "influxdb-client"}


def test_none_of_the_collectors_libraries_can_be_imported_on_the_pi(agent_venv: Path) -> None:
    probe = (
        "import importlib.util, json, sys\n"
        "def present(name):\n"
        "    try:\n"
        "        return importlib.util.find_spec(name) is not None\n"
        "    except ModuleNotFoundError:\n"
        "        return False\n"
        "print(json.dumps([name for name in sys.argv[1:] if present(name)]))\n"
    )
    output = _run(agent_venv / "bin" / "python", "-c", probe, *NOT_ON_THE_PI, cwd=agent_venv)
    assert json.loads(output) == []


def test_installed_validate_accepts_the_example_sites(agent_venv: Path) -> None:
    examples = sorted((REPO / "site_configs").glob("*.yaml"))
    # In shape: their secrets are placeholders, which validate refuses without --shape-only.
    output = _run(agent_venv / "bin" / "fieldmon-agent", "validate", "--shape-only", *examples)
    assert output.count("OK  ") == len(examples)


def test_installed_check_reaches_a_real_broker(
    agent_venv: Path, tmp_path: Path, mosquitto: MosquittoServer
) -> None:
    site = {
        "site": "pavilion-2",
        "name": "Field hospital - Pavilion 2",
        "parent_hospital": "hospital-central",
        "agent": {
            "id": "pavilion-2-pi1",
            "broker": {"host": "127.0.0.1", "port": mosquitto.port, "connect_timeout": "2s"},
            "outbox": {"path": str(tmp_path / "outbox.db")},
        },
        "links": [{"name": "gw", "address": "127.0.0.1", "role": "gateway", "count": 3}],
    }
    config = tmp_path / "site.yaml"
    config.write_text(json.dumps(site), encoding="utf-8")
    report = json.loads(
        _run(agent_venv / "bin" / "fieldmon-agent", "check", "--config", config, "--json")
    )
    statuses = {row["name"]: row["status"] for row in report["rows"]}
    assert statuses["gw"] == "OK"
    assert statuses["broker"] == "OK"
    assert report["ok"] is True
