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
"""

from __future__ import annotations

import enum
import threading
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
    Rejected,
    RejectedError,
    RetryScheduled,
    StateChanged,
    TimedOut,
    TimeoutExceeded,
)

__all__ = ["OUTCOMES", "CallCell", "Snapshot", "Tally", "state_label"]

OUTCOMES: Final = ("success", "failure", "rejected", "timeout", "cancelled")
"""Values of the ``outcome`` label, in the order of `CallCell.outcomes`."""

_FAILURE, _REJECTED, _TIMEOUT, _CANCELLED = 1, 2, 3, 4

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

    # CallStarted is left out on purpose: nothing here needs it, and a policy only
    # builds an event some hook wants.
    event_types: ClassVar[frozenset[type[Event]]] = frozenset(
        {
            CallSucceeded,
            CallFailed,
            CallCancelled,
            RetryScheduled,
            Rejected,
            StateChanged,
            TimedOut,
            HedgeSent,
            FallbackUsed,
        }
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
        "_retries",
        "_shards",
        "_states",
        "_timeouts",
        "_transitions",
    )

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self._bounds = bounds
        self._lock = threading.Lock()
        self._local = threading.local()  # .cells: this thread's shard
        self._shards: list[dict[tuple[str, str], CallCell]] = []
        self._retries: dict[Labels, int] = {}
        self._rejections: dict[Labels, int] = {}
        self._timeouts: dict[Labels, int] = {}
        self._hedges: dict[Labels, int] = {}
        self._fallbacks: dict[Labels, int] = {}
        self._transitions: dict[Labels, int] = {}
        self._states: dict[str, str] = {}
        # Any: each handler takes its own event type; the dict is keyed by that type.
        self._handlers: dict[type[Event], Callable[[Any], None]] = {
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
        Count `event` (policies call this; so may tests).
        """
        # A success is nearly every event (one per layer per call): inlined, no
        # handler lookup, no extra frame, no lock (the shard is this thread's).
        if type(event) is CallSucceeded:
            try:
                cells = self._local.cells
            except AttributeError:
                cells = self._new_shard()
            cell = cells.get((event.kind, event.name)) or self._new_cell(cells, event)
            seconds = event.duration
            cell.outcomes[0] += 1
            cell.buckets[bisect_left(self._bounds, seconds)] += 1
            cell.seconds += seconds
            return
        handler = self._handlers.get(type(event))
        if handler is not None:  # an event type added to resilient after this module
            handler(event)

    def _new_shard(self) -> dict[tuple[str, str], CallCell]:
        cells: dict[tuple[str, str], CallCell] = {}
        self._local.cells = cells
        with self._lock:
            self._shards.append(cells)
        return cells

    def _new_cell(self, cells: dict[tuple[str, str], CallCell], event: Event) -> CallCell:
        cell = cells[event.kind, event.name] = CallCell(len(self._bounds) + 1)
        return cell

    def _failed(self, event: CallFailed) -> None:
        error = event.error
        if isinstance(error, RejectedError):
            self._count_call(event, _REJECTED, None)  # never ran: no duration to observe
        elif isinstance(error, TimeoutExceeded):
            self._count_call(event, _TIMEOUT, event.duration)
        else:
            self._count_call(event, _FAILURE, event.duration)

    def _cancelled(self, event: CallCancelled) -> None:
        # The caller gave up, so the duration says nothing about the dependency.
        self._count_call(event, _CANCELLED, None)

    def _count_call(self, event: Event, outcome: int, seconds: float | None) -> None:
        try:
            cells = self._local.cells
        except AttributeError:
            cells = self._new_shard()
        cell = cells.get((event.kind, event.name)) or self._new_cell(cells, event)
        cell.outcomes[outcome] += 1
        if seconds is not None:
            cell.buckets[bisect_left(self._bounds, seconds)] += 1
            cell.seconds += seconds

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
            shards = list(self._shards)
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


def _merged(
    shards: list[dict[tuple[str, str], CallCell]],
) -> dict[tuple[str, str], tuple[list[int], list[int], float]]:
    calls: dict[tuple[str, str], tuple[list[int], list[int], float]] = {}
    for shard in shards:
        # dict(shard): one C-level copy, so the owner thread may add cells meanwhile.
        for key, cell in dict(shard).items():
            outcomes, buckets = list(cell.outcomes), list(cell.buckets)
            if key in calls:
                total_outcomes, total_buckets, seconds = calls[key]
                outcomes = [a + b for a, b in zip(total_outcomes, outcomes, strict=True)]
                buckets = [a + b for a, b in zip(total_buckets, buckets, strict=True)]
                calls[key] = (outcomes, buckets, seconds + cell.seconds)
            else:
                calls[key] = (outcomes, buckets, cell.seconds)
    return calls
