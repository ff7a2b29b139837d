"""
Service discovery: where the instances of a service are, kept current.

A `Registry` holds instances by service name: `register`, `deregister`, `instances`, and
`watch`, an async iterator of full snapshots (the current one first, then one per
change). Backends:

- `StaticRegistry`: a fixed list, for configuration files and tests.
- `InMemoryRegistry`: the embedded default; register and watch within one process.
- `resilient.integrations.etcd.EtcdRegistry`: leases, keepalive and watches on etcd.

`ServiceView` keeps a local, always-readable copy of one service's instances from a
watch; when the registry becomes unreachable it keeps the last known instances and says
so in `status()` (serve stale rather than nothing).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Protocol, runtime_checkable

from .._engine.clock import Clock
from .._engine.validate import check_clock, check_seconds

__all__ = [
    "InMemoryRegistry",
    "Instance",
    "Registry",
    "RegistryStatus",
    "ServiceView",
    "StaticRegistry",
]

_log = logging.getLogger("resilient.discovery")
_MAX_PORT = 65535


def _frozen(metadata: Mapping[str, str] | None) -> Mapping[str, str]:
    return MappingProxyType(dict(metadata or {}))


@dataclass(frozen=True, slots=True)
class Instance:
    """
    One reachable instance of a service.

    Attributes:
        service: The service name, e.g. ``"inventory"``.
        id: Unique among the service's instances, e.g. ``"inventory-1"``.
        host: Host name or address.
        port: TCP port.
        scheme: ``"http"`` or ``"https"``.
        metadata: Free-form string labels (zone, version, ...), read-only.
    """

    service: str
    id: str
    host: str
    port: int
    scheme: str = "http"
    metadata: Mapping[str, str] = field(default_factory=lambda: _frozen(None), compare=False)

    def __post_init__(self) -> None:
        for name in ("service", "id", "host"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value:
                raise ValueError(f"Instance({name}={value!r}): must be a non-empty string")
        if (
            isinstance(self.port, bool)
            or not isinstance(self.port, int)
            or not 0 < self.port <= _MAX_PORT
        ):
            raise ValueError(f"Instance(port={self.port!r}): must be an int in 1..65535")
        if self.scheme not in {"http", "https"}:
            raise ValueError(f"Instance(scheme={self.scheme!r}): must be 'http' or 'https'")
        object.__setattr__(self, "metadata", _frozen(self.metadata))

    @property
    def url(self) -> str:
        """
        The instance's base URL, e.g. ``http://10.0.0.5:8080``.
        """
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}"


@dataclass(frozen=True, slots=True)
class RegistryStatus:
    """
    Whether a registry (or a view of it) is in touch with its source of truth.

    Attributes:
        connected: True while reads and watches reach the backend.
        detail: Why not, when not connected (never a secret or a traceback).
        stale_since: Monotonic time the view stopped being refreshed, or None.
    """

    connected: bool
    detail: str = ""
    stale_since: float | None = None


@runtime_checkable
class Registry(Protocol):
    """
    Where instances register and where callers find them.
    """

    async def register(self, instance: Instance) -> None:
        """
        Add (or refresh) `instance`; idempotent.
        """

    async def deregister(self, instance: Instance) -> None:
        """
        Remove `instance`; a no-op when it is not registered.
        """

    async def instances(self, service: str) -> list[Instance]:
        """
        Return the service's instances now, sorted by id.
        """

    def watch(self, service: str) -> AsyncIterator[list[Instance]]:
        """
        Yield the service's instances (sorted by id) now and after every change.
        """

    def status(self) -> RegistryStatus:
        """
        Return whether the registry is in touch with its backend.
        """

    async def close(self) -> None:
        """
        Release connections and background tasks.

        A backend with leases deregisters the instances it registered.
        """


class StaticRegistry:
    """
    A fixed set of instances; `register`/`deregister` change it in memory only.
    """

    def __init__(self, instances: Iterable[Instance] = ()) -> None:
        self._memory = InMemoryRegistry()
        for instance in instances:
            self._memory._put(instance)  # noqa: SLF001  # same module family

    async def register(self, instance: Instance) -> None:
        """
        Add `instance`.
        """
        await self._memory.register(instance)

    async def deregister(self, instance: Instance) -> None:
        """
        Remove `instance`.
        """
        await self._memory.deregister(instance)

    async def instances(self, service: str) -> list[Instance]:
        """
        Return the service's instances.
        """
        return await self._memory.instances(service)

    def watch(self, service: str) -> AsyncIterator[list[Instance]]:
        """
        Yield the instances now and after every change.
        """
        return self._memory.watch(service)

    def status(self) -> RegistryStatus:
        """
        Always connected.
        """
        return RegistryStatus(connected=True)

    async def close(self) -> None:
        """
        Nothing to release.
        """


class InMemoryRegistry:
    """
    The embedded registry: instances and watches within one process.
    """

    def __init__(self) -> None:
        self._services: dict[str, dict[str, Instance]] = {}
        self._watchers: dict[str, set[asyncio.Queue[list[Instance]]]] = {}

    def _snapshot(self, service: str) -> list[Instance]:
        return sorted(self._services.get(service, {}).values(), key=lambda i: i.id)

    def _put(self, instance: Instance) -> bool:
        current = self._services.setdefault(instance.service, {})
        before = current.get(instance.id)
        current[instance.id] = instance
        return before != instance or before.metadata != instance.metadata

    def _publish(self, service: str) -> None:
        snapshot = self._snapshot(service)
        for queue in self._watchers.get(service, ()):
            # Only the newest snapshot matters: drop one a slow watcher hasn't read yet.
            if queue.full():
                queue.get_nowait()
            queue.put_nowait(snapshot)

    async def register(self, instance: Instance) -> None:
        """
        Add (or refresh) `instance` and notify watchers of a change.
        """
        if not isinstance(instance, Instance):
            raise TypeError(f"register(instance=...): expected an Instance, got {instance!r}")
        if self._put(instance):
            self._publish(instance.service)

    async def deregister(self, instance: Instance) -> None:
        """
        Remove `instance` and notify watchers; a no-op when absent.
        """
        current = self._services.get(instance.service, {})
        if current.pop(instance.id, None) is not None:
            self._publish(instance.service)

    async def instances(self, service: str) -> list[Instance]:
        """
        Return the service's instances, sorted by id.
        """
        return self._snapshot(service)

    async def watch(self, service: str) -> AsyncGenerator[list[Instance], None]:
        """
        Yield the instances now and after every change, until the consumer stops.
        """
        queue: asyncio.Queue[list[Instance]] = asyncio.Queue(maxsize=1)
        self._watchers.setdefault(service, set()).add(queue)
        try:
            yield self._snapshot(service)
            while True:
                yield await queue.get()
        finally:
            self._watchers[service].discard(queue)

    def status(self) -> RegistryStatus:
        """
        Always connected: the registry is this process.
        """
        return RegistryStatus(connected=True)

    async def close(self) -> None:
        """
        Forget every instance.
        """
        self._services.clear()


class ServiceView:
    """
    A local copy of one service's instances, kept current by a registry watch.

    Use ``async with ServiceView(registry, "inventory") as view:`` and read
    `view.instances` at any time. If the watch fails (the registry is unreachable), the
    last known instances stay and `status()` says the view is stale; the watch is
    restarted with backoff until it recovers.

    Args:
        registry: Any `Registry`.
        service: The service to follow.
        retry_delay: Seconds between attempts to restart a failed watch (doubling up to
            10 s).
        clock: Time source for the backoff and `stale_since` (default: system clock).

    Raises:
        ValueError: `retry_delay` is not a positive number of seconds.
        TypeError: `registry` is not a `Registry`, or `service` not a non-empty string.
    """

    def __init__(
        self,
        registry: Registry,
        service: str,
        *,
        retry_delay: float = 0.5,
        clock: Clock | None = None,
    ) -> None:
        # Checked here: a wrong registry would otherwise surface only as a view that
        # never connects ("watch failed: AttributeError"), after `start` waited for it.
        if not isinstance(registry, Registry):
            raise TypeError(
                "ServiceView(registry=...): expected a Registry (register, deregister,"
                f" instances, watch, status, close), got {registry!r}"
            )
        if not isinstance(service, str) or not service:
            raise TypeError(f"ServiceView(service=...): expected a service name, got {service!r}")
        self.registry = registry
        self.service = service
        self.instances: list[Instance] = []
        self._retry_delay = check_seconds("ServiceView", "retry_delay", retry_delay)
        self._clock = check_clock("ServiceView", clock)
        self._task: asyncio.Task[None] | None = None
        self._ready = asyncio.Event()
        self._status = RegistryStatus(connected=False, detail="not started")
        self._changed = asyncio.Condition()

    async def start(self, *, wait: float | None = 5.0) -> ServiceView:
        """
        Start following the service; wait up to `wait` seconds for the first snapshot.
        """
        if self._task is None:
            # Fresh primitives per start: asyncio's bind to the loop that first waits on
            # them, and a view may be started again under another loop (asyncio.run).
            self._ready = asyncio.Event()
            self._changed = asyncio.Condition()
            self._status = RegistryStatus(connected=False, detail="starting")
            self._task = asyncio.get_running_loop().create_task(self._follow())
        if wait is not None:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait):
                    await self._ready.wait()
        return self

    async def stop(self) -> None:
        """
        Stop following; the last instances stay readable.
        """
        if self._task is not None:
            task, self._task = self._task, None
            task.cancel()
            # wait(), not `await task`: a cancellation aimed at our caller must still
            # reach it, and the task's own CancelledError must not.
            await asyncio.wait([task])

    async def __aenter__(self) -> ServiceView:
        return await self.start()

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    @property
    def clock(self) -> Clock:
        """
        The clock `status().stale_since` is measured on.
        """
        return self._clock

    def status(self) -> RegistryStatus:
        """
        Whether the view is current, or serving the last known instances.
        """
        return self._status

    async def wait_for(
        self, predicate: Callable[[list[Instance]], bool], *, within: float = 5.0
    ) -> list[Instance]:
        """
        Wait until `predicate(instances)` holds; return the instances then.

        Raises:
            TimeoutError: It did not hold within `within` seconds.
        """
        async with asyncio.timeout(within), self._changed:
            await self._changed.wait_for(lambda: predicate(self.instances))
            return list(self.instances)

    async def _follow(self) -> None:
        delay = self._retry_delay
        while True:
            watch: AsyncIterator[list[Instance]] | None = None
            try:
                # Inside the try: a registry may open its stream eagerly and fail here.
                watch = self.registry.watch(self.service)
                async for snapshot in watch:
                    delay = self._retry_delay
                    self._status = RegistryStatus(connected=True)
                    await self._update(snapshot)
                raise ConnectionError("watch ended")  # noqa: TRY301  # handled just below
            except asyncio.CancelledError:
                raise
            except Exception as error:  # noqa: BLE001  # any backend failure: keep the last view
                self._mark_stale(error)
            finally:
                # Close the watch now (its HTTP stream, say), not when it is collected.
                close = getattr(watch, "aclose", None) if watch is not None else None
                if close is not None:
                    with contextlib.suppress(Exception):
                        await close()
            await self._clock.sleep(delay)
            delay = min(delay * 2, 10.0)

    def _mark_stale(self, error: Exception) -> None:
        since = self._status.stale_since
        if self._status.connected or since is None:
            since = self._clock.monotonic()
        self._status = RegistryStatus(
            connected=False, detail=f"watch failed: {type(error).__name__}", stale_since=since
        )
        # The type only: a message may carry a registry URL with credentials.
        _log.warning(
            "discovery watch for %r failed (%s); keeping %d known instances",
            self.service,
            type(error).__name__,
            len(self.instances),
        )
        self._ready.set()

    async def _update(self, snapshot: list[Instance]) -> None:
        async with self._changed:
            self.instances = snapshot
            self._changed.notify_all()
        self._ready.set()
