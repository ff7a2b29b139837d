"""
The bucketed sliding window: counts over the last T seconds, O(1) per update.

The window is cut into `buckets` slices of T / buckets seconds, each holding one count
per counter, with running totals beside them. Time moves the window on lazily: the first
update or read in a new slice clears the slices that fell out of it since the last visit
(at most `buckets` of them, however long the pause). This is how Finagle's retry budget
and resilience4j's TIME_BASED window aggregate (per epoch, not per event), trading a
granularity of one slice for constant memory and constant time.

`RetryBudget` counts its calls and retries here; the breaker's time window counts calls,
failures and slow calls the same way.
"""

from __future__ import annotations

from collections.abc import Callable

__all__ = ["BUCKETS", "BucketedWindow"]

BUCKETS = 10
"""The default number of slices: a window of T seconds moves on in steps of T / 10."""


class BucketedWindow:
    """
    `counters` running counts over the last `span` seconds of the `now()` clock.

    `sums[i]` is counter i's total over the window as of the last `advance()`, `add()`
    or `reset()`; read it after one of those.
    """

    __slots__ = ("_buckets", "_current", "_epoch", "_now", "_until", "_width", "sums")

    def __init__(
        self, span: float, counters: int, now: Callable[[], float], buckets: int = BUCKETS
    ) -> None:
        self._now = now
        self._width = span / buckets
        self._buckets = [[0] * counters for _ in range(buckets)]
        self.sums = [0] * counters
        self._epoch = int(now() / self._width)
        # The slice of the last visit and when it ends: `add`'s test, without a division.
        self._current = self._buckets[self._epoch % buckets]
        self._until = (self._epoch + 1) * self._width

    def advance(self) -> list[int]:
        """
        Clear the slices that fell out of the window; return the current slice.
        """
        epoch = int(self._now() / self._width)
        buckets = self._buckets
        if epoch != self._epoch:
            sums = self.sums
            for stale in range(self._epoch + 1, min(epoch, self._epoch + len(buckets)) + 1):
                bucket = buckets[stale % len(buckets)]
                for i, count in enumerate(bucket):
                    sums[i] -= count
                    bucket[i] = 0
            self._epoch = epoch
            self._current = buckets[epoch % len(buckets)]
            self._until = (epoch + 1) * self._width
        return self._current

    def add(self, counter: int, count: int = 1) -> None:
        """
        Add `count` to `counter` in the current slice and in the totals.
        """
        if self._now() < self._until:  # most adds: still in the slice of the last visit
            self._current[counter] += count
        else:
            self.advance()[counter] += count
        self.sums[counter] += count

    def reset(self) -> None:
        """
        Forget every count.
        """
        for bucket in self._buckets:
            bucket[:] = [0] * len(bucket)
        self.sums[:] = [0] * len(self.sums)
