"""
A per-call switch that turns retries and hedges off: `no_retries()`.

Some calls must run at most once whatever the policies say: a non-idempotent HTTP
request, a payment. The switch lives in a context variable, so it applies to the calls
made inside the block (and the tasks they start) and to nothing else. `Retry` reads it
only after a failure and `Hedge` once per call, so it costs nothing on the happy path of
calls that don't use it.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

__all__ = ["no_retries", "retries_allowed"]

_OFF: ContextVar[bool] = ContextVar("resilient_no_retries", default=False)


@contextmanager
def no_retries() -> Iterator[None]:
    """
    Within the block, `Retry` makes one attempt and `Hedge` sends no extra attempts.

    Breakers, bulkheads, timeouts and fallbacks still apply, so the failure is counted
    and a fallback can still answer.
    """
    token = _OFF.set(True)
    try:
        yield
    finally:
        _OFF.reset(token)


def retries_allowed() -> bool:
    """
    False inside a `no_retries()` block.
    """
    return not _OFF.get()
