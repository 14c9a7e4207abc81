"""A slow HTTP/1.1 backend: answers every request after a delay, for tests behind a proxy.

`python -m fieldmon.lab.slow_http --listen 127.0.0.1:8081 --delay-ms 300 [--control FILE]`.
A request's `?delay_ms=N` overrides the delay. With `--control`, each request first reads that
JSON file, `{"delay_ms": 800, "status": 503}` (either key optional; a missing or unreadable file
means the command line's delay and 200), so a demo or a test can make the backend slow or failing
while it runs. The answer has no Content-Length and ends with the connection, so a proxy in front
(nginx) passes it on chunked.
"""

from __future__ import annotations

import argparse
import asyncio
import json
from http import HTTPStatus
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

BODY = b"slow but fine\n"


def _controlled(control: Path | None, delay_ms: float) -> tuple[float, int]:
    """(delay ms, status) for this request: the control file's, else the defaults."""
    if control is None:
        return delay_ms, 200
    try:
        wanted = json.loads(control.read_text(encoding="utf-8"))
        return float(wanted.get("delay_ms", delay_ms)), int(wanted.get("status", 200))
    except (OSError, ValueError, TypeError, AttributeError):
        return delay_ms, 200


async def _answer(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    delay_ms: float,
    control: Path | None,
) -> None:
    try:
        head = await reader.readuntil(b"\r\n\r\n")
        target = head.split(b" ", 2)[1].decode("latin-1")
        query = parse_qs(urlsplit(target).query)
        delay, status = _controlled(control, delay_ms)
        delay = float(query.get("delay_ms", [delay])[0])
        # The point of this server: the delay a slow backend puts before its first byte.
        await asyncio.sleep(delay / 1000.0)
        phrase = HTTPStatus(status).phrase
        writer.write(
            f"HTTP/1.1 {status} {phrase}\r\nContent-Type: text/plain\r\n"
            "Connection: close\r\n\r\n".encode("latin-1")
        )
        writer.write(BODY if status < 400 else f"{phrase}\n".encode("latin-1"))
        await writer.drain()
    except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, IndexError, ValueError):
        pass  # not HTTP, or the client went away: nothing to answer
    except ConnectionError:
        pass
    finally:
        writer.close()


async def serve(host: str, port: int, delay_ms: float, control: Path | None = None) -> None:
    """Answer until killed."""
    server = await asyncio.start_server(
        lambda r, w: _answer(r, w, delay_ms, control), host=host, port=port, reuse_address=True
    )
    async with server:
        await server.serve_forever()


def main() -> None:
    """Parse `--listen HOST:PORT --delay-ms N [--control FILE]` and serve."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--listen", required=True, help="HOST:PORT")
    parser.add_argument("--delay-ms", type=float, default=300.0)
    parser.add_argument("--control", type=Path, help="JSON file read per request")
    args = parser.parse_args()
    host, _, port = args.listen.rpartition(":")
    asyncio.run(serve(host.strip("[]"), int(port), args.delay_ms, args.control))


if __name__ == "__main__":
    main()
