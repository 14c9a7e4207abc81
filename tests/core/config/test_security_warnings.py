"""Settings that work but expose the site: WARN in `validate` and `check`, never a failure."""

from __future__ import annotations

import asyncio
import io
import json
from pathlib import Path
from typing import Any

import pytest

from fieldmon.agent.check import Status, check_site, security_rows
from fieldmon.core.site.config import load_site_config
from fieldmon.core.site.security import security_warnings
from fieldmon.core.site.validate import validate_site_files
from fieldmon.lab.secretfiles import write_secret
from fieldmon.lab.servers import MosquittoServer


def _site(folder: Path, broker: dict[str, Any], snmp: list[dict[str, Any]]) -> Path:
    for name in ("community", "auth.key", "priv.key"):
        write_secret(folder / name)
    devices = [
        {"name": f"dev-{index}", "address": "127.0.0.1", "profile": "if-mib", "snmp": settings}
        for index, settings in enumerate(snmp)
    ]
    site = {
        "site": "warn-site",
        "name": "Warnings",
        "parent_hospital": "hospital-a",
        "agent": {
            "id": "warn-site-pi1",
            "broker": {"connect_timeout": "2s", **broker},
            "outbox": {"path": str(folder / "outbox.db")},
        },
        "snmp_devices": devices,
    }
    path = folder / "site.yaml"
    path.write_text(json.dumps(site, indent=1), encoding="utf-8")
    return path


V3 = {"version": 3, "user": "fieldmon", "timeout": "200ms", "retries": 0}
AUTH = {"auth_key_file": "auth.key"}
PRIV = {"priv_key_file": "priv.key"}


@pytest.mark.parametrize(
    ("broker", "snmp", "expected"),
    [
        ({"host": "127.0.0.1"}, [], []),
        ({"host": "localhost", "port": 1883}, [], []),
        (
            {"host": "noc.example.org"},
            [],
            [("agent.broker.tls", "broker", "plain MQTT to noc.example.org: the agent's password")],
        ),
        ({"host": "noc.example.org", "tls": {}}, [], []),
        ({"host": "127.0.0.1"}, [{"version": "2c", "community_file": "community"}], []),
        ({"host": "127.0.0.1"}, [{**V3, "auth": "sha256", **AUTH, "priv": "aes", **PRIV}], []),
        (
            {"host": "127.0.0.1"},
            [V3],
            [("snmp_devices[0].snmp", "dev-0", "SNMPv3 noAuthNoPriv: anyone on the path")],
        ),
        (
            {"host": "127.0.0.1"},
            [{**V3, "auth": "sha", **AUTH}],
            [("snmp_devices[0].snmp", "dev-0", "SNMPv3 authNoPriv: the answers")],
        ),
        (
            {"host": "127.0.0.1"},
            [{**V3, "auth": "md5", **AUTH, "priv": "des", **PRIV}],
            [
                ("snmp_devices[0].snmp.auth", "dev-0", "SNMPv3 auth md5 is weak"),
                ("snmp_devices[0].snmp.priv", "dev-0", "SNMPv3 priv des is broken"),
            ],
        ),
    ],
)
def test_each_exposing_setting_is_warned_once(
    tmp_path: Path,
    broker: dict[str, Any],
    snmp: list[dict[str, Any]],
    expected: list[tuple[str, str, str]],
) -> None:
    config = load_site_config(_site(tmp_path, broker, snmp))
    warnings = security_warnings(config)
    assert [(w.path, w.target) for w in warnings] == [(p, t) for p, t, _ in expected]
    for warning, (_path, _target, start) in zip(warnings, expected, strict=True):
        assert warning.message.startswith(start)


def test_validate_prints_warnings_under_ok_and_exits_zero(tmp_path: Path) -> None:
    site = _site(tmp_path, {"host": "noc.example.org"}, [{**V3, "auth": "md5", **AUTH}])
    out, err = io.StringIO(), io.StringIO()
    assert validate_site_files([site], out, err) == 0
    assert err.getvalue() == ""
    ok, *warns = out.getvalue().splitlines()
    assert ok.startswith(f"OK  {site}: site warn-site")
    assert [line.split(": ")[0:2] for line in warns] == [
        [f"WARN  {site}:7", "agent.broker.tls"],  # missing: the line of the broker mapping
        [f"WARN  {site}:25", "snmp_devices[0].snmp.auth"],
        [f"WARN  {site}:20", "snmp_devices[0].snmp"],
    ]


def test_check_shows_warnings_as_warn_rows_that_do_not_fail(
    tmp_path: Path, mosquitto: MosquittoServer
) -> None:
    site = _site(
        tmp_path,
        {"host": "127.0.0.1", "port": mosquitto.port},
        [{**V3, "auth": "sha", **AUTH, "priv": "des", **PRIV}],
    )
    config = load_site_config(site)
    rows = security_rows(config)
    assert [(r.kind, r.name, r.target, r.status) for r in rows] == [
        ("security", "snmp_devices[0].snmp.priv", "dev-0", Status.WARN)
    ]
    report = asyncio.run(check_site(config))
    assert rows[0] in report.rows
    assert report.rows[-1] == rows[0]
