"""
Policies and event loops: one policy shared by loops running in two threads, and one
policy reused by sequential `asyncio.run` calls.

Timeout, Retry, CircuitBreaker, Fallback and Hedge keep no loop-bound state (a Timeout
keeps one watchdog per loop), so loops in several threads may share them. A Bulkhead
serves one loop at a time: a second loop running at the same time is refused at once.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine
from concurrent.futures import Future
from typing import Any, TypeVar

import pytest
from tenacity import wait_none

from resilient import (
    AIMD,
    AdaptiveConcurrency,
    Bulkhead,
    BulkheadFullError,
    CircuitBreaker,
    CircuitOpenError,
    CircuitState,
    Fallback,
    FallbackUsed,
    HealthMonitor,
    HealthReport,
    HealthStatus,
    Hedge,
    Policy,
    PolicyMisuseError,
    Retry,
    RetryScheduled,
    Timeout,
    TimeoutExceeded,
    pipeline,
)
from resilient.testing import capture_events

T = TypeVar("T")

BOUND = 10.0  # seconds any thread in these tests may take before the test fails
ONE_LOOP_PER_BULKHEAD = "create one Bulkhead per event loop"


class Boom(Exception):
    """The dependency's failure in these tests."""


def in_thread(main: Callable[[], Coroutine[Any, Any, T]]) -> Future[T]:
    """
    Run `asyncio.run(main())` in a new thread; its outcome arrives in the future.
    """
    outcome: Future[T] = Future()

    def run() -> None:
        try:
            outcome.set_result(asyncio.run(main()))
        except BaseException as error:  # handed to the test to raise
            outcome.set_exception(error)

    threading.Thread(target=run, name="second loop", daemon=True).start()
    return outcome


async def until(event: threading.Event) -> None:
    """
    Wait, without blocking this loop, for another thread to set `event`.
    """
    assert await asyncio.to_thread(event.wait, BOUND), "the other thread never got there"


# -- Timeout: a watchdog per loop ---------------------------------------------------------


async def slow_and_fast_calls(policy: Timeout, count: int) -> list[str]:
    """
    `count` calls through `policy` at once, alternately too slow (5 s) and instant.
    """

    async def one(i: int) -> str:
        try:
            return await policy.call(asyncio.sleep, 0 if i % 2 else 5, "done")
        except TimeoutExceeded:
            return "timed out"

    return await asyncio.gather(*(one(i) for i in range(count)))


def test_timeout_fires_on_one_loop_while_another_loop_uses_it() -> None:
    """A Timeout(0.2) on loop A still fires while loop B keeps calling the same Timeout,
    for a call A started before B's calls and for one started between them."""
    timeout = Timeout(0.2)
    a_watched, a_done = threading.Event(), threading.Event()

    async def body() -> str:
        a_watched.set()
        await asyncio.sleep(5)  # bounded: a deadline nobody enforces ends here
        return "ran past its deadline"

    async def on_a() -> None:
        try:
            for _ in range(2):
                with pytest.raises(TimeoutExceeded):
                    await timeout.call(body)
        finally:
            a_done.set()

    async def on_b() -> int:
        await until(a_watched)
        calls = 0
        async with asyncio.timeout(BOUND):
            while not a_done.is_set():
                await timeout.call(asyncio.sleep, 0.01)
                calls += 1
        return calls

    b = in_thread(on_b)
    asyncio.run(on_a())
    assert b.result(BOUND) >= 1


def test_timeout_shared_by_two_loops_times_out_exactly_the_slow_calls() -> None:
    """Two loops interleaving calls on one Timeout: each loop's slow calls, and only
    those, time out."""
    timeout = Timeout(0.5)
    start = threading.Barrier(2, timeout=BOUND)

    async def calls() -> list[str]:
        start.wait()  # both loops running before either calls
        return await slow_and_fast_calls(timeout, 20)

    other = in_thread(calls)
    expected = ["timed out", "done"] * 10
    assert asyncio.run(calls()) == expected
    assert other.result(BOUND) == expected
    assert timeout.statistics().timeouts == 20


def test_timeout_shared_by_asyncio_and_uvloop_loops_times_out_exactly_the_slow_calls() -> None:
    """One Timeout, an asyncio loop and a uvloop loop at once, then in turn: each loop's
    slow calls, and only those, time out. (asyncio's loops record their thread and take
    the task lookup without a syscall on 3.11; uvloop's don't and take the long way.)"""
    import uvloop  # noqa: PLC0415  # a dev dependency (the KV node's loop), Linux only

    timeout = Timeout(0.5)
    start = threading.Barrier(2, timeout=BOUND)

    async def calls(wait: bool = True) -> list[str]:
        if wait:
            start.wait()  # both loops running before either calls
        return await slow_and_fast_calls(timeout, 10)

    def on_uvloop(wait: bool) -> list[str]:
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            return runner.run(calls(wait))

    expected = ["timed out", "done"] * 5
    outcome: Future[list[str]] = Future()
    threading.Thread(
        target=lambda: outcome.set_result(on_uvloop(True)), name="uvloop", daemon=True
    ).start()
    assert asyncio.run(calls()) == expected
    assert outcome.result(BOUND) == expected
    # In turn, in this thread: uvloop after asyncio after uvloop.
    assert on_uvloop(False) == expected
    assert asyncio.run(calls(False)) == expected
    assert timeout.statistics().timeouts == 20


@pytest.mark.parametrize("loop_kind", ["asyncio", "uvloop"])
def test_timeout_outside_a_task_is_refused_on_either_kind_of_loop(loop_kind: str) -> None:
    """A Timeout entered from a plain callback of a running loop (no task to cancel)
    raises RuntimeError, on a loop that records its thread and on one that doesn't,
    also once the Timeout served a task of that loop."""
    factory = asyncio.new_event_loop
    if loop_kind == "uvloop":
        import uvloop  # noqa: PLC0415  # a dev dependency (the KV node's loop), Linux only

        factory = uvloop.new_event_loop
    timeout = Timeout(1.0)

    async def main() -> None:
        assert await timeout.call(asyncio.sleep, 0, "ok") == "ok"  # the task's path first
        refused: Future[BaseException | None] = Future()

        def callback() -> None:
            # A coroutine stepped by hand from a callback: running, but in no task.
            call = timeout.call(asyncio.sleep, 0)
            try:
                call.send(None)
            except BaseException as error:  # handed to the test to check
                refused.set_result(error)
            else:
                refused.set_result(None)
            finally:
                call.close()

        asyncio.get_running_loop().call_soon(callback)
        await asyncio.sleep(0.01)
        error = refused.result(0)
        assert isinstance(error, RuntimeError)
        assert "inside an asyncio task" in str(error)

    with asyncio.Runner(loop_factory=factory) as runner:
        runner.run(main())


# -- Bulkhead: one loop at a time ---------------------------------------------------------


async def test_bulkhead_held_by_another_running_loop_refuses_at_once() -> None:
    """A call from this loop while another thread's loop holds the bulkhead's only slot
    fails at once with a RuntimeError naming the fix, instead of queueing a waiter the
    other loop could never wake; the other loop's slot is untouched."""
    bulkhead = Bulkhead(1, max_queue=1)
    holding, release = threading.Event(), threading.Event()

    async def hold() -> int:
        async with bulkhead:
            holding.set()
            await until(release)
        return bulkhead.in_flight

    other = in_thread(hold)
    try:
        await until(holding)
        async with asyncio.timeout(BOUND):  # the old code queued here, never woken
            with pytest.raises(RuntimeError, match=ONE_LOOP_PER_BULKHEAD):
                await bulkhead.call(asyncio.sleep, 0)
        assert (bulkhead.in_flight, bulkhead.queued) == (1, 0)
    finally:
        release.set()
    assert await asyncio.wrap_future(other) == 0


async def test_bulkhead_misuse_is_not_retried_or_answered_by_a_fallback() -> None:
    """The refusal is a PolicyMisuseError (a programming error): a Fallback over a Retry
    lets it through after one attempt instead of hiding the bug behind a default."""
    bulkhead = Bulkhead(1)
    attempts: list[int] = []
    policy = pipeline(Fallback(value="hidden"), Retry(3, wait=wait_none()), bulkhead)
    used, tried = threading.Event(), threading.Event()

    async def use_then_idle() -> None:
        await bulkhead.call(asyncio.sleep, 0)
        used.set()
        await until(tried)

    async def work() -> str:
        attempts.append(1)  # pragma: no cover  # refused before the call
        return "ran"

    other = in_thread(use_then_idle)
    try:
        await until(used)
        with (
            capture_events(RetryScheduled) as retries,
            capture_events(FallbackUsed) as fallbacks,
            pytest.raises(PolicyMisuseError, match=ONE_LOOP_PER_BULKHEAD) as raised,
        ):
            await policy.call(work)
        assert isinstance(raised.value, RuntimeError)
        assert (attempts, retries, fallbacks) == ([], [], [])
    finally:
        tried.set()
    await asyncio.wrap_future(other)


async def test_bulkhead_is_refused_while_the_other_loop_runs_then_taken_over() -> None:
    """Even idle, a bulkhead used by a loop that is still running is refused to another
    loop (the outcome must not depend on timing); once that loop has finished, this loop
    takes the bulkhead over silently."""
    bulkhead = Bulkhead(2)
    used, tried = threading.Event(), threading.Event()

    async def use_then_idle() -> str:
        result = await bulkhead.call(asyncio.sleep, 0, "used")
        used.set()
        await until(tried)  # still running, holding no slot
        return result

    other = in_thread(use_then_idle)
    try:
        await until(used)
        with pytest.raises(RuntimeError, match=ONE_LOOP_PER_BULKHEAD):
            async with bulkhead:
                pass  # pragma: no cover  # refused on entry
    finally:
        tried.set()
    assert await asyncio.wrap_future(other) == "used"
    assert await bulkhead.call(asyncio.sleep, 0, "taken over") == "taken over"
    assert bulkhead.statistics().accepted == 2


# An AdaptiveConcurrency hands its slots over by its own release (the limit may have
# moved): it must reach another loop's waiter as the bulkhead's does.
ONE_SLOT = pytest.mark.parametrize(
    "make",
    [
        lambda: Bulkhead(1, max_queue=1),
        lambda: AdaptiveConcurrency(AIMD(initial=1, max_limit=1), max_queue=1),
    ],
    ids=["bulkhead", "adaptive_concurrency"],
)


@ONE_SLOT
def test_bulkhead_wakes_a_waiter_of_another_thread_from_that_thread(
    make: Callable[[], Bulkhead],
) -> None:
    """A thread that moved on to a new loop (so the bulkhead still thinks it serves the
    old one) holds the only slot while another thread's loop takes the bulkhead over and
    queues: releasing the slot hands it to that waiter through its own loop, which
    wakes at once (resolving the future from the wrong thread left it asleep)."""
    bulkhead = make()
    holding, queued = threading.Event(), threading.Event()

    async def wait_for_slot() -> float:
        await until(holding)
        call = asyncio.ensure_future(bulkhead.call(asyncio.sleep, 0, "handed over"))
        await asyncio.sleep(0)  # one step: the call is queued
        assert bulkhead.queued == 1
        queued.set()
        started = time.monotonic()
        assert await asyncio.wait_for(call, BOUND) == "handed over"
        return time.monotonic() - started

    async def hold_then_release() -> None:
        async with bulkhead:
            holding.set()
            await until(queued)

    assert asyncio.run(bulkhead.call(asyncio.sleep, 0, "first loop")) == "first loop"
    other = in_thread(wait_for_slot)
    asyncio.run(hold_then_release())  # a second loop on this thread, unseen on the hot path
    assert other.result(BOUND) < BOUND / 2  # asleep, it wakes only when wait_for gives up
    assert (bulkhead.in_flight, bulkhead.queued) == (0, 0)


def _queue_on_a_stopped_loop(bulkhead: Bulkhead) -> tuple[asyncio.AbstractEventLoop, Any]:
    """
    On a new loop, take the bulkhead's only slot (kept) and queue a call behind it; stop
    that loop with the call waiting. Returns the loop and the waiting call's task.
    """
    loop = asyncio.new_event_loop()

    async def take_and_queue() -> asyncio.Task[str]:
        await bulkhead.__aenter__()
        waiting = asyncio.ensure_future(bulkhead.call(asyncio.sleep, 0, "woken"))
        await asyncio.sleep(0)  # one step: the call is queued
        return waiting

    waiting = loop.run_until_complete(take_and_queue())
    assert (bulkhead.in_flight, bulkhead.queued) == (1, 1)
    return loop, waiting


@ONE_SLOT
def test_bulkhead_slot_sent_to_a_waiter_cancelled_on_the_way_is_passed_on(
    make: Callable[[], Bulkhead],
) -> None:
    """A slot handed to a waiter of another loop, which is cancelled before that loop
    runs the hand-over, is released again rather than lost."""
    bulkhead = make()
    asyncio.run(bulkhead.call(asyncio.sleep, 0))  # the bulkhead serves this (closed) loop
    loop, waiting = _queue_on_a_stopped_loop(bulkhead)
    try:
        asyncio.run(bulkhead.__aexit__(None, None, None))  # the slot goes to `loop`
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            loop.run_until_complete(waiting)
    finally:
        loop.close()
    assert (bulkhead.in_flight, bulkhead.queued) == (0, 0)


@ONE_SLOT
def test_bulkhead_slot_released_outside_any_loop_reaches_the_waiter(
    make: Callable[[], Bulkhead],
) -> None:
    """A slot released with no loop running (a coroutine finalised by the garbage
    collector, say) still reaches a waiter of another loop, through that loop."""
    bulkhead = make()
    asyncio.run(bulkhead.call(asyncio.sleep, 0))
    loop, waiting = _queue_on_a_stopped_loop(bulkhead)
    try:
        with pytest.raises(StopIteration):  # the release runs to the end, loop or not
            bulkhead.__aexit__(None, None, None).send(None)
        assert loop.run_until_complete(waiting) == "woken"
    finally:
        loop.close()
    assert (bulkhead.in_flight, bulkhead.queued) == (0, 0)


@ONE_SLOT
def test_bulkhead_skips_a_waiter_whose_loop_was_closed(make: Callable[[], Bulkhead]) -> None:
    """A waiter left behind on a loop closed without cancelling its tasks is skipped: the
    slot is freed instead of raising 'Event loop is closed' in the releasing call."""
    bulkhead = make()
    asyncio.run(bulkhead.call(asyncio.sleep, 0))
    loop, waiting = _queue_on_a_stopped_loop(bulkhead)
    loop.close()
    asyncio.run(bulkhead.__aexit__(None, None, None))
    assert (bulkhead.in_flight, bulkhead.queued) == (0, 0)
    assert not waiting.done()  # abandoned with its loop, never woken


# -- HealthMonitor: a watched breaker shared with another loop ------------------------------


async def test_monitor_acts_on_its_own_loop_when_another_loop_trips_its_breaker() -> None:
    """A breaker watched by a monitor running on this loop, tripped by a call on a loop
    in another thread: the monitor re-evaluates, runs its transition hooks and arms its
    probe timer on its own loop (the breaker then turns the verdict DEGRADED here)."""
    breaker = CircuitBreaker(failure_threshold=1, reset_timeout=0.5)
    monitor = HealthMonitor()
    monitor.watch_breaker(breaker, critical=True)
    here = asyncio.get_running_loop()
    seen: list[tuple[HealthStatus, int]] = []
    degraded = asyncio.Event()

    def hook(old: HealthStatus, new: HealthStatus, report: HealthReport) -> None:
        seen.append((new, threading.get_ident()))
        if new is HealthStatus.DEGRADED:
            here.call_soon_threadsafe(degraded.set)  # the old code called from anywhere

    async def trip() -> None:
        async def broken() -> None:
            raise Boom

        with pytest.raises(Boom):
            await breaker.call(broken)

    async with monitor:
        monitor.on_transition(hook)
        await asyncio.wrap_future(in_thread(trip))
        async with asyncio.timeout(BOUND):  # the probe timer must fire on this loop
            await degraded.wait()
    assert breaker.state is CircuitState.OPEN
    assert {thread for _, thread in seen} == {threading.get_ident()}
    assert seen[-1][0] is HealthStatus.DEGRADED


async def test_monitor_acts_on_its_own_loop_when_a_plain_thread_trips_its_breaker() -> None:
    """A watched breaker tripped by sync code in another thread (no loop there): the
    running monitor evaluates and runs its hooks on its own loop."""
    breaker = CircuitBreaker(reset_timeout=60)
    monitor = HealthMonitor()
    monitor.watch_breaker(breaker, critical=True)
    here = asyncio.get_running_loop()
    threads: list[int] = []
    changed = asyncio.Event()

    def hook(old: HealthStatus, new: HealthStatus, report: HealthReport) -> None:
        threads.append(threading.get_ident())
        here.call_soon_threadsafe(changed.set)

    async with monitor:
        monitor.on_transition(hook)
        await asyncio.to_thread(breaker.trip)
        async with asyncio.timeout(BOUND):
            await changed.wait()
        assert monitor.status is HealthStatus.UNHEALTHY
    assert threads == [threading.get_ident()]


# -- sharing the loop-free policies between two running loops ------------------------------


def _shared_policies() -> dict[str, Policy]:
    return {
        "retry": Retry(3, wait=lambda _: 0.0),
        "breaker": CircuitBreaker(failure_threshold=1000),
        "fallback": Fallback(value="fallback", on=Boom),
        "hedge": Hedge(0.001, max_hedged=2),
        "pipeline": pipeline(Timeout(5.0), Retry(2, wait=lambda _: 0.0), CircuitBreaker()),
    }


@pytest.mark.parametrize("name", sorted(_shared_policies()))
def test_loop_free_policies_serve_two_loops_at_once(name: str) -> None:
    """Retry, CircuitBreaker, Fallback, Hedge and a pipeline of them give every caller
    the right result while loops in two threads interleave calls on the same instance."""
    policy = _shared_policies()[name]
    start = threading.Barrier(2, timeout=BOUND)

    async def calls() -> list[object]:
        start.wait()
        failed: set[int] = set()

        async def flaky(i: int) -> int:
            await asyncio.sleep(0.002 * (i % 3))
            if i % 4 == 0 and i not in failed:
                failed.add(i)  # fails once, then succeeds: retried or hedged to success
                raise Boom(i)
            return i

        async def one(i: int) -> object:
            try:
                return await policy.call(flaky, i)
            except Boom:
                return "boom"

        async with asyncio.timeout(BOUND):
            return list(await asyncio.gather(*(one(i) for i in range(40))))

    other = in_thread(calls)
    mine = asyncio.run(calls())
    assert mine == other.result(BOUND)
    expected = {
        "breaker": ["boom" if i % 4 == 0 else i for i in range(40)],
        "fallback": ["fallback" if i % 4 == 0 else i for i in range(40)],
    }.get(name, list(range(40)))
    assert mine == expected


# -- sequential asyncio.run ----------------------------------------------------------------


async def _bulkhead_contended(bulkhead: Bulkhead) -> list[str]:
    release = asyncio.Event()

    async def hold() -> str:
        await release.wait()
        return "held"

    holder = asyncio.create_task(bulkhead.call(hold))
    await asyncio.sleep(0)
    waiter = asyncio.create_task(bulkhead.call(asyncio.sleep, 0, "waited"))
    await asyncio.sleep(0)
    with pytest.raises(BulkheadFullError):
        await bulkhead.call(asyncio.sleep, 0)
    release.set()
    return list(await asyncio.gather(holder, waiter))


async def _timeout_fires(policy: Timeout) -> str:
    with pytest.raises(TimeoutExceeded):
        await policy.call(asyncio.sleep, 5)
    return "timed out"


async def _breaker_opens(breaker: CircuitBreaker) -> CircuitState:
    async def broken() -> None:
        raise Boom

    with pytest.raises(Boom):
        await breaker.call(broken)
    with pytest.raises(CircuitOpenError):
        await breaker.call(broken)
    state = breaker.state
    breaker.reset()
    return state


async def _hedged(hedge: Hedge) -> str:
    primary_started = asyncio.Event()

    async def slow_then_fast() -> str:
        if not primary_started.is_set():
            primary_started.set()
            await asyncio.sleep(5)
            return "primary"
        return "hedge"

    return await hedge.call(slow_then_fast)


async def _retried(retry: Retry) -> int:
    attempts = 0

    async def twice() -> int:
        nonlocal attempts
        attempts += 1
        if attempts < 2:
            raise Boom
        return attempts

    return await retry.call(twice)


async def _fell_back(fallback: Fallback[Any]) -> object:
    async def broken() -> None:
        raise Boom

    return await fallback.call(broken)


async def _piped(policy: Policy) -> object:
    async def in_time() -> str:
        return "piped"

    return await policy.call(in_time)


_SEQUENTIAL: dict[str, tuple[Callable[[], Policy], Callable[[Any], Awaitable[object]], object]] = {
    "bulkhead": (lambda: Bulkhead(1, max_queue=1), _bulkhead_contended, ["held", "waited"]),
    "timeout": (lambda: Timeout(0.05), _timeout_fires, "timed out"),
    "breaker": (lambda: CircuitBreaker(failure_threshold=1), _breaker_opens, CircuitState.OPEN),
    "hedge": (lambda: Hedge(0.01), _hedged, "hedge"),
    "retry": (lambda: Retry(3, wait=lambda _: 0.0), _retried, 2),
    "fallback": (lambda: Fallback(value="fallback", on=Boom), _fell_back, "fallback"),
    "pipeline": (
        lambda: pipeline(Timeout(1.0), Retry(2), CircuitBreaker(), Bulkhead(2), Hedge(0.5)),
        _piped,
        "piped",
    ),
}


@pytest.mark.parametrize("name", sorted(_SEQUENTIAL))
def test_policy_reused_by_sequential_event_loops(name: str) -> None:
    """A policy built once works the same in one `asyncio.run` after another, and in a
    loop that was stopped without being closed followed by a new one."""
    make, exercise, expected = _SEQUENTIAL[name]
    policy = make()

    async def bounded() -> object:
        async with asyncio.timeout(BOUND):
            return await exercise(policy)

    for _ in range(3):
        assert asyncio.run(bounded()) == expected
    stopped = asyncio.new_event_loop()
    try:
        assert stopped.run_until_complete(bounded()) == expected
        assert asyncio.run(bounded()) == expected  # `stopped` is not running, not closed
        assert stopped.run_until_complete(bounded()) == expected
    finally:
        stopped.close()
