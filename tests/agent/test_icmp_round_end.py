"""A round waits for its last echo's reply even when earlier replies emptied it in between.

On a real link each reply returns before the next echo leaves (RTT below the spacing), so the
round is momentarily complete after every reply; the last echo must still get its full timeout.
Kernel replies inside a namespace come back within the send itself, which hid this, so the far
end here is the lab's userspace echo responder with a few milliseconds of delay.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator

import pytest

from fieldmon.agent.probes.icmp_socket import IcmpPinger
from fieldmon.lab.impair import EchoResponder
from fieldmon.lab.netns import Namespace, unique_name, veth

pytestmark = [
    pytest.mark.netns,
    pytest.mark.skipif(os.geteuid() != 0, reason="raw ICMP sockets and namespaces need root"),
]


@pytest.fixture
def delayed_host() -> Iterator[str]:
    """A namespace whose echo replies come from the userspace responder 5 ms late."""
    with Namespace(unique_name("roundend")) as far:
        link = veth(None, far)
        with EchoResponder(far, delay_ms=5):
            yield str(link.b_v4.ip)


async def _rounds(address: str, count: int, rounds: int) -> list[int]:
    async with IcmpPinger() as pinger:
        received = []
        for _ in range(rounds):
            result = await pinger.round(address, count=count, spacing=0.05, timeout=0.5)
            received.append(result.received)
        return received


@pytest.mark.parametrize("count", [1, 3, 10])
def test_every_echo_of_a_round_is_answered_on_a_slower_link(delayed_host: str, count: int) -> None:
    assert asyncio.run(_rounds(delayed_host, count, rounds=3)) == [count] * 3
