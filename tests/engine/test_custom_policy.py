"""
The extension points of docs/extending.md, written as a user would.

A user's policy is a first-class policy: it composes in a pipeline, its calls and
decisions reach hooks, call listeners, metrics and traces, it is named after the function
it decorates, and the built-in policies treat its refusals as rejections. A user's
`Balancer` steers an `EndpointPool`, and a `Registry` written from scratch (not derived
from a shipped one) feeds a `ServiceView`.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client import CollectorRegistry

from resilient import (
    Balancer,
    CallFailed,
    CallStarted,
    CallSucceeded,
    Clock,
    EndpointPool,
    Event,
    Hook,
    Instance,
    Policy,
    Registry,
    RegistryStatus,
    Rejected,
    RejectedError,
    RejectionReason,
    Retry,
    ServiceView,
    Timeout,
    add_hook,
    pipeline,
)
from resilient.integrations.otel import OpenTelemetryHooks
from resilient.integrations.prometheus import ResilienceMetrics
from resilient.testing import FakeClock
from resilient.validation import check_int
from tests._aio import until, within

T = TypeVar("T")


class GateClosedError(RejectedError):
    """The gate is closed: the call was not made."""


@dataclass(frozen=True, slots=True)
class GateStatistics:
    calls: int
    refused: int


class Gate(Policy):
    """Lets calls through while open; refuses them while closed, up to `max_refusals`."""

    kind = "gate"

    def __init__(
        self,
        *,
        max_refusals: int = 1_000,
        name: str | None = None,
        clock: Clock | None = None,
        hooks: Iterable[Hook] | None = None,
    ) -> None:
        super().__init__(name=name, clock=clock, hooks=hooks)
        self.max_refusals = check_int("Gate", "max_refusals", max_refusals, minimum=1)
        self.open = True
        self._calls = self._refused = 0

    async def _run(
        self, fn: Callable[..., Awaitable[T]], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> T:
        self._calls += 1
        if not self.open and self._refused < self.max_refusals:
            self._refused += 1
            if self._listening(Rejected):
                self._emit(Rejected, reason=RejectionReason.THROTTLED)
            raise GateClosedError(f"gate {self.name!r} is closed")
        await self.clock.sleep(0.25)  # time through the injected clock only
        return await fn(*args, **kwargs)

    def statistics(self) -> GateStatistics:
        return GateStatistics(calls=self._calls, refused=self._refused)


async def answer() -> str:
    return "ok"


def test_bad_parameters_fail_at_construction_naming_them() -> None:
    """`resilient.validation` gives a user's policy the built-in policies' errors."""
    with pytest.raises(ValueError, match=r"Gate\(max_refusals=0\): max_refusals must be >= 1"):
        Gate(max_refusals=0)
    with pytest.raises(TypeError, match=r"Gate\(name=...\): expected a string"):
        Gate(name=3)  # type: ignore[arg-type]


async def test_composes_in_a_pipeline_and_its_hooks_hear_calls_and_decisions() -> None:
    """In a pipeline under Timeout and Retry, the gate's hook hears its call events and
    its rejection; Retry does not retry the rejection, and Timeout's deadline covers
    the time the gate spends on the injected clock."""
    heard: list[Event] = []
    clock = FakeClock()
    gate = Gate(name="orders", clock=clock, hooks=[heard.append])
    policy = pipeline(Timeout(1.0, clock=clock), Retry(attempts=3, clock=clock), gate)

    assert await policy.call(answer) == "ok"
    gate.open = False
    with pytest.raises(GateClosedError, match="'orders' is closed"):
        await policy.call(answer)

    kinds = [type(event) for event in heard]
    assert kinds == [CallStarted, CallSucceeded, CallStarted, Rejected, CallFailed]
    assert {(event.kind, event.name) for event in heard} == {("gate", "orders")}
    rejected = heard[3]
    assert isinstance(rejected, Rejected)
    assert rejected.reason is RejectionReason.THROTTLED
    assert gate.statistics() == GateStatistics(calls=2, refused=1)  # one attempt, no retry
    assert clock.monotonic() == 0.25  # the gate slept on the fake clock, instantly


async def test_a_slow_gate_is_cut_by_the_enclosing_timeout() -> None:
    """The gate's sleep is an ordinary await: an enclosing Timeout cancels it."""
    clock = FakeClock()
    with pytest.raises(TimeoutError):
        await pipeline(Timeout(0.1, clock=clock), Gate(clock=clock)).call(answer)


async def test_decorating_names_it_after_the_function() -> None:
    """An unnamed user policy takes the decorated function's name, as built-ins do."""
    gate = Gate(clock=FakeClock())

    @gate
    async def lookup() -> str:
        return "found"

    assert await lookup() == "found"
    assert gate.name.endswith("lookup")


async def test_without_a_repr_of_its_own_it_shows_its_class_and_name() -> None:
    """A user's policy that defines no `__repr__` reads like a built-in one, alone and in
    a pipeline's repr, and follows the name decorating gives it."""
    gate = Gate(name="orders", clock=FakeClock())
    assert repr(gate) == "<Gate 'orders'>"
    assert repr(pipeline(Retry(attempts=2, name="r"), gate)).endswith(", <Gate 'orders'>)")
    unnamed = Gate(clock=FakeClock())
    assert repr(unnamed) == "<Gate 'gate'>"

    @unnamed
    async def lookup() -> str:
        return "found"

    assert repr(unnamed) == f"<Gate {unnamed.name!r}>"
    assert unnamed.name.endswith("lookup")


async def test_global_hooks_call_listeners_metrics_and_traces_see_it() -> None:
    """Installed process-wide, Prometheus counts the gate's calls and rejections under
    kind "gate" and OpenTelemetry traces its calls, like any built-in policy's."""
    registry = CollectorRegistry()
    metrics = ResilienceMetrics(registry)
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing = OpenTelemetryHooks(tracer_provider=provider)
    seen: list[Event] = []
    removers = [metrics.install(), tracing.install(), add_hook(seen.append)]
    try:
        gate = Gate(name="billing", clock=FakeClock())
        await gate.call(answer)
        gate.open = False
        with pytest.raises(GateClosedError):
            await gate.call(answer)
    finally:
        for remove in removers:
            remove()
        provider.shutdown()

    def sample(name: str, **labels: str) -> float | None:
        return registry.get_sample_value(name, {"kind": "gate", "policy": "billing", **labels})

    assert sample("resilient_calls_total", outcome="success") == 1
    assert sample("resilient_calls_total", outcome="rejected") == 1
    assert sample("resilient_rejections_total", reason="throttled") == 1
    spans = [span.name for span in exporter.get_finished_spans()]
    assert spans == ["resilient gate billing", "resilient gate billing"]
    assert [type(event) for event in seen if event.kind == "gate"].count(Rejected) == 1


async def test_cancellation_passes_through_and_is_reported() -> None:
    """A call cancelled inside the user's policy is cancelled for the caller, and the
    policy's hook hears a cancellation, not a failure."""
    heard: list[Event] = []
    clock = FakeClock(auto_advance=False)
    gate = Gate(clock=clock, hooks=[heard.append])
    task = asyncio.ensure_future(gate.call(answer))
    await until(lambda: clock.pending_timers == 1)  # asleep in the gate, on the fake clock
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await within(task)
    assert [type(event).__name__ for event in heard] == ["CallStarted", "CallCancelled"]


def instance(name: str) -> Instance:
    return Instance(service="orders", id=name, host="127.0.0.1", port=8000)


class LeastLoadedThenById:
    """A user's balancer: the least loaded instance, ties to the smallest id."""

    def pick(
        self, candidates: Sequence[Instance], in_flight: Callable[[Instance], int]
    ) -> Instance:
        return min(candidates, key=lambda i: (in_flight(i), i.id))


async def test_a_user_balancer_steers_the_pool_and_its_failover() -> None:
    """EndpointPool accepts a user's Balancer and asks it among the candidates left:
    the first pick, then (after that instance failed) the next among the others."""
    balancer = LeastLoadedThenById()
    assert isinstance(balancer, Balancer)
    pool = EndpointPool([instance("c"), instance("a"), instance("b")], balancer=balancer)
    tried: list[str] = []

    async def call(chosen: Instance) -> str:
        tried.append(chosen.id)
        if chosen.id == "a":
            raise ConnectionError("refused")
        return chosen.id

    assert await pool.call(call) == "b"
    assert tried == ["a", "b"]


class DictRegistry:
    """A user's registry from scratch: a dict, and a condition to watch it by."""

    def __init__(self) -> None:
        self._instances: dict[str, Instance] = {}
        self._changed = asyncio.Condition()
        self._version = 0

    async def register(self, instance: Instance) -> None:
        async with self._changed:
            self._instances[instance.id] = instance
            self._version += 1
            self._changed.notify_all()

    async def deregister(self, instance: Instance) -> None:
        async with self._changed:
            if self._instances.pop(instance.id, None) is not None:
                self._version += 1
                self._changed.notify_all()

    async def instances(self, service: str) -> list[Instance]:
        found = [i for i in self._instances.values() if i.service == service]
        return sorted(found, key=lambda i: i.id)

    async def watch(self, service: str) -> AsyncIterator[list[Instance]]:
        seen = self._version
        yield await self.instances(service)
        while True:
            async with self._changed:
                await self._changed.wait_for(functools.partial(self._changed_since, seen))
                seen = self._version
            yield await self.instances(service)

    def _changed_since(self, version: int) -> bool:
        return self._version != version

    def status(self) -> RegistryStatus:
        return RegistryStatus(connected=True)

    async def close(self) -> None:
        pass


async def test_a_user_registry_feeds_a_service_view() -> None:
    """ServiceView follows a Registry written from scratch: the first snapshot, then
    every change its watch reports."""
    registry = DictRegistry()
    assert isinstance(registry, Registry)
    await registry.register(instance("a"))
    async with ServiceView(registry, "orders") as view:
        assert [i.id for i in view.instances] == ["a"]
        await registry.register(instance("b"))
        await within(view.wait_for(lambda found: [i.id for i in found] == ["a", "b"]))
        await registry.deregister(instance("a"))
        await within(view.wait_for(lambda found: [i.id for i in found] == ["b"]))
        assert view.status().connected
