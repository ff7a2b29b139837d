"""
What `resilient` costs per node-to-node call: ``python -m examples.kv.bench_peers``.

One process, one event loop (uvloop): an aiohttp server answering
``POST /internal/replicate`` with one ack, and two `Peers` sending it one-record
batches through `Peers.send_batch`, one with the resilient session (the
`ResilienceMiddleware` and the peer's pipeline) and one with ``plain=True``. Rounds
alternate the order; each round times ``--calls`` sequential calls per side in CPU time
(``time.process_time``: client and server both, so the difference is `resilient`'s
client-side cost). Prints the median per call of each side and of the per-round
difference, with the range.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time

from aiohttp import web

from .._process import LOCALHOST, free_port, uvloop_factory
from .codec import encode_acks
from .hlc import Version
from .peers import Peers
from .storage import Record

__all__ = ["main"]

_SIDES = ("resilient", "plain")


async def _replicate(request: web.Request) -> web.Response:
    await request.read()
    return web.Response(body=encode_acks([True]), content_type="application/octet-stream")


async def _measure(rounds: int, calls: int) -> dict[str, list[float]]:
    app = web.Application()
    app.router.add_post("/internal/replicate", _replicate)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, LOCALHOST, port).start()
    address = {"p": f"{LOCALHOST}:{port}"}
    peers = {side: Peers(address, "token", plain=side == "plain") for side in _SIDES}
    batch: list[tuple[Record, str | None]] = [
        (Record(b"key", Version(1, 0, "n1"), b"v" * 100), None)
    ]
    per_call: dict[str, list[float]] = {side: [] for side in _SIDES}
    try:
        for number in range(rounds):
            for side in _SIDES if number % 2 else _SIDES[::-1]:
                for _ in range(calls // 10):  # warm: connections open, caches filled
                    await peers[side].send_batch("p", batch, 2.0)
                began = time.process_time()
                for _ in range(calls):
                    await peers[side].send_batch("p", batch, 2.0)
                per_call[side].append((time.process_time() - began) / calls * 1e6)
    finally:
        for side in _SIDES:
            await peers[side].close()
        await runner.cleanup()
    return per_call


def _spread(values: list[float]) -> str:
    return f"{statistics.median(values):.1f} us ({min(values):.1f} to {max(values):.1f})"


def main(argv: list[str] | None = None) -> int:
    """
    Run the comparison and print it.
    """
    parser = argparse.ArgumentParser(prog="python -m examples.kv.bench_peers")
    parser.add_argument("--rounds", type=int, default=12)
    parser.add_argument("--calls", type=int, default=2000)
    args = parser.parse_args(argv)
    with asyncio.Runner(loop_factory=uvloop_factory()) as runner:
        per_call = runner.run(_measure(args.rounds, args.calls))
    for side in _SIDES:
        print(f"{side:9} CPU per call (client + server): {_spread(per_call[side])}")
    difference = [a - b for a, b in zip(per_call["resilient"], per_call["plain"], strict=True)]
    print(f"resilient - plain, round by round: {_spread(difference)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
