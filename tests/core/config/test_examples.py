"""Every example config in the repository loads: site_configs/*.yaml and the collector's."""

from __future__ import annotations

import io
import ipaddress
from pathlib import Path

import pytest

from fieldmon.collector.config import load_collector_config
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
    config = load_site_config(path)
    assert path.stem == config.site  # the file is named after its site, as engineers look it up
    assert config.links, "an example site without links teaches nothing"


@pytest.mark.parametrize("path", SITE_FILES, ids=lambda path: path.name)
def test_site_example_uses_documentation_addresses(path: Path) -> None:
    config = load_site_config(path)
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
    config = load_site_config(path)
    password_file = config.agent.broker.password_file
    assert password_file is not None
    assert password_file.is_absolute()
    assert password_file.parent == path.parent / "secrets"


def test_all_site_examples_validate_together() -> None:
    out, err = io.StringIO(), io.StringIO()
    assert validate_site_files(SITE_FILES, out, err) == 0, err.getvalue()
    assert err.getvalue() == ""
    lines = out.getvalue().splitlines()
    assert len(lines) == len(SITE_FILES)
    assert all(line.startswith("OK  ") for line in lines)


def test_pavilion_summary_line() -> None:
    out, err = io.StringIO(), io.StringIO()
    path = REPO / "site_configs" / "pavilion-2.yaml"
    assert validate_site_files([path], out, err) == 0
    assert out.getvalue() == (
        f"OK  {path}: site pavilion-2 (agent pavilion-2-pi1), 4 links, 6 SNMP devices, 4 services\n"
    )


def test_pavilion_uses_both_parent_uplinks_and_snmpv3() -> None:
    config = load_site_config(REPO / "site_configs" / "pavilion-2.yaml")
    parents = [link for link in config.links if link.role == "parent"]
    assert {link.interface for link in parents} == {"eth0", "wwan0"}
    assert len({link.address for link in parents}) == 1  # two paths to the same parent hospital
    router = next(device for device in config.snmp_devices if device.profile == "if-mib")
    assert router.interfaces == ["wan0", "lte0"]
    assert router.snmp.version == 3
    assert (router.snmp.auth, router.snmp.priv) == ("sha", "aes")


def test_collector_example_loads() -> None:
    config = load_collector_config(COLLECTOR_EXAMPLE)
    assert config.site_configs == (REPO / "site_configs").resolve()
    assert config.influxdb.api == "v1"
    assert [role.value for role in config.roles] == ["ingest", "alerts"]
    assert config.broker.session_expiry == 86400.0
    assert config.notify.alertmanager is not None
    assert config.notify.email is not None and config.notify.email.to
    assert all(hook.secret_file is not None for hook in config.notify.webhook)
    assert (config.http.host, config.http.port) == ("127.0.0.1", 8480)
