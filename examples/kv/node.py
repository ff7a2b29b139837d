"""
One node's parts, assembled from its configuration.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter

from resilient import CircuitState, Hook
from resilient.integrations.otel import OpenTelemetryHooks
from resilient.integrations.prometheus import ResilienceMetrics

from .config import NodeConfig
from .coordinator import Coordinator
from .gcpauses import GcPauses
from .hints import GONE, HandoffLoop, Hints
from .hlc import HybridClock
from .looplag import LoopLag
from .membership import EtcdMembership
from .peers import Peers
from .ring import Ring
from .storage import Record, Storage
from .tracing import configure_tracing

__all__ = ["KeyCount", "Node", "peer_status"]

_PURGE_EVERY = 3600.0
_log = logging.getLogger(__name__)


def peer_status(breaker_state: str | None) -> str:
    """
    A member's status in ``GET /cluster`` from this node's breaker for it.

    No breaker (this node itself, or ``--plain-peers``) and a closed breaker read "up"; a
    half-open one (probing) "suspect"; an open one "down".
    """
    if breaker_state in (None, CircuitState.CLOSED.value):
        return "up"
    return "suspect" if breaker_state == CircuitState.HALF_OPEN.value else "down"


def _restored_clock(node: str, storage: Storage) -> HybridClock:
    # The ceiling file covers every version this node stamped, those it sent only to
    # other replicas included. Without it (a data directory from before the file
    # existed, or one whose file was lost), its own newest stored write: a full scan
    # (about a second per million keys), so only then.
    mark = storage.path.with_name("clock")
    missing = not mark.exists()
    clock = HybridClock(node, mark=mark)
    newest = storage.newest_stamped_by(node) if missing else None
    if newest is not None:
        clock.advance(newest)
    return clock


class KeyCount:
    """
    ``keys_stored`` of ``/cluster``: a full count, in a worker thread, one at a time.

    ``SELECT count(*)`` scans the table (about 0.2 s per million keys). On the event
    loop it stalled every request for that long, and ``/cluster`` is open to anyone:
    a few requests a second took a node down. Here it runs in a thread (SQLite
    releases the GIL) and never twice at once: callers that arrive while a count
    runs share the next one, so each gets a count begun after it asked (exact, as
    tests comparing counts before and after a request need) and a flood of requests
    costs at most one thread scanning.

    Args:
        count: Counts the keys; called in a worker thread.
    """

    def __init__(self, count: Callable[[], int]) -> None:
        self._count = count
        self.value = 0
        self._started = 0  # counts begun so far
        self._finished = 0  # the last count whose value is in `value`
        self._running: asyncio.Task[None] | None = None

    async def get(self) -> int:
        """
        The number of keys stored, from a count begun after this call.
        """
        wanted = self._started + 1
        while self._finished < wanted:
            if self._running is None:
                self._started += 1
                self._running = asyncio.get_running_loop().create_task(self._run(self._started))
            await asyncio.shield(self._running)  # a caller gone doesn't stop the count
        return self.value

    async def _run(self, number: int) -> None:
        try:
            self.value = await asyncio.to_thread(self._count)
            self._finished = number
        finally:
            self._running = None


class Node:
    """
    Storage, clock, ring, peers and coordinator of one member, and its metrics.

    Args:
        config: The validated configuration.
    """

    def __init__(self, config: NodeConfig) -> None:
        self.config = config
        self.id = config.node_id
        self.registry = CollectorRegistry()
        self.metrics = ResilienceMetrics(self.registry)
        self.requests = Counter(
            "kv_requests", "Client requests by operation and status",
            ["op", "status"], registry=self.registry,
        )  # fmt: skip
        self._counted: dict[tuple[str, str], Callable[[], None]] = {}
        self.tracing = configure_tracing(config.node_id, config.traces_exporter)
        hooks: list[Hook] = [self.metrics]
        if self.tracing is not None:
            hooks.append(OpenTelemetryHooks(tracer_provider=self.tracing.provider))
        self.storage = Storage(config.data_dir)
        self.clock = _restored_clock(config.node_id, self.storage)
        self.members = dict(config.peers)
        self.ring = Ring(self.members)
        self.peers = Peers(
            {}, config.cluster_token, hooks=hooks, tracing=self.tracing, plain=config.plain_peers
        )
        self._follow_peers()
        self.hints = Hints(config.data_dir)
        self.coordinator = Coordinator(
            config.node_id, self.ring, self.storage, self.peers, self.clock,
            replicas=config.replicas, hints=self.hints,
        )  # fmt: skip
        self.handoff = HandoffLoop(self.hints, self._hand_off)
        self.keys_stored = KeyCount(self.storage.count_apart)
        self.ready = False
        self.gc_pauses = GcPauses()
        self.loop_lag = LoopLag(self.registry)
        self.membership: EtcdMembership | None = None
        self._background: list[asyncio.Task[None]] = []

    def count(self, op: str, status: str) -> None:
        """
        Count one client request in ``kv_requests_total{op,status}``.
        """
        # labels() takes a lock and builds a key on every call; this runs per request.
        increment = self._counted.get((op, status))
        if increment is None:
            increment = self._counted[op, status] = self.requests.labels(op, status).inc
        increment()

    def _follow_peers(self) -> None:
        self.peers.update({n: a for n, a in self.members.items() if n != self.id})
        if not self.peers.plain:  # the baseline's policies are never called
            self.metrics.track(*self.peers.policies.values())  # already tracked: no-op

    def set_members(self, members: dict[str, str]) -> None:
        """
        Follow a change of the member set: a new ring, new peers.
        """
        self.members = members
        self.ring = self.coordinator.ring = Ring(members)
        self._follow_peers()

    async def start(self) -> None:
        """
        Join the cluster: with etcd discovery, register and learn the members.
        """
        self.gc_pauses.install()
        loop = asyncio.get_running_loop()
        self._background = [
            loop.create_task(self._purge_tombstones()),
            loop.create_task(self.handoff.run()),
            loop.create_task(self.loop_lag.run()),
        ]
        discovery = self.config.discovery
        if discovery is not None:
            address = f"{self.config.host}:{self.config.port}"
            self.membership = EtcdMembership(discovery, self.id, address, self.set_members)
            await self.membership.start()

    async def _purge_tombstones(self) -> None:
        # At start, then hourly: tombstones older than the grace period (storage.py).
        while True:
            try:
                await self.storage.purge_tombstones()
            except sqlite3.Error:
                _log.exception("tombstone purge failed; trying again in an hour")
            await asyncio.sleep(_PURGE_EVERY)

    async def _hand_off(self, node: str, records: list[Record]) -> object:
        if node not in self.peers.addresses:
            return GONE  # not a member any more (etcd): nothing to deliver to
        return await self.peers.send_batch(node, [(record, None) for record in records], 2.0)

    def cluster_view(self) -> dict[str, object]:
        """
        The ``GET /cluster`` document: members, their status as seen here, ring shares.

        ``keys_stored`` is `keys_stored`'s last count: await ``keys_stored.get()`` first.
        """
        shares = self.ring.ownership()
        members = []
        for node, address in sorted(self.members.items()):
            # This node, and every peer with --plain-peers, has no breaker: seen as up.
            mine = node == self.id or self.peers.plain
            breaker = None if mine else self.peers.breakers.get(node)
            state = None if breaker is None else breaker.state.value
            status = peer_status(state)
            members.append({
                "id": node, "address": address, "status": status, "breaker": state,
                "ownership": round(shares.get(node, 0.0), 6),
            })  # fmt: skip
        return {
            "node": self.id, "replicas": self.config.replicas,
            "resilient_peers": not self.peers.plain,
            "write_quorum": self.config.write_quorum, "read_quorum": self.config.read_quorum,
            "members": members, "keys_stored": self.keys_stored.value,
            "hedges": self.coordinator.hedges,
            "hedges_refused": self.coordinator.hedge_budget.statistics().rejected,
            "repairs": self.coordinator.repairs,
            "replicating": self.coordinator.replicating,
            "batching": self.peers.batching(), "storage": self._storage_view(),
            "gc": self.gc_pauses.view(), "loop": self.loop_lag.view(),
            "hints": self.hints.count(), "hints_written": self.hints.written,
            "hints_dropped": self.hints.dropped + self.handoff.dropped,
            "handed_off": self.handoff.delivered,
        }  # fmt: skip

    def _storage_view(self) -> dict[str, float]:
        storage, checkpointer = self.storage, self.storage.checkpointer
        return {
            "commits": storage.commits, "writes": storage.writes,
            "slowest_commit_ms": round(storage.slowest_commit * 1000, 2),
            "slow_commits": storage.slow_commits,
            "checkpoints": checkpointer.checkpoints, "wal_pages": checkpointer.wal_pages,
            "slowest_checkpoint_ms": round(checkpointer.slowest * 1000, 2),
        }  # fmt: skip

    async def close(self) -> None:
        """
        Finish background work, close the peers' session, flush and close storage.
        """
        self.ready = False
        self.gc_pauses.uninstall()
        for task in self._background:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self.membership is not None:
            await self.membership.close()
        await self.coordinator.close()
        await self.peers.close()
        self.storage.close()
        self.hints.close()
        if self.tracing is not None:
            self.tracing.shutdown()
