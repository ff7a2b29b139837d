"""
Tracing as the OpenTelemetry SDK's environment variables say.

- ``OTEL_TRACES_EXPORTER=console``: spans printed to stdout by the SDK's
  ``ConsoleSpanExporter`` (one JSON document per span, as it is exported);
- ``otlp``: sent to ``OTEL_EXPORTER_OTLP_ENDPOINT`` over OTLP/HTTP (the
  ``opentelemetry-exporter-otlp-proto-http`` package, in the ``kv`` extra);
- unset or ``none``: nothing recorded, no SDK loaded.

``OTEL_SERVICE_NAME`` defaults to ``kv-<id>``. With tracing on, each request gets a
SERVER span (`aiohttp_server_span_middleware`), every peer policy call a span
(`OpenTelemetryHooks`), and each replicated record a span on the replica, parented by
the coordinator's span through the ``traceparent`` carried in the batch, so one trace
runs from the client through the coordinator to every replica.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from opentelemetry import propagate, trace

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider

__all__ = ["Tracing", "configure_tracing"]


class Tracing:
    """
    A configured tracer provider and the helpers the node uses with it.
    """

    def __init__(self, provider: TracerProvider) -> None:
        self.provider = provider
        self.tracer = provider.get_tracer("examples.kv")

    @staticmethod
    def current_traceparent() -> str | None:
        """
        The current span's ``traceparent``, to travel with a record in a batch.
        """
        carrier: dict[str, str] = {}
        propagate.inject(carrier)
        return carrier.get("traceparent")

    def replica_span(self, traceparent: str, node: str) -> trace.Span:
        """
        Start the span of one record applied on this replica, under its writer's span.
        """
        parent = propagate.extract({"traceparent": traceparent})
        return self.tracer.start_span(
            "kv replica apply", context=parent, attributes={"kv.node": node}
        )

    def shutdown(self) -> None:
        """
        Export what is buffered and stop.
        """
        self.provider.shutdown()


def configure_tracing(node_id: str, name: str) -> Tracing | None:
    """
    Set up the SDK for exporter `name` (``OTEL_TRACES_EXPORTER``); None when ``none``.

    Raises:
        ValueError: `name` is not an exporter this node knows.
        ImportError: ``otlp`` without its exporter package installed.
    """
    env = os.environ
    if name == "none":
        return None
    # The SDK (optional: a node traces nothing without it) loads only when tracing is on.
    from opentelemetry.sdk.resources import SERVICE_NAME, Resource  # noqa: PLC0415
    from opentelemetry.sdk.trace import TracerProvider  # noqa: PLC0415
    from opentelemetry.sdk.trace.export import (  # noqa: PLC0415
        BatchSpanProcessor,
        ConsoleSpanExporter,
        SimpleSpanProcessor,
    )

    service = env.get("OTEL_SERVICE_NAME") or f"kv-{node_id}"
    provider = TracerProvider(resource=Resource.create({SERVICE_NAME: service}))
    if name == "console":
        provider.add_span_processor(SimpleSpanProcessor(ConsoleSpanExporter()))
    elif name == "otlp":
        try:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import (  # noqa: PLC0415
                OTLPSpanExporter,  # optional, as the error below says
            )
        except ImportError as exc:
            raise ImportError(
                "OTEL_TRACES_EXPORTER=otlp needs opentelemetry-exporter-otlp-proto-http:"
                " pip install 'resilient[kv]'"
            ) from exc
        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    else:
        raise ValueError(f"OTEL_TRACES_EXPORTER={name!r}: expected console, otlp or none")
    trace.set_tracer_provider(provider)
    return Tracing(provider)
