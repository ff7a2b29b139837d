"""
AdaptiveConcurrency: a concurrency limit that finds itself from latency and errors.

A bulkhead whose size is not configured but learned: every finished call is a sample
fed to a `LimitAlgorithm` (`Gradient2` by default, or `AIMD`), which moves the limit
between its `min_limit` and `max_limit`. This is the model of Netflix's
concurrency-limits (`SimpleLimiter` with a blocking queue): calls beyond the limit wait
in a bounded FIFO queue (for at most `max_wait`), or are rejected with
`ConcurrencyLimitError`.

Which failures are samples of overload is `overload_on` (default: any `Exception`). A
cancelled call is not a sample (its latency says nothing about the dependency), nor is
a `RejectedError` from an inner policy (the call never reached the dependency), as the
circuit breaker excludes them.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from typing import NoReturn, TypeVar

from ._clock import Clock
from ._errors import ConcurrencyLimitError, RejectedError
from ._events import Hook, Rejected, RejectionReason
from ._limit_algorithms import Gradient2, LimitAlgorithm
from ._policy import Args, AsyncFn, Kwargs, Policy
from ._validate import check_int, check_seconds, error_matcher

__all__ = ["AdaptiveConcurrency", "AdaptiveConcurrencyStatistics"]

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class AdaptiveConcurrencyStatistics:
    """
    A snapshot of an `AdaptiveConcurrency` policy.

    Attributes:
        limit: The concurrency limit now (export it as a gauge).
        min_limit: Its lower bound.
        max_limit: Its upper bound.
        in_flight: Calls running now.
        queued: Callers waiting for a slot now.
        accepted: Calls let through.
        rejected: Calls refused.
        dropped: Samples that counted as overload.
    """

    limit: int
    min_limit: int
    max_limit: int
    in_flight: int
    queued: int
    accepted: int
    rejected: int
    dropped: int


class AdaptiveConcurrency(Policy):
    """
    Cap the calls in flight at a limit learned from their latency and failures.

    Args:
        algorithm: How the limit moves: `Gradient2()` (default) or `AIMD()`; each
            carries its initial, min and max limit. Use one instance per policy.
        max_queue: Callers allowed to wait for a slot (default 0: reject at once).
        max_wait: Longest wait in the queue, in seconds (default: no limit).
        overload_on: Failures that count as overload (a "drop"): exception types or a
            predicate. Default: any `Exception`. Other failures are plain samples.
        name: A label for errors, events and metrics (default ``"adaptive_concurrency"``).
        clock: Time source (default: the system clock).
        hooks: Event hooks for this policy only.

    Raises:
        ValueError: A parameter is out of range.
        TypeError: A parameter has the wrong type.
    """

    kind = "adaptive_concurrency"
    __slots__ = (
        "_accepted",
        "_dropped",
        "_in_flight",
        "_limit",
        "_overload",
        "_rejected",
        "_waiters",
        "algorithm",
        "max_queue",
        "max_wait",
    )

    def __init__(  # keyword-only knobs, each with a default
        self,
        algorithm: LimitAlgorithm | None = None,
        *,
        max_queue: int = 0,
        max_wait: float | None = None,
        overload_on: object = Exception,
        name: str | None = None,
        clock: Clock | None = None,
        hooks: Iterable[Hook] | None = None,
    ) -> None:
        super().__init__(name=name, clock=clock, hooks=hooks)
        owner = type(self).__name__
        if algorithm is None:
            algorithm = Gradient2()
        if not isinstance(algorithm, LimitAlgorithm):
            raise TypeError(
                f"{owner}(algorithm=...): expected AIMD or Gradient2, got {algorithm!r}"
            )
        self.algorithm = algorithm
        self.max_queue = check_int(owner, "max_queue", max_queue, minimum=0)
        self.max_wait = (
            None
            if max_wait is None
            else check_seconds(owner, "max_wait", max_wait, allow_zero=True)
        )
        self._overload = error_matcher(owner, "overload_on", overload_on)
        self._limit = algorithm.initial
        self._in_flight = 0
        self._waiters: deque[asyncio.Future[bool]] = deque()
        self._accepted = self._rejected = self._dropped = 0

    @property
    def limit(self) -> int:
        """
        The concurrency limit now.
        """
        return self._limit

    async def _run(self, fn: AsyncFn[T], args: Args, kwargs: Kwargs) -> T:
        if self._in_flight < self._limit and not self._waiters:
            self._in_flight += 1
            self._accepted += 1
        else:
            await self._queue()
        in_flight = self._in_flight
        started = self._monotonic()
        try:
            result = await fn(*args, **kwargs)
        except (asyncio.CancelledError, RejectedError):
            self._release()  # no sample: says nothing about the dependency
            raise
        except BaseException as error:
            self._sample(started, in_flight, dropped=self._overload(error))
            raise
        self._sample(started, in_flight, dropped=False)
        return result

    def _sample(self, started: float, in_flight: int, *, dropped: bool) -> None:
        self._dropped += dropped
        rtt = self._monotonic() - started
        self._limit = self.algorithm.update(self._limit, rtt, in_flight, dropped)
        self._release()

    def _release(self) -> None:
        self._in_flight -= 1
        # Hand free slots to waiters, in order; after the limit grew there may be several.
        while self._waiters and self._in_flight < self._limit:
            waiter = self._waiters.popleft()
            if not waiter.done():
                self._in_flight += 1
                waiter.set_result(True)

    async def _queue(self) -> None:
        if len(self._waiters) >= self.max_queue:
            self._reject("limit reached and the queue is full")
        waiter: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        timer = None
        if self.max_wait is not None:
            timer = self._clock.call_at(self._monotonic() + self.max_wait, lambda: _expire(waiter))
        try:
            granted = await waiter
        except BaseException:
            if waiter.done() and not waiter.cancelled() and waiter.result():
                self._release()  # handed a slot we won't use: pass it on
            else:
                self._forget(waiter)
            raise
        finally:
            if timer is not None:
                timer.cancel()
        if not granted:
            self._forget(waiter)
            self._reject(f"waited {self.max_wait:g}s in the queue")
        self._accepted += 1

    def _forget(self, waiter: asyncio.Future[bool]) -> None:
        with contextlib.suppress(ValueError):  # already handed a slot or expired
            self._waiters.remove(waiter)

    def _reject(self, why: str) -> NoReturn:
        self._rejected += 1
        if self._listening():
            self._emit(Rejected, reason=RejectionReason.CONCURRENCY_LIMIT)
        raise ConcurrencyLimitError(self.name, self._limit, why)

    def statistics(self) -> AdaptiveConcurrencyStatistics:
        """
        Return a snapshot of the limit, the slots and the counters.
        """
        return AdaptiveConcurrencyStatistics(
            limit=self._limit,
            min_limit=self.algorithm.min_limit,
            max_limit=self.algorithm.max_limit,
            in_flight=self._in_flight,
            queued=len(self._waiters),
            accepted=self._accepted,
            rejected=self._rejected,
            dropped=self._dropped,
        )

    def __repr__(self) -> str:
        return (
            f"<AdaptiveConcurrency {self.name!r} {self._in_flight}/{self._limit} in flight"
            f" (limit {self.algorithm.min_limit}..{self.algorithm.max_limit}),"
            f" {len(self._waiters)}/{self.max_queue} queued>"
        )


def _expire(waiter: asyncio.Future[bool]) -> None:
    if not waiter.done():
        waiter.set_result(False)
