"""
`GcPauses`: how long this process's full garbage collections stopped it.

A full (generation 2) collection runs on the event loop's thread and stops every
request on it for as long as it scans; `GET /cluster` shows how many there were, the
slowest and their total, so a latency spike can be laid beside them (the bench prints
them for each cluster).
"""

from __future__ import annotations

import contextlib
import gc
import time

__all__ = ["GcPauses"]


class GcPauses:
    """
    Counts full collections and their durations through `gc.callbacks`.

    Attributes:
        collections: Full collections since `install`.
        slowest: The longest, in seconds.
        total: All of them together, in seconds.
    """

    def __init__(self) -> None:
        self.collections = 0
        self.slowest = 0.0
        self.total = 0.0
        self._began = 0.0

    def install(self) -> None:
        """
        Start counting (idempotent).
        """
        if self._heard not in gc.callbacks:
            gc.callbacks.append(self._heard)

    def uninstall(self) -> None:
        """
        Stop counting (idempotent).
        """
        with contextlib.suppress(ValueError):
            gc.callbacks.remove(self._heard)

    def _heard(self, phase: str, info: dict[str, int]) -> None:
        # Called for every collection, young ones included: keep it to a comparison.
        if info["generation"] != 2:  # noqa: PLR2004  # the oldest generation: a full one
            return
        if phase == "start":
            self._began = time.perf_counter()
            return
        took = time.perf_counter() - self._began
        self.collections += 1
        self.total += took
        self.slowest = max(self.slowest, took)

    def view(self) -> dict[str, float]:
        """
        The ``gc`` part of ``GET /cluster``.
        """
        return {
            "full_collections": self.collections,
            "slowest_full_ms": round(self.slowest * 1000, 2),
            "full_ms_total": round(self.total * 1000, 1),
            "frozen_objects": gc.get_freeze_count(),
        }
