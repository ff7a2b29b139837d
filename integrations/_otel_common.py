"""
What `resilient.integrations.otel` and its aiohttp server helper share.

Attribute names, the tracer, and how an error is described on a span.
"""

from __future__ import annotations

import sys
from typing import Final

from opentelemetry import trace
from opentelemetry.trace import Span, Status, StatusCode

import resilient

__all__ = [
    "ATTEMPT",
    "ATTEMPTS",
    "ERROR_TYPE",
    "KIND",
    "NAME",
    "OUTCOME",
    "error_type",
    "fail",
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
