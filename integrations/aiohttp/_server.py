"""
The server side of a hop: caller's deadline, priority and trace context; admission; metrics.

`resilience_middleware()` is an aiohttp server middleware that, for each request:

- reads the remaining deadline the caller sent (``X-Request-Timeout-Ms``) and runs the
  handler under it, so `resilient.remaining_time()` works in handlers, calls made from
  them inherit the budget, and a handler still running when the caller has given up is
  cancelled and answered with 504;
- makes the caller's priority (``X-Request-Priority``) current for the handler, so its
  own calls carry it on and the server's queues order it;
- makes the caller's trace context current for the handler (with the ``otel`` extra);
- with ``admission=policy``, runs every request but the exempt paths under that policy,
  inside the caller's deadline and priority, and answers its refusals with 429, 503 or
  504 (`_admission`): a service protects itself with the policies it uses as a client.

Malformed or hostile headers are ignored (no deadline, the default priority, a fresh
trace), never a 500.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
from collections.abc import Awaitable, Callable, Iterable
from contextlib import AbstractContextManager
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Middleware

from resilient import Policy, Priority, deadline, priority
from resilient.validation import check_seconds

from ._admission import DEFAULT_EXEMPT, admit, check_exempt, is_exempt
from ._propagation import (
    DEADLINE_HEADER,
    PRIORITY_HEADER,
    extract_trace_context,
    parse_deadline,
)

__all__ = ["add_metrics_route", "resilience_middleware"]

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def resilience_middleware(  # keyword-only knobs, each with a default
    *,
    deadline_header: str = DEADLINE_HEADER,
    enforce_deadline: bool = True,
    max_deadline: float | None = None,
    priority_header: str | None = PRIORITY_HEADER,
    max_priority: Priority = Priority.CRITICAL,
    admission: Policy | None = None,
    exempt: Iterable[str] = DEFAULT_EXEMPT,
) -> Middleware:
    """
    Build the server middleware; add it with ``web.Application(middlewares=[...])``.

    Args:
        deadline_header: The header the caller's remaining milliseconds arrive in.
        enforce_deadline: Cancel a handler that outlives the caller's deadline and answer
            504; with False the deadline is only made visible (`remaining_time()`).
        max_deadline: Cap, in seconds, on the deadline a caller may ask for.
        max_priority: The highest priority a caller may claim in the header; a higher
            claim is capped to it. The default, ``CRITICAL`` (the default priority),
            lets callers lower their own priority but never shed others' requests by
            claiming ``CRITICAL_PLUS``; raise it between services you trust.
        priority_header: The header the caller's priority arrives in; None to ignore
            it (callers you don't trust could claim ``critical_plus``).
        admission: A policy every request runs under (a `RateLimiter`, `Bulkhead`,
            `AdaptiveConcurrency`, a pipeline...): its refusals are answered with 429
            (and ``Retry-After``) for a rate limit, 504 for a deadline that can't be met,
            503 for the rest. Default: none.
        exempt: Paths admission never refuses, each with everything below it (default
            ``/health`` and ``/metrics``).

    Returns:
        The middleware.

    Raises:
        ValueError: `max_deadline` is not a finite number of seconds > 0, or an
            `exempt` path does not start with ``/``.
        TypeError: `admission` is not a policy, `exempt` is a single string, or
            `max_priority` is not a `Priority`.
    """
    if max_deadline is not None:
        # Checked now: a bad cap would otherwise fail every request that has a deadline.
        max_deadline = check_seconds("resilience_middleware", "max_deadline", max_deadline)
    if not isinstance(max_priority, Priority):
        raise TypeError(
            f"resilience_middleware(max_priority={max_priority!r}): expected a Priority,"
            " such as Priority.CRITICAL"
        )
    if admission is not None and not isinstance(admission, Policy):
        raise TypeError(
            f"resilience_middleware(admission={admission!r}): expected a policy, such as"
            " RateLimiter(...) or pipeline(...)"
        )
    exempt_paths = check_exempt(exempt)

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        if admission is not None and not is_exempt(request.path, exempt_paths):
            handler = functools.partial(admit, admission, handler)
        with _trace_context(request), _caller_priority(request, priority_header, max_priority):
            budget = parse_deadline(request.headers.get(deadline_header))
            if budget is None:
                return await handler(request)
            if max_deadline is not None:
                budget = min(budget, max_deadline)
            if not enforce_deadline:
                with deadline(budget):
                    return await handler(request)
            # Enforced with asyncio.timeout, not a `Timeout` policy: this is the hop's
            # plumbing, not a protected call, so it must not show as a span or a metric
            # of its own (nor build a policy and its hook plans per request).
            limit = asyncio.timeout(budget)
            started = time.monotonic()
            try:
                with deadline(budget):
                    async with limit:
                        return await handler(request)
            except TimeoutError:
                passed = limit.expired() or time.monotonic() - started >= budget
                if not passed or _response_started(request):
                    # The handler's own timeout with budget left (its bug, not the
                    # caller's deadline; an inner Timeout capped by the deadline counts
                    # as the deadline), or a streamed response already on the wire (no
                    # second status line can follow): let aiohttp handle it.
                    raise
                return web.json_response(
                    {"error": "deadline_exceeded", "detail": "the caller's deadline passed"},
                    status=504,
                )

    return middleware


_NO_PRIORITY = contextlib.nullcontext()
# Read once: on CPython 3.11 every attribute read on an enum class (`Priority.parse`)
# runs `EnumType`'s `__getattr__` hook, and every request asks it.
_parse_priority = Priority.parse


def _caller_priority(
    request: web.Request, header: str | None, ceiling: Priority
) -> AbstractContextManager[Any]:
    level = None if header is None else _parse_priority(request.headers.get(header))
    return _NO_PRIORITY if level is None else priority(min(level, ceiling))


def _response_started(request: web.Request) -> bool:
    writer = request.writer  # aiohttp's own test for "headers already sent"
    return bool(getattr(writer, "output_size", 0))


class _trace_context:  # noqa: N801  # used like a function: `with _trace_context(request):`
    """
    Attach the request's trace context for the handler, detach afterwards.
    """

    __slots__ = ("_headers", "_token")

    def __init__(self, request: web.Request) -> None:
        self._headers = request.headers
        self._token: object = None

    def __enter__(self) -> None:
        context = extract_trace_context(self._headers)
        if context is not None:
            from opentelemetry import context as otel_context  # noqa: PLC0415  # optional extra

            self._token = otel_context.attach(context)  # type: ignore[arg-type]

    def __exit__(self, *exc_info: object) -> None:
        if self._token is not None:
            from opentelemetry import context as otel_context  # noqa: PLC0415  # optional extra

            otel_context.detach(self._token)  # type: ignore[arg-type]


def add_metrics_route(
    app: web.Application, registry: Any = None, *, path: str = "/metrics"
) -> None:
    """
    Serve a Prometheus registry in the text exposition format at `path`.

    Args:
        app: The application to add the route to.
        registry: A `prometheus_client.CollectorRegistry` (default: the global one).
        path: Where to serve it.

    Raises:
        ImportError: The ``prometheus`` extra is not installed.
    """
    try:
        import prometheus_client  # noqa: PLC0415  # the optional prometheus extra
    except ImportError as exc:
        raise ImportError(
            "add_metrics_route needs prometheus-client: pip install 'resilient[prometheus]'"
        ) from exc
    source = registry if registry is not None else prometheus_client.REGISTRY

    async def metrics(_: web.Request) -> web.Response:
        body = prometheus_client.generate_latest(source)
        response = web.Response(body=body)
        response.content_type = prometheus_client.CONTENT_TYPE_LATEST.split(";")[0]
        response.charset = "utf-8"
        return response

    app.router.add_get(path, metrics)
