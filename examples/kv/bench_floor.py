"""
The floor the bench compares a node against: a bare aiohttp server on uvloop.

``python -m examples.kv.bench_floor PORT`` answers ``PUT /kv/{key}`` with 204 (body
read and dropped) and ``GET /kv/{key}`` with 200 and 100 bytes, nothing else: no
storage, no peers, no middleware, no access log. The CPU it spends per request is
what any aiohttp service pays on this machine before doing its own work.
"""

from __future__ import annotations

import asyncio
import sys

from aiohttp import web

from .._process import uvloop_factory
from .server import _watch_stdin

__all__ = ["main"]

_VALUE = b"v" * 100


async def _put(request: web.Request) -> web.Response:
    await request.read()
    return web.Response(status=204)


async def _get(_: web.Request) -> web.Response:
    return web.Response(body=_VALUE, content_type="application/octet-stream")


async def _health(_: web.Request) -> web.Response:
    return web.Response(text="ok")


async def _serve(port: int, *, stop_on_stdin_eof: bool = False) -> None:
    app = web.Application()
    app.add_routes([
        web.put("/kv/{key}", _put), web.get("/kv/{key}", _get), web.get("/health", _health)
    ])  # fmt: skip
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port, backlog=1024).start()
    stop = asyncio.Event()  # set by nothing but the stdin watch: otherwise until killed
    if stop_on_stdin_eof:  # the bench's pipe: gone when the bench dies, however it dies
        _watch_stdin(asyncio.get_running_loop(), stop)
    await stop.wait()
    await runner.cleanup()


def main(argv: list[str] | None = None) -> int:
    """
    Serve on 127.0.0.1:PORT until killed (``PORT --stop-on-stdin-eof``: or stdin closes).
    """
    args = sys.argv[1:] if argv is None else argv
    port = int(args[0])
    with asyncio.Runner(loop_factory=uvloop_factory()) as runner:
        runner.run(_serve(port, stop_on_stdin_eof="--stop-on-stdin-eof" in args[1:]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
