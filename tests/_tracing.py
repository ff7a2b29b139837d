"""
The `tracer` fixture: an OpenTelemetry SDK tracer recording into memory, for the tests
that check spans (imported by the conftest of each folder whose tests use it).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from opentelemetry import propagate, trace
from opentelemetry.baggage.propagation import W3CBaggagePropagator
from opentelemetry.propagators.composite import CompositePropagator
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

__all__ = ["tracer"]


@pytest.fixture
def tracer() -> Iterator[tuple[trace.Tracer, InMemorySpanExporter]]:
    """
    A tracer of an SDK `TracerProvider` recording into memory, and W3C propagation.

    The provider is not installed globally (a span made current with its tracer is all
    injection needs), so there is nothing global to undo but the propagator, which is
    pinned to tracecontext + baggage for the test and restored afterwards.
    """
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    before = propagate.get_global_textmap()
    propagate.set_global_textmap(
        CompositePropagator([TraceContextTextMapPropagator(), W3CBaggagePropagator()])
    )
    try:
        yield provider.get_tracer(__name__), exporter
    finally:
        propagate.set_global_textmap(before)
        provider.shutdown()
