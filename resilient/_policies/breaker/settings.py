"""
The circuit breaker's parameters, turned into what it runs on.

An outcome accounting for the window parameters, the store `storage=` names, and the
statistics snapshot.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..._engine.clock import Clock
from ..._engine.validate import check_fraction, check_int
from .accounting import Accounting, CountWindow, TimeWindow, check_window, rate_rule
from .store import BreakerStore, CircuitState

__all__ = ["BreakerStatistics", "Rules", "store_of", "window_accounting"]

# A window's settings as a store needs them: window, window_duration, failure_rate,
# slow_call_rate, min_calls.
Rules = tuple[int | None, float | None, float, float, int]


@dataclass(frozen=True, slots=True)
class BreakerStatistics:
    """
    A snapshot of a `CircuitBreaker`.

    Attributes:
        state: The current state.
        calls: Admitted calls that have finished: successes + failures + ignored.
        successes: Admitted calls that succeeded.
        failures: Admitted calls that failed and counted as failures.
        ignored: Admitted calls that ended in an excluded exception or were cancelled.
        rejections: Calls refused with `CircuitOpenError`.
        slow_calls: Admitted calls at least `slow_call_duration` long.
        window_calls: Calls in the current window (consecutive mode: the failure run).
        window_failures: Failures in the current window.
        opened: Times the breaker opened.
        retry_in: Seconds until an open breaker lets a probe through (0 otherwise).
    """

    state: CircuitState
    calls: int
    successes: int
    failures: int
    ignored: int
    rejections: int
    slow_calls: int
    window_calls: int
    window_failures: int
    opened: int
    retry_in: float


def window_accounting(
    owner: str,
    *,
    failure_rate: float | None,
    window: int | None,
    window_duration: float | None,
    min_calls: int | None,
    slow_call_rate: float | None,
    clock: Clock,
) -> tuple[Accounting, Rules]:
    rate = check_fraction(owner, "failure_rate", 0.5 if failure_rate is None else failure_rate)
    slow_rate = check_fraction(
        owner, "slow_call_rate", 1.0 if slow_call_rate is None else slow_call_rate
    )
    if window is not None and window_duration is not None:
        raise ValueError(f"{owner}(window=..., window_duration=...): choose a count or a duration")
    if window_duration is not None:
        duration = check_window(owner, "window_duration", window_duration)
        least = check_int(owner, "min_calls", 10 if min_calls is None else min_calls, minimum=1)
        timed = TimeWindow(duration, rate_rule(rate, slow_rate, least), clock.monotonic)
        return timed, (None, duration, rate, slow_rate, least)
    size = check_int(owner, "window", 100 if window is None else window, minimum=1)
    least = check_int(
        owner, "min_calls", min(10, size) if min_calls is None else min_calls, minimum=1
    )
    if least > size:
        raise ValueError(f"{owner}(min_calls={least}): min_calls can't exceed window={size}")
    counted = CountWindow(size, rate_rule(rate, slow_rate, least))
    return counted, (size, None, rate, slow_rate, least)


def store_of(storage: object, clock: Clock) -> BreakerStore | None:
    """
    The store `storage=` names: itself, or pybreaker's storage behind its adapter.
    """
    if storage is None or isinstance(storage, BreakerStore):
        return storage
    try:
        from .pybreaker_store import PybreakerStore  # noqa: PLC0415  # optional extra
    except ImportError as exc:
        raise TypeError(
            "CircuitBreaker(storage=...): expected a BreakerStore (RedisBreakerStore) or a"
            f' pybreaker storage (pip install "resilient[pybreaker]"), got {storage!r}'
        ) from exc
    return PybreakerStore(storage, clock)
