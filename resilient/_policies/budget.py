"""
A retry budget: retries may add at most a share of recent traffic.

Per-call retry limits still let an outage multiply load by the number of attempts; a
budget shared by all calls to one dependency caps retries at `ratio` of the calls made in
the last `ttl` seconds, plus a floor of `min_per_second` so a quiet client can still
retry. This is Finagle's `RetryBudget` (deposit per call, withdraw per retry, over a
sliding window) and the same idea as Envoy's retry budgets.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .._engine.clock import Clock
from .._engine.validate import check_clock, check_fraction, check_seconds
from .._engine.window import BucketedWindow

__all__ = ["RetryBudget", "RetryBudgetStatistics"]

_CALLS, _RETRIES = 0, 1  # the window's counters


@dataclass(frozen=True, slots=True)
class RetryBudgetStatistics:
    """
    A snapshot of a `RetryBudget`: the window's calls and retries, and what is left.
    """

    calls: int
    retries: int
    available: float
    rejected: int


class RetryBudget:
    """
    Cap retries to a fraction of recent calls; share one instance per dependency.

    Args:
        ratio: Retries allowed per call made, in (0, 1]; 0.1 adds at most 10% load.
        min_per_second: Retries always allowed per second regardless of traffic.
        ttl: Seconds of history the window covers.
        clock: Time source (default: the system clock).

    Raises:
        ValueError: A parameter is out of range.
    """

    __slots__ = ("_clock", "_rejected", "_window", "deposit", "min_per_second", "ratio", "ttl")

    deposit: Callable[[], None]
    """Record one call (not a retry) made to the dependency."""

    def __init__(
        self,
        ratio: float = 0.1,
        *,
        min_per_second: float = 10.0,
        ttl: float = 10.0,
        clock: Clock | None = None,
    ) -> None:
        self.ratio = check_fraction("RetryBudget", "ratio", ratio)
        self.min_per_second = check_seconds(
            "RetryBudget", "min_per_second", min_per_second, allow_zero=True
        )
        self.ttl = check_seconds("RetryBudget", "ttl", ttl)
        self._clock = check_clock("RetryBudget", clock)
        self._window = BucketedWindow(self.ttl, 2, self._clock.monotonic)
        self._rejected = 0
        # The window's own `add`, not a method calling it: every call of every `Retry`
        # sharing the budget deposits, and a Python frame more costs it microseconds
        # when its caches are cold (as they are between two requests of a client).
        # Set through the slot itself, not by name: a subclass's own `deposit` method stays
        # the one called (an attribute set by name would shadow it, or fail without a
        # __dict__), and its ``super().deposit()`` is this.
        _DEPOSIT_SLOT.__set__(self, functools.partial(self._window.add, _CALLS))

    def _available(self) -> float:
        calls, retries = self._window.sums
        return self.min_per_second * self.ttl + self.ratio * calls - retries

    def try_withdraw(self) -> bool:
        """
        Take one retry from the budget; False (and nothing taken) when it is spent.
        """
        self._window.advance()
        if self._available() < 1.0:
            self._rejected += 1
            return False
        self._window.add(_RETRIES)
        return True

    def statistics(self) -> RetryBudgetStatistics:
        """
        Return a snapshot of the current window.
        """
        self._window.advance()
        calls, retries = self._window.sums
        return RetryBudgetStatistics(
            calls=calls,
            retries=retries,
            available=max(0.0, self._available()),
            rejected=self._rejected,
        )

    def __repr__(self) -> str:
        stats = self.statistics()
        return (
            f"<RetryBudget ratio={self.ratio:g} min_per_second={self.min_per_second:g}"
            f" ttl={self.ttl:g}s calls={stats.calls} retries={stats.retries}"
            f" available={stats.available:.1f}>"
        )


_DEPOSIT_SLOT: Any = RetryBudget.__dict__["deposit"]  # the slot's descriptor
