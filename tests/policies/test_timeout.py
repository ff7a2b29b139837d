"""
Tests for `Timeout`, `remaining_time()` and the watchdog that enforces deadlines.
"""

from __future__ import annotations

import asyncio
import inspect
import math
import time
from typing import Any, TypeVar

import pytest

from resilient import (
    ResilienceError,
    TimedOut,
    Timeout,
    TimeoutExceeded,
    TimeoutStatistics,
    remaining_time,
)
from resilient._policies import timeout as timeout_module
from resilient._policies import watchdog as watchdog_module
from resilient._policies.watchdog import Watchdog
from resilient.testing import FakeClock, capture_events
from tests._aio import result_of, settle
from tests._gc import cycles

T = TypeVar("T")


def current_task() -> asyncio.Task[Any]:
    task = asyncio.current_task()
    assert task is not None
    return task


# -- basic behaviour ---------------------------------------------------------------


async def test_overrun_raises_timeout_exceeded() -> None:
    """A call still running when the budget runs out raises TimeoutExceeded, not before."""
    clock = FakeClock(auto_advance=False)
    timeout = Timeout(1.0, name="db", clock=clock)
    task = asyncio.create_task(timeout.call(clock.sleep, 5))
    await settle()
    clock.advance(0.75)
    await settle()
    assert not task.done()
    clock.advance(0.25)
    await settle()
    assert task.done()
    with pytest.raises(TimeoutExceeded) as info:
        await result_of(task)
    error = info.value
    assert isinstance(error, TimeoutError)
    assert isinstance(error, ResilienceError)
    assert (error.name, error.timeout) == ("db", 1.0)
    assert isinstance(error.__cause__, asyncio.CancelledError)


async def test_real_short_timeout() -> None:
    """On the real clock, a 0.05 s timeout cuts a 10 s call short, not before 0.05 s."""
    started = time.monotonic()
    with pytest.raises(TimeoutExceeded):
        await Timeout(0.05).call(asyncio.sleep, 10)
    elapsed = time.monotonic() - started
    assert 0.04 <= elapsed < 5.0  # a busy machine may be late; never 10 s late


async def test_call_in_time_returns_result() -> None:
    """A call that finishes in time returns its result and leaves no pending cancel."""
    clock = FakeClock()
    timeout = Timeout(1.0, clock=clock)

    async def quick(x: int) -> int:
        await clock.sleep(0.5)
        return x * 2

    assert await timeout.call(quick, 21) == 42
    assert current_task().cancelling() == 0
    clock.advance(5)  # well past the deadline: nothing may fire at us now
    await settle()
    assert current_task().cancelling() == 0
    assert timeout.statistics() == TimeoutStatistics(seconds=1.0, calls=1, timeouts=0)


async def test_errors_pass_through_unchanged() -> None:
    """An exception from the call propagates as is and the deadline is dropped."""
    clock = FakeClock(auto_advance=False)
    timeout = Timeout(1.0, clock=clock)
    error = KeyError("missing")

    async def broken() -> None:
        raise error

    with pytest.raises(KeyError) as info:
        await timeout.call(broken)
    assert info.value is error
    assert timeout._watchdogs.watched() == 0
    clock.advance(2)
    await settle()
    assert current_task().cancelling() == 0
    assert timeout.statistics().timeouts == 0


async def test_swallowed_timeout_leaves_no_pending_cancel() -> None:
    """When the call swallows the timeout's cancellation, the task isn't left cancelling."""
    clock = FakeClock(auto_advance=False)
    timeout = Timeout(1.0, clock=clock)

    async def stubborn() -> str:
        try:
            await clock.sleep(5)
        except asyncio.CancelledError:
            return "swallowed"
        return "finished"

    async def caller() -> tuple[str, int]:
        result = await timeout.call(stubborn)
        await asyncio.sleep(0)  # would raise if a cancel request were still pending
        return result, current_task().cancelling()

    task = asyncio.create_task(caller())
    await settle()
    clock.advance(1.0)
    await settle()
    assert await result_of(task) == ("swallowed", 0)


async def test_task_usable_after_timeout() -> None:
    """After a TimeoutExceeded, the task can carry on awaiting normally."""
    clock = FakeClock(auto_advance=False)

    async def caller() -> str:
        with pytest.raises(TimeoutExceeded):
            await Timeout(1.0, clock=clock).call(clock.sleep, 5)
        assert current_task().cancelling() == 0
        await asyncio.sleep(0)
        return "carried on"

    task = asyncio.create_task(caller())
    await settle()
    clock.advance(1.0)
    await settle()
    assert await result_of(task) == "carried on"


async def test_decorator_form() -> None:
    """As a decorator, Timeout keeps the function's metadata and bounds each call."""
    clock = FakeClock()

    @Timeout(1.0, clock=clock)
    async def work(seconds: float) -> str:
        """Do some work."""
        await clock.sleep(seconds)
        return "done"

    assert work.__name__ == "work"
    assert work.__doc__ == "Do some work."
    assert inspect.iscoroutinefunction(work)
    assert await work(0.5) == "done"
    with pytest.raises(TimeoutExceeded):
        await work(2.0)


# -- deadlines and nesting -------------------------------------------------------------


async def test_remaining_time() -> None:
    """`remaining_time()` is None outside a timeout and counts down (never below 0) inside."""
    clock = FakeClock(auto_advance=False)
    assert remaining_time() is None
    seen: list[float | None] = []

    async def probe() -> None:
        seen.append(remaining_time())
        clock.advance(0.5)
        seen.append(remaining_time())
        clock.advance(5)
        seen.append(remaining_time())

    await Timeout(2.0, clock=clock).call(probe)
    assert seen == [2.0, 1.5, 0.0]
    assert remaining_time() is None


async def test_remaining_time_is_per_task() -> None:
    """A deadline is visible only to the task (and context) that set it."""
    clock = FakeClock(auto_advance=False)
    inside = asyncio.Event()
    seen: dict[str, float | None] = {}

    async def guarded() -> None:
        seen["guarded"] = remaining_time()
        inside.set()
        await clock.sleep(1)

    async def bystander() -> None:
        await inside.wait()
        seen["bystander"] = remaining_time()

    task = asyncio.create_task(Timeout(3.0, clock=clock).call(guarded))
    await bystander()
    clock.advance(1)
    await result_of(task)
    assert seen == {"guarded": 3.0, "bystander": None}


async def test_inner_timeout_capped_by_outer() -> None:
    """A nested timeout never outlives the budget the outer one has left."""
    clock = FakeClock(auto_advance=False)
    outer = Timeout(1.0, name="outer", clock=clock)
    inner = Timeout(5.0, name="inner", clock=clock)
    seen: list[float | None] = []

    async def deep() -> None:
        seen.append(remaining_time())
        await clock.sleep(10)

    async def middle() -> None:
        clock.advance(0.25)
        await inner.call(deep)

    task = asyncio.create_task(outer.call(middle))
    await settle()
    assert seen == [0.75]
    clock.advance(0.75)
    await settle()
    assert task.done()
    with pytest.raises(TimeoutExceeded):
        await result_of(task)
    assert clock.monotonic() == 1.0  # not 5.25


async def test_inner_shorter_timeout_wins() -> None:
    """A shorter inner timeout raises its own TimeoutExceeded through the outer one."""
    clock = FakeClock(auto_advance=False)
    outer = Timeout(5.0, name="outer", clock=clock)
    inner = Timeout(0.5, name="inner", clock=clock)

    async def middle() -> None:
        await inner.call(clock.sleep, 10)

    task = asyncio.create_task(outer.call(middle))
    await settle()
    clock.advance(0.5)
    await settle()
    with pytest.raises(TimeoutExceeded) as info:
        await result_of(task)
    assert info.value.name == "inner"
    assert (inner.statistics().timeouts, outer.statistics().timeouts) == (1, 0)


async def test_spent_outer_deadline_raises_without_calling() -> None:
    """When the enclosing deadline is already spent, the call is not started at all."""
    clock = FakeClock(auto_advance=False)
    outer = Timeout(1.0, name="outer", clock=clock)
    inner = Timeout(5.0, name="inner", clock=clock)
    called: list[str] = []

    async def fn() -> None:
        called.append("called")

    async with outer:
        clock.advance(1.0)  # the outer deadline passes; its timer hasn't run yet
        with capture_events(TimedOut) as events, pytest.raises(TimeoutExceeded) as info:
            await inner.call(fn)
    assert called == []
    assert (info.value.name, info.value.timeout) == ("inner", 0.0)
    assert [(e.name, e.timeout) for e in events if isinstance(e, TimedOut)] == [("inner", 0.0)]
    await settle()
    assert current_task().cancelling() == 0


async def test_spent_outer_deadline_fails_async_with_before_the_body() -> None:
    """`async with` on a spent outer deadline raises at once, like `.call`: no body runs."""
    clock = FakeClock(auto_advance=False)
    outer = Timeout(1.0, name="outer", clock=clock)
    inner = Timeout(5.0, name="inner", clock=clock)
    ran: list[str] = []
    async with outer:
        clock.advance(1.0)
        with pytest.raises(TimeoutExceeded) as info:
            async with inner:
                ran.append("body")
    assert ran == []
    assert (info.value.name, info.value.timeout) == ("inner", 0.0)
    assert inner._scopes == {}
    await settle()
    assert current_task().cancelling() == 0


class _BrokenClock(FakeClock):
    """A clock that reads `reading` (NaN, infinity): a broken time source."""

    def __init__(self, reading: float) -> None:
        super().__init__(auto_advance=False)
        self.reading = reading

    def monotonic(self) -> float:
        return self.reading


@pytest.mark.parametrize("reading", [math.nan, math.inf])
async def test_a_budget_that_is_not_a_number_fails_closed(reading: float) -> None:
    """A clock reading NaN or infinity leaves no measurable budget (inf - inf is NaN):
    the call is refused at once, as a spent deadline, never run unbounded."""
    timeout = Timeout(0.01, name="broken", clock=_BrokenClock(reading))
    called: list[str] = []

    async def fn() -> None:
        called.append("called")

    with pytest.raises(TimeoutExceeded) as info:
        await timeout.call(fn)
    assert called == []
    assert (info.value.name, info.value.timeout) == ("broken", 0.0)
    assert current_task().cancelling() == 0


async def test_deadline_from_another_clock_is_converted() -> None:
    """An outer deadline on another clock caps the inner one by its time left."""
    outer_clock = FakeClock(start=100.0, auto_advance=False)
    clock = FakeClock(auto_advance=False)
    shared = Timeout(10.0, name="shared", clock=clock)

    async def under_outer() -> None:
        async with Timeout(1.0, clock=outer_clock):
            await shared.call(clock.sleep, 20)

    unbounded = asyncio.create_task(shared.call(clock.sleep, 20))
    await settle()
    bounded = asyncio.create_task(under_outer())
    await settle()
    # The bounded call's deadline (t=1) is earlier than the armed one (t=10): re-armed.
    clock.advance(1.0)
    await settle()
    assert bounded.done()
    assert not unbounded.done()
    with pytest.raises(TimeoutExceeded) as info:
        await result_of(bounded)
    assert (info.value.name, info.value.timeout) == ("shared", 1.0)
    clock.advance(9.0)
    await settle()
    with pytest.raises(TimeoutExceeded) as info:
        await result_of(unbounded)
    assert info.value.timeout == 10.0


# -- cancellation from outside ----------------------------------------------------------


async def test_external_cancel_propagates_as_cancelled() -> None:
    """Cancelling the task from outside raises CancelledError, not TimeoutExceeded."""
    clock = FakeClock(auto_advance=False)
    timeout = Timeout(1.0, clock=clock)
    with capture_events(TimedOut) as events:
        task = asyncio.create_task(timeout.call(clock.sleep, 5))
        await settle()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await result_of(task)
        clock.advance(2)
        await settle()
    assert events == []
    assert timeout.statistics().timeouts == 0
    assert timeout._watchdogs.watched() == 0


async def test_external_cancel_wins_over_simultaneous_timeout() -> None:
    """An outside cancel arriving with the timeout still propagates as CancelledError."""
    clock = FakeClock(auto_advance=False)
    timeout = Timeout(1.0, clock=clock)
    task = asyncio.create_task(timeout.call(clock.sleep, 5))
    await settle()
    clock.advance(1.0)  # the timeout's timer is now due ...
    task.cancel()  # ... and so is a cancellation from outside
    with pytest.raises(asyncio.CancelledError):
        await result_of(task)
    assert task.cancelled()


async def test_external_cancel_in_async_with() -> None:
    """Inside `async with Timeout(...)`, an outside cancel propagates as CancelledError."""
    clock = FakeClock(auto_advance=False)
    timeout = Timeout(1.0, clock=clock)

    async def body() -> None:
        async with timeout:
            await clock.sleep(5)

    task = asyncio.create_task(body())
    await settle()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await result_of(task)
    assert timeout.statistics().timeouts == 0
    assert timeout._scopes == {}


async def test_foreign_timeout_passes_through() -> None:
    """An enclosing `asyncio.timeout` expiring is its TimeoutError, not TimeoutExceeded."""
    with pytest.raises(TimeoutError) as info:
        async with asyncio.timeout(0.01):
            await Timeout(5.0).call(asyncio.sleep, 0.2)
    assert not isinstance(info.value, TimeoutExceeded)


# -- async with --------------------------------------------------------------------------


async def test_async_with_overrun_and_in_time() -> None:
    """`async with Timeout(...)` raises TimeoutExceeded on overrun and is silent otherwise."""
    clock = FakeClock()
    timeout = Timeout(1.0, name="block", clock=clock)
    async with timeout as entered:
        assert entered is timeout
        assert remaining_time() == 1.0
        await clock.sleep(0.5)
    with pytest.raises(TimeoutExceeded) as info:
        async with timeout:
            await clock.sleep(2)
    assert info.value.name == "block"
    assert timeout.statistics() == TimeoutStatistics(seconds=1.0, calls=2, timeouts=1)
    assert timeout._scopes == {}
    assert remaining_time() is None


@pytest.mark.parametrize("how", ["async with", "call", "decorated"])
async def test_a_timed_out_block_leaves_no_reference_cycle(how: str) -> None:
    """The `TimeoutExceeded` raised on expiry must not stay in a local of the frame that
    raised it (``__aexit__`` as `_run`): its traceback holds that frame, and the cycle
    (frames, tracebacks, the scope, the CancelledError) would wait for the gc on every
    timed-out block."""
    clock = FakeClock()
    timeout = Timeout(1.0, clock=clock)

    async def work() -> None:
        await clock.sleep(5.0)  # past the budget

    async def block() -> None:
        async with timeout:
            await work()

    run = {"async with": block, "call": lambda: timeout.call(work), "decorated": timeout(work)}[how]
    with pytest.raises(TimeoutExceeded):
        await run()  # warm: the watchdog
    with cycles() as left:
        for _ in range(3):
            with pytest.raises(TimeoutExceeded) as info:
                await run()
            assert isinstance(info.value.__cause__, asyncio.CancelledError)
            del info
    assert timeout.statistics().timeouts == 4
    assert "TimeoutExceeded" not in left
    assert "frame" not in left


async def test_async_with_nested() -> None:
    """Nested `async with` blocks (same or different instances) stack their deadlines."""
    clock = FakeClock(auto_advance=False)
    timeout = Timeout(2.0, clock=clock)
    async with timeout:
        assert remaining_time() == 2.0
        clock.advance(0.5)
        async with timeout:  # the same instance again: capped by its own outer scope
            assert remaining_time() == 1.5
            async with Timeout(0.25, clock=clock):
                assert remaining_time() == 0.25
            assert remaining_time() == 1.5
        async with Timeout(10.0, clock=clock):
            assert remaining_time() == 1.5
    assert remaining_time() is None
    assert timeout._scopes == {}


async def test_async_with_nested_overrun() -> None:
    """When a nested block overruns the outer deadline, TimeoutExceeded comes out."""
    clock = FakeClock(auto_advance=False)

    async def body() -> None:
        async with Timeout(1.0, clock=clock), Timeout(5.0, clock=clock):
            await clock.sleep(10)

    task = asyncio.create_task(body())
    await settle()
    clock.advance(1.0)
    await settle()
    with pytest.raises(TimeoutExceeded):
        await result_of(task)


async def test_async_with_shared_by_many_tasks() -> None:
    """One instance guards concurrent `async with` blocks in many tasks independently."""
    clock = FakeClock(auto_advance=False)
    timeout = Timeout(1.0, clock=clock)
    durations = [0.5 if i % 2 else 1.5 for i in range(20)]

    async def body(seconds: float) -> str:
        async with timeout:
            await clock.sleep(seconds)
        return "done"

    tasks = [asyncio.create_task(body(d)) for d in durations]
    await settle()
    clock.advance(0.75)  # the short blocks finish ...
    await settle()
    clock.advance(1.25)  # ... the long ones time out
    await settle()
    outcomes = await asyncio.gather(*tasks, return_exceptions=True)
    for seconds, outcome in zip(durations, outcomes, strict=True):
        if seconds > 1.0:
            assert isinstance(outcome, TimeoutExceeded)
        else:
            assert outcome == "done"
    assert timeout.statistics().timeouts == 10
    assert timeout._scopes == {}


async def test_aexit_without_aenter_raises() -> None:
    """Leaving a block never entered in this task is a RuntimeError."""
    with pytest.raises(RuntimeError, match="__aenter__"):
        await Timeout(1.0).__aexit__(None, None, None)


# -- the watchdog ------------------------------------------------------------------------


async def test_watchdog_many_staggered_scopes() -> None:
    """With 200 calls started at different times, exactly those that overrun time out."""
    clock = FakeClock(auto_advance=False)
    timeout = Timeout(1.0, clock=clock)
    # 0.005 s to 1.995 s in a scrambled order; none lands on the 1 s budget itself.
    durations = [0.005 + (i * 37 % 200) / 100 for i in range(200)]
    outcomes: dict[int, tuple[str, float]] = {}

    async def worker(i: int) -> None:
        started = clock.monotonic()
        try:
            await timeout.call(clock.sleep, durations[i])
        except TimeoutExceeded:
            outcomes[i] = ("timeout", clock.monotonic() - started)
        else:
            outcomes[i] = ("done", clock.monotonic() - started)

    tasks = []
    for i in range(200):
        tasks.append(asyncio.create_task(worker(i)))
        await settle()
        clock.advance(0.01)
    for _ in range(300):
        if all(task.done() for task in tasks):
            break
        await settle()
        clock.advance(0.01)
    assert all(task.done() for task in tasks)
    await asyncio.gather(*tasks)

    overran = {i for i, d in enumerate(durations) if d > 1.0}
    assert {i for i, (what, _) in outcomes.items() if what == "timeout"} == overran
    assert len(overran) == 100
    for i, (what, took) in outcomes.items():
        expected = 1.0 if what == "timeout" else durations[i]
        assert expected <= took + 1e-9
        assert took <= expected + 0.01 + 1e-9  # fired on the first step past it
    assert timeout.statistics() == TimeoutStatistics(seconds=1.0, calls=200, timeouts=100)
    assert timeout._watchdogs.watched() == 0


async def test_watchdog_real_clock_many_scopes() -> None:
    """On the real clock, one Timeout shared by many tasks times out just the slow ones."""
    timeout = Timeout(0.5)  # far from both durations: a busy machine can't blur them
    durations = [0.0 if i % 2 else 10.0 for i in range(40)]
    outcomes = await asyncio.gather(
        *(timeout.call(asyncio.sleep, d, "done") for d in durations), return_exceptions=True
    )
    for seconds, outcome in zip(durations, outcomes, strict=True):
        if seconds > 0.5:
            assert isinstance(outcome, TimeoutExceeded)
        else:
            assert outcome == "done"


class Deadline:
    """A watched item that counts how often the watchdog looks at it."""

    looks = 0

    def __init__(self, deadline: float) -> None:
        self.deadline = deadline
        self._live = False
        self.expired = False

    @property
    def live(self) -> bool:
        Deadline.looks += 1
        return self._live

    @live.setter
    def live(self, value: bool) -> None:
        self._live = value

    def expire(self) -> None:
        self.expired = True


async def test_watchdog_firing_costs_what_expired_not_what_is_in_flight() -> None:
    """Calls ending just before their deadlines make the watchdog fire once per call;
    each firing looks at a few entries, not at every call in flight."""
    clock = FakeClock(auto_advance=False)
    dog = Watchdog(clock, asyncio.get_running_loop())
    calls = [Deadline(float(i)) for i in range(1, 2_001)]  # a fixed budget: in order
    for item in calls:
        dog.watch(item)
    Deadline.looks = 0
    for item in calls[:1_000]:
        clock.advance(item.deadline - 0.001 - clock.monotonic())
        dog.unwatch(item)  # done just before its deadline
        clock.advance(0.001)  # the timer armed for it fires, and re-arms
        await settle(1)
        assert clock.pending_timers == 1
    assert Deadline.looks < 1_000 * 10  # not ~1,500 per firing
    assert len(dog) == 1_000
    assert not any(item.expired for item in calls)
    early = Deadline(1_500.5)  # out of order (an enclosing deadline's): before the tail
    dog.watch(early)
    clock.advance(1_500.6 - clock.monotonic())
    await settle()
    assert early.expired
    assert [item.expired for item in calls[1_000:]] == [i <= 1_500 for i in range(1_001, 2_001)]
    clock.advance(1_000.0)
    await settle()
    assert all(item.expired for item in calls[1_000:])
    assert len(dog) == 0
    assert clock.pending_timers == 0


async def test_watchdog_holds_a_bounded_number_of_ended_calls() -> None:
    """Ended calls are dropped by compaction: a long budget and many short calls don't
    pile up entries (or their tasks) until the first firing."""
    clock = FakeClock(auto_advance=False)
    timeout = Timeout(3_600.0, clock=clock)
    for _ in range(5_000):
        assert await timeout.call(asyncio.sleep, 0, "done") == "done"
    dog = timeout._watchdogs.last
    assert len(dog.queue) <= 200
    assert all(entry.task is None for entry in dog.queue)  # type: ignore[attr-defined]
    assert timeout._watchdogs.watched() == 0


async def test_timeout_finds_its_task_through_the_loop_it_knows() -> None:
    """On 3.11, after the first call a Timeout asks asyncio for the task of the loop it
    knows (no getpid() system call); after a fork (simulated) it asks the long way."""
    seen: list[tuple[object, ...]] = []
    real, by_loop = asyncio.current_task, watchdog_module.TASK_OF_LOOP

    def spy(*args: Any) -> Any:
        seen.append(args)
        return real(*args)

    def spy_by_loop(loop: asyncio.AbstractEventLoop) -> Any:
        seen.append((loop,))
        return by_loop(loop)

    timeout = Timeout(10.0)
    loop = asyncio.get_running_loop()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(timeout_module, "current_task", spy)
        patch.setattr(timeout_module, "TASK_OF_LOOP", spy_by_loop)
        for _ in range(3):
            assert await timeout.call(asyncio.sleep, 0, "ok") == "ok"
        watchdog_module._forked()
        assert await timeout.call(asyncio.sleep, 0, "ok") == "ok"
        assert await timeout.call(asyncio.sleep, 0, "ok") == "ok"
    if watchdog_module.LOOKUP_PAYS_GETPID:
        assert seen == [(), (loop,), (loop,), (), (loop,)]
    else:
        assert seen == [(), (), (), (), ()]


async def test_the_task_of_a_loop_is_asyncios_current_task() -> None:
    """The lookup Timeout uses on 3.11 (asyncio's table of running tasks, no frame)
    answers what `asyncio.current_task(loop)` does, in a task and in another task."""
    loop = asyncio.get_running_loop()
    assert watchdog_module.TASK_OF_LOOP(loop) is asyncio.current_task()

    async def other() -> object:
        return watchdog_module.TASK_OF_LOOP(loop)

    task = asyncio.ensure_future(other())
    assert await task is task


def test_works_across_event_loops() -> None:
    """A Timeout built once keeps timing out calls in a second `asyncio.run()` loop."""
    timeout = Timeout(0.05)

    async def in_time() -> str:
        return await timeout.call(asyncio.sleep, 0, "first loop")

    async def overrun() -> float:
        started = time.monotonic()
        with pytest.raises(TimeoutExceeded):
            await timeout.call(asyncio.sleep, 10)
        return time.monotonic() - started

    assert asyncio.run(in_time()) == "first loop"
    # The first loop's timer is still armed on a closed loop; the policy must re-arm.
    assert asyncio.run(overrun()) < 5.0  # cut short, not the call's 10 s
    assert asyncio.run(overrun()) < 5.0


# -- events, statistics, repr -------------------------------------------------------------


async def test_timed_out_event() -> None:
    """A timeout emits TimedOut with the budget that ran out and the clock's time."""
    clock = FakeClock(auto_advance=False)
    timeout = Timeout(1.5, name="db", clock=clock)
    with capture_events(TimedOut) as events:
        task = asyncio.create_task(timeout.call(clock.sleep, 2))
        await settle()
        clock.advance(1.5)
        with pytest.raises(TimeoutExceeded):
            await result_of(task)
    assert events == [TimedOut(kind="timeout", name="db", time=1.5, timeout=1.5)]


async def test_statistics_and_repr() -> None:
    """`statistics()` counts calls and timeouts; `repr` shows them."""
    clock = FakeClock()
    timeout = Timeout(0.5, name="db", clock=clock)
    await timeout.call(clock.sleep, 0.25)
    with pytest.raises(TimeoutExceeded):
        await timeout.call(clock.sleep, 1)
    assert timeout.statistics() == TimeoutStatistics(seconds=0.5, calls=2, timeouts=1)
    assert repr(timeout) == "<Timeout 'db' 0.5s calls=2 timeouts=1>"


# -- misconfiguration -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "kwargs", "error", "param"),
    [
        ((0,), {}, ValueError, "seconds"),
        ((-1,), {}, ValueError, "seconds"),
        ((math.nan,), {}, ValueError, "seconds"),
        ((math.inf,), {}, ValueError, "seconds"),
        (("1",), {}, TypeError, "seconds"),
        ((None,), {}, TypeError, "seconds"),
        ((True,), {}, TypeError, "seconds"),
        ((1,), {"name": ""}, ValueError, "name"),
        ((1,), {"clock": 3}, TypeError, "clock"),
        ((1,), {"hooks": [None]}, TypeError, "hooks"),
    ],
)
def test_misconfiguration_names_parameter(
    args: tuple[Any, ...], kwargs: dict[str, Any], error: type[Exception], param: str
) -> None:
    """A bad parameter fails at construction with an error naming it."""
    with pytest.raises(error, match=rf"\b{param}\b"):
        Timeout(*args, **kwargs)
