"""
A circuit breaker whose state lives in a pybreaker storage, shared between processes.

pybreaker's storages (`CircuitMemoryStorage`, `CircuitRedisStorage`) hold a state name,
a failure counter, a success counter and the time the circuit opened. We read and write
them with pybreaker's own key layout and semantics, so a `pybreaker.CircuitBreaker` in a
synchronous program and our asyncio policy in another process share one breaker.

Storages are synchronous (redis-py's blocking client), so every storage round trip runs
in a worker thread: the event loop never waits on Redis. Each call costs one hop before
(admission) and one after (recording). Like pybreaker's, the updates are not atomic
across processes: two processes may both see the threshold and both open the circuit,
which is harmless.

A stalled storage must not stall the application (redis-py has no socket timeout by
default, so a round trip to a frozen server blocks its thread until the server wakes).
Round trips therefore run on a small executor of the breaker's own, never the loop's
default one (which `getaddrinfo` and `to_thread` need), and each is bounded by
`storage_timeout`. When a round trip fails or is overdue, the local state decides: the
mirror below, continued from what the storage last said. While an overdue round trip
still holds its thread (its caller may have given up sooner), no new one is started, so
at most `STORAGE_WORKERS` threads are ever parked on a stalled storage; once they come
back, the storage decides again.

As in the native breaker, an outcome counts only in the state its call was admitted in:
a call that was still running when the circuit opened (seen by this process, or found in
the storage when recording) cannot re-open it, push its reopening back, or close it.

The in-process mirror (`CircuitBreaker.state`, events, statistics, the failure run in
`repr`) follows what this process reads and writes.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, TypeVar

import pybreaker

from ._breaker import CircuitState
from ._breaker_window import Consecutive
from ._engine.errors import RejectedError
from ._engine.events import CallFailed, CallSucceeded, Event, Hook, StateChanged
from ._engine.policy import Args, AsyncFn, Kwargs

if TYPE_CHECKING:
    from ._breaker import CircuitBreaker

__all__ = ["SharedState", "pybreaker_listener_hook"]

T = TypeVar("T")
R = TypeVar("R")

_STATES = {state.value: state for state in CircuitState}

# `opened_at` is stored as a datetime (microseconds): read back, an epoch float may be a
# fraction of a microsecond late, which must not hold the circuit open once
# reset_timeout has passed.
_ROUND_TRIP_ERROR = 1e-6

_log = logging.getLogger("resilient.circuit_breaker")

STORAGE_WORKERS = 4
"""Threads a shared breaker's storage round trips may use at once (its own executor)."""


class _Unavailable(Exception):  # a signal, not an error users see
    """
    The storage failed or did not answer within `storage_timeout`.
    """


class SharedState:
    """
    Drives one `CircuitBreaker` from a pybreaker storage.
    """

    __slots__ = (
        "_breaker",
        "_executor",
        "_failing",
        "_inline",
        "_opened_wall",
        "_parked",
        "_run_length",
        "_seen",
        "_storage",
        "timeout",
    )

    def __init__(
        self,
        breaker: CircuitBreaker,
        storage: pybreaker.CircuitBreakerStorage,
        timeout: float = 1.0,
    ) -> None:
        if not isinstance(storage, pybreaker.CircuitBreakerStorage):
            hint = (
                "; to use a pybreaker.CircuitBreaker, call CircuitBreaker.from_pybreaker()"
                if isinstance(storage, pybreaker.CircuitBreaker)
                else ""
            )
            raise TypeError(
                "CircuitBreaker(storage=...): expected a pybreaker storage"
                f" (CircuitMemoryStorage, CircuitRedisStorage), got {storage!r}{hint}"
            )
        self._breaker = breaker
        self._storage = storage
        # Shared storage is consecutive mode only (the breaker checks before calling us).
        accounting = breaker._accounting  # noqa: SLF001
        if not isinstance(accounting, Consecutive):
            raise TypeError("SharedState needs a consecutive-mode CircuitBreaker")
        self._run_length = accounting
        # In-memory storage does no I/O: a thread hop would only cost time.
        self._inline = isinstance(storage, pybreaker.CircuitMemoryStorage)
        self._opened_wall = 0.0
        self.timeout = timeout
        # Created on first use; its threads start lazily, up to STORAGE_WORKERS.
        self._executor: ThreadPoolExecutor | None = None
        # Round trips still holding a thread, by when they are overdue (time.monotonic,
        # as asyncio.timeout): added from the loop's thread, popped from the worker's
        # when done (dict operations are atomic).
        self._parked: dict[Future[object], float] = {}
        # What the storage last said: (state, failure run or None, clock.monotonic()).
        self._seen: tuple[CircuitState, int | None, float] | None = None
        # Why the last round trip failed (the error's type), None once one answered.
        self._failing: str | None = None

    async def _io(self, fn: Callable[..., R], *args: object) -> R:
        """
        Run a storage round trip; raise `_Unavailable` when it fails or is overdue.
        """
        if self._inline:
            return fn(*args)
        if self.stalled():
            raise _Unavailable
        if self._executor is None:
            self._executor = ThreadPoolExecutor(
                STORAGE_WORKERS, thread_name_prefix=f"resilient-breaker-{self._breaker.name}"
            )
        future = self._executor.submit(fn, *args)
        due = time.monotonic() + self.timeout
        try:
            async with asyncio.timeout(self.timeout):
                result = await asyncio.wrap_future(future)
        except TimeoutError as error:
            if future.done() and not future.cancelled():
                self._failed(error)
                raise _Unavailable from error  # the storage itself timed out
            # Overdue. If it was still queued, the timeout cancelled it; if a thread
            # runs it, that thread stays parked until the storage answers.
            self._park(future, due)
            self._failed(TimeoutError(f"no answer within storage_timeout={self.timeout}s"))
            raise _Unavailable from None
        except asyncio.CancelledError:
            # The caller gave up first (its own timeout, shorter than ours, or a hedge
            # cancelling a loser): the round trip still counts once it is overdue, or
            # callers with short budgets would each wait on a frozen storage forever.
            self._park(future, due)
            raise
        except Exception as error:
            self._failed(error)
            raise _Unavailable from error
        if self._failing is not None:
            self._failing = None
            _log.info("circuit_breaker %r: its storage answers again", self._breaker.name)
        return result

    def _failed(self, error: Exception) -> None:
        # Once per outage: a misconfigured storage (a client with decode_responses=True,
        # a wrong address) fails every round trip, and the breaker shares nothing.
        if self._failing is None:
            _log.warning(
                "circuit_breaker %r: a storage round trip failed (%r); deciding locally"
                " until the storage answers",
                self._breaker.name,
                error,
            )
        self._failing = type(error).__name__

    def stalled(self) -> bool:
        """
        Whether a round trip is overdue and still holds its thread.
        """
        # A finished one may not be popped yet: its worker runs the callbacks.
        now = time.monotonic()
        return any(due <= now and not future.done() for future, due in list(self._parked.items()))

    def _park(self, future: Future[Any], due: float) -> None:
        if future.cancel():
            return
        self._parked[future] = due
        future.add_done_callback(lambda done: self._parked.pop(done, None))

    async def run(self, fn: AsyncFn[T], args: Args, kwargs: Kwargs) -> T:
        breaker = self._breaker
        try:
            state, retry_in = await self._io(self._admit)
            self._note(state, None)
            if retry_in is not None and self._seen is not None and self._seen[1] is not None:
                self._run_length.failures = self._seen[1]  # the run `_admit` read to reject
        except _Unavailable:
            state, retry_in = self._admit_locally()
        self._mirror(state)
        probe = state is CircuitState.HALF_OPEN
        if retry_in is not None or (probe and breaker._probes >= breaker.half_open_max_calls):  # noqa: SLF001
            breaker._reject(retry_in or 0.0)  # noqa: SLF001
        if probe:
            breaker._probes += 1  # noqa: SLF001
        generation = breaker._generation  # noqa: SLF001
        try:
            result = await fn(*args, **kwargs)
        except Exception as error:
            await self._finish(generation, probe, error)
            raise
        except BaseException:
            self._settle(generation, probe)
            breaker._ignored += 1  # noqa: SLF001
            raise
        await self._finish(generation, probe, None)
        return result

    def _settle(self, generation: int, probe: bool) -> bool:
        """
        Give a probe permit back; True when the call was admitted in the current state.
        """
        breaker = self._breaker
        current = generation == breaker._generation  # noqa: SLF001
        if probe and current:
            breaker._probes -= 1  # noqa: SLF001
        return current

    async def _finish(self, generation: int, probe: bool, error: BaseException | None) -> None:
        breaker = self._breaker
        current = self._settle(generation, probe)
        if error is not None and breaker._excluded(error):  # noqa: SLF001
            breaker._ignored += 1  # noqa: SLF001
            return
        breaker._count(error is not None, False)  # noqa: SLF001
        if not current:
            # Admitted before this process saw the breaker move on (as in the native
            # breaker): a stale outcome must not re-open, extend or close the circuit.
            return
        record = self._record_failure if error is not None else self._record_success
        try:
            state, failures = await self._io(record, probe)
            self._note(state, failures)
        except _Unavailable:
            state, failures = self._record_locally(probe, failed=error is not None)
        self._mirror(state)
        if failures is not None:
            # Keep repr() and statistics() showing the (shared, or local) failure run.
            self._run_length.failures = failures

    def _note(self, state: CircuitState, failures: int | None) -> None:
        if failures is None and self._seen is not None:
            failures = self._seen[1]
        self._seen = (state, failures, self._breaker.clock.monotonic())

    def describe(self) -> str:
        """
        What the storage said last, for the breaker's repr.

        Returns:
            E.g. ``storage: closed failures=2 (0.4s ago)``, with ``stalled, deciding
            locally`` while a round trip is overdue, ``failing (AttributeError), deciding
            locally`` after one failed.
        """
        if self._seen is None:
            text = "storage: not read yet"
        else:
            state, failures, when = self._seen
            run = "" if failures is None else f" failures={failures}"
            ago = self._breaker.clock.monotonic() - when
            text = f"storage: {state.value}{run} ({ago:.1f}s ago)"
        if self.stalled():
            return f"{text}, stalled, deciding locally"
        if self._failing is not None:
            return f"{text}, failing ({self._failing}), deciding locally"
        return text

    # --- local decisions, while the storage is unreachable or overdue ---

    def _admit_locally(self) -> tuple[CircuitState, float | None]:
        state = self._breaker.state
        if state is not CircuitState.OPEN:
            return state, None
        wait = self.retry_in()
        return (state, wait) if wait > _ROUND_TRIP_ERROR else (CircuitState.HALF_OPEN, None)

    def _record_locally(self, probe: bool, *, failed: bool) -> tuple[CircuitState, int | None]:
        # `_finish` only records outcomes admitted in the current state (generation),
        # so the state is still the one the call was admitted in.
        state = self._breaker.state
        if not failed:
            if probe and self._breaker._probe_successes + 1 < self._breaker.success_threshold:  # noqa: SLF001
                self._breaker._probe_successes += 1  # noqa: SLF001
                return state, None
            return CircuitState.CLOSED, 0
        failures = self._run_length.failures + 1
        if probe or failures >= (self._breaker.failure_threshold or 1):
            self._opened_wall = self._breaker.clock.wall()
            return CircuitState.OPEN, failures
        return state, failures

    def _mirror(self, state: CircuitState) -> None:
        self._breaker._transition(state)  # noqa: SLF001

    # --- storage round trips (run in a worker thread) ---

    def _admit(self) -> tuple[CircuitState, float | None]:
        """
        Return the state and, when the call must be rejected, the seconds to wait.
        """
        state = self._state()
        if state is not CircuitState.OPEN:
            return state, None
        self._read_opened()
        wait = self._opened_wall + self._breaker.reset_timeout - self._breaker.clock.wall()
        if wait > _ROUND_TRIP_ERROR:
            # Rejections are rare and cheap: learn the run that opened it, for repr().
            self._note(state, self._storage.counter)
            return state, wait
        self._storage.state = CircuitState.HALF_OPEN.value
        self._storage.reset_success_counter()
        return CircuitState.HALF_OPEN, None

    def _state(self) -> CircuitState:
        return _STATES.get(self._storage.state, CircuitState.CLOSED)

    def _read_opened(self) -> None:
        opened = self._storage.opened_at
        self._opened_wall = opened.timestamp() if opened is not None else 0.0

    def _stale(self, state: CircuitState) -> CircuitState:
        # The circuit moved on elsewhere while the call ran: record nothing, but learn
        # when it opened so `retry_in()` is right for the mirror.
        if state is CircuitState.OPEN:
            self._read_opened()
        return state

    def _record_failure(self, probe: bool) -> tuple[CircuitState, int | None]:
        """
        Count a failure; return the state and the failure run (None when not read).

        An outcome counts only in the state it was admitted in: another process may
        have opened (or probed and closed) the circuit while this call ran.
        """
        storage = self._storage
        state = self._state()
        if state is not (CircuitState.HALF_OPEN if probe else CircuitState.CLOSED):
            return self._stale(state), None
        if probe:
            self._open()
            return CircuitState.OPEN, None
        storage.increment_counter()
        failures = storage.counter
        if failures < (self._breaker.failure_threshold or 1):
            return state, failures
        self._open()
        return CircuitState.OPEN, failures

    def _record_success(self, probe: bool) -> tuple[CircuitState, int | None]:
        """
        Count a success; return the state and the failure run (None when not read).
        """
        storage = self._storage
        state = self._state()
        if state is not (CircuitState.HALF_OPEN if probe else CircuitState.CLOSED):
            return self._stale(state), None
        if not probe:
            storage.reset_counter()
            return state, 0
        storage.increment_success_counter()
        if storage.success_counter < self._breaker.success_threshold:
            return state, None
        storage.state = CircuitState.CLOSED.value
        storage.reset_counter()
        return CircuitState.CLOSED, 0

    def _open(self) -> None:
        now = self._breaker.clock.wall()
        self._storage.opened_at = datetime.fromtimestamp(now, UTC)
        self._storage.state = CircuitState.OPEN.value
        self._storage.reset_success_counter()
        self._opened_wall = now

    def force(self, state: CircuitState) -> None:
        """
        Write `state` to the storage now (blocking; for operators' switches).
        """
        if state is CircuitState.OPEN:
            self._open()
        else:
            self._storage.state = state.value
            self._storage.reset_counter()

    def retry_in(self) -> float:
        """
        Seconds until the breaker (as last seen open by this process) allows a probe.
        """
        if self._breaker.state is not CircuitState.OPEN:
            return 0.0
        wait = self._opened_wall + self._breaker.reset_timeout - self._breaker.clock.wall()
        return max(0.0, wait)


def pybreaker_listener_hook(breaker: pybreaker.CircuitBreaker) -> Hook:
    """
    A hook that reports state changes, successes and failures to `breaker`'s listeners.
    """

    def forward(event: Event) -> None:
        for listener in breaker.listeners:
            if isinstance(event, StateChanged):
                old = pybreaker.CircuitBreakerState(breaker, event.old.value)
                new = pybreaker.CircuitBreakerState(breaker, event.new.value)
                listener.state_change(breaker, old, new)
            elif isinstance(event, CallSucceeded):
                listener.success(breaker)
            elif isinstance(event, CallFailed) and _counts(breaker, event.error):
                listener.failure(breaker, event.error)

    return forward


def _counts(breaker: pybreaker.CircuitBreaker, error: BaseException) -> bool:
    return (
        isinstance(error, Exception)
        and not isinstance(error, RejectedError)
        and breaker.is_system_error(error)
    )
