"""Pi firmware health: parsing recorded vcgencmd outputs and running a vcgencmd stand-in."""

from __future__ import annotations

import asyncio
import logging
import stat
from pathlib import Path

import pytest

from fieldmon.firmware_hooks.pi import (
    PiFirmware,
    ThrottleState,
    VcgencmdParseError,
    parse_temp,
    parse_throttled,
)

RECORDED = Path(__file__).parent.parent / "data" / "vcgencmd"


def _recorded(name: str) -> str:
    return (RECORDED / name).read_text(encoding="utf-8")


def test_healthy_pi_has_no_flag_set() -> None:
    state = parse_throttled(_recorded("throttled-healthy.txt"))
    assert state == ThrottleState.from_word(0)
    assert state.raw == 0
    assert not state.undervoltage_now
    assert not state.slowed_now
    assert not state.undervoltage_since_boot
    assert not state.throttled_since_boot


def test_undervoltage_now_with_throttling() -> None:
    # 0x50005: under-voltage and throttled now, and both also since boot.
    state = parse_throttled(_recorded("throttled-undervoltage-now.txt"))
    assert state.raw == 0x50005
    assert state.undervoltage_now
    assert state.throttled_now
    assert not state.freq_capped_now
    assert not state.soft_temp_limit_now
    assert state.slowed_now
    assert state.undervoltage_since_boot
    assert state.throttled_since_boot
    assert not state.freq_capped_since_boot
    assert not state.soft_temp_limit_since_boot


def test_throttled_since_boot_only() -> None:
    state = parse_throttled(_recorded("throttled-since-boot.txt"))
    assert not state.undervoltage_now
    assert not state.slowed_now
    assert state.undervoltage_since_boot
    assert state.throttled_since_boot
    assert not state.freq_capped_since_boot


def test_capped_and_soft_limit_since_boot() -> None:
    state = parse_throttled(_recorded("throttled-hot-since-boot.txt"))  # 0xe0000
    assert not state.undervoltage_since_boot
    assert state.freq_capped_since_boot
    assert state.throttled_since_boot
    assert state.soft_temp_limit_since_boot
    assert not state.slowed_now


@pytest.mark.parametrize(("name", "celsius"), [("temp-healthy.txt", 48.3), ("temp-hot.txt", 81.7)])
def test_measure_temp(name: str, celsius: float) -> None:
    assert parse_temp(_recorded(name)) == pytest.approx(celsius)


@pytest.mark.parametrize("name", ["throttled-garbage.txt", "temp-garbage.txt"])
def test_garbage_is_refused_with_what_was_printed(name: str) -> None:
    parse = parse_throttled if name.startswith("throttled") else parse_temp
    with pytest.raises(VcgencmdParseError, match="printed"):
        parse(_recorded(name))


def test_each_parser_refuses_the_other_query() -> None:
    with pytest.raises(VcgencmdParseError):
        parse_throttled(_recorded("temp-healthy.txt"))
    with pytest.raises(VcgencmdParseError):
        parse_temp(_recorded("throttled-healthy.txt"))


def _fake_vcgencmd(directory: Path, throttled: str, temp: str, *, sleep: float = 0) -> Path:
    """An executable that answers like vcgencmd with recorded output files."""
    script = directory / "vcgencmd"
    # exec: on timeout the killed process is the sleeper itself, no orphan is left behind.
    hang = f"exec sleep {sleep}\n" if sleep else ""
    script.write_text(
        "#!/bin/sh\n"
        f"{hang}"
        'case "$1" in\n'
        f"  get_throttled) cat {RECORDED / throttled} ;;\n"
        f"  measure_temp) cat {RECORDED / temp} ;;\n"
        "  *) echo 'bad query' >&2; exit 1 ;;\n"
        "esac\n",
        encoding="utf-8",
    )
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return script


def test_reads_through_the_command(tmp_path: Path) -> None:
    command = _fake_vcgencmd(tmp_path, "throttled-undervoltage-now.txt", "temp-healthy.txt")
    health = asyncio.run(PiFirmware(str(command)).read())
    assert health is not None
    assert health.throttle is not None
    assert health.throttle.undervoltage_now
    assert health.temp_c == pytest.approx(48.3)


def test_garbage_output_leaves_that_part_unknown(tmp_path: Path) -> None:
    command = _fake_vcgencmd(tmp_path, "throttled-garbage.txt", "temp-hot.txt")
    health = asyncio.run(PiFirmware(str(command)).read())
    assert health is not None
    assert health.throttle is None
    assert health.temp_c == pytest.approx(81.7)


def test_hung_command_times_out_without_blocking_the_loop(tmp_path: Path) -> None:
    command = _fake_vcgencmd(tmp_path, "throttled-healthy.txt", "temp-healthy.txt", sleep=30)

    async def read_while_ticking() -> tuple[object, int]:
        ticks = 0

        async def tick() -> None:
            nonlocal ticks
            while True:
                await asyncio.sleep(0.01)
                ticks += 1

        ticker = asyncio.create_task(tick())
        health = await PiFirmware(str(command), timeout=0.5).read()
        ticker.cancel()
        return health, ticks

    health, ticks = asyncio.run(read_while_ticking())
    assert health is not None
    assert health.throttle is None
    assert health.temp_c is None
    assert ticks > 0  # the loop kept running while vcgencmd hung


def test_absent_vcgencmd_is_skipped_and_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    firmware = PiFirmware("fieldmon-test-no-such-vcgencmd")
    with caplog.at_level(logging.DEBUG, logger="fieldmon.firmware_hooks.pi"):
        first = asyncio.run(firmware.read())
        second = asyncio.run(firmware.read())
    assert first is None
    assert second is None
    absent = [r for r in caplog.records if "vcgencmd not found" in r.getMessage()]
    assert len(absent) == 1
    assert absent[0].levelno == logging.DEBUG
