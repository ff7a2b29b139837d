"""
The queue of a saturated `Bulkhead` (and `AdaptiveConcurrency`): priority, then FIFO.

The waiters stay in one `deque`, kept sorted by priority (highest first) and, within a
priority, by arrival. So the head is the waiter to serve next and the tail the one to
shed first (the lowest priority, and of those the latest to arrive, which has waited
least; the earlier ones keep their place, as FIFO promises). When every caller has the
same priority, which is the common case, insertion is an append: the ordering costs
nothing until priorities are used. The owner's hot path still asks only ``not waiters``.

A waiter is a future resolved with `GRANTED` when a slot is handed to it, or with why it
must leave: `TIMED_OUT` (its `max_wait` ran out), or a `RejectionReason` (shed for a
higher priority, or its deadline is passing).
"""

from __future__ import annotations

import asyncio
import bisect
from collections import deque
from typing import Final, TypeAlias

from .._engine.events import RejectionReason
from .priority import Priority

__all__ = [
    "GRANTED",
    "SERVICE_TIME_WEIGHT",
    "TIMED_OUT",
    "Outcome",
    "Waiter",
    "enqueue",
    "ewma",
    "leave",
    "why_left",
]

Outcome: TypeAlias = "bool | RejectionReason"

GRANTED: Final = True
"""A slot was handed to the waiter."""
TIMED_OUT: Final = False
"""The waiter's `max_wait` ran out."""

SERVICE_TIME_WEIGHT = 0.1
"""How much one call moves the service-time average (an EWMA, about 10 calls' memory)."""


class Waiter(asyncio.Future[Outcome]):
    """
    A caller waiting for a slot: a future that knows the caller's priority.
    """

    __slots__ = ("priority",)

    def __init__(self, loop: asyncio.AbstractEventLoop, priority: Priority) -> None:
        super().__init__(loop=loop)
        self.priority = priority


def enqueue(waiters: deque[Waiter], waiter: Waiter) -> None:
    """
    Put `waiter` behind every waiter of its priority or higher, ahead of the lower ones.
    """
    if not waiters or waiters[-1].priority >= waiter.priority:
        waiters.append(waiter)
    else:
        # A binary search, not a walk back over the lower priorities: with thousands
        # of sheddable waiters, each critical arrival walked past all of them, and a
        # burst of such arrivals held the event loop for seconds.
        waiters.insert(bisect.bisect_right(waiters, -waiter.priority, key=_rank), waiter)


def _rank(waiter: Waiter) -> int:
    return -waiter.priority  # the queue's order, ascending


def leave(waiter: Waiter, outcome: Outcome) -> None:
    """
    Resolve `waiter` with `outcome` unless it is already resolved (a timer's callback).
    """
    if not waiter.done():
        waiter.set_result(outcome)


def ewma(average: float, sample: float) -> float:
    """
    Fold one service time into the running average (0.0: no sample yet).
    """
    if not average:
        return sample
    return average + SERVICE_TIME_WEIGHT * (sample - average)


def why_left(reason: RejectionReason, service_time: float) -> str:
    """
    Why a waiter was sent out of the queue, in words, for its error.
    """
    if reason is RejectionReason.PRIORITY_SHED:
        return "shed from the queue for a higher-priority call"
    if reason is RejectionReason.DEADLINE_EXCEEDED:
        return "the caller's deadline passed in the queue"
    return (
        "left the queue: the time before the caller's deadline fell below the typical"
        f" service time ({service_time:.3f}s)"
    )
