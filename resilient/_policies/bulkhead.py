"""
Bulkhead: cap the calls in flight to a dependency, with an optional bounded queue.

A free slot is taken without awaiting. When none is free, up to `max_queue` callers wait
by priority, then in arrival order (for at most `max_wait` seconds); the rest are
rejected at once with `BulkheadFullError`. A released slot is handed straight to the
first waiter, so a newcomer can't overtake the queue.

Load shedding in the queue (docs/overload.md): a full queue makes room for a caller of
higher `Priority` by shedding its lowest-priority waiter; a waiter leaves the queue at
once when its deadline (`remaining_time()`) is passing, that is when the time left falls
below the typical service time (an EWMA of the calls that went through the queue or took
the last slot), and a caller whose deadline is already that short is refused without
queueing. Each refusal carries its `RejectionReason`. The free-slot path only times the
call that takes the last slot.

Cancellation never leaks a slot: a waiter cancelled after it was handed a slot passes it
on, and a running call's slot is released however the call ends. The hand-over logic is
the one trio's `CapacityLimiter` and `asyncio.Semaphore` (3.11.1+) use.

Its waiters are futures of one event loop, woken by whichever call releases a slot, so a
bulkhead serves one loop at a time (as asyncio's own primitives do): used from another
thread while the loop that took it over is still running, it raises `PolicyMisuseError` at
once rather than strand a waiter. Once that loop has stopped (an `asyncio.run`
returned) the next loop takes the bulkhead over silently. The hot path checks only the
thread (`asyncio.get_running_loop()` costs a `getpid()` on 3.11); should a waiter of
another thread's loop still be handed a slot (a thread that went on to a new loop while
another took the bulkhead over), it is woken through `call_soon_threadsafe`.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections import deque
from collections.abc import Iterable
from dataclasses import KW_ONLY, dataclass
from types import TracebackType
from typing import Final, NoReturn, TypeVar

from .._engine.clock import Clock, TimerHandle
from .._engine.context import remaining_time
from .._engine.errors import BulkheadFullError, PolicyMisuseError
from .._engine.events import Hook, Rejected, RejectionReason
from .._engine.fusion import NOT_NOW
from .._engine.policy import Args, AsyncFn, Kwargs, Policy
from .._engine.validate import check_int, check_seconds
from .priority import current_priority
from .wait_queue import GRANTED, TIMED_OUT, Outcome, Waiter, enqueue, ewma, leave, why_left

__all__ = ["Bulkhead", "BulkheadStatistics", "shedding"]

T = TypeVar("T")

_thread_id = threading.get_ident  # a global lookup on the hot path, not two
_UNTIMED: Final = object()  # _open's token for a call that is no service-time sample
_ADOPTING = threading.Lock()  # two loops taking a bulkhead over at once: one wins


_NO_WAITERS: deque[Waiter] = deque(maxlen=0)


@dataclass(frozen=True, slots=True)
class BulkheadStatistics:
    """
    A snapshot of a `Bulkhead`.

    Attributes:
        max_concurrent: Slots in all.
        max_queue: Callers allowed to wait.
        in_flight: Slots taken now.
        queued: Callers waiting now.
        accepted: Calls that got a slot.
        rejected: Calls refused with `BulkheadFullError` (shed and expired included).
        shed: Waiters shed from a full queue to make room for a higher priority.
        expired: Callers refused, or sent out of the queue, because their deadline
            was passing.
        service_time: The typical service time, in seconds: an average of the calls
            that went through the queue or took the last slot (0.0 until one has
            finished).
    """

    max_concurrent: int
    max_queue: int
    in_flight: int
    queued: int
    accepted: int
    rejected: int
    _: KW_ONLY  # added later, with defaults: snapshots built by older code still compare
    shed: int = 0
    expired: int = 0
    service_time: float = 0.0


class Bulkhead(Policy):
    """
    Allow at most `max_concurrent` calls at once; queue or reject the rest.

    Usable as a decorator, with `.call(fn, ...)`, or as ``async with bulkhead:``.

    Waiters are served by `Priority`, then in arrival order; a full queue sheds its
    lowest-priority waiter for a higher-priority caller, and a waiter whose deadline
    can't be met leaves the queue at once (docs/overload.md).

    It serves one event loop at a time: a call from another loop while the loop that
    used it last still runs (in another thread) raises `PolicyMisuseError`; create one
    Bulkhead per event loop. After that loop has stopped, any loop may take it over.

    Args:
        max_concurrent: Calls allowed in flight, >= 1.
        max_queue: Callers allowed to wait for a slot (default 0: reject at once).
        max_wait: Longest wait in the queue, in seconds (default: no limit).
        name: A label for errors, events and metrics (default ``"bulkhead"``).
        clock: Time source (default: the system clock).
        hooks: Event hooks for this policy only.

    Raises:
        ValueError: A parameter is out of range.
    """

    kind = "bulkhead"
    _fusion = "step"  # runs inside a fused pipeline's frame (_engine/fusion.py)
    __slots__ = (
        "_accepted",
        "_expired",
        "_in_flight",
        "_loop",
        "_rejected",
        "_service_time",
        "_shed",
        "_thread",
        "_waiters",
        "max_concurrent",
        "max_queue",
        "max_wait",
    )

    def __init__(
        self,
        max_concurrent: int,
        *,
        max_queue: int = 0,
        max_wait: float | None = None,
        name: str | None = None,
        clock: Clock | None = None,
        hooks: Iterable[Hook] | None = None,
    ) -> None:
        super().__init__(name=name, clock=clock, hooks=hooks)
        self.max_concurrent = check_int("Bulkhead", "max_concurrent", max_concurrent, minimum=1)
        self.max_queue = check_int("Bulkhead", "max_queue", max_queue, minimum=0)
        self.max_wait = (
            None
            if max_wait is None
            else check_seconds("Bulkhead", "max_wait", max_wait, allow_zero=True)
        )
        if self.max_wait and self.max_queue == 0:
            raise ValueError(
                f"{type(self).__name__}(max_wait={max_wait!r}): with max_queue=0 nobody"
                " waits; give max_queue= too"
            )
        self._loop: asyncio.AbstractEventLoop | None = None  # the loop it serves ...
        self._thread = 0  # ... and the thread running it (get_ident() is never 0)
        self._in_flight = 0
        # By priority, then FIFO (_wait_queue). A deque costs ~760 bytes: a bulkhead gets
        # its own when a first caller has to wait; until then it shares an empty one that
        # can't be filled by mistake (maxlen=0 drops what is appended).
        self._waiters: deque[Waiter] = _NO_WAITERS
        self._accepted = self._rejected = self._shed = self._expired = 0
        self._service_time = 0.0  # EWMA of queued calls' durations; 0.0: none yet

    @property
    def in_flight(self) -> int:
        """
        Calls holding a slot now.
        """
        return self._in_flight

    @property
    def queued(self) -> int:
        """
        Callers waiting for a slot now.
        """
        return len(self._waiters)

    async def _run(self, fn: AsyncFn[T], args: Args, kwargs: Kwargs) -> T:
        # The common case, `_open` written out (every decorated call pays it): a free
        # slot, not the last one, taken with no call, no await, no future.
        if (
            self._thread == _thread_id()
            and self._in_flight < self.max_concurrent - 1
            and not self._waiters
        ):
            self._in_flight += 1
            self._accepted += 1
            try:
                return await fn(*args, **kwargs)
            finally:
                self._release()
        token = self._open()
        if token is NOT_NOW:
            await self._wait_for_slot()
            token = self._monotonic()  # it waited: a sample, as below
        if token is _UNTIMED:
            try:
                return await fn(*args, **kwargs)
            finally:
                self._release()
        try:
            result = await fn(*args, **kwargs)
        except BaseException as error:
            self._close(token, error)
            raise
        self._close(token, None)
        return result

    def _open(self) -> object:
        """
        Take a free slot (`_run`, and a fused pipeline's step).

        Its token: `_UNTIMED`, or the time when the call is a service-time sample;
        `NOT_NOW` when it must queue.
        """
        # The common case, `_take_free_slot` written out: no call, no await, no future.
        if (
            self._thread == _thread_id()
            and self._in_flight < self.max_concurrent
            and not self._waiters
        ):
            self._in_flight += 1
            self._accepted += 1
        elif not self._take_free_slot():  # (another thread's loop used it last)
            return NOT_NOW
        if self._in_flight == self.max_concurrent:
            # It took the last slot: saturated, so a sample, as a call that waited is.
            # Were only queued calls samples, callers refused at the door for a stale,
            # long service time would queue none, and the estimate would never be
            # corrected. (The rest of the free-slot path is not timed: two clock reads.)
            return self._monotonic()
        return _UNTIMED

    def _close(self, token: object, error: BaseException | None) -> BaseException | None:
        """
        Give the slot back; `error` is raised unchanged.

        A timed call's duration is a sample of the service time the deadline-aware queue
        compares with, unless it was cancelled (then it says nothing of the service).
        """
        if token is _UNTIMED or isinstance(error, asyncio.CancelledError):
            self._release()
        else:
            self._sampled(token)  # type: ignore[arg-type]  # a time: _open's other token
        return error

    def _sampled(self, started: float) -> None:
        self._service_time = ewma(self._service_time, self._monotonic() - started)
        self._release()

    def _take_free_slot(self) -> bool:
        if self._thread != _thread_id():
            self._adopt()
        if self._in_flight < self.max_concurrent and not self._waiters:
            self._in_flight += 1
            self._accepted += 1
            return True
        return False

    def _adopt(self) -> None:
        loop = asyncio.get_running_loop()
        with _ADOPTING:
            owner = self._loop
            if owner is not None and owner is not loop and owner.is_running():
                raise PolicyMisuseError(
                    f"Bulkhead {self.name!r} is in use by an event loop running in another"
                    " thread; a Bulkhead serves one event loop at a time: create one"
                    " Bulkhead per event loop"
                )
            self._loop, self._thread = loop, _thread_id()

    async def _wait_for_slot(self) -> None:
        level = current_priority()
        full = len(self._waiters) >= self.max_queue
        if full and not (self._waiters and self._waiters[-1].priority < level):
            self._reject("no free slot and the queue is full")
        left = remaining_time()
        expected = self._service_time
        if left is not None and left <= expected:
            self._refuse_deadline(left)
        if full:
            self._shed_last()
        waiter = Waiter(asyncio.get_running_loop(), level)
        if self._waiters is _NO_WAITERS:
            self._waiters = deque()
        enqueue(self._waiters, waiter)
        timer = self._start_timer(waiter, left, expected)
        try:
            outcome = await waiter
        except BaseException:
            if waiter.done() and not waiter.cancelled() and waiter.result() is GRANTED:
                self._release()  # we were handed a slot but won't use it: pass it on
            else:
                self._forget(waiter)
            raise
        finally:
            if timer is not None:
                timer.cancel()
        if outcome is not GRANTED:
            if outcome is not RejectionReason.PRIORITY_SHED:  # the shed were taken out
                self._forget(waiter)  # (looking for them would scan the whole queue)
            self._leave_queue(outcome, expected)
        self._accepted += 1

    def _start_timer(
        self, waiter: Waiter, left: float | None, expected: float
    ) -> TimerHandle | None:
        # One timer per waiter: at max_wait, or when the time left before the deadline
        # falls below the typical service time, whichever comes first.
        now = self._clock.monotonic()
        at: float | None = None
        outcome: Outcome = TIMED_OUT
        if self.max_wait is not None:
            at = now + self.max_wait
        if left is not None and (at is None or now + left - expected < at):
            at = now + left - expected
            outcome = (
                RejectionReason.DEADLINE_TOO_SHORT if expected
                else RejectionReason.DEADLINE_EXCEEDED
            )  # fmt: skip
        if at is None:
            return None
        return self._clock.call_at(at, lambda: leave(waiter, outcome))

    def _shed_last(self) -> None:
        # Make room for a higher-priority caller: the tail is the lowest priority's
        # latest arrival (_wait_queue). One already leaving (cancelled) frees its place.
        victim = self._waiters.pop()
        if not victim.done():
            self._shed += 1
            victim.set_result(RejectionReason.PRIORITY_SHED)

    def _refuse_deadline(self, left: float) -> NoReturn:
        self._expired += 1
        if left <= 0:
            self._reject("the caller's deadline has passed", RejectionReason.DEADLINE_EXCEEDED)
        self._reject(
            f"{left:.3f}s left before the caller's deadline, less than the typical"
            f" service time ({self._service_time:.3f}s)",
            RejectionReason.DEADLINE_TOO_SHORT,
        )

    def _leave_queue(self, outcome: Outcome, expected: float) -> NoReturn:
        if not isinstance(outcome, RejectionReason):  # TIMED_OUT: GRANTED never gets here
            self._reject(f"waited {self.max_wait:g}s in the queue")
        # The shed were counted when shed (only a waiter still waiting was).
        self._expired += outcome is not RejectionReason.PRIORITY_SHED
        self._reject(why_left(outcome, expected), outcome)

    def _forget(self, waiter: Waiter) -> None:
        with contextlib.suppress(ValueError):  # already handed over or expired
            self._waiters.remove(waiter)

    def _release(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if waiter.done():
                continue
            # The slot moves to the waiter; in_flight unchanged.
            if waiter.get_loop() is self._loop and self._thread == _thread_id():
                waiter.set_result(True)
                return
            if self._hand_over(waiter):
                return
        self._in_flight -= 1

    def _hand_over(self, waiter: Waiter) -> bool:
        loop = waiter.get_loop()
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:  # released outside any loop (a coroutine closed by the GC)
            running = None
        if loop is running:
            waiter.set_result(True)
            return True
        try:  # a future is only ever resolved from its own loop's thread
            loop.call_soon_threadsafe(self._grant, waiter)
        except RuntimeError:  # its loop is closed: nobody waits there any more
            return False
        return True

    def _grant(self, waiter: Waiter) -> None:
        if waiter.done():  # cancelled or timed out while the slot was on its way
            self._release()
        else:
            waiter.set_result(True)

    def _reject(
        self, why: str, reason: RejectionReason = RejectionReason.BULKHEAD_FULL
    ) -> NoReturn:
        self._rejected += 1
        if self._listening():
            self._emit(Rejected, reason=reason)
        raise BulkheadFullError(self.name, self.max_concurrent, self.max_queue, why, reason)

    async def __aenter__(self) -> Bulkhead:
        if not self._take_free_slot():
            await self._wait_for_slot()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._release()

    def statistics(self) -> BulkheadStatistics:
        """
        Return a snapshot of this bulkhead's slots and counters.
        """
        return BulkheadStatistics(
            max_concurrent=self.max_concurrent,
            max_queue=self.max_queue,
            in_flight=self._in_flight,
            queued=len(self._waiters),
            accepted=self._accepted,
            rejected=self._rejected,
            shed=self._shed,
            expired=self._expired,
            service_time=self._service_time,
        )

    def __repr__(self) -> str:
        return (
            f"<Bulkhead {self.name!r} {self._in_flight}/{self.max_concurrent} in flight,"
            f" {len(self._waiters)}/{self.max_queue} queued{shedding(self)}>"
        )


def shedding(bulkhead: Bulkhead) -> str:
    """
    The repr's note on shed and expired waiters (internal).
    """
    # Shown once the queue has shed anybody: quiet reprs for the common case.
    if not (bulkhead._shed or bulkhead._expired):  # noqa: SLF001  # its own module
        return ""
    return f", {bulkhead._shed} shed, {bulkhead._expired} expired"  # noqa: SLF001
