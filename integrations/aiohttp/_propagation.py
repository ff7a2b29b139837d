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

import functools
import re
from collections.abc import Callable, Mapping, MutableMapping
from contextvars import ContextVar
from typing import Any

from resilient import Priority, remaining_time_and_priority

__all__ = [
    "DEADLINE_HEADER",
    "MAX_DEADLINE_MS",
    "PRIORITY_HEADER",
    "extract_trace_context",
    "parse_deadline",
    "stamp_headers",
]

DEADLINE_HEADER = "X-Request-Timeout-Ms"
MAX_DEADLINE_MS = 24 * 3600 * 1000  # a day: anything longer is not a deadline
_MAX_DEADLINE_S = MAX_DEADLINE_MS / 1000
_DIGITS = re.compile(r"[0-9]{1,9}")
PRIORITY_HEADER = "X-Request-Priority"
# Read once: on CPython 3.11 every `Priority.CRITICAL` runs `EnumType`'s `__getattr__`
# hook (3.12 dropped it), about ten times a module global's cost, on every attempt.
_CRITICAL = Priority.CRITICAL


def stamp_headers(
    headers: MutableMapping[str, str],
    deadline_name: str = DEADLINE_HEADER,
    priority_name: str = PRIORITY_HEADER,
) -> None:
    """
    Stamp what an attempt carries: the deadline left, the priority, the trace context.

    - The caller's remaining deadline, if any, as whole milliseconds: at least 1 and at
      most `MAX_DEADLINE_MS` (a day), the range `parse_deadline` accepts (a longer
      deadline, ``Timeout(1e306)`` say, goes on the wire as a day).
    - The current priority by name, unless it is the default (``critical``).
    - The trace context, through the configured propagators (nothing without
      opentelemetry; nothing asked with no span nor baggage and the stock propagators).

    One function, not one per header: every attempt of every request pays its frames.
    """
    left, level = remaining_time_and_priority()
    if left is not None:
        # Capped before the multiplication: 1e306 s is an infinite number of ms. `left`
        # is never negative, so int() floors it (no min, max or floor calls).
        millis = int(left * 1000.0) if left < _MAX_DEADLINE_S else MAX_DEADLINE_MS
        headers[deadline_name] = str(millis) if millis >= 1 else "1"
    if level is not _CRITICAL:
        headers[priority_name] = level.name.lower()
    otel = _OTEL
    # `_Otel.inject_unless_quiet`'s common answer written out, in C calls only: every
    # attempt of every request asks it, and each Python frame more costs it microseconds
    # when its caches are cold, as they are after the request before it.
    if otel is not None and (otel.get_current() or otel.textmap() is not otel.quiet):
        otel.inject_unless_quiet(headers)


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


class _Otel:
    """
    The parts of opentelemetry-api the hops use, and when injecting can be skipped.
    """

    def __init__(self) -> None:
        # Imported here, not at the top: the otel extra is optional (ImportError: no otel).
        from opentelemetry import context, propagate  # noqa: PLC0415  # optional otel extra
        from opentelemetry.baggage.propagation import (  # noqa: PLC0415  # optional otel extra
            W3CBaggagePropagator,
        )
        from opentelemetry.propagators.composite import (  # noqa: PLC0415  # optional otel extra
            CompositePropagator,
        )
        from opentelemetry.trace.propagation.tracecontext import (  # noqa: PLC0415  # optional
            TraceContextTextMapPropagator,
        )

        self.inject = propagate.inject
        self.extract = propagate.extract
        self.get_current = _current_context_getter(context)
        self.textmap = _global_textmap_getter(propagate)
        self._composite = CompositePropagator
        self._stock = (TraceContextTextMapPropagator, W3CBaggagePropagator)
        self._judged: object = None  # the last global propagator judged
        # The global propagator when it is known to write nothing from an empty context
        # (stock ones only), else None: `stamp_headers` skips `inject` on seeing it.
        self.quiet: object = None

    def inject_unless_quiet(self, headers: MutableMapping[str, str]) -> None:
        """
        Inject the trace context into `headers`, unless it would write nothing.

        W3C trace context and baggage (the default propagators) write nothing from a
        context holding no span and no baggage. Any other propagator is asked every
        time: it may write something from an empty context.
        """
        if not self.get_current():
            textmap = self.textmap()
            if textmap is not self._judged:  # the user set another propagator: judge it once
                self.quiet = textmap if self._stock_only(textmap) else None
                self._judged = textmap
            if self.quiet is textmap:
                return
        self.inject(headers)

    def _stock_only(self, textmap: object) -> bool:
        if type(textmap) is self._composite:
            # Private, so read with a default: should it go, every call injects again.
            parts = getattr(textmap, "_propagators", None)
            return parts is not None and all(type(p) in self._stock for p in parts)
        return type(textmap) in self._stock


def _current_context_getter(context: Any) -> Callable[[], Any]:
    """
    `opentelemetry.context.get_current`, or the context variable's own ``get`` behind it.

    The API's function is three Python calls deep (runtime context, then its variable);
    every attempt of every request asks it. With the SDK's default runtime context the
    variable's ``get`` answers the same in one C call. Anything else (another runtime
    context, a future layout of the API) gets the API's function.
    """
    runtime = getattr(context, "_RUNTIME_CONTEXT", None)
    variable = getattr(runtime, "_current_context", None)
    if type(runtime).__name__ == "ContextVarsRuntimeContext" and isinstance(variable, ContextVar):
        return variable.get
    return context.get_current  # type: ignore[no-any-return]  # the API's own function


def _global_textmap_getter(propagate: Any) -> Callable[[], object]:
    """
    `opentelemetry.propagate.get_global_textmap`, or a C call giving the same answer.

    The API's function is a Python frame returning a module global; when that global is
    where the function finds it (it is in every release so far), the module dictionary's
    own ``get`` answers the same without a frame. Anything else gets the API's function.
    """
    get_global = propagate.get_global_textmap
    namespace = vars(propagate)
    if namespace.get("_HTTP_TEXT_FORMAT", _MISSING) is get_global():
        return functools.partial(namespace.get, "_HTTP_TEXT_FORMAT")
    return get_global  # type: ignore[no-any-return]  # the API's own function


_MISSING = object()


def _load_otel() -> _Otel | None:
    try:
        return _Otel()
    except ImportError:  # the otel extra is optional
        return None


_OTEL = _load_otel()


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
        context: object = _OTEL.extract(headers, context=_OTEL.get_current())
    except Exception:  # noqa: BLE001  # a hostile header must never fail the request
        return None
    return context
