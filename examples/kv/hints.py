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

Bounded: the hints held for one peer take at most `MAX_HINT_BYTES_PER_PEER` (keys and
values, plus `HINT_OVERHEAD` per hint for the row), so a peer that stays down can't
fill the disk (Cassandra bounds them in time instead, ``max_hint_window``). Past the
bound, a newer version of a key already hinted still replaces its hint; a hint for a
new key is dropped and counted (``hints_dropped`` in ``/cluster``): the peer then gets
that key back only through read repair or a later write, as if the hint were lost.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from collections.abc import Awaitable, Callable, Sequence
from contextlib import closing
from pathlib import Path

from .hlc import Version
from .storage import Record

__all__ = ["GONE", "HINT_OVERHEAD", "MAX_HINT_BYTES_PER_PEER", "HandoffLoop", "Hints", "hint_size"]

_log = logging.getLogger(__name__)
_BATCH = 256  # hints per handoff request, at most
_BATCH_BYTES = 4 << 20  # and at most this much (one hint more, if it alone is larger):
# a peer refuses a replication request over 64 MiB, and 256 values of up to 1 MiB are
# 256 MiB; a batch this size never got through, and failed again every round.
MAX_HINT_BYTES_PER_PEER = 256 << 20
"""The most hints held for one peer may take, in `hint_size` units (about bytes)."""
HINT_OVERHEAD = 64
"""What one hint counts for beyond its key and value (the row, the version)."""
GONE = object()
"""What a `HandoffLoop`'s `send` returns for a peer that left: drop its hints."""
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


def hint_size(key: bytes, value: bytes | None) -> int:
    """
    What a hint of `key` and `value` counts for against `MAX_HINT_BYTES_PER_PEER`.
    """
    return HINT_OVERHEAD + len(key) + len(value or b"")


class Hints:
    """
    The hints this node holds for its peers, at most `max_bytes` for each.

    Args:
        data_dir: The node's data directory.
        max_bytes: The bound per peer, in `hint_size` units.

    Attributes:
        dropped: Hints refused because their peer's were at the bound.
        written: Hints stored since start (a newer one replacing an older included).
    """

    def __init__(self, data_dir: Path, max_bytes: int = MAX_HINT_BYTES_PER_PEER) -> None:
        data_dir.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(data_dir / "hints.sqlite3", isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")  # see the module docstring
        self._db.execute(_SCHEMA)
        self.max_bytes = max_bytes
        self.dropped = 0
        self.written = 0
        self._sizes: dict[str, int] = dict(
            self._db.execute(
                "SELECT target, sum(? + length(key) + coalesce(length(value), 0))"
                " FROM hints GROUP BY target",
                (HINT_OVERHEAD,),
            ).fetchall()
        )

    def add(self, target: str, record: Record) -> bool:
        """
        Keep `record` for `target` (replacing an older hint of the same key).

        Returns:
            False when it was dropped: `target`'s hints are at the bound.
        """
        held = self._db.execute(
            "SELECT wall, logical, node, value FROM hints WHERE target = ? AND key = ?",
            (target, record.key),
        ).fetchone()
        if held is not None and Version(held[0], held[1], held[2]) >= record.version:
            return True  # as new a version is already hinted
        old = 0 if held is None else hint_size(record.key, held[3])
        size = self._sizes.get(target, 0) - old + hint_size(record.key, record.value)
        if size > self.max_bytes:
            self.dropped += 1
            return False
        version = record.version
        row = (target, record.key, version.wall, version.logical, version.node, record.value)
        self._db.execute(_UPSERT, row)
        self._sizes[target] = size
        self.written += 1
        return True

    def pending(
        self, target: str, limit: int = _BATCH, max_bytes: int = _BATCH_BYTES
    ) -> list[Record]:
        """
        Up to `limit` hints held for `target`, together up to `max_bytes`.

        Sizes are `hint_size`; the first hint is returned however large it is.
        """
        found: list[Record] = []
        size = 0
        # Row by row, closed early: fetching `limit` rows of up to 1 MiB each first
        # would hold what the bound is there to avoid.
        with closing(
            self._db.execute(
                "SELECT key, wall, logical, node, value FROM hints WHERE target = ? LIMIT ?",
                (target, limit),
            )
        ) as rows:
            for key, wall, logical, node, value in rows:
                size += hint_size(key, value)
                if found and size > max_bytes:
                    break
                found.append(Record(key, Version(wall, logical, node), value))
        return found

    def targets(self) -> list[str]:
        """
        The peers that have hints waiting.
        """
        return [row[0] for row in self._db.execute("SELECT DISTINCT target FROM hints")]

    def held_bytes(self, target: str) -> int:
        """
        What the hints held for `target` count for against the bound.
        """
        return self._sizes.get(target, 0)

    def delivered(self, target: str, records: Sequence[Record]) -> None:
        """
        Drop the hints `target` now holds; a newer hint of the same key stays.
        """
        freed = 0
        with self._db:
            for r in records:
                v = r.version
                cursor = self._db.execute(_DELETE, (target, r.key, v.wall, v.logical, v.node))
                freed += hint_size(r.key, r.value) * cursor.rowcount
        self._sizes[target] = self._sizes.get(target, 0) - freed

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
            (an open breaker turns half-open on a call, not by itself). It returns
            `GONE` for a peer that is no longer a member: its hints are dropped
            (counted in `dropped`, not `delivered`).
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
        self.dropped = 0  # hints for peers that left

    async def run(self) -> None:
        """
        Deliver hints until cancelled.
        """
        while True:
            for target in self._hints.targets():
                # Batch after batch while the peer takes them: a backlog drains in one
                # round, not one batch per second.
                while (
                    not self._skip(target)
                    and await self._deliver(target)
                    and self._hints.held_bytes(target) > 0
                ):
                    pass
            await asyncio.sleep(self._interval)

    async def _deliver(self, target: str) -> int:
        """
        Offer `target` one batch of its hints; how many it took (0 on failure).
        """
        records = self._hints.pending(target)
        try:
            sent = await self._send(target, records)
        except asyncio.CancelledError:
            raise
        except Exception as error:  # noqa: BLE001  # the peer is still away: next round
            _log.debug("handoff to %s failed: %r", target, error)
            return 0
        self._hints.delivered(target, records)
        if sent is GONE:
            self.dropped += len(records)
        else:
            self.delivered += len(records)
        return len(records)
