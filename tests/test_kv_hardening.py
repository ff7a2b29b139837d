"""
Attacks on real KV node processes, each one a defect that was found and fixed.
"""

from __future__ import annotations

import sqlite3
from contextlib import closing
from pathlib import Path

from examples.kv.ring import Ring
from tests._kv import KVCluster

STEP_MS = 5 * 60 * 1000  # how far the machine's clock is stepped back


def _shift_persisted_time(data_dir: Path, millis: int) -> None:
    """
    Move every wall time a stopped node persisted `millis` later: the same as its
    clock having been that far ahead when it wrote them.
    """
    with closing(sqlite3.connect(data_dir / "kv.sqlite3")) as db, db:
        db.execute("UPDATE kv SET wall = wall + ?", (millis,))
    mark = data_dir / "clock"
    if mark.exists():
        mark.write_text(str(int(mark.read_text()) + millis))


def test_a_write_after_a_restart_with_the_clock_stepped_back_is_not_lost(
    tmp_path: Path,
) -> None:
    """
    A node's clock is 5 minutes ahead, it writes, it is killed, its clock is corrected,
    it restarts: a write acknowledged now must win over one from before the restart,
    also for a key it coordinates but does not hold (N=1 on the other node).
    """
    ids = ["n1", "n2"]
    one = ["--replicas", "1", "--write-quorum", "1", "--read-quorum", "1"]
    cluster = KVCluster(tmp_path, ids, extra_args=one)
    ring = Ring(ids)
    keys = {ring.preference_list(f"k{i}".encode(), 1)[0]: f"k{i}" for i in range(50)}
    assert set(keys) == set(ids)  # one key held by n1 itself, one held only by n2
    try:
        cluster.start()
        for key in keys.values():
            assert cluster.request("n1", "PUT", f"/kv/{key}", b"before").status == 204
        for node in ids:
            cluster.kill(node)
            _shift_persisted_time(tmp_path / node / "data", STEP_MS)
        cluster.start()
        for holder, key in keys.items():
            put = cluster.request("n1", "PUT", f"/kv/{key}", b"after")
            assert put.status == 204, put.body
            got = cluster.request("n1", "GET", f"/kv/{key}")
            assert (got.status, got.body) == (200, b"after"), (holder, key, got.headers)
    finally:
        cluster.stop_all()
