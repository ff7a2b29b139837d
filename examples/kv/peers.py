"""
Node-to-node traffic: one aiohttp session, every call through `ResilienceMiddleware`.

Each peer gets its own policy, keyed by its origin:

    Retry(2 attempts, RetryBudget 10%) -> CircuitBreaker -> Bulkhead -> Timeout (per attempt)

so a dead peer opens its own breaker (later calls to it fail at once with
`CircuitOpenError` and are skipped, not waited on), a slow one fills only its own
bulkhead, each attempt is bounded by `attempt_timeout` and by what is left of the
caller's deadline (the middleware sends that on as ``X-Request-Timeout-Ms``), and
retries stay a small fraction of the traffic.

Writes to a peer are coalesced by a `_Sender`: records submitted while up to
`max_in_flight` batches are on the wire wait and leave together in the next batch (one
``POST /internal/replicate``, binary-encoded), each record acknowledged on its own.
"""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Iterable
from urllib.parse import quote

import aiohttp
from yarl import URL

from resilient import (
    Bulkhead,
    CircuitBreaker,
    CircuitState,
    Hook,
    Policy,
    Retry,
    RetryBudget,
    Timeout,
    deadline,
    no_retries,
    pipeline,
)
from resilient.integrations.aiohttp import ResilienceMiddleware

from .codec import decode_acks, encode_records
from .hlc import Version
from .storage import Record

__all__ = ["PeerError", "Peers"]

_MAX_BATCH_BYTES = 4 << 20  # a batch stops growing here; the rest goes in the next one
_TOMBSTONE_HEADER = "X-KV-Tombstone"
VERSION_HEADER = "X-KV-Version"


class PeerError(Exception):
    """
    A peer answered, but not with what the protocol expects.
    """


class Peers:
    """
    The other members, reached through one resilient session.

    Args:
        addresses: Member id -> ``host:port`` (may include this node; never called).
        token: The cluster token sent as ``Authorization: Bearer``.
        attempt_timeout: Seconds one attempt may take (capped by the caller's deadline).
        max_in_flight: Replication batches on the wire to one peer at once.
        hooks: Event hooks for every peer policy (metrics).
    """

    def __init__(
        self,
        addresses: dict[str, str],
        token: str,
        *,
        attempt_timeout: float = 1.0,
        max_in_flight: int = 4,
        hooks: Iterable[Hook] = (),
    ) -> None:
        self._hooks = tuple(hooks)
        self._attempt_timeout = attempt_timeout
        self._max_in_flight = max_in_flight
        self._token = token
        self.addresses: dict[str, str] = {}
        self.policies: dict[str, Policy] = {}
        self.breakers: dict[str, CircuitBreaker] = {}
        self._by_origin: dict[str, Policy] = {}
        self._senders: dict[str, _Sender] = {}
        self._session: aiohttp.ClientSession | None = None
        self.update(addresses)

    def update(self, addresses: dict[str, str]) -> None:
        """
        Follow a membership change; known peers keep their policies.
        """
        for node, address in addresses.items():
            if self.addresses.get(node) == address:
                continue
            self.addresses[node] = address
            policy = self.policies[node] = self._policy(node)
            self._by_origin[f"http://{address}"] = policy
            self._senders[node] = _Sender(self, node, self._max_in_flight)

    def _policy(self, node: str) -> Policy:
        name = f"peer-{node}"
        breaker = CircuitBreaker(
            name=name, failure_threshold=5, reset_timeout=2.0, hooks=self._hooks
        )
        self.breakers[node] = breaker
        return pipeline(
            Retry(attempts=2, budget=RetryBudget(0.1), name=name, hooks=self._hooks),
            breaker,
            Bulkhead(128, max_queue=512, name=name, hooks=self._hooks),
            Timeout(self._attempt_timeout, name=name, hooks=self._hooks),
        )

    @property
    def session(self) -> aiohttp.ClientSession:
        """
        The one session for all node-to-node calls (created on first use).
        """
        if self._session is None:
            middleware = ResilienceMiddleware(
                self._by_origin,
                retry_methods={"GET", "POST"},  # replication is idempotent
            )
            self._session = aiohttp.ClientSession(
                middlewares=[middleware],
                connector=aiohttp.TCPConnector(limit=0, limit_per_host=256),
                headers={"Authorization": f"Bearer {self._token}"},
                timeout=aiohttp.ClientTimeout(total=None),  # the policies bound each call
            )
        return self._session

    def is_open(self, node: str) -> bool:
        """
        Whether `node`'s breaker rejects calls right now.
        """
        breaker = self.breakers.get(node)
        return breaker is not None and breaker.state is CircuitState.OPEN

    def replicate(self, node: str, record: Record, until: float) -> asyncio.Future[bool]:
        """
        Queue `record` for `node`; the future says whether it replaced the peer's state.

        Args:
            node: The peer.
            record: What to store.
            until: The caller's deadline, on the loop's clock.
        """
        return self._senders[node].submit(record, until)

    async def send_batch(self, node: str, records: list[Record], budget: float) -> list[bool]:
        """
        Store `records` on `node` in one request within `budget` seconds.

        Raises:
            PeerError: The peer answered something unexpected.
            resilient.ResilienceError, aiohttp.ClientError: The call failed.
        """
        url = f"http://{self.addresses[node]}/internal/replicate"
        with deadline(budget):
            async with self.session.post(url, data=encode_records(records)) as response:
                if response.status != 200:  # noqa: PLR2004
                    raise PeerError(f"{node} answered {response.status} to replicate")
                return decode_acks(await response.read(), len(records))

    async def read(self, node: str, key: bytes) -> Record | None:
        """
        `node`'s own record of `key` (None when it holds none).

        Raises:
            PeerError: The peer answered something unexpected.
            resilient.ResilienceError, aiohttp.ClientError: The call failed.
        """
        url = URL(f"http://{self.addresses[node]}/internal/kv/{quote(key, safe='')}", encoded=True)
        # No retry: the coordinator asks the next replica instead (hedging), which is
        # faster than backing off and asking the same one again.
        with no_retries():
            response = await self.session.get(url)
        async with response:
            if response.status == 404:  # noqa: PLR2004
                return None
            if response.status != 200:  # noqa: PLR2004
                raise PeerError(f"{node} answered {response.status} to read")
            body = await response.read()
            try:
                version = Version.parse(response.headers.get(VERSION_HEADER, ""))
            except ValueError as error:
                raise PeerError(f"{node} sent a bad version: {error}") from error
            tombstone = response.headers.get(_TOMBSTONE_HEADER) == "1"
            return Record(key, version, None if tombstone else body)

    async def close(self) -> None:
        """
        Wait for batches on the wire, then close the session.
        """
        for sender in self._senders.values():
            await sender.drain()
        if self._session is not None:
            await self._session.close()


class _Sender:
    """
    Coalesces the records bound for one peer into batches.
    """

    def __init__(self, peers: Peers, node: str, max_in_flight: int) -> None:
        self._peers = peers
        self._node = node
        self._max_in_flight = max_in_flight
        self._pending: list[tuple[Record, float, asyncio.Future[bool]]] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._scheduled = False

    def submit(self, record: Record, until: float) -> asyncio.Future[bool]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[bool] = loop.create_future()
        self._pending.append((record, until, future))
        if not self._scheduled and len(self._tasks) < self._max_in_flight:
            # Flushed at the end of this loop iteration: writes arriving together share it.
            self._scheduled = True
            loop.call_soon(self._flush, context=contextvars.Context())
        return future

    def _flush(self) -> None:
        self._scheduled = False
        while self._pending and len(self._tasks) < self._max_in_flight:
            batch, size = [], 0
            while self._pending and size < _MAX_BATCH_BYTES:
                item = self._pending.pop(0)
                batch.append(item)
                size += len(item[0].key) + len(item[0].value or b"")
            # A fresh context: the batch serves many callers, so it must not carry the
            # first one's deadline or trace.
            task = asyncio.get_running_loop().create_task(
                self._ship(batch), context=contextvars.Context()
            )
            self._tasks.add(task)
            task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if self._pending and not self._scheduled:
            self._flush()

    async def _ship(self, batch: list[tuple[Record, float, asyncio.Future[bool]]]) -> None:
        loop = asyncio.get_running_loop()
        budget = max(until for _, until, _ in batch) - loop.time()
        try:
            if budget > 0:
                records = [record for record, _, _ in batch]
                acks = await self._peers.send_batch(self._node, records, budget)
            else:
                acks = None
        except asyncio.CancelledError:
            for _, _, future in batch:
                future.cancel()
            raise
        except Exception as error:  # noqa: BLE001  # every record's caller gets the error
            _fail_all(batch, error)
            return
        if acks is None:
            _fail_all(batch, TimeoutError(f"deadline passed before replicating to {self._node}"))
            return
        for (_, _, future), ack in zip(batch, acks, strict=True):
            if not future.done():
                future.set_result(ack)

    async def drain(self) -> None:
        while self._tasks or self._pending:
            if self._pending and not self._tasks:
                self._flush()
            await asyncio.gather(*self._tasks, return_exceptions=True)


def _fail_all(batch: list[tuple[Record, float, asyncio.Future[bool]]], error: Exception) -> None:
    for _, _, future in batch:
        if not future.done():
            future.set_exception(error)
