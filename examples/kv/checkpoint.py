"""
`Checkpointer`: WAL checkpoints on their own thread, off the group commit's path.

SQLite's automatic checkpoint runs inside the COMMIT that takes the write-ahead log past
``wal_autocheckpoint`` pages: on the writer thread, between two group commits, with two
fsyncs of its own (the log, then the database file). Every write queued behind it waits
that long. Here the writer only pokes this thread after a commit; it runs a PASSIVE
checkpoint from its own connection, at most once per `interval`, while the writer keeps
committing (in WAL mode a checkpoint and a writer run side by side; PASSIVE never waits
for either). This is what PostgreSQL's checkpointer process and InnoDB's page cleaner
threads do: the commit path only appends to the log and fsyncs it.

The log still can't grow without bound: the writer's own ``wal_autocheckpoint`` stays
set, at `Checkpointer.WAL_LIMIT_PAGES`, well above what the background checkpoints let
the log reach, so SQLite checkpoints inline only when this thread has fallen that far
behind (a stalled disk, a starved thread): backpressure, as before, but as the exception.

Durability is unchanged: a commit is acknowledged once its log frames are fsynced
(``synchronous=FULL``), wherever the checkpoint later copies them.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time

__all__ = ["Checkpointer"]

_log = logging.getLogger(__name__)


class Checkpointer:
    """
    Runs ``PRAGMA wal_checkpoint(PASSIVE)`` on a thread of its own when poked.

    Args:
        connection: A connection to the database, for this thread only.
        interval: Least seconds between two checkpoints (pokes in between wait); None:
            no thread, pokes are ignored (SQLite's inline checkpoints only).

    Attributes:
        checkpoints: Checkpoints run.
        wal_pages: Pages in the log at the last checkpoint.
        slowest: The longest checkpoint so far, in seconds.
    """

    WAL_LIMIT_PAGES = 8192
    """The writer's own ``wal_autocheckpoint`` (32 MiB of 4 KiB pages): the log's bound."""

    def __init__(self, connection: sqlite3.Connection, *, interval: float | None = 0.2) -> None:
        if interval is not None and not interval >= 0:
            raise ValueError(f"Checkpointer(interval={interval!r}): must be >= 0 or None")
        self._connection = connection
        self._interval = 0.0 if interval is None else interval
        self._poked = threading.Event()
        self._stopping = threading.Event()
        self.checkpoints = 0
        self.wal_pages = 0
        self.slowest = 0.0
        self._thread = threading.Thread(target=self._run, name="kv-checkpointer", daemon=True)
        if interval is not None:
            self._thread.start()

    def poke(self) -> None:
        """
        Ask for a checkpoint soon (the writer calls this after each commit).
        """
        self._poked.set()

    def close(self) -> None:
        """
        Stop the thread (a checkpoint under way finishes first) and close the connection.
        """
        self._stopping.set()
        self._poked.set()
        if self._thread.is_alive():
            self._thread.join()
        self._connection.close()

    def _run(self) -> None:
        while True:
            self._poked.wait()
            if self._stopping.is_set():
                return
            self._poked.clear()
            self.checkpoint()
            if self._stopping.wait(self._interval):
                return

    def checkpoint(self) -> None:
        """
        One PASSIVE checkpoint, now, on the calling thread.
        """
        started = time.perf_counter()
        try:
            _, pages, _ = self._connection.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        except sqlite3.Error:
            _log.exception("WAL checkpoint failed; the writer's own limit still bounds the log")
            return
        self.slowest = max(self.slowest, time.perf_counter() - started)
        self.checkpoints += 1
        self.wal_pages = pages
