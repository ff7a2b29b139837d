"""
Quorum writes and reads, coordinated by whichever node received the request.

Write (Dynamo section 4.5): stamp a new HLC version, send the record to the N nodes of
the key's preference list at once (this node's own copy straight to its storage, the
others through `Peers`), answer once W of them hold it durably. The others keep going
in the background: a write reaches every live replica, the caller waits only for W.
When every replica has answered without W acknowledgements, or the deadline is near, the
caller gets `QuorumError` with how many acknowledged; never a hang.

Read: ask R replicas (this node first when it is one, then peers whose breaker is
closed), hedge to the next replica of the preference list when an answer is slower than
`hedge_delay` or a replica fails, return the newest version, and write it back to the
replicas that answered with an older one (read repair, as in Dynamo and Cassandra).

Hedges are budgeted: at most 5% of recent reads (plus one a second) may send one, as
Finagle's ``BackupRequestFilter`` caps backup requests with a retry budget
(``maxExtraLoad``) and as "The Tail at Scale" (Dean and Barroso, 2013) advises. Without
the cap a saturated cluster, whose answers are slower than `hedge_delay` because it is
saturated, hedged up to a fifth of its reads (``hedges`` in ``GET /cluster`` after a
saturation phase on a busy 2-core machine): more load exactly when there is no spare
capacity. A failed replica is replaced at once whatever the budget: that is not a hedge.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import sqlite3
from collections.abc import Awaitable, Iterable
from typing import Any

from resilient import RetryBudget

from .hints import Hints
from .hlc import HybridClock
from .loops import running_loop
from .peers import Peers
from .ring import Ring
from .storage import Record, Storage

__all__ = ["Coordinator", "QuorumError"]

_log = logging.getLogger(__name__)
_MARGIN = 0.1  # share of the budget kept to answer before the caller's deadline passes


class QuorumError(Exception):
    """
    Fewer than the needed replicas acknowledged (a write) or answered (a read).
    """

    def __init__(self, kind: str, acked: int, needed: int, replicas: tuple[str, ...] = ()) -> None:
        self.kind = kind
        self.acked = acked
        self.needed = needed
        did = "acknowledged" if kind == "write" else "answered"
        among = f" of this key's replicas ({', '.join(replicas)})" if replicas else ""
        super().__init__(
            f"{kind} quorum not met: {acked}{among} {did} in time, {needed} needed; "
            "GET /cluster shows which members are down"
        )


class Coordinator:
    """
    Runs quorum writes and reads for one node.

    Args:
        node_id: This node's id.
        ring: The ring giving each key's preference list.
        storage: This node's storage.
        peers: The other members.
        clock: This node's hybrid logical clock.
        replicas: N, copies per key.
        hedge_delay: Seconds before a read also asks the next replica.
        hedge_budget: Caps hedges to a share of reads (default: 5% of the reads of the
            last 10 s, plus 1 a second).
        hints: Where writes a peer missed are kept (None: not kept).
    """

    def __init__(
        self,
        node_id: str,
        ring: Ring,
        storage: Storage,
        peers: Peers,
        clock: HybridClock,
        *,
        replicas: int = 3,
        hedge_delay: float = 0.05,
        hedge_budget: RetryBudget | None = None,
        hints: Hints | None = None,
    ) -> None:
        self.hints = hints
        self.node_id = node_id
        self.ring = ring
        self.storage = storage
        self.peers = peers
        self.clock = clock
        self.replicas = replicas
        self.hedge_delay = hedge_delay
        self.hedge_budget = (
            RetryBudget(0.05, min_per_second=1.0) if hedge_budget is None else hedge_budget
        )
        self._background: set[asyncio.Task[object]] = set()
        self.repairs = 0
        self.hedges = 0
        self.replicating = 0  # replica writes sent and not yet answered

    async def write(
        self, key: bytes, value: bytes | None, w: int, budget: float
    ) -> tuple[Record, int]:
        """
        Store a new version of `key` (`value` None: a tombstone) on W replicas.

        Returns:
            The record written and how many replicas had acknowledged it.

        Raises:
            QuorumError: W replicas could not acknowledge within the budget.
        """
        record = Record(key, self.clock.now(), value)
        loop = running_loop()
        until = loop.time() + budget
        targets = self.ring.preference_list(key, self.replicas)
        futures = [self._store(node, record, until) for node in targets]
        acked = await _quorum(futures, w, budget * (1 - _MARGIN))
        if acked < w:
            raise QuorumError("write", acked, w, tuple(sorted(targets)))
        return record, acked

    def _store(self, node: str, record: Record, until: float) -> asyncio.Future[object]:
        future: asyncio.Future[object]
        if node == self.node_id:
            future = self.storage.submit([record])  # type: ignore[assignment]
        else:
            future = self.peers.replicate(node, record, until)  # type: ignore[assignment]
            if self.hints is not None:
                future.add_done_callback(functools.partial(self._hint, node, record))
        self.replicating += 1  # local copies too: the caller may return before they commit
        future.add_done_callback(self._replicated)
        return future

    def _replicated(self, future: asyncio.Future[object]) -> None:
        self.replicating -= 1
        _consume(future)

    def _hint(self, node: str, record: Record, future: asyncio.Future[object]) -> None:
        # The peer missed the write: keep it for hinted handoff (hints.py).
        if (future.cancelled() or future.exception() is not None) and self.hints is not None:
            try:
                self.hints.add(node, record)
            except sqlite3.Error:
                _log.exception("could not keep a hint for %s", node)

    async def read(self, key: bytes, r: int, budget: float) -> Record | None:
        """
        The newest of R replicas' records of `key` (maybe a tombstone), or None.

        Raises:
            QuorumError: R replicas could not answer within the budget.
        """
        targets = self._read_order(self.ring.preference_list(key, self.replicas))
        answers: dict[str, Record | None] = {}
        pending: dict[asyncio.Future[Record | None], str] = {}
        loop = running_loop()
        until = loop.time() + budget * (1 - _MARGIN)
        queue = list(targets)
        self.hedge_budget.deposit()
        while len(answers) < r:
            while queue and len(answers) + len(pending) < r:
                self._ask(queue.pop(0), key, until, answers, pending)
            if len(answers) >= r or not pending:
                break
            left = until - loop.time()
            if left <= 0:
                break
            wait = min(left, self.hedge_delay) if queue else left
            await _first_done(pending, wait)
            done = [future for future in pending if future.done()]
            if not done and queue and self.hedge_budget.try_withdraw():
                self.hedges += 1
                self._ask(queue.pop(0), key, until, answers, pending)  # hedge: one more replica
            for future in done:
                node = pending.pop(future)
                if not future.cancelled() and future.exception() is None:
                    answers[node] = future.result()
        for future in pending:
            future.cancel()
        if len(answers) < r:
            raise QuorumError("read", len(answers), r, tuple(sorted(targets)))
        return self._newest_and_repair(answers)

    def _read_order(self, targets: tuple[str, ...]) -> list[str]:
        # This node first (no hop), then peers whose breaker admits calls: an open
        # breaker would reject at once, costing a hedge slot for nothing.
        local = [n for n in targets if n == self.node_id]
        closed = [n for n in targets if n != self.node_id and not self.peers.is_open(n)]
        opened = [n for n in targets if n != self.node_id and self.peers.is_open(n)]
        return local + closed + opened

    def _ask(
        self,
        node: str,
        key: bytes,
        until: float,
        answers: dict[str, Record | None],
        pending: dict[asyncio.Future[Record | None], str],
    ) -> None:
        if node == self.node_id:
            answers[node] = self.storage.get(key)
            return
        future = self.peers.read(node, key, until)
        future.add_done_callback(_consume)
        pending[future] = node

    def _newest_and_repair(self, answers: dict[str, Record | None]) -> Record | None:
        found = [record for record in answers.values() if record is not None]
        if not found:
            return None
        newest = max(found, key=lambda record: record.version)
        stale = [n for n, rec in answers.items() if rec is None or rec.version < newest.version]
        if stale:
            self._spawn(self._repair(newest, stale))
        return newest

    async def _repair(self, record: Record, nodes: list[str]) -> None:
        loop = running_loop()
        until = loop.time() + 2.0
        self.repairs += len(nodes)
        results = [self._store(node, record, until) for node in nodes]
        await asyncio.gather(*results, return_exceptions=True)

    def _spawn(self, work: Awaitable[object]) -> None:
        task = asyncio.ensure_future(work)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def close(self) -> None:
        """
        Wait for background repairs.
        """
        if self._background:
            await asyncio.gather(*self._background, return_exceptions=True)


class _Quorum:
    """
    Counts answers as they come (done callbacks), wakes its waiter once decided.

    Cheaper than a loop of `asyncio.wait` calls, which re-registers callbacks on every
    pending future at each wake-up: this is on the path of every write.
    """

    __slots__ = ("acked", "decided", "failed", "needed", "total")

    def __init__(self, futures: list[asyncio.Future[object]], needed: int) -> None:
        self.acked = self.failed = 0
        self.needed = needed
        self.total = len(futures)
        self.decided: asyncio.Future[None] = running_loop().create_future()
        for future in futures:
            future.add_done_callback(self._answered)

    def _answered(self, future: asyncio.Future[object]) -> None:
        if future.cancelled() or future.exception() is not None:
            self.failed += 1
        else:
            self.acked += 1
        # Met, or every replica has answered: a refusal then reports the exact count of
        # replicas holding the write (a hung replica still waits for the deadline).
        if self.acked >= self.needed or self.acked + self.failed == self.total:
            self.decide()

    def decide(self) -> None:
        if not self.decided.done():
            self.decided.set_result(None)


async def _quorum(futures: list[asyncio.Future[object]], needed: int, within: float) -> int:
    """
    Wait until `needed` futures succeed, all have answered, or `within` seconds pass.
    """
    quorum = _Quorum(futures, needed)
    timer = quorum.decided.get_loop().call_later(within, quorum.decide)
    try:
        await quorum.decided
    finally:
        timer.cancel()
    return quorum.acked


async def _first_done(futures: Iterable[asyncio.Future[Any]], within: float) -> None:
    """
    Return when one of `futures` is done or `within` seconds pass.

    `asyncio.wait`'s FIRST_COMPLETED, without building the done and pending sets.
    """
    loop = running_loop()
    woken: asyncio.Future[None] = loop.create_future()

    def wake(_: object = None) -> None:
        if not woken.done():
            woken.set_result(None)

    listening = list(futures)
    for future in listening:
        future.add_done_callback(wake)
    timer = loop.call_later(within, wake)
    try:
        await woken
    finally:
        timer.cancel()
        for future in listening:
            future.remove_done_callback(wake)


def _consume(future: asyncio.Future[Any]) -> None:
    # The caller may stop waiting after W acks: a later failure is expected, not an
    # unretrieved exception to warn about.
    if not future.cancelled():
        error = future.exception()
        if error is not None:
            _log.debug("replica call failed: %r", error)
