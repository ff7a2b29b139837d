"""
The event side of `ResilienceMetrics`: a hook that tallies policy events in plain numbers.

Why not prometheus_client's `Counter` and `Histogram`? They are right for application
code, but a policy hook runs once per layer per call: a labelled child's ``inc()`` costs
~320 ns and a histogram ``observe()`` ~680 ns (a few Python frames and a lock per
value), so a four-layer pipeline would pay ~4 us for metrics alone. Here a success costs
a dict lookup and three additions (~0.3 us); the numbers become metric families only
when Prometheus scrapes (`_prometheus_export`), which is what prometheus_client's docs
recommend custom collectors for.

Threads: a hook added with `add_hook` sees every policy in the process, including
policies on other threads' event loops, and a scrape may run on prometheus_client's own
HTTP thread. Call tallies are therefore kept per thread (a shard each, written by its
own thread only, so no lock on the hot path and no lost update even without a GIL);
a scrape copies every shard and adds them up. A copy may catch a call half counted (its
outcome but not yet its bucket); the next scrape is exact. Rare events (retries,
rejections, transitions...) share one lock.

A thread that ends can write no more, so its shard is folded, under the lock, into one
``retired`` shard and dropped: short-lived threads (5,000 ``asyncio.run`` threads held
3-4 MiB and slowed a scrape from 1 ms to 115-240 ms) leave one shard per live thread.
The fold runs when the thread's `threading.local` storage is released at its end (a
`weakref.finalize` on an object only that storage holds), so memory stays bounded
even if nobody scrapes. Fold and scrape take the same lock: a call is counted exactly
once, in the live shard or in the retired one.
"""

from __future__ import annotations

import asyncio
import enum
import threading
import weakref
from bisect import bisect_left
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, Final

from resilient import (
    CallCancelled,
    CallFailed,
    CallSucceeded,
    Event,
    FallbackUsed,
    HedgeSent,
    Policy,
    Rejected,
    RejectedError,
    RetryScheduled,
    StateChanged,
    TimedOut,
    TimeoutExceeded,
)

__all__ = ["OUTCOMES", "CallCell", "PolicyCalls", "Snapshot", "Tally", "count_call", "state_label"]

OUTCOMES: Final = ("success", "failure", "rejected", "timeout", "cancelled")
"""Values of the ``outcome`` label, in the order of `CallCell.outcomes`."""

_SUCCESS, _FAILURE, _REJECTED, _TIMEOUT, _CANCELLED = range(5)

Labels = tuple[str, ...]


def state_label(state: enum.Enum) -> str:
    """
    A breaker state as a label value: ``closed``, ``open`` or ``half_open``.

    The enum's name, lower-cased, not its value (``"half-open"``): Prometheus label
    values are conventionally snake_case, and resilience4j's ``state`` label uses the
    same spelling.
    """
    return state.name.lower()


class CallCell:
    """
    Everything counted for one (kind, policy): outcomes and a duration histogram.

    Attributes:
        outcomes: Calls per outcome, indexed as `OUTCOMES`.
        buckets: Observations per bucket, not cumulative; the last is ``+Inf``.
        seconds: The sum of the observed durations.
    """

    __slots__ = ("buckets", "outcomes", "seconds")

    def __init__(self, buckets: int) -> None:
        self.outcomes = [0] * len(OUTCOMES)
        self.buckets = [0] * buckets
        self.seconds = 0.0


@dataclass(frozen=True, slots=True)
class Snapshot:
    """
    A consistent copy of the tallies, taken under the lock for one scrape.

    Attributes:
        calls: (kind, policy) -> (outcome counts, bucket counts, sum of seconds).
        counters: Counter family suffix -> label values -> count.
        states: Breaker name -> the state its last transition entered.
    """

    calls: dict[tuple[str, str], tuple[list[int], list[int], float]]
    counters: dict[str, dict[Labels, int]]
    states: dict[str, str]


class Tally:
    """
    A hook that counts the events of every policy it observes.

    Args:
        bounds: The duration histogram's finite upper bounds, ascending, in seconds.
    """

    # Calls are heard through `listen_calls` (no event objects); only decisions arrive
    # as events.
    event_types: ClassVar[frozenset[type[Event]]] = frozenset(
        {RetryScheduled, Rejected, StateChanged, TimedOut, HedgeSent, FallbackUsed}
    )

    __slots__ = (
        "__weakref__",
        "_bounds",
        "_fallbacks",
        "_handlers",
        "_hedges",
        "_local",
        "_lock",
        "_rejections",
        "_retired",
        "_retries",
        "_shards",
        "_states",
        "_timeouts",
        "_transitions",
    )

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self._bounds = bounds
        self._lock = threading.Lock()
        self._local = threading.local()  # .cells: this thread's shard; .owner: see below
        # Live threads' shards, by id(); dead threads' counts live on in `_retired`.
        self._shards: dict[int, dict[tuple[str, str], CallCell]] = {}
        self._retired: dict[tuple[str, str], CallCell] = {}
        self._retries: dict[Labels, int] = {}
        self._rejections: dict[Labels, int] = {}
        self._timeouts: dict[Labels, int] = {}
        self._hedges: dict[Labels, int] = {}
        self._fallbacks: dict[Labels, int] = {}
        self._transitions: dict[Labels, int] = {}
        self._states: dict[str, str] = {}
        # Any: each handler takes its own event type; the dict is keyed by that type.
        self._handlers: dict[type[Event], Callable[[Any], None]] = {
            CallSucceeded: self._succeeded,
            CallFailed: self._failed,
            CallCancelled: self._cancelled,
            RetryScheduled: lambda e: self._bump(self._retries, (e.name,)),
            Rejected: self._rejected,
            StateChanged: self._state_changed,
            TimedOut: lambda e: self._bump(self._timeouts, (e.name,)),
            HedgeSent: lambda e: self._bump(self._hedges, (e.name,)),
            FallbackUsed: lambda e: self._bump(self._fallbacks, (e.name,)),
        }

    def __call__(self, event: Event) -> None:
        """
        Count `event`.

        Policies send decisions here and report calls to `listen_calls`; call events
        are counted too, for events fed by hand.
        """
        handler = self._handlers.get(type(event))
        if handler is not None:  # an event type added to resilient after this module
            handler(event)

    def listen_calls(self, policy: Policy) -> PolicyCalls:
        """
        Count `policy`'s calls: what the policy reports each call's end to.
        """
        return PolicyCalls(self, policy.kind, policy.name)

    def cell(self, kind: str, name: str) -> CallCell:
        """
        This thread's cell for (kind, name), made on first use.
        """
        try:
            cells: dict[tuple[str, str], CallCell] = self._local.cells
        except AttributeError:
            cells = self._new_shard()
        cell = cells.get((kind, name))
        if cell is None:
            cell = cells[kind, name] = CallCell(len(self._bounds) + 1)
        return cell

    def _new_shard(self) -> dict[tuple[str, str], CallCell]:
        cells: dict[tuple[str, str], CallCell] = {}
        with self._lock:
            self._shards[id(cells)] = cells
        # Only this thread's local storage holds `owner`: it dies with the thread, and
        # then the shard is folded (a weak reference, so the tally itself can go).
        owner = _ShardOwner()
        weakref.finalize(owner, _retire, weakref.ref(self), cells).atexit = False  # moot then
        self._local.owner = owner
        self._local.cells = cells
        return cells

    def retire(self, cells: dict[tuple[str, str], CallCell]) -> None:
        """
        Fold a dead thread's shard into the retired totals and forget it.
        """
        with self._lock:
            if self._shards.pop(id(cells), None) is not None:
                _accumulate(self._retired, cells)

    @property
    def shard_count(self) -> int:
        """
        How many per-thread shards are kept (one per live thread that counted calls).
        """
        return len(self._shards)

    def _succeeded(self, event: CallSucceeded) -> None:
        count_call(self.cell(event.kind, event.name), self._bounds, event.duration, None)

    def _failed(self, event: CallFailed) -> None:
        count_call(self.cell(event.kind, event.name), self._bounds, event.duration, event.error)

    def _cancelled(self, event: CallCancelled) -> None:
        # The caller gave up, so the duration says nothing about the dependency.
        self.cell(event.kind, event.name).outcomes[_CANCELLED] += 1

    def _rejected(self, event: Rejected) -> None:
        self._bump(self._rejections, (event.kind, event.name, event.reason.value))

    def _state_changed(self, event: StateChanged) -> None:
        new = state_label(event.new)
        self._bump(self._transitions, (event.name, state_label(event.old), new))
        with self._lock:
            self._states[event.name] = new

    def _bump(self, table: dict[Labels, int], labels: Labels) -> None:
        with self._lock:
            table[labels] = table.get(labels, 0) + 1

    def snapshot(self) -> Snapshot:
        """
        Add up every thread's call tallies and copy the other counters.
        """
        with self._lock:
            # The retired cells change only under the lock: copy them now.
            shards = [_accumulate({}, self._retired)]
            shards.extend(self._shards.values())
            counters = {
                "retries": dict(self._retries),
                "rejections": dict(self._rejections),
                "timeouts": dict(self._timeouts),
                "hedges": dict(self._hedges),
                "fallbacks": dict(self._fallbacks),
                "circuit_transitions": dict(self._transitions),
            }
            states = dict(self._states)
        return Snapshot(calls=_merged(shards), counters=counters, states=states)


class PolicyCalls:
    """
    The call listener `Tally.listen_calls` binds to one policy.

    It keeps the cell of the thread that uses it (nearly always the only one), so a call
    costs an attribute read, not a dict lookup keyed by a fresh tuple.
    """

    __slots__ = ("_bounds", "_kind", "_local", "_name", "_tally")

    def __init__(self, tally: Tally, kind: str, name: str) -> None:
        self._tally = tally
        self._bounds = tally._bounds  # noqa: SLF001  # same module's class
        self._kind = kind
        self._name = name
        self._local = threading.local()  # .cell: this thread's cell for the policy

    def call_ended(self, _token: None, duration: float, error: BaseException | None) -> None:
        """
        Count one call that left the policy.
        """
        try:
            cell = self._local.cell
        except AttributeError:
            cell = self._local.cell = self._tally.cell(self._kind, self._name)
        if error is None:  # nearly every call: inlined
            cell.outcomes[0] += 1
            cell.buckets[bisect_left(self._bounds, duration)] += 1
            cell.seconds += duration
        else:
            count_call(cell, self._bounds, duration, error)


def count_call(
    cell: CallCell, bounds: tuple[float, ...], duration: float, error: BaseException | None
) -> None:
    """
    Count one call in `cell`: its outcome, and its duration if it ran to an end.

    Rejected calls never ran and cancelled ones were given up by the caller: their
    durations say nothing about the dependency.
    """
    if error is None:
        outcome = _SUCCESS
    elif isinstance(error, asyncio.CancelledError):
        cell.outcomes[_CANCELLED] += 1
        return
    elif isinstance(error, RejectedError):
        cell.outcomes[_REJECTED] += 1
        return
    elif isinstance(error, TimeoutExceeded):
        outcome = _TIMEOUT
    else:
        outcome = _FAILURE
    cell.outcomes[outcome] += 1
    cell.buckets[bisect_left(bounds, duration)] += 1
    cell.seconds += duration


def _merged(
    shards: list[dict[tuple[str, str], CallCell]],
) -> dict[tuple[str, str], tuple[list[int], list[int], float]]:
    totals: dict[tuple[str, str], CallCell] = {}
    for shard in shards:
        # dict(shard): one C-level copy, so the owner thread may add cells meanwhile.
        _accumulate(totals, dict(shard))
    return {key: (cell.outcomes, cell.buckets, cell.seconds) for key, cell in totals.items()}


def _accumulate(
    totals: dict[tuple[str, str], CallCell], cells: dict[tuple[str, str], CallCell]
) -> dict[tuple[str, str], CallCell]:
    """
    Add `cells` into `totals` (new lists: a copy never shares a list with a shard).
    """
    for key, cell in cells.items():
        total = totals.get(key)
        if total is None:
            total = totals[key] = CallCell(len(cell.buckets))
        total.outcomes = [a + b for a, b in zip(total.outcomes, cell.outcomes, strict=True)]
        total.buckets = [a + b for a, b in zip(total.buckets, cell.buckets, strict=True)]
        total.seconds += cell.seconds
    return totals


class _ShardOwner:
    """
    Held only by one thread's local storage: its collection marks the thread's end.
    """

    __slots__ = ("__weakref__",)


def _retire(tally: weakref.ref[Tally], cells: dict[tuple[str, str], CallCell]) -> None:
    owner = tally()
    if owner is not None:
        owner.retire(cells)
