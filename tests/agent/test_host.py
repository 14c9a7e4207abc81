"""Host probe: real psutil readings on this machine, fakes only for the Pi firmware."""

from __future__ import annotations

import asyncio
from collections import namedtuple
from pathlib import Path

import psutil
import pytest

from fieldmon.agent.probes import host as host_module
from fieldmon.agent.probes.base import Run, Status, Verdict
from fieldmon.agent.probes.host import HostProbe
from fieldmon.core.site.host import HostConfig
from fieldmon.core.wire.models import Sample
from fieldmon.firmware_hooks.pi import PiHealth, ThrottleState

Reading = namedtuple("Reading", "label current high critical")  # psutil's shtemp shape


def _probe(health: PiHealth | None, **kwargs: object) -> HostProbe:
    async def pi_health() -> PiHealth | None:
        return health

    config = HostConfig.model_validate(kwargs.pop("config", {}))
    return HostProbe(
        config, site="pavilion-2", agent="pavilion-2-pi1", pi_health=pi_health, **kwargs
    )


def _collect(probe: HostProbe) -> Sample:
    samples = asyncio.run(probe.collect())
    assert len(samples) == 1
    return samples[0]


@pytest.fixture
def no_sensors(monkeypatch: pytest.MonkeyPatch) -> None:
    """This machine's kernel sensors, whatever they are, replaced by none."""
    monkeypatch.setattr(psutil, "sensors_temperatures", lambda: {}, raising=False)


def _burn_cpu(seconds: float) -> None:
    """Spin until this process has used `seconds` more CPU time, so the CPU counters move."""
    deadline = psutil.Process().cpu_times().user + seconds
    while psutil.Process().cpu_times().user < deadline:
        sum(range(10_000))


def test_real_host_reading(no_sensors: None) -> None:
    probe = _probe(None, config={"interval": "15s"})
    _burn_cpu(0.05)
    assert probe.name == "host"
    assert probe.interval == 15.0
    sample = _collect(probe)
    assert sample.measurement == "host"
    assert sample.tags == {"site": "pavilion-2", "agent": "pavilion-2-pi1"}
    fields = sample.fields
    assert 0.0 <= fields["cpu_pct"] <= 100.0
    assert 0.0 < fields["mem_pct"] < 100.0
    assert fields["disk_pct"] == pytest.approx(psutil.disk_usage("/").percent, abs=1.0)
    assert fields["uptime_s"] > 0
    assert isinstance(fields["uptime_s"], float)
    # Not a Pi, no sensor, no outbox: those fields are absent, not zero.
    assert set(fields) == {"cpu_pct", "mem_pct", "disk_pct", "uptime_s"}


def test_disk_of_the_configured_path(tmp_path: Path, no_sensors: None) -> None:
    sample = _collect(_probe(None, config={"disk_path": str(tmp_path)}))
    assert sample.fields["disk_pct"] == pytest.approx(psutil.disk_usage(tmp_path).percent, abs=1.0)


def test_missing_disk_path_leaves_disk_out(tmp_path: Path, no_sensors: None) -> None:
    sample = _collect(_probe(None, config={"disk_path": str(tmp_path / "not-mounted")}))
    assert "disk_pct" not in sample.fields
    assert "mem_pct" in sample.fields


def test_outbox_depth_is_reported() -> None:
    depths = iter([0, 1234])
    probe = _probe(None, outbox_depth=lambda: next(depths))
    assert _collect(probe).fields["outbox_depth"] == 0
    assert _collect(probe).fields["outbox_depth"] == 1234


def test_outbox_dropped_is_reported_beside_the_depth() -> None:
    dropped = iter([0, 75])
    probe = _probe(None, outbox_depth=lambda: 5, outbox_dropped=lambda: next(dropped))
    first, second = _collect(probe).fields, _collect(probe).fields
    assert (first["outbox_depth"], first["outbox_dropped"]) == (5, 0)
    assert second["outbox_dropped"] == 75
    assert isinstance(second["outbox_dropped"], int)


def test_outbox_dropped_absent_without_an_outbox(no_sensors: None) -> None:
    assert "outbox_dropped" not in _collect(_probe(None)).fields


def test_pi_undervoltage_and_temperature_from_vcgencmd(no_sensors: None) -> None:
    health = PiHealth(throttle=ThrottleState.from_word(0x50005), temp_c=61.2)
    fields = _collect(_probe(health)).fields
    assert fields["undervoltage"] is True
    assert fields["throttled"] is True
    assert fields["temp_c"] == pytest.approx(61.2)


def test_healthy_pi_reports_false_not_absent(no_sensors: None) -> None:
    health = PiHealth(throttle=ThrottleState.from_word(0x50000), temp_c=45.0)
    fields = _collect(_probe(health)).fields
    # Only since boot: nothing wrong now.
    assert fields["undervoltage"] is False
    assert fields["throttled"] is False


def test_soft_temperature_limit_counts_as_throttled(no_sensors: None) -> None:
    health = PiHealth(throttle=ThrottleState.from_word(0x8), temp_c=None)
    fields = _collect(_probe(health)).fields
    assert fields["throttled"] is True
    assert fields["undervoltage"] is False
    assert "temp_c" not in fields


def test_unreadable_throttle_word_leaves_flags_out(no_sensors: None) -> None:
    fields = _collect(_probe(PiHealth(throttle=None, temp_c=50.0))).fields
    assert "undervoltage" not in fields
    assert "throttled" not in fields
    assert fields["temp_c"] == 50.0


def test_kernel_sensor_preferred_over_vcgencmd(monkeypatch: pytest.MonkeyPatch) -> None:
    sensors = {
        "nvme": [Reading("Composite", 38.0, 80.0, 85.0)],
        "cpu_thermal": [Reading("", 52.5, None, None)],
    }
    monkeypatch.setattr(psutil, "sensors_temperatures", lambda: sensors, raising=False)
    health = PiHealth(throttle=ThrottleState.from_word(0), temp_c=99.0)
    assert _collect(_probe(health)).fields["temp_c"] == 52.5


def test_any_sensor_when_no_cpu_chip_is_known(monkeypatch: pytest.MonkeyPatch) -> None:
    sensors = {"nvme": [Reading("Composite", 38.0, 80.0, 85.0)], "empty": []}
    monkeypatch.setattr(psutil, "sensors_temperatures", lambda: sensors, raising=False)
    assert host_module._sensor_temp_c() == 38.0


def test_this_machines_sensors_when_it_has_any() -> None:
    real = psutil.sensors_temperatures()
    fields = _collect(_probe(None)).fields
    if any(real.values()):
        assert -40.0 < fields["temp_c"] < 130.0
    else:
        assert "temp_c" not in fields


def test_cpu_percent_tracks_work_between_runs(no_sensors: None) -> None:
    probe = _probe(None)
    _burn_cpu(0.05)
    _collect(probe)
    # One core of two (or more) spinning: the next reading covers exactly that interval.
    _burn_cpu(0.3)
    assert _collect(probe).fields["cpu_pct"] > 0.0


CpuTimes = namedtuple("CpuTimes", "user nice system idle iowait guest guest_nice")


def test_cpu_busy_pct_from_counter_deltas() -> None:
    before = CpuTimes(100.0, 0.0, 50.0, 1000.0, 10.0, 0.0, 0.0)
    # 30 s user + 10 s system busy, 35 s idle + 5 s iowait not busy: 40 of 80 s.
    after = CpuTimes(130.0, 0.0, 60.0, 1035.0, 15.0, 0.0, 0.0)
    assert host_module.cpu_busy_pct(before, after) == pytest.approx(50.0)


def test_cpu_busy_pct_does_not_count_guest_twice() -> None:
    before = CpuTimes(0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0)
    # Linux counts the 20 s of guest time inside user already.
    after = CpuTimes(20.0, 0.0, 0.0, 20.0, 0.0, 20.0, 0.0)
    assert host_module.cpu_busy_pct(before, after) == pytest.approx(50.0)


def test_cpu_busy_pct_without_elapsed_time_is_unknown() -> None:
    same = CpuTimes(1.0, 0.0, 1.0, 1.0, 0.0, 0.0, 0.0)
    assert host_module.cpu_busy_pct(same, same) is None


# -- the verdict `fieldmon-agent check` shows ----------------------------------------------


def _judge(probe: HostProbe) -> Verdict:
    samples = asyncio.run(probe.collect())
    return probe.verdict(Run(samples, 0.01))


def test_healthy_host_is_ok_with_its_figures(no_sensors: None) -> None:
    health = PiHealth(throttle=ThrottleState.from_word(0x50000), temp_c=48.0)
    verdict = _judge(_probe(health))
    assert verdict.status is Status.OK
    assert verdict.reason.startswith("disk ")
    assert "% full, memory " in verdict.reason
    assert verdict.reason.endswith(", 48 °C")
    assert 0 <= verdict.baseline["disk_pct"] <= 100
    assert "undervoltage" not in verdict.baseline  # flags are in the reason, not the figures


def test_undervoltage_now_warns(no_sensors: None) -> None:
    verdict = _judge(_probe(PiHealth(throttle=ThrottleState.from_word(0x5), temp_c=50.0)))
    assert verdict.status is Status.WARN
    assert verdict.reason == (
        "under-voltage now (Pi firmware) - use the Pi's own power supply and a short, thick cable"
    )


def test_throttled_without_undervoltage_blames_heat(no_sensors: None) -> None:
    verdict = _judge(_probe(PiHealth(throttle=ThrottleState.from_word(0x8), temp_c=84.0)))
    assert verdict.status is Status.WARN
    assert verdict.reason.startswith("the firmware slows the CPU now - too hot?")


def test_nearly_full_outbox_disk_warns(monkeypatch: pytest.MonkeyPatch, no_sensors: None) -> None:
    usage = namedtuple("usage", "total used free percent")
    monkeypatch.setattr(psutil, "disk_usage", lambda _path: usage(100, 93, 7, 93.4))
    verdict = _judge(_probe(None, config={"disk_path": "/var/lib/fieldmon"}))
    assert verdict.status is Status.WARN
    assert verdict.reason == (
        "the disk holding /var/lib/fieldmon is 93% full - "
        "the outbox has little room to keep samples through an outage"
    )


def test_unmeasurable_disk_path_warns(tmp_path: Path, no_sensors: None) -> None:
    missing = tmp_path / "not-mounted"
    verdict = _judge(_probe(None, config={"disk_path": str(missing)}))
    assert verdict.status is Status.WARN
    assert verdict.reason == (
        f"cannot measure the filesystem of {missing} - does host.disk_path exist on this host?"
    )


def test_a_reading_cut_short_warns() -> None:
    verdict = _probe(None).verdict(Run([], 30.0, timed_out=True))
    assert (verdict.status, verdict.reason) == (
        Status.WARN,
        "no reading within 30s - is this host overloaded?",
    )
