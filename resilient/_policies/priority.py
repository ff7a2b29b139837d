"""
Priority: how important a call is, carried in a context variable from hop to hop.

The scale is Google's *criticality* (SRE book, chapter 21 "Handling Overload",
"Criticality"; gRPC's ``Criticality`` in Google's internal stack), from most to least
important: ``CRITICAL_PLUS``, ``CRITICAL`` (the default), ``SHEDDABLE_PLUS``,
``SHEDDABLE``. It is an `IntEnum`, so priorities compare (``SHEDDABLE < CRITICAL``).

A saturated `Bulkhead` or `AdaptiveConcurrency` queues waiters by priority, then in
arrival order, and a full queue makes room for a newcomer by shedding its lowest-priority
waiter (the partitioned-limiter idea of Netflix's concurrency-limits, applied to the
queue). A `RateLimiter` lets only ``CRITICAL`` and ``CRITICAL_PLUS`` calls wait for a
future permit: sheddable calls are refused at once, so the permits to come are left to
the calls that matter (docs/overload.md, "Priority shedding").

The aiohttp integration sends the current priority to the next hop in the
``X-Request-Priority`` header (`PRIORITY_HEADER`) and its server middleware makes the
received one current for the handler.
"""

from __future__ import annotations

import enum
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

from .._engine.context import deadline_in_force

__all__ = ["Priority", "current_priority", "priority", "remaining_time_and_priority"]


class Priority(enum.IntEnum):
    """
    How important a call is; higher is more important (Google's criticality levels).
    """

    SHEDDABLE = 0
    """Shed first: batch work, prefetches, retries that can wait."""
    SHEDDABLE_PLUS = 1
    """Partial unavailability is expected and tolerated (retried later)."""
    CRITICAL = 2
    """The default: a user waits on it."""
    CRITICAL_PLUS = 3
    """Shed last; keep it for the few calls whose failure is an outage."""

    @classmethod
    def parse(cls, value: str | None) -> Priority | None:
        """
        A priority from its name (any case, surrounding spaces ignored); None otherwise.

        For untrusted input such as a request header: anything that is not a name
        (a number, an unknown word, a very long string) gives None, never an error.
        """
        if value is None or len(value) > 32:  # noqa: PLR2004  # longer than any name
            return None
        return _BY_NAME.get(value.strip().lower())


_PRIORITY: ContextVar[Priority] = ContextVar("resilient_priority", default=Priority.CRITICAL)
_BY_NAME = {level.name.lower(): level for level in Priority}


def current_priority() -> Priority:
    """
    The priority of the calls made now (``Priority.CRITICAL`` unless set).
    """
    return _PRIORITY.get()


def remaining_time_and_priority() -> tuple[float | None, Priority]:
    """
    `remaining_time()` and `current_priority()` in one call: what goes to the next hop.

    For integrations stamping every outgoing request (the aiohttp middleware's
    ``X-Request-Timeout-Ms`` and ``X-Request-Priority``): one Python call where two
    would cost each request a frame more, which is microseconds when the caches are
    cold between requests.
    """
    level = _PRIORITY.get()
    current = deadline_in_force()
    if current is None:
        return None, level
    left = current.deadline - current.clock.monotonic()  # as remaining_time() says
    return (left if left > 0.0 else 0.0), level


@contextmanager
def priority(level: Priority | str | int) -> Iterator[Priority]:
    """
    Run the block's calls, and the tasks it starts, at priority `level`.

    ``with priority(Priority.SHEDDABLE): await fetch()``; a name such as
    ``"sheddable"`` (any case) is accepted too.

    Args:
        level: A `Priority`, its name, or its value (0 to 3).

    Yields:
        The priority now current.

    Raises:
        ValueError: `level` is not a priority.
    """
    token = _PRIORITY.set(_check(level))
    try:
        yield _PRIORITY.get()
    finally:
        _PRIORITY.reset(token)


def _check(level: object) -> Priority:
    if isinstance(level, Priority):
        return level
    if type(level) is int and level in Priority._value2member_map_:
        return Priority(level)
    if isinstance(level, str) and (parsed := Priority.parse(level)) is not None:
        return parsed
    names = ", ".join(_BY_NAME)
    raise ValueError(f"priority(level={level!r}): expected a Priority or one of {names}")
