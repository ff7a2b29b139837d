"""
OpenTelemetry tracing: `OpenTelemetryHooks` and `aiohttp_server_span_middleware`.

Spans are recorded by an SDK `TracerProvider` passed explicitly (the global provider is
never set) into an `InMemorySpanExporter`. The propagator is OpenTelemetry's default
(W3C trace context + baggage). The last tests send a request through two real aiohttp
services on 127.0.0.1 and check that it makes one trace with the right parents.
"""

from __future__ import annotations

import asyncio
import contextvars
import subprocess
import sys
from collections.abc import Awaitable, Callable, Iterator, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import aiohttp
import pytest
import tenacity
from aiohttp import web
from opentelemetry import context, trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_ON, Sampler, SamplingResult
from opentelemetry.trace import Link, SpanKind, StatusCode, TraceState
from opentelemetry.util.types import Attributes

from resilient import (
    Bulkhead,
    CircuitBreaker,
    CircuitOpenError,
    Fallback,
    Hedge,
    Retry,
    Timeout,
    TimeoutExceeded,
    pipeline,
)
from resilient._engine.hooks import global_hooks
from resilient.integrations import _otel_common
from resilient.integrations._otel_common import error_type
from resilient.integrations.aiohttp import (
    DEADLINE_HEADER,
    ResilienceMiddleware,
    resilience_middleware,
)
from resilient.integrations.otel import OpenTelemetryHooks, aiohttp_server_span_middleware
from resilient.testing import FakeClock
from tests._paths import REPO_ROOT
from tests._run import python
from tests._web import Serve

# -- fixtures and helpers ------------------------------------------------------------------


@pytest.fixture
def exporter() -> InMemorySpanExporter:
    """
    Where the test's spans end up.
    """
    return InMemorySpanExporter()


@pytest.fixture
def provider(exporter: InMemorySpanExporter) -> Iterator[TracerProvider]:
    """
    An SDK provider exporting every span at once into `exporter`; not installed globally.
    """
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield provider
    provider.shutdown()


@pytest.fixture
def hooks(provider: TracerProvider) -> OpenTelemetryHooks:
    """
    The hooks under test, on `provider`.
    """
    return OpenTelemetryHooks(tracer_provider=provider)


@pytest.fixture
def tracer(provider: TracerProvider) -> trace.Tracer:
    """
    A tracer for the test's own spans (the caller's, the user's inside a call).
    """
    return provider.get_tracer("tests")


def ours(exporter: InMemorySpanExporter) -> list[ReadableSpan]:
    """
    The finished spans the hooks made, in the order they ended.
    """
    return [s for s in exporter.get_finished_spans() if s.name.startswith("resilient ")]


def only(exporter: InMemorySpanExporter) -> ReadableSpan:
    """
    The one span the hooks made (fails if there are none or several).
    """
    spans = ours(exporter)
    assert len(spans) == 1, [s.name for s in spans]
    return spans[0]


def named(exporter: InMemorySpanExporter, name: str) -> list[ReadableSpan]:
    """
    Finished spans called `name`.
    """
    return [s for s in exporter.get_finished_spans() if s.name == name]


def events(span: ReadableSpan, name: str) -> list[dict[str, Any]]:
    """
    The attributes of `span`'s events called `name`, in order.
    """
    return [dict(e.attributes or {}) for e in span.events if e.name == name]


def parent_id(span: ReadableSpan) -> int | None:
    """
    The span id of `span`'s parent, or None for a root.
    """
    return None if span.parent is None else span.parent.span_id


def remote_parent_id(span: ReadableSpan) -> int:
    """
    The span id of `span`'s parent, which must be remote (across a hop).
    """
    assert span.parent is not None
    assert span.parent.is_remote
    return span.parent.span_id


def span_id(span: ReadableSpan | trace.Span) -> int:
    """
    `span`'s own id.
    """
    span_context = span.get_span_context() if isinstance(span, trace.Span) else span.context
    assert span_context is not None
    return span_context.span_id


async def succeed() -> str:
    """
    A dependency that answers.
    """
    return "ok"


def failing(times: int, error: type[Exception] = ConnectionError) -> Callable[[], Awaitable[str]]:
    """
    A dependency that fails `times` times with `error`, then answers "ok".
    """
    calls = 0

    async def call() -> str:
        nonlocal calls
        calls += 1
        if calls <= times:
            raise error(f"failure {calls}")
        return "ok"

    return call


def retry(hooks: OpenTelemetryHooks, attempts: int = 3, **options: Any) -> Retry:
    """
    A `Retry` on a fake clock (no real sleeps) with a fixed 0.25 s wait, traced.
    """
    options.setdefault("wait", tenacity.wait_fixed(0.25))
    return Retry(attempts, clock=FakeClock(), hooks=[hooks], **options)


# -- one span per call ---------------------------------------------------------------------


async def test_a_successful_call_is_one_internal_span_under_the_caller(
    hooks: OpenTelemetryHooks, tracer: trace.Tracer, exporter: InMemorySpanExporter
) -> None:
    """
    A call makes one INTERNAL span ``resilient <kind>``, a child of the caller's span,
    with no attribute (a plain success), status unset.
    """
    with tracer.start_as_current_span("caller") as caller:
        assert await retry(hooks).call(succeed) == "ok"
    span = only(exporter)
    assert span.name == "resilient retry"
    assert span.kind is SpanKind.INTERNAL
    assert parent_id(span) == span_id(caller)
    # The happy path is bare (the span's name says the kind and the name): no outcome
    # means success, no attempts means one (the SDK validates every attribute a span
    # starts with, on every call).
    assert dict(span.attributes or {}) == {}
    assert span.status.status_code is StatusCode.UNSET
    assert span.events == ()


async def test_name_attribute_puts_the_name_on_every_span_where_samplers_see_it(
    exporter: InMemorySpanExporter,
) -> None:
    """
    With ``name_attribute=True`` a plain success carries ``resilient.policy.name`` from
    the span's start (a sampler is given it), and an eventful call keeps it once.
    """
    seen: list[dict[str, Any]] = []

    class Watching(Sampler):
        """Samples everything, noting the attributes each span starts with."""

        def should_sample(  # noqa: PLR0917  # the SDK's signature
            self,
            parent_context: context.Context | None,
            trace_id: int,
            name: str,
            kind: SpanKind | None = None,
            attributes: Attributes = None,
            links: Sequence[Link] | None = None,
            trace_state: TraceState | None = None,
        ) -> SamplingResult:
            seen.append(dict(attributes or {}))
            return ALWAYS_ON.should_sample(
                parent_context, trace_id, name, kind, attributes, links, trace_state
            )

        def get_description(self) -> str:
            return "Watching"

    provider = TracerProvider(sampler=Watching())
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    hooks = OpenTelemetryHooks(tracer_provider=provider, name_attribute=True)
    policy = Retry(3, wait=tenacity.wait_none(), name="inventory", hooks=[hooks])
    assert await policy.call(succeed) == "ok"
    assert await policy.call(failing(1)) == "ok"
    plain, retried = ours(exporter)
    assert seen == [{"resilient.policy.name": "inventory"}] * 2
    assert dict(plain.attributes or {}) == {"resilient.policy.name": "inventory"}
    assert dict(retried.attributes or {}) == {
        "resilient.policy.name": "inventory",
        "resilient.attempts": 2,
        "resilient.outcome": "success",
    }
    assert "name_attribute=True" in repr(hooks)


@pytest.mark.parametrize("value", [1, "yes", None])
def test_name_attribute_must_be_a_bool(value: object) -> None:
    """A truthy non-bool is refused, naming the parameter (not taken as True)."""
    with pytest.raises(TypeError, match=r"name_attribute=.*expected True or False"):
        OpenTelemetryHooks(name_attribute=value)  # type: ignore[arg-type]  # the misuse


def test_a_provider_that_is_not_one_is_refused() -> None:
    """
    ``OpenTelemetryHooks(True)`` (the flag given in the provider's place) says so, not
    an AttributeError from deep inside the API.
    """
    with pytest.raises(TypeError, match=r"tracer_provider=True.*TracerProvider"):
        OpenTelemetryHooks(True)  # type: ignore[arg-type]  # the misuse


@pytest.mark.parametrize("name_attribute", [False, True])
async def test_the_name_is_the_outermost_policys_whatever_the_outcome(
    provider: TracerProvider, exporter: InMemorySpanExporter, name_attribute: bool
) -> None:
    """
    Layers named apart: every span names the outermost policy, never an inner one; a
    plain success carries the name only with ``name_attribute=True``, any other call
    always, once (retried, failure, rejected).
    """
    hooks = OpenTelemetryHooks(provider, name_attribute=name_attribute)
    breaker = CircuitBreaker(name="inner", failure_threshold=100)
    policy = pipeline(
        Timeout(5.0, name="outer"), Retry(2, wait=tenacity.wait_none(), name="middle"), breaker
    )
    policy.add_hook(hooks)
    assert await policy.call(succeed) == "ok"
    assert await policy.call(failing(1)) == "ok"
    assert await outcome(policy.call(failing(5))) is ConnectionError
    breaker.trip()
    assert await outcome(policy.call(succeed)) is CircuitOpenError
    plain, *others = ours(exporter)
    assert {s.name for s in ours(exporter)} == {"resilient timeout outer"}
    assert (plain.attributes or {}).get("resilient.policy.name") == (
        "outer" if name_attribute else None
    )
    assert [(s.attributes or {}).get("resilient.policy.name") for s in others] == ["outer"] * 3
    assert [(s.attributes or {}).get("resilient.outcome") for s in others] == [
        "success",
        "failure",
        "rejected",
    ]


async def test_one_instance_given_twice_counts_each_retry_once(
    provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    """
    The same hooks installed and on the policy too (or added twice) make one span with
    one event per retry and the true attempt count.
    """
    hooks = OpenTelemetryHooks(provider)
    policy = retry(hooks)
    policy.add_hook(hooks)
    remove = hooks.install()
    try:
        assert await policy.call(failing(1)) == "ok"
    finally:
        remove()
    span = only(exporter)
    assert span.attributes is not None
    assert span.attributes["resilient.attempts"] == 2
    assert len(events(span, "resilient.retry_scheduled")) == 1


async def test_a_cancelled_span_says_so_even_if_its_event_fails(
    hooks: OpenTelemetryHooks, exporter: InMemorySpanExporter, monkeypatch: pytest.MonkeyPatch
) -> None:
    """
    The outcome is written before the ``resilient.cancelled`` event: a span whose
    add_event raises still reads cancelled, not a bare plain success.
    """
    from opentelemetry.sdk.trace import Span as SdkSpan  # noqa: PLC0415  # this test's

    def broken(self: SdkSpan, *args: object, **kwargs: object) -> None:
        raise RuntimeError("add_event broke")

    monkeypatch.setattr(SdkSpan, "add_event", broken)
    entered = asyncio.Event()

    async def hang() -> str:
        entered.set()
        return await hang_until_cancelled()

    task = asyncio.create_task(retry(hooks).call(hang))
    await entered.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    attributes = only(exporter).attributes or {}
    assert attributes.get("resilient.outcome") == "cancelled"


async def test_a_named_policy_names_its_span(
    hooks: OpenTelemetryHooks, exporter: InMemorySpanExporter
) -> None:
    """A policy given a name appears as ``resilient <kind> <name>``."""
    await CircuitBreaker(name="inventory", hooks=[hooks]).call(succeed)
    assert only(exporter).name == "resilient circuit_breaker inventory"


async def test_the_span_is_current_inside_the_call(
    hooks: OpenTelemetryHooks, exporter: InMemorySpanExporter
) -> None:
    """Inside the protected function, the current span is the call's span."""
    seen: list[int] = []

    async def look() -> str:
        seen.append(span_id(trace.get_current_span()))
        return "ok"

    await retry(hooks).call(look)
    assert seen == [span_id(only(exporter))]


async def test_a_failure_is_recorded_with_status_error(
    hooks: OpenTelemetryHooks, exporter: InMemorySpanExporter
) -> None:
    """
    A call that fails re-raises the error unchanged; its span has status ERROR with the
    error as description, an ``exception`` event, ``error.type`` and outcome failure.
    """
    with pytest.raises(ValueError, match="failure 1") as raised:
        await retry(hooks, attempts=1).call(failing(1, ValueError))
    span = only(exporter)
    assert span.status.status_code is StatusCode.ERROR
    assert span.status.description == f"ValueError: {raised.value}"
    assert [e["exception.type"] for e in events(span, "exception")] == ["ValueError"]
    assert span.attributes is not None
    assert span.attributes["resilient.outcome"] == "failure"
    assert span.attributes["error.type"] == "ValueError"
    assert span.attributes["resilient.policy.name"] == "retry"  # an eventful span's


async def test_retries_are_span_events_numbered_by_attempt(
    hooks: OpenTelemetryHooks, exporter: InMemorySpanExporter
) -> None:
    """
    Each retry is a ``resilient.retry_scheduled`` event with the failed attempt's
    number, the backoff and the error type; the span counts every attempt.
    """
    assert await retry(hooks).call(failing(2)) == "ok"
    span = only(exporter)
    assert events(span, "resilient.retry_scheduled") == [
        {
            "resilient.attempt": attempt,
            "resilient.retry.delay": 0.25,
            "error.type": "ConnectionError",
            "resilient.policy.kind": "retry",
            "resilient.policy.name": "retry",
        }
        for attempt in (1, 2)
    ]
    assert span.attributes is not None
    assert (span.attributes["resilient.attempts"], span.attributes["resilient.outcome"]) == (
        3,
        "success",
    )
    assert span.status.status_code is StatusCode.UNSET


async def test_an_open_breaker_rejection_is_an_event(
    hooks: OpenTelemetryHooks, exporter: InMemorySpanExporter
) -> None:
    """
    A call refused by an open breaker: event ``resilient.rejected`` with reason
    circuit_open, outcome rejected, status ERROR, ``error.type`` the public class path.
    """
    breaker = CircuitBreaker(name="db", hooks=[hooks])
    breaker.trip()
    with pytest.raises(CircuitOpenError):
        await breaker.call(succeed)
    span = only(exporter)
    assert [e["resilient.rejection.reason"] for e in events(span, "resilient.rejected")] == [
        "circuit_open"
    ]
    assert span.attributes is not None
    assert span.attributes["resilient.outcome"] == "rejected"
    assert span.attributes["error.type"] == "resilient.CircuitOpenError"
    assert span.status.status_code is StatusCode.ERROR


async def test_a_breaker_opening_during_a_call_is_an_event(
    hooks: OpenTelemetryHooks, exporter: InMemorySpanExporter
) -> None:
    """The failure that opens a breaker carries ``resilient.state_changed`` closed -> open."""
    breaker = CircuitBreaker(name="db", failure_threshold=1, hooks=[hooks])
    with pytest.raises(ConnectionError):
        await breaker.call(failing(1))
    changes = events(only(exporter), "resilient.state_changed")
    assert [
        (c["resilient.circuit.old_state"], c["resilient.circuit.new_state"]) for c in changes
    ] == [("closed", "open")]


async def test_a_timeout_is_an_event_with_its_budget(
    hooks: OpenTelemetryHooks, exporter: InMemorySpanExporter
) -> None:
    """A call out of time: event ``resilient.timed_out`` with the budget, outcome timeout."""
    with pytest.raises(TimeoutExceeded):
        await Timeout(0.01, hooks=[hooks]).call(asyncio.sleep, 5)
    span = only(exporter)
    assert [e["resilient.timeout"] for e in events(span, "resilient.timed_out")] == [
        pytest.approx(0.01)
    ]
    assert span.attributes is not None
    assert span.attributes["resilient.outcome"] == "timeout"
    assert span.status.status_code is StatusCode.ERROR


async def test_a_hedge_is_an_event_and_an_attempt(
    hooks: OpenTelemetryHooks, exporter: InMemorySpanExporter
) -> None:
    """A slow first attempt starts a hedge: event ``resilient.hedge_sent``, attempt 2 of 2."""
    started = 0

    async def slow_then_fast() -> str:
        nonlocal started
        started += 1
        if started == 1:
            await asyncio.sleep(5)
        return "ok"

    assert await Hedge(0.01, hooks=[hooks]).call(slow_then_fast) == "ok"
    span = only(exporter)
    assert [e["resilient.attempt"] for e in events(span, "resilient.hedge_sent")] == [2]
    assert span.attributes is not None
    assert span.attributes["resilient.attempts"] == 2


async def test_a_fallback_is_an_event_and_not_an_error(
    hooks: OpenTelemetryHooks, exporter: InMemorySpanExporter
) -> None:
    """
    A fallback answering for a failure: event ``resilient.fallback_used`` with the
    error type, outcome fallback, status unset and no exception recorded.
    """
    assert await Fallback(value="cached", hooks=[hooks]).call(failing(1)) == "cached"
    span = only(exporter)
    assert [e["error.type"] for e in events(span, "resilient.fallback_used")] == ["ConnectionError"]
    assert span.attributes is not None
    assert span.attributes["resilient.outcome"] == "fallback"
    assert span.status.status_code is StatusCode.UNSET
    assert events(span, "exception") == []


async def test_a_cancelled_call_is_not_an_error(
    hooks: OpenTelemetryHooks, exporter: InMemorySpanExporter
) -> None:
    """
    A call cancelled from outside: event ``resilient.cancelled``, outcome cancelled,
    status unset; the cancellation reaches the caller.
    """
    entered = asyncio.Event()

    async def hang() -> str:
        entered.set()
        await asyncio.sleep(5)
        return "late"

    task = asyncio.create_task(retry(hooks).call(hang))
    await entered.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    span = only(exporter)
    assert [e.name for e in span.events] == ["resilient.cancelled"]
    assert span.attributes is not None
    assert span.attributes["resilient.outcome"] == "cancelled"
    assert span.status.status_code is StatusCode.UNSET


# -- pipelines and nesting -----------------------------------------------------------------


def full_pipeline(hooks: OpenTelemetryHooks, clock: FakeClock, slots: int = 4) -> Any:
    """
    Timeout + Retry + CircuitBreaker + Bulkhead, every layer traced by `hooks`.
    """
    policy = pipeline(
        Timeout(5.0, name="inventory"),
        Retry(3, wait=tenacity.wait_fixed(0.25), clock=clock, name="inventory"),
        CircuitBreaker(name="inventory", failure_threshold=5),
        Bulkhead(slots, name="inventory"),
    )
    policy.add_hook(hooks)
    return policy


async def test_a_pipeline_is_one_span_for_the_outermost_policy(
    hooks: OpenTelemetryHooks, exporter: InMemorySpanExporter
) -> None:
    """
    A call through a four-policy pipeline makes one span, named for the outermost
    policy, carrying the inner retry's events (each naming the policy that decided).
    """
    assert await full_pipeline(hooks, FakeClock()).call(failing(1)) == "ok"
    span = only(exporter)
    assert span.name == "resilient timeout inventory"
    assert [e["resilient.policy.kind"] for e in events(span, "resilient.retry_scheduled")] == [
        "retry"
    ]
    assert span.attributes is not None
    assert span.attributes["resilient.attempts"] == 2


async def test_a_pipeline_rejection_is_one_span(
    hooks: OpenTelemetryHooks, exporter: InMemorySpanExporter
) -> None:
    """An open breaker inside a pipeline: still one span, outcome rejected, one rejection event."""
    policy = full_pipeline(hooks, FakeClock())
    policy.policies[2].trip()
    with pytest.raises(CircuitOpenError):
        await policy.call(succeed)
    span = only(exporter)
    assert len(events(span, "resilient.rejected")) == 1
    assert span.attributes is not None
    assert span.attributes["resilient.outcome"] == "rejected"


async def test_a_call_under_the_users_own_span_gets_its_own_span(
    hooks: OpenTelemetryHooks, tracer: trace.Tracer, exporter: InMemorySpanExporter
) -> None:
    """
    A protected call made under a span the user opened inside another protected call
    is traced on its own: a span whose parent is the user's span, itself a child of the
    outer call's span.
    """
    database = CircuitBreaker(name="database", hooks=[hooks])

    async def handler() -> str:
        with tracer.start_as_current_span("query"):
            return await database.call(succeed)

    await retry(hooks).call(handler)
    [inner, outer] = ours(exporter)
    [query] = named(exporter, "query")
    assert inner.name == "resilient circuit_breaker database"
    assert parent_id(inner) == span_id(query)
    assert parent_id(query) == span_id(outer)


async def test_a_call_directly_inside_another_is_folded_into_it(
    hooks: OpenTelemetryHooks, exporter: InMemorySpanExporter
) -> None:
    """
    A protected call made directly inside another (no span in between) looks like a
    pipeline layer to the hooks and folds into the outer span: events carry no call
    identity to tell them apart (documented limitation).
    """
    database = CircuitBreaker(name="database", hooks=[hooks])

    async def handler() -> str:
        return await database.call(succeed)

    await retry(hooks).call(handler)
    assert only(exporter).name == "resilient retry"


async def test_two_hook_instances_on_one_policy_make_one_span_and_unwind(
    provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    """
    Two `OpenTelemetryHooks` on one policy (delivered in the same order on start and
    end) share the nesting state: one span, and the context is restored after.
    """
    before = context.get_current()
    first, second = OpenTelemetryHooks(provider), OpenTelemetryHooks(provider)
    await Retry(3, hooks=[first, second]).call(succeed)
    assert len(ours(exporter)) == 1
    assert context.get_current() is before


# -- context: current during the call, restored after --------------------------------------


async def hang_until_cancelled() -> str:
    """
    Never answers.
    """
    await asyncio.sleep(5)
    return "late"


async def outcome(call: Awaitable[object]) -> object:
    """
    Await `call`; return its result, or the type of the exception it raised.
    """
    try:
        return await call
    except Exception as error:
        return type(error)


@pytest.mark.parametrize(
    ("scenario", "expected"),
    [
        ("success", "ok"),
        ("failure", ConnectionError),
        ("rejection", CircuitOpenError),
        ("timeout", TimeoutExceeded),
        ("pipeline", ConnectionError),
        ("fallback", 1),
    ],
)
async def test_no_context_is_left_attached_after_a_call(
    hooks: OpenTelemetryHooks,
    tracer: trace.Tracer,
    exporter: InMemorySpanExporter,
    scenario: str,
    expected: object,
) -> None:
    """Whatever the call's fate, the current context after it is the one before it."""
    breaker = CircuitBreaker(name="db", hooks=[hooks])
    breaker.trip()
    calls: dict[str, Callable[[], Awaitable[object]]] = {
        "success": lambda: retry(hooks).call(succeed),
        "failure": lambda: retry(hooks).call(failing(5)),
        "rejection": lambda: breaker.call(succeed),
        "timeout": lambda: Timeout(0.01, hooks=[hooks]).call(hang_until_cancelled),
        "pipeline": lambda: full_pipeline(hooks, FakeClock()).call(failing(5)),
        "fallback": lambda: Fallback(value=1, hooks=[hooks]).call(failing(1)),
    }
    with tracer.start_as_current_span("caller"):
        before = context.get_current()
        assert await outcome(calls[scenario]()) == expected  # the fate the scenario names
        assert context.get_current() is before
    assert len(ours(exporter)) == 1


def test_the_context_is_read_and_set_through_opentelemetrys_own_variable() -> None:
    """With the default runtime context the hot path uses its ContextVar directly, and
    that is the same context the API reads and sets."""
    runtime = context._RUNTIME_CONTEXT  # what the shortcut relies on
    variable = runtime._current_context  # type: ignore[attr-defined]
    assert _otel_common.get_current == variable.get
    assert _otel_common.attach == variable.set
    assert _otel_common.detach == variable.reset
    before = context.get_current()
    ours_ = context.set_value("resilient-test", 1)
    token = _otel_common.attach(ours_)
    assert context.get_current() is ours_
    _otel_common.detach(token)
    assert context.get_current() is before


def test_another_runtime_context_gets_the_api_functions(monkeypatch: pytest.MonkeyPatch) -> None:
    """A runtime context other than the default one (OTEL_PYTHON_CONTEXT), or an API
    without the attributes, is not bypassed."""
    monkeypatch.setattr(context, "_RUNTIME_CONTEXT", object())
    assert _otel_common._context_variable() is None
    monkeypatch.delattr(context, "_RUNTIME_CONTEXT")
    assert _otel_common._context_variable() is None


async def test_no_context_is_left_attached_after_a_cancelled_call(
    hooks: OpenTelemetryHooks, exporter: InMemorySpanExporter
) -> None:
    """
    In the task whose call was cancelled, the context right after the call is the one
    before it (the pipeline's layers unwound too).
    """
    entered = asyncio.Event()
    restored: list[bool] = []

    async def hang() -> str:
        entered.set()
        return await hang_until_cancelled()

    async def caller() -> None:
        before = context.get_current()
        try:
            await full_pipeline(hooks, FakeClock()).call(hang)
        finally:
            restored.append(context.get_current() is before)

    task = asyncio.create_task(caller())
    await entered.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert restored == [True]
    assert only(exporter).attributes == {
        "resilient.policy.name": "inventory",
        "resilient.attempts": 1,
        "resilient.outcome": "cancelled",
    }


async def test_spans_in_retried_attempts_are_children_of_the_call(
    hooks: OpenTelemetryHooks, tracer: trace.Tracer, exporter: InMemorySpanExporter
) -> None:
    """A span the user opens in each retried attempt has the call's span as parent."""
    flaky = failing(2)

    async def attempt() -> str:
        with tracer.start_as_current_span("attempt"):
            return await flaky()

    await retry(hooks).call(attempt)
    attempts = named(exporter, "attempt")
    assert len(attempts) == 3
    assert {parent_id(s) for s in attempts} == {span_id(only(exporter))}


async def test_spans_in_hedged_attempts_are_children_of_the_call(
    hooks: OpenTelemetryHooks, tracer: trace.Tracer, exporter: InMemorySpanExporter
) -> None:
    """
    Hedged attempts run as tasks; a span opened in each (the loser's included) has the
    call's span as parent, also when the pipeline's inner layers run in those tasks.
    """
    started = 0

    async def attempt() -> str:
        nonlocal started
        started += 1
        with tracer.start_as_current_span("attempt"):
            if started == 1:
                await asyncio.sleep(5)
        return "ok"

    policy = pipeline(Hedge(0.01), CircuitBreaker(name="db"), Bulkhead(4))
    policy.add_hook(hooks)
    await policy.call(attempt)
    await asyncio.sleep(0)  # let the cancelled loser finish its span
    attempts = named(exporter, "attempt")
    assert len(attempts) == 2
    assert {parent_id(s) for s in attempts} == {span_id(only(exporter))}


async def test_background_tasks_started_in_a_call_carry_its_span(
    hooks: OpenTelemetryHooks, tracer: trace.Tracer, exporter: InMemorySpanExporter
) -> None:
    """A task created inside the call, even one finishing after it, is a child of its span."""

    async def background() -> None:
        await asyncio.sleep(0.01)
        with tracer.start_as_current_span("background"):
            pass

    tasks: list[asyncio.Task[None]] = []

    async def call() -> str:
        tasks.append(asyncio.create_task(background()))
        return "ok"

    await retry(hooks).call(call)
    await tasks[0]
    [span] = named(exporter, "background")
    assert parent_id(span) == span_id(only(exporter))


async def test_concurrent_calls_never_share_a_span(
    hooks: OpenTelemetryHooks, tracer: trace.Tracer, exporter: InMemorySpanExporter
) -> None:
    """
    Twenty interleaved calls through one pipeline, each under its own caller span:
    twenty spans, each the child of its own caller and the parent of its own work.
    """
    policy = full_pipeline(hooks, FakeClock(), slots=20)

    async def work(n: int) -> str:
        await asyncio.sleep(0.001 * (n % 3))
        with tracer.start_as_current_span(f"work {n}"):
            pass
        return "ok"

    async def caller(n: int) -> None:
        with tracer.start_as_current_span(f"caller {n}"):
            await policy.call(work, n)

    await asyncio.gather(*(caller(n) for n in range(20)))
    spans = ours(exporter)
    assert len(spans) == 20
    by_id = {span_id(s): s for s in spans}
    for n in range(20):
        [caller_span] = named(exporter, f"caller {n}")
        [work_span] = named(exporter, f"work {n}")
        call = by_id[parent_id(work_span)]  # type: ignore[index]
        assert parent_id(call) == span_id(caller_span)


# -- installing, no SDK, broken SDK, decisions outside a call ------------------------------


async def test_install_traces_every_policy_until_removed(
    hooks: OpenTelemetryHooks, exporter: InMemorySpanExporter
) -> None:
    """
    `install()` traces policies given no hooks; installing twice still makes one span
    per call; the remover stops it.
    """
    remove = hooks.install()
    try:
        assert hooks.install() == remove
        await Retry(3).call(succeed)
        assert global_hooks().count(hooks) == 1
    finally:
        remove()
    await Retry(3).call(succeed)
    assert len(ours(exporter)) == 1
    assert hooks not in global_hooks()


async def test_removing_during_a_call_still_ends_its_span(
    hooks: OpenTelemetryHooks, exporter: InMemorySpanExporter
) -> None:
    """
    Removed while a call is in flight, the hooks still end that call's span and restore
    its task's context, and open no span for a call starting after; passed to a policy
    as ``hooks=``, they still work afterwards.
    """
    release = asyncio.Event()
    entered = asyncio.Event()

    async def wait() -> str:
        entered.set()
        await release.wait()
        return "ok"

    remove = hooks.install()
    before = context.get_current()
    task = asyncio.create_task(Retry(3).call(wait))
    await entered.wait()
    remove()
    assert hooks not in global_hooks()
    await Retry(3).call(succeed)  # starts after the removal: not traced
    release.set()
    await task
    assert context.get_current() is before
    ended = only(exporter)
    assert ended.end_time is not None
    assert "resilient.outcome" not in (ended.attributes or {})  # a plain success
    await Retry(3, hooks=[hooks]).call(succeed)  # given as hooks=, still works after
    assert len(ours(exporter)) == 2


def test_repr_names_the_tracer(hooks: OpenTelemetryHooks) -> None:
    """The repr says which tracer the spans go to."""
    assert repr(hooks).startswith("<OpenTelemetryHooks tracer=<opentelemetry.sdk.trace.Tracer")


async def test_a_call_closed_by_the_gc_still_ends_its_span(
    hooks: OpenTelemetryHooks, exporter: InMemorySpanExporter
) -> None:
    """
    A call coroutine closed outside the context it started in (as the GC closes an
    abandoned one) still ends its span, and leaves the closing context untouched.
    """
    coro = Retry(3, hooks=[hooks]).call(asyncio.sleep, 60)
    started_in = contextvars.copy_context()
    future = started_in.run(coro.send, None)  # suspended in asyncio.sleep, span open
    assert ours(exporter) == []
    before = context.get_current()
    coro.close()  # GeneratorExit, in this context: the span's tokens are not for it
    del future
    assert context.get_current() is before
    assert only(exporter).end_time is not None


async def test_without_an_sdk_the_hooks_do_nothing() -> None:
    """
    With no provider given and no SDK configured globally, calls work, nothing is made
    current inside them, and the context is unchanged after.
    """
    if isinstance(trace.get_tracer_provider(), TracerProvider):
        pytest.skip("a global SDK provider was set by another test")
    before = context.get_current()
    inside: list[bool] = []

    async def look() -> str:
        inside.append(context.get_current() is before)
        return "ok"

    assert await Retry(3, hooks=[OpenTelemetryHooks()]).call(look) == "ok"
    assert inside == [True]
    assert context.get_current() is before


class _BrokenTracerProvider(trace.NoOpTracerProvider):
    """
    A provider whose tracers fail to start spans, as a buggy SDK might.
    """

    def get_tracer(self, *args: Any, **kwargs: Any) -> trace.Tracer:
        class Broken(trace.NoOpTracer):
            def start_span(self, *args: Any, **kwargs: Any) -> trace.Span:
                raise RuntimeError("broken SDK")

        return Broken()


async def test_a_failing_sdk_never_breaks_the_call_or_the_nesting(
    hooks: OpenTelemetryHooks,
    tracer: trace.Tracer,
    exporter: InMemorySpanExporter,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """
    When starting a span fails, the call still answers (the failure is logged), and its
    end event unwinds only its own layer: the span current before it is current after.
    """
    broken = Retry(3, hooks=[OpenTelemetryHooks(_BrokenTracerProvider())])
    before = context.get_current()
    current_after: list[bool] = []

    async def outer_work() -> str:
        with tracer.start_as_current_span("user") as user:
            assert await broken.call(succeed) == "ok"
            current_after.append(trace.get_current_span() is user)
        return "ok"

    assert await retry(hooks).call(outer_work) == "ok"
    assert "broken SDK" in caplog.text
    assert current_after == [True]
    ended = only(exporter)
    assert ended.end_time is not None
    assert "resilient.outcome" not in (ended.attributes or {})  # a plain success
    assert context.get_current() is before


async def test_decisions_outside_a_call_go_to_the_current_span(
    hooks: OpenTelemetryHooks, tracer: trace.Tracer, exporter: InMemorySpanExporter
) -> None:
    """
    A `Timeout` used as ``async with`` has no call span; its timeout becomes an event of
    the span current there.
    """
    with tracer.start_as_current_span("user"), pytest.raises(TimeoutExceeded):
        async with Timeout(0.01, hooks=[hooks]):
            await asyncio.sleep(5)
    [user] = named(exporter, "user")
    assert [e["resilient.timeout"] for e in events(user, "resilient.timed_out")] == [
        pytest.approx(0.01)
    ]


# -- the import contract -------------------------------------------------------------------


def test_missing_extra_names_the_extra_to_install() -> None:
    """Without opentelemetry, importing the module fails with ``pip install 'resilient[otel]'``."""
    result = python(
        "-c",
        "import sys; sys.modules['opentelemetry'] = None\n"
        "try:\n    import resilient.integrations.otel\n"
        "except ImportError as e:\n    print(e)\n",
    )
    assert "pip install 'resilient[otel]'" in result.stdout, result.stderr


def test_importing_the_module_does_not_import_aiohttp() -> None:
    """The module works without aiohttp: it is imported only by the server middleware."""
    result = python(
        "-c", "import sys, resilient.integrations.otel\nprint('aiohttp' in sys.modules)"
    )
    assert result.stdout.strip() == "False", result.stderr


# -- the aiohttp server span ---------------------------------------------------------------


def traced_app(provider: TracerProvider, routes: Sequence[web.RouteDef]) -> web.Application:
    """
    An application with the deadline/trace middleware, then the server span middleware.
    """
    app = web.Application(
        middlewares=[resilience_middleware(), aiohttp_server_span_middleware(provider)]
    )
    app.add_routes(routes)
    return app


async def test_server_span_is_a_child_of_the_caller_and_current_in_the_handler(
    serve: Serve, provider: TracerProvider, tracer: trace.Tracer, exporter: InMemorySpanExporter
) -> None:
    """
    A request makes a SERVER span named by method and route template, child of the
    caller's (remote) span; the handler runs with it current.
    """
    seen: list[int] = []

    async def item(request: web.Request) -> web.Response:
        seen.append(span_id(trace.get_current_span()))
        return web.Response(text=request.match_info["id"])

    root = await serve(traced_app(provider, [web.get("/items/{id}", item)]))
    async with aiohttp.ClientSession(middlewares=[ResilienceMiddleware({}, default=None)]) as s:
        with tracer.start_as_current_span("client", kind=SpanKind.CLIENT) as client:
            async with s.get(root / "items" / "42") as response:
                assert await response.text() == "42"
    [server] = named(exporter, "GET /items/{id}")
    assert server.kind is SpanKind.SERVER
    assert remote_parent_id(server) == span_id(client)
    assert seen == [span_id(server)]
    assert server.attributes is not None
    assert server.attributes["http.route"] == "/items/{id}"
    assert server.attributes["url.path"] == "/items/42"
    assert server.attributes["http.response.status_code"] == 200
    assert server.status.status_code is StatusCode.UNSET


async def test_server_errors_are_errors_and_client_errors_are_not(
    serve: Serve, provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    """
    503 returned, 500 from an exception (recorded) are errors; 404 raised and an
    unmatched path (named by the method alone) are not.
    """

    async def unavailable(_: web.Request) -> web.Response:
        return web.Response(status=503)

    async def broken(_: web.Request) -> web.Response:
        raise RuntimeError("bug")

    async def missing(_: web.Request) -> web.Response:
        raise web.HTTPNotFound

    routes = [web.get("/503", unavailable), web.get("/bug", broken), web.get("/404", missing)]
    root = await serve(traced_app(provider, routes))
    async with aiohttp.ClientSession() as session:
        for path in ("503", "bug", "404", "nowhere"):
            async with session.get(root / path) as response:
                await response.read()
    spans = {s.name: s for s in exporter.get_finished_spans()}
    assert set(spans) == {"GET /503", "GET /bug", "GET /404", "GET"}
    statuses = {
        name: (span.attributes["http.response.status_code"], span.status.status_code)  # type: ignore[index]
        for name, span in spans.items()
    }
    assert statuses == {
        "GET /503": (503, StatusCode.ERROR),
        "GET /bug": (500, StatusCode.ERROR),
        "GET /404": (404, StatusCode.UNSET),
        "GET": (404, StatusCode.UNSET),
    }
    assert [e["exception.type"] for e in events(spans["GET /bug"], "exception")] == ["RuntimeError"]


async def test_server_span_marks_a_passed_deadline(
    serve: Serve, provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    """
    A handler cancelled because the caller's deadline passed (answered 504 by
    `resilience_middleware`) leaves a server span with status ERROR and an event.
    """

    async def slow(_: web.Request) -> web.Response:
        await asyncio.sleep(5)
        return web.Response()

    root = await serve(traced_app(provider, [web.get("/slow", slow)]))
    async with (
        aiohttp.ClientSession() as session,
        session.get(root / "slow", headers={DEADLINE_HEADER: "50"}) as response,
    ):
        assert response.status == 504
    [span] = named(exporter, "GET /slow")
    assert span.status.status_code is StatusCode.ERROR
    assert [e.name for e in span.events] == ["resilient.deadline_exceeded"]


# -- acceptance: client -> A -> B ----------------------------------------------------------


async def test_one_trace_across_two_services_with_retries_and_rejections_visible(
    serve: Serve,
    provider: TracerProvider,
    tracer: trace.Tracer,
    exporter: InMemorySpanExporter,
) -> None:
    """
    client -> A -> B over real sockets, A calling B through `ResilienceMiddleware`
    (Retry, then a breaker opening after 2 consecutive failures) with the hooks
    installed globally. B answers 503, 200, 503, 503.

    Request 1 is one trace: client span -> A's server span -> A's resilient span ->
    B's two server spans (the 503 and the 200), the retry an event. Request 2 is one
    trace too: two 503s open the breaker, the third attempt is rejected; the retries,
    the state change and the rejection are events on A's resilient span.
    """
    script = [503, 200, 503, 503]

    async def b_handler(_: web.Request) -> web.Response:
        return web.Response(status=script.pop(0) if script else 200, text="from B")

    b_root = await serve(traced_app(provider, [web.get("/b", b_handler)]))

    def b_policy(_: str) -> Any:
        return pipeline(
            Retry(3, wait=tenacity.wait_fixed(0.01), name="b"),
            CircuitBreaker(name="b", failure_threshold=2, reset_timeout=60.0),
        )

    to_b = aiohttp.ClientSession(middlewares=[ResilienceMiddleware(b_policy)])

    async def a_handler(_: web.Request) -> web.Response:
        try:
            async with to_b.get(b_root / "b") as response:
                return web.Response(status=response.status, text=await response.text())
        except CircuitOpenError:
            return web.Response(status=503, text="B's circuit is open")

    a_root = await serve(traced_app(provider, [web.get("/a", a_handler)]))
    client = aiohttp.ClientSession(middlewares=[ResilienceMiddleware({}, default=None)])
    remove = OpenTelemetryHooks(provider).install()
    answers = []
    try:
        for n in (1, 2):
            with tracer.start_as_current_span(f"request {n}", kind=SpanKind.CLIENT):
                async with client.get(a_root / "a") as response:
                    answers.append((response.status, await response.text()))
    finally:
        remove()
        await client.close()
        await to_b.close()
    assert answers == [(200, "from B"), (503, "B's circuit is open")]

    first = check_trace(exporter, "request 1", b_statuses=[503, 200])
    assert first.attributes is not None
    assert (first.attributes["resilient.attempts"], first.attributes["resilient.outcome"]) == (
        2,
        "success",
    )
    assert [
        (e["resilient.attempt"], e["error.type"])
        for e in events(first, "resilient.retry_scheduled")
    ] == [(1, "resilient.integrations.aiohttp.UnhealthyResponse")]

    second = check_trace(exporter, "request 2", b_statuses=[503, 503])
    assert second.attributes is not None
    assert (second.attributes["resilient.attempts"], second.attributes["resilient.outcome"]) == (
        3,
        "rejected",
    )
    assert second.status.status_code is StatusCode.ERROR
    assert [e.name for e in second.events if e.name.startswith("resilient.")] == [
        "resilient.retry_scheduled",
        "resilient.state_changed",
        "resilient.retry_scheduled",
        "resilient.rejected",
    ]
    assert events(second, "resilient.rejected")[0]["resilient.rejection.reason"] == "circuit_open"


def check_trace(
    exporter: InMemorySpanExporter, client_name: str, b_statuses: list[int]
) -> ReadableSpan:
    """
    Check the trace of one request from the span called `client_name`; return A's
    resilient span.

    All its spans share one trace id and are exactly: the client span, A's server span
    (remote child of the client), A's resilient span (child of A's server span), and
    B's server spans (remote children of the resilient span), answering `b_statuses`.
    """
    [client] = named(exporter, client_name)
    assert client.context is not None
    trace_id = client.context.trace_id
    spans = [
        s for s in exporter.get_finished_spans() if s.context and s.context.trace_id == trace_id
    ]
    a_server = [s for s in spans if s.name == "GET /a"]
    resilient_spans = [s for s in spans if s.name == "resilient retry b"]
    b_servers = [s for s in spans if s.name == "GET /b"]
    assert len(spans) == 3 + len(b_statuses), [s.name for s in spans]
    assert (len(a_server), len(resilient_spans)) == (1, 1)
    assert client.parent is None
    assert remote_parent_id(a_server[0]) == span_id(client)
    assert parent_id(resilient_spans[0]) == span_id(a_server[0])
    assert [s.attributes["http.response.status_code"] for s in b_servers] == b_statuses  # type: ignore[index]
    for b_server in b_servers:
        assert remote_parent_id(b_server) == span_id(resilient_spans[0])
    expected_a = StatusCode.ERROR if b_statuses[-1] >= 500 else StatusCode.UNSET
    assert a_server[0].status.status_code is expected_a
    return resilient_spans[0]


# -- the benchmark still runs --------------------------------------------------------------


def test_otel_benchmark_quick_run(tmp_path: Path) -> None:
    """`benchmarks.otel --quick` measures every variant and writes its marked section."""
    report = tmp_path / "benchmarks.md"
    report.write_text("# Benchmarks\n\nkept\n")
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks.otel", "--quick", "--md", str(report)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    text = report.read_text()
    assert text.startswith("# Benchmarks\n\nkept\n")
    assert "<!-- otel:begin -->" in text
    assert "<!-- otel:end -->" in text
    assert "OpenTelemetryHooks" in text


def test_error_type_names_the_public_path_of_another_package(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """
    For a class defined in a private module and exported by its package, ``error.type``
    is the package's path (as for resilient's own errors, whose ``__module__`` already
    says ``resilient``); a class its package doesn't export keeps its full path.
    """
    package, private = ModuleType("vendorlib"), ModuleType("vendorlib._impl")
    exported = type("VendorError", (Exception,), {"__module__": "vendorlib._impl"})
    hidden = type("HiddenError", (Exception,), {"__module__": "vendorlib._impl"})
    package.VendorError = exported  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "vendorlib", package)
    monkeypatch.setitem(sys.modules, "vendorlib._impl", private)
    assert error_type(exported("x")) == "vendorlib.VendorError"
    assert error_type(hidden("x")) == "vendorlib._impl.HiddenError"
    assert error_type(CircuitOpenError("db", 1.0)) == "resilient.CircuitOpenError"
    assert error_type(KeyError("k")) == "KeyError"
