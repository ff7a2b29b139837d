"""
pybreaker storages as a `BreakerStore`: ``CircuitBreaker(storage=pybreaker...Storage())``.

pybreaker's storages (`CircuitMemoryStorage`, `CircuitRedisStorage`) hold a state name,
a failure counter, a success counter and the time the circuit opened. We read and write
them with pybreaker's own key layout and semantics, so a `pybreaker.CircuitBreaker` in a
synchronous program and our asyncio policy in another process share one breaker.

These storages are synchronous (redis-py's blocking client), so each round trip runs in
a worker thread of the store's own small executor (never the loop's default one, which
`getaddrinfo` and `to_thread` need): at most `STORAGE_WORKERS` threads are ever parked
on a stalled storage. Updates are several commands, not atomic across processes (as in
pybreaker): two processes may both see the threshold and both open the circuit, which
is harmless; the half-open probe limit is per process. Consecutive mode only: the
storage holds counters, not windows. `RedisBreakerStore` has none of these limits.

An outcome counts only in the state its call was admitted in: a call that was still
running when another process opened (or probed and closed) the circuit records nothing.

pybreaker is an optional extra (``pip install "resilient[pybreaker]"``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any, TypeVar

try:
    import pybreaker
except ImportError as exc:  # pragma: no cover - the dev extra installs pybreaker
    raise ImportError(
        "pybreaker storages and CircuitBreaker.from_pybreaker() need pybreaker:"
        ' pip install "resilient[pybreaker]"'
    ) from exc

from ..._engine.clock import Clock
from ..._engine.errors import RejectedError
from ..._engine.events import CallFailed, CallSucceeded, Event, Hook, StateChanged
from .accounting import WindowTotals
from .store import BreakerAdmission, BreakerObservation, BreakerSpec, CircuitState

__all__ = ["STORAGE_WORKERS", "PybreakerStore", "pybreaker_listener_hook"]

R = TypeVar("R")

_STATES = {state.value: state for state in CircuitState}
_CLOSED, _OPEN, _HALF_OPEN = CircuitState.CLOSED, CircuitState.OPEN, CircuitState.HALF_OPEN

# `opened_at` is stored as a datetime (microseconds): read back, an epoch float may be a
# fraction of a microsecond late, which must not hold the circuit open once
# reset_timeout has passed.
_ROUND_TRIP_ERROR = 1e-6

STORAGE_WORKERS = 4
"""Threads a shared breaker's storage round trips may use at once (its own executor)."""


class PybreakerStore:
    """
    A `BreakerStore` over a pybreaker storage (consecutive mode, per-process probes).

    Args:
        storage: A `pybreaker.CircuitBreakerStorage`.
        clock: The breaker's clock: its wall time stamps and reads `opened_at`.

    Raises:
        TypeError: `storage` is not a pybreaker storage.
    """

    __slots__ = ("_clock", "_executor", "_name", "_storage", "remote")

    def __init__(self, storage: object, clock: Clock) -> None:
        if not isinstance(storage, pybreaker.CircuitBreakerStorage):
            hint = (
                "; to use a pybreaker.CircuitBreaker, call CircuitBreaker.from_pybreaker()"
                if isinstance(storage, pybreaker.CircuitBreaker)
                else ""
            )
            raise TypeError(
                "CircuitBreaker(storage=...): expected a pybreaker storage"
                " (CircuitMemoryStorage, CircuitRedisStorage) or a BreakerStore"
                f" (RedisBreakerStore), got {storage!r}{hint}"
            )
        self._storage = storage
        self._clock = clock
        # In-memory storage does no I/O: a thread hop would only cost time.
        self.remote = not isinstance(storage, pybreaker.CircuitMemoryStorage)
        self._name = "circuit_breaker"
        self._executor: ThreadPoolExecutor | None = None  # threads start lazily

    def bind(self, spec: BreakerSpec) -> None:
        """
        Accept consecutive mode only: the storage holds counters, not windows.
        """
        if spec.failure_threshold is None:
            raise ValueError(
                "CircuitBreaker(storage=...): a pybreaker storage holds consecutive-failure"
                " counters only; drop the window parameters (or use RedisBreakerStore)"
            )
        self._name = spec.name

    async def admit(self, spec: BreakerSpec) -> BreakerAdmission:
        """
        Admit a call (moving an open circuit past reset_timeout to half-open).
        """
        return await self._io(self._admit, spec)

    async def record(
        self, spec: BreakerSpec, admission: BreakerAdmission, failed: bool | None, slow: bool
    ) -> BreakerObservation:
        """
        Count a success or a failure in the state the call was admitted in.
        """
        del slow  # consecutive mode has no slow calls
        if failed is None:  # no permits to give back: the probe limit is per process
            return BreakerObservation(admission.state)
        record = self._record_failure if failed else self._record_success
        return await self._io(record, spec, admission.state is _HALF_OPEN)

    async def force(self, spec: BreakerSpec, state: CircuitState) -> BreakerObservation:
        """
        Open or close the storage's circuit now.
        """
        return await self._io(self._force, spec, state)

    async def _io(self, fn: Callable[..., R], *args: Any) -> R:
        if not self.remote:
            return fn(*args)
        if self._executor is None:
            self._executor = ThreadPoolExecutor(
                STORAGE_WORKERS, thread_name_prefix=f"resilient-breaker-{self._name}"
            )
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    # --- round trips (in a worker thread unless the storage is in memory) ---

    def _admit(self, spec: BreakerSpec) -> BreakerAdmission:
        state = self._state()
        if state is not _OPEN:
            return BreakerAdmission(admitted=True, state=state)
        wait = self._opened_wall() + spec.reset_timeout - self._clock.wall()
        if wait > _ROUND_TRIP_ERROR:
            # Rejections are rare and cheap: learn the run that opened it, for repr().
            return BreakerAdmission(False, state, retry_in=wait, totals=self._totals())
        self._storage.state = _HALF_OPEN.value
        self._storage.reset_success_counter()
        return BreakerAdmission(admitted=True, state=_HALF_OPEN)

    def _state(self) -> CircuitState:
        return _STATES.get(self._storage.state, _CLOSED)

    def _opened_wall(self) -> float:
        opened = self._storage.opened_at
        return opened.timestamp() if opened is not None else 0.0

    def _totals(self, failures: int | None = None) -> WindowTotals:
        run = self._storage.counter if failures is None else failures
        return WindowTotals(calls=run, failures=run, slow_calls=0)

    def _stale(self, spec: BreakerSpec, state: CircuitState) -> BreakerObservation:
        # The circuit moved on elsewhere while the call ran: record nothing, but learn
        # when it opened so the breaker's retry_in() is right.
        if state is not _OPEN:
            return BreakerObservation(state)
        wait = self._opened_wall() + spec.reset_timeout - self._clock.wall()
        return BreakerObservation(state, retry_in=max(0.0, wait))

    def _record_failure(self, spec: BreakerSpec, probe: bool) -> BreakerObservation:
        state = self._state()
        if state is not (_HALF_OPEN if probe else _CLOSED):
            return self._stale(spec, state)
        if probe:
            self._open()
            return BreakerObservation(_OPEN, retry_in=spec.reset_timeout)
        self._storage.increment_counter()
        totals = self._totals()
        if totals.failures < (spec.failure_threshold or 1):
            return BreakerObservation(state, totals=totals)
        self._open()
        return BreakerObservation(_OPEN, retry_in=spec.reset_timeout, totals=totals)

    def _record_success(self, spec: BreakerSpec, probe: bool) -> BreakerObservation:
        state = self._state()
        if state is not (_HALF_OPEN if probe else _CLOSED):
            return self._stale(spec, state)
        if not probe:
            self._storage.reset_counter()
            return BreakerObservation(state, totals=self._totals(0))
        self._storage.increment_success_counter()
        if self._storage.success_counter < spec.success_threshold:
            return BreakerObservation(state)
        self._storage.state = _CLOSED.value
        self._storage.reset_counter()
        return BreakerObservation(_CLOSED, totals=self._totals(0))

    def _open(self) -> None:
        self._storage.opened_at = datetime.fromtimestamp(self._clock.wall(), UTC)
        self._storage.state = _OPEN.value
        self._storage.reset_success_counter()

    def _force(self, spec: BreakerSpec, state: CircuitState) -> BreakerObservation:
        if state is _OPEN:
            self._open()
            return BreakerObservation(state, retry_in=spec.reset_timeout)
        self._storage.state = state.value
        self._storage.reset_counter()
        return BreakerObservation(state, totals=self._totals(0))

    def __repr__(self) -> str:
        return f"<PybreakerStore {type(self._storage).__name__}>"


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
