"""`fieldmon-collector provision` and `decommission`: the files they write, refuse and keep.

What the broker then lets the new agent do, and refuses after decommission (a real Mosquitto),
and that a running collector stops alerting for a closed site, is
tests/security/test_provisioning.py.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import io
import json
import os
import stat
import subprocess
import tarfile
import typing
from pathlib import Path

import pytest
from pydantic import BaseModel

from fieldmon.collector import brokeracl
from fieldmon.collector import provision as provisioning
from fieldmon.collector.alerting import closed_site_resolution
from fieldmon.collector.alerts.model import (
    AlertName,
    AlertState,
    Severity,
    Transition,
    alert_labels,
)
from fieldmon.collector.ingest import check_identity
from fieldmon.collector.inventory import load_inventory
from fieldmon.core.config.secrets import _certificate_file, _secret_file
from fieldmon.core.site.config import SiteConfig
from fieldmon.core.wire.models import Envelope
from fieldmon.lab.process import script
from fieldmon.lab.secretfiles import write_secret

NOW = datetime.datetime(2026, 12, 2, 16, 0, tzinfo=datetime.UTC)
NEW_SITE = """\
site: tent-3
name: "Tent 3"
parent_hospital: central
agent:
  id: tent-3-pi1
  broker:
    host: noc.example.org
    port: 8883
    tls: {ca_file: secrets/noc-ca.pem}
    username: tent-3-pi1
    password_file: secrets/tent-3-pi1.mqtt.pass
links:
  - {name: parent, address: 198.51.100.1, role: parent}
snmp_devices:
  - name: ap-1
    address: 192.0.2.11
    profile: generic-ap
    snmp: {version: 2c, community_file: secrets/snmp-community.txt}
  - name: router
    address: 192.0.2.1
    profile: if-mib
    snmp: {version: 3, user: fm, auth: sha, auth_key_file: credential:router.auth.key,
           priv: aes, priv_key_file: credential:router.priv.key}
"""
CA_PEM = "-----BEGIN CERTIFICATE-----\nMIIB (a test CA)\n-----END CERTIFICATE-----\n"


def _site(folder: Path, site: str, agent: str) -> Path:
    path = folder / f"{site}.yaml"
    path.write_text(
        f"site: {site}\nname: Hall\nparent_hospital: central\n"
        f"agent: {{id: {agent}, broker: {{host: 127.0.0.1}}}}\n",
        encoding="utf-8",
    )
    return path


@pytest.fixture
def noc(tmp_path: Path) -> Path:
    """A NOC: the collector's file, one site, and generated broker files."""
    (tmp_path / "site_configs").mkdir()
    _site(tmp_path / "site_configs", "pavilion-2", "pavilion-2-pi1")
    write_secret(tmp_path / "collector.pass")
    (tmp_path / "collector.yaml").write_text(
        "broker: {host: 127.0.0.1, username: collector, password_file: collector.pass}\n"
        "influxdb: {api: v1, url: 'http://127.0.0.1:8086', database: fieldmon}\n"
        "site_configs: ./site_configs\n",
        encoding="utf-8",
    )
    config = provisioning.load_collector_config(tmp_path / "collector.yaml")
    brokeracl.write_broker_files(
        load_inventory(config.site_configs), config.broker, tmp_path / "broker"
    )
    return tmp_path


@pytest.fixture
def new_site(tmp_path: Path) -> Path:
    """The new site file as the NOC prepares it: its secrets beside it."""
    folder = tmp_path / "new"
    (folder / "secrets").mkdir(parents=True)
    (folder / "credentials").mkdir()
    path = folder / "tent-3.yaml"
    path.write_text(NEW_SITE, encoding="utf-8")
    (folder / "secrets" / "noc-ca.pem").write_text(CA_PEM, encoding="utf-8")
    write_secret(folder / "secrets" / "snmp-community.txt", "community-of-tent-3")
    write_secret(folder / "credentials" / "router.auth.key", "auth-key-of-the-router")
    write_secret(folder / "credentials" / "router.priv.key", "priv-key-of-the-router")
    return path


def _bundle(folder: Path, version: str = "0.2.0") -> Path:
    """A file shaped as an agent bundle: its folder, install.sh, bundle.json and SHA256SUMS."""
    path = folder / f"fieldmon-agent-bundle-{version}.tar"
    with tarfile.open(path, "w") as tar:
        for name, data in (
            ("install.sh", b"#!/bin/sh\n"),
            ("bundle.json", json.dumps({"name": "fieldmon-agent", "version": version}).encode()),
            ("SHA256SUMS", b""),
        ):
            info = tarfile.TarInfo(f"fieldmon-agent-bundle-{version}/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def _provision(noc: Path, site_file: Path, out: Path, **options: typing.Any) -> typing.Any:
    plan = provisioning.plan_provision(
        noc / "collector.yaml", site_file, out, broker_files=noc / "broker", **options
    )
    return provisioning.provision(plan, NOW)


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {
        str(path.relative_to(folder)): path.read_bytes()
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


def _matches(line: str, password: str) -> bool:
    _user, _, hashed = line.partition(":")
    _, _kind, iterations, salt, digest = hashed.split("$")
    expected = hashlib.pbkdf2_hmac(
        "sha512", password.encode(), base64.b64decode(salt), int(iterations)
    )
    return base64.b64decode(digest) == expected


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_every_file_key_of_a_site_file_is_known() -> None:
    """FILE_KEYS must name every SecretFile / CertFile field, or a handover would lack a file."""
    found: set[str] = set()

    def visit(model: type[BaseModel], seen: set[type[BaseModel]]) -> None:
        if model in seen:
            return
        seen.add(model)
        for name, info in model.model_fields.items():
            key = info.alias or name
            for candidate in _flatten(info.annotation, info.metadata):
                if isinstance(candidate, type) and issubclass(candidate, BaseModel):
                    visit(candidate, seen)
                validator = getattr(candidate, "func", None)
                if validator in (_secret_file, _certificate_file):
                    found.add(key)

    visit(SiteConfig, set())
    assert found, "no secret file field found: the walk is broken"
    assert found == provisioning.FILE_KEYS


def _flatten(annotation: object, metadata: list[object]) -> list[object]:
    out: list[object] = list(metadata)
    pending = [annotation]
    while pending:
        item = pending.pop()
        out.append(item)
        pending.extend(typing.get_args(item))
        out.extend(getattr(item, "__metadata__", ()))
    return out


def test_provision_writes_the_handover_registers_the_site_and_its_login(
    noc: Path, new_site: Path, tmp_path: Path
) -> None:
    out = tmp_path / "usb" / "handover-tent-3"
    out.parent.mkdir()
    bundle = _bundle(tmp_path)
    result = _provision(noc, new_site, out, bundle=bundle)

    # site_configs/ has the file as given; the broker's files know the agent.
    assert (noc / "site_configs" / "tent-3.yaml").read_text() == NEW_SITE
    secret = noc / "broker" / "secrets" / "tent-3-pi1.mqtt.pass"
    password = secret.read_text().strip()
    assert result.new_password and len(password) >= 40 and _mode(secret) == 0o600
    lines = (noc / "broker" / "agents.passwd").read_text().splitlines()
    (line,) = [line for line in lines if line.startswith("tent-3-pi1:$7$")]
    assert _matches(line, password)
    assert [entry.split(":")[0] for entry in lines] == ["pavilion-2-pi1", "tent-3-pi1"]
    acl = (noc / "broker" / "agents.acl").read_text()
    assert "user tent-3-pi1\ntopic write fieldmon/v1/tent-3/tent-3-pi1/samples\n" in acl

    # The handover: what install.sh --handover reads, private.
    assert sorted(_snapshot(out)) == [
        "HANDOVER.txt",
        "credentials/router.auth.key",
        "credentials/router.priv.key",
        "fieldmon-agent-bundle-0.2.0.tar",
        "secrets/noc-ca.pem",
        "secrets/snmp-community.txt",
        "secrets/tent-3-pi1.mqtt.pass",
        "site.yaml",
    ]
    assert (out / "site.yaml").read_text() == NEW_SITE
    assert (out / "secrets" / "tent-3-pi1.mqtt.pass").read_text().strip() == password
    assert (out / "secrets" / "noc-ca.pem").read_text() == CA_PEM
    assert (out / "credentials" / "router.priv.key").read_text().strip() == "priv-key-of-the-router"
    assert (out / "fieldmon-agent-bundle-0.2.0.tar").read_bytes() == bundle.read_bytes()
    assert _mode(out) == 0o700
    for folder in ("secrets", "credentials"):
        assert _mode(out / folder) == 0o700
        assert {_mode(path) for path in (out / folder).iterdir()} == {0o600}
    assert not list(out.parent.glob(".*"))  # no staging folder left behind
    sheet = (out / "HANDOVER.txt").read_text()
    assert sheet.startswith("fieldmon handover for site tent-3 (agent tent-3-pi1)\n")
    for command in (
        "tar -xf handover-tent-3/fieldmon-agent-bundle-0.2.0.tar",
        "sudo ./fieldmon-agent-bundle-0.2.0/install.sh --handover handover-tent-3",
        "sudo fieldmon-agent check --config /etc/fieldmon/site.yaml --report handover-tent-3.md",
    ):
        assert command in sheet
    assert password not in sheet


def test_the_ca_option_supplies_the_brokers_certificate(
    noc: Path, new_site: Path, tmp_path: Path
) -> None:
    (new_site.parent / "secrets" / "noc-ca.pem").unlink()
    ca = tmp_path / "ca.crt"
    ca.write_text(CA_PEM.replace("a test CA", "the NOC's CA"), encoding="utf-8")
    out = tmp_path / "handover"
    _provision(noc, new_site, out, ca=ca)
    assert (out / "secrets" / "noc-ca.pem").read_text() == ca.read_text()


def _refused(noc: Path, site_file: Path, out: Path, **options: typing.Any) -> list[str]:
    before = {"noc": _snapshot(noc), "out": out.exists()}
    with pytest.raises(provisioning.ProvisionError) as raised:
        _provision(noc, site_file, out, **options)
    assert _snapshot(noc) == before["noc"], "a refused provision changed the NOC's files"
    assert out.exists() == before["out"]
    assert not list(out.parent.glob(f".{out.name}*"))
    return raised.value.problems


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (
            lambda text: text.replace("role: parent", "role: parnet"),
            ["tent-3.yaml:13: links[0].role: "],
        ),
        (
            lambda text: text.replace("secrets/snmp-community.txt", "snmp-community.txt"),
            [
                "tent-3.yaml:18: snmp_devices[0].snmp.community_file: 'snmp-community.txt': the "
                "handover carries a site's files as secrets/NAME"
            ],
        ),
        (
            lambda text: text.replace("secrets/snmp-community.txt", "/etc/fieldmon/community"),
            ["tent-3.yaml:18: snmp_devices[0].snmp.community_file: '/etc/fieldmon/community'"],
        ),
        (
            lambda text: text.replace("secrets/snmp-community.txt", "secrets/missing.txt"),
            [
                "tent-3.yaml:18: snmp_devices[0].snmp.community_file: secret file",
                "missing.txt' does not exist: put it there",
            ],
        ),
        (
            lambda text: text.replace("    password_file: secrets/tent-3-pi1.mqtt.pass\n", ""),
            ["tent-3.yaml:6: agent.broker.password_file: missing"],
        ),
        (
            lambda text: text.replace("id: tent-3-pi1", "id: pavilion-2-pi1").replace(
                "username: tent-3-pi1", "username: pavilion-2-pi1"
            ),
            ["tent-3.yaml:5: agent.id: 'pavilion-2-pi1' is already the agent of site 'pavilion-2'"],
        ),
        (
            lambda text: text.replace("site: tent-3", "site: pavilion-2"),
            ["tent-3.yaml:1: site: 'pavilion-2' exists already", "give the same file again"],
        ),
    ],
    ids=[
        "invalid",
        "not-in-secrets",
        "absolute",
        "missing",
        "no-password",
        "agent-taken",
        "site-taken",
    ],
)
def test_a_site_file_that_cannot_be_provisioned_changes_nothing(
    noc: Path, new_site: Path, tmp_path: Path, change: typing.Any, expected: list[str]
) -> None:
    new_site.write_text(change(NEW_SITE), encoding="utf-8")
    problems = "\n".join(_refused(noc, new_site, tmp_path / "handover"))
    for text in expected:
        assert text in problems


def test_a_placeholder_secret_is_named_where_the_noc_keeps_it(
    noc: Path, new_site: Path, tmp_path: Path
) -> None:
    placeholder = new_site.parent / "credentials" / "router.priv.key"
    write_secret(placeholder, "CHANGE-ME: the router's privacy key", remember=False)
    (problem,) = _refused(noc, new_site, tmp_path / "handover")
    assert problem.startswith(f"{new_site}:23: snmp_devices[1].snmp.priv_key_file: secret file ")
    assert f"'{placeholder}' still holds the example's placeholder" in problem


def test_an_invalid_other_site_file_or_a_foreign_folder_blocks_it(
    noc: Path, new_site: Path, tmp_path: Path
) -> None:
    (noc / "site_configs" / "broken.yaml").write_text("site: Broken\n", encoding="utf-8")
    out = tmp_path / "handover"
    problems = _refused(noc, new_site, out)
    assert any("broken.yaml" in problem and "fix it first" in problem for problem in problems)
    (noc / "site_configs" / "broken.yaml").unlink()
    out.mkdir()
    (out / "notes.txt").write_text("someone's notes", encoding="utf-8")
    (problem,) = _refused(noc, new_site, out)
    assert "is not empty and holds no handover of site 'tent-3'" in problem


def test_a_file_that_is_no_bundle_is_refused(noc: Path, new_site: Path, tmp_path: Path) -> None:
    not_a_bundle = tmp_path / "agent.tar"
    with tarfile.open(not_a_bundle, "w") as tar:
        tar.addfile(tarfile.TarInfo("readme.txt"))
    (problem,) = _refused(noc, new_site, tmp_path / "handover", bundle=not_a_bundle)
    assert problem.startswith(f"--bundle {not_a_bundle}: not an agent bundle")


def test_running_it_again_rebuilds_the_handover_with_the_same_password(
    noc: Path, new_site: Path, tmp_path: Path
) -> None:
    out = tmp_path / "handover"
    _provision(noc, new_site, out)
    password = (out / "secrets" / "tent-3-pi1.mqtt.pass").read_text()
    (out / "secrets" / "snmp-community.txt").unlink()  # a damaged copy
    again = _provision(noc, new_site, out)
    assert again.plan.again and not again.new_password
    assert (out / "secrets" / "tent-3-pi1.mqtt.pass").read_text() == password
    assert (out / "secrets" / "snmp-community.txt").exists()
    assert sorted(path.name for path in (noc / "site_configs").iterdir()) == [
        "pavilion-2.yaml",
        "tent-3.yaml",
    ]


def test_decommission_closes_the_site_revokes_its_login_and_keeps_the_rest(
    noc: Path, new_site: Path, tmp_path: Path
) -> None:
    _provision(noc, new_site, tmp_path / "handover")
    passwd_before = (noc / "broker" / "agents.passwd").read_text().splitlines()
    result = provisioning.decommission(
        noc / "collector.yaml", "tent-3", broker_files=noc / "broker", now=NOW
    )
    assert result.regenerated and result.moved_from == noc / "site_configs" / "tent-3.yaml"
    closed = noc / "site_configs" / "closed" / "tent-3.yaml"
    assert result.closed_file == closed
    assert closed.read_text().startswith("# Closed on 2026-12-02 16:00 UTC by ")
    assert closed.read_text().endswith(NEW_SITE)
    assert not (noc / "site_configs" / "tent-3.yaml").exists()
    assert (noc / "broker" / "agents.passwd").read_text().splitlines() != passwd_before
    users = [
        line.split(":")[0] for line in (noc / "broker" / "agents.passwd").read_text().splitlines()
    ]
    assert users == ["pavilion-2-pi1"]
    assert "tent-3" not in (noc / "broker" / "agents.acl").read_text()
    assert not (noc / "broker" / "secrets" / "tent-3-pi1.mqtt.pass").exists()
    inventory = load_inventory(noc / "site_configs")
    assert sorted(inventory.sites) == ["pavilion-2"] and sorted(inventory.closed) == ["tent-3"]
    assert inventory.problems == []
    # Its agent's envelopes are refused, saying why.
    envelope = Envelope(site="tent-3", agent="tent-3-pi1", seq=1, sent_at=1, samples=[])
    rejection = check_identity(envelope, "fieldmon/v1/tent-3/tent-3-pi1/samples", inventory)
    assert rejection is not None and "is closed" in rejection.detail
    # Again: nothing more to do; and the site id and agent id stay taken.
    again = provisioning.decommission(noc / "collector.yaml", "tent-3", broker_files=noc / "broker")
    assert again.moved_from is None and closed.exists()
    problems = "\n".join(_refused(noc, new_site, tmp_path / "handover-2"))
    assert "site: 'tent-3' was closed" in problems
    new_site.write_text(NEW_SITE.replace("site: tent-3", "site: tent-4"), encoding="utf-8")
    problems = "\n".join(_refused(noc, new_site, tmp_path / "handover-2"))
    assert "agent.id: 'tent-3-pi1' is already the agent of site 'tent-3'" in problems


def test_decommission_removes_the_login_in_place_when_another_file_is_broken(
    noc: Path, new_site: Path, tmp_path: Path
) -> None:
    _provision(noc, new_site, tmp_path / "handover")
    acl_before = (noc / "broker" / "agents.acl").read_text()
    (noc / "site_configs" / "broken.yaml").write_text("site: Broken\n", encoding="utf-8")
    result = provisioning.decommission(
        noc / "collector.yaml", "tent-3", broker_files=noc / "broker"
    )
    assert not result.regenerated
    assert any("broken.yaml" in warning for warning in result.warnings)
    passwd = (noc / "broker" / "agents.passwd").read_text()
    assert [line.split(":")[0] for line in passwd.splitlines()] == ["pavilion-2-pi1"]
    acl = (noc / "broker" / "agents.acl").read_text()
    assert acl == acl_before.split("\n\n# site tent-3")[0] + "\n"
    assert not (noc / "broker" / "secrets" / "tent-3-pi1.mqtt.pass").exists()


def test_an_acl_block_is_removed_whatever_its_place() -> None:
    text = (
        "# header\n\n# site a\nuser a-pi\ntopic write x/a\n\n# site b\nuser b-pi\ntopic write "
        "x/b\n\n# site c\nuser c-pi\ntopic write x/c\n"
    )
    assert brokeracl.without_agent_acl(text, "b-pi") == (
        "# header\n\n# site a\nuser a-pi\ntopic write x/a\n\n# site c\nuser c-pi\ntopic write x/c\n"
    )
    assert brokeracl.without_agent_acl(text, "c-pi").endswith("topic write x/b\n")
    assert brokeracl.without_agent_acl(text, "nobody") == text


def test_the_commands_exit_1_naming_the_problem(noc: Path, new_site: Path, tmp_path: Path) -> None:
    new_site.write_text(NEW_SITE.replace("role: parent", "role: parnet"), encoding="utf-8")
    provision = subprocess.run(
        [script("fieldmon-collector"), "provision", "--config", noc / "collector.yaml", new_site,
         "--out", tmp_path / "handover", "--no-bundle", "--broker-files", noc / "broker"],
        capture_output=True, text=True, check=False, timeout=60,
    )  # fmt: skip
    assert provision.returncode == 1
    assert f"{new_site}:13: links[0].role:" in provision.stderr
    assert "nothing changed" in provision.stderr
    decommission = subprocess.run(
        [script("fieldmon-collector"), "decommission", "--config", noc / "collector.yaml",
         "ghost-site", "--broker-files", noc / "broker"],
        capture_output=True, text=True, check=False, timeout=60,
    )  # fmt: skip
    assert decommission.returncode == 1
    assert "no open site 'ghost-site'" in decommission.stderr
    assert "open sites: pavilion-2" in decommission.stderr


def test_a_pid_that_is_not_the_program_gets_no_signal() -> None:
    # This test's own process: were SIGHUP sent, its default action would end pytest here.
    with pytest.raises(provisioning.ReloadError, match="is not mosquitto"):
        provisioning.reload_pid(os.getpid(), "mosquitto")


def test_a_closed_sites_firing_alert_is_resolved_saying_why() -> None:
    labels = alert_labels(AlertName.SITE_UNREACHABLE, "tent-3", "tent-3-pi1", Severity.CRITICAL)
    firing = Transition(
        AlertName.SITE_UNREACHABLE, labels, {"summary": "tent-3: site silent"},
        AlertState.FIRING, starts_at=10**18, ends_at=None, value=60.0, page=True,
    )  # fmt: skip
    resolved = closed_site_resolution(firing, 2 * 10**18)
    assert resolved.state is AlertState.RESOLVED and resolved.page
    assert resolved.key == firing.key and resolved.ends_at == 2 * 10**18
    assert "site closed (decommissioned)" in resolved.annotations["summary"]


def test_a_site_file_claiming_a_closed_sites_id_is_a_problem(noc: Path) -> None:
    closed = noc / "site_configs" / "closed"
    closed.mkdir()
    _site(closed, "tent-3", "tent-3-pi1")
    _site(closed, "broken", "broken-pi1").write_text("site: Broken\n", encoding="utf-8")
    inventory = load_inventory(noc / "site_configs")
    assert sorted(inventory.closed) == ["tent-3"] and sorted(inventory.sites) == ["pavilion-2"]
    assert inventory.problems
    assert all("broken.yaml" in problem for problem in inventory.problems)
    assert all(problem.endswith("(a closed site's file)") for problem in inventory.problems)
    (closed / "broken.yaml").unlink()
    _site(noc / "site_configs", "tent-3", "tent-3-pi2")
    inventory = load_inventory(noc / "site_configs")
    assert "tent-3" in inventory.sites and "tent-3" not in inventory.closed
    (problem,) = inventory.problems
    assert "site 'tent-3' was closed" in problem and "is open again" in problem


def test_decommission_refuses_a_folder_without_the_brokers_files(noc: Path, tmp_path: Path) -> None:
    before = _snapshot(noc)
    with pytest.raises(provisioning.ProvisionError, match=r"agents\.passwd does not exist"):
        provisioning.decommission(
            noc / "collector.yaml", "pavilion-2", broker_files=tmp_path / "elsewhere"
        )
    assert _snapshot(noc) == before
