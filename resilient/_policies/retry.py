"""
Retry with jittered backoff, on tenacity's vocabulary.

Users pass tenacity's `wait_*`, `stop_*` and `retry_*` strategies; `Retry` evaluates them
with a `tenacity.RetryCallState`, but only after a failure: the first attempt is a plain
``await`` (tenacity's own `AsyncRetrying` loop costs ~19 us a call even when nothing
fails). After the last attempt the last exception is re-raised unchanged, or the last
result returned when results were being retried.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, TypeVar

import tenacity
from tenacity.retry import retry_base
from tenacity.stop import stop_base
from tenacity.wait import wait_base

from .._engine.clock import Clock
from .._engine.context import remaining_time, retries_allowed
from .._engine.events import Hook, Rejected, RejectionReason, RetryScheduled
from .._engine.policy import Args, AsyncFn, Kwargs, Policy
from .._engine.validate import check_int, check_seconds, error_matcher, retryable_by_default
from .budget import RetryBudget

__all__ = ["Retry", "RetryStatistics", "set_instant_retries"]

T = TypeVar("T")

_instant = False


def set_instant_retries(enabled: bool) -> None:
    """
    Make every `Retry` skip its sleeps, for test suites.

    The delays are still computed and reported in events. Prefer
    `resilient.testing.instant_retries()`.
    """
    global _instant  # noqa: PLW0603  # one process-wide switch, like stamina.set_testing
    _instant = bool(enabled)


def instant_retries_enabled() -> bool:
    """
    Whether `set_instant_retries(True)` is in force.
    """
    return _instant


@dataclass(frozen=True, slots=True)
class RetryStatistics:
    """
    A snapshot of a `Retry`'s counters.

    Attributes:
        calls: Calls that entered the policy.
        retries: Attempts made after the first.
        gave_up: Calls that failed after exhausting their attempts (or budget, or time).
        budget_rejections: Retries refused by the retry budget.
    """

    calls: int
    retries: int
    gave_up: int
    budget_rejections: int


class Retry(Policy):
    """
    Call again after a failure, waiting between attempts.

    Args:
        attempts: Attempts in all (first included), >= 1; None for no limit (then
            `stop` must be given).
        on: What to retry: exception types, a predicate over the exception, or a
            tenacity ``retry_*`` strategy (which may also look at results). Default:
            any `Exception` except a `RejectedError` (open circuit, full bulkhead) or a
            programming error (`PROGRAMMING_ERRORS`: ``TypeError``, ...), which is
            retried only when named here (``on=(OSError, TypeError)``) or a predicate
            or strategy says so. A string is a TypeError: pass the class.
            `asyncio.CancelledError` is never retried.
        on_result: A predicate over results; True means retry. After the last attempt the
            last result is returned.
        wait: A tenacity ``wait_*`` strategy. Default: full-jitter exponential backoff,
            ``wait_random_exponential(multiplier=0.1, max=10)``.
        stop: A tenacity ``stop_*`` strategy, in addition to `attempts`.
        budget: A `RetryBudget` shared with other calls to the same dependency.
        retry_after_cap: Longest wait, in seconds, granted to an exception's
            ``retry_after`` attribute (a server's ``Retry-After``).
        name: A label for events and metrics (default ``"retry"``).
        clock: Time source (default: the system clock).
        hooks: Event hooks for this policy only.

    Raises:
        ValueError: A parameter is out of range (e.g. ``attempts=0``).
        TypeError: A parameter has the wrong type.
    """

    kind = "retry"
    __slots__ = (
        "_budget",
        "_budget_rejections",
        "_calls",
        "_gave_up",
        "_on",
        "_on_result",
        "_retries",
        "_retrying",
        "_stop",
        "_strategy",
        "_wait",
        "attempts",
        "retry_after_cap",
    )

    def __init__(
        self,
        attempts: int | None = 3,
        *,
        on: Any = None,
        on_result: Callable[[Any], bool] | None = None,
        wait: wait_base | Callable[[tenacity.RetryCallState], float] | None = None,
        stop: stop_base | Callable[[tenacity.RetryCallState], bool] | None = None,
        budget: RetryBudget | None = None,
        retry_after_cap: float = 60.0,
        name: str | None = None,
        clock: Clock | None = None,
        hooks: Iterable[Hook] | None = None,
    ) -> None:
        super().__init__(name=name, clock=clock, hooks=hooks)
        if attempts is None and stop is None:
            raise ValueError("Retry(attempts=None): give stop=... or a number of attempts")
        self.attempts = (
            None if attempts is None else check_int("Retry", "attempts", attempts, minimum=1)
        )
        self._strategy: retry_base | None = on if isinstance(on, retry_base) else None
        self._on = (
            retryable_by_default
            if on is None or self._strategy
            else error_matcher("Retry", "on", on, spare_programming_errors=True)
        )
        if on_result is not None and self._strategy is not None:
            raise ValueError(
                "Retry(on_result=...): a tenacity retry_* strategy in on= already decides on"
                " results; use retry_if_result there or drop one of them"
            )
        if on_result is not None and not callable(on_result):
            raise TypeError(f"Retry(on_result=...): expected a predicate, got {on_result!r}")
        self._on_result = on_result
        self._wait = _checked_strategy("wait", wait, wait_base) or tenacity.wait_random_exponential(
            multiplier=0.1, max=10.0
        )
        self._stop = _checked_strategy("stop", stop, stop_base)
        if budget is not None and not isinstance(budget, RetryBudget):
            raise TypeError(f"Retry(budget=...): expected a RetryBudget, got {budget!r}")
        self._budget = budget
        self.retry_after_cap = check_seconds(
            "Retry", "retry_after_cap", retry_after_cap, allow_zero=True
        )
        # Handed to strategies as retry_state.retry_object, for those that look at it.
        self._retrying = tenacity.AsyncRetrying(
            stop=self._stop or tenacity.stop_never, wait=self._wait, sleep=self._clock.sleep
        )
        self._calls = self._retries = self._gave_up = self._budget_rejections = 0

    async def _run(self, fn: AsyncFn[T], args: Args, kwargs: Kwargs) -> T:
        self._calls += 1
        if self._budget is not None:
            self._budget.deposit()
        started = self._clock.monotonic()
        error: Exception | None = None
        result: Any = None
        try:
            result = await fn(*args, **kwargs)
        except Exception as exc:
            if self._strategy is None and not self._on(exc):
                raise
            error = exc
        else:
            if self._strategy is None and (self._on_result is None or not self._on_result(result)):
                return result  # type: ignore[no-any-return]  # the call's T
        # Retried outside the except block: later attempts must not run "during the
        # handling" of this error, or the error re-raised at the end gets it as context.
        return await self._retry(fn, args, kwargs, started, error, result)

    async def _retry(  # noqa: PLR0917  # the call plus the first attempt's outcome
        self,
        fn: AsyncFn[T],
        args: Args,
        kwargs: Kwargs,
        started: float,
        error: Exception | None,
        result: Any,
    ) -> T:
        state = tenacity.RetryCallState(self._retrying, fn=None, args=(), kwargs={})
        state.start_time = started
        attempt = 1
        while True:
            _record(state, attempt, error, result, self._clock.monotonic())
            if not self._should_retry(state, error, result):
                return _outcome(error, result)  # type: ignore[no-any-return]  # the attempt's T
            if not await self._pause(state, error):
                self._gave_up += 1
                return _outcome(error, result)  # type: ignore[no-any-return]  # the attempt's T
            attempt += 1
            self._retries += 1
            state.prepare_for_next_attempt()
            try:
                result, error = await fn(*args, **kwargs), None
            except Exception as exc:  # noqa: BLE001  # any attempt error is judged by `on`
                result, error = None, exc

    def _should_retry(
        self, state: tenacity.RetryCallState, error: Exception | None, result: Any
    ) -> bool:
        if self._strategy is not None:
            return bool(self._strategy(state))
        if error is not None:
            return self._on(error)
        return self._on_result is not None and bool(self._on_result(result))

    async def _pause(self, state: tenacity.RetryCallState, error: Exception | None) -> bool:
        """
        Wait before the next attempt; False when no next attempt may be made.
        """
        attempt = state.attempt_number
        if not retries_allowed():
            return False  # inside no_retries(): this call runs once
        if self.attempts is not None and attempt >= self.attempts:
            return False
        # The wait before the stop strategy, as tenacity does: stop_before_delay reads it.
        delay = self._delay(state, error)
        state.upcoming_sleep = delay
        if self._stop is not None and self._stop(state):
            return False
        left = remaining_time()
        if left is not None and delay >= left:
            return False  # the next attempt could not start before the deadline
        if self._budget is not None and not self._budget.try_withdraw():
            self._budget_rejections += 1
            if self._listening(Rejected):
                self._emit(Rejected, reason=RejectionReason.RETRY_BUDGET)
            return False
        if self._listening(RetryScheduled):
            self._emit(RetryScheduled, attempt=attempt, delay=delay, error=error)
        state.idle_for += delay
        await self._clock.sleep(0.0 if _instant else delay)
        return True

    def _delay(self, state: tenacity.RetryCallState, error: Exception | None) -> float:
        delay = float(self._wait(state))
        hinted = getattr(error, "retry_after", None)
        if (
            isinstance(hinted, int | float)
            and not isinstance(hinted, bool)
            and math.isfinite(hinted)
        ):
            delay = max(delay, min(max(0.0, float(hinted)), self.retry_after_cap))
        return max(0.0, delay)

    def statistics(self) -> RetryStatistics:
        """
        Return a snapshot of this policy's counters.
        """
        return RetryStatistics(
            calls=self._calls,
            retries=self._retries,
            gave_up=self._gave_up,
            budget_rejections=self._budget_rejections,
        )

    def __repr__(self) -> str:
        attempts = "unlimited" if self.attempts is None else self.attempts
        return (
            f"<Retry {self.name!r} attempts={attempts} calls={self._calls}"
            f" retries={self._retries} gave_up={self._gave_up}>"
        )


def _outcome(error: Exception | None, result: Any) -> Any:
    if error is not None:
        raise error
    return result


def _record(
    state: tenacity.RetryCallState, attempt: int, error: Exception | None, result: Any, now: float
) -> None:
    outcome = tenacity.Future(attempt)
    if error is not None:
        outcome.set_exception(error)
    else:
        outcome.set_result(result)
    state.attempt_number = attempt
    state.outcome = outcome
    state.outcome_timestamp = now


def _checked_strategy(param: str, value: object, base: type) -> Any:
    if value is None or isinstance(value, base):
        return value
    if callable(value):
        return value  # tenacity accepts plain callables taking a RetryCallState too
    raise TypeError(f"Retry({param}=...): expected a tenacity {param}_* strategy, got {value!r}")
