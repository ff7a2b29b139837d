"""
Call-scoped context: the deadline that travels with a call, and the no-retries switch.

Both live in context variables, so they apply to the calls made inside a block (and the
tasks those start) and to nothing else. This module is their one home: `Timeout` sets the
deadline, `Retry`, `Bulkhead`, `RateLimiter` and `EndpointPool` read it, and integrations
forward it through the public `remaining_time()`.

- The deadline: the absolute time (on a given clock) by which the call must finish. A
  nested deadline never outlives the budget an enclosing one leaves, and
  `remaining_time()` tells any code (a retry deciding whether to sleep, an HTTP client
  sending ``X-Request-Timeout`` to the next hop) how long the call may still take.
- `no_retries()`: some calls must run at most once whatever the policies say (a
  non-idempotent HTTP request, a payment). `Retry` reads the switch only after a failure
  and `Hedge` once per call, so it costs nothing on the happy path of calls that don't
  use it.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

from .clock import Clock
from .validate import check_clock, check_seconds

__all__ = [
    "DEADLINE",
    "NO_RETRIES",
    "Deadline",
    "deadline",
    "deadline_in_force",
    "no_retries",
    "no_retries_in_force",
    "remaining_time",
    "reset_deadline",
    "retries_allowed",
    "set_deadline",
]


class Deadline:
    """
    An absolute deadline and the clock it is measured on: the value of `DEADLINE`.

    `Timeout` sets its own per-call scope, a subclass, as the value: no object more per
    call (10,000 calls in flight are 10,000 objects for the garbage collector to walk).
    """

    __slots__ = ("clock", "deadline")

    def __init__(self, deadline: float, clock: Clock) -> None:
        self.deadline = deadline
        self.clock = clock


# None outside every deadline. Set by `deadline()` here and by `Timeout` (which enforces
# it), read by everything else.
DEADLINE: ContextVar[Deadline | None] = ContextVar("resilient_deadline", default=None)

NO_RETRIES: ContextVar[bool] = ContextVar("resilient_no_retries", default=False)
"""True inside `no_retries()` (read by `retries_allowed()`, and by `Retry` directly)."""

# The variables' methods bound once, for the per-call paths of other modules (`Timeout`,
# `Retry`). There, ``DEADLINE.get()`` on the imported name compiles to a plain attribute
# load, not a method call (CPython takes an imported name for a module), which builds a
# bound method per call: ~500 instructions each on 3.11, and a `Timeout` made three.
deadline_in_force = DEADLINE.get
set_deadline = DEADLINE.set
reset_deadline = DEADLINE.reset
no_retries_in_force = NO_RETRIES.get


def remaining_time() -> float | None:
    """
    Seconds left before the innermost enclosing deadline, or None when there is none.

    Never negative: 0.0 means the budget is spent.
    """
    current = DEADLINE.get()
    if current is None:
        return None
    left = current.deadline - current.clock.monotonic()
    return left if left > 0.0 else 0.0  # not max(): every stamped request asks


@contextmanager
def deadline(seconds: float, *, clock: Clock | None = None) -> Iterator[None]:
    """
    Make a deadline visible without enforcing it.

    Inside the block `remaining_time()` counts down from `seconds` (or from less, when
    an enclosing deadline leaves less), nested `Timeout`s are capped by it, `Retry`
    won't sleep past it and integrations send it on; but nothing is cancelled when it
    passes. A server uses this to honour a caller's deadline it chose not to enforce.

    Raises:
        ValueError: `seconds` is negative or not finite.
    """
    budget = check_seconds("deadline", "seconds", seconds, allow_zero=True)
    clock = check_clock("deadline", clock)
    at = clock.monotonic() + budget
    outer = DEADLINE.get()
    if outer is not None:
        at = min(at, clock.monotonic() + outer.deadline - outer.clock.monotonic())
    token = DEADLINE.set(Deadline(at, clock))
    try:
        yield
    finally:
        DEADLINE.reset(token)


@contextmanager
def no_retries() -> Iterator[None]:
    """
    Within the block, `Retry` makes one attempt and `Hedge` sends no extra attempts.

    Breakers, bulkheads, timeouts and fallbacks still apply, so the failure is counted
    and a fallback can still answer.
    """
    token = NO_RETRIES.set(True)
    try:
        yield
    finally:
        NO_RETRIES.reset(token)


def retries_allowed() -> bool:
    """
    False inside a `no_retries()` block.
    """
    return not NO_RETRIES.get()
