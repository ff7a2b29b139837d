"""
Circuit breaker: stop calling a dependency that keeps failing, probe it, recover.

    CLOSED --(failures trip the accounting)--> OPEN --(reset_timeout)--> HALF_OPEN
    HALF_OPEN --(success_threshold successes)--> CLOSED
    HALF_OPEN --(a failed probe)--> OPEN

Closed, outcomes are counted by consecutive failures or a sliding window (by count or by
time, with failure-rate and slow-call-rate thresholds, as resilience4j does). Open, calls
are rejected with `CircuitOpenError` until `reset_timeout` has passed; the next call then
moves the breaker to half-open, where at most `half_open_max_calls` probes run at once.

Only outcomes of calls admitted in the current state count: a slow call that started
before the breaker opened cannot re-open or close it later. Cancellation is never an
outcome, and a cancelled probe gives its permit back.

With `storage=` a `BreakerStore` (`RedisBreakerStore`, or a pybreaker storage through
its adapter) holds the state every process shares and decides atomically; this machine
follows what it says, and decides alone while the store can't answer within
`storage_timeout` (see `store`, `link`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

from ..._engine.clock import Clock
from ..._engine.errors import PROGRAMMING_ERRORS, CircuitOpenError, RejectedError
from ..._engine.events import Hook, Rejected, RejectionReason, StateChanged
from ..._engine.policy import Args, AsyncFn, Kwargs, Policy
from ..._engine.validate import check_exception_types, check_int, check_seconds, error_matcher
from .accounting import Accounting, Consecutive, WindowTotals
from .link import StoreLink
from .settings import BreakerStatistics, Rules, store_of, window_accounting
from .store import BreakerAdmission, BreakerSpec, BreakerStore, CircuitState

if TYPE_CHECKING:
    import pybreaker

__all__ = ["BreakerStatistics", "CircuitBreaker", "CircuitState"]

T = TypeVar("T")


_CLOSED = CircuitState.CLOSED
_HALF_OPEN = CircuitState.HALF_OPEN
_OPEN = CircuitState.OPEN
_NOT_AN_OUTCOME: tuple[type[Exception], ...] = (RejectedError, *PROGRAMMING_ERRORS)


def _not_an_outcome(error: BaseException) -> bool:
    return isinstance(error, _NOT_AN_OUTCOME)


class CircuitBreaker(Policy):
    """
    Reject calls fast while a dependency keeps failing; probe it and recover.

    Consecutive mode (the default): `failure_threshold` failures in a row open it.
    Window mode (when `failure_rate`, `slow_call_duration` or `window_duration` is
    given): over the last `window` calls, or the last `window_duration` seconds, once
    `min_calls` are in, a failure rate >= `failure_rate` or a slow-call rate >=
    `slow_call_rate` opens it.

    Args:
        name: A label for errors, events and metrics (default ``"circuit_breaker"``).
        failure_threshold: Consecutive failures that open the breaker (default 5).
        failure_rate: Failure share in (0, 1] that opens it (window mode; default 0.5).
        window: Calls in a count-based window (default 100, at most 10,000,000).
        window_duration: Seconds in a time-based window instead of a count.
        min_calls: Calls the window needs before rates are judged (default 10, at most
            `window` for a count-based window).
        slow_call_duration: Seconds from which a call counts as slow.
        slow_call_rate: Slow-call share in (0, 1] that opens the breaker (default 1.0).
        reset_timeout: Seconds the breaker stays open before a probe is let through.
        success_threshold: Successful probes needed to close again.
        half_open_max_calls: Probes allowed in flight at once while half-open.
        exclude: Exception types, or a predicate, that are neither success nor failure.
            `RejectedError` (e.g. an inner full bulkhead) and `PROGRAMMING_ERRORS`
            (``TypeError``, ``AttributeError``, ...) are always excluded.
        storage: A `BreakerStore` to keep the state in, shared between processes:
            `RedisBreakerStore` (every mode), or a pybreaker storage
            (`CircuitMemoryStorage`, `CircuitRedisStorage`; consecutive mode only,
            needs the ``pybreaker`` extra).
        storage_timeout: Seconds a storage round trip may take (default 1.0; only with
            `storage=`). Past it, or when the storage fails, this process's own view
            of the state decides the call.
        clock: Time source (default: the system clock).
        hooks: Event hooks for this policy only.

    Raises:
        ValueError: A parameter is out of range, or window and consecutive parameters
            are mixed.
    """

    kind = "circuit_breaker"
    _fusion = "step"  # runs inside a fused pipeline's frame (_engine/fusion.py)
    __slots__ = (
        "_accounting",
        "_excluded",
        "_failures",
        "_generation",
        "_ignored",
        "_opened",
        "_opened_at",
        "_probe_successes",
        "_probes",
        "_rejections",
        "_shared",
        "_slow",
        "_slow_calls",
        "_state",
        "_successes",
        "failure_threshold",
        "half_open_max_calls",
        "reset_timeout",
        "slow_call_duration",
        "success_threshold",
    )

    def __init__(
        self,
        name: str | None = None,
        *,
        failure_threshold: int | None = None,
        failure_rate: float | None = None,
        window: int | None = None,
        window_duration: float | None = None,
        min_calls: int | None = None,
        slow_call_duration: float | None = None,
        slow_call_rate: float | None = None,
        reset_timeout: float = 30.0,
        success_threshold: int = 1,
        half_open_max_calls: int = 1,
        exclude: Any = (),
        storage: BreakerStore | pybreaker.CircuitBreakerStorage | None = None,
        storage_timeout: float | None = None,
        clock: Clock | None = None,
        hooks: Iterable[Hook] | None = None,
    ) -> None:
        super().__init__(name=name, clock=clock, hooks=hooks)
        owner = "CircuitBreaker"
        windowed = any(
            v is not None
            for v in (
                failure_rate,
                window,
                window_duration,
                min_calls,
                slow_call_duration,
                slow_call_rate,
            )
        )
        if windowed and failure_threshold is not None:
            raise ValueError(
                "CircuitBreaker(failure_threshold=...): consecutive mode can't be combined"
                " with window parameters (failure_rate, window, window_duration, min_calls,"
                " slow_call_duration, slow_call_rate); pass one or the other"
            )
        store = store_of(storage, self._clock)
        # A pybreaker storage's adapter rejects every window parameter, with its reason.
        adapted = store is not None and store is not storage
        if slow_call_rate is not None and slow_call_duration is None and not adapted:
            raise ValueError(
                "CircuitBreaker(slow_call_rate=...): needs slow_call_duration= to say which"
                " calls are slow"
            )
        self.reset_timeout = check_seconds(owner, "reset_timeout", reset_timeout)
        self.success_threshold = check_int(owner, "success_threshold", success_threshold, minimum=1)
        self.half_open_max_calls = check_int(
            owner, "half_open_max_calls", half_open_max_calls, minimum=1
        )
        self.slow_call_duration = (
            None
            if slow_call_duration is None
            else check_seconds(owner, "slow_call_duration", slow_call_duration)
        )
        self._slow = self.slow_call_duration is not None
        self.failure_threshold: int | None = None
        rules: Rules = (None, None, 0.5, 1.0, 1)
        if windowed:
            self._accounting: Accounting
            self._accounting, rules = window_accounting(
                owner,
                failure_rate=failure_rate,
                window=window,
                window_duration=window_duration,
                min_calls=min_calls,
                slow_call_rate=slow_call_rate,
                clock=self._clock,
            )
        else:
            self.failure_threshold = check_int(
                owner,
                "failure_threshold",
                5 if failure_threshold is None else failure_threshold,
                minimum=1,
            )
            self._accounting = Consecutive(self.failure_threshold)
        # A rejection from an inner policy and a programming error say nothing about the
        # dependency's health: neither failure nor success (counted as ignored).
        self._excluded: Callable[[BaseException], bool] = _not_an_outcome
        # Validated once (an iterator is read once): its types, or the predicate.
        given = exclude if callable(exclude) else check_exception_types(owner, "exclude", exclude)
        if given:
            # Only then a closure: two are ~400 bytes, per breaker (one per endpoint).
            user_excluded = error_matcher(owner, "exclude", given, allow_empty=True)
            self._excluded = lambda error: _not_an_outcome(error) or user_excluded(error)
        self._state = _CLOSED
        self._generation = 0
        self._opened_at = 0.0
        self._probes = self._probe_successes = 0
        self._successes = self._failures = self._ignored = 0
        self._rejections = self._slow_calls = self._opened = 0
        self._shared: StoreLink | None = None
        if store is not None:
            timeout = check_seconds(
                owner, "storage_timeout", 1.0 if storage_timeout is None else storage_timeout
            )
            spec = BreakerSpec(
                self.name, self.failure_threshold, *rules, self.reset_timeout,
                self.success_threshold, self.half_open_max_calls,
            )  # fmt: skip
            store.bind(spec)
            self._shared = StoreLink(store, spec, timeout, self._clock.monotonic)
        elif storage_timeout is not None:
            raise ValueError(
                f"CircuitBreaker(storage_timeout={storage_timeout!r}): storage_timeout"
                " applies only with storage="
            )

    @classmethod
    def from_pybreaker(
        cls,
        breaker: pybreaker.CircuitBreaker,
        *,
        clock: Clock | None = None,
        hooks: Iterable[Hook] | None = None,
    ) -> CircuitBreaker:
        """
        Use an existing `pybreaker.CircuitBreaker` as an asyncio policy.

        The new breaker takes `breaker`'s settings (fail_max, reset_timeout,
        success_threshold, excluded exceptions) and shares its storage, so synchronous
        code calling `breaker` and async code calling this policy see one state. State
        changes, successes and failures are reported to `breaker`'s listeners.
        """
        from .pybreaker_store import pybreaker_listener_hook  # noqa: PLC0415  # optional extra

        return cls(
            breaker.name or None,
            failure_threshold=breaker.fail_max,
            reset_timeout=breaker.reset_timeout,
            success_threshold=breaker.success_threshold,
            exclude=lambda error: not breaker.is_system_error(error),
            storage=breaker._state_storage,  # noqa: SLF001  # pybreaker exposes no accessor
            clock=clock,
            hooks=(*(hooks or ()), pybreaker_listener_hook(breaker)),
        )

    def _name_after(self, fn: object, name: str | None = None) -> None:
        super()._name_after(fn, name)
        link = self._shared
        if link is not None and link.spec.name != self.name:
            # The store keys the shared state by name: an unnamed breaker decorating a
            # function shares the state of that function's breakers, not of every
            # unnamed one (all "circuit_breaker" until now).
            link.spec = dataclasses.replace(link.spec, name=self.name)
            link.store.bind(link.spec)

    @property
    def state(self) -> CircuitState:
        """
        The current state.

        An open breaker turns half-open on the first call after `reset_timeout`, not by
        itself.
        """
        return self._state

    async def _run(self, fn: AsyncFn[T], args: Args, kwargs: Kwargs) -> T:
        if self._shared is not None:
            return await self._run_shared(self._shared, fn, args, kwargs)
        state = self._state
        if state is _CLOSED:
            probe = False
        elif (
            state is _OPEN
            and (wait := self._opened_at + self.reset_timeout - self._clock.monotonic()) > 0
        ):
            # `_admit`'s rejection, raised here: an open breaker rejects nearly every
            # call, and each frame the exception leaves through adds to its cost.
            self._rejections += 1
            if self._listening(Rejected):
                self._emit(Rejected, reason=RejectionReason.CIRCUIT_OPEN)
            raise CircuitOpenError(self.name, wait)
        else:
            probe = self._admit()
        generation = self._generation
        started = self._clock.monotonic() if self._slow else 0.0
        try:
            result = await fn(*args, **kwargs)
        except Exception as error:
            self._finish(generation, probe, started, error)
            raise
        except BaseException:
            self._finish(generation, probe, started, None, cancelled=True)
            raise
        if probe or self._slow or generation != self._generation:
            self._finish(generation, probe, started, None)
        else:
            # The closed-state success, inlined: it is nearly every call.
            self._successes += 1
            accounting = self._accounting
            # In a run of successes, consecutive mode has nothing to record: no call.
            if (type(accounting) is not Consecutive or accounting.failures) and accounting.record(
                False, False
            ):
                self._transition(_OPEN)
        return result

    def _fuses(self) -> bool:
        # A breaker sharing its state through a store awaits the store: no fused step.
        return self._shared is None

    def _open(self) -> object:
        """
        Admit a call (a fused pipeline's step, local state only).

        Its token: the generation when closed and untimed, the nearly universal case;
        else (generation, probe, start).

        Raises:
            CircuitOpenError: Open, or half-open with every probe permit taken.
        """
        state = self._state
        if state is _CLOSED and not self._slow:
            return self._generation
        probe = False if state is _CLOSED else self._admit()
        return self._generation, probe, self._clock.monotonic() if self._slow else 0.0

    def _close(self, token: Any, error: BaseException | None) -> BaseException | None:
        """
        Record the outcome of a call `_open` admitted; `error` is raised unchanged.
        """
        if type(token) is int:
            if error is None and token == self._generation:
                self._successes += 1  # as in _run
                accounting = self._accounting
                if (
                    type(accounting) is not Consecutive or accounting.failures
                ) and accounting.record(False, False):
                    self._transition(_OPEN)
                return None
            generation, probe, started = token, False, 0.0
        else:
            generation, probe, started = token
        if error is None or isinstance(error, Exception):
            self._finish(generation, probe, started, error)
        else:  # cancelled (or another BaseException): neither success nor failure
            self._finish(generation, probe, started, None, cancelled=True)
        return error

    async def _run_shared(self, link: StoreLink, fn: AsyncFn[T], args: Args, kwargs: Kwargs) -> T:
        # The same machine, with the store deciding admission and outcomes; the local
        # state follows it, and decides alone whenever the store can't answer in time.
        ticket = await link.admit()
        probe = (
            self._state is not _CLOSED and self._admit()
            if ticket is None
            else self._admit_shared(ticket)
        )
        generation = self._generation
        started = self._clock.monotonic() if self._slow else 0.0
        try:
            result = await fn(*args, **kwargs)
        except Exception as error:
            await self._finish_shared(link, ticket, generation, probe, started, error)
            raise
        except BaseException:
            self._finish(generation, probe, started, None, cancelled=True)
            if ticket is not None and ticket.permit is not None:
                link.release(ticket)
            raise
        await self._finish_shared(link, ticket, generation, probe, started, None)
        return result

    def _admit_shared(self, ticket: BreakerAdmission) -> bool:
        """
        Follow the store's admission; True when the call runs as a half-open probe.
        """
        self._follow(ticket.state, ticket.retry_in, ticket.totals)
        probe = ticket.state is _HALF_OPEN
        # A store without permits (pybreaker's) leaves the probe limit to each process.
        if not ticket.admitted or (
            probe and ticket.permit is None and self._probes >= self.half_open_max_calls
        ):
            self._reject(ticket.retry_in)
        self._probes += probe
        return probe

    async def _finish_shared(  # noqa: PLR0917  # _finish's arguments plus the store's
        self,
        link: StoreLink,
        ticket: BreakerAdmission | None,
        generation: int,
        probe: bool,
        started: float,
        error: BaseException | None,
    ) -> None:
        if ticket is None:  # admitted by the local state: it records the outcome too
            self._finish(generation, probe, started, error)
            return
        current = generation == self._generation
        if probe and current:
            self._probes -= 1
        if error is not None and self._excluded(error):
            self._ignored += 1
            if ticket.permit is not None:
                link.release(ticket)
            return
        slow = self._slow and self._clock.monotonic() - started >= self.slow_call_duration  # type: ignore[operator]  # set when _slow
        failed = error is not None
        self._count(failed, slow)
        if not current and ticket.permit is None:
            # Admitted before this process saw the breaker move on (as in the native
            # breaker): a stale outcome must not re-open, extend or close the circuit.
            return
        seen = await link.record(ticket, failed, slow)
        if seen is not None:
            self._follow(seen.state, seen.retry_in, seen.totals)
        elif current:
            self._judge(probe, failed or slow, slow, failed)

    def _follow(self, state: CircuitState, retry_in: float, totals: WindowTotals | None) -> None:
        """
        Take the store's state as this process's own (events fire as usual).
        """
        self._transition(state)
        if state is _OPEN:
            # The store's opening time, in this clock: it may have opened elsewhere.
            self._opened_at = self._clock.monotonic() + retry_in - self.reset_timeout
        if totals is not None and isinstance(self._accounting, Consecutive):
            # Continue from the shared failure run should the store stop answering.
            self._accounting.failures = totals.failures

    def _admit(self) -> bool:
        """
        Decide on a call while not closed; True when it runs as a half-open probe.
        """
        if self._state is _OPEN:
            wait = self._opened_at + self.reset_timeout - self._clock.monotonic()
            if wait > 0:
                self._reject(wait)
            self._transition(_HALF_OPEN)
        if self._probes >= self.half_open_max_calls:
            self._reject(0.0)
        self._probes += 1
        return True

    def _reject(self, retry_in: float) -> NoReturn:
        self._rejections += 1
        if self._listening(Rejected):
            self._emit(Rejected, reason=RejectionReason.CIRCUIT_OPEN)
        raise CircuitOpenError(self.name, retry_in)

    def _finish(
        self,
        generation: int,
        probe: bool,
        started: float,
        error: BaseException | None,
        *,
        cancelled: bool = False,
    ) -> None:
        current = generation == self._generation
        if probe and current:
            self._probes -= 1
        if cancelled or (error is not None and self._excluded(error)):
            self._ignored += 1
            return
        slow = self._slow and self._clock.monotonic() - started >= self.slow_call_duration  # type: ignore[operator]  # set when _slow
        failed = error is not None
        self._count(failed, slow)
        if current:
            self._judge(probe, failed or slow, slow, failed)

    def _count(self, failed: bool, slow: bool) -> None:
        if failed:
            self._failures += 1
        else:
            self._successes += 1
        if slow:
            self._slow_calls += 1

    def _judge(self, probe: bool, bad_probe: bool, slow: bool, failed: bool) -> None:
        if not probe:
            if self._accounting.record(failed, slow):
                self._transition(_OPEN)
        elif bad_probe:
            self._transition(_OPEN)
        else:
            self._probe_successes += 1
            if self._probe_successes >= self.success_threshold:
                self._transition(_CLOSED)

    def _transition(self, new: CircuitState) -> None:
        old = self._state
        if old is new:
            return
        self._state = new
        self._generation += 1
        self._probes = self._probe_successes = 0
        if new is _OPEN:
            self._opened += 1
            self._opened_at = self._clock.monotonic()
        elif new is _CLOSED:
            self._accounting.reset()
        if self._listening():
            self._emit(StateChanged, old=old, new=new)

    def retry_in(self) -> float:
        """
        Seconds until an open breaker lets a probe through; 0 when not open.
        """
        if self._state is not _OPEN:
            return 0.0
        return max(0.0, self._opened_at + self.reset_timeout - self._clock.monotonic())

    def trip(self) -> None:
        """
        Open the breaker now, whatever the counts say (e.g. from an operator's switch).
        """
        if self._shared is not None:
            self._shared.force(_OPEN)
        self._transition(_OPEN)

    def reset(self) -> None:
        """
        Close the breaker now and forget the counted failures.
        """
        if self._shared is not None:
            self._shared.force(_CLOSED)
        self._transition(_CLOSED)
        self._accounting.reset()

    def _totals(self) -> WindowTotals:
        shared = None if self._shared is None else self._shared.totals()
        return self._accounting.totals() if shared is None else shared

    def statistics(self) -> BreakerStatistics:
        """
        Return a snapshot of this breaker's state and counters.

        With `storage=`, the window counts are what the store reported last (the
        counters are this process's own).
        """
        totals = self._totals()
        return BreakerStatistics(
            state=self._state,
            calls=self._successes + self._failures + self._ignored,
            successes=self._successes,
            failures=self._failures,
            ignored=self._ignored,
            rejections=self._rejections,
            slow_calls=self._slow_calls,
            window_calls=totals.calls,
            window_failures=totals.failures,
            opened=self._opened,
            retry_in=self.retry_in(),
        )

    def __repr__(self) -> str:
        totals = self._totals()
        if self.failure_threshold is not None:
            counts = f"failures={totals.failures}/{self.failure_threshold}"
        else:
            counts = f"window={totals.failures}/{totals.calls} failed"
        shared = "" if self._shared is None else f" shared, {self._shared.describe()}"
        return f"<CircuitBreaker {self.name!r} {self._state.value} {counts}{shared}>"
