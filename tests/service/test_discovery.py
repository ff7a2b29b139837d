"""
Tests for the discovery core: `Instance`, the static and in-memory registries, and
`ServiceView` serving the last known instances while its registry is unreachable.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncGenerator
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from resilient import (
    HealthMonitor,
    HealthStatus,
    InMemoryRegistry,
    Instance,
    Registry,
    RegistryStatus,
    ServiceView,
    StaticRegistry,
    discovery_check,
)
from resilient.integrations.prometheus import track_discovery
from resilient.testing import FakeClock
from tests._aio import promptly

A = Instance("svc", "svc-1", "127.0.0.1", 9001, metadata={"zone": "a"})
B = Instance("svc", "svc-2", "::1", 9002, scheme="https")


def test_instance_url_and_frozen_metadata() -> None:
    """An instance builds its URL (IPv6 bracketed) and its metadata is read-only."""
    assert A.url == "http://127.0.0.1:9001"
    assert B.url == "https://[::1]:9002"
    with pytest.raises(TypeError):
        A.metadata["zone"] = "b"  # type: ignore[index]


@pytest.mark.parametrize(
    ("fields", "named"),
    [
        ({"service": ""}, "service"),
        ({"id": ""}, "id"),
        ({"host": ""}, "host"),
        ({"port": 0}, "port"),
        ({"port": 70000}, "port"),
        ({"port": True}, "port"),
        ({"scheme": "ftp"}, "scheme"),
    ],
)
def test_instance_rejects_bad_fields(fields: dict[str, Any], named: str) -> None:
    """A bad field is a ValueError naming it."""
    values: dict[str, Any] = {"service": "s", "id": "i", "host": "h", "port": 80, **fields}
    with pytest.raises(ValueError, match=named):
        Instance(**values)


@pytest.mark.parametrize("make", [InMemoryRegistry, StaticRegistry])
async def test_registry_register_list_deregister(make: type[Registry]) -> None:
    """Registries list instances by id, ignore a repeated register and absent deregister."""
    registry = make()
    assert isinstance(registry, Registry)
    await registry.register(B)
    await registry.register(A)
    await registry.register(A)
    assert await registry.instances("svc") == [A, B]
    await registry.deregister(A)
    await registry.deregister(A)
    assert await registry.instances("svc") == [B]
    assert await registry.instances("other") == []
    assert registry.status() == RegistryStatus(connected=True)
    await registry.close()


def test_static_registry_starts_with_its_instances() -> None:
    """A static registry serves the instances it was given."""
    registry = StaticRegistry([B, A])
    assert asyncio.run(registry.instances("svc")) == [A, B]


async def test_watch_yields_snapshots_on_change() -> None:
    """A watch yields the current snapshot, then a fresh one after each change."""
    registry = InMemoryRegistry()
    await registry.register(A)
    watch = registry.watch("svc")
    assert await anext(watch) == [A]
    await registry.register(B)
    assert await anext(watch) == [A, B]
    await registry.deregister(A)
    assert await anext(watch) == [B]
    await watch.aclose()


async def test_register_rejects_non_instances() -> None:
    """Registering something other than an Instance is a TypeError."""
    with pytest.raises(TypeError, match="Instance"):
        await InMemoryRegistry().register("svc-1")  # type: ignore[arg-type]


class FlakyRegistry(InMemoryRegistry):
    """An in-memory registry whose watches can be made to fail, like a lost backend."""

    def __init__(self) -> None:
        super().__init__()
        self.down = False
        self.broken = asyncio.Event()

    async def watch(self, service: str) -> AsyncGenerator[list[Instance], None]:
        if self.down:
            raise ConnectionError("secret://user:password@registry is down")
        async for snapshot in super().watch(service):
            if self.down:
                raise ConnectionError("secret://user:password@registry is down")
            yield snapshot

    def status(self) -> RegistryStatus:
        return RegistryStatus(connected=not self.down)


async def test_view_keeps_last_instances_while_registry_is_down(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """When the watch fails the view keeps serving the last instances, says it is stale,
    never logs the error's message, and heals when the registry is back."""
    clock = FakeClock(start=100.0)
    registry = FlakyRegistry()
    await registry.register(A)
    view = ServiceView(registry, "svc", retry_delay=0.5, clock=clock)
    await view.start()
    assert view.instances == [A]
    assert view.status().connected
    registry.down = True
    with caplog.at_level(logging.WARNING, logger="resilient.discovery"):
        await registry.register(B)  # wakes the watch, which now fails
        for _ in range(20):
            await asyncio.sleep(0)
    status = view.status()
    assert not status.connected
    assert status.detail == "watch failed: ConnectionError"
    assert status.stale_since == 100.0  # when the outage began, not the last retry
    assert view.instances == [A]  # the last known view, not nothing
    assert "password" not in caplog.text
    assert "ConnectionError" in caplog.text
    registry.down = False
    healed = await view.wait_for(lambda xs: xs == [A, B])
    assert healed == [A, B]
    assert view.status().connected
    assert clock.sleeps  # backoff slept on the injected clock, not in real time
    await view.stop()


class ScriptedRegistry(InMemoryRegistry):
    """
    A registry whose watches follow a script, one step per watch: ``"fail"`` fails at
    once, ``"serve"`` yields the current instances and then fails. Once the script is
    used up a watch waits forever and `idle` is set: the view has nothing left to do.
    """

    def __init__(self, *script: str) -> None:
        super().__init__()
        self.script = list(script)
        self.idle = asyncio.Event()

    async def watch(self, service: str) -> AsyncGenerator[list[Instance], None]:
        if not self.script:
            self.idle.set()
            await asyncio.Event().wait()
        if self.script.pop(0) == "serve":
            yield await self.instances(service)
        raise ConnectionError("registry down")


async def follow(registry: ScriptedRegistry, clock: FakeClock) -> ServiceView:
    """
    Run a view (retry_delay 0.5 s) through the registry's whole script; return it stopped.
    """
    view = await ServiceView(registry, "svc", retry_delay=0.5, clock=clock).start()
    try:
        await promptly(registry.idle.wait())
    finally:
        await view.stop()
    return view


async def test_view_backoff_doubles_up_to_ten_seconds() -> None:
    """While the registry stays down, restarts wait 0.5, 1, 2, 4, 8 s, then 10 s each."""
    clock = FakeClock()
    await follow(ScriptedRegistry(*["fail"] * 8), clock)
    assert clock.sleeps == [0.5, 1.0, 2.0, 4.0, 8.0, 10.0, 10.0, 10.0]


async def test_view_backoff_starts_over_after_a_recovery() -> None:
    """A watch that delivers a snapshot resets the backoff: the next outage waits 0.5 s first."""
    clock = FakeClock()
    await follow(ScriptedRegistry("fail", "fail", "fail", "serve", "fail", "fail"), clock)
    assert clock.sleeps == [0.5, 1.0, 2.0, 0.5, 1.0, 2.0]


async def test_stale_since_is_when_the_outage_began() -> None:
    """Through a 275.5 s outage stale_since stays at its start (failed restarts don't move
    it), so the exported stale seconds grow with the outage; a recovery starts it over."""
    clock = FakeClock(start=100.0)
    registry = ScriptedRegistry("serve", *["fail"] * 30)
    await registry.register(A)
    metrics = CollectorRegistry()
    view = await follow(registry, clock)
    track_discovery(view, registry=metrics)
    assert sum(clock.sleeps) == 275.5
    assert clock.monotonic() == 375.5
    assert view.status().stale_since == 100.0
    stale = metrics.get_sample_value("resilient_discovery_stale_seconds", {"service": "svc"})
    assert stale == 275.5
    assert view.instances == [A]

    clock = FakeClock(start=100.0)
    view = await follow(ScriptedRegistry("fail", "fail", "serve", "fail", "fail"), clock)
    assert clock.sleeps == [0.5, 1.0, 0.5, 1.0, 2.0]
    assert view.status().stale_since == 101.5  # the second outage's start


async def test_a_view_that_never_connected_is_stale_from_its_first_failure() -> None:
    """With the registry down from the start, stale_since is the first failure's time."""
    clock = FakeClock(start=100.0)
    view = await follow(ScriptedRegistry("fail", "fail", "fail"), clock)
    assert not view.status().connected
    assert view.status().stale_since == 100.0
    assert clock.monotonic() == 103.5


class FailingStream:
    """
    A watch like an HTTP stream: fails when read, and stays open until closed.
    """

    def __init__(self, closed: list[FailingStream]) -> None:
        self.closed = closed

    def __aiter__(self) -> FailingStream:
        return self

    async def __anext__(self) -> list[Instance]:
        raise ConnectionError("stream reset")

    async def aclose(self) -> None:
        self.closed.append(self)


async def test_view_closes_each_failed_watch_at_once() -> None:
    """A failed watch is closed (its stream released) before the view retries, not left
    for the garbage collector."""
    clock = FakeClock(auto_advance=False)
    closed: list[FailingStream] = []
    streams: list[FailingStream] = []

    class StreamingRegistry(InMemoryRegistry):
        def watch(self, service: str) -> FailingStream:  # type: ignore[override]
            streams.append(FailingStream(closed))
            return streams[-1]

    view = await ServiceView(StreamingRegistry(), "svc", clock=clock).start()
    assert (streams, closed) == ([streams[0]], [streams[0]])
    await view.stop()


async def test_view_stop_leaves_no_task() -> None:
    """Stopping a view ends its watch task; the instances stay readable."""
    registry = InMemoryRegistry()
    await registry.register(A)
    async with ServiceView(registry, "svc") as view:
        assert view.instances == [A]
    assert view.instances == [A]
    await asyncio.sleep(0)
    assert asyncio.all_tasks() == {asyncio.current_task()}


def test_view_rejects_bad_retry_delay() -> None:
    """retry_delay must be a positive number of seconds."""
    with pytest.raises(ValueError, match="retry_delay"):
        ServiceView(InMemoryRegistry(), "svc", retry_delay=0)


@pytest.mark.parametrize(
    ("registry", "service", "message"),
    [
        (
            {"svc": [A]},
            "svc",
            r"ServiceView\(registry=\.\.\.\): expected a Registry \(register,.*got \{",
        ),
        (InMemoryRegistry(), 3, r"ServiceView\(service=\.\.\.\): expected a service name, got 3"),
        (InMemoryRegistry(), "", r"ServiceView\(service=\.\.\.\): expected a service name, got ''"),
    ],
    ids=["not-a-registry", "service-not-a-string", "service-empty"],
)
def test_view_rejects_what_is_not_a_registry_or_a_name(
    registry: object, service: object, message: str
) -> None:
    """
    Something that is not a `Registry`, or a service that is not a name, fails at
    construction: it used to make a view that waited for its first snapshot and then
    reported "watch failed: AttributeError" for ever.
    """
    with pytest.raises(TypeError, match=message):
        ServiceView(registry, service)  # type: ignore[arg-type]


async def test_fake_clock_sleep_cancelled_leaves_no_timer() -> None:
    """A cancelled manual-mode sleep withdraws its timer."""
    clock = FakeClock(auto_advance=False)
    task = asyncio.create_task(clock.sleep(5))
    await asyncio.sleep(0)
    assert clock.pending_timers == 1
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert clock.pending_timers == 0


async def test_discovery_check_degrades_health_while_stale() -> None:
    """discovery_check fails (as a non-critical check: DEGRADED) while the view is stale."""
    clock = FakeClock()
    registry = FlakyRegistry()
    await registry.register(A)
    view = await ServiceView(registry, "svc", clock=clock).start()
    monitor = HealthMonitor(clock=clock)
    monitor.add_check("discovery", discovery_check(view), critical=False)
    assert (await monitor.check_now()).status is HealthStatus.HEALTHY
    registry.down = True
    await registry.register(B)
    for _ in range(20):
        await asyncio.sleep(0)
    report = await monitor.check_now()
    assert report.status is HealthStatus.DEGRADED
    assert report.checks["discovery"].detail == "watch failed: ConnectionError"
    await view.stop()


async def test_prometheus_exports_discovery_state() -> None:
    """track_discovery exports connected, stale seconds and instance count per service."""
    clock = FakeClock(start=50.0, auto_advance=False)
    registry = FlakyRegistry()
    await registry.register(A)
    view = await ServiceView(registry, "svc", clock=clock).start()
    metrics = CollectorRegistry()
    track_discovery(view, registry=metrics)
    assert metrics.get_sample_value("resilient_discovery_connected", {"service": "svc"}) == 1.0
    assert metrics.get_sample_value("resilient_discovery_instances", {"service": "svc"}) == 1.0
    registry.down = True
    await registry.register(B)
    for _ in range(20):
        await asyncio.sleep(0)
    clock.advance(7.0)
    assert metrics.get_sample_value("resilient_discovery_connected", {"service": "svc"}) == 0.0
    stale = metrics.get_sample_value("resilient_discovery_stale_seconds", {"service": "svc"})
    assert stale == 7.0
    await view.stop()


class EagerlyFailingRegistry(InMemoryRegistry):
    """A registry whose watch() raises when called (it opens its stream eagerly)."""

    def __init__(self) -> None:
        super().__init__()
        self.failures = 1

    def watch(self, service: str) -> AsyncGenerator[list[Instance], None]:
        if self.failures:
            self.failures -= 1
            raise ConnectionError("registry unreachable")
        return super().watch(service)


async def test_view_survives_a_watch_that_fails_when_called() -> None:
    """A watch() raising on call is retried like one failing while iterated."""
    clock = FakeClock()
    registry = EagerlyFailingRegistry()
    await registry.register(A)
    view = await ServiceView(registry, "svc", clock=clock).start()
    healed = await view.wait_for(lambda xs: xs == [A])
    assert healed == [A]
    assert view.status().connected
    await view.stop()


def test_view_can_be_restarted_under_another_loop() -> None:
    """A view stopped in one asyncio.run can be started again in the next one."""
    registry = InMemoryRegistry()
    view = ServiceView(registry, "svc")

    async def once(instance: Instance) -> list[Instance]:
        await registry.register(instance)
        await view.start()
        seen = await view.wait_for(lambda xs: instance in xs)
        await view.stop()
        return seen

    assert asyncio.run(once(A)) == [A]
    assert asyncio.run(once(B)) == [A, B]


async def test_discovery_collector_refuses_a_second_registration() -> None:
    """Two discovery collectors on one registry are refused, not exported twice;
    adding a view twice exports it once."""
    registry = InMemoryRegistry()
    await registry.register(A)
    view = await ServiceView(registry, "svc").start()
    metrics = CollectorRegistry()
    collector = track_discovery(view, view, registry=metrics)
    collector.add(view)
    with pytest.raises(ValueError, match="Duplicated timeseries"):
        track_discovery(view, registry=metrics)
    families = [f for f in metrics.collect() if f.name == "resilient_discovery_connected"]
    assert len(families) == 1
    assert len(families[0].samples) == 1
    await view.stop()
