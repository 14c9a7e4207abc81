"""Health of the agent's own host (psutil) and Pi firmware.

Emits one `host` row per run, timestamped at the run's start (ns since the epoch):
- tags: site, agent
- fields: cpu_pct (percent of all cores since the previous run), mem_pct (percent of RAM in use),
  disk_pct (percent used of the filesystem holding `disk_path`), uptime_s (seconds since boot,
  float), temp_c (SoC / CPU temperature in degrees Celsius, from the kernel's sensors, else from
  vcgencmd), undervoltage (bool, the Pi's supply is under-voltage now), throttled (bool, the Pi
  firmware caps, throttles or soft-limits the CPU now), outbox_depth (integer samples waiting
  to be acknowledged), outbox_dropped (integer samples the outbox has dropped to stay under
  `max_mb` or on a full disk, cumulative over the outbox file's life: a counter, so
  `non_negative_difference()` gives the drops per interval), outbox_age_s (float seconds since
  the oldest envelope still waiting for a collector's ack was made; 0 when none waits). A field
  the host cannot measure (no sensor, not a Pi, no outbox) is left out, never sent as a fake 0.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Awaitable, Callable
from typing import Any

import psutil

from fieldmon.agent.probes.base import ProbeKind, ProbeResources, Run, Status, Verdict
from fieldmon.core.site.config import SiteConfig
from fieldmon.core.site.host import HostConfig
from fieldmon.core.wire.models import FieldValue, Sample
from fieldmon.firmware_hooks.pi import PiFirmware, PiHealth

# Kernel sensor chips that measure the SoC / CPU die, most specific first: the Pi's thermal zone,
# Intel's and AMD's package sensors, then the generic ACPI zone.
_CPU_SENSORS = ("cpu_thermal", "coretemp", "k10temp", "soc_thermal", "acpitz")
# Over this, the filesystem holding the outbox has little room to keep samples through an outage.
DISK_FULL_PCT = 90.0


PiHealthReader = Callable[[], Awaitable[PiHealth | None]]


class HostProbe:
    """Measures the agent's own host; each `collect()` is one `host` row.

    `outbox_depth` reports how many samples wait in the outbox, `outbox_dropped` how many it
    has dropped so far, `outbox_age_s` how old the oldest waiting envelope is (0 when none);
    `pi_health` reads the Pi firmware (a seam for tests; by default vcgencmd, skipped where it
    is absent).
    """

    def __init__(
        self,
        config: HostConfig,
        *,
        site: str,
        agent: str,
        outbox_depth: Callable[[], int] | None = None,
        outbox_dropped: Callable[[], int] | None = None,
        outbox_age_s: Callable[[], float] | None = None,
        pi_health: PiHealthReader | None = None,
    ) -> None:
        self.config = config
        self.name = "host"
        self.interval = config.interval
        self._tags = {"site": site, "agent": agent}
        self._outbox_depth = outbox_depth
        self._outbox_dropped = outbox_dropped
        self._outbox_age_s = outbox_age_s
        self._pi_health = pi_health if pi_health is not None else PiFirmware().read
        # Our own baseline rather than psutil.cpu_percent(None), whose single global baseline
        # any other caller in the process would move. The first collect() covers the time
        # since construction.
        self._cpu_times = psutil.cpu_times()

    async def collect(self) -> list[Sample]:
        """One reading of CPU, memory, disk, temperature, firmware and outbox."""
        started_ns = time.time_ns()
        fields: dict[str, FieldValue] = {
            "mem_pct": float(psutil.virtual_memory().percent),
            "uptime_s": max(0.0, time.time() - psutil.boot_time()),
        }
        cpu_times = psutil.cpu_times()
        cpu_pct = cpu_busy_pct(self._cpu_times, cpu_times)
        self._cpu_times = cpu_times
        if cpu_pct is not None:
            fields["cpu_pct"] = cpu_pct
        # Both read files (statvfs, /sys): keep them off the event loop.
        disk_pct, sensor_temp = await asyncio.gather(
            asyncio.to_thread(self._disk_pct), asyncio.to_thread(_sensor_temp_c)
        )
        if disk_pct is not None:
            fields["disk_pct"] = disk_pct
        health = await self._pi_health()
        fields.update(_pi_fields(health, sensor_temp))
        if self._outbox_depth is not None:
            fields["outbox_depth"] = int(self._outbox_depth())
        if self._outbox_dropped is not None:
            fields["outbox_dropped"] = int(self._outbox_dropped())
        if self._outbox_age_s is not None:
            fields["outbox_age_s"] = float(self._outbox_age_s())
        return [Sample(measurement="host", tags=dict(self._tags), fields=fields, time=started_ns)]

    def verdict(self, run: Run) -> Verdict:
        """WARN when the outbox's disk is full or unmeasurable, or the Pi is short of power."""
        if run.timed_out or not run.samples:
            return Verdict(
                Status.WARN, f"no reading within {run.duration_s:g}s - is this host overloaded?"
            )
        return judge_host(self.config, run.samples[0].fields)

    def _disk_pct(self) -> float | None:
        try:
            return float(psutil.disk_usage(self.config.disk_path).percent)
        except OSError:
            return None


def judge_host(config: HostConfig, fields: dict[str, FieldValue]) -> Verdict:
    """One `host` row judged for the engineer; the baseline is its numeric fields."""
    warnings = []
    disk = fields.get("disk_pct")
    if not isinstance(disk, float):
        warnings.append(
            f"cannot measure the filesystem of {config.disk_path} - "
            "does host.disk_path exist on this host?"
        )
    elif disk > DISK_FULL_PCT:
        warnings.append(
            f"the disk holding {config.disk_path} is {disk:.0f}% full - "
            "the outbox has little room to keep samples through an outage"
        )
    if fields.get("undervoltage") is True:
        warnings.append(
            "under-voltage now (Pi firmware) - use the Pi's own power supply and a short, "
            "thick cable"
        )
    elif fields.get("throttled") is True:
        warnings.append("the firmware slows the CPU now - too hot? Give the Pi air or a heatsink")
    baseline = {
        name: value
        for name, value in fields.items()
        if isinstance(value, int | float) and not isinstance(value, bool)
    }
    if warnings:
        return Verdict(Status.WARN, "; ".join(warnings), baseline)
    reason = f"disk {disk:.0f}% full, memory {fields['mem_pct']:.0f}% used"
    temp = fields.get("temp_c")
    if isinstance(temp, float):
        reason += f", {temp:.0f} °C"
    return Verdict(Status.OK, reason, baseline)


def outbox_age_s(oldest_created_ns: int | None, now_ns: int) -> float:
    """Seconds the oldest waiting envelope has waited; 0 when the outbox is empty."""
    if oldest_created_ns is None:
        return 0.0
    return max(0.0, (now_ns - oldest_created_ns) / 1e9)


def cpu_busy_pct(before: Any, after: Any) -> float | None:
    """Percent of all cores' time spent busy between two psutil.cpu_times() readings.

    Idle and iowait count as not busy. Linux already counts guest time in user time, so it is
    left out of the total, as psutil.cpu_percent does. None when no time passed between them.
    """
    doubled = ("guest", "guest_nice")
    total = sum(
        float(getattr(after, name) - getattr(before, name))
        for name in after._fields
        if name not in doubled
    )
    idle = sum(
        float(getattr(after, name, 0.0) - getattr(before, name, 0.0)) for name in ("idle", "iowait")
    )
    if total <= 0:
        return None
    return min(100.0, max(0.0, 100.0 * (total - idle) / total))


def _sensor_temp_c() -> float | None:
    """The CPU's temperature from the kernel's sensors; None where there is none."""
    read = getattr(psutil, "sensors_temperatures", None)
    if read is None:  # not every platform psutil supports has sensors
        return None
    sensors = read()
    for chip in _CPU_SENSORS:
        if sensors.get(chip):
            return float(sensors[chip][0].current)
    for readings in sensors.values():
        if readings:
            return float(readings[0].current)
    return None


def _pi_fields(health: PiHealth | None, sensor_temp: float | None) -> dict[str, FieldValue]:
    fields: dict[str, FieldValue] = {}
    temp = sensor_temp if sensor_temp is not None else (health.temp_c if health else None)
    if temp is not None:
        fields["temp_c"] = temp
    if health is not None and health.throttle is not None:
        fields["undervoltage"] = health.throttle.undervoltage_now
        fields["throttled"] = health.throttle.slowed_now
    return fields


def _build(host: HostConfig, site: SiteConfig, resources: ProbeResources) -> HostProbe:
    return HostProbe(
        host,
        site=site.site,
        agent=site.agent.id,
        outbox_depth=resources.outbox_depth,
        outbox_dropped=resources.outbox_dropped,
        outbox_age_s=resources.outbox_age_s,
    )


KIND = ProbeKind(
    name="host",
    config_model=HostConfig,
    site_section="host",
    probe=HostProbe,
    measurements=("host",),
    build=_build,
    label="host",
    target=lambda _host: socket.gethostname(),
    setup_errors=(),
)
