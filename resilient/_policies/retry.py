"""
Retry with jittered backoff, on tenacity's vocabulary.

Users pass tenacity's `wait_*`, `stop_*` and `retry_*` strategies; `Retry` evaluates them
with a `tenacity.RetryCallState`, but only after a failure: the first attempt is a plain
``await`` (tenacity's own `AsyncRetrying` loop costs ~19 us a call even when nothing
fails). After the last attempt the last exception is re-raised unchanged, or the last
result returned when results were being retried.

The tenacity objects are built only when a call fails, and as few as will do: one
`RetryCallState` per failing call, an `AsyncRetrying` (the state's ``retry_object``) once
per policy on its first failure, and per attempt an outcome that is a `tenacity.Future`
without the `threading.Condition` every `concurrent.futures.Future` builds.
"""

from __future__ import annotations

import asyncio
import math
import threading
from collections.abc import Callable, Iterable
from concurrent.futures._base import FINISHED
from dataclasses import dataclass
from typing import Any, TypeVar

import tenacity
from tenacity.retry import retry_base
from tenacity.stop import stop_base
from tenacity.wait import wait_base

from .._engine.clock import Clock, SystemClock
from .._engine.context import deadline_in_force, no_retries_in_force
from .._engine.events import Hook, Rejected, RejectionReason, RetryScheduled
from .._engine.hooks import global_hooks
from .._engine.policy import Args, AsyncFn, Kwargs, Policy
from .._engine.validate import check_int, check_seconds, error_matcher, retryable_by_default
from .budget import RetryBudget

__all__ = ["Retry", "RetryStatistics", "set_instant_retries"]

T = TypeVar("T")

_instant = False

# Shared by every Retry without wait=: tenacity's strategies keep no state of their own.
_DEFAULT_WAIT = tenacity.wait_random_exponential(multiplier=0.1, max=10.0)
# Waits that read nothing of the RetryCallState they are given (exact types: a subclass
# may read it).
_FIXED_WAITS = (tenacity.wait_fixed, tenacity.wait_none)
_GLOBAL_HOOKS = global_hooks()  # the engine's own list, read in place


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


class _Rare:
    """
    The settings of a `Retry` that most policies never use, kept apart.

    A `Retry` is made once per decorated function, and each slot of its own costs
    every one of them.
    """

    __slots__ = ("budget", "budget_rejections", "on_result", "stop", "strategy")

    def __init__(
        self,
        strategy: retry_base | None,
        stop: Any,
        on_result: Callable[[Any], bool] | None,
        budget: RetryBudget | None,
    ) -> None:
        self.strategy = strategy
        self.stop = stop
        self.on_result = on_result
        self.budget = budget
        self.budget_rejections = 0


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
    _fusion = "retry"  # its first attempt runs in a fused pipeline's frame (_engine/fusion.py)
    __slots__ = (
        "_calls",
        "_gave_up",
        "_on",
        "_rare",
        "_retries",
        "_retrying",
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
        strategy: retry_base | None = on if isinstance(on, retry_base) else None
        self._on = (
            retryable_by_default
            if on is None or strategy
            else error_matcher("Retry", "on", on, spare_programming_errors=True)
        )
        if on_result is not None and strategy is not None:
            raise ValueError(
                "Retry(on_result=...): a tenacity retry_* strategy in on= already decides on"
                " results; use retry_if_result there or drop one of them"
            )
        if on_result is not None and not callable(on_result):
            raise TypeError(f"Retry(on_result=...): expected a predicate, got {on_result!r}")
        strategy_of_wait = _checked_strategy("wait", wait, wait_base) or _DEFAULT_WAIT
        # A wait_fixed / wait_none is kept as its seconds: read per retry without calling
        # tenacity, and no slot more per policy. (Exact types: a subclass may compute its
        # wait, and is asked each time.)
        self._wait: float | Any = (
            float(strategy_of_wait.wait_fixed)
            if type(strategy_of_wait) in _FIXED_WAITS
            and isinstance(strategy_of_wait, tenacity.wait_fixed)
            else strategy_of_wait
        )
        checked_stop = _checked_strategy("stop", stop, stop_base)
        if budget is not None and not isinstance(budget, RetryBudget):
            raise TypeError(f"Retry(budget=...): expected a RetryBudget, got {budget!r}")
        given = (strategy, checked_stop, on_result, budget)
        self._rare = None if given == (None, None, None, None) else _Rare(*given)
        self.retry_after_cap = check_seconds(
            "Retry", "retry_after_cap", retry_after_cap, allow_zero=True
        )
        # Handed to strategies as retry_state.retry_object, for those that look at it;
        # built on the first failure (~1 KB, most policies never need it).
        self._retrying: tenacity.AsyncRetrying | None = None
        self._calls = self._retries = self._gave_up = 0

    async def _run(self, fn: AsyncFn[T], args: Args, kwargs: Kwargs) -> T:
        # `_begin` written out: every decorated call pays it.
        self._calls += 1
        rare = self._rare
        if rare is not None and rare.budget is not None:
            rare.budget.deposit()
        started = self._clock.monotonic()
        error: Exception | None = None
        result: Any = None
        try:
            result = await fn(*args, **kwargs)
        except Exception as exc:
            if (rare is None or rare.strategy is None) and not self._on(exc):
                raise
            error = exc
        else:
            if rare is None or (
                rare.strategy is None and (rare.on_result is None or not rare.on_result(result))
            ):
                return result  # type: ignore[no-any-return]  # the call's T
        # Retried outside the except block: later attempts must not run "during the
        # handling" of this error, or the error re-raised at the end gets it as context.
        # And not from a frame that still holds it: its traceback holds this frame, a
        # reference cycle per failing call left for the gc (see _retry).
        retrying = self._retry(fn, args, kwargs, started, error, result)
        del error, result
        return await retrying

    def _begin(self) -> float:
        """
        Count a call in (its budget deposit too); when it started.
        """
        self._calls += 1
        rare = self._rare
        if rare is not None and rare.budget is not None:
            rare.budget.deposit()
        return self._clock.monotonic()

    def _results_matter(self) -> bool:
        """
        Whether a result may be retried at all (a strategy, or `on_result`).
        """
        rare = self._rare
        return rare is not None and (rare.strategy is not None or rare.on_result is not None)

    def _retries_first(self, error: BaseException | None, result: object) -> bool:
        """
        Whether the first attempt's outcome is retried (`_run` decides it inline).
        """
        rare = self._rare
        if error is not None:
            if not isinstance(error, Exception):
                return False  # cancellation is never retried
            return (rare is not None and rare.strategy is not None) or self._on(error)
        return rare is not None and (
            rare.strategy is not None
            or (rare.on_result is not None and bool(rare.on_result(result)))
        )

    async def _retry(  # noqa: PLR0917  # the call plus the first attempt's outcome
        self,
        fn: AsyncFn[T],
        args: Args,
        kwargs: Kwargs,
        started: float,
        error: Exception | None,
        result: Any,
    ) -> T:
        rare = self._rare
        # A fixed wait reads no RetryCallState: with no retry_* or stop_* strategy
        # either, a failing call builds none (nor its outcomes).
        reads_state = type(self._wait) is not float or (
            rare is not None and (rare.strategy is not None or rare.stop is not None)
        )
        state = self._new_state(started) if reads_state else None
        monotonic, attempt = self._clock.monotonic, 1
        # The system clock's sleep is asyncio.sleep: awaited directly, one coroutine less
        # per attempt (a subclass may sleep its own way).
        sleep = asyncio.sleep if type(self._clock) is SystemClock else self._clock.sleep
        try:
            if state is not None:
                _record(state, attempt, error, result, monotonic())
            # _run judged the first attempt already, unless a tenacity strategy decides.
            strategy = None if rare is None else rare.strategy
            again = state is None or strategy is None or bool(strategy(state))
            while again:
                # The attempt limit asked here: the call's last failure needs nothing else.
                # Read per retry, not once per call: `attempts` may be lowered meanwhile.
                limit = self.attempts
                delay = (
                    None
                    if limit is not None and attempt >= limit
                    else self._next_delay(state, attempt, error)
                )
                if delay is None:
                    self._gave_up += 1
                    break
                await sleep(0.0 if _instant else delay)
                attempt += 1
                self._retries += 1
                if state is not None:
                    state.prepare_for_next_attempt()
                try:
                    result, error = await fn(*args, **kwargs), None
                except Exception as exc:  # noqa: BLE001  # any attempt error is judged by `on`
                    result, error = None, exc
                if state is not None:
                    _record(state, attempt, error, result, monotonic())
                if rare is None:  # `_should_retry` with no strategy, no on_result: inlined
                    again = error is not None and self._on(error)
                else:
                    again = self._should_retry(state, error, result)
            if error is not None:
                raise error
            return result  # type: ignore[no-any-return]  # the last attempt's T
        finally:
            # The error's traceback holds this frame: the frame lets go of the error (and
            # of the state holding it) on the way out, as asyncio.timeout's __aexit__
            # does, so a failed call is freed at once instead of by the gc.
            del error, state

    def _new_state(self, started: float) -> tenacity.RetryCallState:
        retrying = self._retrying
        if retrying is None:
            stop = None if self._rare is None else self._rare.stop
            retrying = self._retrying = tenacity.AsyncRetrying(
                stop=stop or tenacity.stop_never,
                wait=self._wait_strategy(),
                sleep=self._clock.sleep,
            )
        state = tenacity.RetryCallState(retrying, fn=None, args=(), kwargs={})
        state.start_time = started
        return state

    def _wait_strategy(self) -> Any:
        # The tenacity strategy tenacity's own objects are given (a fixed wait rebuilt
        # from its seconds: `_new_state`, once per policy).
        wait = self._wait
        return tenacity.wait_fixed(wait) if type(wait) is float else wait

    def _should_retry(
        self, state: tenacity.RetryCallState | None, error: Exception | None, result: Any
    ) -> bool:
        rare = self._rare
        if rare is not None and rare.strategy is not None:
            return bool(rare.strategy(state))  # type: ignore[arg-type]  # a strategy: a state
        if error is not None:
            return self._on(error)
        return rare is not None and rare.on_result is not None and bool(rare.on_result(result))

    def _next_delay(
        self, state: tenacity.RetryCallState | None, attempt: int, error: Exception | None
    ) -> float | None:
        """
        The wait before the next attempt; None when no next attempt may be made.

        The caller (`_retry`) has checked the attempt limit.
        """
        if no_retries_in_force():  # retries_allowed(), inlined: every retry asks
            return None  # inside no_retries(): this call runs once
        # The wait before the stop strategy, as tenacity does: stop_before_delay reads it.
        # The strategy's wait is asked before the hint is read, and the hint read once (a
        # property may compute it, or hand it out only once); `_granted` only for a hint.
        wait = self._wait
        if type(wait) is not float:
            wait = float(wait(state))  # type: ignore[operator]  # a strategy: not a float
        hinted = getattr(error, "retry_after", None)
        # No hint: max(0.0, wait) written out (NaN and -0.0 too).
        delay = (wait if wait > 0.0 else 0.0) if hinted is None else self._granted(wait, hinted)
        if state is not None:
            state.upcoming_sleep = delay
        rare = self._rare
        if rare is not None and rare.stop is not None and rare.stop(state):
            return None
        current = deadline_in_force()  # remaining_time(), inlined (and unclamped: delay >= 0)
        if current is not None and delay >= current.deadline - current.clock.monotonic():
            return None  # the next attempt could not start before the deadline
        if rare is not None and rare.budget is not None and not rare.budget.try_withdraw():
            rare.budget_rejections += 1
            if self._listening(Rejected):
                self._emit(Rejected, reason=RejectionReason.RETRY_BUDGET)
            return None
        log = self._decisions  # `_listening(RetryScheduled)`, inlined: every retry asks
        if self._hooks or _GLOBAL_HOOKS or log.enabled(log.levels.get(RetryScheduled, log.loudest)):
            self._emit(RetryScheduled, attempt=attempt, delay=delay, error=error)
        if state is not None:
            state.idle_for += delay
        return delay

    def _granted(self, delay: float, hinted: object) -> float:
        # The wait `delay`, lengthened to a server's usable hint (capped); never negative.
        if (
            isinstance(hinted, int | float)
            and not isinstance(hinted, bool)
            and math.isfinite(hinted)
        ):
            delay = max(delay, min(max(0.0, float(hinted)), self.retry_after_cap))
        return delay if delay > 0.0 else 0.0  # max(0.0, delay): NaN and -0.0 too

    def statistics(self) -> RetryStatistics:
        """
        Return a snapshot of this policy's counters.
        """
        return RetryStatistics(
            calls=self._calls,
            retries=self._retries,
            gave_up=self._gave_up,
            budget_rejections=0 if self._rare is None else self._rare.budget_rejections,
        )

    def __repr__(self) -> str:
        attempts = "unlimited" if self.attempts is None else self.attempts
        return (
            f"<Retry {self.name!r} attempts={attempts} calls={self._calls}"
            f" retries={self._retries} gave_up={self._gave_up}>"
        )


class _Outcome(tenacity.Future):
    """
    One finished attempt, as tenacity's strategies read it.

    They read ``failed``, ``result()``, ``exception()`` and ``attempt_number``. Still a
    `tenacity.Future`, so still a `concurrent.futures.Future`, but born finished: no
    `threading.Condition` built and no waiters notified per attempt (a quarter of a
    failing call's cost). Nobody can wait on a finished future, so the state it never
    leaves, one condition and the (empty) lists of waiters and callbacks its methods
    touch under that condition are shared by all.
    """

    _condition = threading.Condition()
    _state = FINISHED
    _waiters: list[Any] = []  # noqa: RUF012  # shared on purpose, see above
    _done_callbacks: list[Any] = []  # noqa: RUF012  # shared on purpose, see above

    def __init__(self, attempt_number: int, error: Exception | None, result: Any) -> None:
        # No super().__init__(): it builds the Condition and lists this class shares.
        self.attempt_number = attempt_number
        self._result = result
        self._exception = error


def _record(
    state: tenacity.RetryCallState, attempt: int, error: Exception | None, result: Any, now: float
) -> None:
    state.attempt_number = attempt
    state.outcome = _Outcome(attempt, error, result)
    state.outcome_timestamp = now


def _checked_strategy(param: str, value: object, base: type) -> Any:
    if value is None or isinstance(value, base):
        return value
    if callable(value):
        return value  # tenacity accepts plain callables taking a RetryCallState too
    raise TypeError(f"Retry({param}=...): expected a tenacity {param}_* strategy, got {value!r}")
