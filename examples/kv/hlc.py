"""
Versions from a hybrid logical clock (Kulkarni et al., 2014).

A `Version` is (physical milliseconds, logical counter, node id). Versions order totally:
by time, then counter, then node id as the tiebreak, so two coordinators stamping in the
same millisecond still agree which write wins (last-writer-wins, as in Cassandra, but
with the HLC's guarantee that a version seen by a node is older than any it stamps next).

On the wire a version is ``<millis>.<counter>.<node>`` (the ``X-KV-Version`` header).
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["HybridClock", "Version"]

NODE_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
"""What a node id may look like: it travels in headers and metric labels."""

_VERSION = re.compile(r"([0-9]{1,15})\.([0-9]{1,9})\.([A-Za-z0-9_-]{1,64})")
_MAX_DRIFT_MS = 60_000  # a remote clock this far ahead is not believed (see observe)


@dataclass(frozen=True, slots=True, order=True)
class Version:
    """
    One write's version; compares as (wall, logical, node).

    Attributes:
        wall: Physical time in milliseconds since the epoch.
        logical: Counter separating versions within one millisecond.
        node: The coordinating node's id (the last tiebreak).
    """

    wall: int
    logical: int
    node: str

    def __str__(self) -> str:
        return f"{self.wall}.{self.logical}.{self.node}"

    @classmethod
    def parse(cls, text: str) -> Version:
        """
        Read a version from its header form.

        Raises:
            ValueError: `text` is not ``<millis>.<counter>.<node>``.
        """
        match = _VERSION.fullmatch(text)
        if match is None:
            raise ValueError(f"version {text[:80]!r}: expected <millis>.<counter>.<node>")
        return cls(int(match[1]), int(match[2]), match[3])


class HybridClock:
    """
    A hybrid logical clock stamping versions for one node; thread-safe.

    Args:
        node: This node's id.
        millis: Source of physical time in milliseconds (injectable for tests).

    Raises:
        ValueError: `node` is not a valid node id.
    """

    def __init__(self, node: str, *, millis: Callable[[], int] | None = None) -> None:
        if not NODE_ID.fullmatch(node):
            raise ValueError(f"HybridClock(node={node!r}): must match [A-Za-z0-9_-]{{1,64}}")
        self.node = node
        self._millis = millis or (lambda: time.time_ns() // 1_000_000)
        self._wall = 0
        self._logical = 0
        self._lock = threading.Lock()

    def now(self) -> Version:
        """
        Stamp a new version, newer than every version stamped or observed before.
        """
        with self._lock:
            physical = self._millis()
            if physical > self._wall:
                self._wall, self._logical = physical, 0
            else:
                self._logical += 1
            return Version(self._wall, self._logical, self.node)

    def observe(self, seen: Version) -> None:
        """
        Move the clock past a version received from another node.

        A version more than a minute ahead of local physical time is ignored: a peer
        with a broken clock must not drag every version into the future.
        """
        with self._lock:
            if seen.wall > self._millis() + _MAX_DRIFT_MS:
                return
            self._wall, self._logical = max((self._wall, self._logical), (seen.wall, seen.logical))
