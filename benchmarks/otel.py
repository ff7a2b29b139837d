"""
What `OpenTelemetryHooks` adds to a call, next to what one SDK span costs by itself.

    python -m benchmarks.otel -o /tmp/t1.json      # pyperf; then benchmarks.report
    python -m benchmarks.otel --quick --md /tmp/t.md

The SDK `TracerProvider` has the default sampler (always on) and a span processor that
does nothing, shared by the bare span and the hooks, so export (the same for every span
however it was started) is not measured. The hooks' cost is ``Retry + hooks`` minus
``Retry`` (and the same on the pipeline); a span's is ``span`` minus ``bare``; the
target is at most 1.2x.
"""

from __future__ import annotations

from typing import Any

from opentelemetry.sdk.trace import SpanProcessor, TracerProvider

from benchmarks import _perf
from benchmarks._perf import Case, noop
from benchmarks.report import Figure, Report
from resilient import Bulkhead, CircuitBreaker, Policy, Retry, Timeout, pipeline
from resilient.integrations.otel import OpenTelemetryHooks

# What the hooks put on a failed call's span: the like-for-like reference.
ATTRIBUTES: dict[str, str | int] = {
    "resilient.policy.kind": "retry",
    "resilient.policy.name": "retry",
    "resilient.attempts": 1,
    "resilient.outcome": "success",
}


class Discard(SpanProcessor):
    """A span processor that does nothing: spans are built and ended, never exported."""


class Listen:
    """Hears calls the way the OpenTelemetry hooks do, and does nothing: the core's cost
    of reporting a call's start and end to a `resilient.CallListener`."""

    event_types = OpenTelemetryHooks.event_types

    def __call__(self, event: object) -> None:
        """Ignore `event`."""

    def listen_calls(self, _policy: Policy) -> Listen:
        """Listen to every policy, with this same object."""
        return self

    def call_started(self) -> bool:
        """Ignore the start; a token all the same, or the policy would skip the end."""
        return True

    def call_ended(self, _token: bool, _duration: float, _error: BaseException | None) -> None:
        """Ignore the end."""


def _provider() -> TracerProvider:
    provider = TracerProvider()
    provider.add_span_processor(Discard())
    return provider


def _span(attributes: dict[str, Any] | None = None) -> Any:
    tracer = _provider().get_tracer("benchmark")

    async def fn() -> int:
        with tracer.start_as_current_span("x", attributes=attributes):
            return await noop()

    return fn


def _stack(*hooks: object) -> Any:
    policy = pipeline(Timeout(2.0), Retry(3), CircuitBreaker(failure_threshold=5), Bulkhead(10))
    for hook in hooks:
        policy.add_hook(hook)  # type: ignore[arg-type]
    return policy(noop)


def cases() -> list[Case]:
    """Every variant."""
    return [
        Case("bare", lambda: noop, "await noop()"),
        Case("SDK span", _span, 'with tracer.start_as_current_span("x"): await noop()'),
        Case("SDK span, 4 attributes", lambda: _span(ATTRIBUTES),
             'with tracer.start_as_current_span("x", attributes={...4...}): await noop()'),
        Case("Retry", lambda: Retry(3)(noop), "Retry(3)(noop)"),
        Case("Retry + a do-nothing listener", lambda: Retry(3, hooks=[Listen()])(noop),
             "Retry(3, hooks=[hook])(noop), call_started/call_ended doing nothing"),
        Case("Retry + OpenTelemetryHooks",
             lambda: Retry(3, hooks=[OpenTelemetryHooks(_provider())])(noop),
             "Retry(3, hooks=[OpenTelemetryHooks(tracer_provider=sdk)])(noop)"),
        Case("Retry + OpenTelemetryHooks, no SDK",
             lambda: Retry(3, hooks=[OpenTelemetryHooks()])(noop),
             "Retry(3, hooks=[OpenTelemetryHooks()])(noop), no global SDK"),
        Case("pipeline", _stack, "pipeline(Timeout, Retry, CircuitBreaker, Bulkhead)"),
        Case("pipeline + OpenTelemetryHooks", lambda: _stack(OpenTelemetryHooks(_provider())),
             "the same pipeline, .add_hook(OpenTelemetryHooks(tracer_provider=sdk))"),
        Case("pipeline + OpenTelemetryHooks(name_attribute=True)",
             lambda: _stack(OpenTelemetryHooks(_provider(), name_attribute=True)),
             "the same, every span starting with resilient.policy.name"),
    ]  # fmt: skip


SPAN = [("SDK span", "bare")]
# fmt: off
PAGE = Report(
    "otel",
    "OpenTelemetry hooks",
    "bare",
    [
        Figure("hooks on Retry / one SDK span", ("Retry + OpenTelemetryHooks", "Retry"), SPAN, 1.2),
        Figure("hooks on the 4-policy pipeline / one SDK span",
               ("pipeline + OpenTelemetryHooks", "pipeline"), SPAN, 1.2),
        Figure("of which the core reporting start and end / one span",
               ("Retry + a do-nothing listener", "Retry"), SPAN),
        Figure("hooks with name_attribute=True on the pipeline / one span",
               ("pipeline + OpenTelemetryHooks(name_attribute=True)", "pipeline"), SPAN),
        Figure("SDK span with 4 attributes / one span", ("SDK span, 4 attributes", "bare"), SPAN),
        Figure("hooks with no SDK configured / one span",
               ("Retry + OpenTelemetryHooks, no SDK", "Retry"), SPAN),
        Figure("hooks on Retry, ns", ("Retry + OpenTelemetryHooks", "Retry")),
        Figure("one SDK span, ns", ("SDK span", "bare")),
    ],
    notes="Happy path: every call succeeds at once. Per call the policy reports the start"
    " and the end to the hooks' `CallListener` (two method calls, no event objects); they"
    " start a span with no attribute (its name says the policy's kind and name; name,"
    " outcome and attempts are only written when the call wasn't a plain success), make"
    " it current, then restore the context and end the span. On the pipeline the three"
    " inner policies fold into the outer policy's span. The SDK validates the attributes"
    " a span starts with on every call, which is why a plain success carries none unless"
    " `name_attribute=True` asks for the name. pyperf times the cases one after another:"
    " on a host whose speed swings, judge the 1.2x target by `--quick` runs, which"
    " interleave them (docs/benchmarks.md, \"The OpenTelemetry gap, found\").",
)
# fmt: on


if __name__ == "__main__":
    raise SystemExit(_perf.main("benchmarks.otel", cases, PAGE))
