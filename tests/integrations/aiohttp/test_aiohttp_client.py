"""
`ResilienceMiddleware` against real aiohttp servers on loopback.

Every backend is a real `aiohttp.web` application on 127.0.0.1 and an ephemeral port,
scripted to answer each request in turn (a status, a reset connection, a stall); every
client is a real `ClientSession(middlewares=[ResilienceMiddleware(...)])`. Attempts are
counted on the server's side. Retries never really sleep: policies take a `FakeClock`, or
the test runs under `instant_retries()`.
"""

from __future__ import annotations

import asyncio
import email.utils
import itertools
import os
import socket
import subprocess
import sys
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import aiohttp
import pytest
import tenacity
from aiohttp import test_utils, web
from multidict import CIMultiDictProxy
from opentelemetry import baggage, context, propagate, trace
from opentelemetry.propagators.composite import CompositePropagator
from opentelemetry.propagators.textmap import TextMapPropagator
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from yarl import URL

from resilient import (
    CircuitBreaker,
    CircuitOpenError,
    CircuitState,
    Fallback,
    Hedge,
    Pipeline,
    Policy,
    Priority,
    Retry,
    RetryScheduled,
    Timeout,
    TimeoutExceeded,
    no_retries,
    pipeline,
    priority,
)
from resilient.integrations.aiohttp import (
    DEADLINE_HEADER,
    IDEMPOTENT_METHODS,
    ResilienceMiddleware,
    UnhealthyResponse,
    default_policy,
    parse_retry_after,
)
from resilient.integrations.aiohttp import _client as client_module
from resilient.testing import FakeClock, capture_events, instant_retries
from tests._aio import until, within
from tests._paths import REPO_ROOT
from tests._servers import LOCALHOST, free_port

GUARD = 60.0  # seconds before a hang (a leaked connection) fails a test; busy machines are slow

# -- a scripted backend ------------------------------------------------------------------

Action = Callable[["Backend", web.Request], Awaitable[web.StreamResponse]]


def reply(status: int = 200, body: str = "ok", headers: Mapping[str, str] | None = None) -> Action:
    """
    Answer with `status` and `body`.
    """

    async def act(_: Backend, __: web.Request) -> web.StreamResponse:
        return web.Response(status=status, text=body, headers=headers)

    return act


async def abort(_: Backend, request: web.Request) -> web.StreamResponse:
    """
    Reset the connection before answering (the client sees the server disconnect).
    """
    assert request.transport is not None
    request.transport.abort()
    return web.Response()


async def cut_headers(_: Backend, request: web.Request) -> web.StreamResponse:
    """
    Close the connection halfway through the response headers.
    """
    assert request.transport is not None
    request.transport.write(b"HTTP/1.1 200 OK\r\nContent-Le")
    request.transport.close()
    return web.Response()


async def cut_body(_: Backend, request: web.Request) -> web.StreamResponse:
    """
    Send a 200 and its headers, then close the connection halfway through the body.
    """
    response = web.StreamResponse()
    response.content_length = 100
    await response.prepare(request)
    await response.write(b"partial")
    assert request.transport is not None
    request.transport.close()
    return response


async def stall(backend: Backend, _: web.Request) -> web.StreamResponse:
    """
    Answer only when the backend is released (at teardown) or the client goes away.
    """
    await backend.released.wait()
    return web.Response(text="late")


@dataclass(frozen=True, slots=True)
class Seen:
    """
    One request as the server received it.
    """

    method: str
    path: str
    headers: CIMultiDictProxy[str]


@dataclass
class Backend:
    """
    A real server answering each request with the next scripted action.

    Once the script is used up it answers with `then` (a cycle of actions, 200 by
    default). Every request is recorded in `seen`, in arrival order.
    """

    script: deque[Action] = field(default_factory=deque)
    then: Iterator[Action] = field(default_factory=lambda: itertools.repeat(reply()))
    seen: list[Seen] = field(default_factory=list)
    in_flight: int = 0
    max_in_flight: int = 0
    released: asyncio.Event = field(default_factory=asyncio.Event)
    server: test_utils.TestServer | None = None

    def answer(self, *actions: Action | int) -> None:
        """
        Queue answers; an int is a reply with that status and the status as its body.
        """
        for action in actions:
            self.script.append(reply(action, str(action)) if isinstance(action, int) else action)

    def forever(self, *actions: Action | int) -> None:
        """
        After the script, answer with these actions in a cycle.
        """
        self.then = itertools.cycle(
            [reply(a, str(a)) if isinstance(a, int) else a for a in actions]
        )

    @property
    def attempts(self) -> int:
        """
        Requests received so far.
        """
        return len(self.seen)

    def header(self, name: str) -> list[str | None]:
        """
        The value of header `name` on each request received, in order.
        """
        return [seen.headers.get(name) for seen in self.seen]

    def url(self, path: str = "/") -> URL:
        """
        The URL of `path` on this server.
        """
        assert self.server is not None
        return self.server.make_url(path)

    @property
    def origin(self) -> str:
        """
        ``http://127.0.0.1:port``: the middleware's default key for this server.
        """
        return str(self.url().origin())

    async def start(self) -> None:
        """
        Listen on 127.0.0.1 and an ephemeral port.
        """
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self.server = test_utils.TestServer(app, host=LOCALHOST)
        await self.server.start_server()

    async def close(self) -> None:
        """
        Release stalled handlers and stop the server.
        """
        self.released.set()
        if self.server is not None:
            await self.server.close()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        self.seen.append(Seen(request.method, request.path, request.headers))
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            action = self.script.popleft() if self.script else next(self.then)
            return await action(self, request)
        finally:
            self.in_flight -= 1


@pytest.fixture
async def backends() -> AsyncIterator[Callable[[], Awaitable[Backend]]]:
    """
    Start as many backends as a test asks for; stop them all afterwards.
    """
    started: list[Backend] = []

    async def start() -> Backend:
        backend = Backend()
        started.append(backend)
        await backend.start()
        return backend

    yield start
    for backend in started:
        await backend.close()


@pytest.fixture
async def backend(backends: Callable[[], Awaitable[Backend]]) -> Backend:
    """
    One scripted backend.
    """
    return await backends()


@pytest.fixture
def clock() -> FakeClock:
    """
    A fake clock for the policies: retries wait in fake time only.
    """
    return FakeClock()


def session(middleware: ResilienceMiddleware, **kwargs: object) -> aiohttp.ClientSession:
    """
    A client session whose requests all go through `middleware`.
    """
    return aiohttp.ClientSession(middlewares=[middleware], **kwargs)  # type: ignore[arg-type]


def retrying(clock: FakeClock, attempts: int = 3, **options: object) -> Callable[[str], Policy]:
    """
    A factory of per-key `Retry` policies on `clock`.
    """
    return lambda key: Retry(attempts, clock=clock, name=key, **options)  # type: ignore[arg-type]


async def get(client: aiohttp.ClientSession, url: URL, **kwargs: object) -> tuple[int, str]:
    """
    GET `url`; return the final status and body text.
    """
    async with client.get(url, **kwargs) as response:  # type: ignore[arg-type]
        return response.status, await response.text()


# -- flaky servers -------------------------------------------------------------------------


@pytest.mark.parametrize("failures", [(500,), (500, 503), (503, 500)])
async def test_retries_until_the_server_answers(
    backend: Backend, clock: FakeClock, failures: tuple[int, ...]
) -> None:
    """A GET is retried over 500/503 until the 200; one attempt per failure, plus one."""
    backend.answer(*failures)
    async with session(ResilienceMiddleware(retrying(clock))) as client:
        assert await get(client, backend.url("/item")) == (200, "ok")
    assert backend.attempts == len(failures) + 1
    assert len(clock.sleeps) == len(failures)


async def test_default_policy_retries_a_flaky_get(backend: Backend) -> None:
    """With no policies given, a GET that fails once is retried once and succeeds."""
    backend.answer(503)
    with instant_retries():
        async with session(ResilienceMiddleware()) as client:
            assert await get(client, backend.url()) == (200, "ok")
    assert backend.attempts == 2


async def test_caller_gets_the_last_failed_response(backend: Backend, clock: FakeClock) -> None:
    """When every attempt fails, the caller gets the last 5xx, body readable, after N tries."""
    backend.answer(reply(500, "first"), reply(502, "second"), reply(503, "third"))
    retry = Retry(3, clock=clock)
    async with (
        session(ResilienceMiddleware({backend.origin: retry})) as client,
        client.get(backend.url()) as response,
    ):
        assert response.status == 503
        assert await response.text() == "third"
    assert backend.attempts == 3
    assert retry.statistics().gave_up == 1


async def test_hooks_see_the_failed_response_as_unhealthy_response(
    backend: Backend, clock: FakeClock
) -> None:
    """A retried 5xx reaches hooks as `UnhealthyResponse` carrying its status."""
    backend.answer(502)
    with capture_events(RetryScheduled) as events:
        async with session(ResilienceMiddleware(retrying(clock))) as client:
            assert (await get(client, backend.url()))[0] == 200
    [event] = events
    assert isinstance(event, RetryScheduled)
    assert isinstance(event.error, UnhealthyResponse)
    assert event.error.status == 502


async def test_slow_attempt_is_timed_out_and_the_next_succeeds(
    backend: Backend, clock: FakeClock
) -> None:
    """A per-attempt Timeout cuts a stalled attempt short; the retry gets the 200."""
    backend.answer(stall)
    per_attempt = Timeout(0.5)
    policy = pipeline(Retry(3, clock=clock), per_attempt)
    started = time.monotonic()
    async with session(ResilienceMiddleware({backend.origin: policy})) as client:
        assert await get(client, backend.url()) == (200, "ok")
    assert time.monotonic() - started < 5.0
    assert backend.attempts == 2
    assert per_attempt.statistics().timeouts == 1


async def test_every_attempt_timing_out_raises_timeout_exceeded(
    backend: Backend, clock: FakeClock
) -> None:
    """When every attempt stalls, the caller gets TimeoutExceeded after N attempts."""
    backend.forever(stall)
    policy = pipeline(Retry(3, clock=clock), Timeout(0.05))
    async with session(ResilienceMiddleware({backend.origin: policy})) as client:
        with pytest.raises(TimeoutExceeded):
            await get(client, backend.url())
    assert backend.attempts == 3


async def test_hedge_overtakes_a_stalled_attempt(backend: Backend) -> None:
    """With a Hedge, a second attempt overtakes a stalled first; the loser is dropped."""
    backend.answer(stall)
    connector = aiohttp.TCPConnector(limit=2)
    hedge = Hedge(0.05)
    async with (
        asyncio.timeout(GUARD),
        session(ResilienceMiddleware({backend.origin: hedge}), connector=connector) as client,
    ):
        assert await get(client, backend.url()) == (200, "ok")
        await until(lambda: acquired(connector) == 0)  # the cancelled loser closes its connection
    assert backend.attempts == 2
    assert hedge.statistics().hedge_wins == 1


@pytest.mark.parametrize(("method", "attempts"), [("GET", 2), ("POST", 1)])
async def test_hedge_sends_a_post_once(backend: Backend, method: str, attempts: int) -> None:
    """A slow GET is hedged; a slow POST is not, it waits for its one attempt."""
    second = asyncio.Event()

    async def slow(backend: Backend, _: web.Request) -> web.StreamResponse:
        try:  # 0.5 s is 25 hedge delays: a hedge that was sent has arrived by then
            await within(second.wait(), 0.5)
        except TimeoutError:
            return web.Response(text="slow ok")  # no hedge came
        await backend.released.wait()  # overtaken: answers only at teardown
        return web.Response(text="late")

    async def fast(_: Backend, __: web.Request) -> web.StreamResponse:
        second.set()
        return web.Response(text="fast ok")

    backend.answer(slow)
    backend.forever(fast)
    async with (
        asyncio.timeout(GUARD),
        session(ResilienceMiddleware({backend.origin: Hedge(0.02)})) as client,
        client.request(method, backend.url(), data=b"once") as response,
    ):
        assert await response.text() == ("fast ok" if method == "GET" else "slow ok")
    assert backend.attempts == attempts


async def test_callers_own_error_is_neither_retried_nor_counted(
    backend: Backend, clock: FakeClock
) -> None:
    """
    A request aiohttp refuses to send (a control character in a header) raises its
    ValueError at once, as without the middleware: not retried, and not counted by the
    breaker, so a caller's bug can't open the circuit for everyone else.
    """
    middleware = ResilienceMiddleware(retry_then_breaker(clock))
    async with session(middleware) as client:
        for _ in range(10):
            with pytest.raises(ValueError, match="control character"):
                await get(client, backend.url(), headers={"X-Note": "a\x00b"})
        assert await get(client, backend.url()) == (200, "ok")
    breaker = breaker_of(middleware, backend.origin)
    assert breaker.state is CircuitState.CLOSED
    assert breaker.statistics().failures == 0
    assert clock.sleeps == []
    assert backend.attempts == 1


# -- Retry-After ---------------------------------------------------------------------------


def http_date(seconds_from_now: float) -> str:
    """
    An HTTP date (IMF-fixdate, GMT) `seconds_from_now` in the future.
    """
    return email.utils.formatdate(time.time() + seconds_from_now, usegmt=True)


@pytest.mark.parametrize("status", [429, 503])
async def test_retry_after_seconds_is_waited(
    backend: Backend, clock: FakeClock, status: int
) -> None:
    """``Retry-After: 3`` makes the retry wait 3 s (the jittered backoff is far shorter)."""
    backend.answer(reply(status, "busy", {"Retry-After": "3"}))
    async with session(ResilienceMiddleware(retrying(clock))) as client:
        assert await get(client, backend.url()) == (200, "ok")
    assert backend.attempts == 2
    assert clock.sleeps == [3.0]


async def test_retry_after_http_date_is_waited(backend: Backend, clock: FakeClock) -> None:
    """``Retry-After`` as an HTTP date 30 s ahead makes the retry wait about 30 s."""
    backend.answer(reply(429, "busy", {"Retry-After": http_date(30)}))
    async with session(ResilienceMiddleware(retrying(clock))) as client:
        assert await get(client, backend.url()) == (200, "ok")
    assert backend.attempts == 2
    [waited] = clock.sleeps
    assert 28.0 <= waited <= 30.0  # HTTP dates have whole seconds


@pytest.mark.parametrize("value", ["600", http_date(3600)], ids=["seconds", "http-date"])
async def test_retry_after_is_capped(backend: Backend, clock: FakeClock, value: str) -> None:
    """A Retry-After longer than `retry_after_cap` is waited for the cap only."""
    backend.answer(reply(503, "down", {"Retry-After": value}))
    async with session(ResilienceMiddleware(retrying(clock, retry_after_cap=5.0))) as client:
        assert await get(client, backend.url()) == (200, "ok")
    assert clock.sleeps == [5.0]


async def test_retry_after_past_the_deadline_gives_up(backend: Backend, clock: FakeClock) -> None:
    """A Retry-After the deadline can't wait for ends the call with that response."""
    backend.answer(reply(429, "later", {"Retry-After": "10"}))
    async with session(ResilienceMiddleware(retrying(clock))) as client, Timeout(2.0, clock=clock):
        assert await get(client, backend.url()) == (429, "later")
    assert backend.attempts == 1
    assert clock.sleeps == []


@pytest.mark.parametrize(
    "value", ["²", "٣", "9" * 400, "Mon, 01 Jan 99999999999999999999 0:0:0 GMT"]
)
async def test_hostile_retry_after_is_ignored(
    backend: Backend, clock: FakeClock, value: str
) -> None:
    """A malformed Retry-After (odd digits, overflowing numbers or dates) is ignored."""
    backend.answer(reply(503, "down", {"Retry-After": value}))
    async with session(
        ResilienceMiddleware(retrying(clock, wait=tenacity.wait_fixed(1)))
    ) as client:
        assert await get(client, backend.url()) == (200, "ok")
    assert clock.sleeps == [1.0]


def test_parse_retry_after() -> None:
    """Delta-seconds and HTTP dates parse; anything malformed or non-finite is None."""
    now = time.time()
    assert parse_retry_after(" 7 ") == 7.0
    assert parse_retry_after("Thu, 01 Jan 1970 00:01:40 GMT", now=40.0) == 60.0
    assert parse_retry_after("Thu, 01 Jan 1970 00:00:00 GMT", now=now) == 0.0  # past: now
    for bad in (None, "", "-1", "1.5", "1e3", "²", "٣", "9" * 400, "soon", "Thu, 01 Jan 1970"):
        assert parse_retry_after(bad) is None, bad
    assert parse_retry_after("Mon, 01 Jan 99999999999999999999 00:00:00 GMT") is None
    assert parse_retry_after("Thu, 01 Jan 1970 00:00:00 -0000") is None  # no zone: not GMT


# -- broken connections --------------------------------------------------------------------


@pytest.mark.parametrize("broken", [abort, cut_headers], ids=["reset", "cut-headers"])
async def test_broken_connection_is_retried(
    backend: Backend, clock: FakeClock, broken: Action
) -> None:
    """A connection reset or cut mid-headers is a failure, retried like a 5xx."""
    backend.answer(broken, broken)
    async with session(ResilienceMiddleware(retrying(clock))) as client:
        assert await get(client, backend.url()) == (200, "ok")
    assert backend.attempts == 3


async def test_reset_on_every_attempt_raises_the_aiohttp_error(
    backend: Backend, clock: FakeClock
) -> None:
    """
    A connection reset on every attempt raises aiohttp's ServerDisconnectedError.

    aiohttp itself sends an idempotent request once more after ServerDisconnectedError or
    ClientOSError (ClientSession._request, "retry_persistent_connection"), outside the
    middleware: so the whole policy runs twice and the server sees 2 x 3 attempts.
    """
    backend.forever(abort)
    retry = Retry(3, clock=clock)
    async with session(ResilienceMiddleware({backend.origin: retry})) as client:
        with pytest.raises(aiohttp.ServerDisconnectedError):
            await get(client, backend.url())
    assert backend.attempts == 2 * 3
    assert retry.statistics().calls == 2
    assert retry.statistics().gave_up == 2


async def test_one_get_resent_by_aiohttp_opens_the_default_policys_breaker(
    backend: Backend,
) -> None:
    """
    Under the default policy one GET to a server resetting every connection opens the
    host's breaker, as docs/aiohttp.md says: aiohttp runs the policy a second time
    (above), and the fifth of its up to six attempts reaches ``failure_threshold=5``, so
    the sixth is refused and the caller gets `CircuitOpenError`, not the aiohttp error.
    """
    backend.forever(abort)
    middleware = ResilienceMiddleware()
    with instant_retries():
        async with session(middleware) as client:
            with pytest.raises(CircuitOpenError):
                await get(client, backend.url())
    assert backend.attempts == 5
    policy = middleware.policy_for(backend.origin)
    assert isinstance(policy, Pipeline)
    breaker = policy.policies[2]
    assert isinstance(breaker, CircuitBreaker)
    assert breaker.state is CircuitState.OPEN


async def test_body_cut_after_the_headers_is_the_callers_to_handle(
    backend: Backend, clock: FakeClock
) -> None:
    """The middleware judges status and headers: a body cut later fails the caller's read."""
    backend.answer(cut_body)
    async with session(ResilienceMiddleware(retrying(clock))) as client:
        with pytest.raises(aiohttp.ClientPayloadError):
            await get(client, backend.url())
    assert backend.attempts == 1


async def test_connection_refused_is_retried_then_raised(clock: FakeClock) -> None:
    """A closed port is retried, then the caller gets aiohttp's ClientConnectorError."""
    retry = Retry(3, clock=clock)
    url = URL(f"http://{LOCALHOST}:{free_port()}/")
    async with session(ResilienceMiddleware({str(url.origin()): retry})) as client:
        with pytest.raises(aiohttp.ClientConnectorError):
            await get(client, url)
    assert retry.statistics().retries == 2
    assert len(clock.sleeps) == 2


# -- idempotency ---------------------------------------------------------------------------


def retry_then_breaker(clock: FakeClock, **retry: object) -> Callable[[str], Policy]:
    """
    Per key: Retry (3 attempts) outside a breaker that opens after 5 failures.
    """
    return lambda key: pipeline(
        Retry(3, clock=clock, **retry),  # type: ignore[arg-type]
        CircuitBreaker(name=key, failure_threshold=5, clock=clock),
    )


def breaker_of(middleware: ResilienceMiddleware, key: str) -> CircuitBreaker:
    """
    The `CircuitBreaker` inside `key`'s policy (a pipeline's last layer, or the policy).
    """
    policy = middleware.policy_for(key)
    layers = getattr(policy, "policies", None) or (policy,)
    [breaker] = [p for p in layers if isinstance(p, CircuitBreaker)]
    return breaker


@pytest.mark.parametrize("method", ["POST", "PATCH"])
async def test_non_idempotent_request_runs_once_but_counts(
    backend: Backend, clock: FakeClock, method: str
) -> None:
    """A failing POST/PATCH is sent once (no retry), and the breaker counts the failure."""
    backend.forever(500)
    middleware = ResilienceMiddleware(retry_then_breaker(clock))
    async with session(middleware) as client:
        async with client.request(method, backend.url(), json={"n": 1}) as response:
            assert response.status == 500
        assert backend.attempts == 1
        assert breaker_of(middleware, backend.origin).statistics().failures == 1
        for _ in range(4):
            async with client.request(method, backend.url(), json={"n": 1}) as response:
                assert response.status == 500
        with pytest.raises(CircuitOpenError):
            await client.request(method, backend.url(), json={"n": 1})
    assert backend.attempts == 5


async def test_retry_methods_makes_post_retried(backend: Backend, clock: FakeClock) -> None:
    """With POST in `retry_methods`, a failing POST is retried with its body each time."""
    backend.answer(503, 503)
    middleware = ResilienceMiddleware(
        retry_then_breaker(clock), retry_methods={"POST", *IDEMPOTENT_METHODS}
    )
    async with session(middleware) as client, client.post(backend.url(), data=b"x" * 10) as resp:
        assert resp.status == 200
    assert [seen.method for seen in backend.seen] == ["POST"] * 3
    assert backend.header("Content-Length") == ["10"] * 3


@pytest.mark.parametrize("method", sorted(IDEMPOTENT_METHODS - {"HEAD", "TRACE"}))
async def test_idempotent_methods_are_retried(
    backend: Backend, clock: FakeClock, method: str
) -> None:
    """GET, OPTIONS, PUT and DELETE are retried by default."""
    backend.answer(500)
    async with (
        session(ResilienceMiddleware(retrying(clock))) as client,
        client.request(method, backend.url()) as response,
    ):
        assert response.status == 200
    assert backend.attempts == 2


async def test_no_retries_around_a_get_makes_it_run_once(
    backend: Backend, clock: FakeClock
) -> None:
    """`no_retries()` around the caller's own request turns retries off for it."""
    backend.answer(503)
    async with session(ResilienceMiddleware(retrying(clock))) as client:
        with no_retries():
            assert await get(client, backend.url()) == (503, "503")
        assert await get(client, backend.url()) == (200, "ok")
    assert backend.attempts == 2


# -- classification and breakers -----------------------------------------------------------


async def test_4xx_are_successes(backend: Backend, clock: FakeClock) -> None:
    """404, 400 and 409 are the caller's mistakes: never retried, the breaker stays closed."""
    backend.forever(404, 400, 409)
    middleware = ResilienceMiddleware(retry_then_breaker(clock))
    async with session(middleware) as client:
        statuses = [(await get(client, backend.url()))[0] for _ in range(30)]
    assert statuses == [404, 400, 409] * 10
    assert backend.attempts == 30
    breaker = breaker_of(middleware, backend.origin)
    assert breaker.state is CircuitState.CLOSED
    assert breaker.statistics().successes == 30
    assert breaker.statistics().failures == 0


async def test_5xx_streak_opens_the_breaker_and_fails_fast(
    backend: Backend, clock: FakeClock
) -> None:
    """A run of 5xx opens the breaker; later requests fail fast without reaching the server."""
    backend.forever(500, 502, 503)
    middleware = ResilienceMiddleware(
        lambda key: CircuitBreaker(name=key, failure_threshold=3, reset_timeout=30, clock=clock)
    )
    async with session(middleware) as client:
        for _ in range(3):
            assert (await get(client, backend.url()))[0] >= 500
        for _ in range(5):
            with pytest.raises(CircuitOpenError) as rejected:
                await get(client, backend.url())
            assert rejected.value.retry_in == pytest.approx(30.0)
    assert backend.attempts == 3
    assert breaker_of(middleware, backend.origin).statistics().rejections == 5


async def test_custom_failure_status(backend: Backend, clock: FakeClock) -> None:
    """`failure_status` replaces the classification: here 404 is retried, 500 is not."""
    backend.answer(404, 500)
    middleware = ResilienceMiddleware(retrying(clock), failure_status=lambda status: status == 404)
    async with session(middleware) as client:
        assert await get(client, backend.url()) == (500, "500")
    assert backend.attempts == 2


async def test_a_failure_status_that_raises_is_the_callers_error(
    backend: Backend, clock: FakeClock
) -> None:
    """
    A `failure_status` that raises is a bug of the caller's, not a failure of the host
    that answered: its error reaches the caller as is, neither retried nor counted by
    the breaker (which a few such requests would otherwise open for everyone), and the
    response is released.
    """
    backend.forever(reply(200, "x" * 2**20))  # big enough that only release() frees it

    def broken(status: int) -> bool:
        raise LookupError(f"no rule for {status}")

    connector = aiohttp.TCPConnector(limit=1)
    middleware = ResilienceMiddleware(retry_then_breaker(clock), failure_status=broken)
    async with asyncio.timeout(GUARD), session(middleware, connector=connector) as client:
        for _ in range(5):
            with pytest.raises(LookupError, match="no rule for 200"):
                await get(client, backend.url())
        assert acquired(connector) == 0
    breaker = breaker_of(middleware, backend.origin)
    assert breaker.state is CircuitState.CLOSED
    assert breaker.statistics().failures == 0
    assert clock.sleeps == []  # not retried
    assert backend.attempts == 5


# -- connections ---------------------------------------------------------------------------


def acquired(connector: aiohttp.TCPConnector) -> int:
    """
    Connections the connector has handed out and not had back.

    aiohttp offers no public count of these; ``_acquired`` is the set `connect()` adds to
    and `release()` removes from.
    """
    return len(connector._acquired)


async def test_retries_and_failures_leak_no_connections(backend: Backend, clock: FakeClock) -> None:
    """
    Hundreds of retried and failed requests over a 2-connection pool never exhaust it.

    Failures carry 1 MiB bodies, more than the client buffers, so a response's
    connection only comes back when the response is released (a small body is read to
    the end with the headers and frees its connection by itself). A response retried
    over, or dropped when the call fails, and not released would hold its connection:
    with ``limit=2`` the third such leak blocks every later request, and the guard
    turns that hang into a failure. The errors are kept, as a caller logging them
    would, so garbage collection can't quietly release what the middleware forgot.
    First a mix of 5xx, 429, resets and successes (retries, last responses handed
    back), then a dead server (the breaker opens and rejects).
    """
    big = "x" * 2**20
    connector = aiohttp.TCPConnector(limit=2)
    middleware = ResilienceMiddleware(
        lambda key: pipeline(
            Retry(3, clock=clock),
            CircuitBreaker(name=key, failure_threshold=5, reset_timeout=1, clock=clock),
        )
    )
    outcomes: dict[str, int] = {}
    errors: list[Exception] = []

    async def worker(requests: int) -> None:
        for _ in range(requests):
            try:
                status, _ = await get(client, backend.url())
            except (CircuitOpenError, aiohttp.ServerDisconnectedError) as error:
                errors.append(error)
                outcome = type(error).__name__
            else:
                outcome = str(status)
            outcomes[outcome] = outcomes.get(outcome, 0) + 1
            clock.advance(0.1)  # an open breaker probes again now and then

    async with asyncio.timeout(GUARD), session(middleware, connector=connector) as client:
        backend.forever(
            reply(500, big),
            reply(503, big),
            reply(429, big, {"Retry-After": "1"}),
            abort,
            200,
            reply(502, big),
            404,
        )
        await asyncio.gather(*(worker(40) for _ in range(6)))
        backend.forever(reply(500, big))
        await asyncio.gather(*(worker(20) for _ in range(6)))
        assert acquired(connector) == 0
    assert sum(outcomes.values()) == 6 * 60
    assert backend.attempts > 6 * 40  # retries happened
    assert backend.max_in_flight <= 2  # the pool stayed bounded
    assert {"200", "404", "500", "CircuitOpenError"} <= outcomes.keys()


async def test_timed_out_attempts_leak_no_connections(backend: Backend, clock: FakeClock) -> None:
    """Attempts cancelled by a per-attempt Timeout give their connections back."""
    first_seen: set[str] = set()

    async def stall_first_attempt(backend: Backend, request: web.Request) -> web.StreamResponse:
        if request.path_qs in first_seen:
            return web.Response(text="ok")
        first_seen.add(request.path_qs)
        return await stall(backend, request)

    backend.forever(stall_first_attempt)
    connector = aiohttp.TCPConnector(limit=2)
    middleware = ResilienceMiddleware(lambda key: pipeline(Retry(3, clock=clock), Timeout(0.1)))

    async def worker(name: str) -> list[tuple[int, str]]:
        return [await get(client, backend.url(f"/{name}?n={n}")) for n in range(10)]

    async with asyncio.timeout(GUARD), session(middleware, connector=connector) as client:
        results = await asyncio.gather(worker("a"), worker("b"))
        assert acquired(connector) == 0
    assert list(results) == [[(200, "ok")] * 10] * 2
    assert backend.attempts >= 40  # a stall and a 200 per request (more on a slow machine)


async def test_fallback_in_the_policy_is_a_type_error(backend: Backend, clock: FakeClock) -> None:
    """A policy that answers with a non-response raises the documented TypeError."""
    backend.forever(reply(503, "x" * 2**20))  # big enough that only release() frees it
    connector = aiohttp.TCPConnector(limit=2)
    policy = pipeline(Fallback(value={"cached": True}), Retry(2, clock=clock))
    errors: list[TypeError] = []
    async with (
        asyncio.timeout(GUARD),
        session(ResilienceMiddleware({backend.origin: policy}), connector=connector) as client,
    ):
        for _ in range(3):
            with pytest.raises(TypeError, match="returned dict, not a response") as raised:
                await get(client, backend.url())
            errors.append(raised.value)
        assert acquired(connector) == 0
    assert backend.attempts == 6


async def test_fallback_answering_with_the_response_is_fine(
    backend: Backend, clock: FakeClock
) -> None:
    """A Fallback that answers with the failed response itself hands it to the caller."""
    backend.forever(503)

    def last_response(error: BaseException) -> aiohttp.ClientResponse:
        assert isinstance(error, UnhealthyResponse)
        return error.response

    policy = pipeline(Fallback(handler=last_response), Retry(2, clock=clock))
    async with session(ResilienceMiddleware({backend.origin: policy})) as client:
        assert await get(client, backend.url()) == (503, "503")


# -- keys and per-host policies ------------------------------------------------------------


async def test_each_host_gets_its_own_breaker(
    backends: Callable[[], Awaitable[Backend]], clock: FakeClock
) -> None:
    """Two servers (two ports) get two breakers: one opens, the other is unaffected."""
    down, up = await backends(), await backends()
    down.forever(500)
    middleware = ResilienceMiddleware(
        lambda key: CircuitBreaker(name=key, failure_threshold=2, clock=clock)
    )
    async with session(middleware) as client:
        for _ in range(2):
            assert (await get(client, down.url()))[0] == 500
        with pytest.raises(CircuitOpenError):
            await get(client, down.url())
        for _ in range(5):
            assert await get(client, up.url()) == (200, "ok")
    assert breaker_of(middleware, down.origin).state is CircuitState.OPEN
    assert breaker_of(middleware, up.origin).state is CircuitState.CLOSED
    assert middleware.policy_for(down.origin) is not middleware.policy_for(up.origin)
    assert (down.attempts, up.attempts) == (2, 5)


async def test_route_keys(backend: Backend, clock: FakeClock) -> None:
    """With ``key="route"`` each method and path has its own breaker."""
    backend.answer(500, 500)
    middleware = ResilienceMiddleware(
        lambda key: CircuitBreaker(name=key, failure_threshold=2, clock=clock), key="route"
    )
    async with session(middleware) as client:
        for _ in range(2):
            assert (await get(client, backend.url("/a")))[0] == 500
        with pytest.raises(CircuitOpenError):
            await get(client, backend.url("/a?page=2"))  # the query is not part of the key
        assert await get(client, backend.url("/b")) == (200, "ok")
        async with client.delete(backend.url("/a")) as response:
            assert response.status == 200
    origin = backend.origin
    assert breaker_of(middleware, f"GET {origin}/a").state is CircuitState.OPEN
    assert breaker_of(middleware, f"GET {origin}/b").state is CircuitState.CLOSED
    assert breaker_of(middleware, f"DELETE {origin}/a").state is CircuitState.CLOSED


async def test_route_keys_spell_the_origin_as_origin_keys_do() -> None:
    """``key="route"`` spells its origin as ``"origin"`` does: default port left out, case
    folded, a trailing dot kept (aiohttp resolves and pools ``api.`` apart from ``api``)."""
    built: list[str] = []

    def factory(key: str) -> Policy:
        built.append(key)
        return Retry(1, name="route")

    middleware = ResilienceMiddleware(factory, key="route")

    async def handler(_: aiohttp.ClientRequest) -> aiohttp.ClientResponse:
        raise aiohttp.ClientConnectionError("not sent")

    for url in ("http://api.:8080/items/7", "http://api:8080/items/7?x=1",
                "HTTP://API:80/items/7", "http://api./items/7"):  # fmt: skip
        request = aiohttp.ClientRequest("GET", URL(url), loop=asyncio.get_running_loop())
        with pytest.raises(aiohttp.ClientConnectionError):
            await within(middleware(request, handler))
    assert built == [
        "GET http://api.:8080/items/7", "GET http://api:8080/items/7", "GET http://api/items/7",
        "GET http://api./items/7",
    ]  # fmt: skip


class KeyRecorder(Policy):
    """
    A user-written policy, one per key, noting its key for each request it runs.
    """

    kind = "key recorder"

    def __init__(self, key: str, keys: list[str]) -> None:
        super().__init__(name="key recorder", clock=None, hooks=None)
        self.key, self.keys = key, keys

    async def _run(
        self, fn: Callable[..., Awaitable[Any]], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        self.keys.append(self.key)
        return await fn(*args, **kwargs)


async def not_sent(_: aiohttp.ClientRequest) -> aiohttp.ClientResponse:
    raise aiohttp.ClientConnectionError("not sent")


async def test_the_origin_key_read_from_the_cache_is_the_origin_across_clears(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """
    The middleware reads the default key's cache itself (a hit costs no call): each
    request's key is still its URL's origin, however the host is spelled, whether the
    cache holds it or not, and when the cache is cleared between requests (here every
    3 origins).
    """
    monkeypatch.setattr(client_module, "_MAX_ORIGINS", 3)
    client_module._ORIGINS.clear()
    keys: list[str] = []
    middleware = ResilienceMiddleware(lambda key: KeyRecorder(key, keys), max_keys=10_000)
    spellings = [
        "http://api.test/", "HTTP://API.TEST:80/x", "http://api.test./", "http://api.test..:80/",
        "https://u:p@api.test:443/", "https://api.test:80/", "http://[::1]/", "http://[0::1]:80/",
        "http://[::1]:8080/", "http://B\u00dcCHER.test/", "http://xn--bcher-kva.test:81/",
        "http://127.0.0.1:9/", "ws://api.test/",
    ]  # fmt: skip
    urls = [URL(spelled) for spelled in spellings * 3]  # misses, hits, and hits after a clear
    urls += [URL(f"http://host-{n % 7}.test:{8000 + n % 2}/") for n in range(40)]
    for url in urls:
        request = aiohttp.ClientRequest("GET", url, loop=asyncio.get_running_loop())
        with pytest.raises(aiohttp.ClientConnectionError):
            await within(middleware(request, not_sent))
    assert keys == [str(url.origin()) for url in urls]
    assert len(client_module._ORIGINS) <= 3


async def test_a_key_function_is_called_once_per_request() -> None:
    """A key function runs once per request, however many attempts the policy makes."""
    asked: list[URL] = []

    def by_host(request: aiohttp.ClientRequest) -> str:
        asked.append(request.url)
        return request.url.host or "?"

    attempts: list[aiohttp.ClientRequest] = []

    async def refused(request: aiohttp.ClientRequest) -> aiohttp.ClientResponse:
        attempts.append(request)
        raise aiohttp.ClientConnectionError("nobody home")

    middleware = ResilienceMiddleware(
        lambda key: Retry(3, clock=FakeClock(), name=key), key=by_host
    )
    url = URL("http://127.0.0.1:9/")
    for _ in range(2):
        request = aiohttp.ClientRequest("GET", url, loop=asyncio.get_running_loop())
        with pytest.raises(aiohttp.ClientConnectionError):
            await within(middleware(request, refused))
    assert asked == [url, url]
    assert len(attempts) == 6


async def test_a_key_function_that_raises_fails_the_request_unsent() -> None:
    """A key function's error is the caller's, raised as is: nothing sent, nothing in flight."""

    def broken(request: aiohttp.ClientRequest) -> str:
        raise LookupError("no tenant header")

    async def handler(_: aiohttp.ClientRequest) -> aiohttp.ClientResponse:
        raise AssertionError("not sent")

    middleware = ResilienceMiddleware(lambda key: Retry(3, name=key), key=broken)
    request = aiohttp.ClientRequest(
        "GET", URL("http://127.0.0.1:9/"), loop=asyncio.get_running_loop()
    )
    with pytest.raises(LookupError, match="no tenant header"):
        await within(middleware(request, handler))
    assert "keys=0/" in repr(middleware)
    assert "in_flight=0" in repr(middleware)


async def test_key_function(backend: Backend, clock: FakeClock) -> None:
    """A key function groups requests as it likes (here: by the first path segment)."""
    backend.forever(500)
    middleware = ResilienceMiddleware(
        lambda key: CircuitBreaker(name=key, failure_threshold=2, clock=clock),
        key=lambda request: request.url.path.split("/")[1],
    )
    async with session(middleware) as client:
        assert (await get(client, backend.url("/users/1")))[0] == 500
        assert (await get(client, backend.url("/users/2")))[0] == 500
        with pytest.raises(CircuitOpenError):
            await get(client, backend.url("/users/3"))
        assert (await get(client, backend.url("/orders/1")))[0] == 500
    assert breaker_of(middleware, "users").state is CircuitState.OPEN


async def test_mapping_without_default_passes_unknown_hosts_through(
    backends: Callable[[], Awaitable[Backend]],
    clock: FakeClock,
    tracer: tuple[trace.Tracer, InMemorySpanExporter],
) -> None:
    """
    With a mapping and ``default=None`` an unknown host gets no policy (one attempt, no
    breaker) but still receives the deadline and the trace context.
    """
    known, unknown = await backends(), await backends()
    known.answer(500)
    unknown.forever(500)
    middleware = ResilienceMiddleware({known.origin: Retry(3, clock=clock)})
    assert middleware.policy_for(unknown.origin) is None
    async with session(middleware) as client, Timeout(30.0):
        with tracer[0].start_as_current_span("caller"):
            assert await get(client, known.url()) == (200, "ok")
            for _ in range(3):
                assert await get(client, unknown.url()) == (500, "500")
    assert known.attempts == 2
    assert unknown.attempts == 3
    assert all(value is not None for value in unknown.header(DEADLINE_HEADER))
    assert all(value is not None for value in unknown.header("traceparent"))


async def test_mapping_default_policy_serves_unknown_hosts(
    backend: Backend, clock: FakeClock
) -> None:
    """With a mapping and a `default` policy, unknown hosts go through the default."""
    backend.answer(500)
    default = Retry(3, clock=clock)
    middleware = ResilienceMiddleware({"http://elsewhere:1": Retry(1)}, default=default)
    async with session(middleware) as client:
        assert await get(client, backend.url()) == (200, "ok")
    assert middleware.policy_for(backend.origin) is default
    assert backend.attempts == 2


def test_factory_runs_once_per_key() -> None:
    """The factory builds one policy per key and the middleware reuses it."""
    built: list[str] = []

    def factory(key: str) -> Policy:
        built.append(key)
        return default_policy(key)

    middleware = ResilienceMiddleware(factory)
    first = middleware.policy_for("http://a:1")
    assert middleware.policy_for("http://a:1") is first
    middleware.policy_for("http://b:1")
    assert built == ["http://a:1", "http://b:1"]


def test_bad_arguments_are_type_errors() -> None:
    """Policies that are neither a factory nor a mapping, or an unknown key, raise."""
    with pytest.raises(TypeError, match="policies"):
        ResilienceMiddleware(42)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="key"):
        ResilienceMiddleware(key="host")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="failure_status"):
        ResilienceMiddleware(failure_status=None)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"policies": {"http://a:1": None}}, r"policies\['http://a:1'\] is None, not a Policy"),
        ({"policies": {}, "default": "strict"}, "default is 'strict', not a Policy"),
        ({"default": Retry(2)}, "no mapping was given"),
        ({"policies": lambda key: Retry(2), "default": Retry(2)}, "with a factory"),
    ],
)
def test_policies_that_are_not_policies_fail_when_the_middleware_is_built(
    kwargs: dict[str, Any], message: str
) -> None:
    """A mapped or default policy that is not a `Policy` fails at construction, not as an
    AttributeError in every request; a `default` next to a factory (which it would
    never serve) too."""
    with pytest.raises(TypeError, match=message):
        ResilienceMiddleware(**kwargs)


def test_default_without_a_mapping_says_what_to_write_instead() -> None:
    """``ResilienceMiddleware(default=policy)`` (no mapping, so ``default=`` would serve no
    key) names both ways to say what was meant, and the shared one it suggests works."""
    shared = Retry(2)
    with pytest.raises(TypeError) as raised:
        ResilienceMiddleware(default=shared)
    message = str(raised.value)
    assert "no mapping was given" in message
    assert "`lambda key: pipeline(...)`" in message
    assert "`ResilienceMiddleware({}, default=policy)`" in message
    suggested = ResilienceMiddleware({}, default=shared)
    assert suggested.policy_for("http://a") is suggested.policy_for("http://b") is shared


@pytest.mark.parametrize(
    ("key", "spelled"),
    [
        ("http://api:80", "http://api"),  # a default port: requests are keyed without it
        ("https://api:443/", "https://api"),
        ("http://api./", "http://api."),  # a slash (the trailing dot is another host)
        ("HTTP://API:8080", "http://api:8080"),
        ("http://api:8080/items", "http://api:8080"),  # a path
    ],
)
def test_a_mapped_origin_no_request_is_keyed_by_fails_naming_its_spelling(
    key: str, spelled: str
) -> None:
    """Under ``key="origin"`` a mapping's key spelled otherwise than requests' origins
    (which would silently serve no request) is a ValueError naming the right spelling."""
    with pytest.raises(ValueError, match=rf"{key!r}.*write {spelled!r}"):
        ResilienceMiddleware({key: Retry(2)})
    ResilienceMiddleware({spelled: Retry(2)})  # as requests are keyed: accepted
    ResilienceMiddleware({key: Retry(2)}, key="route")  # other keys: not origins


@pytest.mark.parametrize("key", ["api", "", "/items", "http://"])
def test_a_mapped_origin_that_names_no_origin_fails(key: str) -> None:
    """Under ``key="origin"`` a mapping's key with no scheme and host is a ValueError."""
    with pytest.raises(ValueError, match="scheme://host"):
        ResilienceMiddleware({key: Retry(2)})


async def test_a_factory_returning_no_policy_fails_naming_the_key() -> None:
    """A factory that returns something else than a `Policy` fails at the key's first
    request with a TypeError naming the key, and builds nothing."""
    middleware = ResilienceMiddleware(lambda key: None)  # type: ignore[arg-type,return-value]
    request = aiohttp.ClientRequest(
        "GET", URL("http://127.0.0.1:9/"), loop=asyncio.get_running_loop()
    )

    async def handler(_: aiohttp.ClientRequest) -> aiohttp.ClientResponse:
        raise AssertionError("not sent")

    with pytest.raises(TypeError, match=r"policies\('http://127.0.0.1:9'\) is None"):
        await within(middleware(request, handler))
    assert "keys=0/" in repr(middleware)


async def test_an_empty_key_with_the_default_policy_fails_saying_so() -> None:
    """A key function returning "" under the default factory fails with an error about
    the key, not about a `Timeout` name, and nothing is sent."""
    middleware = ResilienceMiddleware(key=lambda _: "")
    request = aiohttp.ClientRequest(
        "GET", URL("http://127.0.0.1:9/"), loop=asyncio.get_running_loop()
    )

    async def handler(_: aiohttp.ClientRequest) -> aiohttp.ClientResponse:
        raise AssertionError("not sent")

    with pytest.raises(ValueError, match="the request's key is empty"):
        await within(middleware(request, handler))
    with pytest.raises(TypeError, match="must be a str"):
        default_policy(42)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("name", "error"),
    [
        (None, TypeError),  # istr(None) would send a header named "None"
        (b"X-Budget", TypeError),  # and this one "b'X-Budget'"
        ("", ValueError),
        ("X Budget", ValueError),  # aiohttp sends it; the server answers 400
        ("X-Budget:", ValueError),
        ("X-Budget\n", ValueError),
    ],
)
@pytest.mark.parametrize("param", ["deadline_header", "priority_header"])
def test_header_names_are_checked_when_the_middleware_is_built(
    param: str, name: object, error: type[Exception]
) -> None:
    """A header name that is not an HTTP token fails at construction, naming the
    parameter, not on the wire at every request."""
    with pytest.raises(error, match=param):
        ResilienceMiddleware(**{param: name})  # type: ignore[arg-type]


def test_the_deadline_and_the_priority_need_two_headers() -> None:
    """One name for both (in any case) would send the priority over the deadline."""
    with pytest.raises(ValueError, match="one header can't carry both"):
        ResilienceMiddleware(deadline_header="X-Budget", priority_header="x-budget")


@pytest.mark.parametrize("methods", ["GET", ["GET", 1]])
def test_retry_methods_must_be_a_collection_of_names(methods: object) -> None:
    """``retry_methods="GET"`` would be the methods G, E and T: GET never retried, and
    nothing said so. It fails when the middleware is built, as in `DiscoveryClient`."""
    with pytest.raises(TypeError, match=r"retry_methods=.*expected a collection of method names"):
        ResilienceMiddleware(retry_methods=methods)  # type: ignore[arg-type]


# -- headers sent --------------------------------------------------------------------------


async def test_deadline_header_decreases_across_attempts(
    backend: Backend, clock: FakeClock
) -> None:
    """Each attempt carries the deadline left at that moment, in whole milliseconds."""
    backend.answer(500, 500)
    policy = Retry(3, clock=clock, wait=tenacity.wait_fixed(1.5))
    async with (
        session(ResilienceMiddleware({backend.origin: policy})) as client,
        Timeout(10.0, clock=clock),
    ):
        assert await get(client, backend.url()) == (200, "ok")
    assert backend.header(DEADLINE_HEADER) == ["10000", "8500", "7000"]


@pytest.mark.parametrize(
    ("seconds", "sent"), [(1.2347, "1234"), (2.9999, "2999"), (0.0004, "1"), (7.0, "7000")]
)
async def test_deadline_header_rounds_down(
    backend: Backend, clock: FakeClock, seconds: float, sent: str
) -> None:
    """The header never promises more than the caller has: milliseconds rounded down
    (at least 1, so a nearly spent budget is still a deadline)."""
    async with (
        session(ResilienceMiddleware(retrying(clock))) as client,
        Timeout(seconds, clock=clock),
    ):
        assert await get(client, backend.url()) == (200, "ok")
    assert backend.header(DEADLINE_HEADER) == [sent]


async def test_deadline_header_in_real_time(backend: Backend) -> None:
    """Under a real Timeout the header never exceeds the budget and never grows."""
    backend.answer(500, 500)
    with instant_retries():
        async with session(ResilienceMiddleware(lambda key: Retry(3))) as client, Timeout(5.0):
            await asyncio.sleep(0.01)
            assert await get(client, backend.url()) == (200, "ok")
    sent = [int(value or 0) for value in backend.header(DEADLINE_HEADER)]
    assert len(sent) == 3
    assert 0 < sent[2] <= sent[1] <= sent[0] < 5000


async def test_no_deadline_no_header(backend: Backend, clock: FakeClock) -> None:
    """Outside any deadline no attempt carries the header."""
    backend.answer(500, 500)
    async with session(ResilienceMiddleware(retrying(clock))) as client:
        assert await get(client, backend.url()) == (200, "ok")
    assert backend.header(DEADLINE_HEADER) == [None, None, None]


async def test_trace_context_on_every_attempt(
    backend: Backend, clock: FakeClock, tracer: tuple[trace.Tracer, InMemorySpanExporter]
) -> None:
    """Every attempt carries the caller's trace context and baggage."""
    backend.answer(503, 503)
    token = context.attach(baggage.set_baggage("tenant", "acme"))
    try:
        async with session(ResilienceMiddleware(retrying(clock))) as client:
            with tracer[0].start_as_current_span("caller") as span:
                assert await get(client, backend.url()) == (200, "ok")
    finally:
        context.detach(token)
    trace_id = format(span.get_span_context().trace_id, "032x")
    parents = backend.header("traceparent")
    assert len(parents) == 3
    assert all(value is not None and value.split("-")[1] == trace_id for value in parents)
    assert backend.header("baggage") == ["tenant=acme"] * 3


async def test_baggage_without_a_span_is_sent(backend: Backend, clock: FakeClock) -> None:
    """Baggage alone, no span: the context isn't empty, so the propagators write it."""
    token = context.attach(baggage.set_baggage("tenant", "acme"))
    try:
        async with session(ResilienceMiddleware(retrying(clock))) as client:
            assert await get(client, backend.url()) == (200, "ok")
    finally:
        context.detach(token)
    assert backend.header("baggage") == ["tenant=acme"]
    assert backend.header("traceparent") == [None]


class _Stamping(TextMapPropagator):
    """A propagator writing a header from any context, an empty one included."""

    def extract(self, carrier: Any, context: Any = None, getter: Any = None) -> Any:
        return context

    def inject(self, carrier: Any, context: Any = None, setter: Any = None) -> None:
        carrier["X-Stamped"] = "yes"

    @property
    def fields(self) -> set[str]:
        return {"X-Stamped"}


async def test_a_propagator_of_the_users_is_always_asked(
    backend: Backend, clock: FakeClock
) -> None:
    """No span, no baggage: the default propagators would write nothing and are skipped,
    but a propagator the user configured is asked on every attempt all the same."""
    stock = propagate.get_global_textmap()
    async with session(ResilienceMiddleware(retrying(clock))) as client:
        assert await get(client, backend.url()) == (200, "ok")
        propagate.set_global_textmap(CompositePropagator([stock, _Stamping()]))
        try:
            backend.answer(503)
            assert await get(client, backend.url()) == (200, "ok")
        finally:
            propagate.set_global_textmap(stock)
        assert await get(client, backend.url()) == (200, "ok")
    assert backend.header("X-Stamped") == [None, "yes", "yes", None]


async def test_a_lone_stock_propagator_is_judged_as_the_composite(
    backend: Backend, clock: FakeClock, tracer: tuple[trace.Tracer, InMemorySpanExporter]
) -> None:
    """W3C trace context alone, not in a composite: nothing written without a span (it
    has nothing to write), its header with one."""
    stock = propagate.get_global_textmap()
    propagate.set_global_textmap(TraceContextTextMapPropagator())
    try:
        async with session(ResilienceMiddleware(retrying(clock))) as client:
            assert await get(client, backend.url()) == (200, "ok")
            with tracer[0].start_as_current_span("caller"):
                assert await get(client, backend.url()) == (200, "ok")
    finally:
        propagate.set_global_textmap(stock)
    first, second = backend.header("traceparent")
    assert first is None
    assert second is not None


def test_origins_stay_right_past_the_cache_bound() -> None:
    """Past the cache's bound (a crawler's hosts), every key is still the URL's origin."""
    urls = [URL(f"http://user:pw@host-{n}.test:{8000 + n % 3}/p?q={n}") for n in range(2500)]
    urls += [URL("https://HOST-1.test/"), URL("http://host-1.test:80/")]
    for url in urls:
        assert client_module._origin(SimpleNamespace(url=url)) == str(url.origin())  # type: ignore[arg-type]
    assert len(client_module._ORIGINS) <= client_module._MAX_ORIGINS


@pytest.mark.parametrize(
    ("spellings", "origin"),
    [
        (["http://api.test/", "http://API.test:80/x", "http://api.test/y?q=1"], "http://api.test"),
        (["http://api.test./", "http://API.test.:80/x"], "http://api.test."),
        (["https://u:p@api.test:443/", "https://api.test/"], "https://api.test"),
        (["http://[::1]:80/", "http://[::1]/"], "http://[::1]"),
        (["http://api.test:8080/", "http://u@api.test:8080/z"], "http://api.test:8080"),
    ],
)
def test_one_host_is_one_origin_however_its_urls_spell_it(
    spellings: list[str], origin: str
) -> None:
    """Default port, case, credentials, path: one key for one host."""
    client_module._ORIGINS.clear()  # spellings met earlier must not decide the string
    for spelled in spellings:
        assert client_module._origin(SimpleNamespace(url=URL(spelled))) == origin  # type: ignore[arg-type]


class _Resolver(aiohttp.abc.AbstractResolver):
    """Resolves the names it knows to the loopback backend; any other is unknown."""

    def __init__(self, known: set[str]) -> None:
        self.known = known

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[aiohttp.abc.ResolveResult]:
        if host not in self.known:
            raise OSError(socket.EAI_NONAME, f"unknown host {host!r}")
        return [
            {"hostname": host, "host": LOCALHOST, "port": port, "family": socket.AF_INET,
             "proto": 0, "flags": socket.AI_NUMERICHOST}
        ]  # fmt: skip

    async def close(self) -> None:
        pass


@pytest.mark.parametrize("other", ["api.test.", "api.test.."])
async def test_a_host_spelled_with_trailing_dots_never_opens_the_plain_hosts_breaker(
    backend: Backend, other: str
) -> None:
    """
    aiohttp resolves and pools ``api.test.`` apart from ``api.test`` (under a DNS search
    domain they are different hosts; here only the plain name resolves): failing to
    connect to one opens its own breaker, not the other's.
    """
    backend.forever(200)
    port = backend.url().port
    plain, dotted = URL(f"http://api.test:{port}/"), URL(f"http://{other}:{port}/")
    middleware = ResilienceMiddleware(
        lambda key: CircuitBreaker(name=key, failure_threshold=1, reset_timeout=60.0)
    )
    connector = aiohttp.TCPConnector(resolver=_Resolver({"api.test"}), use_dns_cache=False)
    async with session(middleware, connector=connector) as client:
        with pytest.raises(aiohttp.ClientConnectorError):
            await within(get(client, dotted))
        with pytest.raises(CircuitOpenError):
            await within(get(client, dotted))  # its own breaker opened
        assert await within(get(client, plain)) == (200, "200")


async def test_propagate_false_sends_nothing(
    backend: Backend, clock: FakeClock, tracer: tuple[trace.Tracer, InMemorySpanExporter]
) -> None:
    """With ``propagate=False`` neither the deadline nor the trace context is sent."""
    async with session(ResilienceMiddleware(retrying(clock), propagate=False)) as client:
        with tracer[0].start_as_current_span("caller"):
            async with Timeout(5.0):
                assert await get(client, backend.url()) == (200, "ok")
    assert backend.header(DEADLINE_HEADER) == [None]
    assert backend.header("traceparent") == [None]


async def test_custom_deadline_header(backend: Backend, clock: FakeClock) -> None:
    """`deadline_header` renames the header the remaining budget travels in."""
    middleware = ResilienceMiddleware(retrying(clock), deadline_header="Grpc-Budget-Ms")
    async with session(middleware) as client, Timeout(2.0, clock=clock):
        assert await get(client, backend.url()) == (200, "ok")
    assert backend.header("Grpc-Budget-Ms") == ["2000"]
    assert backend.header(DEADLINE_HEADER) == [None]


async def test_custom_header_names_go_on_the_wire_as_written(clock: FakeClock) -> None:
    """The header names keep the case the caller wrote (a case-insensitive `istr`
    inside), and replace a value the caller set under another case."""
    seen: list[list[tuple[str, str]]] = []

    async def handler(request: aiohttp.ClientRequest) -> aiohttp.ClientResponse:
        seen.append([(k, v) for k, v in request.headers.items() if k.lower().startswith("x-")])
        raise aiohttp.ClientConnectionError("nobody home")

    middleware = ResilienceMiddleware(
        retrying(clock, attempts=1), deadline_header="x-BUDGET-ms", priority_header="X-prio"
    )
    request = aiohttp.ClientRequest(
        "GET",
        URL("http://127.0.0.1:9/"),
        headers={"X-Budget-MS": "999999"},
        loop=asyncio.get_running_loop(),
    )
    with priority(Priority.SHEDDABLE), pytest.raises(aiohttp.ClientConnectionError):
        async with Timeout(2.0, clock=clock):
            await within(middleware(request, handler))
    assert seen == [[("x-BUDGET-ms", "2000"), ("X-prio", "sheddable")]]


# -- the benchmark still runs --------------------------------------------------------------


def test_middleware_benchmark_quick_run(tmp_path: Path) -> None:
    """`benchmarks.middleware --quick` measures every client and writes its section."""
    report = tmp_path / "benchmarks.md"
    report.write_text("# Benchmarks\n\nkept\n")
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.middleware", "--quick", "--md", str(report)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    text = report.read_text()
    assert text.startswith("# Benchmarks\n\nkept\n")
    assert "<!-- middleware:begin -->" in text
    assert "<!-- middleware:end -->" in text
    assert "full pipeline" in text
    # The hand-written floors, measured beside the middleware, with their comparisons.
    assert "hand-written floor: the default policy's work" in text
    assert "default policy / its hand-written floor (overheads)" in text
    # And what any middleware costs, the share of ours that is aiohttp's.
    assert "a middleware that only awaits its handler: overhead % of a bare GET" in text
    # RetryClient judged against the GET it makes (entered and left its way), with
    # Retry(3) alone measured over the same GET.
    assert "Retry(3) only, GET entered and left as RetryClient does" in text
    assert "the same retries, the same GET" in text
    assert "bare GET entered and left as RetryClient does: overhead %" in text


# -- review fixes --------------------------------------------------------------------------


async def test_one_shot_body_is_never_resent(backend: Backend, clock: FakeClock) -> None:
    """A PUT whose body is an async generator is sent once: a retry would send it empty.
    The caller gets the failed response, as without the middleware."""

    async def chunks() -> AsyncIterator[bytes]:
        yield b"important "
        yield b"value"

    backend.answer(503)
    async with (
        session(ResilienceMiddleware(retrying(clock))) as client,
        client.put(backend.url("/k"), data=chunks()) as response,
    ):
        assert response.status == 503
    assert backend.attempts == 1
    assert clock.sleeps == []


async def test_bytes_body_is_still_retried(backend: Backend, clock: FakeClock) -> None:
    """A PUT with a bytes body can be sent again whole, so it is retried."""
    backend.answer(503)
    async with (
        session(ResilienceMiddleware(retrying(clock))) as client,
        client.put(backend.url("/k"), data=b"value") as response,
    ):
        assert response.status == 200
    assert backend.attempts == 2


def recording(bodies: list[bytes], status: int) -> Action:
    """
    Read the request's whole body into `bodies`, then answer with `status`.
    """

    async def act(_: Backend, request: web.Request) -> web.StreamResponse:
        bodies.append(await request.read())
        return web.Response(status=status, text=str(status))

    return act


async def test_file_body_that_cannot_rewind_is_never_resent(
    backend: Backend, clock: FakeClock
) -> None:
    """A PUT whose body is a file that can't seek back (a pipe) reaches the server once:
    after its 503 the caller gets that 503, not a 200 for an empty second attempt."""
    bodies: list[bytes] = []
    backend.answer(recording(bodies, 503))
    backend.forever(recording(bodies, 200))
    read_end, write_end = os.pipe()
    os.write(write_end, b"important value")
    os.close(write_end)
    with open(read_end, "rb") as body:  # noqa: ASYNC230  # a pipe: opening never blocks
        async with (
            asyncio.timeout(GUARD),
            session(ResilienceMiddleware(retrying(clock))) as client,
            client.put(backend.url("/k"), data=body) as response,
        ):
            assert (response.status, await response.text()) == (503, "503")
    assert bodies == [b"important value"]


async def test_seekable_file_body_is_resent_whole(
    backend: Backend, clock: FakeClock, tmp_path: Path
) -> None:
    """A PUT whose body is a regular file is rewound and sent whole again after a 503."""
    bodies: list[bytes] = []
    backend.answer(recording(bodies, 503))
    backend.forever(recording(bodies, 200))
    path = tmp_path / "value"
    path.write_bytes(b"important value")
    with path.open("rb") as body:
        async with (
            asyncio.timeout(GUARD),
            session(ResilienceMiddleware(retrying(clock))) as client,
            client.put(backend.url("/k"), data=body) as response,
        ):
            assert response.status == 200
    assert bodies == [b"important value"] * 2


async def test_unhealthy_response_text_has_no_query_string(
    backend: Backend, clock: FakeClock
) -> None:
    """The failure's text names the path, not the query (tokens travel there)."""
    backend.forever(503)
    seen: list[BaseException] = []
    policy = Retry(1, clock=clock, hooks=[lambda e: seen.append(getattr(e, "error", None))])  # type: ignore[arg-type]
    async with (
        session(ResilienceMiddleware({backend.origin: policy})) as client,
        client.get(backend.url("/charge"), params={"api_key": "sk_live_SECRET"}) as response,
    ):
        assert response.status == 503
    errors = [e for e in seen if e is not None]
    assert errors
    assert all("SECRET" not in str(e) and "/charge" in str(e) for e in errors)


def test_a_policy_is_not_a_factory() -> None:
    """Passing a policy where a factory belongs is a TypeError at construction."""
    with pytest.raises(TypeError, match="factory"):
        ResilienceMiddleware(Retry(2))  # type: ignore[arg-type]
