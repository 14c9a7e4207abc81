"""The README's demo command: two sites with APs, a parent hospital's HIS made slow and failing, a
parent link degraded, cut and restored; alerts fire and resolve at a real Alertmanager; links,
services and SNMP devices reach InfluxDB."""

from __future__ import annotations

import os

import pytest
from demo_run import DemoRun

from fieldmon.lab.topology import lab_namespaces

pytestmark = [
    pytest.mark.integration,
    pytest.mark.netns,
    pytest.mark.skipif(os.geteuid() != 0, reason="the lab creates namespaces and raw sockets"),
]


def test_demo_runs_end_to_end_and_tears_down(demo_run: DemoRun) -> None:
    result = demo_run
    output = result.stdout
    assert result.returncode == 0, result.failure()
    assert "status page http://127.0.0.1:" in output
    assert "demo-pavilion parent link degraded" in output
    assert "demo-pavilion parent link cut" in output
    assert "demo-pavilion parent link restored" in output
    # The cut parent link paged LinkDown while it lasted ...
    assert "FIRING LinkDown demo-pavilion/parent-gw" in output
    assert "RESOLVED LinkDown demo-pavilion/parent-gw" in output
    # The live view showed the APs as the agent polled them.
    assert "ap-hall-b radio na" in output and "uplink-router wan-parent" in output
    # The parent hospital's HIS (nginx, HTTPS with the demo CA's certificate the site file
    # trusts) was made slow, then failing, then healed, while the link was still healthy ...
    for step in ("HIS slow: answers after", "HIS failing: answers 503", "HIS healthy again"):
        assert f"demo-pavilion {step}" in output
    assert "his (http)" in output and "hospital-dns (dns)" in output  # the service rows
    degraded_at = output.index("demo-pavilion parent link degraded")
    page = "PAGE via Alertmanager: {} {} demo-pavilion/his ({})"
    # ... and Alertmanager delivered ServiceSlow, then ServiceDown for the 503, before the link
    # was touched, each resolved once the HIS was healthy again; the live view showed them.
    # Alertmanager batches what it delivers (group_wait), so only the engine's order is ours.
    output.index(page.format("firing", "ServiceSlow", "warning"))
    down_paged = output.index(page.format("firing", "ServiceDown", "critical"))
    assert down_paged < degraded_at
    slow_fired = output.index("FIRING ServiceSlow demo-pavilion/his")
    assert slow_fired < output.index("FIRING ServiceDown demo-pavilion/his") < degraded_at
    # (rich wraps a long line at the terminal's width)
    paged_text = " ".join(output[down_paged : down_paged + 400].split())
    assert "service his (http) down since" in paged_text and "(status 503)" in paged_text
    assert page.format("resolved", "ServiceSlow", "warning") in output
    assert page.format("resolved", "ServiceDown", "critical") in output
    assert output.index("FIRING ServiceSlow demo-pavilion/his") < degraded_at
    assert "RESOLVED ServiceSlow demo-pavilion/his" in output
    # The cut link paged at Alertmanager as well.
    assert page.format("firing", "LinkDown", "critical").replace("/his", "/parent-gw") in output
    summary = output[output.index("What the demo wrote") :]
    # ... and the alert history has both the firing and the resolve.
    assert "LinkDown firing" in summary
    assert "LinkDown resolved" in summary
    caption = " ".join(summary.split())  # the alert counts wrap in a narrow table's caption
    for alertname in ("ServiceSlow", "ServiceDown"):
        assert f"{alertname} firing" in caption and f"{alertname} resolved" in caption
    service_rows = {
        (cells[0], cells[1]): int(cells[2].split()[0])
        for line in summary.splitlines()
        if len(cells := [c.strip() for c in line.split("│") if c.strip()]) == 5
        and cells[2].endswith(" runs")
    }
    assert service_rows.keys() == {("demo-pavilion", "his"), ("demo-pavilion", "hospital-dns")}
    assert min(service_rows.values()) >= 10
    rows = [
        cells
        for line in summary.splitlines()
        if len(cells := [c.strip() for c in line.split("│") if c.strip()]) == 5
        and cells[2].isdigit()
    ]
    assert {(cells[0], cells[1]) for cells in rows} == {
        (site, link)
        for site in ("demo-pavilion", "demo-school")
        for link in ("parent-gw", "internet", "site-gateway")
    }
    assert min(int(cells[2]) for cells in rows) >= 5
    snmp_rows = {
        (cells[0], cells[1], cells[2])
        for line in summary.splitlines()
        if len(cells := [c.strip() for c in line.split("│") if c.strip()]) == 4
        and cells[3].endswith(" rows")
        and int(cells[3].split()[0]) >= 3
    }
    assert snmp_rows == {
        ("demo-pavilion", "ap-hall-a", "ap"),
        ("demo-pavilion", "ap-hall-b", "ap"),
        ("demo-pavilion", "wlc-triage", "ap"),
        ("demo-pavilion", "ap-stores", "ap"),
        ("demo-school", "ap-gym", "ap"),
        ("demo-pavilion", "uplink-router", "snmp_if"),
        ("demo-school", "uplink-router", "snmp_if"),
    }
    assert not lab_namespaces(demo_run.lab)
