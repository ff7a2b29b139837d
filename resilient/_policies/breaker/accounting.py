"""
How a circuit breaker counts outcomes while closed.

Three accountings share one small interface (`record`, `reset`, `tripped`):

- `Consecutive`: trips after N failures in a row (pybreaker's model).
- `CountWindow`: the last N calls, in a ring buffer with running totals (resilience4j's
  COUNT_BASED sliding window): O(1) per call.
- `TimeWindow`: the calls of the last T seconds, in the engine's bucketed window
  (`_engine.window`; resilience4j's TIME_BASED window aggregates per epoch the same way).

The windowed ones trip on a failure rate or a slow-call rate once `min_calls` is reached.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from ..._engine.validate import check_seconds
from ..._engine.window import BucketedWindow

__all__ = ["Accounting", "Consecutive", "CountWindow", "TimeWindow", "WindowTotals", "check_window"]


@dataclass(frozen=True, slots=True)
class WindowTotals:
    """
    What the accounting holds now: calls, failures and slow calls.
    """

    calls: int
    failures: int
    slow_calls: int


class Accounting:
    """
    The interface the breaker uses; subclasses decide when to trip.
    """

    __slots__ = ()

    def record(self, failed: bool, slow: bool) -> bool:
        """
        Count one finished call; True when the breaker should open.
        """
        raise NotImplementedError

    def reset(self) -> None:
        """
        Forget every recorded call (on closing the breaker).
        """
        raise NotImplementedError

    def totals(self) -> WindowTotals:
        """
        Return the counts currently held.
        """
        raise NotImplementedError


class Consecutive(Accounting):
    """
    Open after `threshold` failures in a row; a success resets the run.
    """

    __slots__ = ("failures", "threshold")

    def __init__(self, threshold: int) -> None:
        self.threshold = threshold
        self.failures = 0

    def record(self, failed: bool, slow: bool) -> bool:  # noqa: ARG002  # no slow calls here
        if failed:
            self.failures += 1
            return self.failures >= self.threshold
        self.failures = 0
        return False

    def reset(self) -> None:
        self.failures = 0

    def totals(self) -> WindowTotals:
        return WindowTotals(calls=self.failures, failures=self.failures, slow_calls=0)


class _RateRule:
    """
    The thresholds a window is judged by.
    """

    __slots__ = ("failure_rate", "min_calls", "slow_call_rate")

    def __init__(self, failure_rate: float, slow_call_rate: float, min_calls: int) -> None:
        self.failure_rate = failure_rate
        self.slow_call_rate = slow_call_rate
        self.min_calls = min_calls

    def exceeded(self, calls: int, failures: int, slow: int) -> bool:
        if calls < self.min_calls:
            return False
        # Compare rates, not products: 0.07 * 100 is 7.000000000000001, so 7 failures in
        # 100 calls would miss a 0.07 threshold; the quotient rounds as the literal does.
        return failures / calls >= self.failure_rate or slow / calls >= self.slow_call_rate


class CountWindow(Accounting):
    """
    The outcomes of the last `size` calls.
    """

    __slots__ = ("_failures", "_filled", "_index", "_outcomes", "_rule", "_slow")

    def __init__(self, size: int, rule: _RateRule) -> None:
        self._rule = rule
        self._outcomes = bytearray(size)  # bit 0: failed, bit 1: slow
        self._index = 0
        self._filled = 0
        self._failures = 0
        self._slow = 0

    def record(self, failed: bool, slow: bool) -> bool:
        size = len(self._outcomes)
        old = self._outcomes[self._index]
        new = failed | (slow << 1)
        self._outcomes[self._index] = new
        self._index = (self._index + 1) % size
        if self._filled < size:
            self._filled += 1
        self._failures += (new & 1) - (old & 1)
        self._slow += (new >> 1) - (old >> 1)
        return self._rule.exceeded(self._filled, self._failures, self._slow)

    def reset(self) -> None:
        self._outcomes[:] = bytes(len(self._outcomes))
        self._index = self._filled = self._failures = self._slow = 0

    def totals(self) -> WindowTotals:
        return WindowTotals(calls=self._filled, failures=self._failures, slow_calls=self._slow)


MIN_WINDOW = 1e-6
"""The shortest time window, in seconds: a shorter one's buckets divide by zero (5e-324)."""


def check_window(owner: str, param: str, value: object) -> float:
    """
    Return `value` as seconds if it is a usable `TimeWindow` duration (internal).

    Raises:
        ValueError: Not finite, or shorter than `MIN_WINDOW`.
        TypeError: Not a number.
    """
    seconds = check_seconds(owner, param, value)
    if seconds < MIN_WINDOW:
        raise ValueError(f"{owner}({param}={value!r}): {param} must be >= {MIN_WINDOW:g} seconds")
    return seconds


class TimeWindow(Accounting):
    """
    The outcomes of the calls that finished in the last `duration` seconds.
    """

    __slots__ = ("_rule", "_window")

    def __init__(self, duration: float, rule: _RateRule, now: Callable[[], float]) -> None:
        self._rule = rule
        self._window = BucketedWindow(duration, 3, now)  # calls, failures, slow calls

    def record(self, failed: bool, slow: bool) -> bool:
        window = self._window
        bucket, sums = window.advance(), window.sums
        for i, count in enumerate((1, int(failed), int(slow))):
            bucket[i] += count
            sums[i] += count
        calls, failures, slow_calls = sums
        return self._rule.exceeded(calls, failures, slow_calls)

    def reset(self) -> None:
        self._window.reset()

    def totals(self) -> WindowTotals:
        self._window.advance()
        calls, failures, slow_calls = self._window.sums
        return WindowTotals(calls=calls, failures=failures, slow_calls=slow_calls)


def rate_rule(failure_rate: float, slow_call_rate: float, min_calls: int) -> _RateRule:
    """
    Build the thresholds a window trips on.
    """
    return _RateRule(failure_rate, slow_call_rate, min_calls)
