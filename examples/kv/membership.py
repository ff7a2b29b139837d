"""
Membership through etcd: ``--discovery etcd://host:port[/prefix/][?ttl=seconds]``.

Each node registers itself as an instance of service ``kv`` under a lease
(`EtcdRegistry`: keepalive every ttl/3, the key gone within `ttl` of the process
dying) and follows the service through a `ServiceView` (which restarts a failed watch
and keeps the last members while etcd is unreachable). Every change of the member set
rebuilds the ring: a node SIGKILLed leaves every view when its lease expires, a new
node joins as soon as it registers.

Unlike Dynamo, where a down node keeps its place until an operator removes it, the ring
here follows etcd's liveness; no data moves on a change (no ownership transfer yet):
keys written while a node was out reach it by hinted handoff (while it is a member
again) or read repair.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

from resilient import Instance, ServiceView
from resilient.integrations.etcd import EtcdRegistry

from .config import Discovery

__all__ = ["SERVICE", "EtcdMembership"]

SERVICE = "kv"


class EtcdMembership:
    """
    Register this node in etcd and report every change of the member set.

    Args:
        discovery: Where etcd is, the key prefix and the lease TTL.
        node_id: This node's id.
        address: This node's ``host:port``.
        on_change: Called with id -> ``host:port`` of every member (this one included).
    """

    def __init__(
        self,
        discovery: Discovery,
        node_id: str,
        address: str,
        on_change: Callable[[dict[str, str]], None],
    ) -> None:
        host, _, port = address.rpartition(":")
        self._instance = Instance(SERVICE, node_id, host, int(port))
        self._registry = EtcdRegistry(
            discovery.endpoint, prefix=discovery.prefix, ttl=discovery.ttl
        )
        self._view = ServiceView(self._registry, SERVICE)
        self._on_change = on_change
        self._members: dict[str, str] = {node_id: address}
        self._task: asyncio.Task[None] | None = None

    async def start(self, within: float = 10.0) -> None:
        """
        Register, then wait until this node sees itself in the member set.

        Raises:
            TimeoutError: etcd did not show this node within `within` seconds.
            resilient.integrations.etcd.EtcdError: etcd refused or is unreachable.
        """
        await self._registry.register(self._instance)
        await self._view.start(wait=within)
        instances = await self._view.wait_for(
            lambda found: any(i.id == self._instance.id for i in found), within=within
        )
        self._apply(instances)
        self._task = asyncio.get_running_loop().create_task(self._follow())

    async def _follow(self) -> None:
        while True:
            current = dict(self._members)

            def changed(found: list[Instance], now: dict[str, str] = current) -> bool:
                return _members(found, self._instance) != now

            with contextlib.suppress(TimeoutError):
                self._apply(await self._view.wait_for(changed, within=3600.0))

    def _apply(self, instances: list[Instance]) -> None:
        members = _members(instances, self._instance)
        if members != self._members:
            self._members = members
            self._on_change(dict(members))

    async def close(self) -> None:
        """
        Stop following and revoke the lease: this node leaves every view at once.
        """
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self._view.stop()
        await self._registry.close()


def _members(instances: list[Instance], me: Instance) -> dict[str, str]:
    # This node always counts itself in: a stale or empty view must not drop it.
    found = {i.id: f"{i.host}:{i.port}" for i in instances}
    found[me.id] = f"{me.host}:{me.port}"
    return dict(sorted(found.items()))
