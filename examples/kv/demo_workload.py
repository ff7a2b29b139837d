"""
The demo's workload: reads, writes and deletes through `KVClient`, and the read-back.

Each key has one writer (worker ``w`` owns keys ``demo-w-*``) and a worker waits for
each answer, so what a key must hold at the end is known exactly: the last value whose
write was acknowledged, or a value written after it whose outcome is unknown (a
timeout or a 503 may have reached some replicas: "in doubt"). A key holding anything
else lost an acknowledged write.
"""

from __future__ import annotations

import asyncio
import random
from collections import Counter, deque
from dataclasses import dataclass, field

import aiohttp

from resilient import ResilienceError, TimeoutExceeded

from .client import KVClient, KVError

__all__ = ["KeyState", "TrafficSnapshot", "Verification", "Workload", "percentile"]

_WINDOW = 2.0  # seconds of history behind the live rate and percentiles
_VERIFY_ATTEMPTS = 3
_VERIFY_CONCURRENCY = 16


def percentile(ordered: list[float], fraction: float) -> float:
    """
    The nearest-rank percentile of sorted `ordered` (0.0 when empty).
    """
    if not ordered:
        return 0.0
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


@dataclass(slots=True)
class KeyState:
    """
    What one key must hold: the last acknowledged value and the values in doubt since.

    Attributes:
        acked: Whether a write (put or delete) of the key was acknowledged.
        value: The last acknowledged value (None: deleted).
        doubt: Values written after it whose outcome is unknown.
    """

    acked: bool = False
    value: bytes | None = None
    doubt: set[bytes | None] = field(default_factory=set)

    def allows(self, found: bytes | None) -> bool:
        """
        Whether a read answering `found` is consistent with what was acknowledged.
        """
        return found in self.doubt or (found == self.value if self.acked else found is None)


@dataclass(frozen=True, slots=True)
class TrafficSnapshot:
    """
    The workload so far.

    Attributes:
        rate: Requests answered per second, over the last two seconds.
        errors_rate: Failed requests per second, over the last two seconds.
        p50: Median latency (seconds) over the last two seconds.
        p99: 99th percentile latency (seconds) over the last two seconds.
        writes_acked: Puts and deletes acknowledged.
        reads_served: Gets answered (found or not found).
        stale_reads: Gets that answered something else than what was acknowledged.
        errors: Failed requests by kind.
    """

    rate: float
    errors_rate: float
    p50: float
    p99: float
    writes_acked: int
    reads_served: int
    stale_reads: int
    errors: dict[str, int]


@dataclass(frozen=True, slots=True)
class Verification:
    """
    The read-back of every key written.

    Attributes:
        checked: Keys read back.
        acked_keys: Keys with an acknowledged write.
        lost: Keys whose value is not the last acknowledged one (nor one in doubt).
        unreadable: Keys that could not be read back (every attempt failed).
    """

    checked: int
    acked_keys: int
    lost: list[str]
    unreadable: list[str]


def error_kind(error: BaseException) -> str:
    """
    A short name for why a request failed, for counting.
    """
    if isinstance(error, KVError):
        return "quorum not met (503)" if error.status == 503 else f"refused ({error.status})"  # noqa: PLR2004
    if isinstance(error, TimeoutExceeded):
        return "timed out"
    if isinstance(error, ResilienceError):
        return "no node available"
    return "connection failed"


_FAILURES = (KVError, ResilienceError, aiohttp.ClientError, OSError)


class Workload:
    """
    Paced requests from `workers` concurrent writers, each owning its keys.

    Args:
        client: Where requests go.
        rate: Requests per second, all workers together.
        workers: Concurrent workers.
        keys_per_worker: Keys each worker owns.
        seed: Seeds the choice of operations and keys.
    """

    def __init__(
        self, client: KVClient, *, rate: float, workers: int, keys_per_worker: int, seed: int
    ) -> None:
        self._client = client
        self._interval = 1.0 / rate
        self._workers = workers
        self._keys = keys_per_worker
        self._rng = random.Random(seed)  # noqa: S311  # a workload, not a secret
        self._next_slot = 0.0
        self._stopped = False
        self.keys: dict[str, KeyState] = {}
        self.writes_acked = 0
        self.reads_served = 0
        self.stale_reads = 0
        self.errors: Counter[str] = Counter()
        self.write_latencies: list[float] = []
        self.read_latencies: list[float] = []
        self._recent: deque[tuple[float, float, bool]] = deque()  # (end, latency, ok)

    def stop(self) -> None:
        """
        Stop sending: every worker returns after its request in flight, if any.
        """
        self._stopped = True

    async def run(self, until: float) -> None:
        """
        Send requests until the loop's clock reaches `until`, or `stop()`.
        """
        async with asyncio.TaskGroup() as group:
            for worker in range(self._workers):
                group.create_task(self._worker(worker, until))

    async def _worker(self, worker: int, until: float) -> None:
        loop = asyncio.get_running_loop()
        sequence = 0
        while True:
            now = loop.time()
            slot = self._next_slot = max(self._next_slot, now) + self._interval
            if slot >= until or self._stopped:
                return
            await asyncio.sleep(slot - now)
            if self._stopped:
                return
            key = f"demo-{worker}-{self._rng.randrange(self._keys)}"
            draw = self._rng.random()
            sequence += 1
            if draw < 0.45:  # noqa: PLR2004
                await self._read(key)
            else:
                value = None if draw > 0.95 else f"{key}#{sequence}".encode().ljust(100, b".")  # noqa: PLR2004
                await self._write(key, value)

    async def _write(self, key: str, value: bytes | None) -> None:
        state = self.keys.setdefault(key, KeyState())
        state.doubt.add(value)
        started = asyncio.get_running_loop().time()
        try:
            if value is None:
                await self._client.delete(key)
            else:
                await self._client.put(key, value)
        except _FAILURES as error:
            self._record(started, self.write_latencies, failed=error_kind(error))
            return
        state.acked, state.value = True, value
        state.doubt.clear()
        self.writes_acked += 1
        self._record(started, self.write_latencies)

    async def _read(self, key: str) -> None:
        started = asyncio.get_running_loop().time()
        try:
            found = await self._client.get(key)
        except _FAILURES as error:
            self._record(started, self.read_latencies, failed=error_kind(error))
            return
        self.reads_served += 1
        if not self.keys.get(key, KeyState()).allows(found):
            self.stale_reads += 1
        self._record(started, self.read_latencies)

    def _record(self, started: float, latencies: list[float], failed: str | None = None) -> None:
        end = asyncio.get_running_loop().time()
        if failed is None:
            latencies.append(end - started)
        else:
            self.errors[failed] += 1
        self._recent.append((end, end - started, failed is None))

    def snapshot(self, now: float) -> TrafficSnapshot:
        """
        Counts so far, and rate and latency over the last two seconds before `now`.
        """
        recent = self._recent
        while recent and recent[0][0] < now - _WINDOW:
            recent.popleft()
        ordered = sorted(latency for _, latency, ok in recent if ok)
        failed = sum(1 for _, _, ok in recent if not ok)
        return TrafficSnapshot(
            rate=len(ordered) / _WINDOW, errors_rate=failed / _WINDOW,
            p50=percentile(ordered, 0.5), p99=percentile(ordered, 0.99),
            writes_acked=self.writes_acked, reads_served=self.reads_served,
            stale_reads=self.stale_reads, errors=dict(self.errors),
        )  # fmt: skip

    async def verify(self) -> Verification:
        """
        Read every key written back and compare it with what it must hold.
        """
        gate = asyncio.Semaphore(_VERIFY_CONCURRENCY)
        lost: list[str] = []
        unreadable: list[str] = []

        async def check(key: str, state: KeyState) -> None:
            async with gate:
                for attempt in range(_VERIFY_ATTEMPTS):
                    try:
                        found = await self._client.get(key)
                    except _FAILURES:
                        await asyncio.sleep(0.2 * (attempt + 1))
                        continue
                    if not state.allows(found):
                        lost.append(key)
                    return
                unreadable.append(key)

        async with asyncio.TaskGroup() as group:
            for key, state in self.keys.items():
                group.create_task(check(key, state))
        acked = sum(1 for state in self.keys.values() if state.acked)
        return Verification(len(self.keys), acked, sorted(lost), sorted(unreadable))
