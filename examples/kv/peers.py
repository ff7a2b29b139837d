"""
Node-to-node traffic: one aiohttp session, every call through `ResilienceMiddleware`.

Each peer gets its own policy, keyed by its origin:

    Retry(2 attempts, RetryBudget 10%) -> CircuitBreaker -> Bulkhead -> Timeout (per attempt)

so a dead peer opens its own breaker (later calls to it fail at once with
`CircuitOpenError` and are skipped, not waited on), a slow one fills only its own
bulkhead, each attempt is bounded by `attempt_timeout` and by what is left of the
caller's deadline (the middleware sends that on as ``X-Request-Timeout-Ms``), and
retries stay a small fraction of the traffic.

Writes and reads bound for a peer are coalesced (`Coalescer`): those submitted while
up to `max_in_flight` batches are on the wire leave together in the next batch, one
``POST /internal/replicate`` or ``POST /internal/read``, binary-encoded; each record
is answered on its own.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Iterable
from typing import cast

import aiohttp

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

from .coalesce import Coalescer
from .codec import (
    HELD_BACK,
    HELD_BACK_HEADER,
    READ_ANSWER_BYTES,
    HeldBack,
    answer_bytes,
    decode_acks,
    decode_found,
    encode_keys,
    encode_records,
)
from .storage import Record
from .tracing import Tracing

__all__ = ["PeerError", "Peers"]

_MAX_BATCH_BYTES = 4 << 20  # a batch stops growing here; the rest goes in the next one
_MAX_KEYS = 1024  # keys per batched read
_READS_HELD_BACK = {HELD_BACK_HEADER: "1"}  # we read HELD_BACK: the peer may cap its answer
_UNBOUNDED = aiohttp.ClientTimeout(total=None)  # made once: this is on every peer call


class PeerError(Exception):
    """
    A peer answered, but not with what the protocol expects; or it left the cluster.
    """


class Peers:
    """
    The other members, reached through one resilient session.

    Args:
        addresses: Member id -> ``host:port`` (may include this node; never called).
        token: The cluster token sent as ``Authorization: Bearer``.
        attempt_timeout: Seconds one attempt may take (capped by the caller's deadline).
        max_in_flight: Write batches on the wire to one peer at once. 2 rather than
            more: fewer, larger batches cost less CPU per record (measured with
            ``python -m examples.kv bench``: about 15% less node CPU per PUT than with
            4), and one batch can fill while the other is on the wire.
        max_reads_in_flight: Read batches on the wire to one peer at once. 1: a read
            batch writes nothing to disk, so it is answered quickly and reads lose
            little waiting for it, while batches at saturation grew from about 6 keys
            to about 8 (``batching`` in ``GET /cluster``), and each peer call costs
            about the same whatever its size, the middleware's share included.
        hooks: Event hooks for every peer policy (metrics).
        tracing: When set, each record carries its writer's ``traceparent``.
        plain: No policies: plain aiohttp with a total timeout per call, the baseline
            that benchmarks compare `resilient` against (``--plain-peers``). Switched
            at run time by `switch` (``PUT /internal/peer-calls``).
    """

    def __init__(
        self,
        addresses: dict[str, str],
        token: str,
        *,
        attempt_timeout: float = 1.0,
        max_in_flight: int = 2,
        max_reads_in_flight: int = 1,
        hooks: Iterable[Hook] = (),
        tracing: Tracing | None = None,
        plain: bool = False,
    ) -> None:
        self._tracing = tracing
        self._plain = plain
        self._hooks = tuple(hooks)
        self._attempt_timeout = attempt_timeout
        self._max_in_flight = max_in_flight
        self._max_reads_in_flight = max_reads_in_flight
        self._token = token
        self.addresses: dict[str, str] = {}
        self.policies: dict[str, Policy] = {}
        self.breakers: dict[str, CircuitBreaker] = {}
        self._by_origin: dict[str, str] = {}  # origin -> node id
        self._writers: dict[str, Coalescer[tuple[Record, str | None], bool]] = {}
        self._readers: dict[str, Coalescer[bytes, Record | HeldBack | None]] = {}
        # One session per mode, made on first use: with and without the middleware.
        self._sessions: dict[bool, aiohttp.ClientSession] = {}
        self.update(addresses)

    @property
    def plain(self) -> bool:
        """
        Whether node-to-node calls run without policies (plain aiohttp) right now.
        """
        return self._plain

    def switch(self, *, plain: bool) -> None:
        """
        Run the calls made from now on with policies (`plain` False) or without.

        For benchmarks: the same processes, with the same data, measured both ways.
        Calls on the wire finish as they started. A breaker stays as it was while plain
        calls run (they don't feed it).
        """
        self._plain = plain

    def update(self, addresses: dict[str, str]) -> None:
        """
        Follow a membership change: `addresses` are now all the peers.

        A peer that left is no longer called (its hints are dropped: `Node`); its
        policy, breaker and coalescers are kept, so a member that comes back under the
        same id (a restart, with etcd) finds its breaker as it left it, and its series
        in ``/metrics`` stay one per id ever seen.
        """
        for node in set(self.addresses) - set(addresses):
            origin = f"http://{self.addresses.pop(node)}"
            if self._by_origin.get(origin) == node:
                del self._by_origin[origin]
        for node, address in addresses.items():
            previous = self.addresses.get(node)
            if previous == address:
                continue
            if previous is not None and self._by_origin.get(f"http://{previous}") == node:
                del self._by_origin[f"http://{previous}"]  # moved
            self.addresses[node] = address
            self._by_origin[f"http://{address}"] = node
            if node in self.policies:
                continue  # moved to a new address: same breaker, same coalescers
            self.policies[node] = self._policy(node)
            self._writers[node] = Coalescer(
                functools.partial(self.send_batch, node),
                size=lambda item: len(item[0].key) + len(item[0].value or b""),
                max_in_flight=self._max_in_flight,
                max_batch=_MAX_BATCH_BYTES,
            )
            self._readers[node] = Coalescer(
                functools.partial(self.read_batch, node),
                max_in_flight=self._max_reads_in_flight,
                max_batch=_MAX_KEYS,
                again=HELD_BACK,  # asked again in a later batch
            )

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

    def _policy_for_origin(self, origin: str) -> Policy:
        # The middleware asks once per origin; members may join after the session is
        # made, so this is a lookup at first use, not a mapping fixed at creation.
        node = self._by_origin.get(origin)
        if node is None:
            raise KeyError(f"no peer at {origin}")  # only peers are ever called
        return self.policies[node]

    @property
    def session(self) -> aiohttp.ClientSession:
        """
        The session for node-to-node calls in the current mode (created on first use).
        """
        session = self._sessions.get(self._plain)
        if session is None:
            middleware = ResilienceMiddleware(
                self._policy_for_origin,
                retry_methods={"GET", "POST"},  # replication is idempotent
            )
            session = self._sessions[self._plain] = aiohttp.ClientSession(
                middlewares=[] if self._plain else [middleware],
                connector=aiohttp.TCPConnector(limit=0, limit_per_host=256),
                headers={"Authorization": f"Bearer {self._token}"},
                timeout=_UNBOUNDED,  # the policies bound each call
            )
        return session

    def _timeout(self, budget: float) -> aiohttp.ClientTimeout:
        # The policies bound each call; without them (plain) nothing else would.
        return aiohttp.ClientTimeout(total=budget) if self._plain else _UNBOUNDED

    def batching(self) -> dict[str, int]:
        """
        Batches sent and records or keys in them, over all peers, since start.
        """
        writers, readers = self._writers.values(), self._readers.values()
        return {
            "write_batches": sum(c.batches for c in writers),
            "records": sum(c.items for c in writers),
            "read_batches": sum(c.batches for c in readers),
            "keys": sum(c.items for c in readers),
        }

    def is_open(self, node: str) -> bool:
        """
        Whether `node`'s breaker rejects calls right now (never, with `plain`).
        """
        breaker = self.breakers.get(node)
        return not self._plain and breaker is not None and breaker.state is CircuitState.OPEN

    def replicate(self, node: str, record: Record, until: float) -> asyncio.Future[bool]:
        """
        Queue `record` for `node`; the future says whether it replaced the peer's state.

        Args:
            node: The peer.
            record: What to store.
            until: The caller's deadline, on the loop's clock.
        """
        trace = self._tracing.current_traceparent() if self._tracing else None
        return self._writers[node].submit((record, trace), until)

    def read(self, node: str, key: bytes, until: float) -> asyncio.Future[Record | None]:
        """
        Queue a lookup of `key` on `node`; the future gives its record (None: none).

        Args:
            node: The peer.
            key: The key.
            until: The caller's deadline, on the loop's clock.
        """
        # A held-back answer never settles the future: the coalescer asks again (`again`).
        return cast("asyncio.Future[Record | None]", self._readers[node].submit(key, until))

    def _url(self, node: str, path: str) -> str:
        address = self.addresses.get(node)
        if address is None:  # left while the batch waited
            raise PeerError(f"{node} is not a member any more")
        return f"http://{address}{path}"

    async def send_batch(
        self, node: str, items: list[tuple[Record, str | None]], budget: float
    ) -> list[bool]:
        """
        Store records (each with its writer's traceparent) on `node` in one request.

        Raises:
            PeerError: The peer answered something unexpected, or is not a member.
            resilient.ResilienceError, aiohttp.ClientError: The call failed.
        """
        url = self._url(node, "/internal/replicate")
        with deadline(budget):
            body = encode_records([record for record, _ in items], [trace for _, trace in items])
            async with self.session.post(url, data=body, timeout=self._timeout(budget)) as response:
                if response.status != 200:  # noqa: PLR2004
                    raise PeerError(f"{node} answered {response.status} to replicate")
                return decode_acks(await response.read(), len(items))

    async def read_batch(
        self, node: str, keys: list[bytes], budget: float
    ) -> list[Record | HeldBack | None]:
        """
        `node`'s own records of `keys` (None where it holds none), in one request.

        A key the peer held back, its answer full (`READ_ANSWER_BYTES`), is `HELD_BACK`:
        the reader coalescer sends it again in a later batch. No retry: the coordinator
        asks the next replica instead (hedging), which is faster than backing off and
        asking the same one again.

        Raises:
            PeerError: The peer answered something unexpected (an entry that is not the
                key's, or keys held back from an answer that was not full), or is not a
                member.
            resilient.ResilienceError, aiohttp.ClientError: The call failed.
        """
        url = self._url(node, "/internal/read")
        with deadline(budget), no_retries():
            response = await self.session.post(
                url,
                data=encode_keys(keys),
                headers=_READS_HELD_BACK,
                timeout=self._timeout(budget),
            )
        async with response:
            if response.status != 200:  # noqa: PLR2004
                raise PeerError(f"{node} answered {response.status} to read")
            try:
                found = decode_found(await response.read(), keys)
            except ValueError as error:
                raise PeerError(f"{node} sent a malformed answer: {error}") from error
        if HELD_BACK in found:  # identity first: Record never equals it
            # Only from a full answer: else a peer could send one small record a round
            # and be asked again for the rest, round after round.
            sent = sum(answer_bytes(r) for r in found if isinstance(r, Record))
            if sent < READ_ANSWER_BYTES:
                raise PeerError(f"{node} held keys back from an answer of {sent} bytes")
        return found

    async def close(self) -> None:
        """
        Wait for batches on the wire, then close the session.
        """
        for writer in self._writers.values():
            await writer.drain()
        for session in self._sessions.values():
            await session.close()
