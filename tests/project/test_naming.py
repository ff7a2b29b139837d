"""
A policy made without ``name=`` takes the name of the function it decorates, so metrics,
spans, events and logs of different functions don't merge under the kind's name.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client import CollectorRegistry

from resilient import (
    CircuitBreaker,
    CircuitOpenError,
    Fallback,
    Retry,
    RetryScheduled,
    Timeout,
    pipeline,
)
from resilient.integrations.otel import OpenTelemetryHooks
from resilient.integrations.prometheus import ResilienceMetrics
from resilient.testing import capture_events, instant_retries

HERE = __name__


async def get_item() -> str:
    return "item"


async def get_price() -> str:
    return "price"


class Client:
    async def fetch(self) -> str:
        return "fetched"

    async def __call__(self) -> str:
        return "called"


def calls(registry: CollectorRegistry, kind: str, policy: str) -> float | None:
    labels = {"kind": kind, "policy": policy, "outcome": "success"}
    return registry.get_sample_value("resilient_calls_total", labels)


def test_unnamed_policy_takes_the_functions_module_and_qualified_name() -> None:
    """Decorating names an unnamed policy ``module.qualname``, methods included."""
    retry, breaker = Retry(), CircuitBreaker()
    retry(get_item)
    breaker(Client.fetch)
    assert retry.name == f"{HERE}.get_item"
    assert breaker.name == f"{HERE}.Client.fetch"


def test_a_given_name_is_kept() -> None:
    """``name=`` wins: decorating never renames a named policy."""
    retry = Retry(name="inventory")
    retry(get_item)
    assert retry.name == "inventory"


def test_one_policy_on_two_functions_keeps_its_kinds_name() -> None:
    """An unnamed policy decorating two functions shares its state between them, so it
    is named by its kind, for good; the same function twice keeps its name."""
    retry = Retry()
    retry(get_item)
    retry(get_item)
    assert retry.name == f"{HERE}.get_item"
    retry(get_price)
    assert retry.name == "retry"
    retry(get_item)
    assert retry.name == "retry"


def test_pipeline_names_each_unnamed_member() -> None:
    """A decorating pipeline names its unnamed members after the function; named ones
    keep their names."""
    timeout, retry, breaker = Timeout(1.0), Retry(), CircuitBreaker("db")
    pipeline(timeout, retry, breaker)(get_item)
    assert (timeout.name, retry.name, breaker.name) == (
        f"{HERE}.get_item",
        f"{HERE}.get_item",
        "db",
    )


async def test_call_does_not_rename() -> None:
    """`.call(fn)` runs fn through the policy under the policy's own name."""
    retry = Retry()
    await retry.call(get_item)
    assert retry.name == "retry"


async def test_events_and_errors_name_the_function() -> None:
    """Decision events and a breaker's CircuitOpenError carry the function's name."""
    breaker = CircuitBreaker(failure_threshold=1)
    retry = Retry(2)
    attempts: list[int] = []

    @retry
    async def flaky() -> str:
        attempts.append(1)
        if len(attempts) == 1:
            raise ConnectionError("once")
        return "ok"

    @breaker
    async def down() -> str:
        raise ConnectionError("down")

    with instant_retries(), capture_events(RetryScheduled) as events:
        assert await flaky() == "ok"
    assert [e.name for e in events] == [f"{HERE}.{flaky.__qualname__}"]
    with pytest.raises(ConnectionError):
        await down()
    with pytest.raises(CircuitOpenError) as info:
        await down()
    assert info.value.name == f"{HERE}.{down.__qualname__}"


async def test_prometheus_series_per_function() -> None:
    """Through the real Prometheus integration: two unnamed policies on two functions
    count under each function's name, and nothing under ``retry``; a policy heard
    before it decorated (its listener bound to ``retry``) is heard under the new name."""
    registry = CollectorRegistry()
    metrics = ResilienceMetrics(registry)
    first, second = Retry(hooks=[metrics]), Retry(hooks=[metrics])
    await first.call(get_item)  # builds the plan: the listener binds "retry"
    assert calls(registry, "retry", "retry") == 1
    item, price = first(get_item), second(get_price)
    await item()
    await price()
    await price()
    assert calls(registry, "retry", f"{HERE}.get_item") == 1
    assert calls(registry, "retry", f"{HERE}.get_price") == 2
    assert calls(registry, "retry", "retry") == 1  # only the call made before decorating


@pytest.fixture
def spans() -> Iterator[tuple[OpenTelemetryHooks, InMemorySpanExporter]]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    # name_attribute=True: a plain success carries the name as an attribute too.
    yield OpenTelemetryHooks(tracer_provider=provider, name_attribute=True), exporter
    provider.shutdown()


async def test_otel_spans_per_function(
    spans: tuple[OpenTelemetryHooks, InMemorySpanExporter],
) -> None:
    """Through the real OpenTelemetry integration: each function's span is named after
    it and (with ``name_attribute=True``) carries its name as ``resilient.policy.name``."""
    hooks, exporter = spans
    item = Fallback(value="none", hooks=[hooks])(get_item)
    price = Fallback(value="none", hooks=[hooks])(get_price)
    await item()
    await price()
    finished = [
        (s.name, (s.attributes or {}).get("resilient.policy.name"))
        for s in exporter.get_finished_spans()
    ]
    assert finished == [
        (f"resilient fallback {HERE}.get_item", f"{HERE}.get_item"),
        (f"resilient fallback {HERE}.get_price", f"{HERE}.get_price"),
    ]


async def test_callables_without_a_qualified_name_leave_the_name_alone() -> None:
    """A callable object has no ``__qualname__``: the policy keeps its kind's name; a
    function without a module is named by its qualified name alone."""
    retry = Retry()
    guarded = retry(Client())
    assert retry.name == "retry"
    assert await guarded() == "called"

    async def orphan() -> str:
        return "x"

    orphan.__module__ = None  # type: ignore[assignment]  # as for functions made by exec
    breaker = CircuitBreaker()
    breaker(orphan)
    assert breaker.name == orphan.__qualname__
