"""
Attacks on the Timeout's watchdog (adversary adv24): deadlines out of order, between firings.

Calls capped by an enclosing deadline earlier than the deadline queued last go to the
watchdog's heap, not its in-order queue; ended ones must not pile up there until the
next firing (a minute away, or never on a FakeClock nobody advances).
"""

from __future__ import annotations

import asyncio

from resilient import Timeout, deadline
from resilient.testing import FakeClock


async def test_watchdog_holds_a_bounded_number_of_ended_out_of_order_calls() -> None:
    """As test_watchdog_holds_a_bounded_number_of_ended_calls, for calls capped by an
    enclosing deadline earlier than the deadline last queued (a shared Timeout used
    both with and without a caller's deadline): ended calls are not kept until the
    first firing."""
    clock = FakeClock(auto_advance=False)
    timeout = Timeout(3_600.0, clock=clock)
    assert await timeout.call(asyncio.sleep, 0, "done") == "done"  # queued: the tail
    for _ in range(5_000):
        with deadline(60.0, clock=clock):  # earlier than the tail: out of order
            assert await timeout.call(asyncio.sleep, 0, "done") == "done"
    dog = timeout._watchdogs.last
    assert timeout._watchdogs.watched() == 0
    assert len(dog.queue) + len(dog._late) <= 200


async def test_real_clock_watchdog_holds_a_bounded_number_of_ended_out_of_order_calls() -> None:
    """The same on the system clock: a shared Timeout(3600) used once on its own, then
    by requests honouring a caller's 60 s deadline. The 5,000 ended calls' scopes stay
    in the watchdog's heap until its first firing, a minute away (rate x budget, not
    the bound compaction keeps for in-order calls)."""
    timeout = Timeout(3_600.0)
    assert await timeout.call(asyncio.sleep, 0, "done") == "done"
    for _ in range(5_000):
        with deadline(60.0):
            assert await timeout.call(asyncio.sleep, 0, "done") == "done"
    dog = timeout._watchdogs.last
    assert timeout._watchdogs.watched() == 0
    assert len(dog.queue) + len(dog._late) <= 200
