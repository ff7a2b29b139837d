"""
Service discovery on etcd: `EtcdRegistry`, a `resilient.Registry` backed by etcd v3.

    from resilient import Instance, ServiceView
    from resilient.integrations.etcd import EtcdRegistry

    registry = EtcdRegistry("http://127.0.0.1:2379", ttl=10.0)
    await registry.register(Instance("inventory", "inventory-1", "10.0.0.5", 8080))
    async with ServiceView(registry, "inventory") as view:
        ...  # view.instances follows every change
    await registry.close()  # revokes the leases: the instance is gone at once

Layout: one key per instance, ``<prefix><service>/<id>``, holding the instance as JSON
(``service``, ``id``, ``host``, ``port``, ``scheme``, ``metadata``) and attached to a
lease of its own. A background task refreshes the lease every ``ttl / 3`` seconds. If the
process dies, the keepalives stop and etcd deletes the key when the lease expires (at most
`ttl` seconds later); `close()` and `deregister()` revoke the lease, which deletes the key
at once. When a keepalive finds the lease gone (it expired during a pause, or etcd came
back with an empty data directory) the instance registers again under a new lease; after
an outage it puts its key again under its lease, so the key is there whatever etcd lost.

Watches read the prefix (a snapshot at revision R), open ``/v3/watch`` from R + 1, yield
that snapshot once etcd confirmed the watch, then a fresh snapshot after every batch of
events. A start revision lost to compaction resynchronises (read again, watch again).
Liveness: every call, the watch's opening included, answers within `request_timeout`;
a watch quiet for `watch_probe_interval` seconds is checked with a read (keys only). A
read that fails, or one that shows changes the stream then does not deliver within
`request_timeout`, ends the watch with `EtcdUnavailableError`: a frozen etcd or a silent
stream turns a `ServiceView` stale within ``watch_probe_interval + request_timeout``, and
the view keeps the last instances and restarts the watch with backoff.

Why etcd's JSON gateway over aiohttp rather than a client library: the gateway ships in
every etcd server (``/v3`` from 3.4 on) and needs nothing beyond aiohttp, which this extra
already brings. The gRPC clients pull in grpcio and generated protobuf code: python-etcd3
fails to import with protobuf >= 4 ("Descriptors cannot be created directly",
kragniz/python-etcd3#1957; still so in #2709, 2024); its asyncio fork aetcd is still
pre-1.0; etcd3gw speaks the same gateway but synchronously (requests). Discovery needs
six calls and one stream, each a few lines of JSON here.

Errors: `EtcdUnavailableError` (also a `ConnectionError`) when etcd does not answer,
`EtcdResponseError` when it answers with an error; both are `EtcdError`, a
`resilient.ResilienceError`. Bad arguments raise `ValueError` (`TypeError` for a wrong
type) naming the parameter; a closed registry raises `RuntimeError`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections.abc import AsyncGenerator, Iterable
from dataclasses import dataclass

import aiohttp

from resilient import Instance, RegistryStatus
from resilient.validation import check_seconds

from ._etcd_gateway import EtcdGateway, WatchStream
from ._etcd_wire import (
    GRPC_NOT_FOUND,
    EtcdError,
    EtcdResponseError,
    EtcdUnavailableError,
    KeyValue,
    check_endpoint,
    decode_instance,
    encode_instance,
)
from ._public import publish

__all__ = [
    "EtcdError",
    "EtcdRegistry",
    "EtcdResponseError",
    "EtcdUnavailableError",
]

_log = logging.getLogger("resilient.discovery.etcd")
_OWNER = "EtcdRegistry"


@dataclass(slots=True)
class _Registration:
    """
    One instance this registry keeps alive: its lease and its keepalive task.
    """

    instance: Instance
    lease: int = 0
    ttl: int = 0
    task: asyncio.Task[None] | None = None


class EtcdRegistry:
    """
    A `resilient.Registry` on etcd v3: leases, keepalive and watches over the JSON gateway.

    Args:
        endpoint: etcd's client URL, ``http://host:2379`` (or ``https://``).
        prefix: Key prefix for all services; must end with ``/``.
        ttl: Lease time-to-live in seconds (whole seconds, rounded up; etcd grants at
            least its minimum, 2 s by default). A dead process disappears within it.
        session: An aiohttp session to use (left open by `close`); None creates one.
        request_timeout: Seconds each call to etcd may take, opening a watch included.
        watch_probe_interval: Seconds a watch may stay quiet before it is checked
            against a fresh read. A frozen etcd or a silent watch stream is noticed
            within ``watch_probe_interval + request_timeout``.

    Raises:
        ValueError: A parameter is malformed (the message names it).
    """

    def __init__(
        self,
        endpoint: str = "http://127.0.0.1:2379",
        *,
        prefix: str = "/resilient/services/",
        ttl: float = 10.0,
        session: aiohttp.ClientSession | None = None,
        request_timeout: float = 5.0,
        watch_probe_interval: float = 30.0,
    ) -> None:
        if not isinstance(prefix, str) or not prefix.endswith("/"):
            raise ValueError(f"EtcdRegistry(prefix={prefix!r}): must be a string ending in '/'")
        self.endpoint = check_endpoint(_OWNER, endpoint)
        self.prefix = prefix
        self.ttl = check_seconds(_OWNER, "ttl", ttl)
        if self.ttl < 1:
            # etcd leases count whole seconds (and the server raises them to its minimum).
            raise ValueError(f"EtcdRegistry(ttl={ttl!r}): ttl must be >= 1 second")
        self._probe = check_seconds(_OWNER, "watch_probe_interval", watch_probe_interval)
        timeout = check_seconds(_OWNER, "request_timeout", request_timeout)
        self._timeout = timeout
        self._gateway = EtcdGateway(self.endpoint, session=session, request_timeout=timeout)
        self._registrations: dict[str, _Registration] = {}
        self._lock = asyncio.Lock()
        self._closed = False
        self._reported: set[tuple[str, int]] = set()

    def __repr__(self) -> str:
        state = "connected" if self.status().connected else "disconnected"
        return (
            f"<EtcdRegistry {self.endpoint} prefix={self.prefix!r} ttl={self.ttl:g}s"
            f" {len(self._registrations)} registered, {state}>"
        )

    def _key(self, instance: Instance) -> str:
        return f"{self._service_prefix(instance.service)}{instance.id}"

    def _service_prefix(self, service: str) -> str:
        if not isinstance(service, str) or not service or "/" in service:
            raise ValueError(f"service={service!r}: must be a non-empty name without '/'")
        return f"{self.prefix}{service}/"

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("EtcdRegistry is closed")

    def status(self) -> RegistryStatus:
        """
        Whether the last call to etcd (a read, a write, a keepalive, a watch) got through.
        """
        return self._gateway.status()

    async def register(self, instance: Instance) -> None:
        """
        Register `instance` under a lease of its own and keep the lease alive.

        Registering it again updates the stored instance (host, port, metadata) under
        the same lease.

        Raises:
            TypeError: `instance` is not an `Instance`.
            ValueError: Its service name contains ``/``.
            EtcdError: etcd could not be reached or refused; nothing stays registered.
        """
        if not isinstance(instance, Instance):
            raise TypeError(f"register(instance=...): expected an Instance, got {instance!r}")
        key = self._key(instance)
        self._check_open()
        async with self._lock:
            registration = self._registrations.get(key)
            if registration is not None:
                registration.instance = instance
                try:
                    await self._put(registration)
                except EtcdResponseError as error:
                    if error.code != GRPC_NOT_FOUND:
                        raise
                    await self._attach(registration)  # the lease lapsed before a keepalive saw it
                return
            registration = _Registration(instance)
            await self._attach(registration)
            loop = asyncio.get_running_loop()
            registration.task = loop.create_task(self._keep_alive(registration))
            self._registrations[key] = registration

    async def deregister(self, instance: Instance) -> None:
        """
        Remove `instance` at once; a no-op when it is not registered.

        Its lease is revoked if this registry holds it; otherwise (another process
        registered it) its key is deleted.

        Raises:
            EtcdError: etcd could not be reached; a lease of ours then still expires
                within `ttl`, since its keepalive has stopped.
        """
        key = self._key(instance)
        self._check_open()
        async with self._lock:
            registration = self._registrations.pop(key, None)
        if registration is None:
            await self._gateway.delete(key)
            return
        await _stop(registration)
        await self._gateway.revoke(registration.lease)

    async def instances(self, service: str) -> list[Instance]:
        """
        Return the service's instances, sorted by id; malformed entries are skipped.

        Raises:
            EtcdError: etcd could not be reached or refused.
        """
        prefix = self._service_prefix(service)
        self._check_open()
        _, kvs = await self._gateway.range_prefix(prefix)
        return self._snapshot(service, kvs)

    async def watch(self, service: str) -> AsyncGenerator[list[Instance], None]:
        """
        Yield the service's instances now and after every change (sorted by id).

        Each snapshot comes from a watch etcd confirmed: a consumer may take one as
        proof that the instances are being followed.

        Raises:
            EtcdUnavailableError: etcd became unreachable, the stream broke, or it fell
                silent while etcd changed.
            EtcdResponseError: etcd refused the watch.
        """
        prefix = self._service_prefix(service)
        while True:
            self._check_open()
            revision, kvs = await self._gateway.range_prefix(prefix)
            state = {kv.key: kv for kv in kvs}
            async with (
                self._gateway.watch(prefix, start_revision=revision + 1) as stream,
                contextlib.aclosing(self._follow(service, prefix, stream, state)) as snapshots,
            ):
                # The read's snapshot only now: a view reports connected on each one,
                # and before the watch is confirmed nothing would keep it current.
                yield self._snapshot(service, state.values())
                # A snapshot after each batch of events; when they end, resynchronise.
                async for snapshot in snapshots:
                    yield snapshot

    async def _follow(
        self, service: str, prefix: str, stream: WatchStream, state: dict[str, KeyValue]
    ) -> AsyncGenerator[list[Instance], None]:
        while True:
            batch = await stream.next(idle=self._probe)
            if batch is None:
                # Quiet for a whole probe interval: a read tells a quiet prefix from a
                # frozen etcd or a stream gone silent, all within one request_timeout.
                deadline = asyncio.get_running_loop().time() + self._timeout
                if await self._in_step(prefix, state):
                    continue
                # etcd has changes the stream has not delivered. They may be on their
                # way (the read raced them): the stream gets what is left of the time.
                left = deadline - asyncio.get_running_loop().time()
                batch = await stream.next(idle=max(left, 0.0))
                if batch is None:
                    _log.warning("etcd watch on %r fell silent while etcd changed", prefix)
                    raise EtcdUnavailableError(
                        f"etcd watch stream silent for {self._probe + self._timeout:g}s"
                        " while the store changed"
                    )
            if batch.canceled:
                if not batch.compact_revision:
                    reason = batch.cancel_reason or "no reason given"
                    raise EtcdResponseError(0, f"etcd cancelled the watch: {reason}")
                # Compacted past our revision: read afresh and watch from there.
                _log.info("etcd watch on %r compacted at %d", prefix, batch.compact_revision)
                return
            for is_delete, kv in batch.events:
                if is_delete:
                    state.pop(kv.key, None)
                else:
                    state[kv.key] = kv
            if batch.events:
                yield self._snapshot(service, state.values())

    async def _in_step(self, prefix: str, state: dict[str, KeyValue]) -> bool:
        """
        Whether a fresh read of `prefix` holds the keys and revisions `state` holds.
        """
        _, kvs = await self._gateway.range_prefix(prefix, keys_only=True)
        return {kv.key: kv.mod_revision for kv in kvs} == {
            key: kv.mod_revision for key, kv in state.items()
        }

    def _snapshot(self, service: str, kvs: Iterable[KeyValue]) -> list[Instance]:
        found: list[Instance] = []
        for kv in kvs:
            try:
                instance = decode_instance(kv.value)
                if instance.service != service or self._key(instance) != kv.key:
                    raise ValueError(f"its key does not match {instance!r}")  # noqa: TRY301
            except (ValueError, TypeError, KeyError) as error:
                # Log each bad value once, not on every snapshot that still holds it.
                if (kv.key, kv.mod_revision) not in self._reported:
                    self._reported.add((kv.key, kv.mod_revision))
                    _log.warning("ignoring malformed instance at %r: %r", kv.key, error)
                continue
            found.append(instance)
        return sorted(found, key=lambda instance: instance.id)

    async def _attach(self, registration: _Registration) -> None:
        """
        Grant a new lease and put the instance's key under it.
        """
        lease, ttl = await self._gateway.grant(math.ceil(self.ttl))
        registration.lease, registration.ttl = lease, ttl
        try:
            await self._put(registration)
        except EtcdError:
            # Best effort: a lease left behind holds no key and expires within its TTL.
            with contextlib.suppress(EtcdError):
                await self._gateway.revoke(lease)
            raise

    async def _put(self, registration: _Registration) -> None:
        key = self._key(registration.instance)
        value = encode_instance(registration.instance)
        await self._gateway.put(key, value, lease=registration.lease)

    async def _keep_alive(self, registration: _Registration) -> None:
        outage = False
        while True:
            interval = registration.ttl / 3
            await asyncio.sleep(interval)
            try:
                lease = registration.lease
                alive = await self._gateway.keepalive(lease, within=interval) > 0
                if not alive or outage:
                    await self._repair(registration, lease, lost=not alive)
                outage = False
            except EtcdError as error:
                if not outage:
                    _log.warning("keepalive of %r failed: %s", registration.instance, error)
                outage = True
            except Exception:  # noqa: BLE001  # logged with its traceback just below
                # An answer we could not read must not end the keepalive for good: the
                # instance would silently expire. Log it and try again next round.
                _log.exception("keepalive of %r failed", registration.instance)
                outage = True

    async def _repair(self, registration: _Registration, lease: int, *, lost: bool) -> None:
        """
        After a lost lease (or an outage), register the instance again.

        Under the registry's lock, and only if nothing changed meanwhile: a register()
        or deregister() in flight may already have moved the key to a new lease (or
        removed it), and writing the old registration back would orphan it.
        """
        async with self._lock:
            current = self._registrations.get(self._key(registration.instance))
            if current is not registration or registration.lease != lease:
                return
            if lost:
                _log.warning("lease of %r is gone; registering again", registration.instance)
                await self._attach(registration)
            else:
                # etcd is back and the lease survived: put the key again in case the
                # key (not the lease) was lost or deleted meanwhile.
                await self._put(registration)

    async def close(self) -> None:
        """
        Deregister this registry's instances at once, stop its tasks, close its session.

        Every lease it holds is revoked, so the instances disappear at once; a session
        passed in is left open. Revocation errors are logged, not raised: those leases
        expire within `ttl` anyway.
        """
        if self._closed:
            return
        self._closed = True
        async with self._lock:  # let a register() in flight finish, then undo it too
            registrations = list(self._registrations.values())
            self._registrations.clear()
        # Every keepalive is cancelled before anything is awaited: the registry can't be
        # closed twice, so a close() cancelled midway must leave none refreshing a lease.
        for registration in registrations:
            if registration.task is not None:
                registration.task.cancel()
        await asyncio.gather(*(_stop(registration) for registration in registrations))
        await asyncio.gather(*(self._revoke_quietly(r.lease) for r in registrations))
        await self._gateway.close()

    async def _revoke_quietly(self, lease: int) -> None:
        try:
            await self._gateway.revoke(lease)
        except EtcdError as error:
            _log.warning("could not revoke lease %d (it expires on its own): %s", lease, error)


async def _stop(registration: _Registration) -> None:
    if registration.task is not None:
        registration.task.cancel()
        # wait() rather than `await task`: a CancelledError aimed at our caller must
        # propagate, not be mistaken for the task's own and swallowed.
        await asyncio.wait([registration.task])


publish(globals())  # public names show this path, not their private modules
