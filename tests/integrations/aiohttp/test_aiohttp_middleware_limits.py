"""
`ResilienceMiddleware`'s bounds: policies kept per key, timeouts by default, deadlines
on the wire, and its repr. Real aiohttp servers on loopback where a request is sent.
"""

# ruff: noqa: F811  # test parameters named after the fixtures imported below

from __future__ import annotations

import asyncio
import functools
import itertools
import math
import random
import time
import tracemalloc
from collections.abc import AsyncIterator
from typing import Any, TypeVar

import aiohttp
import pytest
import yarl
from aiohttp import web
from aiohttp.client_middlewares import ClientHandlerType
from hypothesis import given
from hypothesis import strategies as st

from resilient import (
    CircuitBreaker,
    CircuitState,
    Hedge,
    Pipeline,
    Policy,
    Retry,
    Timeout,
    TimeoutExceeded,
    deadline,
    pipeline,
)
from resilient._engine.policy import Args, AsyncFn, Kwargs
from resilient.integrations.aiohttp import (
    DEADLINE_HEADER,
    DEFAULT_MAX_KEYS,
    ResilienceMiddleware,
    default_policy,
)
from resilient.integrations.aiohttp import _client as client_module
from resilient.integrations.aiohttp import _policies as policies_module
from resilient.integrations.aiohttp._propagation import MAX_DEADLINE_MS, stamp_headers
from resilient.testing import FakeClock, instant_retries
from tests._aio import within
from tests._run import run_module
from tests.integrations.aiohttp.test_aiohttp_client import (  # noqa: F401  # backend, backends: fixtures
    GUARD,
    Backend,
    acquired,
    backend,
    backends,
    get,
    reply,
    stall,
)

T = TypeVar("T")


def held(middleware: ResilienceMiddleware) -> int:
    """
    How many keys' policies the middleware holds (from its repr, the public view).
    """
    return int(repr(middleware).split("keys=")[1].split("/")[0])


def by_path(request: aiohttp.ClientRequest) -> str:
    """
    A key function: the request's path.
    """
    return request.url.path


# -- a bounded cache of policies -----------------------------------------------------------


def test_100k_origins_hold_at_most_the_cap() -> None:
    """100,000 origins leave at most `DEFAULT_MAX_KEYS` policies held; the newest are kept."""
    middleware = ResilienceMiddleware(lambda key: CircuitBreaker(name=key))
    for n in range(100_000):
        middleware.policy_for(f"http://host-{n}:80")
    assert held(middleware) == DEFAULT_MAX_KEYS == middleware.max_keys
    newest = middleware.policy_for("http://host-99999:80")
    assert held(middleware) == DEFAULT_MAX_KEYS  # a held key is not built again
    assert newest is middleware.policy_for("http://host-99999:80")


def test_memory_held_by_many_default_policies_is_bounded() -> None:
    """
    10,000 origins with the default policy and ``max_keys=100`` keep what 100 policies take.

    A default policy takes about 3 KiB; unbounded, 10,000 of them held ~28 MiB.
    """
    middleware = ResilienceMiddleware(max_keys=100)
    tracemalloc.start()
    try:
        for n in range(10_000):
            middleware.policy_for(f"http://host-{n}:80")
        current, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert held(middleware) == 100
    assert current < 2 * 2**20


async def test_busy_key_is_never_dropped(backend: Backend) -> None:
    """A key with a request in flight keeps its policy past the cap; it is dropped once idle."""

    a_arrived = asyncio.Event()

    async def stall_a(b: Backend, request: web.Request) -> web.StreamResponse:
        if request.path != "/a":
            return await reply()(b, request)
        a_arrived.set()
        return await stall(b, request)

    backend.forever(stall_a)
    middleware = ResilienceMiddleware(lambda key: Retry(2, name=key), key=by_path, max_keys=1)
    async with asyncio.timeout(GUARD), aiohttp.ClientSession(middlewares=[middleware]) as client:
        busy = asyncio.create_task(get(client, backend.url("/a")))
        await a_arrived.wait()
        policy_a = middleware.policy_for("/a")
        for path in ("/b", "/c"):
            assert await get(client, backend.url(path)) == (200, "ok")
        assert middleware.policy_for("/a") is policy_a  # kept while in flight
        assert "in_flight=1" in repr(middleware)
        busy.cancel()
        with pytest.raises(asyncio.CancelledError):
            await busy
        assert held(middleware) == 1  # over the cap only while busy
        assert await get(client, backend.url("/d")) == (200, "ok")
        assert middleware.policy_for("/a") is not policy_a  # idle, dropped, built again


async def test_open_breaker_is_kept_until_it_would_probe(backend: Backend) -> None:
    """An idle key whose breaker is open stays held past the cap until its reset_timeout ends."""
    clock = FakeClock()
    backend.answer(500)
    middleware = ResilienceMiddleware(
        lambda key: CircuitBreaker(name=key, failure_threshold=1, reset_timeout=10, clock=clock),
        key=by_path,
        max_keys=1,
    )
    async with asyncio.timeout(GUARD), aiohttp.ClientSession(middlewares=[middleware]) as client:
        assert (await get(client, backend.url("/down")))[0] == 500
        breaker = middleware.policy_for("/down")
        assert isinstance(breaker, CircuitBreaker)
        assert breaker.state is CircuitState.OPEN
        for path in ("/b", "/c"):
            assert await get(client, backend.url(path)) == (200, "ok")
        assert middleware.policy_for("/down") is breaker  # not reset by eviction
        clock.advance(10)  # now it would let a probe through
        assert await get(client, backend.url("/e")) == (200, "ok")
        assert middleware.policy_for("/down") is not breaker


def test_mapped_policies_are_never_dropped() -> None:
    """Policies given as a mapping are all kept, whatever ``max_keys`` says."""
    mapping = {f"http://h{n}": CircuitBreaker(name=f"h{n}") for n in range(5)}
    middleware = ResilienceMiddleware(mapping, max_keys=1)
    assert all(middleware.policy_for(key) is policy for key, policy in mapping.items())
    assert held(middleware) == 5


@pytest.mark.parametrize(
    ("value", "error", "message"),
    [
        (0, ValueError, r"max_keys=0\): max_keys must be >= 1"),
        (-5, ValueError, r"max_keys=-5\)"),
        (1.5, TypeError, r"max_keys=...\): expected an int, got 1.5"),
        (True, TypeError, "expected an int"),
    ],
)
def test_max_keys_is_validated(value: object, error: type[Exception], message: str) -> None:
    """A bad ``max_keys`` raises at construction, naming the parameter and the value."""
    with pytest.raises(error, match=message):
        ResilienceMiddleware(max_keys=value)  # type: ignore[arg-type]


async def test_repr_shows_keys_cap_and_requests_in_flight(backend: Backend) -> None:
    """The repr tells the key kind, the keys held over the cap, and requests in flight."""
    middleware = ResilienceMiddleware(key="route", max_keys=50)
    assert repr(middleware) == "<ResilienceMiddleware key='route' keys=0/50 in_flight=0>"
    async with aiohttp.ClientSession(middlewares=[middleware]) as client:
        await get(client, backend.url("/x"))
        await get(client, backend.url("/y"))
    assert repr(middleware) == "<ResilienceMiddleware key='route' keys=2/50 in_flight=0>"
    assert "key='by_path'" in repr(ResilienceMiddleware(key=by_path))


# -- timeouts by default -------------------------------------------------------------------


def test_default_policy_has_a_total_and_a_per_attempt_timeout() -> None:
    """The default policy: Timeout(30) outermost, Retry, breaker, Timeout(10) per attempt."""
    policy = ResilienceMiddleware().policy_for("http://api")
    assert isinstance(policy, Pipeline)
    kinds = [type(layer) for layer in policy.policies]
    assert kinds == [Timeout, Retry, CircuitBreaker, Timeout]
    total, per_attempt = policy.policies[0], policy.policies[3]
    assert isinstance(total, Timeout)
    assert isinstance(per_attempt, Timeout)
    assert (total.seconds, per_attempt.seconds) == (30.0, 10.0)
    assert all(layer.name == "http://api" for layer in policy.policies)


@pytest.mark.parametrize("param", ["total", "per_attempt"])
def test_default_policy_timeouts_are_validated(param: str) -> None:
    """A bad timeout for the default policy names its parameter."""
    with pytest.raises(ValueError, match=rf"default_policy\({param}=0\)"):
        default_policy("k", **{param: 0})


def test_default_policy_refuses_an_attempt_longer_than_the_call() -> None:
    """per_attempt > total (the two swapped, most likely) is refused naming both; equal
    is allowed (no separate limit per attempt)."""
    with pytest.raises(ValueError, match=r"default_policy\(total=1.0, per_attempt=5.0\)"):
        default_policy("k", total=1, per_attempt=5)
    equal = default_policy("k", total=2, per_attempt=2)
    assert isinstance(equal, Pipeline)


async def test_hung_server_costs_the_timeouts_not_aiohttps_300_s(backend: Backend) -> None:
    """
    Against a server that never answers, each attempt ends at `per_attempt`, the call at
    `total`: TimeoutExceeded, after more than one attempt, in seconds, not 300.
    """
    backend.forever(stall)
    factory = functools.partial(default_policy, total=0.6, per_attempt=0.2)
    started = time.monotonic()
    with instant_retries():
        async with aiohttp.ClientSession(middlewares=[ResilienceMiddleware(factory)]) as client:
            with pytest.raises(TimeoutExceeded):
                await get(client, backend.url())
    assert time.monotonic() - started < GUARD  # aiohttp's own default is 300 s
    assert backend.attempts >= 2  # the per-attempt timeout cut the first attempt short


# -- what goes on the wire -----------------------------------------------------------------


async def test_huge_deadline_goes_on_the_wire_as_a_day(backend: Backend) -> None:
    """Inside ``Timeout(1e306)`` the request is sent once, with a day as its deadline."""
    middleware = ResilienceMiddleware(lambda key: Retry(3, name=key))
    with instant_retries():
        async with aiohttp.ClientSession(middlewares=[middleware]) as client, Timeout(1e306):
            assert await get(client, backend.url()) == (200, "ok")
    assert backend.header(DEADLINE_HEADER) == [str(MAX_DEADLINE_MS)]


async def test_stamping_error_is_not_an_attempt(
    backend: Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    """
    A header that can't be written (a propagator raising) reaches the caller as is:
    not retried, not counted by the breaker, nothing sent.
    """

    def broken_propagator(*_: object) -> None:
        raise RuntimeError("propagator bug")

    monkeypatch.setattr(client_module, "stamp_headers", broken_propagator)
    clock = FakeClock()
    retry = Retry(3, clock=clock)
    breaker = CircuitBreaker(name="api", failure_threshold=1, clock=clock)
    middleware = ResilienceMiddleware({backend.origin: pipeline(retry, breaker)})
    async with aiohttp.ClientSession(middlewares=[middleware]) as client:
        with pytest.raises(RuntimeError, match="propagator bug"):
            await get(client, backend.url())
    assert backend.attempts == 0
    assert clock.sleeps == []  # no retry
    assert breaker.statistics().failures == 0
    assert breaker.state is CircuitState.CLOSED


class _Twice(Policy):
    """
    A policy that ignores `no_retries()`: it tries once more after any failure.
    """

    kind = "twice"

    async def _run(self, fn: AsyncFn[T], args: Args, kwargs: Kwargs) -> T:
        try:
            return await fn(*args, **kwargs)
        except Exception:  # the point: a second try, whatever happened
            return await fn(*args, **kwargs)


class _Swap(Policy):
    """
    A user-written policy (a cache, say) answering with another response than its
    attempt's: it sends the attempt, then returns `other` instead.
    """

    kind = "swap"

    def __init__(self, other: aiohttp.ClientResponse) -> None:
        super().__init__(name=None, clock=None, hooks=None)
        self.other = other

    async def _run(self, fn: AsyncFn[T], args: Args, kwargs: Kwargs) -> T:
        await fn(*args, **kwargs)
        return self.other  # type: ignore[return-value]  # a response, as fn's


async def test_a_policy_answering_with_another_response_gets_it_and_the_sent_one_is_released(
    backend: Backend,
) -> None:
    """A policy returning a response other than the one its single attempt got (the
    middleware's common case, one attempt that answered, tested inline): the caller
    gets the policy's, and the attempt's response, unread and too big for the client's
    buffers, is released (its connection back in the pool), not leaked."""

    async def by_path_answer(_: Backend, request: web.Request) -> web.StreamResponse:
        return web.Response(text=request.path.ljust(2**18, "."))

    backend.forever(by_path_answer)
    connector = aiohttp.TCPConnector(limit=1)  # a leaked connection would hang the next
    async with asyncio.timeout(GUARD), aiohttp.ClientSession() as plain:
        other = await plain.get(backend.url("/other"))
        middleware = ResilienceMiddleware({backend.origin: _Swap(other)})
        async with aiohttp.ClientSession(middlewares=[middleware], connector=connector) as client:
            for _ in range(3):
                async with client.get(backend.url("/sent")) as response:
                    assert response is other
                    assert acquired(connector) == 0  # /sent's response released
                    assert (await response.text()).startswith("/other.")
        assert [seen.path for seen in backend.seen] == ["/other"] + ["/sent"] * 3


async def test_a_spent_one_shot_body_is_never_resent_even_by_a_policy_that_insists(
    backend: Backend,
) -> None:
    """A policy retrying a request whose streamed body was sent gets the first attempt's
    response back (readable), and nothing is sent again."""

    async def chunks() -> AsyncIterator[bytes]:
        yield b"once"

    backend.answer(reply(503, "first"))
    middleware = ResilienceMiddleware({backend.origin: _Twice(name=None, clock=None, hooks=None)})
    async with (
        aiohttp.ClientSession(middlewares=[middleware]) as client,
        client.put(backend.url(), data=chunks()) as response,
    ):
        assert (response.status, await response.text()) == (503, "first")
    assert backend.attempts == 1


def test_middleware_keys_benchmark_quick_run() -> None:
    """`benchmarks.middleware_keys` runs and reports the cap it was given."""
    output = run_module(
        "benchmarks.middleware_keys", "--keys", "500", "--max-keys", "50", timeout=120
    )
    assert "after 500 origins" in output
    assert "keys=50/50 in_flight=0" in output


async def test_idle_half_open_breaker_does_not_pin_its_key(backend: Backend) -> None:
    """
    A key whose breaker is half-open with no probe in flight is dropped like any idle one.

    Say a probe passed but `success_threshold` wants more, and the key is never called
    again (a crawler's host): kept forever, such keys would grow the cache past the cap.
    """
    clock = FakeClock()
    backend.answer(500)
    middleware = ResilienceMiddleware(
        lambda key: CircuitBreaker(
            name=key, failure_threshold=1, success_threshold=2, reset_timeout=10, clock=clock
        ),
        key=by_path,
        max_keys=1,
    )
    async with asyncio.timeout(GUARD), aiohttp.ClientSession(middlewares=[middleware]) as client:
        assert (await get(client, backend.url("/down")))[0] == 500
        clock.advance(10)
        assert await get(client, backend.url("/down")) == (200, "ok")  # one probe passed
        breaker = middleware.policy_for("/down")
        assert isinstance(breaker, CircuitBreaker)
        assert breaker.state is CircuitState.HALF_OPEN
        for path in ("/b", "/c"):
            assert await get(client, backend.url(path)) == (200, "ok")
        assert held(middleware) == 1
        assert middleware.policy_for("/down") is not breaker


def test_keys_pinned_past_the_cap_cost_little_per_new_key(monkeypatch: pytest.MonkeyPatch) -> None:
    """
    With thousands of keys that can't be dropped (breakers open, or requests in flight)
    past the cap, a new key looks at a few of them, not all: the idleness checks grow
    linearly with the keys, not quadratically (4,000 busy keys cost the event loop ~8 s
    before). Once they settle, new keys bring the cache back down to the cap.
    """
    checks = 0
    real_idle = policies_module._idle

    def counted(entry: Any) -> bool:
        nonlocal checks
        checks += 1
        return real_idle(entry)

    monkeypatch.setattr(policies_module, "_idle", counted)
    clock = FakeClock()
    middleware = ResilienceMiddleware(
        lambda key: CircuitBreaker(name=key, reset_timeout=60, clock=clock), max_keys=10
    )
    pinned = 2000
    for n in range(pinned):
        breaker = middleware.policy_for(f"http://down-{n}")
        assert isinstance(breaker, CircuitBreaker)
        breaker.trip()
    assert held(middleware) == pinned  # all open: none may be dropped
    assert checks < 20 * pinned  # the old code: ~2,000,000 (every key, for every new one)
    clock.advance(60)  # every breaker would now let a probe through: all idle
    for n in range(pinned // 10):
        middleware.policy_for(f"http://up-{n}")
    assert held(middleware) == 10


def test_the_least_recently_used_idle_key_is_dropped_first() -> None:
    """Recency, not first use: a key used again moves to the back of the queue, and a
    key used twice in a row stays there."""
    built: list[str] = []

    def factory(key: str) -> Retry:
        built.append(key)
        return Retry(2)

    middleware = ResilienceMiddleware(factory, max_keys=2)
    first_a = middleware.policy_for("a")
    middleware.policy_for("b")
    assert middleware.policy_for("a") is first_a  # a is the newest now
    middleware.policy_for("c")  # drops b, the least recently used
    assert middleware.policy_for("a") is first_a
    assert built == ["a", "b", "c"]
    middleware.policy_for("a")  # again: a stays the newest
    middleware.policy_for("b")  # drops c
    assert built == ["a", "b", "c", "b"]
    assert middleware.policy_for("a") is first_a


@given(seconds=st.floats(min_value=1e-9, max_value=1e306, allow_nan=False))
def test_the_deadline_header_is_the_floor_of_what_is_left_in_ms(seconds: float) -> None:
    """Whole milliseconds rounded down, at least 1 and at most a day."""
    headers: dict[str, str] = {}
    with deadline(seconds, clock=FakeClock()):
        stamp_headers(headers)  # no priority set, no span: the deadline alone
    expected = max(1, math.floor(min(seconds, MAX_DEADLINE_MS / 1000) * 1000))
    assert headers == {DEADLINE_HEADER: str(expected)}


async def test_a_request_runs_only_once_awaited_and_counts_in_flight_while_it_runs() -> None:
    """`__call__` is the request's coroutine: nothing is sent or counted before it is
    awaited, so one never awaited leaves no request in flight behind."""
    sent: list[aiohttp.ClientRequest] = []

    async def handler(request: aiohttp.ClientRequest) -> aiohttp.ClientResponse:
        sent.append(request)
        assert middleware._policies.in_flight() == 1  # counted while it runs
        raise aiohttp.ClientConnectionError("nobody home")

    middleware = ResilienceMiddleware(lambda key: Retry(1))
    request = aiohttp.ClientRequest(
        "GET", yarl.URL("http://127.0.0.1:9/"), loop=asyncio.get_running_loop()
    )
    never = middleware(request, handler)
    assert sent == []
    never.close()  # a coroutine, dropped unawaited
    assert middleware._policies.in_flight() == 0
    with pytest.raises(aiohttp.ClientConnectionError):
        await within(middleware(request, handler))
    assert len(sent) == 1
    assert middleware._policies.in_flight() == 0


def test_the_current_trace_context_is_read_as_the_api_reads_it() -> None:
    """The stamping reads OpenTelemetry's context variable directly: the same context
    as `opentelemetry.context.get_current()`, empty or not; another runtime context
    gets the API's own function."""
    from opentelemetry import baggage, context  # noqa: PLC0415  # the otel extra

    from resilient.integrations.aiohttp import _propagation  # noqa: PLC0415

    read = _propagation._current_context_getter(context)
    assert read is not context.get_current  # the fast path is taken with the SDK's default
    assert read() == context.get_current() == {}
    token = context.attach(baggage.set_baggage("user", "42"))
    try:
        assert read() is context.get_current()
        assert read()
    finally:
        context.detach(token)

    class Elsewhere:
        _RUNTIME_CONTEXT = object()  # not the contextvars runtime context
        get_current = staticmethod(context.get_current)

    assert _propagation._current_context_getter(Elsewhere) is context.get_current


async def test_a_request_awaited_after_its_key_was_dropped_runs_under_the_keys_policy() -> None:
    """Between `__call__` and the first await of its coroutine (an outer layer that
    wraps it in a task: `asyncio.shield`, `wait_for` on 3.11), other requests may fill
    the cache. The request must then run under the policy the cache holds for its key
    when it starts, not an orphan: here a breaker that the failure opens, which the
    next request to the host must find open."""

    async def refused(request: aiohttp.ClientRequest) -> aiohttp.ClientResponse:
        raise aiohttp.ClientConnectionError("nobody home")

    def request(path: str) -> aiohttp.ClientRequest:
        url = yarl.URL(f"http://127.0.0.1:9{path}")
        return aiohttp.ClientRequest("GET", url, loop=asyncio.get_running_loop())

    middleware = ResilienceMiddleware(
        lambda key: CircuitBreaker(name=key, failure_threshold=1), key=by_path, max_keys=1
    )
    first = middleware(request("/a"), refused)  # nothing looked up or counted yet
    assert middleware.policy_for("/b") is not None  # /b's built: /a's, if any, dropped
    other = middleware(request("/b"), refused)
    other.close()  # a coroutine, never awaited
    with pytest.raises(aiohttp.ClientConnectionError):
        await within(first)
    breaker = middleware.policy_for("/a")
    assert isinstance(breaker, CircuitBreaker)
    assert breaker.state is CircuitState.OPEN  # the breaker the failure opened is /a's
    assert "in_flight=0" in repr(middleware)


def test_the_entry_reused_for_the_same_key_is_never_another_keys() -> None:
    """
    `PolicyCache.last` (the middleware skips the lookup when a request's key equals
    the key of the one before) is only ever an entry of its own key: never the
    default policy (its key "" is not the caller's), never a dropped one.
    """
    fixed, fallback = Retry(2), Retry(3)
    cache = policies_module.PolicyCache(None, {"": fixed}, fallback, 10)
    entry = cache.get_entry("elsewhere")
    assert entry is not None
    assert entry.policy is fallback
    assert cache.last is None  # a request keyed "" must not get the default's entry
    entry = cache.get_entry("")
    assert entry is not None
    assert entry.policy is fixed
    assert cache.last is entry

    built = policies_module.PolicyCache(lambda key: Retry(2), {}, None, 1)
    first = built.get_entry("a")
    assert built.last is first
    second = built.get_entry("b")  # drops a, the least recently used
    assert first is not None
    assert len(built) == 1
    assert built.last is second
    assert second is not None
    assert built.get_entry("a") is not first  # built afresh


async def test_many_keys_hedged_and_cancelled_over_a_tiny_cache_leak_nothing(
    backend: Backend,
) -> None:
    """
    An adversarial mix: 150 concurrent requests over 12 keys with ``max_keys=2`` (policies
    dropped while requests wait to be awaited or run), hedged and retried attempts
    overlapping, a key function returning equal but never identical strings (the reuse
    of the request before's entry must not be fooled), and a third of the requests
    cancelled at random moments. Every request that finished got its own path's
    answer, every cancellation reached its caller, and afterwards nothing is in flight,
    no connection is held and the cache is back within its cap. The bodies are larger
    than the client buffers, so only `release()` frees a response's connection, and a
    middleware inside ours keeps every response alive, so garbage collection can't
    quietly release what ours forgot. (aiohttp itself closes the newest response of a
    request that fails, cancelled included: the older ones are ours to release.)
    """
    rng = random.Random(18)
    served = itertools.count()

    async def answer(_: Backend, request: web.Request) -> web.StreamResponse:
        n = next(served)
        if n % 4 == 0:
            await asyncio.sleep(0.002)  # slow enough for a hedge to overlap it
        return web.Response(status=500 if n % 3 == 0 else 200, text=body(request.path))

    def body(path: str) -> str:
        return path.ljust(2**18, ".")

    def key(request: aiohttp.ClientRequest) -> str:
        return "".join(["k", request.url.path])  # a new string object every time

    kept: list[aiohttp.ClientResponse] = []

    async def keep(
        request: aiohttp.ClientRequest, handler: ClientHandlerType
    ) -> aiohttp.ClientResponse:
        response = await handler(request)
        kept.append(response)
        return response

    backend.forever(answer)
    connector = aiohttp.TCPConnector(limit=8)
    middleware = ResilienceMiddleware(
        # A real backoff (a few ms): a cancellation may land while a failed response is
        # held for the next attempt.
        lambda _: pipeline(
            Retry(3, wait=lambda _: 0.003), Hedge(0.001, max_hedged=1), Timeout(GUARD)
        ),
        key=key,
        max_keys=2,
    )

    async def one(path: str) -> tuple[int, str]:
        return await get(client, backend.url(path))

    paths = [f"/{rng.randrange(12)}" for _ in range(150)]
    async with (
        asyncio.timeout(GUARD),
        aiohttp.ClientSession(middlewares=[middleware, keep], connector=connector) as client,
    ):
        tasks = [asyncio.create_task(one(path)) for path in paths]
        cancelled = set()
        for _ in range(50):
            await asyncio.sleep(rng.random() * 0.002)
            index = rng.randrange(len(tasks))
            if tasks[index].cancel():
                cancelled.add(index)
        outcomes = await asyncio.gather(*tasks, return_exceptions=True)
        for index, (path, outcome) in enumerate(zip(paths, outcomes, strict=True)):
            if index in cancelled:
                assert isinstance(outcome, asyncio.CancelledError), (path, outcome)
            else:
                assert outcome in {(200, body(path)), (500, body(path))}, (path, outcome)
        assert len(cancelled) < len(paths)  # most ran
        assert acquired(connector) == 0
        assert "in_flight=0" in repr(middleware)
        assert await get(client, backend.url("/last")) == (200, body("/last"))
        assert held(middleware) <= 2
    assert len(kept) > len(paths)  # retries and hedges happened
