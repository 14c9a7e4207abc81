"""Every example config in the repository loads: site_configs/*.yaml and the collector's."""

from __future__ import annotations

import io
import ipaddress
from pathlib import Path

import pytest

from fieldmon.collector.config import load_collector_config
from fieldmon.core.config.errors import ConfigError
from fieldmon.core.site.config import load_site_config
from fieldmon.core.site.validate import validate_site_files

REPO = Path(__file__).resolve().parents[3]
SITE_FILES = sorted((REPO / "site_configs").glob("*.yaml"))
COLLECTOR_EXAMPLE = REPO / "deploy" / "collector.example.yaml"
# The examples are never probed, and must not point anyone at a real network either.
DOCUMENTATION_NETWORKS = [
    ipaddress.ip_network(net) for net in ("192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24")
] + [ipaddress.ip_network("2001:db8::/32")]


def test_there_are_examples() -> None:
    names = {path.name for path in SITE_FILES}
    assert {"pavilion-2.yaml", "school-gym-clinic.yaml"} <= names


@pytest.mark.parametrize("path", SITE_FILES, ids=lambda path: path.name)
def test_site_example_loads(path: Path) -> None:
    config = load_site_config(path, shape_only=True)
    assert path.stem == config.site  # the file is named after its site, as engineers look it up
    assert config.links, "an example site without links teaches nothing"


@pytest.mark.parametrize("path", SITE_FILES, ids=lambda path: path.name)
def test_site_example_uses_documentation_addresses(path: Path) -> None:
    config = load_site_config(path, shape_only=True)
    addresses = [link.address for link in config.links]
    addresses += [device.address for device in config.snmp_devices]
    for address in addresses:
        ip = ipaddress.ip_address(address)
        assert any(ip in network for network in DOCUMENTATION_NETWORKS), address


@pytest.mark.parametrize("path", SITE_FILES, ids=lambda path: path.name)
def test_site_example_secrets_resolve_next_to_the_file(
    path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # relative secret paths must not depend on the working directory
    config = load_site_config(path, shape_only=True)
    password_file = config.agent.broker.password_file
    assert password_file is not None
    assert password_file.is_absolute()
    assert password_file.parent == path.parent / "secrets"


def test_all_site_examples_validate_together_in_shape() -> None:
    out, err = io.StringIO(), io.StringIO()
    assert validate_site_files(SITE_FILES, out, err, shape_only=True) == 0, err.getvalue()
    assert err.getvalue() == ""
    lines = out.getvalue().splitlines()
    assert len(lines) == len(SITE_FILES)  # no WARN: the examples show TLS and SNMPv3 authPriv
    assert all(line.startswith("OK  ") for line in lines)


def test_pavilion_summary_line() -> None:
    out, err = io.StringIO(), io.StringIO()
    path = REPO / "site_configs" / "pavilion-2.yaml"
    assert validate_site_files([path], out, err, shape_only=True) == 0
    assert out.getvalue() == (
        f"OK  {path}: site pavilion-2 (agent pavilion-2-pi1), 4 links, 6 SNMP devices, "
        "4 services (shape only: secrets not checked)\n"
    )


def test_the_examples_placeholders_are_refused_with_what_to_do() -> None:
    out, err = io.StringIO(), io.StringIO()
    assert validate_site_files(SITE_FILES, out, err) == 1
    assert out.getvalue() == ""
    *issues, summary = err.getvalue().splitlines()
    assert summary.startswith(f"{len(SITE_FILES)} of {len(SITE_FILES)} files have problems: only ")
    assert "--shape-only" in summary
    pavilion = [line for line in issues if line.startswith(str(SITE_FILES[0]))]
    # Every secret and the CA certificate the file names, each on its own line with its key.
    keys = {line.split(": ")[1] for line in pavilion}
    assert {
        "agent.broker.tls.ca_file",
        "agent.broker.password_file",
        "snmp_devices[0].snmp.community_file",
        "snmp_devices[5].snmp.auth_key_file",
        "snmp_devices[5].snmp.priv_key_file",
    } <= keys, pavilion
    for line in issues:
        assert "still holds the example's placeholder (a line starting CHANGE-ME)" in line
        assert "put the real secret there" in line or "put the real certificate there" in line


def test_collector_example_placeholders_are_refused() -> None:
    with pytest.raises(ConfigError) as raised:
        load_collector_config(COLLECTOR_EXAMPLE)
    issues = raised.value.issues
    assert {issue.path for issue in issues} == {
        "broker.password_file",
        "influxdb.password_file",
        "notify.webhook[0].secret_file",
        "notify.email.password_file",
    }
    assert all(issue.kind == "secret" and "CHANGE-ME" in issue.message for issue in issues)


def test_pavilion_uses_both_parent_uplinks_and_snmpv3() -> None:
    config = load_site_config(REPO / "site_configs" / "pavilion-2.yaml", shape_only=True)
    parents = [link for link in config.links if link.role == "parent"]
    assert {link.interface for link in parents} == {"eth0", "wwan0"}
    assert len({link.address for link in parents}) == 1  # two paths to the same parent hospital
    router = next(device for device in config.snmp_devices if device.profile == "if-mib")
    assert router.interfaces == ["wan0", "lte0"]
    assert router.snmp.version == 3
    assert (router.snmp.auth, router.snmp.priv) == ("sha", "aes")


def test_collector_example_loads() -> None:
    config = load_collector_config(COLLECTOR_EXAMPLE, shape_only=True)
    assert config.site_configs == (REPO / "site_configs").resolve()
    assert config.influxdb.api == "v1"
    assert [role.value for role in config.roles] == ["ingest", "alerts"]
    assert config.broker.session_expiry == 86400.0
    assert config.notify.alertmanager is not None
    assert config.notify.email is not None and config.notify.email.to
    assert all(hook.secret_file is not None for hook in config.notify.webhook)
    assert (config.http.host, config.http.port) == ("127.0.0.1", 8480)
