"""
AdaptiveThrottle: client-side throttling, from Google's SRE book.

Chapter 21 ("Handling Overload"), section "Client-side throttling": over the last
`window` seconds the client counts its *requests* (every call the
application made, including those refused here) and the *accepts* (calls the dependency
served: they did not fail with an overload error). A new call is refused locally, with
`ThrottledError`, with probability

    max(0, (requests - k * accepts) / (requests + 1))

While the dependency accepts more than 1 in `k` requests nothing is refused; past that
the client sheds the excess itself, so a struggling dependency sees less traffic before
any circuit breaker opens. The refusals count as requests, so the probability keeps up
as long as the dependency keeps rejecting, and falls as accepts come back. The book uses
k = 2 and a two-minute window; a smaller `k` throttles more aggressively.

A cancelled call, and one refused by an inner policy (a `RejectedError`: the dependency
never saw it), is not counted. The counts live in ten buckets of ``window / 10``
seconds, the circuit breaker's time window (`breaker.accounting.TimeWindow`).
"""

from __future__ import annotations

import asyncio
import math
import random
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import NoReturn, TypeVar

from .._engine.clock import Clock
from .._engine.errors import RejectedError, ThrottledError
from .._engine.events import Hook, Rejected, RejectionReason
from .._engine.policy import Args, AsyncFn, Kwargs, Policy
from .._engine.validate import error_matcher
from .breaker.accounting import TimeWindow, check_window, rate_rule

__all__ = ["AdaptiveThrottle", "AdaptiveThrottleStatistics"]

T = TypeVar("T")

# The window is only counted, never judged: a rule that can't trip.
_NEVER = rate_rule(failure_rate=2.0, slow_call_rate=2.0, min_calls=sys.maxsize)


@dataclass(frozen=True, slots=True)
class AdaptiveThrottleStatistics:
    """
    A snapshot of an `AdaptiveThrottle`.

    Attributes:
        requests: Calls made in the window, refused ones included.
        accepts: Of those, calls the dependency served.
        probability: The chance the next call is refused locally.
        throttled: Calls refused locally since the policy was built.
    """

    requests: int
    accepts: int
    probability: float
    throttled: int


class AdaptiveThrottle(Policy):
    """
    Refuse calls locally, at random, when the dependency rejects too many.

    Args:
        k: Requests allowed per accept before throttling starts, >= 1 (default 2:
            throttle once fewer than half are accepted).
        window: Seconds of history counted (default 120, as the SRE book).
        overload_on: Failures that mean the dependency refused the call: exception types
            or a predicate. Default: any `Exception`. Other failures count as accepts.
        random: Returns a float in [0, 1) per call (default `random.random`); give a
            seeded one for reproducible tests.
        name: A label for errors, events and metrics (default ``"adaptive_throttle"``).
        clock: Time source (default: the system clock).
        hooks: Event hooks for this policy only.

    Raises:
        ValueError: A parameter is out of range.
        TypeError: A parameter has the wrong type.
    """

    kind = "adaptive_throttle"
    __slots__ = ("_overload", "_random", "_throttled", "_window", "k", "window")

    def __init__(  # keyword-only knobs, each with a default
        self,
        *,
        k: float = 2.0,
        window: float = 120.0,
        overload_on: object = Exception,
        random: Callable[[], float] = random.random,
        name: str | None = None,
        clock: Clock | None = None,
        hooks: Iterable[Hook] | None = None,
    ) -> None:
        super().__init__(name=name, clock=clock, hooks=hooks)
        owner = type(self).__name__
        if isinstance(k, bool) or not isinstance(k, int | float):
            raise TypeError(f"{owner}(k=...): expected a number, got {k!r}")
        if not (math.isfinite(k) and k >= 1):
            raise ValueError(f"{owner}(k={k!r}): k must be finite and >= 1")
        if not callable(random):
            raise TypeError(f"{owner}(random=...): expected a function, got {random!r}")
        self.k = float(k)
        self.window = check_window(owner, "window", window)
        self._overload = error_matcher(owner, "overload_on", overload_on)
        self._random = random
        self._window = TimeWindow(self.window, _NEVER, self._monotonic)
        self._throttled = 0

    def probability(self) -> float:
        """
        The chance, now, that a call is refused locally.
        """
        totals = self._window.totals()
        requests = totals.calls
        return max(0.0, (requests - self.k * (requests - totals.failures)) / (requests + 1))

    async def _run(self, fn: AsyncFn[T], args: Args, kwargs: Kwargs) -> T:
        probability = self.probability()
        if probability > 0 and self._random() < probability:
            self._refuse(probability)
        try:
            result = await fn(*args, **kwargs)
        except (asyncio.CancelledError, RejectedError):
            raise  # the dependency never answered: neither an accept nor a refusal
        except BaseException as error:
            self._window.record(failed=self._overload(error), slow=False)
            raise
        self._window.record(failed=False, slow=False)
        return result

    def _refuse(self, probability: float) -> NoReturn:
        self._window.record(failed=True, slow=False)  # a request, not accepted
        self._throttled += 1
        if self._listening():
            self._emit(Rejected, reason=RejectionReason.THROTTLED)
        raise ThrottledError(self.name, probability)

    def statistics(self) -> AdaptiveThrottleStatistics:
        """
        Return a snapshot of the window and the refusal probability.
        """
        totals = self._window.totals()
        return AdaptiveThrottleStatistics(
            requests=totals.calls,
            accepts=totals.calls - totals.failures,
            probability=self.probability(),
            throttled=self._throttled,
        )

    def __repr__(self) -> str:
        stats = self.statistics()
        return (
            f"<AdaptiveThrottle {self.name!r} k={self.k:g} window={self.window:g}s"
            f" {stats.accepts}/{stats.requests} accepted, p={stats.probability:.3f}>"
        )
