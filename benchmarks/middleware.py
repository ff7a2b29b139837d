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

`RetryClient` doesn't enter aiohttp's response context: it awaits the request and, on
leaving, closes the response only if it is still open, where ``async with
session.get(...)`` enters the response's context and on leaving it releases the response
and waits for it to close (in and out, about 17,000 instructions of a ~330,000-instruction
GET). So its figure as users write it is its retries' cost minus that. Two more cases
enter and leave a GET the way `RetryClient` does, a bare session's and ours with
`Retry(3)` alone, so that what each adds over the same GET is the cost of the same
retries and nothing else.
"""

from __future__ import annotations

import asyncio
import atexit
import sys
import time
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


class _Floor:
    """
    A policy's happy-path work written by hand, as a middleware: the floor of doing it.

    What a careful user would write without a library: a total `asyncio.timeout`, up to
    three attempts, each under its own `asyncio.timeout` (or, for the full pipeline, a
    `Semaphore` of 10), a breaker that is a consecutive-failure counter, and the
    remaining deadline stamped on each attempt. No retry budget, no jitter, no events,
    no metrics hooks, no trace context: less than the policies do, so the comparison
    flatters the floor.
    """

    def __init__(self, total: float, per_attempt: float | None, bulkhead: bool) -> None:
        self.total, self.per_attempt = total, per_attempt
        self.slots = asyncio.Semaphore(10) if bulkhead else None
        self.failures, self.opened_at = 0, 0.0

    async def __call__(self, request: Any, handler: Any) -> Any:
        async with asyncio.timeout(self.total) as total:
            for attempt in range(3):
                if self.failures >= 5 and time.monotonic() - self.opened_at < 30.0:
                    raise RuntimeError("circuit open")
                try:
                    response = await self._attempt(request, handler, total)
                except (aiohttp.ClientError, OSError):
                    self.failures, self.opened_at = self.failures + 1, time.monotonic()
                    if attempt == 2:
                        raise
                    continue
                if response.status < 500 and response.status != 429:
                    self.failures = 0
                    return response
                self.failures, self.opened_at = self.failures + 1, time.monotonic()
                if attempt < 2:
                    response.release()
            return response

    async def _attempt(self, request: Any, handler: Any, total: asyncio.Timeout) -> Any:
        when = total.when()
        left = 0.0 if when is None else when - asyncio.get_running_loop().time()
        request.headers["X-Request-Timeout-Ms"] = str(max(1, int(left * 1000)))
        if self.slots is not None:
            async with self.slots:
                return await handler(request)
        async with asyncio.timeout(min(self.per_attempt or left, left)):
            return await handler(request)


async def _pass_through(request: Any, handler: Any) -> Any:
    """A client middleware that only awaits its handler: what any middleware costs."""
    return await handler(request)


def _url() -> str:
    """The server's URL; the server starts on first use and stops when this process exits."""
    if not _SERVER:
        server = ServerProcess("benchmarks.middleware", ["--server-lifetime", "1800"])
        _SERVER.append(server.__enter__())
        atexit.register(server.__exit__)
    return f"http://{HOST}:{_SERVER[0].port}/"


_SERVER: list[ServerProcess] = []


def _getter(session: Callable[[], Any], *, awaited: bool = False) -> Callable[[], Any]:
    """
    A builder: opens `session()` in the loop; each call GETs / and reads the body.

    With `awaited`, each GET is entered and left as `RetryClient` does with its own:
    awaited, not ``async with``, and on the way out the response is closed only if still
    open (aiohttp-retry's ``_RequestContext.__aexit__``), not released and waited for.
    """

    async def build() -> Callable[[], Any]:
        client, url = session(), _url()
        _perf.close_at_end(client.close)

        async def get() -> int:
            async with client.get(url) as response:
                body = await response.read()
            return 42 if response.status == 200 and body == b"ok" else response.status

        async def get_awaited() -> int:
            response = await client.get(url)
            try:
                body = await response.read()
            finally:
                if not response.closed:
                    response.close()
            return 42 if response.status == 200 and body == b"ok" else response.status

        return get_awaited if awaited else get

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
        Case(PASS_THROUGH, _getter(lambda: session(middlewares=[_pass_through])),
             "ClientSession(middlewares=[handler_only]): aiohttp's per-request cost of any"
             " middleware"),
        Case(RETRY_ONLY,
             _getter(lambda: session(middlewares=[
                 ResilienceMiddleware(lambda _: Retry(attempts=3), propagate=False)])),
             "ResilienceMiddleware(lambda key: Retry(3), propagate=False): RetryClient's job"),
        Case(BARE_AWAITED, _getter(session, awaited=True),
             "aiohttp.ClientSession(), each GET awaited and closed if still open, as"
             " RetryClient handles its own"),
        Case(RETRY_ONLY_AWAITED,
             _getter(lambda: session(middlewares=[
                 ResilienceMiddleware(lambda _: Retry(attempts=3), propagate=False)]),
                 awaited=True),
             "ResilienceMiddleware(lambda key: Retry(3), propagate=False), each GET as"
             " RetryClient handles its own"),
        Case(FLOOR_DEFAULT,
             _getter(lambda: session(middlewares=[_Floor(30.0, 10.0, bulkhead=False)])),
             "a middleware: asyncio.timeout(30), 3 attempts each under asyncio.timeout(10),"
             " a consecutive-failure breaker, the deadline header"),
        Case(FLOOR_FULL,
             _getter(lambda: session(middlewares=[_Floor(TIMEOUT, None, bulkhead=True)])),
             "a middleware: asyncio.timeout(10), 3 attempts each holding a Semaphore(10),"
             " a consecutive-failure breaker, the deadline header"),
    ]  # fmt: skip


RETRY_ONLY = "ResilienceMiddleware, Retry(3) only, propagate=False"
PASS_THROUGH = "a middleware that only awaits its handler"
BARE_AWAITED = "bare ClientSession, GET entered and left as RetryClient does"
RETRY_ONLY_AWAITED = "Retry(3) only, GET entered and left as RetryClient does"
FLOOR_DEFAULT = "hand-written floor: the default policy's work"
FLOOR_FULL = "hand-written floor: the full pipeline's work"


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
        Figure("Retry(3) only / RetryClient (overheads): the same retries, the same"
               " GET (both over a bare GET entered and left as RetryClient does)",
               (RETRY_ONLY_AWAITED, BARE_AWAITED),
               [("aiohttp-retry RetryClient", BARE_AWAITED)], 1.0),
        Figure("Retry(3) only / RetryClient (overheads), each as users write it"
               " (RetryClient's net of the response exit it skips)",
               (RETRY_ONLY, BARE), [("aiohttp-retry RetryClient", BARE)]),
        Figure("bare GET entered and left as RetryClient does: overhead % of a bare GET"
               " (negative: cheaper)",
               (BARE_AWAITED, BARE), [(BARE, None)], percent=True),
        Figure("a middleware that only awaits its handler: overhead % of a bare GET",
               (PASS_THROUGH, BARE), [(BARE, None)], percent=True),
        Figure("hand-written floor of the default policy: overhead % of a bare GET",
               (FLOOR_DEFAULT, BARE), [(BARE, None)], percent=True),
        Figure("hand-written floor of the full pipeline: overhead % of a bare GET",
               (FLOOR_FULL, BARE), [(BARE, None)], percent=True),
        Figure("default policy / its hand-written floor (overheads)",
               ("ResilienceMiddleware() (default policy)", BARE), [(FLOOR_DEFAULT, BARE)]),
        Figure("full pipeline / its hand-written floor (overheads)",
               ("ResilienceMiddleware, full pipeline per host", BARE), [(FLOOR_FULL, BARE)]),
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
