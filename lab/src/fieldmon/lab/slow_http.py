"""A slow HTTP/1.1 backend: answers every request after a delay, for tests behind a proxy.

`python -m fieldmon.lab.slow_http --listen 127.0.0.1:8081 --delay-ms 300`. A request's
`?delay_ms=N` overrides the delay. The answer has no Content-Length and ends with the
connection, so a proxy in front (nginx) passes it on chunked.
"""

from __future__ import annotations

import argparse
import asyncio
from urllib.parse import parse_qs, urlsplit

BODY = b"slow but fine\n"


async def _answer(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, delay_ms: float
) -> None:
    try:
        head = await reader.readuntil(b"\r\n\r\n")
        target = head.split(b" ", 2)[1].decode("latin-1")
        query = parse_qs(urlsplit(target).query)
        delay = float(query.get("delay_ms", [delay_ms])[0])
        # The point of this server: the delay a slow backend puts before its first byte.
        await asyncio.sleep(delay / 1000.0)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nConnection: close\r\n\r\n")
        writer.write(BODY)
        await writer.drain()
    except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, IndexError, ValueError):
        pass  # not HTTP, or the client went away: nothing to answer
    except ConnectionError:
        pass
    finally:
        writer.close()


async def serve(host: str, port: int, delay_ms: float) -> None:
    """Answer until killed."""
    server = await asyncio.start_server(
        lambda r, w: _answer(r, w, delay_ms), host=host, port=port, reuse_address=True
    )
    async with server:
        await server.serve_forever()


def main() -> None:
    """Parse `--listen HOST:PORT --delay-ms N` and serve."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--listen", required=True, help="HOST:PORT")
    parser.add_argument("--delay-ms", type=float, default=300.0)
    args = parser.parse_args()
    host, _, port = args.listen.rpartition(":")
    asyncio.run(serve(host.strip("[]"), int(port), args.delay_ms))


if __name__ == "__main__":
    main()
