"""
Hinted handoff (Dynamo section 4.6): keep the writes a replica missed, deliver them later.

When a replica write to a peer fails (refused, timed out, its breaker open), the
coordinator keeps a hint: the record and the peer it was meant for, in
``<data_dir>/hints.sqlite3``, newest version per (peer, key). A `HandoffLoop` offers
each peer its hints every second, in batches, through the same resilient session, so a
node restarted after a crash catches up on the writes it missed without waiting for
reads to repair them.

Unlike Dynamo's sloppy quorum, a hint does not count towards W: the write is
acknowledged only by replicas of the preference list that hold it. Hints are written
without an fsync of their own (``synchronous=NORMAL``): they speed up convergence, but
losing one costs no acknowledged write, which W replicas already hold durably.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

from .hlc import Version
from .storage import Record

__all__ = ["HandoffLoop", "Hints"]

_log = logging.getLogger(__name__)
_BATCH = 256  # hints per handoff request
_SCHEMA = """
CREATE TABLE IF NOT EXISTS hints (
    target TEXT NOT NULL,
    key BLOB NOT NULL,
    wall INTEGER NOT NULL,
    logical INTEGER NOT NULL,
    node TEXT NOT NULL,
    value BLOB,
    PRIMARY KEY (target, key)
) WITHOUT ROWID
"""
_UPSERT = """
INSERT INTO hints (target, key, wall, logical, node, value) VALUES (?, ?, ?, ?, ?, ?)
ON CONFLICT (target, key) DO UPDATE SET
    wall = excluded.wall, logical = excluded.logical, node = excluded.node,
    value = excluded.value
WHERE (excluded.wall, excluded.logical, excluded.node) > (hints.wall, hints.logical, hints.node)
"""
_DELETE = """
DELETE FROM hints WHERE target = ? AND key = ? AND wall = ? AND logical = ? AND node = ?
"""


class Hints:
    """
    The hints this node holds for its peers.

    Args:
        data_dir: The node's data directory.
    """

    def __init__(self, data_dir: Path) -> None:
        data_dir.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(data_dir / "hints.sqlite3", isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")  # see the module docstring
        self._db.execute(_SCHEMA)

    def add(self, target: str, record: Record) -> None:
        """
        Keep `record` for `target` (replacing an older hint of the same key).
        """
        version = record.version
        row = (target, record.key, version.wall, version.logical, version.node, record.value)
        self._db.execute(_UPSERT, row)

    def pending(self, target: str, limit: int = 256) -> list[Record]:
        """
        Up to `limit` hints held for `target`.
        """
        rows = self._db.execute(
            "SELECT key, wall, logical, node, value FROM hints WHERE target = ? LIMIT ?",
            (target, limit),
        )
        return [Record(row[0], Version(row[1], row[2], row[3]), row[4]) for row in rows]

    def targets(self) -> list[str]:
        """
        The peers that have hints waiting.
        """
        return [row[0] for row in self._db.execute("SELECT DISTINCT target FROM hints")]

    def delivered(self, target: str, records: Sequence[Record]) -> None:
        """
        Drop the hints `target` now holds; a newer hint of the same key stays.
        """
        rows = [(target, r.key, r.version.wall, r.version.logical, r.version.node) for r in records]
        with self._db:
            self._db.executemany(_DELETE, rows)

    def count(self) -> int:
        """
        Hints waiting, over all peers.
        """
        return int(self._db.execute("SELECT count(*) FROM hints").fetchone()[0])

    def close(self) -> None:
        """
        Close the database.
        """
        self._db.close()


class HandoffLoop:
    """
    Every `interval` seconds, offer each peer the hints held for it.

    Args:
        hints: The hints.
        send: ``await send(peer, records)`` stores records on a peer or raises. Through
            the peer's breaker: while it is open a round costs one rejected call, and
            once its reset timeout has passed the round is the probe that closes it
            (an open breaker turns half-open on a call, not by itself).
        skip: Peers not to try now (default: none).
        interval: Seconds between rounds.
    """

    def __init__(
        self,
        hints: Hints,
        send: Callable[[str, list[Record]], Awaitable[object]],
        skip: Callable[[str], bool] = lambda _: False,
        *,
        interval: float = 1.0,
    ) -> None:
        self._hints = hints
        self._send = send
        self._skip = skip
        self._interval = interval
        self.delivered = 0

    async def run(self) -> None:
        """
        Deliver hints until cancelled.
        """
        while True:
            for target in self._hints.targets():
                # Batch after batch while the peer takes them: a backlog drains in one
                # round, not one batch per second.
                while not self._skip(target) and await self._deliver(target) == _BATCH:
                    pass
            await asyncio.sleep(self._interval)

    async def _deliver(self, target: str) -> int:
        """
        Offer `target` one batch of its hints; how many it took (0 on failure).
        """
        records = self._hints.pending(target, _BATCH)
        try:
            await self._send(target, records)
        except asyncio.CancelledError:
            raise
        except Exception as error:  # noqa: BLE001  # the peer is still away: next round
            _log.debug("handoff to %s failed: %r", target, error)
            return 0
        self._hints.delivered(target, records)
        self.delivered += len(records)
        return len(records)
