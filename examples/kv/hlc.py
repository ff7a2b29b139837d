"""
Versions from a hybrid logical clock (Kulkarni et al., 2014).

A `Version` is (physical milliseconds, logical counter, node id). Versions order totally:
by time, then counter, then node id as the tiebreak, so two coordinators stamping in the
same millisecond still agree which write wins (last-writer-wins, as in Cassandra, but
with the HLC's guarantee that a version seen by a node is older than any it stamps next).

On the wire a version is ``<millis>.<counter>.<node>`` (the ``X-KV-Version`` header).

Across restarts: a clock given a `mark` file never stamps past the wall time written
there without first writing a later one (a ceiling a second ahead, so the
file is rewritten at most once a second, not per stamp), and a new clock
starts from that ceiling. So a node restarted with its clock stepped back (NTP, a VM
restored, a battery-less board) still stamps versions newer than every one it stamped
before, and a write acknowledged after the restart is not silently lost to one from
before it under last-writer-wins.
"""

from __future__ import annotations

import os
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

__all__ = ["HybridClock", "Version"]

NODE_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
"""What a node id may look like: it travels in headers and metric labels."""

_VERSION = re.compile(r"([0-9]{1,15})\.([0-9]{1,9})\.([A-Za-z0-9_-]{1,64})")
_MAX_DRIFT_MS = 60_000  # a remote clock this far ahead is not believed (see observe)
_MARK_AHEAD_MS = 1_000  # the persisted ceiling, past the newest stamp: one write a second
# at most, and a node restarting in a loop runs at most this far ahead of real time


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
        mark: A file keeping the clock's ceiling across restarts (None: not kept).
            The clock starts at the ceiling found there and writes a later one
            before it stamps past it.

    Raises:
        ValueError: `node` is not a valid node id, or `mark` holds no ceiling.
        OSError: `mark` cannot be read.
    """

    def __init__(
        self, node: str, *, millis: Callable[[], int] | None = None, mark: Path | None = None
    ) -> None:
        if not NODE_ID.fullmatch(node):
            raise ValueError(f"HybridClock(node={node!r}): must match [A-Za-z0-9_-]{{1,64}}")
        self.node = node
        self._millis = millis or (lambda: time.time_ns() // 1_000_000)
        self._mark = mark
        self._ceiling = _read_mark(mark) if mark is not None else 0
        self._wall = self._ceiling  # every stamp before a restart was at or below it
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
            if self._mark is not None and self._wall >= self._ceiling:
                # Written before the stamp is used: a crash right after it still
                # restarts above this stamp. Once per _MARK_AHEAD_MS of stamps.
                self._ceiling = self._wall + _MARK_AHEAD_MS
                _write_mark(self._mark, self._ceiling)
            return Version(self._wall, self._logical, self.node)

    def advance(self, stamped: Version) -> None:
        """
        Move the clock past a version this node stamped before (found in its storage).

        Unlike `observe`, not bounded by the local physical time: the clock was there
        once, so the physical clock is what went back.
        """
        with self._lock:
            self._wall, self._logical = max(
                (self._wall, self._logical), (stamped.wall, stamped.logical)
            )

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


def _read_mark(path: Path) -> int:
    try:
        text = path.read_text(encoding="ascii").strip()
    except FileNotFoundError:
        return 0
    if not text.isdigit():
        raise ValueError(f"{path}: expected a clock ceiling in milliseconds, found {text[:40]!r}")
    return int(text)


def _write_mark(path: Path, ceiling: int) -> None:
    # Write then rename: a crash mid-write leaves the previous ceiling, never a torn one.
    # No fsync: a killed process's writes survive in the page cache; after a power
    # loss, the newest stamps in storage (`HybridClock.advance`) are the backstop.
    partial = path.with_name(path.name + ".tmp")
    partial.write_text(str(ceiling), encoding="ascii")
    os.replace(partial, path)
