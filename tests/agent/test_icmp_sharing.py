"""What keeps ICMP cheap when rounds share a host: in-kernel identifier filter, shared clock."""

from __future__ import annotations

import asyncio
import os
from typing import Any

import pytest

from fieldmon.agent.probes.icmp_socket import IcmpPinger

root_only = pytest.mark.skipif(os.geteuid() != 0, reason="raw ICMP sockets need root")


@root_only
@pytest.mark.parametrize("address", ["127.0.0.1", "::1"])
def test_another_pingers_replies_never_reach_our_socket(address: str) -> None:
    async def scenario() -> tuple[int, int, int, int]:
        async with IcmpPinger() as ours, IcmpPinger() as theirs:
            assert ours.mode == theirs.mode == "raw"
            read = {"ours": 0, "theirs": 0}
            for name, pinger in (("ours", ours), ("theirs", theirs)):
                dispatch = pinger._dispatch

                def counting(*args: Any, _name: str = name, _dispatch: Any = dispatch) -> None:
                    read[_name] += 1
                    _dispatch(*args)

                pinger._dispatch = counting  # type: ignore[method-assign]
            foreign = await theirs.round(address, count=5, spacing=0.01, timeout=0.5)
            seen_while_foreign = read["ours"]
            own = await ours.round(address, count=5, spacing=0.01, timeout=0.5)
            return foreign.received, seen_while_foreign, own.received, read["ours"]

    foreign_received, seen_while_foreign, own_received, seen_total = asyncio.run(scenario())
    assert foreign_received == own_received == 5
    assert seen_while_foreign == 0  # the kernel dropped the other identifier's replies
    assert seen_total == 5


def test_aligned_rounds_send_together_on_the_shared_clock() -> None:
    spacing = 0.05
    addresses = {"127.0.0.1": "early", "127.0.0.2": "late", "127.0.0.3": "plain"}

    async def scenario() -> dict[str, list[float]]:
        sent: dict[str, list[float]] = {name: [] for name in addresses.values()}
        async with IcmpPinger() as pinger:
            loop = asyncio.get_running_loop()
            send_echo = pinger._send_echo

            def recording(rnd: Any, when: float) -> None:
                sent[addresses[rnd.sockaddr[0]]].append(loop.time())
                send_echo(rnd, when)

            pinger._send_echo = recording  # type: ignore[method-assign]

            async def round_after(address: str, delay: float, align: bool) -> None:
                await asyncio.sleep(delay)
                await pinger.round(address, count=4, spacing=spacing, timeout=0.3, align=align)

            await asyncio.sleep(spacing - loop.time() % spacing + 0.005)  # just past a tick
            await asyncio.gather(
                round_after("127.0.0.1", 0.0, True),
                round_after("127.0.0.2", 0.02, True),
                round_after("127.0.0.3", 0.01, False),
            )
        return sent

    sent = asyncio.run(scenario())
    ticks = {name: [round(at / spacing) for at in times] for name, times in sent.items()}
    for name in ("early", "late"):
        assert ticks[name] == list(range(ticks[name][0], ticks[name][0] + 4)), name
        offsets = [at - tick * spacing for at, tick in zip(sent[name], ticks[name], strict=True)]
        assert all(0 <= offset < 0.01 for offset in offsets), (name, offsets)
    # Started 20 ms apart, both waited for the same next tick and sent each echo together.
    assert ticks["early"] == ticks["late"]
    # Unaligned: the first echo leaves at once, before the shared tick.
    assert sent["plain"][0] < sent["early"][0]


def test_an_aligned_round_started_on_a_tick_sends_its_first_echo_at_once() -> None:
    """The scheduler starts aligned rounds on their ticks (`start_grid`): no tick of waiting."""
    spacing = 0.05

    async def scenario() -> tuple[float, list[float]]:
        sent: list[float] = []
        async with IcmpPinger() as pinger:
            loop = asyncio.get_running_loop()
            send_echo = pinger._send_echo

            def recording(rnd: Any, when: float) -> None:
                sent.append(loop.time())
                send_echo(rnd, when)

            pinger._send_echo = recording  # type: ignore[method-assign]
            for _attempt in range(20):
                tick = (loop.time() // spacing + 2) * spacing
                await asyncio.sleep(tick - loop.time())  # a timer never fires early
                if loop.time() - tick < 0.001:  # else a busy host woke us too late to tell
                    break
            result = await pinger.round(
                "127.0.0.1", count=3, spacing=spacing, timeout=0.3, align=True
            )
            assert result.received == 3
        return tick, sent

    tick, sent = asyncio.run(scenario())
    assert tick <= sent[0] < tick + 0.002  # this tick, not the next one
    ticks = [round(at / spacing) for at in sent]
    assert ticks == [round(tick / spacing) + n for n in range(3)]
