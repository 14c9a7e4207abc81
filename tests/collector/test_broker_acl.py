"""`fieldmon-collector broker-acl`: the broker's ACL and password files from site_configs.

What the generated files let a login do on a real Mosquitto is tests/security/test_broker.py.
"""

from __future__ import annotations

import base64
import hashlib
import stat
import subprocess
from pathlib import Path

import pytest

from fieldmon.collector import brokeracl
from fieldmon.collector.config import CollectorBrokerConfig, load_collector_config
from fieldmon.collector.inventory import load_inventory
from fieldmon.lab.process import script
from fieldmon.lab.secretfiles import write_secret

REPO = Path(__file__).resolve().parents[2]


def _site(folder: Path, site: str, agent: str) -> None:
    (folder / f"{site}.yaml").write_text(
        f"site: {site}\nname: Hall\nparent_hospital: central\n"
        f"agent: {{id: {agent}, broker: {{host: 127.0.0.1}}}}\n",
        encoding="utf-8",
    )


@pytest.fixture
def noc(tmp_path: Path) -> Path:
    """A collector file, its password file and two site files."""
    sites = tmp_path / "site_configs"
    sites.mkdir()
    _site(sites, "pavilion-2", "pavilion-2-pi1")
    _site(sites, "school-gym", "school-gym-pi1")
    write_secret(tmp_path / "collector.pass")
    (tmp_path / "collector.yaml").write_text(
        "broker: {host: 127.0.0.1, username: collector, password_file: collector.pass}\n"
        "influxdb: {api: v1, url: 'http://127.0.0.1:8086', database: fieldmon}\n"
        "site_configs: ./site_configs\n",
        encoding="utf-8",
    )
    return tmp_path


def _broker(noc: Path) -> CollectorBrokerConfig:
    return load_collector_config(noc / "collector.yaml").broker


def test_every_agent_gets_exactly_its_own_topics(noc: Path) -> None:
    text = brokeracl.agents_acl(load_inventory(noc / "site_configs"))
    rules = [line for line in text.splitlines() if line and not line.startswith("#")]
    assert rules == [
        "user pavilion-2-pi1",
        "topic write fieldmon/v1/pavilion-2/pavilion-2-pi1/samples",
        "topic write fieldmon/v1/pavilion-2/pavilion-2-pi1/status",
        "topic write fieldmon/v1/pavilion-2/pavilion-2-pi1/events",
        "topic read fieldmon/v1/pavilion-2/pavilion-2-pi1/ack",
        "user school-gym-pi1",
        "topic write fieldmon/v1/school-gym/school-gym-pi1/samples",
        "topic write fieldmon/v1/school-gym/school-gym-pi1/status",
        "topic write fieldmon/v1/school-gym/school-gym-pi1/events",
        "topic read fieldmon/v1/school-gym/school-gym-pi1/ack",
    ]
    assert not any("+" in rule or "#" in rule or "%" in rule for rule in rules)


def test_password_lines_are_mosquittos_own_format() -> None:
    salt = bytes(range(12))
    line = brokeracl.password_line("pi1", "secret", salt=salt)
    user, _, hashed = line.partition(":")
    _, kind, iterations, salt_b64, digest_b64 = hashed.split("$")
    assert (user, kind, int(iterations)) == ("pi1", "7", 101)
    assert base64.b64decode(salt_b64) == salt
    expected = hashlib.pbkdf2_hmac("sha512", b"secret", salt, 101)
    assert base64.b64decode(digest_b64) == expected


def test_files_secrets_and_modes(noc: Path) -> None:
    out = noc / "broker"
    files = brokeracl.write_broker_files(load_inventory(noc / "site_configs"), _broker(noc), out)
    assert files.agents == ["pavilion-2-pi1", "school-gym-pi1"]
    assert [path.name for path in files.new_secrets] == [
        "pavilion-2-pi1.mqtt.pass",
        "school-gym-pi1.mqtt.pass",
    ]
    for path in files.new_secrets:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert len(path.read_text().strip()) >= 40
    assert stat.S_IMODE((out / "secrets").stat().st_mode) == 0o700
    assert stat.S_IMODE((out / "agents.passwd").stat().st_mode) == 0o640
    assert (out / "collector.passwd").read_text().startswith("collector:$7$101$")
    assert "user collector\n" in (out / "collector.acl").read_text()
    assert not list(out.glob(".*.tmp"))


def test_a_rerun_keeps_every_password_and_adds_only_new_agents(noc: Path) -> None:
    out = noc / "broker"
    brokeracl.write_broker_files(load_inventory(noc / "site_configs"), _broker(noc), out)
    before = {path.name: path.read_text() for path in (out / "secrets").iterdir()}
    (noc / "site_configs" / "school-gym.yaml").unlink()
    _site(noc / "site_configs", "tent-3", "tent-3-pi1")
    files = brokeracl.write_broker_files(load_inventory(noc / "site_configs"), _broker(noc), out)
    assert [path.name for path in files.new_secrets] == ["tent-3-pi1.mqtt.pass"]
    assert [path.name for path in files.stale_secrets] == ["school-gym-pi1.mqtt.pass"]
    after = (out / "secrets" / "pavilion-2-pi1.mqtt.pass").read_text()
    assert after == before["pavilion-2-pi1.mqtt.pass"]
    users = [line.split(":")[0] for line in (out / "agents.passwd").read_text().splitlines()]
    assert users == ["pavilion-2-pi1", "tent-3-pi1"]
    assert "school-gym" not in (out / "agents.acl").read_text()


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        (
            lambda sites: _site(sites, "thief-site", "fieldmon-collector"),
            "agent id 'fieldmon-collector' is the collector's MQTT client id",
        ),
        (
            lambda sites: (sites / "broken.yaml").write_text("site: Broken\n", encoding="utf-8"),
            "broken.yaml",
        ),
    ],
    ids=["agent-is-the-collector", "invalid-site-file"],
)
def test_nothing_is_written_while_a_site_would_be_left_out_or_collide(
    noc: Path, change: object, problem: str
) -> None:
    change(noc / "site_configs")  # type: ignore[operator]
    out = noc / "broker"
    with pytest.raises(brokeracl.BrokerAclError) as raised:
        brokeracl.write_broker_files(load_inventory(noc / "site_configs"), _broker(noc), out)
    assert any(problem in line for line in raised.value.problems)
    assert not out.exists()


def test_the_command_writes_and_reports(noc: Path) -> None:
    completed = subprocess.run(
        [script("fieldmon-collector"), "broker-acl", "--config", "collector.yaml", "--out", "b"],
        cwd=noc,
        capture_output=True,
        text=True,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr
    lines = completed.stdout.splitlines()
    assert lines[0] == (
        "wrote b: agents.acl, agents.passwd (2 agents), collector.acl, collector.passwd"
    )
    assert lines[1].startswith("new   b/secrets/pavilion-2-pi1.mqtt.pass: copy it")
    assert (noc / "b" / "agents.acl").is_file()


def test_the_command_refuses_a_collector_without_a_login(noc: Path) -> None:
    (noc / "collector.yaml").write_text(
        "broker: {host: 127.0.0.1}\n"
        "influxdb: {api: v1, url: 'http://127.0.0.1:8086', database: fieldmon}\n"
        "site_configs: ./site_configs\n",
        encoding="utf-8",
    )
    completed = subprocess.run(
        [script("fieldmon-collector"), "broker-acl", "--config", "collector.yaml", "--out", "b"],
        cwd=noc,
        capture_output=True,
        text=True,
        check=False,
    )
    assert completed.returncode == 1
    assert "needs `username` and `password_file`" in completed.stderr


def test_the_shipped_acls_are_what_broker_acl_generates_for_the_examples() -> None:
    # The example's secrets are placeholders: its shape is what counts here.
    config = load_collector_config(REPO / "deploy" / "collector.example.yaml", shape_only=True)
    inventory = load_inventory(config.site_configs)
    assert not inventory.problems
    shipped = (REPO / "deploy" / "mosquitto.acl").read_text(encoding="utf-8")
    assert shipped == brokeracl.agents_acl(inventory)
    shipped_collector = (REPO / "deploy" / "mosquitto-collector.acl").read_text(encoding="utf-8")
    assert shipped_collector == brokeracl.collector_acl(config.broker.username or "")


def test_validate_names_an_agent_that_would_take_over_the_collectors_session(noc: Path) -> None:
    _site(noc / "site_configs", "thief-site", "fieldmon-collector")
    completed = subprocess.run(
        [script("fieldmon-collector"), "validate", "--config", "collector.yaml"],
        cwd=noc,
        capture_output=True,
        text=True,
        check=False,
    )
    assert completed.returncode == 1
    assert "thief-site.yaml: agent id 'fieldmon-collector' is the collector's MQTT client id" in (
        completed.stderr
    )
