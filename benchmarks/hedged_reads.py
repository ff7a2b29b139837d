"""Hedged GETs through `ResilienceMiddleware`: is every successful response readable?

Usage (from the repository root)::

    python -m benchmarks.hedged_reads                      # 4,000 requests, 20 ms server
    python -m benchmarks.hedged_reads --requests 400 --concurrency 20

A real aiohttp server on 127.0.0.1 answers each GET after ``--latency`` seconds; the
client sends ``--requests`` GETs, ``--concurrency`` at a time, through
``ResilienceMiddleware`` with ``Hedge(--delay, max_hedged=2)``, so hedges start right
around the time the first answers arrive. It reads every response and prints how many
could not be read (a response handed over already released), and how many connections
the pool still holds at the end (a leak). The run stops by itself.
"""

from __future__ import annotations

import argparse
import asyncio
import sys

import aiohttp
from aiohttp import test_utils, web

from resilient import Hedge
from resilient.integrations.aiohttp import ResilienceMiddleware


async def _serve(latency: float) -> test_utils.TestServer:
    async def handle(_: web.Request) -> web.Response:
        await asyncio.sleep(latency)
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_get("/", handle)
    server = test_utils.TestServer(app, host="127.0.0.1")
    await server.start_server()
    return server


async def run(requests: int, concurrency: int, latency: float, delay: float) -> dict[str, int]:
    """
    Send the hedged GETs; count outcomes.
    """
    server = await _serve(latency)
    counts = {"ok": 0, "unreadable": 0, "other": 0}
    middleware = ResilienceMiddleware(lambda key: Hedge(delay, max_hedged=2, name=key))
    connector = aiohttp.TCPConnector(limit=concurrency * 3)
    gate = asyncio.Semaphore(concurrency)

    async def one(client: aiohttp.ClientSession) -> None:
        async with gate:
            try:
                async with client.get(server.make_url("/")) as response:
                    await response.read()
                    counts["ok"] += 1
            except aiohttp.ClientConnectionError:
                counts["unreadable"] += 1
            except (aiohttp.ClientError, TimeoutError):
                counts["other"] += 1

    try:
        async with (
            asyncio.timeout(600),
            aiohttp.ClientSession(middlewares=[middleware], connector=connector) as client,
        ):
            await asyncio.gather(*(one(client) for _ in range(requests)))
            counts["held_connections"] = len(connector._acquired)  # noqa: SLF001  # no public count
    finally:
        await server.close()
    return counts


def main(argv: list[str] | None = None) -> int:
    """
    Run once and print the counts; exit 1 when a response was unreadable.
    """
    parser = argparse.ArgumentParser(prog="python -m benchmarks.hedged_reads")
    parser.add_argument("--requests", type=int, default=4000)
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--latency", type=float, default=0.02)
    parser.add_argument("--delay", type=float, default=0.02)
    args = parser.parse_args(argv)
    counts = asyncio.run(run(args.requests, args.concurrency, args.latency, args.delay))
    print(
        f"unreadable hedged responses {counts['unreadable']:,} of {args.requests:,}"
        f" (read {counts['ok']:,}, other errors {counts['other']:,},"
        f" connections held after the run {counts['held_connections']})"
    )
    return 1 if counts["unreadable"] or counts["held_connections"] else 0


if __name__ == "__main__":
    sys.exit(main())
