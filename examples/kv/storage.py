"""
The node's durable store: SQLite in WAL mode with group commit.

Durability: ``journal_mode=WAL`` with ``synchronous=FULL``, so every commit fsyncs the
write-ahead log before it returns; a write is acknowledged only after its commit. One
writer thread owns the writing connection and drains a queue: every write waiting when
it wakes goes into one transaction, so concurrent writers share one fsync (group commit,
as in PostgreSQL's commit_delay or InnoDB's binlog group commit). The writes submitted
during one event-loop iteration enter the queue together (one wake-up of the thread, not
one per write), and each caller's future is resolved on its own loop, one
``call_soon_threadsafe`` per loop and commit.

Last-writer-wins is decided inside SQLite, atomically: the upsert only replaces a row
whose version is older (a row-value comparison on (wall, logical, node)).

WAL checkpoints run on a third connection and thread (`Checkpointer`), not inside the
writer's commits, so a checkpoint's fsyncs never hold up a group commit; the writer
checkpoints inline only past a bound on the log's size.

Reads use a second connection on the event loop's thread: a point lookup by primary key
costs microseconds, less than a hop to a thread; WAL lets it read while the writer
commits.

Tombstones: a delete stores the key with no value and a version, so an older write
arriving late cannot resurrect it. `purge_tombstones` drops tombstones older than a
grace period (10 days by default, Cassandra's ``gc_grace_seconds``); a replica down
longer than that may bring a deleted key back, exactly as in Cassandra.
"""

from __future__ import annotations

import asyncio
import queue
import sqlite3
import threading
import time
from collections.abc import Sequence
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path

from .checkpoint import Checkpointer
from .hlc import Version
from .loops import running_loop

__all__ = ["SLOW_COMMIT", "TOMBSTONE_GRACE_MS", "Record", "Storage"]

TOMBSTONE_GRACE_MS = 10 * 24 * 3600 * 1000
"""How long a tombstone is kept before `purge_tombstones` may drop it."""

SLOW_COMMIT = 0.02
"""A group commit at least this long (seconds) counts in `Storage.slow_commits`."""
_MAX_GROUP = 2048  # writes per transaction: bounds the latency of the last in a group

_SCHEMA = """
CREATE TABLE IF NOT EXISTS kv (
    key BLOB PRIMARY KEY,
    wall INTEGER NOT NULL,
    logical INTEGER NOT NULL,
    node TEXT NOT NULL,
    value BLOB
) WITHOUT ROWID
"""
_UPSERT = """
INSERT INTO kv (key, wall, logical, node, value) VALUES (?, ?, ?, ?, ?)
ON CONFLICT (key) DO UPDATE SET
    wall = excluded.wall, logical = excluded.logical, node = excluded.node,
    value = excluded.value
WHERE (excluded.wall, excluded.logical, excluded.node) > (kv.wall, kv.logical, kv.node)
"""
_SELECT = "SELECT wall, logical, node, value FROM kv WHERE key = ?"


@dataclass(frozen=True, slots=True)
class Record:
    """
    One key's state: its version and value, or a tombstone (`value` None).
    """

    key: bytes
    version: Version
    value: bytes | None

    @property
    def deleted(self) -> bool:
        """
        Whether this is a tombstone.
        """
        return self.value is None


@dataclass(slots=True)
class _Job:
    records: Sequence[Record]
    purge_before: int | None
    future: asyncio.Future[list[bool]]
    loop: asyncio.AbstractEventLoop


def _open(path: Path) -> sqlite3.Connection:
    connection = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    connection.execute("PRAGMA journal_mode=WAL")
    connection.execute("PRAGMA synchronous=FULL")  # fsync the WAL at every commit
    connection.execute("PRAGMA busy_timeout=5000")
    return connection


class Storage:
    """
    A node's records in ``<data_dir>/kv.sqlite3``.

    Args:
        data_dir: The node's data directory (created if missing).
        wal_limit_pages: Log size (pages) past which the writer checkpoints inline,
            when the background checkpoints have fallen behind.
        checkpoint_interval: Least seconds between two background checkpoints; None:
            none, SQLite checkpoints inside commits every `wal_limit_pages` (its own
            behaviour, with 1000, its default: for comparison in benchmarks).

    Attributes:
        commits: Transactions committed.
        writes: Records written.
        slowest_commit: The longest group commit so far, in seconds.
        slow_commits: Group commits that took at least `SLOW_COMMIT`.
        checkpointer: The background checkpoints.
    """

    def __init__(
        self,
        data_dir: Path,
        *,
        wal_limit_pages: int = Checkpointer.WAL_LIMIT_PAGES,
        checkpoint_interval: float | None = 0.2,
    ) -> None:
        if wal_limit_pages < 1:
            raise ValueError(f"Storage(wal_limit_pages={wal_limit_pages}): must be >= 1")
        data_dir.mkdir(parents=True, exist_ok=True)
        self.path = data_dir / "kv.sqlite3"
        self._writer = _open(self.path)
        self._writer.execute(_SCHEMA)
        # SQLite's own checkpoint, inside a commit, only as the bound (checkpoint.py).
        self._writer.execute(f"PRAGMA wal_autocheckpoint={int(wal_limit_pages)}")
        self._reader = _open(self.path)
        self.checkpointer = Checkpointer(_open(self.path), interval=checkpoint_interval)
        self._jobs: queue.SimpleQueue[list[_Job] | None] = queue.SimpleQueue()
        self._waiting: list[_Job] = []  # submitted in this loop iteration, not yet queued
        self._thread = threading.Thread(target=self._run, name="kv-writer", daemon=True)
        self._closed = False
        self.commits = 0
        self.writes = 0
        self.slowest_commit = 0.0
        self.slow_commits = 0
        self._thread.start()

    def get(self, key: bytes) -> Record | None:
        """
        The stored record of `key` (maybe a tombstone), or None.
        """
        row = self._reader.execute(_SELECT, (key,)).fetchone()
        if row is None:
            return None
        return Record(key, Version(row[0], row[1], row[2]), row[3])

    async def apply(self, records: Sequence[Record]) -> list[bool]:
        """
        Store `records` durably, each only if newer than what is stored.

        Returns:
            For each record, whether it replaced the stored state (False: a newer
            version was already there, which is just as durable an answer).

        Raises:
            RuntimeError: The storage is closed.
        """
        return await self.submit(records)

    async def purge_tombstones(self, grace_ms: int = TOMBSTONE_GRACE_MS) -> int:
        """
        Drop tombstones whose version is older than `grace_ms`; return how many.
        """
        before = time.time_ns() // 1_000_000 - grace_ms
        done = await self.submit((), purge_before=before)
        return len(done)

    def newest_stamped_by(self, node: str) -> Version | None:
        """
        The newest version stored that `node` stamped, or None (a scan: call it at start).
        """
        row = self._reader.execute(
            "SELECT wall, logical FROM kv WHERE node = ? ORDER BY wall DESC, logical DESC LIMIT 1",
            (node,),
        ).fetchone()
        return None if row is None else Version(row[0], row[1], node)

    def count(self) -> int:
        """
        How many keys are stored, tombstones included.
        """
        return int(self._reader.execute("SELECT count(*) FROM kv").fetchone()[0])

    def count_apart(self) -> int:
        """
        `count` on a connection of its own, so callable from another thread.

        A full scan takes about 0.2 s per million keys, too long for the event loop.
        """
        with closing(_open(self.path)) as connection:
            return int(connection.execute("SELECT count(*) FROM kv").fetchone()[0])

    def close(self) -> None:
        """
        Finish queued writes, checkpoint the log and close; idempotent.
        """
        if self._closed:
            return
        self._closed = True
        self.checkpointer.close()  # first: the writer's last checkpoint needs the log alone
        self._hand_over()
        self._jobs.put(None)
        self._thread.join()
        self._reader.close()

    def submit(
        self, records: Sequence[Record], *, purge_before: int | None = None
    ) -> asyncio.Future[list[bool]]:
        """
        Queue `records` for the next group commit; the future resolves as `apply` returns.

        Raises:
            RuntimeError: The storage is closed.
        """
        if self._closed:
            raise RuntimeError(f"Storage({self.path}) is closed")
        loop = running_loop()
        future: asyncio.Future[list[bool]] = loop.create_future()
        if not self._waiting:
            loop.call_soon(self._hand_over)
        self._waiting.append(_Job(records, purge_before, future, loop))
        return future

    def _hand_over(self) -> None:
        # Jobs submitted during one loop iteration reach the writer thread together:
        # one queue put (one wake-up of the writer, one GIL hand-off) instead of one
        # per write. A write waits at most for the end of the loop iteration.
        if self._waiting:
            self._jobs.put(self._waiting)
            self._waiting = []

    def _run(self) -> None:
        stopping = False
        while not stopping:
            first = self._jobs.get()
            if first is None:
                break
            group = list(first)
            while len(group) < _MAX_GROUP:
                try:
                    jobs = self._jobs.get_nowait()
                except queue.Empty:
                    break
                if jobs is None:
                    stopping = True
                    break
                group += jobs
            self._commit(group)
        self._writer.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        self._writer.close()

    def _commit(self, group: list[_Job]) -> None:
        started = time.perf_counter()
        try:
            cursor = self._writer.cursor()
            cursor.execute("BEGIN IMMEDIATE")
            results = [self._execute(cursor, job) for job in group]
            cursor.execute("COMMIT")
        except sqlite3.Error as error:
            if self._writer.in_transaction:
                self._writer.execute("ROLLBACK")
            _settle([(job, error) for job in group])
            return
        self.commits += 1
        _settle(list(zip(group, results, strict=True)))
        took = time.perf_counter() - started
        self.slowest_commit = max(self.slowest_commit, took)
        self.slow_commits += took >= SLOW_COMMIT
        self.checkpointer.poke()

    def _execute(self, cursor: sqlite3.Cursor, job: _Job) -> list[bool]:
        if job.purge_before is not None:
            cursor.execute("DELETE FROM kv WHERE value IS NULL AND wall < ?", (job.purge_before,))
            return [True] * max(cursor.rowcount, 0)
        applied = []
        for record in job.records:
            version = record.version
            cursor.execute(
                _UPSERT, (record.key, version.wall, version.logical, version.node, record.value)
            )
            applied.append(cursor.rowcount > 0)
        self.writes += len(job.records)
        return applied


def _settle(outcomes: list[tuple[_Job, list[bool] | BaseException]]) -> None:
    # One wake-up per loop per commit, not one per job: each call_soon_threadsafe
    # writes to the loop's self-pipe, a system call on the event loop's side too.
    by_loop: dict[asyncio.AbstractEventLoop, list[tuple[_Job, list[bool] | BaseException]]] = {}
    for job, outcome in outcomes:
        by_loop.setdefault(job.loop, []).append((job, outcome))
    for loop, jobs in by_loop.items():
        loop.call_soon_threadsafe(_resolve, jobs)


def _resolve(jobs: list[tuple[_Job, list[bool] | BaseException]]) -> None:
    for job, outcome in jobs:
        if job.future.done():
            continue  # the caller gave up (its deadline passed, or it was cancelled)
        if isinstance(outcome, BaseException):
            job.future.set_exception(outcome)
        else:
            job.future.set_result(outcome)
