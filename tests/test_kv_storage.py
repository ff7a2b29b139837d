"""
The KV node's storage: group commit, last-writer-wins, tombstones, durability.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from examples.kv.hlc import Version
from examples.kv.storage import TOMBSTONE_GRACE_MS, Record, Storage


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
