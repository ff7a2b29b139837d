"""
What `ResilienceMiddleware` adds to a real aiohttp GET over loopback, next to
aiohttp-retry's `RetryClient` doing the same retries.

    python -m benchmarks.middleware -o /tmp/m1.json         # pyperf; then benchmarks.report
    python -m benchmarks.middleware --cpu -o /tmp/c1.json   # the client's CPU time instead
    python -m benchmarks.middleware --quick --md /tmp/m.md

A trivial aiohttp handler (200 "ok") answers in a separate process on 127.0.0.1 (one per
timing process, started on first use), so its CPU time is not billed to the client. Each
case is a client session with its own keep-alive connection; one call is a GET with its
body read. Happy path only: no retry, backoff or breaker transition happens.
"""

from __future__ import annotations

import asyncio
import atexit
import sys
from collections.abc import Callable
from typing import Any

import aiohttp
from aiohttp import web

from benchmarks import _perf
from benchmarks._perf import Case
from benchmarks._server import HOST, ServerProcess, serve_app
from benchmarks.report import Figure, Report
from resilient import Bulkhead, CircuitBreaker, Policy, Retry, RetryBudget, Timeout, pipeline
from resilient.integrations.aiohttp import ResilienceMiddleware

# Long enough that a starved machine (the test suite runs this under `stress`) never
# times out a local GET: the value doesn't change what a call costs.
TIMEOUT = 10.0


def serve(lifetime: float) -> None:
    """The server process: answer every GET / with 200 "ok"."""

    async def ok(_: web.Request) -> web.Response:
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_get("/", ok)
    asyncio.run(serve_app(app, lifetime))


def full_pipeline(key: str) -> Policy:
    """Timeout + Retry (with budget) + CircuitBreaker + Bulkhead, for one host."""
    return pipeline(
        Timeout(TIMEOUT, name=key),
        Retry(attempts=3, budget=RetryBudget(0.1), name=key),
        CircuitBreaker(name=key, failure_threshold=5, reset_timeout=30.0),
        Bulkhead(max_concurrent=10, name=key),
    )


def _url() -> str:
    """The server's URL; the server starts on first use and stops when this process exits."""
    if not _SERVER:
        server = ServerProcess("benchmarks.middleware", ["--server-lifetime", "1800"])
        _SERVER.append(server.__enter__())
        atexit.register(server.__exit__)
    return f"http://{HOST}:{_SERVER[0].port}/"


_SERVER: list[ServerProcess] = []


def _getter(session: Callable[[], Any]) -> Callable[[], Any]:
    """A builder: opens `session()` in the loop; each call GETs / and reads the body."""

    async def build() -> Callable[[], Any]:
        client, url = session(), _url()
        _perf.close_at_end(client.close)

        async def get() -> int:
            async with client.get(url) as response:
                body = await response.read()
            return 42 if response.status == 200 and body == b"ok" else response.status

        return get

    return build


def _retry_client() -> Any:
    from aiohttp_retry import ExponentialRetry, RetryClient

    return RetryClient(retry_options=ExponentialRetry(attempts=3), raise_for_status=False)


def cases() -> list[Case]:
    """One case per client."""
    session = aiohttp.ClientSession
    return [
        Case("bare ClientSession", _getter(session), "aiohttp.ClientSession()"),
        Case("ResilienceMiddleware() (default policy)",
             _getter(lambda: session(middlewares=[ResilienceMiddleware()])),
             "ClientSession(middlewares=[ResilienceMiddleware()])"),
        Case("ResilienceMiddleware, full pipeline per host",
             _getter(lambda: session(middlewares=[ResilienceMiddleware(full_pipeline)])),
             "ResilienceMiddleware(lambda key: pipeline(Timeout(10), Retry(3,"
             " budget=RetryBudget(0.1)), CircuitBreaker(5, 30), Bulkhead(10)))"),
        Case("same, propagate=False (no deadline or trace headers)",
             _getter(lambda: session(middlewares=[
                 ResilienceMiddleware(full_pipeline, propagate=False)])),
             "ResilienceMiddleware(<same factory>, propagate=False)"),
        Case("aiohttp-retry RetryClient", _getter(_retry_client),
             "RetryClient(retry_options=ExponentialRetry(attempts=3))", ("aiohttp_retry",)),
    ]  # fmt: skip


BARE = "bare ClientSession"
# fmt: off
PAGE = Report(
    "middleware",
    "aiohttp client middleware over loopback",
    BARE,
    [
        Figure("default policy: overhead % of a bare GET",
               ("ResilienceMiddleware() (default policy)", BARE), [(BARE, None)], 10.0,
               percent=True),
        Figure("full pipeline: overhead % of a bare GET",
               ("ResilienceMiddleware, full pipeline per host", BARE), [(BARE, None)], 10.0,
               percent=True),
        Figure("aiohttp-retry RetryClient: overhead % of a bare GET",
               ("aiohttp-retry RetryClient", BARE), [(BARE, None)], percent=True),
        Figure("default policy / RetryClient (overheads)",
               ("ResilienceMiddleware() (default policy)", BARE),
               [("aiohttp-retry RetryClient", BARE)], 1.0),
        Figure("full pipeline / RetryClient (overheads)",
               ("ResilienceMiddleware, full pipeline per host", BARE),
               [("aiohttp-retry RetryClient", BARE)], 1.0),
    ],
    notes="The middleware's work per request: choosing the host's policy, running it, and"
    " stamping the deadline and trace headers (opentelemetry-api is installed and no span"
    " is active: the default propagators would write nothing, so they are not asked). A"
    " trivial handler on"
    " loopback is the worst case for the share: against a service a millisecond away the"
    " same microseconds are a few percent.",
)
# fmt: on


if __name__ == "__main__":
    if "--serve" in sys.argv:
        lifetime = sys.argv[sys.argv.index("--server-lifetime") + 1]
        serve(float(lifetime))
        raise SystemExit(0)
    raise SystemExit(_perf.main("benchmarks.middleware", cases, PAGE))
