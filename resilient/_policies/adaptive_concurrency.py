"""
AdaptiveConcurrency: a concurrency limit that finds itself from latency and errors.

A `Bulkhead` whose size is not configured but learned: every finished call is a sample
fed to a `LimitAlgorithm` (`Vegas` by default, `Gradient2` or `AIMD`), which moves the limit
(the bulkhead's `max_concurrent`) between its `min_limit` and `max_limit`. This is the
model of Netflix's concurrency-limits (`SimpleLimiter` with a blocking queue): calls
beyond the limit wait in the bulkhead's bounded FIFO queue (for at most `max_wait`), or
are rejected with `ConcurrencyLimitError`. The queue is the bulkhead's own; only the
release differs: a freed slot goes to a waiter only while the calls in flight are below
the limit (which may have shrunk), and a grown limit admits several waiters at once.
So the queue sheds by priority and deadline as the bulkhead's does (docs/overload.md);
a call that finishes while others wait, or that took the last slot, is a sample of the
service time.

Which failures are samples of overload is `overload_on` (default: any `Exception`). A
cancelled call is not a sample (its latency says nothing about the dependency), nor is
a `RejectedError` from an inner policy (the call never reached the dependency), as the
circuit breaker excludes them.
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Iterable
from dataclasses import dataclass, fields
from types import TracebackType
from typing import Any, NoReturn, TypeVar

from .._engine.clock import Clock
from .._engine.errors import ConcurrencyLimitError, RejectedError
from .._engine.events import Hook, Rejected, RejectionReason
from .._engine.policy import Args, AsyncFn, Kwargs
from .._engine.validate import check_int, check_seconds, error_matcher
from .bulkhead import Bulkhead, BulkheadStatistics, _thread_id, shedding
from .limit_algorithms import LimitAlgorithm
from .vegas import Vegas
from .wait_queue import GRANTED, ewma

__all__ = ["AdaptiveConcurrency", "AdaptiveConcurrencyStatistics"]

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class AdaptiveConcurrencyStatistics(BulkheadStatistics):
    """
    A snapshot of an `AdaptiveConcurrency` policy: a bulkhead's, plus the limit's.

    Attributes:
        limit: The concurrency limit now (export it as a gauge); also `max_concurrent`.
        min_limit: Its lower bound.
        max_limit: Its upper bound.
        dropped: Samples that counted as overload.
    """

    limit: int
    min_limit: int
    max_limit: int
    dropped: int


class AdaptiveConcurrency(Bulkhead):
    """
    Cap the calls in flight at a limit learned from their latency and failures.

    Usable as a decorator, with `.call(fn, ...)`, or as ``async with`` (the block's
    duration is the sample). A tracked policy's limit is exported by the Prometheus
    integration as its bulkhead ``max_concurrent`` gauge.

    Args:
        algorithm: How the limit moves: `Vegas()` (default), `Gradient2()` or `AIMD()`; each
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
    __slots__ = ("_dropped", "_entered", "_overload", "algorithm")

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
        owner = type(self).__name__
        if algorithm is None:
            algorithm = Vegas()
        if not isinstance(algorithm, LimitAlgorithm):
            raise TypeError(
                f"{owner}(algorithm=...): expected a Vegas, Gradient2 or AIMD instance"
                f" (such as Vegas()), got {algorithm!r}"
            )
        # Checked here too, so that errors name this class rather than Bulkhead.
        check_int(owner, "max_queue", max_queue, minimum=0)
        if max_wait is not None:
            check_seconds(owner, "max_wait", max_wait, allow_zero=True)
        self._overload = error_matcher(owner, "overload_on", overload_on)
        super().__init__(
            algorithm.initial, max_queue=max_queue, max_wait=max_wait, name=name,
            clock=clock, hooks=hooks,
        )  # fmt: skip
        self._drive(owner, algorithm)
        self.algorithm = algorithm
        self._dropped = 0
        # Calls inside ``async with``, per task: (start, calls in flight), innermost last.
        # Weak: a block entered in one task and left in another (an AsyncExitStack
        # closed elsewhere) leaves its entry behind until the entering task is gone.
        self._entered: weakref.WeakKeyDictionary[asyncio.Task[Any], list[tuple[float, int]]]
        self._entered = weakref.WeakKeyDictionary()

    def _drive(self, owner: str, algorithm: LimitAlgorithm) -> None:
        # One instance shared by two policies mixed their samples into one estimate and
        # each policy's limit jumped to the other's at its next call: refused here.
        driver = algorithm._driver() if algorithm._driver is not None else None  # noqa: SLF001  # the field is this class's
        if driver is not None:
            raise ValueError(
                f"{owner}(algorithm={algorithm!r}): this instance already drives"
                f" {driver!r}; give each policy its own"
            )
        algorithm._driver = weakref.ref(self)  # noqa: SLF001  # (weak: the policy may go)

    @property
    def limit(self) -> int:
        """
        The concurrency limit now.
        """
        return self.max_concurrent

    async def _run(self, fn: AsyncFn[T], args: Args, kwargs: Kwargs) -> T:
        if not self._take_free_slot():
            await self._wait_for_slot()
        in_flight = self._in_flight
        started = self._monotonic()
        try:
            result = await fn(*args, **kwargs)
        except BaseException as error:
            self._finish(started, in_flight, error)
            raise
        self._finish(started, in_flight, None)
        return result

    def _finish(self, started: float, in_flight: int, error: BaseException | None) -> None:
        # A cancelled call, or one an inner policy refused, says nothing about the
        # dependency: its slot is freed without a sample. Freed in any case: a user's
        # algorithm (or overload_on predicate) that raises must not keep the slot.
        try:
            if not isinstance(error, asyncio.CancelledError | RejectedError):
                dropped = error is not None and self._overload(error)
                self._dropped += dropped
                rtt = self._monotonic() - started
                if self._waiters or in_flight >= self.max_concurrent:  # saturated
                    self._service_time = ewma(self._service_time, rtt)
                algorithm = self.algorithm
                limit = algorithm.update(self.max_concurrent, rtt, in_flight, dropped)
                # Held to the algorithm's own bounds: a user's that returned 0 would stop
                # the policy for good (no call could start, so none could raise it).
                self.max_concurrent = max(algorithm.min_limit, min(algorithm.max_limit, limit))
        finally:
            self._release()

    def _release(self) -> None:
        self._in_flight -= 1
        # Hand free slots to waiters, in order: none while the limit has shrunk below
        # the calls in flight, several after it grew.
        # A waiter of another loop gets its slot through that loop, as the bulkhead's
        # (resolving its future from here left it asleep, or raised "Event loop is
        # closed" into the releasing call when that loop had gone).
        while self._waiters and self._in_flight < self.max_concurrent:
            waiter = self._waiters.popleft()
            if waiter.done():
                continue
            if waiter.get_loop() is self._loop and self._thread == _thread_id():
                waiter.set_result(GRANTED)
            elif not self._hand_over(waiter):
                continue  # its loop is closed: nobody waits there any more
            self._in_flight += 1

    def _reject(
        self, why: str, reason: RejectionReason = RejectionReason.CONCURRENCY_LIMIT
    ) -> NoReturn:
        self._rejected += 1
        if self._listening():
            self._emit(Rejected, reason=reason)
        raise ConcurrencyLimitError(self.name, self.max_concurrent, why, reason)

    async def __aenter__(self) -> AdaptiveConcurrency:
        await super().__aenter__()
        task = asyncio.current_task()
        if task is not None:  # (None: a coroutine stepped by hand, no sample)
            self._entered.setdefault(task, []).append((self._monotonic(), self._in_flight))
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            task = asyncio.current_task()
        except RuntimeError:  # no loop: a coroutine finalised by the garbage collector
            task = None
        if task is None or not (stack := self._entered.get(task)):
            # Left in another task than it was entered in: when it started is unknown,
            # so no sample, but the slot is freed (it stayed taken for good, KeyError).
            self._release()
            return
        started, in_flight = stack.pop()
        if not stack:
            del self._entered[task]
        self._finish(started, in_flight, exc)

    def statistics(self) -> AdaptiveConcurrencyStatistics:
        """
        Return a snapshot of the limit, the slots and the counters.
        """
        bulkhead = super().statistics()  # the slots and queue, counted once, there
        return AdaptiveConcurrencyStatistics(
            **{field.name: getattr(bulkhead, field.name) for field in fields(bulkhead)},
            limit=self.max_concurrent,
            min_limit=self.algorithm.min_limit,
            max_limit=self.algorithm.max_limit,
            dropped=self._dropped,
        )

    def __repr__(self) -> str:
        return (
            f"<AdaptiveConcurrency {self.name!r} {self._in_flight}/{self.max_concurrent} in"
            f" flight (limit {self.algorithm.min_limit}..{self.algorithm.max_limit}),"
            f" {len(self._waiters)}/{self.max_queue} queued{shedding(self)}>"
        )
