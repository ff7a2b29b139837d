"""
`LoopLag`: how late this node's event loop runs what is due (stalls).

Everything a node does for a request runs on one event loop; while something holds
the loop (a full collection, SQLite on the loop's thread, the process preempted on
an oversubscribed machine), every request on it waits. A task that asks to be woken
every `interval` and measures how late it was woken sees every such stall longer
than the interval. ``GET /cluster`` shows the count of stalls, the longest and the
recent ones with their time (``loop``), ``/metrics`` the lag as a histogram, so a
latency spike can be laid beside the stall that caused it (the bench does, per
phase and node).
"""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Histogram

__all__ = ["LoopLag"]

_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
_RECENT = 64  # stalls kept with their time, for laying beside a latency spike


class LoopLag:
    """
    Measures the event loop's lateness every `interval` seconds; counts the stalls.

    Args:
        registry: Where ``kv_loop_lag_seconds`` and ``kv_loop_stalls_total`` go.
        interval: Seconds between checks: the loop's cost (one wake-up each) against
            how finely a stall's length is measured (to within an interval).
        threshold: A lateness of at least this many seconds counts as a stall.
        clock: Monotonic seconds (a test's fake clock).
        wall: Unix time, to stamp the recent stalls with.

    Attributes:
        checks: Checks made so far.
        stalls: Checks at least `threshold` late.
        stalled: Their lateness together, in seconds.
        longest: The longest lateness, in seconds.
        recent: The last stalls as ``(unix time when it ended, seconds late)``.
    """

    def __init__(
        self,
        registry: CollectorRegistry,
        *,
        interval: float = 0.01,
        threshold: float = 0.02,
        clock: Callable[[], float] = time.perf_counter,
        wall: Callable[[], float] = time.time,
    ) -> None:
        if not interval > 0:
            raise ValueError(f"interval must be > 0 seconds, got {interval!r}")
        if not threshold > 0:
            raise ValueError(f"threshold must be > 0 seconds, got {threshold!r}")
        self.interval = interval
        self.threshold = threshold
        self._clock = clock
        self._wall = wall
        self.checks = self.stalls = 0
        self.stalled = self.longest = 0.0
        self.recent: collections.deque[tuple[float, float]] = collections.deque(maxlen=_RECENT)
        self._lag = Histogram(
            "kv_loop_lag_seconds", "How late the event loop woke the lag monitor",
            buckets=_BUCKETS, registry=registry,
        ).observe  # fmt: skip
        self._stalled = Counter(
            "kv_loop_stalls",
            f"Event-loop stalls: wake-ups at least {threshold * 1000:g} ms late",
            registry=registry,
        ).inc

    def observe(self, late: float) -> None:
        """
        Record one check that ran `late` seconds after it was due.
        """
        late = max(0.0, late)  # a timer never fires early; a clock step might look so
        self.checks += 1
        self._lag(late)
        self.longest = max(self.longest, late)
        if late >= self.threshold:
            self.stalls += 1
            self.stalled += late
            self.recent.append((self._wall(), late))
            self._stalled()

    async def run(self) -> None:
        """
        Check every `interval` until cancelled.
        """
        while True:
            due = self._clock() + self.interval
            await asyncio.sleep(self.interval)
            self.observe(self._clock() - due)

    def view(self) -> dict[str, object]:
        """
        The ``loop`` part of ``GET /cluster``.
        """
        return {
            "interval_ms": self.interval * 1000,
            "stall_threshold_ms": self.threshold * 1000,
            "checks": self.checks,
            "stalls": self.stalls,
            "stalled_ms_total": round(self.stalled * 1000, 1),
            "longest_ms": round(self.longest * 1000, 2),
            "recent_stalls": [[round(at, 3), round(late * 1000, 2)] for at, late in self.recent],
        }
