"""
Tests for `Retry`: attempts, what is retried, waits, stops, deadlines and events.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import inspect
import math
import random
import time
import weakref
from typing import Any, TypeVar

import pytest
import tenacity

from resilient import (
    BulkheadFullError,
    CircuitOpenError,
    Retry,
    RetryScheduled,
    RetryStatistics,
    Timeout,
    pipeline,
)
from resilient.testing import FakeClock, capture_events, instant_retries
from tests._aio import result_of

T = TypeVar("T")


class Script:
    """
    An async callable playing one outcome per call (the last one repeats).

    Exceptions are raised, anything else is returned.
    """

    def __init__(self, *outcomes: object) -> None:
        self.outcomes = list(outcomes)
        self.calls = 0

    async def __call__(self) -> Any:
        outcome = self.outcomes[min(self.calls, len(self.outcomes) - 1)]
        self.calls += 1
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome


class Throttled(Exception):
    """
    An error carrying a server's Retry-After hint.
    """

    def __init__(self, retry_after: object) -> None:
        super().__init__(f"retry after {retry_after!r}")
        self.retry_after = retry_after


# -- attempts and outcome -------------------------------------------------------------


async def test_success_calls_once() -> None:
    """Returns the first result without retrying or sleeping."""
    clock = FakeClock()
    script = Script("ok")
    assert await Retry(attempts=3, clock=clock).call(script) == "ok"
    assert script.calls == 1
    assert clock.sleeps == []


async def test_passes_arguments_through() -> None:
    """`.call(fn, *args, **kwargs)` passes the arguments to every attempt."""
    seen: list[tuple[int, str]] = []

    async def fn(a: int, *, b: str) -> str:
        seen.append((a, b))
        if len(seen) < 2:
            raise ValueError(a)
        return f"{a}{b}"

    retry = Retry(attempts=3, clock=FakeClock())
    assert await retry.call(fn, 1, b="x") == "1x"
    assert seen == [(1, "x"), (1, "x")]


async def test_succeeds_after_transient_failures() -> None:
    """Returns the result of the first successful attempt."""
    script = Script(ValueError("1"), ValueError("2"), "ok")
    retry = Retry(attempts=3, clock=FakeClock())
    assert await retry.call(script) == "ok"
    assert script.calls == 3
    assert retry.statistics() == RetryStatistics(calls=1, retries=2, gave_up=0, budget_rejections=0)


async def test_reraises_last_exception_unchanged() -> None:
    """Re-raises the last exception object itself (not a wrapper) after the final attempt."""
    errors = [ValueError("first"), ValueError("second"), ValueError("third")]
    script = Script(*errors)
    retry = Retry(attempts=3, clock=FakeClock())
    with pytest.raises(ValueError, match="third") as info:
        await retry.call(script)
    assert info.value is errors[-1]
    assert script.calls == 3
    assert retry.statistics().gave_up == 1
    assert retry.statistics().retries == 2


async def test_single_attempt_never_retries() -> None:
    """`attempts=1` makes one attempt and re-raises its error."""
    error = ValueError("once")
    script = Script(error)
    clock = FakeClock()
    with pytest.raises(ValueError) as info:
        await Retry(attempts=1, clock=clock).call(script)
    assert info.value is error
    assert script.calls == 1
    assert clock.sleeps == []


# -- what is retried -------------------------------------------------------------------


async def test_on_exception_types_filters() -> None:
    """With `on=` exception types, only those are retried; others propagate at once."""
    retry = Retry(attempts=3, on=(KeyError, LookupError), clock=FakeClock())
    other = Script(ValueError("not retried"))
    with pytest.raises(ValueError, match="not retried"):
        await retry.call(other)
    assert other.calls == 1

    matching = Script(KeyError("a"), "ok")
    assert await retry.call(matching) == "ok"
    assert matching.calls == 2


async def test_on_single_exception_type() -> None:
    """`on=` also accepts one exception class."""
    retry = Retry(attempts=2, on=KeyError, clock=FakeClock())
    script = Script(KeyError("a"), "ok")
    assert await retry.call(script) == "ok"
    assert script.calls == 2


async def test_on_predicate() -> None:
    """`on=` a predicate over the exception decides what is retried."""
    retry = Retry(attempts=5, on=lambda e: "transient" in str(e), clock=FakeClock())
    script = Script(OSError("transient"), OSError("fatal"), "ok")
    with pytest.raises(OSError, match="fatal"):
        await retry.call(script)
    assert script.calls == 2


async def test_later_non_matching_error_ends_call() -> None:
    """An error that doesn't match `on=` on a later attempt ends the call with it."""
    retry = Retry(attempts=5, on=ValueError, clock=FakeClock())
    script = Script(ValueError("retry me"), KeyError("stop"), "never")
    with pytest.raises(KeyError, match="stop"):
        await retry.call(script)
    assert script.calls == 2


async def test_on_tenacity_retry_if_exception_type() -> None:
    """A tenacity `retry_if_exception_type` strategy selects what is retried."""
    retry = Retry(attempts=3, on=tenacity.retry_if_exception_type(KeyError), clock=FakeClock())
    matching = Script(KeyError("a"), KeyError("b"), "ok")
    assert await retry.call(matching) == "ok"
    assert matching.calls == 3

    other = Script(ValueError("x"), "never")
    with pytest.raises(ValueError, match="x"):
        await retry.call(other)
    assert other.calls == 1


async def test_on_tenacity_retry_if_result() -> None:
    """A tenacity `retry_if_result` strategy retries on results, returning the good one."""
    retry = Retry(attempts=5, on=tenacity.retry_if_result(lambda r: r is None), clock=FakeClock())
    script = Script(None, None, 42)
    assert await retry.call(script) == 42
    assert script.calls == 3


async def test_tenacity_strategy_exhausted_on_result_returns_last_result() -> None:
    """When a result strategy never gets a good result, the last result is returned."""
    retry = Retry(attempts=3, on=tenacity.retry_if_result(lambda r: r < 10), clock=FakeClock())
    script = Script(1, 2, 3, 4)
    assert await retry.call(script) == 3
    assert script.calls == 3
    assert retry.statistics().gave_up == 1


def test_on_result_with_tenacity_strategy_is_rejected() -> None:
    """`on_result=` next to a tenacity strategy in `on=` is ambiguous: ValueError naming it."""
    with pytest.raises(ValueError, match="on_result"):
        Retry(on=tenacity.retry_if_exception_type(ValueError), on_result=lambda r: r is None)


async def test_on_result_retries_then_returns_last_result() -> None:
    """`on_result=` retries bad results and returns the last one after the final attempt."""
    retry = Retry(attempts=3, on_result=lambda r: r == "busy", clock=FakeClock())
    script = Script("busy")
    assert await retry.call(script) == "busy"
    assert script.calls == 3

    recovering = Script("busy", "done")
    assert await retry.call(recovering) == "done"
    assert recovering.calls == 2


@pytest.mark.parametrize(
    "error",
    [CircuitOpenError("db", 3.0), BulkheadFullError("db", 1, 0, "no free slot")],
    ids=["circuit-open", "bulkhead-full"],
)
async def test_rejections_not_retried_by_default(error: Exception) -> None:
    """By default a `RejectedError` (open circuit, full bulkhead) is not retried."""
    script = Script(error, "never")
    retry = Retry(attempts=3, clock=FakeClock())
    with pytest.raises(type(error)) as info:
        await retry.call(script)
    assert info.value is error
    assert script.calls == 1
    assert retry.statistics().retries == 0


async def test_rejection_retried_when_asked() -> None:
    """Naming a rejection in `on=` makes it retryable."""
    script = Script(CircuitOpenError("db", 0.0), "ok")
    retry = Retry(attempts=2, on=CircuitOpenError, clock=FakeClock())
    assert await retry.call(script) == "ok"
    assert script.calls == 2


@pytest.mark.parametrize(
    "on",
    [
        None,
        (asyncio.CancelledError, Exception),
        BaseException,
        lambda e: True,
        tenacity.retry_always,
        tenacity.retry_if_exception_type(BaseException),
    ],
    ids=["default", "types", "base-exception", "predicate", "retry_always", "tenacity-type"],
)
async def test_cancelled_attempt_never_retried(on: Any) -> None:
    """A cancelled attempt ends the call at once, whatever `on=` says, and isn't counted."""
    script = Script(asyncio.CancelledError(), "never")
    clock = FakeClock()
    retry = Retry(attempts=3, on=on, clock=clock)
    with pytest.raises(asyncio.CancelledError):
        await retry.call(script)
    assert script.calls == 1
    assert clock.sleeps == []
    assert retry.statistics() == RetryStatistics(calls=1, retries=0, gave_up=0, budget_rejections=0)


async def test_cancellation_during_backoff_ends_call() -> None:
    """Cancelling the caller while it waits between attempts ends the call uncounted."""
    clock = FakeClock(auto_advance=False)
    script = Script(ValueError("down"))
    retry = Retry(attempts=5, wait=tenacity.wait_fixed(1.0), clock=clock)
    task = asyncio.create_task(retry.call(script))
    await asyncio.sleep(0)
    assert clock.sleeps == [1.0]  # waiting before attempt 2
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await result_of(task)
    assert script.calls == 1
    assert retry.statistics().gave_up == 0
    assert retry.statistics().retries == 0


# -- waits -------------------------------------------------------------------------


async def test_wait_fixed() -> None:
    """A tenacity `wait_fixed` strategy sets the delay between attempts."""
    clock = FakeClock()
    with pytest.raises(ValueError, match="down"):
        await Retry(attempts=4, wait=tenacity.wait_fixed(2), clock=clock).call(
            Script(ValueError("down"))
        )
    assert clock.sleeps == [2.0, 2.0, 2.0]
    assert clock.monotonic() == 6.0


async def test_a_wait_fixed_subclass_that_computes_its_wait_is_asked_every_time() -> None:
    """`wait_fixed` and `wait_none` are read once (their seconds); a subclass may
    compute its wait, so it is called before each retry as tenacity would."""

    class Growing(tenacity.wait_fixed):
        def __init__(self) -> None:
            super().__init__(1)
            self.asked = 0

        def __call__(self, retry_state: tenacity.RetryCallState) -> float:
            self.asked += 1
            return float(self.asked)

    clock = FakeClock()
    with pytest.raises(ValueError, match="down"):
        await Retry(attempts=4, wait=Growing(), clock=clock).call(Script(ValueError("down")))
    assert clock.sleeps == [1.0, 2.0, 3.0]


async def test_wait_exponential() -> None:
    """A tenacity `wait_exponential` strategy doubles the delay up to its max."""
    clock = FakeClock()
    retry = Retry(attempts=5, wait=tenacity.wait_exponential(multiplier=1, max=5), clock=clock)
    with pytest.raises(ValueError, match="down"):
        await retry.call(Script(ValueError("down")))
    assert clock.sleeps == [1.0, 2.0, 4.0, 5.0]


async def test_default_wait_is_full_jitter_exponential(monkeypatch: pytest.MonkeyPatch) -> None:
    """The default wait draws from [0, 0.1 * 2**(n-1)], capped at 10 s (full jitter)."""
    windows: list[tuple[float, float]] = []

    def top_of_window(low: float, high: float) -> float:
        windows.append((low, high))
        return high

    monkeypatch.setattr(random, "uniform", top_of_window)
    clock = FakeClock()
    with pytest.raises(ValueError, match="down"):
        await Retry(attempts=10, clock=clock).call(Script(ValueError("down")))
    expected = [min(0.1 * 2 ** (n - 1), 10.0) for n in range(1, 10)]
    assert [low for low, _ in windows] == [0] * 9
    assert [high for _, high in windows] == pytest.approx(expected)
    assert clock.sleeps == pytest.approx(expected)
    assert clock.sleeps[-1] == 10.0


async def test_default_wait_stays_within_jitter_window() -> None:
    """Unpatched, every default delay lies within its full-jitter window."""
    clock = FakeClock()
    with capture_events(RetryScheduled) as events, pytest.raises(ValueError, match="down"):
        await Retry(attempts=12, clock=clock).call(Script(ValueError("down")))
    delays = [e.delay for e in events if isinstance(e, RetryScheduled)]
    assert len(delays) == 11
    for n, delay in enumerate(delays, start=1):
        assert 0.0 <= delay <= min(0.1 * 2 ** (n - 1), 10.0)
    assert delays == clock.sleeps
    assert len(set(delays)) > 1  # jittered, not a fixed schedule


# -- stops -------------------------------------------------------------------------


async def test_stop_after_delay_with_fake_clock() -> None:
    """`stop=stop_after_delay(...)` stops once the attempts have taken that long."""
    clock = FakeClock()
    script = Script(ValueError("down"))
    retry = Retry(
        attempts=None, stop=tenacity.stop_after_delay(3.5), wait=tenacity.wait_fixed(1), clock=clock
    )
    with pytest.raises(ValueError, match="down"):
        await retry.call(script)
    # Attempts at t=0, 1, 2, 3, 4: the one failing at t=4 is past the 3.5 s limit.
    assert script.calls == 5
    assert clock.monotonic() == 4.0
    assert retry.statistics().gave_up == 1


async def test_stop_and_attempts_whichever_first() -> None:
    """`attempts` and `stop` both apply: the first to say stop ends the call."""
    by_attempts = Script(ValueError("down"))
    retry = Retry(attempts=2, stop=tenacity.stop_after_attempt(5), clock=FakeClock())
    with pytest.raises(ValueError, match="down"):
        await retry.call(by_attempts)
    assert by_attempts.calls == 2

    by_stop = Script(ValueError("down"))
    retry = Retry(attempts=5, stop=tenacity.stop_after_attempt(2), clock=FakeClock())
    with pytest.raises(ValueError, match="down"):
        await retry.call(by_stop)
    assert by_stop.calls == 2


async def test_unlimited_attempts_with_stop() -> None:
    """`attempts=None` retries until the `stop` strategy says so."""
    script = Script(*[ValueError(str(i)) for i in range(20)], "ok")
    retry = Retry(attempts=None, stop=tenacity.stop_after_attempt(50), clock=FakeClock())
    assert retry.attempts is None
    assert await retry.call(script) == "ok"
    assert script.calls == 21


@pytest.mark.parametrize("attempts", [5, None])
async def test_attempts_lowered_during_a_call_apply_to_its_next_retry(
    attempts: int | None,
) -> None:
    """`attempts` is read before each retry: lowered mid-call, the call gives up at once."""
    retry = Retry(attempts=attempts, stop=tenacity.stop_after_attempt(5), clock=FakeClock())
    errors = [ValueError(str(i)) for i in range(5)]
    calls = 0

    async def fn() -> None:
        nonlocal calls
        calls += 1
        if calls == 2:
            retry.attempts = 2
        raise errors[calls - 1]

    with capture_events(RetryScheduled) as events, pytest.raises(ValueError) as info:
        await retry.call(fn)
    assert info.value is errors[1]
    assert calls == 2
    assert len(events) == 1
    assert retry.statistics() == RetryStatistics(calls=1, retries=1, gave_up=1, budget_rejections=0)


def test_unlimited_attempts_require_stop() -> None:
    """`attempts=None` without `stop=` is a ValueError naming `attempts`."""
    with pytest.raises(ValueError, match="attempts"):
        Retry(attempts=None)


# -- Retry-After ---------------------------------------------------------------------


async def test_retry_after_attribute_honoured() -> None:
    """An exception's `retry_after` lengthens the wait to what the server asked."""
    clock = FakeClock()
    script = Script(Throttled(7), "ok")
    assert await Retry(wait=tenacity.wait_fixed(0.5), clock=clock).call(script) == "ok"
    assert clock.sleeps == [7.0]


async def test_retry_after_capped() -> None:
    """A `retry_after` longer than `retry_after_cap` is cut down to the cap."""
    clock = FakeClock()
    script = Script(Throttled(3600), "ok")
    retry = Retry(wait=tenacity.wait_fixed(0.5), retry_after_cap=30, clock=clock)
    assert await retry.call(script) == "ok"
    assert clock.sleeps == [30.0]


async def test_retry_after_shorter_than_wait_keeps_wait() -> None:
    """A `retry_after` shorter than the strategy's wait does not shorten it."""
    clock = FakeClock()
    script = Script(Throttled(0.1), "ok")
    assert await Retry(wait=tenacity.wait_fixed(2), clock=clock).call(script) == "ok"
    assert clock.sleeps == [2.0]


@pytest.mark.parametrize("hint", ["soon", True, math.nan, math.inf, -5, None])
async def test_unusable_retry_after_ignored(hint: object) -> None:
    """A `retry_after` that isn't a usable number of seconds is ignored."""
    clock = FakeClock()
    script = Script(Throttled(hint), "ok")
    assert await Retry(wait=tenacity.wait_fixed(0.5), clock=clock).call(script) == "ok"
    assert clock.sleeps == [0.5]


class OneShotHint(Exception):
    """
    An error whose `retry_after` is computed when read, and read once counts: a second
    read finds nothing (a hint taken from a response consumed as it is read).
    """

    def __init__(self, retry_after: float) -> None:
        super().__init__("throttled")
        self._hint: float | None = retry_after
        self.reads = 0

    @property
    def retry_after(self) -> float | None:
        self.reads += 1
        hint, self._hint = self._hint, None
        return hint


@pytest.mark.parametrize("wait", [tenacity.wait_fixed(0.5), tenacity.wait_none(), None])
async def test_retry_after_read_once_per_retry(wait: Any) -> None:
    """A retry reads its error's `retry_after` once: a hint gone on a second read is kept."""
    clock = FakeClock()
    error = OneShotHint(7)
    retry = Retry(wait=wait, retry_after_cap=30, clock=clock) if wait else Retry(clock=clock)
    with capture_events(RetryScheduled) as events:
        assert await retry.call(Script(error, "ok")) == "ok"
    assert error.reads == 1
    assert clock.sleeps == [7.0]
    assert [e.delay for e in events if isinstance(e, RetryScheduled)] == [7.0]


# -- deadlines -----------------------------------------------------------------------


async def test_gives_up_when_delay_would_overrun_deadline() -> None:
    """Inside a Timeout, Retry stops (re-raising the error) when the delay would overrun."""
    clock = FakeClock()
    errors = [ValueError(str(i)) for i in range(5)]
    script = Script(*errors)
    retry = Retry(attempts=5, wait=tenacity.wait_fixed(0.4), clock=clock)
    timeout = Timeout(1.0, clock=clock)
    with pytest.raises(ValueError, match="2") as info:
        await pipeline(timeout, retry).call(script)
    # Attempts at t=0, 0.4, 0.8; a third 0.4 s wait would end past t=1.0.
    assert info.value is errors[2]
    assert script.calls == 3
    assert clock.sleeps == [0.4, 0.4]
    assert retry.statistics().gave_up == 1
    assert timeout.statistics().timeouts == 0


async def test_retries_freely_without_deadline() -> None:
    """Without an enclosing Timeout, the same schedule uses every attempt."""
    clock = FakeClock()
    script = Script(ValueError("down"))
    with pytest.raises(ValueError, match="down"):
        await Retry(attempts=5, wait=tenacity.wait_fixed(0.4), clock=clock).call(script)
    assert script.calls == 5


# -- instant retries -----------------------------------------------------------------


async def test_instant_retries_skip_sleeps() -> None:
    """Under `instant_retries()` no time passes, but events still report the delays."""
    clock = FakeClock()
    script = Script(ValueError("1"), ValueError("2"), "ok")
    retry = Retry(attempts=3, wait=tenacity.wait_fixed(5), clock=clock)
    with instant_retries(), capture_events(RetryScheduled) as events:
        assert await retry.call(script) == "ok"
    assert clock.sleeps == []
    assert clock.monotonic() == 0.0
    assert [e.delay for e in events if isinstance(e, RetryScheduled)] == [5.0, 5.0]


async def test_instant_retries_with_system_clock() -> None:
    """Under `instant_retries()` a Retry on the real clock takes no real time."""
    script = Script(ValueError("1"), ValueError("2"), "ok")
    retry = Retry(attempts=3, wait=tenacity.wait_fixed(10))
    started = time.monotonic()
    with instant_retries():
        assert await retry.call(script) == "ok"
    assert time.monotonic() - started < 1.0
    assert script.calls == 3


# -- decorator ---------------------------------------------------------------------


async def test_decorator_preserves_metadata() -> None:
    """Decorating keeps `__name__`, `__doc__` and leaves a coroutine function."""
    calls: list[int] = []

    @Retry(attempts=2, clock=FakeClock())
    async def fetch(item: int) -> int:
        """Fetch an item."""
        calls.append(item)
        if len(calls) == 1:
            raise ValueError(item)
        return item * 2

    assert fetch.__name__ == "fetch"
    assert fetch.__doc__ == "Fetch an item."
    assert inspect.iscoroutinefunction(fetch)
    assert await fetch(21) == 42
    assert calls == [21, 21]


def test_decorating_sync_function_raises() -> None:
    """Decorating a plain `def` is a TypeError naming the function."""

    def not_async() -> int:
        return 1

    with pytest.raises(TypeError, match="not_async"):
        Retry()(not_async)  # type: ignore[arg-type]  # the mistake under test


# -- tenacity stays off the happy path ------------------------------------------------


async def test_happy_path_skips_tenacity_machinery(monkeypatch: pytest.MonkeyPatch) -> None:
    """A first-attempt success builds no RetryCallState and runs no AsyncRetrying loop."""
    used: list[str] = []
    original_init = tenacity.RetryCallState.__init__

    def spy_init(self: tenacity.RetryCallState, *args: Any, **kwargs: Any) -> None:
        used.append("RetryCallState")
        original_init(self, *args, **kwargs)

    def forbidden(name: str) -> Any:
        def spy(*args: Any, **kwargs: Any) -> Any:
            used.append(name)
            raise AssertionError(f"AsyncRetrying.{name} used")

        return spy

    monkeypatch.setattr(tenacity.RetryCallState, "__init__", spy_init)
    for name in ("__call__", "__iter__", "__aiter__", "iter"):
        monkeypatch.setattr(tenacity.AsyncRetrying, name, forbidden(name))

    plain = Retry(attempts=3, clock=FakeClock())
    typed = Retry(attempts=3, on=ValueError, on_result=lambda r: r is None, clock=FakeClock())
    for _ in range(3):
        assert await plain.call(Script("ok")) == "ok"
        assert await typed.call(Script("ok")) == "ok"
    assert used == []

    # The spy does see the state being built once a failure needs the strategies.
    assert await plain.call(Script(ValueError("x"), "ok")) == "ok"
    assert used == ["RetryCallState"]


async def test_fixed_wait_builds_no_tenacity_state(monkeypatch: pytest.MonkeyPatch) -> None:
    """A failing call with a fixed wait and no retry_*/stop_* strategy builds no state."""
    built: list[str] = []
    original_init = tenacity.RetryCallState.__init__

    def spy_init(self: tenacity.RetryCallState, *args: Any, **kwargs: Any) -> None:
        built.append("RetryCallState")
        original_init(self, *args, **kwargs)

    monkeypatch.setattr(tenacity.RetryCallState, "__init__", spy_init)
    clock = FakeClock()
    for wait in (tenacity.wait_fixed(0.5), tenacity.wait_none()):
        script = Script(ValueError("1"), ValueError("2"), "ok")
        assert await Retry(attempts=3, wait=wait, clock=clock).call(script) == "ok"
        assert script.calls == 3
    assert built == []
    assert clock.sleeps == [0.5, 0.5]  # (a zero wait is no sleep to a FakeClock)
    # A strategy that may read the state still gets one, once per failing call.
    stopped = Retry(attempts=3, wait=tenacity.wait_none(), stop=tenacity.stop_after_delay(9))
    assert await stopped.call(Script(ValueError("1"), "ok")) == "ok"
    assert built == ["RetryCallState"]


async def test_strategies_read_each_attempts_outcome() -> None:
    """Strategies get each attempt's outcome as a finished tenacity.Future."""
    seen: list[tuple[int, bool, object]] = []

    def wait(state: tenacity.RetryCallState) -> float:
        outcome = state.outcome
        assert isinstance(outcome, tenacity.Future)
        assert outcome.done()
        assert outcome.attempt_number == state.attempt_number
        value = outcome.exception() if outcome.failed else outcome.result()
        seen.append((state.attempt_number, outcome.failed, value))
        return 0.0

    boom = ValueError("boom")
    retry = Retry(attempts=3, wait=wait, on_result=lambda r: r == "again", clock=FakeClock())
    assert await retry.call(Script(boom, "again", "ok")) == "ok"
    assert seen == [(1, True, boom), (2, False, "again")]


@pytest.mark.parametrize("wait", [None, tenacity.wait_none()], ids=["default", "fixed"])
async def test_failed_call_frees_its_errors_without_the_gc(wait: Any) -> None:
    """A call that failed every attempt leaves no reference cycle: its errors are freed
    as soon as the caller drops the last one, with the gc off."""
    errors: list[weakref.ref[BaseException]] = []

    class Down(Exception):
        pass

    def tracked() -> Down:
        error = Down()
        errors.append(weakref.ref(error))
        return error

    async def fail() -> None:
        raise tracked()  # a local in this frame would hold its own error: a cycle

    retry = Retry(attempts=3, wait=wait)
    gc.collect()
    gc.disable()
    try:
        with instant_retries(), contextlib.suppress(Down):
            await retry.call(fail)
        assert len(errors) == 3
        assert [ref() for ref in errors] == [None, None, None]
    finally:
        gc.enable()


# -- events, statistics, repr ---------------------------------------------------------


async def test_retry_scheduled_events() -> None:
    """Each retry emits RetryScheduled with the failed attempt's number, delay and error."""
    errors = [ValueError("1"), ValueError("2"), ValueError("3")]
    clock = FakeClock()
    retry = Retry(attempts=3, wait=tenacity.wait_fixed(1.5), name="inventory", clock=clock)
    with capture_events(RetryScheduled) as events, pytest.raises(ValueError, match="3"):
        await retry.call(Script(*errors))
    assert [(e.attempt, e.delay, e.error) for e in events if isinstance(e, RetryScheduled)] == [
        (1, 1.5, errors[0]),
        (2, 1.5, errors[1]),
    ]
    assert all(e.kind == "retry" and e.name == "inventory" for e in events)
    assert [e.time for e in events] == [0.0, 1.5]


async def test_retry_scheduled_for_result_has_no_error() -> None:
    """A retry caused by a result carries `error=None`."""
    retry = Retry(attempts=2, on_result=lambda r: r == "busy", clock=FakeClock())
    hooked: list[object] = []
    retry.add_hook(hooked.append)
    assert await retry.call(Script("busy", "ok")) == "ok"
    scheduled = [e for e in hooked if isinstance(e, RetryScheduled)]
    assert len(scheduled) == 1
    assert scheduled[0].attempt == 1
    assert scheduled[0].error is None


async def test_statistics_and_repr() -> None:
    """`statistics()` counts calls, retries and give-ups; `repr` shows them."""
    retry = Retry(attempts=2, name="pricing", clock=FakeClock())
    assert await retry.call(Script("ok")) == "ok"
    assert await retry.call(Script(ValueError("1"), "ok")) == "ok"
    with pytest.raises(ValueError, match="down"):
        await retry.call(Script(ValueError("down")))
    assert retry.statistics() == RetryStatistics(calls=3, retries=2, gave_up=1, budget_rejections=0)
    assert repr(retry) == "<Retry 'pricing' attempts=2 calls=3 retries=2 gave_up=1>"
    unlimited = Retry(attempts=None, stop=tenacity.stop_after_attempt(3))
    assert repr(unlimited) == "<Retry 'retry' attempts=unlimited calls=0 retries=0 gave_up=0>"


# -- misconfiguration ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "error", "param"),
    [
        ({"attempts": 0}, ValueError, "attempts"),
        ({"attempts": -1}, ValueError, "attempts"),
        ({"attempts": 2.5}, TypeError, "attempts"),
        ({"attempts": "3"}, TypeError, "attempts"),
        ({"attempts": True}, TypeError, "attempts"),
        ({"attempts": None}, ValueError, "attempts"),
        ({"on": 42}, TypeError, "on"),
        ({"on": [ValueError, "nope"]}, TypeError, "on"),
        ({"on": int}, TypeError, "on"),
        ({"on_result": "yes"}, TypeError, "on_result"),
        ({"wait": 5}, TypeError, "wait"),
        ({"stop": 3}, TypeError, "stop"),
        ({"budget": 0.1}, TypeError, "budget"),
        ({"retry_after_cap": -1}, ValueError, "retry_after_cap"),
        ({"retry_after_cap": math.inf}, ValueError, "retry_after_cap"),
        ({"retry_after_cap": math.nan}, ValueError, "retry_after_cap"),
        ({"retry_after_cap": "60"}, TypeError, "retry_after_cap"),
        ({"name": ""}, ValueError, "name"),
        ({"name": 7}, TypeError, "name"),
        ({"clock": object()}, TypeError, "clock"),
        ({"hooks": [print, "not callable"]}, TypeError, "hooks"),
    ],
)
def test_misconfiguration_names_parameter(
    kwargs: dict[str, Any], error: type[Exception], param: str
) -> None:
    """A bad parameter fails at construction with an error naming it."""
    with pytest.raises(error, match=rf"\b{param}\b"):
        Retry(**kwargs)


async def test_reraised_error_carries_no_earlier_attempt_as_context() -> None:
    """The last error is re-raised as raised: no earlier attempt's error as __context__."""
    errors: list[ValueError] = []

    async def flaky() -> None:
        errors.append(ValueError(f"attempt {len(errors) + 1}"))
        raise errors[-1]

    with instant_retries(), pytest.raises(ValueError) as info:
        await Retry(attempts=3).call(flaky)
    assert info.value is errors[-1]
    assert info.value.__context__ is None


async def test_stop_before_delay_sees_the_coming_wait() -> None:
    """tenacity's stop_before_delay sees the upcoming wait, as in tenacity itself."""
    clock = FakeClock()
    waits = iter([1.0, 11.0, 11.0])

    def wait(_: tenacity.RetryCallState) -> float:
        return next(waits)

    async def failing() -> None:
        raise ConnectionError("down")

    retry = Retry(attempts=None, wait=wait, stop=tenacity.stop_before_delay(7), clock=clock)
    with pytest.raises(ConnectionError):
        await retry.call(failing)
    assert clock.sleeps == [1.0]  # the 11 s wait would end past 7 s: stop instead
