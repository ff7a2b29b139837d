"""
What `resilient.integrations.otel` and its aiohttp server helper share.

Attribute names, the tracer, how an error is described on a span, and the current
OpenTelemetry context read and set without the API's indirection.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from contextvars import ContextVar, Token
from typing import Final

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.context.contextvars_context import ContextVarsRuntimeContext
from opentelemetry.trace import Span, Status, StatusCode

import resilient

__all__ = [
    "ATTEMPT",
    "ATTEMPTS",
    "ERROR_TYPE",
    "KIND",
    "NAME",
    "OUTCOME",
    "attach",
    "detach",
    "error_type",
    "fail",
    "get_current",
    "tracer_for",
]

KIND: Final = "resilient.policy.kind"
NAME: Final = "resilient.policy.name"
ATTEMPTS: Final = "resilient.attempts"
OUTCOME: Final = "resilient.outcome"
ATTEMPT: Final = "resilient.attempt"
ERROR_TYPE: Final = "error.type"  # OpenTelemetry's semantic convention for failures
_SCOPE = "resilient.integrations.otel"


def tracer_for(provider: trace.TracerProvider | None) -> trace.Tracer:
    # Without a provider: the global one, through the API's proxy, so an SDK configured
    # after this tracer was made is still used (as the contrib instrumentations do).
    return trace.get_tracer(_SCOPE, resilient.__version__, tracer_provider=provider)


_ERROR_TYPES: dict[type[BaseException], str] = {}


def error_type(error: BaseException) -> str:
    """
    The exception's fully qualified class name, as ``error.type`` wants it.

    The public path where there is one: ``resilient.CircuitOpenError``, not
    ``resilient._engine.errors.CircuitOpenError``.
    """
    cls = type(error)
    name = _ERROR_TYPES.get(cls)
    if name is None:
        module = cls.__module__
        while "." in module and module.rpartition(".")[2].startswith("_"):
            parent = module.rpartition(".")[0]
            if getattr(sys.modules.get(parent), cls.__qualname__, None) is not cls:
                break
            module = parent
        name = cls.__qualname__ if module == "builtins" else f"{module}.{cls.__qualname__}"
        _ERROR_TYPES[cls] = name
    return name


def fail(span: Span, error: BaseException) -> None:
    span.record_exception(error)
    span.set_status(Status(StatusCode.ERROR, f"{type(error).__name__}: {error}"))


def _context_variable() -> ContextVar[otel_context.Context] | None:
    # The API's get_current/attach/detach each go through two Python calls to reach one
    # ContextVar method; a pipeline layer reads the context on every call, so with the
    # default runtime context (nearly always) that variable is used directly. Any other
    # runtime context (OTEL_PYTHON_CONTEXT), or an API that no longer has these
    # attributes, gets the API's functions: only the speed differs.
    runtime = getattr(otel_context, "_RUNTIME_CONTEXT", None)
    variable = getattr(runtime, "_current_context", None)
    if type(runtime) is ContextVarsRuntimeContext and isinstance(variable, ContextVar):
        return variable
    return None


_VARIABLE: Final = _context_variable()

get_current: Callable[[], otel_context.Context] = (
    otel_context.get_current if _VARIABLE is None else _VARIABLE.get
)
"""The current OpenTelemetry context, as `opentelemetry.context.get_current`."""

attach: Callable[[otel_context.Context], Token[otel_context.Context]] = (
    otel_context.attach if _VARIABLE is None else _VARIABLE.set
)
"""Make a context current, as `opentelemetry.context.attach`."""

detach: Callable[[Token[otel_context.Context]], None] = (
    otel_context.detach if _VARIABLE is None else _VARIABLE.reset
)
"""
Restore the context `attach` replaced; unlike `opentelemetry.context.detach` the fast
one raises (ValueError, RuntimeError) on a token of another context, instead of logging.
"""
