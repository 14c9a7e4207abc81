"""Raspberry Pi firmware health from `vcgencmd`: under-voltage, throttling and SoC temperature."""

from __future__ import annotations

import asyncio
import logging
import re
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

logger = logging.getLogger(__name__)
_T = TypeVar("_T")

# Bits of `vcgencmd get_throttled` (Raspberry Pi documentation, "vcgencmd"): the low four say
# what holds now, the same four shifted by 16 whether it happened at any time since boot.
_UNDERVOLTAGE = 1 << 0
_FREQ_CAPPED = 1 << 1
_THROTTLED = 1 << 2
_SOFT_TEMP_LIMIT = 1 << 3
_SINCE_BOOT_SHIFT = 16

_THROTTLED_RE = re.compile(r"^\s*throttled=(0x[0-9a-fA-F]+|\d+)\s*$")
_TEMP_RE = re.compile(r"^\s*temp=(-?\d+(?:\.\d+)?)'C\s*$")
DEFAULT_TIMEOUT = 2.0  # vcgencmd answers in milliseconds; a hung mailbox must not hold a probe


class VcgencmdParseError(ValueError):
    """vcgencmd printed something this parser does not understand."""


@dataclass(frozen=True, slots=True)
class ThrottleState:
    """The decoded `get_throttled` word: each condition now and since boot."""

    raw: int
    undervoltage_now: bool
    freq_capped_now: bool
    throttled_now: bool
    soft_temp_limit_now: bool
    undervoltage_since_boot: bool
    freq_capped_since_boot: bool
    throttled_since_boot: bool
    soft_temp_limit_since_boot: bool

    @classmethod
    def from_word(cls, word: int) -> ThrottleState:
        """Decode the integer vcgencmd prints in hex."""
        boot = word >> _SINCE_BOOT_SHIFT
        return cls(
            raw=word,
            undervoltage_now=bool(word & _UNDERVOLTAGE),
            freq_capped_now=bool(word & _FREQ_CAPPED),
            throttled_now=bool(word & _THROTTLED),
            soft_temp_limit_now=bool(word & _SOFT_TEMP_LIMIT),
            undervoltage_since_boot=bool(boot & _UNDERVOLTAGE),
            freq_capped_since_boot=bool(boot & _FREQ_CAPPED),
            throttled_since_boot=bool(boot & _THROTTLED),
            soft_temp_limit_since_boot=bool(boot & _SOFT_TEMP_LIMIT),
        )

    @property
    def slowed_now(self) -> bool:
        """The CPU runs slower than configured now: capped, throttled or at the soft limit."""
        return self.freq_capped_now or self.throttled_now or self.soft_temp_limit_now


@dataclass(frozen=True, slots=True)
class PiHealth:
    """One reading of the Pi's firmware; a part is None when vcgencmd could not give it."""

    throttle: ThrottleState | None
    temp_c: float | None


def parse_throttled(text: str) -> ThrottleState:
    """Parse `vcgencmd get_throttled` output such as `throttled=0x50005`."""
    match = _THROTTLED_RE.match(text)
    if match is None:
        raise VcgencmdParseError(f"get_throttled printed {text.strip()[:80]!r}")
    return ThrottleState.from_word(int(match.group(1), 0))


def parse_temp(text: str) -> float:
    """Parse `vcgencmd measure_temp` output such as `temp=48.3'C` into degrees Celsius."""
    match = _TEMP_RE.match(text)
    if match is None:
        raise VcgencmdParseError(f"measure_temp printed {text.strip()[:80]!r}")
    return float(match.group(1))


class PiFirmware:
    """Reads firmware health by running vcgencmd in a worker thread, never on the event loop.

    `read()` returns None on hosts without vcgencmd (any non-Pi), logged once at debug level.
    """

    def __init__(self, command: str = "vcgencmd", *, timeout: float = DEFAULT_TIMEOUT) -> None:
        self._command = command
        self._timeout = timeout
        self._absent_logged = False

    async def read(self) -> PiHealth | None:
        """One reading; None where vcgencmd is absent, partial where one query fails."""
        executable = shutil.which(self._command)
        if executable is None:
            if not self._absent_logged:
                logger.debug("vcgencmd not found: no Pi firmware health on this host")
                self._absent_logged = True
            return None
        throttled_text, temp_text = await asyncio.gather(
            asyncio.to_thread(self._run, executable, "get_throttled"),
            asyncio.to_thread(self._run, executable, "measure_temp"),
        )
        return PiHealth(
            throttle=_parsed(parse_throttled, throttled_text),
            temp_c=_parsed(parse_temp, temp_text),
        )

    def _run(self, executable: str, query: str) -> str | None:
        try:
            done = subprocess.run(
                [executable, query],
                capture_output=True,
                text=True,
                timeout=self._timeout,
                check=True,
            )
        except subprocess.TimeoutExpired:
            logger.warning("vcgencmd %s timed out after %gs", query, self._timeout)
            return None
        except subprocess.CalledProcessError as exc:
            logger.warning(
                "vcgencmd %s failed", query, extra={"status": exc.returncode, "stderr": exc.stderr}
            )
            return None
        except OSError as exc:
            logger.warning("vcgencmd %s could not run: %s", query, exc)
            return None
        return done.stdout


def _parsed(parse: Callable[[str], _T], text: str | None) -> _T | None:
    if text is None:
        return None
    try:
        return parse(text)
    except VcgencmdParseError as exc:
        logger.warning("unreadable vcgencmd output: %s", exc)
        return None
