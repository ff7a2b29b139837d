"""
Misuse that fails loudly: `.call` with something that can't be awaited, async
generators, a closed hedged call, and fake time that can't be.
"""

from __future__ import annotations

import asyncio
import functools
import gc
import inspect
import math
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
import tenacity

from resilient import (
    Bulkhead,
    CircuitBreaker,
    EndpointPool,
    Fallback,
    Hedge,
    Instance,
    Policy,
    Retry,
    SystemClock,
    Timeout,
    pipeline,
)
from resilient.testing import FakeClock, instant_retries
from tests._aio import settle

POLICIES: list[Callable[[], Policy]] = [
    lambda: Retry(3),
    lambda: CircuitBreaker("db", failure_threshold=1),
    lambda: Fallback(value="fallback"),
    lambda: Hedge(10.0, clock=FakeClock(auto_advance=False)),
    lambda: Bulkhead(2),
    lambda: Timeout(10.0),
    lambda: pipeline(Fallback(value="fallback"), Retry(3), CircuitBreaker("db")),
]
IDS = ["retry", "breaker", "fallback", "hedge", "bulkhead", "timeout", "pipeline"]


@pytest.mark.parametrize("make", POLICIES, ids=IDS)
async def test_call_with_a_sync_function_fails_once_and_clearly(make: Callable[[], Policy]) -> None:
    """`.call(sync_fn)` raises a TypeError saying the result can't be awaited, after
    running the function once: no retry, no fallback, no breaker failure."""
    policy = make()
    effects: list[int] = []

    def sync_fn(x: int) -> int:
        effects.append(x)
        return x * 2

    with instant_retries(), pytest.raises(TypeError) as info:
        await policy.call(sync_fn, 21)  # type: ignore[arg-type]  # the misuse under test
    assert effects == [21]
    message = str(info.value)
    assert "sync_fn returned int 42, which can't be awaited" in message
    assert "pass an async function" in message
    members = policy.policies if hasattr(policy, "policies") else (policy,)
    for member in members:
        if isinstance(member, CircuitBreaker):
            assert member.statistics().failures == 0
        if isinstance(member, Retry):
            assert member.statistics().retries == 0


@pytest.mark.parametrize("make", POLICIES, ids=IDS)
async def test_call_with_something_not_callable_fails_before_the_policy_runs(
    make: Callable[[], Policy],
) -> None:
    """`.call(42)` is a TypeError raised before the policy counts a call."""
    policy = make()
    with pytest.raises(TypeError, match=r"\.call\(fn=\.\.\.\): expected an async callable, got 42"):
        await policy.call(42)  # type: ignore[arg-type]  # the misuse under test
    members = policy.policies if hasattr(policy, "policies") else (policy,)
    for member in members:
        assert getattr(member.statistics(), "calls", 0) == 0  # type: ignore[union-attr]


async def fetch(x: int) -> int:
    await asyncio.sleep(0)
    return x + 1


class Service:
    """
    Callables of every shape that return something awaitable.
    """

    async def method(self, x: int) -> int:
        return await fetch(x)

    def future(self, x: int) -> asyncio.Future[int]:
        future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        future.set_result(x + 1)
        return future

    async def __call__(self, x: int) -> int:
        return await fetch(x)


class Awaits:
    """
    An awaitable that is neither a coroutine nor a Future.
    """

    def __init__(self, value: int) -> None:
        self.value = value

    def __await__(self) -> Any:
        return fetch(self.value).__await__()


@pytest.mark.parametrize("make", POLICIES, ids=IDS)
@pytest.mark.parametrize(
    "fn",
    [
        fetch,
        lambda x: fetch(x),  # noqa: PLW0108  # a lambda returning a coroutine is the case
        functools.partial(fetch),
        Service().method,
        Service().future,
        Service(),
        Awaits,
    ],
    ids=["async-def", "lambda", "partial", "method", "future", "callable-object", "__await__"],
)
async def test_call_accepts_every_callable_returning_an_awaitable(
    make: Callable[[], Policy], fn: Callable[[int], Awaitable[int]]
) -> None:
    """Lambdas, partials, methods, Futures, callable objects and custom awaitables work
    through `.call` as before."""
    assert await make().call(fn, 1) == 2


async def numbers() -> AsyncIterator[int]:
    yield 1


def test_decorating_an_async_generator_says_what_is_wrong() -> None:
    """Decorating an async generator function explains that it is iterated, not
    awaited, and suggests wrapping a coroutine function."""
    for policy in (Retry(), pipeline(Retry(), Timeout(1.0))):
        with pytest.raises(TypeError) as info:
            policy(numbers)  # type: ignore[arg-type]  # the misuse under test
        message = str(info.value)
        assert "can't wrap numbers: it is an async generator function" in message
        assert "iterated, not awaited" in message
        assert "wrap a coroutine function" in message


async def test_call_with_an_async_generator_says_what_is_wrong() -> None:
    """`.call(async_gen_fn)` gives the same explanation, without retrying."""
    with instant_retries(), pytest.raises(TypeError, match="async generator function"):
        await Retry(3).call(numbers)  # type: ignore[arg-type]  # the misuse under test


async def test_closing_a_suspended_hedged_call_is_clean() -> None:
    """Closing a `Hedge.call` coroutine while it waits cancels its attempts and raises
    nothing (it used to raise "coroutine ignored GeneratorExit")."""
    clock = FakeClock(auto_advance=False)
    hedge = Hedge(1.0, max_hedged=1, clock=clock)
    started = asyncio.Event()

    async def slow() -> str:
        started.set()
        await asyncio.Event().wait()
        return "never"

    coro = hedge.call(slow)
    coro.send(None)  # runs up to its first wait: the attempt task is created
    await started.wait()
    coro.close()
    await settle()
    attempts = [t for t in asyncio.all_tasks() if t is not asyncio.current_task() and not t.done()]
    assert attempts == []
    assert clock.pending_timers == 0


@pytest.mark.parametrize("seconds", [math.nan, math.inf, -math.inf, -1, -0.5])
def test_fake_clock_refuses_time_that_cannot_be(seconds: float) -> None:
    """`FakeClock.advance` rejects NaN, infinities and negative steps, naming the value;
    time stays where it was."""
    clock = FakeClock(5.0)
    with pytest.raises(ValueError, match=rf"FakeClock\.advance\(seconds={seconds!r}\)"):
        clock.advance(seconds)
    assert clock.monotonic() == 5.0


HUGE = 10**400  # an int too large for a float


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: Timeout(HUGE), r"Timeout\(seconds=1000"),
        (lambda: Hedge(HUGE), r"Hedge\(delay=1000"),
        (lambda: Bulkhead(1, max_queue=1, max_wait=HUGE), r"Bulkhead\(max_wait=1000"),
        (lambda: FakeClock().advance(HUGE), r"FakeClock\.advance\(seconds=1000"),
    ],
    ids=["Timeout", "Hedge", "Bulkhead", "FakeClock.advance"],
)
def test_an_int_too_large_for_a_float_is_a_value_error_naming_it(
    make: Callable[[], object], message: str
) -> None:
    """Seconds given as an int beyond a float's range are a ValueError naming the
    parameter, not a bare OverflowError from the conversion."""
    with pytest.raises(ValueError, match=message):
        make()


def test_fake_clock_refuses_a_non_number() -> None:
    """`FakeClock.advance("1")` is a TypeError."""
    with pytest.raises(TypeError, match=r"FakeClock\.advance"):
        FakeClock().advance("1")  # type: ignore[arg-type]  # the misuse under test


async def test_auto_advancing_fake_clock_refuses_an_infinite_sleep() -> None:
    """An auto-advancing clock can't reach the end of an infinite sleep: a ValueError."""
    clock = FakeClock()
    with pytest.raises(ValueError, match=r"FakeClock\.sleep\(seconds=inf\)"):
        await clock.sleep(math.inf)
    assert clock.monotonic() == 0.0


async def test_a_sync_function_runs_once_even_under_a_catch_all_retry() -> None:
    """With ``Retry(on=lambda e: True)`` the misuse error may be retried, but the sync
    function's side effect happens once."""
    effects: list[int] = []

    def sync_fn() -> int:
        effects.append(1)
        return 1

    with instant_retries(), pytest.raises(TypeError, match="can't be awaited"):
        await Retry(3, on=lambda error: True).call(sync_fn)  # type: ignore[arg-type]
    assert effects == [1]


def closing_over(service: Service) -> Callable[[], Awaitable[int]]:
    async def closure() -> int:
        return await service.method(1)

    return closure


async def test_call_remembers_only_what_keeps_nothing_alive() -> None:
    """`.call` skips re-checking a module-level `async def` it has seen, but holds no
    bound method (nor its instance) and no closure once the call is over; a sync
    function after a remembered one is still refused."""
    retry = Retry(3)
    assert await retry.call(fetch, 1) == 2
    assert await retry.call(fetch, 2) == 3
    service = Service()
    alive = weakref.ref(service)
    assert await retry.call(service.method, 1) == 2
    data = Service()
    held = weakref.ref(data)
    assert await retry.call(closing_over(data)) == 2
    del service, data
    gc.collect()
    assert alive() is None
    assert held() is None
    with instant_retries(), pytest.raises(TypeError, match="can't be awaited"):
        await retry.call(len, "abc")  # type: ignore[arg-type]  # the misuse under test


@pytest.mark.parametrize("make", POLICIES, ids=IDS)
async def test_call_with_a_coroutine_object_says_to_pass_the_function(
    make: Callable[[], Policy],
) -> None:
    """`.call(fetch(1))` (the function called rather than passed) is a TypeError showing
    the right call, and the coroutine it got is closed, so no "never awaited" warning
    follows (warnings are errors here)."""
    coroutine = fetch(1)
    with pytest.raises(TypeError) as info:
        await make().call(coroutine)  # type: ignore[arg-type]  # the misuse under test
    assert "got a coroutine object (fetch(...) was called already)" in str(info.value)
    assert "policy.call(fetch, *args), not policy.call(fetch(*args))" in str(info.value)
    assert inspect.getcoroutinestate(coroutine) == inspect.CORO_CLOSED  # nothing to warn about


async def test_endpoint_pool_call_with_a_coroutine_object_says_to_pass_the_function() -> None:
    """`EndpointPool.call` refuses what isn't callable before picking an instance, with
    the same hint, and closes a coroutine it got."""
    pool = EndpointPool([Instance("svc", "svc-1", "127.0.0.1", 1)])

    async def get(instance: Instance) -> str:
        return instance.url

    coroutine = get(Instance("svc", "svc-1", "127.0.0.1", 1))
    with pytest.raises(TypeError, match=r"pool\.call\(get\), not pool\.call\(get\(instance\)\)"):
        await pool.call(coroutine)  # type: ignore[arg-type]  # the misuse under test
    assert inspect.getcoroutinestate(coroutine) == inspect.CORO_CLOSED
    assert pool.statistics().calls == 0
    with pytest.raises(TypeError, match=r"EndpointPool\.call\(fn=\.\.\.\): expected an async"):
        await pool.call(7)  # type: ignore[arg-type]  # the misuse under test


def test_a_tenacity_strategy_where_exception_types_belong_is_refused() -> None:
    """Only `Retry(on=...)` understands tenacity's ``retry_*`` strategies; a policy
    taking exception types says so instead of matching nothing."""
    with pytest.raises(TypeError, match=r"Fallback\(on=\.\.\.\): tenacity retry_\* strategies"):
        Fallback(value=0, on=tenacity.retry_if_exception_type(ValueError))


def test_a_pool_breaker_that_is_not_a_factory_is_refused() -> None:
    """`EndpointPool(breaker=...)` takes a factory of breakers, named when it isn't one."""
    with pytest.raises(TypeError, match=r"EndpointPool\(breaker=\.\.\.\): expected a factory"):
        EndpointPool([Instance("svc", "a", "127.0.0.1", 1)], breaker=42)  # type: ignore[arg-type]


def test_the_system_clock_shows_itself() -> None:
    """The default clock's repr is how it is built."""
    assert repr(SystemClock()) == "SystemClock()"
