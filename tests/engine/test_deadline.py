"""
`resilient.deadline()`: a deadline made visible to the code inside (remaining_time(),
nested timeouts, retries, the header sent on) without being enforced.

Every value is exact: the deadlines run on `FakeClock`s moved by hand.
"""

from __future__ import annotations

import math

import pytest

from resilient import Timeout, deadline, remaining_time
from resilient.testing import FakeClock


def test_deadline_counts_down_and_ends_with_the_block() -> None:
    """Inside the block remaining_time() counts down from `seconds`; outside there is none."""
    clock = FakeClock(start=20.0)
    assert remaining_time() is None
    with deadline(5.0, clock=clock):
        assert remaining_time() == 5.0
        clock.advance(1.5)
        assert remaining_time() == 3.5
        clock.advance(10.0)
        assert remaining_time() == 0.0  # spent, never negative; nothing is cancelled
    assert remaining_time() is None


@pytest.mark.parametrize(("outer", "inner", "left"), [(2.0, 5.0, 1.5), (5.0, 2.0, 2.0)])
def test_nested_deadline_never_outlasts_the_enclosing_one(
    outer: float, inner: float, left: float
) -> None:
    """A nested deadline() keeps the shorter of its own budget and what the outer one has left."""
    clock = FakeClock()
    with deadline(outer, clock=clock):
        clock.advance(0.5)
        with deadline(inner, clock=clock):
            assert remaining_time() == left
        assert remaining_time() == outer - 0.5


def test_nested_deadline_is_capped_across_clocks() -> None:
    """An enclosing deadline on another clock caps the inner one by the time it has left."""
    outer_clock, inner_clock = FakeClock(start=1000.0), FakeClock(start=3.0)
    with deadline(2.0, clock=outer_clock), deadline(60.0, clock=inner_clock):
        assert remaining_time() == 2.0
        inner_clock.advance(0.5)
        assert remaining_time() == 1.5


async def test_deadline_inside_a_timeout_is_capped_by_it() -> None:
    """Under a Timeout with 1.5 s left, deadline(10) leaves 1.5 s, not 10."""
    clock = FakeClock()
    async with Timeout(1.5, clock=clock):
        with deadline(10.0, clock=clock):
            assert remaining_time() == 1.5


async def test_timeout_inside_a_deadline_is_capped_by_it() -> None:
    """A Timeout nested in deadline(1) gets 1 s, though it asks for 5."""
    clock = FakeClock()
    with deadline(1.0, clock=clock):
        async with Timeout(5.0, clock=clock):
            assert remaining_time() == 1.0


def test_zero_is_a_spent_deadline() -> None:
    """deadline(0) is allowed: there is no time left inside."""
    with deadline(0, clock=FakeClock()):
        assert remaining_time() == 0.0


@pytest.mark.parametrize("seconds", [-1.0, math.inf, math.nan])
def test_bad_seconds_is_a_value_error_naming_it(seconds: float) -> None:
    """A negative or non-finite budget fails at once, naming `seconds`."""
    with pytest.raises(ValueError, match="seconds"), deadline(seconds):
        pass


def test_clock_is_keyword_only() -> None:
    """The clock is passed by name: deadline(5, clock) is a TypeError, not a clock."""
    with pytest.raises(TypeError), deadline(5.0, FakeClock()):  # type: ignore[call-arg]
        pass
