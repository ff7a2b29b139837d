"""
Tests for `RetryBudget`, alone and as `Retry(budget=...)`.
"""

from __future__ import annotations

import math
from typing import Any

import pytest
import tenacity

from resilient import Rejected, RejectionReason, Retry, RetryBudget, RetryBudgetStatistics
from resilient.testing import FakeClock, capture_events


class AlwaysFails:
    """
    An async callable that raises a fresh error on every call.
    """

    def __init__(self) -> None:
        self.errors: list[ValueError] = []

    async def __call__(self) -> None:
        self.errors.append(ValueError(f"failure {len(self.errors) + 1}"))
        raise self.errors[-1]


async def succeed() -> str:
    return "ok"


def withdraw_all(budget: RetryBudget, limit: int = 1000) -> int:
    """
    Withdraw until the budget refuses; return how many withdrawals succeeded.
    """
    taken = 0
    while taken < limit and budget.try_withdraw():
        taken += 1
    return taken


# -- the budget alone -----------------------------------------------------------------


def test_no_calls_no_floor_means_no_retries() -> None:
    """With `min_per_second=0` and no calls, not a single retry is allowed."""
    budget = RetryBudget(ratio=0.1, min_per_second=0, clock=FakeClock())
    assert budget.try_withdraw() is False
    assert budget.statistics().rejected == 1


def test_ratio_caps_withdrawals() -> None:
    """Ratio 0.1 allows 10 retries after 100 calls, and not an 11th."""
    budget = RetryBudget(ratio=0.1, min_per_second=0, clock=FakeClock())
    for _ in range(100):
        budget.deposit()
    assert withdraw_all(budget) == 10
    assert budget.statistics() == RetryBudgetStatistics(
        calls=100, retries=10, available=0.0, rejected=1
    )


def test_floor_allows_retries_without_traffic() -> None:
    """`min_per_second` grants that many retries per second of `ttl` with no calls."""
    budget = RetryBudget(ratio=0.1, min_per_second=2, ttl=5, clock=FakeClock())
    assert withdraw_all(budget) == 10


def test_refused_withdrawal_takes_nothing() -> None:
    """A refused withdrawal leaves the budget unchanged, so a deposit can unlock one."""
    budget = RetryBudget(ratio=0.5, min_per_second=0, clock=FakeClock())
    budget.deposit()
    assert budget.try_withdraw() is False
    budget.deposit()
    assert budget.try_withdraw() is True
    assert budget.statistics().retries == 1


def test_window_expiry_restores_budget() -> None:
    """Calls and retries older than `ttl` leave the window, freeing the budget."""
    clock = FakeClock()
    budget = RetryBudget(ratio=0.1, min_per_second=0, ttl=10, clock=clock)
    for _ in range(100):
        budget.deposit()
    assert withdraw_all(budget) == 10

    clock.advance(9.5)  # still inside the window
    assert budget.statistics().calls == 100
    assert budget.try_withdraw() is False

    clock.advance(0.5)  # the calls from t=0 have left the window
    stats = budget.statistics()
    assert (stats.calls, stats.retries) == (0, 0)
    assert budget.try_withdraw() is False  # no traffic, no floor: still nothing
    for _ in range(20):
        budget.deposit()
    assert withdraw_all(budget) == 2


def test_window_slides_gradually() -> None:
    """Only the calls that fell out of the window are forgotten."""
    clock = FakeClock()
    budget = RetryBudget(ratio=1.0, min_per_second=0, ttl=10, clock=clock)
    for _ in range(3):
        budget.deposit()
    clock.advance(5)
    for _ in range(4):
        budget.deposit()
    assert budget.statistics().calls == 7
    clock.advance(5)
    assert budget.statistics().calls == 4
    clock.advance(5)
    assert budget.statistics().calls == 0


def test_long_idle_gap_clears_everything() -> None:
    """After an idle gap much longer than `ttl` the window is empty, not corrupted."""
    clock = FakeClock(start=3.0)
    budget = RetryBudget(ratio=1.0, min_per_second=0, ttl=1, clock=clock)
    for _ in range(5):
        budget.deposit()
    assert budget.try_withdraw()
    clock.advance(1000)
    stats = budget.statistics()
    assert (stats.calls, stats.retries, stats.available) == (0, 0, 0.0)
    budget.deposit()
    assert budget.try_withdraw()
    assert not budget.try_withdraw()


def test_repr_shows_live_state() -> None:
    """The repr shows the configuration and the window's counts."""
    budget = RetryBudget(ratio=0.2, min_per_second=0, ttl=5, clock=FakeClock())
    for _ in range(10):
        budget.deposit()
    budget.try_withdraw()
    assert repr(budget) == (
        "<RetryBudget ratio=0.2 min_per_second=0 ttl=5s calls=10 retries=1 available=1.0>"
    )


# -- the budget in a Retry ------------------------------------------------------------


async def test_retry_budget_caps_retries_of_one_call() -> None:
    """After 100 calls a 0.1 budget lets one failing call retry only 10 times."""
    clock = FakeClock()
    budget = RetryBudget(ratio=0.1, min_per_second=0, clock=clock)
    retry = Retry(attempts=50, wait=tenacity.wait_none(), budget=budget, clock=clock)
    for _ in range(100):
        assert await retry.call(succeed) == "ok"
    failing = AlwaysFails()
    with (
        capture_events(Rejected) as rejected,
        pytest.raises(ValueError, match="failure 11") as info,
    ):
        await retry.call(failing)
    assert info.value is failing.errors[-1]
    assert len(failing.errors) == 11  # the first attempt and 10 retries
    stats = retry.statistics()
    assert (stats.retries, stats.budget_rejections, stats.gave_up) == (10, 1, 1)
    assert len(rejected) == 1
    event = rejected[0]
    assert isinstance(event, Rejected)
    assert event.reason is RejectionReason.RETRY_BUDGET
    assert event.kind == "retry"


async def test_retry_budget_prevents_retry_storm() -> None:
    """During an outage, retries stay within the ratio of calls made."""
    clock = FakeClock()
    budget = RetryBudget(ratio=0.1, min_per_second=0, clock=clock)
    retry = Retry(attempts=3, wait=tenacity.wait_none(), budget=budget, clock=clock)
    failing = AlwaysFails()
    for _ in range(100):
        with pytest.raises(ValueError, match="failure"):
            await retry.call(failing)
    # Without the budget this would be 300 attempts.
    assert len(failing.errors) == 110
    assert retry.statistics().retries == 10
    # Every call ends refused: 90 on their first retry, 10 on their second.
    assert retry.statistics().budget_rejections == 100
    assert budget.statistics().retries == 10


async def test_budget_shared_between_policies() -> None:
    """Two Retry policies sharing a budget draw from the same pool."""
    clock = FakeClock()
    budget = RetryBudget(ratio=1.0, min_per_second=0, clock=clock)
    first = Retry(attempts=5, wait=tenacity.wait_none(), budget=budget, clock=clock)
    second = Retry(attempts=5, wait=tenacity.wait_none(), budget=budget, clock=clock)
    for _ in range(2):
        assert await first.call(succeed) == "ok"
    failing = AlwaysFails()
    with pytest.raises(ValueError, match="failure"):
        await second.call(failing)
    # Three calls deposited in all: the failing call may retry three times, no more.
    assert len(failing.errors) == 4
    assert budget.statistics().retries == 3


async def test_budget_window_expiry_in_retry() -> None:
    """Once spent retries leave the window, a Retry may retry again."""
    clock = FakeClock()
    # A floor of one retry per 10 s window, and 0.1 per call on top.
    budget = RetryBudget(ratio=0.1, min_per_second=0.1, ttl=10, clock=clock)
    retry = Retry(attempts=2, wait=tenacity.wait_none(), budget=budget, clock=clock)
    first = AlwaysFails()
    with pytest.raises(ValueError, match="failure 2"):
        await retry.call(first)  # 1 + 0.1 available: retried once
    refused = AlwaysFails()
    with pytest.raises(ValueError, match="failure 1"):
        await retry.call(refused)  # 1 + 0.2 - 1 available: refused
    assert retry.statistics().budget_rejections == 1

    clock.advance(10)
    assert budget.statistics().retries == 0
    again = AlwaysFails()
    with pytest.raises(ValueError, match="failure 2"):
        await retry.call(again)  # a fresh window: retried once more
    assert retry.statistics().retries == 2
    assert retry.statistics().budget_rejections == 1


# -- misconfiguration ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "error", "param"),
    [
        ({"ratio": 0}, ValueError, "ratio"),
        ({"ratio": -0.1}, ValueError, "ratio"),
        ({"ratio": 1.5}, ValueError, "ratio"),
        ({"ratio": math.nan}, ValueError, "ratio"),
        ({"ratio": "0.1"}, TypeError, "ratio"),
        ({"ratio": True}, TypeError, "ratio"),
        ({"min_per_second": -1}, ValueError, "min_per_second"),
        ({"min_per_second": math.inf}, ValueError, "min_per_second"),
        ({"min_per_second": "10"}, TypeError, "min_per_second"),
        ({"ttl": 0}, ValueError, "ttl"),
        ({"ttl": -5}, ValueError, "ttl"),
        ({"ttl": math.nan}, ValueError, "ttl"),
        ({"ttl": None}, TypeError, "ttl"),
        ({"clock": "system"}, TypeError, "clock"),
    ],
)
def test_misconfiguration_names_parameter(
    kwargs: dict[str, Any], error: type[Exception], param: str
) -> None:
    """A bad parameter fails at construction with an error naming it."""
    with pytest.raises(error, match=rf"\b{param}\b"):
        RetryBudget(**kwargs)


class _CountingBudget(RetryBudget):
    """A user's budget counting its deposits (with a __dict__)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.deposits = 0

    def deposit(self) -> None:
        self.deposits += 1
        super().deposit()


class _SlottedBudget(RetryBudget):
    """A user's budget overriding `deposit`, without a __dict__."""

    __slots__ = ()

    def deposit(self) -> None:
        super().deposit()
        super().deposit()


async def test_a_subclass_deposit_is_the_one_called() -> None:
    """`deposit` overridden by a subclass is what `Retry` calls, and its `super()` counts
    the call: the fast deposit the budget sets for itself shadows no override."""
    counting = _CountingBudget(clock=FakeClock())
    assert await Retry(budget=counting).call(succeed) == "ok"
    assert counting.deposits == 1
    assert counting.statistics().calls == 1
    slotted = _SlottedBudget(clock=FakeClock())
    assert await Retry(budget=slotted).call(succeed) == "ok"
    assert slotted.statistics().calls == 2
