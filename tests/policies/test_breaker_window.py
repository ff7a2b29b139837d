"""
CircuitBreaker in window mode: count- and time-based windows, failure and slow-call rates,
min_calls, and the parameter checks that keep the two modes apart.
"""

from __future__ import annotations

from typing import Any

import pybreaker
import pytest

from resilient import CircuitBreaker, CircuitOpenError, CircuitState
from resilient.testing import FakeClock

CLOSED, OPEN, HALF_OPEN = CircuitState.CLOSED, CircuitState.OPEN, CircuitState.HALF_OPEN


class Boom(Exception):
    """The dependency's failure in these tests."""


async def ok() -> str:
    return "ok"


async def boom() -> str:
    raise Boom


async def run(breaker: CircuitBreaker, outcomes: str) -> None:
    """Make one call per letter: S succeeds, F fails."""
    for outcome in outcomes:
        if outcome == "S":
            assert await breaker.call(ok) == "ok"
        else:
            with pytest.raises(Boom):
                await breaker.call(boom)


async def timed(
    breaker: CircuitBreaker, clock: FakeClock, seconds: float, *, failing: bool = False
) -> None:
    """
    One call that takes `seconds` of fake time (the clock auto-advances on sleep).

    The tests use binary-exact durations so elapsed times compare exactly.
    """

    async def work() -> str:
        await clock.sleep(seconds)
        if failing:
            raise Boom
        return "ok"

    if failing:
        with pytest.raises(Boom):
            await breaker.call(work)
    else:
        assert await breaker.call(work) == "ok"


def window_counts(breaker: CircuitBreaker) -> tuple[int, int]:
    stats = breaker.statistics()
    return stats.window_calls, stats.window_failures


# --- count-based window -------------------------------------------------------------


async def test_no_trip_before_min_calls() -> None:
    """Failures below min_calls never open the breaker, whatever the rate."""
    breaker = CircuitBreaker(failure_rate=0.5, window=10, min_calls=5, clock=FakeClock())
    await run(breaker, "FFFF")
    assert breaker.state is CLOSED
    assert window_counts(breaker) == (4, 4)
    await run(breaker, "F")
    assert breaker.state is OPEN


async def test_trips_when_the_rate_reaches_failure_rate() -> None:
    """At min_calls, a failure rate equal to failure_rate opens; just below does not."""
    breaker = CircuitBreaker(failure_rate=0.5, window=10, min_calls=10, clock=FakeClock())
    await run(breaker, "SSSSSSFFF")
    assert breaker.state is CLOSED
    await run(breaker, "S")  # 3/10 = 0.3: the window is full, the rate too low
    assert breaker.state is CLOSED
    await run(breaker, "F")  # the first S falls out: 4/10
    assert breaker.state is CLOSED
    await run(breaker, "F")  # 5/10 = 0.5
    assert breaker.state is OPEN
    with pytest.raises(CircuitOpenError):
        await breaker.call(ok)


async def test_a_success_can_trip_it_once_min_calls_is_reached() -> None:
    """The call that reaches min_calls opens the breaker even when it succeeded."""
    breaker = CircuitBreaker(failure_rate=0.5, window=10, min_calls=4, clock=FakeClock())
    await run(breaker, "FFF")
    assert breaker.state is CLOSED
    await run(breaker, "S")  # 3/4 failed
    assert breaker.state is OPEN


@pytest.mark.parametrize(
    ("rate", "calls", "failures"),
    [(0.07, 100, 7), (0.14, 50, 7), (0.28, 25, 7), (0.7, 10, 7), (0.1, 10, 1), (1 / 3, 3, 1)],
)
async def test_exact_rate_trips_despite_float_rounding(
    rate: float, calls: int, failures: int
) -> None:
    """failures/calls equal to failure_rate opens, even where rate * calls rounds up."""
    breaker = CircuitBreaker(failure_rate=rate, window=calls, min_calls=calls, clock=FakeClock())
    await run(breaker, "S" * (calls - failures) + "F" * (failures - 1))
    assert breaker.state is CLOSED
    await run(breaker, "F")
    assert breaker.state is OPEN


async def test_old_outcomes_fall_out_of_the_window() -> None:
    """Only the last `window` calls count: older failures are forgotten."""
    breaker = CircuitBreaker(failure_rate=0.5, window=4, min_calls=4, clock=FakeClock())
    await run(breaker, "FSSS")
    assert window_counts(breaker) == (4, 1)
    await run(breaker, "S")
    assert window_counts(breaker) == (4, 0)
    # Counted from the start this would be 2/7 failed; the window holds 2/4.
    await run(breaker, "F")
    assert breaker.state is CLOSED
    await run(breaker, "F")
    assert breaker.state is OPEN
    assert window_counts(breaker) == (4, 2)


async def test_failure_rate_one_needs_every_call_to_fail() -> None:
    """With failure_rate=1.0 one success in the window keeps the breaker closed."""
    breaker = CircuitBreaker(failure_rate=1.0, window=3, min_calls=3, clock=FakeClock())
    await run(breaker, "FSFF")
    assert breaker.state is CLOSED
    await run(breaker, "F")
    assert breaker.state is OPEN


async def test_default_min_calls_is_at_most_the_window() -> None:
    """Without min_calls, a window of 5 is judged from the fifth call."""
    breaker = CircuitBreaker(failure_rate=1.0, window=5, clock=FakeClock())
    await run(breaker, "FFFF")
    assert breaker.state is CLOSED
    await run(breaker, "F")
    assert breaker.state is OPEN


async def test_defaults_in_window_mode_judge_from_ten_calls_at_half() -> None:
    """failure_rate alone means a window of 100 judged from 10 calls."""
    breaker = CircuitBreaker(failure_rate=0.5, clock=FakeClock())
    assert breaker.failure_threshold is None
    await run(breaker, "FFFFFFFFF")
    assert breaker.state is CLOSED
    await run(breaker, "S")
    assert breaker.state is OPEN


async def test_closing_again_empties_the_window() -> None:
    """After a successful probe closes the breaker, the window starts empty."""
    clock = FakeClock()
    breaker = CircuitBreaker(failure_rate=0.5, window=4, min_calls=2, reset_timeout=5, clock=clock)
    await run(breaker, "FF")
    assert breaker.state is OPEN
    clock.advance(5)
    await run(breaker, "S")
    assert breaker.state is CLOSED
    assert window_counts(breaker) == (0, 0)
    await run(breaker, "F")
    assert breaker.state is CLOSED  # 1 call: below min_calls


async def test_excluded_errors_do_not_enter_the_window() -> None:
    """Excluded errors are not calls of the window, so they move neither count."""
    breaker = CircuitBreaker(
        failure_rate=0.5, window=4, min_calls=2, exclude=KeyError, clock=FakeClock()
    )

    async def missing() -> str:
        raise KeyError("k")

    await run(breaker, "S")
    for _ in range(3):
        with pytest.raises(KeyError):
            await breaker.call(missing)
    assert window_counts(breaker) == (1, 0)
    assert breaker.state is CLOSED


async def test_window_repr_shows_failed_over_calls() -> None:
    """A windowed breaker's repr shows failures over calls in the window."""
    breaker = CircuitBreaker("pricing", failure_rate=0.9, window=5, clock=FakeClock())
    await run(breaker, "SF")
    assert repr(breaker) == "<CircuitBreaker 'pricing' closed window=1/2 failed>"


# --- slow calls ---------------------------------------------------------------------


async def test_slow_call_rate_opens_with_successful_slow_calls() -> None:
    """Calls at least slow_call_duration long count as slow and trip slow_call_rate."""
    clock = FakeClock()
    breaker = CircuitBreaker(
        slow_call_duration=1.0,
        slow_call_rate=0.5,
        failure_rate=1.0,
        window=4,
        min_calls=4,
        clock=clock,
    )
    await timed(breaker, clock, 0.25)
    await timed(breaker, clock, 0.9375)  # just under: not slow
    await timed(breaker, clock, 1.0)  # exactly the duration: slow
    assert breaker.state is CLOSED
    await timed(breaker, clock, 5.0)
    assert breaker.state is OPEN
    stats = breaker.statistics()
    assert (stats.successes, stats.failures, stats.slow_calls) == (4, 0, 2)


async def test_slow_calls_below_the_rate_keep_it_closed() -> None:
    """A slow-call share below slow_call_rate leaves the breaker closed."""
    clock = FakeClock()
    breaker = CircuitBreaker(
        slow_call_duration=1.0, slow_call_rate=0.75, window=4, min_calls=4, clock=clock
    )
    for seconds in (2.0, 2.0, 0.1, 0.1, 2.0, 0.1):
        await timed(breaker, clock, seconds)
    assert breaker.state is CLOSED
    assert breaker.statistics().slow_calls == 3


async def test_slow_failure_counts_as_failed_and_slow() -> None:
    """A slow failing call adds to both the failure and the slow-call counts."""
    clock = FakeClock()
    breaker = CircuitBreaker(slow_call_duration=1.0, window=10, min_calls=10, clock=clock)
    await timed(breaker, clock, 3.0, failing=True)
    stats = breaker.statistics()
    assert (stats.failures, stats.slow_calls, stats.window_failures) == (1, 1, 1)


async def test_long_calls_are_not_slow_without_slow_call_duration() -> None:
    """Without slow_call_duration no call is slow, however long it takes."""
    clock = FakeClock()
    breaker = CircuitBreaker(failure_rate=0.5, window=2, min_calls=2, clock=clock)
    await timed(breaker, clock, 1000.0)
    await timed(breaker, clock, 1000.0)
    assert breaker.state is CLOSED
    assert breaker.statistics().slow_calls == 0


async def test_slow_probe_counts_as_a_failed_probe() -> None:
    """A successful but slow probe reopens the breaker; a fast one closes it."""
    clock = FakeClock()
    breaker = CircuitBreaker(
        slow_call_duration=1.0,
        failure_rate=0.5,
        window=2,
        min_calls=2,
        reset_timeout=10,
        clock=clock,
    )
    await run(breaker, "FF")
    assert breaker.state is OPEN
    clock.advance(10)
    await timed(breaker, clock, 1.5)
    assert breaker.state is OPEN
    stats = breaker.statistics()
    assert (stats.opened, stats.slow_calls, stats.successes) == (2, 1, 1)
    clock.advance(10)
    await timed(breaker, clock, 0.5)
    assert breaker.state is CLOSED


# --- time-based window --------------------------------------------------------------


async def test_time_window_forgets_outcomes_older_than_the_window() -> None:
    """Failures more than window_duration ago no longer count toward the rate."""
    clock = FakeClock()
    breaker = CircuitBreaker(failure_rate=0.5, window_duration=10.0, min_calls=3, clock=clock)
    await run(breaker, "FF")
    assert window_counts(breaker) == (2, 2)
    clock.advance(10.0)
    assert window_counts(breaker) == (0, 0)
    await run(breaker, "F")  # would be 3/3 if the old ones still counted
    assert breaker.state is CLOSED
    await run(breaker, "FF")
    assert breaker.state is OPEN


async def test_time_window_keeps_outcomes_within_the_window() -> None:
    """Failures spread over less than window_duration add up and open the breaker."""
    clock = FakeClock()
    breaker = CircuitBreaker(failure_rate=1.0, window_duration=10.0, min_calls=3, clock=clock)
    await run(breaker, "F")
    clock.advance(4.0)
    await run(breaker, "F")
    clock.advance(4.5)
    assert window_counts(breaker) == (2, 2)
    await run(breaker, "F")
    assert breaker.state is OPEN


async def test_time_window_drops_only_the_expired_part() -> None:
    """As time passes, early outcomes leave the window while later ones stay."""
    clock = FakeClock()
    breaker = CircuitBreaker(failure_rate=0.9, window_duration=10.0, min_calls=50, clock=clock)
    await run(breaker, "FF")
    clock.advance(6.0)
    await run(breaker, "SSS")
    assert window_counts(breaker) == (5, 2)
    clock.advance(4.5)
    assert window_counts(breaker) == (3, 0)
    clock.advance(1000.0)
    assert window_counts(breaker) == (0, 0)


async def test_time_window_starts_empty_after_recovery() -> None:
    """A time-window breaker that closes again forgets the failures that opened it."""
    clock = FakeClock()
    breaker = CircuitBreaker(
        failure_rate=0.5, window_duration=60.0, min_calls=2, reset_timeout=5.0, clock=clock
    )
    await run(breaker, "FF")
    assert breaker.state is OPEN
    clock.advance(5.0)
    await run(breaker, "S")
    assert breaker.state is CLOSED
    assert window_counts(breaker) == (0, 0)
    await run(breaker, "F")
    assert breaker.state is CLOSED  # one call in the window: below min_calls


async def test_time_window_min_calls_defaults_to_ten() -> None:
    """A time window without min_calls judges from the tenth call."""
    clock = FakeClock()
    breaker = CircuitBreaker(failure_rate=1.0, window_duration=60.0, clock=clock)
    await run(breaker, "F" * 9)
    assert breaker.state is CLOSED
    await run(breaker, "F")
    assert breaker.state is OPEN


async def test_time_window_with_slow_calls() -> None:
    """Slow calls count in a time window, and expire with it."""
    clock = FakeClock()
    breaker = CircuitBreaker(
        slow_call_duration=1.0,
        slow_call_rate=1.0,
        window_duration=10.0,
        min_calls=2,
        clock=clock,
    )
    await timed(breaker, clock, 2.0)
    clock.advance(10.0)
    await timed(breaker, clock, 2.0)
    assert breaker.state is CLOSED  # the first slow call expired: 1 call in the window
    await timed(breaker, clock, 2.0)
    assert breaker.state is OPEN


# --- construction -------------------------------------------------------------------

WINDOW_PARAMETERS: list[tuple[str, Any]] = [
    ("failure_rate", 0.5),
    ("window", 10),
    ("window_duration", 5.0),
    ("min_calls", 3),
    ("slow_call_duration", 1.0),
    ("slow_call_rate", 0.5),
]


@pytest.mark.parametrize(("param", "value"), WINDOW_PARAMETERS)
def test_failure_threshold_cannot_be_mixed_with_window_parameters(param: str, value: Any) -> None:
    """failure_threshold together with any window parameter raises ValueError naming both."""
    with pytest.raises(ValueError, match="failure_threshold") as info:
        CircuitBreaker(failure_threshold=3, **{param: value})
    assert param in str(info.value)


def test_window_and_window_duration_are_exclusive() -> None:
    """Passing both window and window_duration raises ValueError naming both."""
    with pytest.raises(ValueError, match="window=") as info:
        CircuitBreaker(window=10, window_duration=5.0)
    assert "window_duration" in str(info.value)


@pytest.mark.parametrize(("window", "min_calls"), [(10, 11), (1, 2)])
def test_min_calls_cannot_exceed_the_window(window: int, min_calls: int) -> None:
    """min_calls larger than a count window raises ValueError naming min_calls."""
    with pytest.raises(ValueError, match="min_calls") as info:
        CircuitBreaker(window=window, min_calls=min_calls)
    assert f"window={window}" in str(info.value)


def test_min_calls_above_the_default_window_is_rejected() -> None:
    """min_calls alone is checked against the default window of 100."""
    with pytest.raises(ValueError, match="min_calls"):
        CircuitBreaker(min_calls=101)


async def test_min_calls_may_equal_the_window() -> None:
    """min_calls equal to the window size is allowed, and judges from the window's last call."""
    breaker = CircuitBreaker(failure_rate=1.0, window=10, min_calls=10, clock=FakeClock())
    await run(breaker, "F" * 9)
    assert breaker.state is CLOSED
    await run(breaker, "F")
    assert breaker.state is OPEN


async def test_time_window_has_no_min_calls_ceiling() -> None:
    """A time window accepts any positive min_calls and keeps it: 9,999 failures in a row
    leave min_calls=10_000 closed, the 10,000th opens it."""
    breaker = CircuitBreaker(
        failure_rate=1.0, window_duration=1.0, min_calls=10_000, clock=FakeClock()
    )
    await run(breaker, "F" * 9_999)
    assert breaker.state is CLOSED
    await run(breaker, "F")
    assert breaker.state is OPEN


def test_shared_storage_refuses_window_mode() -> None:
    """storage= with window parameters raises ValueError naming storage."""
    storage = pybreaker.CircuitMemoryStorage(pybreaker.STATE_CLOSED)
    with pytest.raises(ValueError, match="storage"):
        CircuitBreaker(failure_rate=0.5, storage=storage)
