"""
The KV node's storage: group commit, last-writer-wins, tombstones, durability.
"""

from __future__ import annotations

import asyncio
import functools
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from examples.kv.checkpoint import Checkpointer
from examples.kv.hints import GONE, HandoffLoop, Hints, hint_size
from examples.kv.hlc import Version
from examples.kv.storage import TOMBSTONE_GRACE_MS, Record, Storage
from tests._aio import until, within


@pytest.fixture
def storage(tmp_path: Path) -> Iterator[Storage]:
    store = Storage(tmp_path)
    yield store
    store.close()


def v(wall: int, logical: int = 0, node: str = "n1") -> Version:
    return Version(wall, logical, node)


async def test_concurrent_writes_share_commits(storage: Storage) -> None:
    """Writes queued together are committed in far fewer transactions than writes."""
    records = [Record(f"k{i}".encode(), v(1), b"x") for i in range(200)]
    results = await asyncio.gather(*(storage.apply([record]) for record in records))
    assert results == [[True]] * 200
    assert storage.writes == 200
    assert storage.commits < 100  # one fsync per group, not per write


async def test_newer_version_wins_whatever_the_arrival_order(storage: Storage) -> None:
    """An older version arriving late is not applied; the stored one stays."""
    assert await storage.apply([Record(b"k", v(2), b"new")]) == [True]
    assert await storage.apply([Record(b"k", v(1), b"old")]) == [False]
    assert await storage.apply([Record(b"k", v(2, 0, "n0"), b"tie-lower-node")]) == [False]
    assert await storage.apply([Record(b"k", v(2, 0, "n2"), b"tie-higher-node")]) == [True]
    record = storage.get(b"k")
    assert record is not None
    assert (record.version, record.value) == (v(2, 0, "n2"), b"tie-higher-node")


async def test_tombstone_hides_and_blocks_older_writes(storage: Storage) -> None:
    """A delete is a versioned tombstone: an older write cannot resurrect the key."""
    await storage.apply([Record(b"k", v(1), b"a"), Record(b"k", v(3), None)])
    assert await storage.apply([Record(b"k", v(2), b"late")]) == [False]
    record = storage.get(b"k")
    assert record is not None
    assert record.deleted
    assert storage.get(b"absent") is None


async def test_purge_drops_only_tombstones_past_the_grace_period(storage: Storage) -> None:
    """Old tombstones go; recent tombstones and live values stay."""
    now = time.time_ns() // 1_000_000
    old = now - TOMBSTONE_GRACE_MS - 1000
    await storage.apply([
        Record(b"old-tombstone", v(old), None),
        Record(b"new-tombstone", v(now), None),
        Record(b"old-value", v(old), b"x"),
    ])  # fmt: skip
    assert await storage.purge_tombstones() == 1
    assert storage.get(b"old-tombstone") is None
    assert storage.get(b"new-tombstone") is not None
    assert storage.get(b"old-value") is not None


async def test_acknowledged_writes_survive_reopening(tmp_path: Path) -> None:
    """What apply() acknowledged is there after close and reopen, in a WAL database."""
    store = Storage(tmp_path)
    await store.apply([Record(b"a", v(1), b"1"), Record(b"b", v(1), None)])
    store.close()
    store.close()  # idempotent
    reopened = Storage(tmp_path)
    try:
        assert reopened.get(b"a") == Record(b"a", v(1), b"1")
        assert reopened.get(b"b") == Record(b"b", v(1), None)
        assert reopened.count() == 2
    finally:
        reopened.close()
    with sqlite3.connect(tmp_path / "kv.sqlite3") as raw:
        assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


async def test_closed_storage_refuses_writes(tmp_path: Path) -> None:
    """A write after close is a RuntimeError, not a silent loss."""
    store = Storage(tmp_path)
    store.close()
    with pytest.raises(RuntimeError, match="closed"):
        await store.apply([Record(b"a", v(1), b"1")])


async def test_close_commits_writes_still_queued(tmp_path: Path) -> None:
    """Writes queued before close are committed by close, not dropped."""
    store = Storage(tmp_path)
    futures = [store.submit([Record(f"k{i}".encode(), v(1), b"x")]) for i in range(50)]
    store.close()
    await asyncio.gather(*futures)
    reopened = Storage(tmp_path)
    try:
        assert reopened.count() == 50
    finally:
        reopened.close()


def test_hints_keep_the_newest_version_per_peer_and_key(tmp_path: Path) -> None:
    """A hint is replaced only by a newer one; delivering an old one keeps the newer."""
    hints = Hints(tmp_path)
    try:
        hints.add("n2", Record(b"k", v(2), b"new"))
        hints.add("n2", Record(b"k", v(1), b"old"))
        hints.add("n3", Record(b"k", v(1), None))
        assert hints.pending("n2") == [Record(b"k", v(2), b"new")]
        assert sorted(hints.targets()) == ["n2", "n3"]
        hints.delivered("n2", [Record(b"k", v(1), b"old")])  # not what is held: kept
        assert hints.count() == 2
        hints.delivered("n2", hints.pending("n2"))
        assert hints.targets() == ["n3"]
    finally:
        hints.close()


def test_hints_for_one_peer_are_bounded_and_the_excess_counted(tmp_path: Path) -> None:
    """
    At the bound a hint for a new key is dropped (and counted), a newer version of a
    hinted key still replaces it, other peers are unaffected, delivery frees room, and
    the bound holds across a reopen.
    """
    one = hint_size(b"k0", b"x" * 100)
    hints = Hints(tmp_path, max_bytes=3 * one)
    try:
        assert [hints.add("n2", Record(f"k{i}".encode(), v(1), b"x" * 100)) for i in range(5)] == [
            True, True, True, False, False,
        ]  # fmt: skip
        assert (hints.count(), hints.dropped, hints.held_bytes("n2")) == (3, 2, 3 * one)
        assert hints.add("n2", Record(b"k0", v(2), b"y" * 100))  # newer, same size: kept
        assert not hints.add("n2", Record(b"k1", v(2), b"y" * 101))  # newer but larger
        assert hints.add("n3", Record(b"k9", v(1), b"x" * 100))
        hints.delivered("n2", hints.pending("n2", limit=1))
        assert hints.add("n2", Record(b"k3", v(1), b"x" * 100))
    finally:
        hints.close()
    reopened = Hints(tmp_path, max_bytes=3 * one)
    try:
        assert reopened.held_bytes("n2") == 3 * one
        assert not reopened.add("n2", Record(b"k4", v(1), b"x" * 100))
    finally:
        reopened.close()


def test_pending_hints_stop_at_the_byte_cap_but_give_at_least_one(tmp_path: Path) -> None:
    """A handoff batch stays under its byte cap; a single larger hint still goes alone."""
    hints = Hints(tmp_path)
    try:
        for i in range(5):
            hints.add("n2", Record(f"k{i}".encode(), v(1), b"x" * 1000))
        one = hint_size(b"k0", b"x" * 1000)
        assert len(hints.pending("n2", max_bytes=2 * one)) == 2
        assert len(hints.pending("n2", max_bytes=one // 2)) == 1
        assert len(hints.pending("n2", limit=3)) == 3
    finally:
        hints.close()


async def test_handoff_drops_hints_only_once_delivered(tmp_path: Path) -> None:
    """A failed delivery keeps the hints for the next round; a skipped peer is not tried."""
    hints = Hints(tmp_path)
    sent: list[tuple[str, list[Record]]] = []
    fail = True
    delivered = asyncio.Event()

    async def send(target: str, records: list[Record]) -> None:
        sent.append((target, records))
        if fail:
            raise ConnectionError("still down")
        delivered.set()

    hints.add("n2", Record(b"a", v(1), b"1"))
    hints.add("n3", Record(b"b", v(1), b"2"))
    loop = HandoffLoop(hints, send, skip=lambda target: target == "n3", interval=0.01)
    try:
        await loop._deliver("n2")
        assert hints.count() == 2
        fail = False
        task = asyncio.ensure_future(loop.run())
        await asyncio.wait_for(delivered.wait(), 10)
        task.cancel()
        assert hints.targets() == ["n3"]
        assert {target for target, _ in sent} == {"n2"}  # n3 skipped (its breaker, say)
        assert loop.delivered == 1
    finally:
        hints.close()


async def test_hints_for_a_peer_that_left_are_dropped_not_delivered(tmp_path: Path) -> None:
    """send answers GONE: the hints go, counted as dropped, not as handed off."""
    hints = Hints(tmp_path)

    async def send(target: str, records: list[Record]) -> object:
        return GONE

    for i in range(3):
        hints.add("n2", Record(f"k{i}".encode(), v(1), b"x"))
    loop = HandoffLoop(hints, send)
    try:
        assert await asyncio.wait_for(loop._deliver("n2"), 10) == 3
        assert (hints.count(), loop.delivered, loop.dropped) == (0, 0, 3)
    finally:
        hints.close()


async def test_handoff_drains_a_backlog_in_one_round(tmp_path: Path) -> None:
    """More hints than one batch: delivered batch after batch without waiting a round."""
    hints = Hints(tmp_path)
    for i in range(600):
        hints.add("n2", Record(f"k{i}".encode(), v(1), b"x"))
    batches: list[int] = []
    last = asyncio.Event()

    async def send(target: str, records: list[Record]) -> None:
        batches.append(len(records))
        if len(records) < 256:
            last.set()  # the short batch ends the backlog

    loop = HandoffLoop(hints, send, interval=3600)  # a second round would never come
    task = asyncio.ensure_future(loop.run())
    try:
        await asyncio.wait_for(last.wait(), 10)
        assert hints.count() == 0
        assert batches == [256, 256, 88]
    finally:
        task.cancel()
        hints.close()


def _checkpointed_since(storage: Storage, done: int) -> bool:
    return storage.checkpointer.checkpoints > done


def _wal_bytes(storage: Storage) -> int:
    wal = storage.path.with_name(storage.path.name + "-wal")
    return wal.stat().st_size if wal.exists() else 0


async def test_commits_do_not_wait_for_a_slow_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """
    A checkpoint that takes long (a slow disk) holds up its own thread only: writes
    keep being committed and acknowledged while it runs.
    """
    storage = Storage(tmp_path, checkpoint_interval=0.0)
    entered, release = threading.Event(), threading.Event()
    original = storage.checkpointer.checkpoint

    def slow_checkpoint() -> None:
        entered.set()
        release.wait(30)
        original()

    monkeypatch.setattr(storage.checkpointer, "checkpoint", slow_checkpoint)
    try:
        await within(storage.apply([Record(b"first", v(1), b"x")]))
        assert await within(asyncio.to_thread(entered.wait, 10))  # the checkpoint is stuck
        for i in range(20):
            assert await within(storage.apply([Record(f"k{i}".encode(), v(1), b"x")])) == [True]
        assert storage.checkpointer.checkpoints == 0  # all of them while it was stuck
    finally:
        release.set()
        storage.close()


async def test_background_checkpoints_keep_the_log_small(tmp_path: Path) -> None:
    """
    With checkpoints caught up between commits, each commit starts the log afresh: it
    stays the size of a commit or two, not of everything written.
    """
    storage = Storage(tmp_path, checkpoint_interval=0.0)
    value = b"x" * 2000
    try:
        for round_ in range(80):
            records = [Record(f"k{round_}-{i}".encode(), v(1), value) for i in range(10)]
            done = storage.checkpointer.checkpoints
            await within(storage.apply(records))
            await until(functools.partial(_checkpointed_since, storage, done))
        written = 80 * 10 * len(value)
        assert _wal_bytes(storage) < written / 10
    finally:
        storage.close()


async def test_the_log_stays_bounded_when_checkpoints_fall_behind(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """
    With the background checkpoints stalled, the writer checkpoints inline once the log
    passes `wal_limit_pages`: the log does not grow without bound.
    """
    storage = Storage(tmp_path, wal_limit_pages=16, checkpoint_interval=0.0)
    release = threading.Event()
    monkeypatch.setattr(storage.checkpointer, "checkpoint", lambda: release.wait(30))
    value = b"x" * 2000
    try:
        for round_ in range(60):
            records = [Record(f"k{round_}-{i}".encode(), v(1), value) for i in range(10)]
            await within(storage.apply(records))
        written = 60 * 10 * len(value)
        frame = 4096 + 24  # SQLite's default page size, and a WAL frame's header
        assert _wal_bytes(storage) < (16 + 16) * frame < written
        assert storage.checkpointer.checkpoints == 0
    finally:
        release.set()
        storage.close()


def test_bad_checkpoint_settings_are_refused(tmp_path: Path) -> None:
    """A log limit below one page or a negative interval is an error naming it."""
    with pytest.raises(ValueError, match="wal_limit_pages=0"):
        Storage(tmp_path, wal_limit_pages=0)
    with pytest.raises(ValueError, match="interval=-1"):
        Checkpointer(sqlite3.connect(":memory:"), interval=-1)
