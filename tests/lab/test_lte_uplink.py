"""A lab site with a wired and an LTE uplink to its parent hospital, and the NOC behind it: the
default route of the site router decides which uplink carries traffic, to the parent hospital's
core and to the NOC alike."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from fieldmon.lab.netns import run
from fieldmon.lab.topology import Lab, LabError, SiteSpec, namespace_name

pytestmark = [
    pytest.mark.netns,
    pytest.mark.skipif(os.geteuid() != 0, reason="the lab creates namespaces (needs root)"),
]


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    site = SiteSpec("field", router=False, lte_rate="5mbit", noc=True)
    with Lab.up(f"lte{os.getpid()}", [site], tmp_path_factory.mktemp("labs")) as lab:
        yield lab


def _answers(namespace: str | None, address: str) -> bool:
    return (
        run(namespace, "fping", "-t", "300", "-r", "2", "-q", address, check=False).returncode == 0
    )


def _default(gw: str) -> str:
    return run(None, "ip", "-n", gw, "-4", "route", "show", "default").stdout.strip()


def test_the_default_route_decides_which_uplink_carries_the_site(lab: Lab) -> None:
    gw = namespace_name(lab.name, "field", "gw")
    wired, lte = lab.link("field/parent"), lab.link("field/lte")
    core, noc = lab.core_address("field"), lab.noc_address("field")
    assert [link.name for link in lab.links] == ["lan", "parent", "internet", "lte", "noc"]
    assert (lte.near_dev, lte.far_dev, lte.rate) == ("wan-lte", "lte0", "5mbit")
    assert f"via {wired.address} dev wan-parent" in _default(gw)
    # Over the wired uplink: the core from the agent's namespace, the NOC from the router.
    assert _answers(None, core)
    assert _answers(gw, noc)
    try:
        lab.impair("field/parent", cut=True)
        assert not _answers(None, core)
        assert not _answers(gw, noc)
        assert _answers(gw, lte.address)  # the LTE uplink itself is fine
        run(None, "ip", "-n", gw, "route", "replace", "default", "via", lte.address,
            "dev", "wan-lte")  # fmt: skip
        assert _answers(None, core)
        assert _answers(gw, noc)
        route = run(gw, "ip", "route", "get", noc).stdout
        assert "dev wan-lte" in route
    finally:
        lab.restore("field/parent")
        run(None, "ip", "-n", gw, "route", "replace", "default", "via", wired.address,
            "dev", "wan-parent")  # fmt: skip
    assert _answers(gw, noc)
    # Both uplinks cut: the NOC is out of reach (no path around the site's uplinks).
    try:
        lab.impair("field/parent", cut=True)
        lab.impair("field/lte", cut=True)
        assert not _answers(gw, noc)
    finally:
        lab.restore("field/parent")
        lab.restore("field/lte")


def test_sites_without_lte_have_no_core_and_noc_needs_lte(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="`noc` needs `lte_rate`"):
        SiteSpec("x", router=False, noc=True)
    with (
        Lab.up(f"plain{os.getpid()}", [SiteSpec("y", router=False)], tmp_path) as plain,
        pytest.raises(LabError, match="no LTE uplink"),
    ):
        plain.core_address("y")
