"""
What travels from hop to hop: the remaining deadline, the priority and the trace context.

The deadline goes as a relative budget in milliseconds (``X-Request-Timeout-Ms``), not
as an absolute time, so the two hosts' clocks need not agree (gRPC's ``grpc-timeout``
works the same way). The priority (`resilient.Priority`) goes by name, lower case, in
``X-Request-Priority`` (``sheddable``, ``sheddable_plus``, ``critical``,
``critical_plus``), and only when it is not the default ``critical``. Trace context
(``traceparent``, ``tracestate``, ``baggage``) goes through `opentelemetry.propagate`,
so the user's configured propagators apply; without the ``otel`` extra installed,
nothing is injected or extracted.

Incoming values are untrusted: anything malformed is ignored (no deadline, the default
priority, a fresh trace), never an error.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping, MutableMapping
from typing import Any

from resilient import Priority, current_priority, remaining_time

__all__ = [
    "DEADLINE_HEADER",
    "MAX_DEADLINE_MS",
    "PRIORITY_HEADER",
    "extract_trace_context",
    "inject_trace_context",
    "parse_deadline",
    "set_deadline_header",
    "set_priority_header",
]

DEADLINE_HEADER = "X-Request-Timeout-Ms"
MAX_DEADLINE_MS = 24 * 3600 * 1000  # a day: anything longer is not a deadline
_DIGITS = re.compile(r"[0-9]{1,9}")
PRIORITY_HEADER = "X-Request-Priority"


def set_deadline_header(headers: MutableMapping[str, str], name: str = DEADLINE_HEADER) -> None:
    """
    Send the caller's remaining deadline, if any, as whole milliseconds.

    At least 1 and at most `MAX_DEADLINE_MS` (a day), the range `parse_deadline`
    accepts: a longer deadline, ``Timeout(1e306)`` say, goes on the wire as a day.
    """
    left = remaining_time()
    if left is not None:
        # Capped before the multiplication: 1e306 s is an infinite number of ms.
        millis = math.floor(min(left, MAX_DEADLINE_MS / 1000) * 1000)
        headers[name] = str(max(1, millis))


def set_priority_header(headers: MutableMapping[str, str], name: str = PRIORITY_HEADER) -> None:
    """
    Send the current priority by name, unless it is the default (``critical``).
    """
    level = current_priority()
    if level is not Priority.CRITICAL:
        headers[name] = level.name.lower()


def parse_deadline(value: str | None) -> float | None:
    """
    Turn a received deadline header into seconds; None when absent or malformed.
    """
    if value is None:
        return None
    value = value.strip()
    if not _DIGITS.fullmatch(value):
        return None
    millis = int(value)
    if not 0 < millis <= MAX_DEADLINE_MS:
        return None
    return millis / 1000


def _load_otel() -> tuple[Callable[..., None], Callable[..., Any], Callable[[], Any]] | None:
    try:
        from opentelemetry import context, propagate  # noqa: PLC0415  # optional otel extra
    except ImportError:  # the otel extra is optional
        return None
    return propagate.inject, propagate.extract, context.get_current


_OTEL = _load_otel()


def inject_trace_context(headers: MutableMapping[str, str]) -> None:
    """
    Write the current trace context into `headers` (no-op without opentelemetry).
    """
    if _OTEL is not None:
        _OTEL[0](headers)


def extract_trace_context(headers: Mapping[str, str]) -> object | None:
    """
    Read a trace context from `headers`; None without opentelemetry.

    Malformed headers yield an empty context (a fresh trace), never an error.
    """
    if _OTEL is None:
        return None
    try:
        # On top of the current context, not instead of it: an outer server
        # instrumentation's span stays the parent when no trace header came in.
        context: object = _OTEL[1](headers, context=_OTEL[2]())
    except Exception:  # noqa: BLE001  # a hostile header must never fail the request
        return None
    return context
