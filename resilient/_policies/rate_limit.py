"""
RateLimiter: at most `rate` permits per `per` seconds, with bursts of up to `burst`.

The bucket is kept as GCRA (the generic cell rate algorithm of ATM networks, as in
Brandur Leach's "Rate limiting, cells, and GCRA" and redis-cell): one number, the
*theoretical arrival time* `tat` of the next permit, instead of a token count and a
refill timer. With ``T = per / rate`` (the emission interval) a call asking for `n`
permits at time `now` may start after

    wait = max(tat, now) + n * T - burst * T - now

and, when it is admitted, `tat` moves to ``max(tat, now) + n * T``. That is exactly a
token bucket of capacity `burst` refilled at `rate / per` (tokens now =
``burst - (max(tat, now) - now) / T``), at O(1) cost and with no timer.

A call whose wait is 0 runs at once. One whose wait is at most `max_wait` reserves its
permits and sleeps until they are due (so waiters are served in arrival order and a
newcomer cannot overtake them); a cancelled waiter gives back the permits no later
waiter has reserved since. Any other call is rejected with `RateLimitedError`, whose
`retry_after` is the wait.

Only calls of priority ``CRITICAL`` or higher wait (`resilient.Priority`): a sheddable
call that finds no permit is refused at once (reason ``PRIORITY_SHED``) rather than
reserve a permit to come ahead of the critical calls behind it. Reservations are not
revoked for a later, higher-priority caller: the schedule of permits is one number, and
a reserved waiter has been told when it runs. Nor does a call wait past its deadline
(`remaining_time()`): one whose permit comes later is refused at once
(``DEADLINE_TOO_SHORT``). Both only ever shorten `max_wait`; the happy path reads neither.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any, NoReturn, TypeVar

from .._engine.clock import Clock
from .._engine.context import remaining_time
from .._engine.errors import RateLimitedError
from .._engine.events import Hook, Rejected, RejectionReason
from .._engine.policy import Args, AsyncFn, Kwargs, Policy
from .._engine.validate import check_int, check_rate, check_seconds
from .priority import Priority, current_priority

__all__ = ["RateLimiter", "RateLimiterStatistics", "permits_of"]

T = TypeVar("T")

Cost = float | Callable[..., float]
"""Permits a call takes: a number, or a function of the call's arguments."""


@dataclass(frozen=True, slots=True)
class RateLimiterStatistics:
    """
    A snapshot of a `RateLimiter`.

    Attributes:
        rate: Permits per `per` seconds.
        per: The period, in seconds.
        burst: Permits that may be taken at once after a quiet spell.
        available: Permits that could be taken now without waiting (0 while callers
            wait for reserved ones; always 0 for a shared limiter, which does not know).
        waiting: Callers sleeping until their reserved permits are due.
        waited: Calls let through after waiting for their permits.
        rejected: Calls refused.
        store_errors: Round trips to a shared limiter's store that failed or ran out
            of time (always 0 for a local limiter).
    """

    rate: float
    per: float
    burst: int
    available: float
    waiting: int
    waited: int
    rejected: int
    store_errors: int = 0


class RateLimiter(Policy):
    """
    Let at most `rate` permits through per `per` seconds; reject (or delay) the rest.

    A token bucket of capacity `burst`, refilled continuously, kept as GCRA (see the
    module docstring). Each call takes `cost` permits (1 by default).

    Args:
        rate: Permits per period, > 0.
        per: The period, in seconds (default 1: `rate` is per second).
        burst: Bucket capacity: permits that may be taken at once after a quiet spell,
            >= 1. Default: `rate` rounded up (a full period's permits at once, as
            aiolimiter does).
        max_wait: Longest a call may wait for its permits, in seconds; a call that
            would wait longer is rejected at once. Default 0: never wait.
        cost: Permits each call takes: a number > 0 (at most `burst`), or a function
            called with the call's arguments that returns one (e.g. a batch size).
        name: A label for errors, events and metrics (default ``"rate_limiter"``).
        clock: Time source (default: the system clock).
        hooks: Event hooks for this policy only.

    Raises:
        ValueError: A parameter is out of range (named in the message).
        TypeError: A parameter has the wrong type.
    """

    kind = "rate_limiter"
    __slots__ = (
        "_cost",
        "_interval",
        "_rejected",
        "_step",
        "_tat",
        "_tolerance",
        "_waited",
        "_waiting",
        "burst",
        "max_wait",
        "per",
        "rate",
    )

    def __init__(
        self,
        rate: float,
        *,
        per: float = 1.0,
        burst: int | None = None,
        max_wait: float = 0.0,
        cost: Cost = 1,
        name: str | None = None,
        clock: Clock | None = None,
        hooks: Iterable[Hook] | None = None,
    ) -> None:
        super().__init__(name=name, clock=clock, hooks=hooks)
        owner = type(self).__name__
        self.rate = check_rate(owner, "rate", rate)
        self.per = check_seconds(owner, "per", per)
        self.burst = check_int(
            owner, "burst", max(1, math.ceil(self.rate)) if burst is None else burst, minimum=1
        )
        self.max_wait = check_seconds(owner, "max_wait", max_wait, allow_zero=True)
        self._cost = _check_cost(owner, cost, self.burst)
        self._interval = self.per / self.rate  # T: seconds per permit
        self._tolerance = _tolerance(owner, self.burst, self._interval)
        # What one call moves tat by; None when a function gives each call's cost.
        self._step = None if callable(self._cost) else self._cost * self._interval
        self._tat = self._clock.monotonic()  # the bucket starts full
        self._rejected = self._waited = self._waiting = 0

    def _run(self, fn: AsyncFn[T], args: Args, kwargs: Kwargs) -> Awaitable[T]:
        # Not a coroutine: an admitted call is decided here and handed `fn`'s own
        # awaitable, which saves a coroutine frame per call (the happy path's main
        # cost). Refusals and waits are decided here too, at call time, and returned
        # as awaitables, so they surface where the call is awaited, as for any policy.
        step = self._step
        if step is None:
            return self._weighted(fn, args, kwargs)
        now = self._monotonic()
        tat = self._tat
        if tat < now:
            # The bucket is full, so any cost (at most `burst`) fits: no more to check.
            self._tat = now + step
        else:
            tat += step
            if tat - self._tolerance > now:
                return self._queue(tat, now, step, fn, args, kwargs)
            self._tat = tat
        return fn(*args, **kwargs)

    def _queue(  # noqa: PLR0917  # the hot path's locals, passed on as they are
        self, tat: float, now: float, step: float, fn: AsyncFn[T], args: Args, kwargs: Kwargs
    ) -> Awaitable[T]:
        # No permit now: reserve one and wait for it, or refuse.
        wait = tat - self._tolerance - now
        if wait > self.max_wait:
            return _raise(self._refusal(wait, step / self._interval))
        cap, reason, why = self._wait_allowed()
        if wait > cap:
            return _raise(self._refusal(wait, step / self._interval, why, reason))
        self._tat = tat  # reserved: later callers queue behind this one
        return self._delayed(wait, tat, step, fn, args, kwargs)

    async def _weighted(self, fn: AsyncFn[T], args: Args, kwargs: Kwargs) -> T:
        step = permits_of(self, self._cost, args, kwargs) * self._interval
        now = self._monotonic()
        tat = max(self._tat, now) + step
        if tat - self._tolerance > now:
            return await self._queue(tat, now, step, fn, args, kwargs)
        self._tat = tat
        return await fn(*args, **kwargs)

    async def _delayed(  # noqa: PLR0917  # the reservation, then the call
        self, wait: float, reserved: float, step: float, fn: AsyncFn[T], args: Args,
        kwargs: Kwargs,
    ) -> T:  # fmt: skip
        self._waiting += 1
        try:
            await self._clock.sleep(wait)
        except BaseException:
            # Cancelled while waiting: hand back the permits no later caller has reserved
            # since (as Go's Reservation.Cancel). Those callers keep their times, so
            # handing back the rest would let newcomers run alongside them, over the rate.
            self._tat -= max(0.0, step - (self._tat - reserved))
            raise
        finally:
            self._waiting -= 1
        self._waited += 1
        return await fn(*args, **kwargs)

    def _wait_allowed(self) -> tuple[float, RejectionReason, str]:
        """
        How long this call may wait for a permit, and why, when less than `max_wait`.

        Zero for a sheddable call (`Priority` below ``CRITICAL``); no longer than the
        caller's deadline leaves (shared with `RedisRateLimiter`).
        """
        if current_priority() < Priority.CRITICAL:
            why = "a sheddable call does not wait for a permit"
            return 0.0, RejectionReason.PRIORITY_SHED, why
        left = remaining_time()
        if left is not None and left < self.max_wait:
            why = f"the caller's deadline comes first ({left:.3f}s left)"
            return left, RejectionReason.DEADLINE_TOO_SHORT, why
        return self.max_wait, RejectionReason.RATE_LIMITED, ""

    def _refusal(
        self,
        wait: float,
        permits: float,
        why: str = "",
        reason: RejectionReason = RejectionReason.RATE_LIMITED,
    ) -> RateLimitedError:
        self._rejected += 1
        if self._listening():
            self._emit(Rejected, reason=reason)
        return RateLimitedError(self.name, wait, permits, why, reason)

    def _available(self) -> float:
        ahead = self._tat - self._monotonic()
        return max(0.0, min(self.burst, (self._tolerance - max(0.0, ahead)) / self._interval))

    def statistics(self) -> RateLimiterStatistics:
        """
        Return a snapshot of this limiter's bucket and counters.
        """
        return RateLimiterStatistics(
            rate=self.rate,
            per=self.per,
            burst=self.burst,
            available=self._available(),
            waiting=self._waiting,
            waited=self._waited,
            rejected=self._rejected,
        )

    def __repr__(self) -> str:
        return (
            f"<{type(self).__name__} {self.name!r} {self.rate:g}/{self.per:g}s"
            f" {self._available():.1f}/{self.burst} available, {self._waiting} waiting>"
        )


async def _raise(error: BaseException) -> NoReturn:
    raise error


def _tolerance(owner: str, burst: int, interval: float) -> float:
    # GCRA's arithmetic needs both in a float's normal range: an interval that rounds
    # to 0 or overflows to inf (per=1e-300 with rate=1e300, or rate=5e-324) made every
    # call free, so the limiter let everything through.
    try:
        tolerance = burst * interval
    except OverflowError:  # a burst beyond a float's range
        tolerance = math.inf
    if not (interval > 0 and math.isfinite(interval)):
        raise ValueError(
            f"{owner}(rate=..., per=...): per / rate = {interval!r} seconds per permit;"
            " it must be a finite number > 0"
        )
    if not math.isfinite(tolerance):
        raise ValueError(f"{owner}(burst={burst!r}): burst is too large for a float")
    return tolerance


def _check_cost(owner: str, cost: object, burst: int) -> float | Callable[..., float]:
    if callable(cost):
        return cost
    permits = check_rate(owner, "cost", cost)
    if permits > burst:
        raise ValueError(
            f"{owner}(cost={cost!r}): cost must be <= burst ({burst}), or no call could pass"
        )
    return permits


def permits_of(limiter: RateLimiter, cost: Cost, args: Args, kwargs: Kwargs) -> float:
    """
    Permits a call asks for: the limiter's `cost`, or what its cost function says (internal).

    Raises:
        ValueError: The function returned a number <= 0 or more than `burst`.
    """
    if isinstance(cost, float):
        return cost
    permits: Any = cost(*args, **kwargs)
    if isinstance(permits, bool) or not isinstance(permits, int | float):
        raise TypeError(f"{limiter.name!r}: cost() returned {permits!r}, not a number")
    if not 0 < permits <= limiter.burst:
        raise ValueError(
            f"{limiter.name!r}: cost() returned {permits!r}; a call takes > 0 permits"
            f" and at most burst ({limiter.burst})"
        )
    return float(permits)
