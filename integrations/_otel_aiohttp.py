"""
The server side of a hop for OpenTelemetry: an aiohttp middleware opening a SERVER span.

Part of `resilient.integrations.otel`, which re-exports `aiohttp_server_span_middleware`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.trace import Span, SpanKind, Status, StatusCode

from resilient import remaining_time

from ._otel_common import ERROR_TYPE, error_type, fail, tracer_for

# Read once: on CPython 3.11 every attribute read on an enum class runs `EnumType`'s
# `__getattr__` hook, and every request starts a span of this kind.
_SERVER_KIND = SpanKind.SERVER

if TYPE_CHECKING:
    from aiohttp import web
    from aiohttp.typedefs import Middleware

__all__ = ["aiohttp_server_span_middleware"]


def aiohttp_server_span_middleware(
    tracer_provider: trace.TracerProvider | None = None,
) -> Middleware:
    """
    An aiohttp server middleware opening a SERVER span per request.

    The span, ``{method} {route}`` (the route's template, e.g. ``GET /items/{id}``; the
    method alone for a request no route matched, as the HTTP conventions say, since raw
    paths would make span names unbounded), is a child of the caller's trace context,
    which it extracts from the headers itself (``traceparent``, ``tracestate``,
    ``baggage``, through `opentelemetry.propagate`), so it works with or without
    `resilience_middleware`. It is current for the handler; statuses >= 500 and
    exceptions mark it as an error, 4xx do not.

    Place it *after* `resilience_middleware` (inside it):
    ``middlewares=[resilience_middleware(), aiohttp_server_span_middleware()]``. That
    middleware makes the bare remote context current, which would hide this span from
    the handler if it ran inside this one. A handler cancelled because the caller's
    deadline passed is marked as an error here (the 504 itself is written outside).

    Args:
        tracer_provider: Where spans go; default: the global provider.

    Returns:
        The middleware.

    Raises:
        ImportError: aiohttp is not installed.
    """
    try:
        from aiohttp import web  # noqa: PLC0415  # the aiohttp extra is optional for otel
    except ImportError as exc:  # pragma: no cover - needs an environment without aiohttp
        raise ImportError(
            "aiohttp_server_span_middleware needs aiohttp: pip install 'resilient[aiohttp]'"
        ) from exc
    tracer = tracer_for(tracer_provider)

    @web.middleware
    async def middleware(
        request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        parent = _extract(request)
        route = _route(request)
        span = tracer.start_span(
            f"{request.method} {route}" if route else request.method,
            context=parent,
            kind=_SERVER_KIND,
            attributes=_request_attributes(request, route),
        )
        token = otel_context.attach(trace.set_span_in_context(span, parent))
        try:
            response = await handler(request)
        except web.HTTPException as raised:  # a response, raised
            _answered(span, raised.status)
            raise
        except asyncio.CancelledError:
            _server_cancelled(span)
            raise
        except Exception as error:
            span.set_attributes({"http.response.status_code": 500, ERROR_TYPE: error_type(error)})
            fail(span, error)
            raise
        else:
            _answered(span, response.status)
        finally:
            otel_context.detach(token)
            span.end()
        return response

    return middleware


def _extract(request: web.Request) -> otel_context.Context:
    try:
        return propagate.extract(request.headers)
    except Exception:  # noqa: BLE001  # a hostile header or propagator: a fresh trace
        return otel_context.Context()


def _route(request: web.Request) -> str | None:
    resource = request.match_info.route.resource
    return None if resource is None else resource.canonical


def _request_attributes(request: web.Request, route: str | None) -> dict[str, str]:
    attributes = {
        "http.request.method": request.method,
        "url.path": request.path,
        "url.scheme": request.scheme,
    }
    if route:
        attributes["http.route"] = route
    if request.remote:
        attributes["client.address"] = request.remote
    return attributes


def _answered(span: Span, status: int) -> None:
    span.set_attribute("http.response.status_code", status)
    if status >= 500:  # noqa: PLR2004  # server errors only: a 4xx is the caller's
        span.set_attribute(ERROR_TYPE, str(status))
        span.set_status(Status(StatusCode.ERROR))


def _server_cancelled(span: Span) -> None:
    if remaining_time() == 0.0:
        span.add_event("resilient.deadline_exceeded")
        span.set_attribute(ERROR_TYPE, "deadline_exceeded")
        span.set_status(Status(StatusCode.ERROR, "the caller's deadline passed"))
    else:
        span.add_event("resilient.cancelled")  # the client went away
