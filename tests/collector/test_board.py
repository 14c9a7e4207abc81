"""The status board's interface rows: traffic across the agent's window, per poll without one."""

from __future__ import annotations

from fieldmon.collector.board import StatusBoard
from fieldmon.collector.http import _site_json
from fieldmon.collector.inventory import Inventory
from fieldmon.core.site.config import SiteConfig
from fieldmon.core.wire.models import Envelope, Sample

SITE, AGENT = "pavilion-2", "pavilion-2-pi1"
NS = 10**9


def _site(*devices: str) -> SiteConfig:
    snmp = {"version": "2c", "community_file": "/nonexistent/community"}
    return SiteConfig.model_validate(
        {
            "site": SITE,
            "name": "Field hospital - Pavilion 2",
            "parent_hospital": "hospital-central",
            "agent": {"id": AGENT, "broker": {"host": "127.0.0.1"}},
            "snmp_devices": [
                {"name": name, "address": "127.0.0.1", "profile": "if-mib", "snmp": snmp}
                for name in devices
            ],
        },
        context={"check_files": False},
    )


def _board() -> StatusBoard:
    return StatusBoard(Inventory({SITE: _site("router")}))


def _poll(
    at: int, fields: dict[str, float | int], ifname: str = "wan0", device: str = "router"
) -> Envelope:
    sample = Sample(
        measurement="snmp_if",
        tags={"site": SITE, "agent": AGENT, "device": device, "ifname": ifname},
        fields=fields,  # type: ignore[arg-type]
        time=at * NS,
    )
    return Envelope(site=SITE, agent=AGENT, seq=at, sent_at=at * NS, samples=[sample])


# A steady 3.8 Mbit/s on a 4 Mbit/s uplink, polled faster than the router's counter cache.
CACHED = {"oper_up": 1, "in_bps": 0.0, "out_bps": 0.0, "util_pct": 0.0}
WINDOW = {"in_bps_window": 3.8e6, "out_bps_window": 0.2e6, "util_pct_window": 95.0}


def test_the_board_shows_the_window_not_the_cached_poll() -> None:
    board = _board()
    board.observe(_poll(100, {**CACHED, **WINDOW, "window_s": 120.5}))
    [row] = _site_json(SITE, board.sites[SITE], [])["interfaces"]
    assert row == {
        "device": "router",
        "ifname": "wan0",
        "oper_up": 1,
        "in_bps": 3.8e6,
        "out_bps": 0.2e6,
        "util_pct": 95.0,
        "window_s": 120.5,
        "latest_at": 100 * NS,
    }


def test_an_agent_without_windows_shows_per_poll_rates() -> None:
    board = _board()
    board.observe(_poll(100, {"oper_up": 0, "in_bps": 1e6, "out_bps": 2e6, "util_pct": 2.0}))
    [row] = _site_json(SITE, board.sites[SITE], [])["interfaces"]
    assert (row["oper_up"], row["in_bps"], row["util_pct"], row["window_s"]) == (0, 1e6, 2.0, None)


def test_replayed_history_does_not_replace_the_latest_poll() -> None:
    board = _board()
    board.observe(_poll(200, {**CACHED, **WINDOW, "window_s": 120.0}))
    board.observe(_poll(100, {**CACHED, "util_pct_window": 10.0, "window_s": 120.0}))
    board.observe(_poll(150, {"oper_up": 1}, ifname="lte0"))
    rows = _site_json(SITE, board.sites[SITE], [])["interfaces"]
    assert [(row["ifname"], row.get("util_pct")) for row in rows] == [
        ("lte0", None),
        ("wan0", 95.0),
    ]


def test_only_devices_the_site_file_names_and_a_reload_drops_the_others() -> None:
    board = _board()
    board.observe(_poll(100, {"oper_up": 1}))
    board.observe(_poll(100, {"oper_up": 1}, device="ghost"))
    assert list(board.sites[SITE].interfaces) == ["router/wan0"]
    board.replace_inventory(Inventory({SITE: _site("switch")}))
    assert board.sites[SITE].interfaces == {}
