"""
Admission control for the server middleware: a policy in front of the handlers.

Any policy (a `RateLimiter`, `Bulkhead`, `AdaptiveConcurrency`, `AdaptiveThrottle`, a
`pipeline` of them) guards the handler; a request it refuses never reaches the handler
and is answered here, without naming the policy or any other internals:

- ``429 Too Many Requests`` with ``Retry-After`` (whole seconds, at least 1) for a rate
  limit (`RateLimitedError`);
- ``504 Gateway Timeout`` when the caller's deadline could not be met (the deadline-aware
  queue's ``DEADLINE_EXCEEDED`` and ``DEADLINE_TOO_SHORT``), as the middleware answers a
  deadline that ran out in the handler;
- ``503 Service Unavailable`` for every other refusal (load shed, bulkhead full,
  concurrency limit, throttled, a shared limiter's store down while failing closed),
  with ``Retry-After`` when the refusal knows when to come back (an open breaker).

A `RejectedError` the handler itself raises (from a client policy inside it) is not an
admission refusal and goes on to aiohttp as any handler error does. A `web.HTTPException`
the handler raises is an answer, as a returned response is: the policy sees a success.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable, Iterable

from aiohttp import web

from resilient import (
    CircuitOpenError,
    Policy,
    RateLimitedError,
    RejectedError,
    RejectionReason,
)

__all__ = ["DEFAULT_EXEMPT", "admit", "check_exempt", "is_exempt", "refusal_response"]

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

DEFAULT_EXEMPT = ("/health", "/metrics")
"""Paths admission control never refuses: probes and scrapes must see an overloaded server."""

_DEADLINE = frozenset({RejectionReason.DEADLINE_EXCEEDED, RejectionReason.DEADLINE_TOO_SHORT})


async def admit(policy: Policy, handler: Handler, request: web.Request) -> web.StreamResponse:
    """
    Run `handler` under `policy`; answer a refusal of the policy's own with a response.
    """
    entered = False
    answered: web.HTTPException | None = None

    async def admitted(request: web.Request) -> web.StreamResponse:
        nonlocal entered, answered
        entered = True
        try:
            return await handler(request)
        except web.HTTPException as answer:
            if answer.status >= 500:  # noqa: PLR2004  # a server error: a failure
                raise
            # A redirect or a client error (the router's 404 among them) is an answer,
            # not a failure of the server: the policy sees a success. Counted as one, a
            # client asking for missing pages would shrink an AdaptiveConcurrency limit
            # or make an AdaptiveThrottle refuse everybody.
            answered = answer
            return answer

    try:
        response = await policy.call(admitted, request)
    except RejectedError as refused:
        if entered:  # the handler's own (a client policy inside it): not ours to answer
            raise
        return refusal_response(refused)
    if answered is not None:
        raise answered  # to aiohttp, as the handler raised it
    return response


def refusal_response(refused: RejectedError) -> web.Response:
    """
    The response to a refused request: 429, 503 or 504, a small JSON body.
    """
    reason = getattr(refused, "reason", None)
    if reason in _DEADLINE:
        return _answer(504, "deadline_exceeded", "the caller's deadline cannot be met")
    if isinstance(refused, RateLimitedError) and reason is not RejectionReason.STORE_UNAVAILABLE:
        response = _answer(429, "rate_limited", "too many requests; retry later")
        response.headers["Retry-After"] = _seconds(refused.retry_after)
        return response
    response = _answer(503, "overloaded", "the server is overloaded; retry later")
    if isinstance(refused, CircuitOpenError) and refused.retry_in > 0:
        response.headers["Retry-After"] = _seconds(refused.retry_in)
    return response


def _answer(status: int, error: str, detail: str) -> web.Response:
    return web.json_response({"error": error, "detail": detail}, status=status)


def _seconds(delay: float) -> str:
    # Retry-After takes whole seconds (RFC 9110 10.2.3); rounding down would invite an
    # early retry that is refused again.
    return str(max(1, math.ceil(delay)))


def check_exempt(exempt: Iterable[str]) -> tuple[str, ...]:
    """
    Return the exempt paths as a tuple, each without a trailing slash.

    Raises:
        TypeError: `exempt` is a single string, or not an iterable of strings.
        ValueError: A path does not start with ``/``.
    """
    if isinstance(exempt, str):
        raise TypeError(
            f"resilience_middleware(exempt={exempt!r}): expected a collection of paths,"
            f" not one string; write exempt=({exempt!r},)"
        )
    paths = tuple(exempt)
    for path in paths:
        if not isinstance(path, str) or not path.startswith("/"):
            raise ValueError(
                f"resilience_middleware(exempt=...): {path!r} is not a path starting with '/'"
            )
    return tuple(path.rstrip("/") or "/" for path in paths)


def is_exempt(path: str, exempt: tuple[str, ...]) -> bool:
    """
    Whether `path` is one of `exempt` or below one (``/health`` covers ``/health/live``).
    """
    for prefix in exempt:
        if path == prefix or path.startswith(prefix + "/") or prefix == "/":
            return True
    return False
