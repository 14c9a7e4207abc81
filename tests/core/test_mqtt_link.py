"""MqttLink hands paho's messages to the event loop in bursts, in order, with one wake-up each."""

from __future__ import annotations

import asyncio
import threading

from fieldmon.core.mqtt.link import MqttLink, new_client
from fieldmon.core.mqtt.settings import BrokerConfig


def test_a_burst_of_messages_wakes_the_loop_once_and_keeps_order() -> None:
    async def scenario() -> tuple[list[int], int]:
        loop = asyncio.get_running_loop()
        config = BrokerConfig(host="127.0.0.1")
        link = MqttLink(new_client(config, "t"), config, loop)
        received: list[int] = []
        link.on_message = received.append  # type: ignore[assignment]
        wakeups = 0
        original = loop.call_soon_threadsafe

        def counting(callback, *args):  # type: ignore[no-untyped-def]
            nonlocal wakeups
            wakeups += 1
            return original(callback, *args)

        loop.call_soon_threadsafe = counting  # type: ignore[method-assign]
        # paho's network thread delivers 1000 messages while the loop is busy elsewhere.
        thread = threading.Thread(
            target=lambda: [link._handle_message(None, None, n) for n in range(1000)]  # type: ignore[arg-type]
        )
        thread.start()
        thread.join()
        for _ in range(100):
            await asyncio.sleep(0)
        return received, wakeups

    received, wakeups = asyncio.run(scenario())
    assert received == list(range(1000))
    assert wakeups == 1
