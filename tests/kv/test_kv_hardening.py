"""
Attacks on real KV node processes, each one a defect that was found and fixed.
"""

from __future__ import annotations

import gzip
import socket
import sqlite3
import time
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path

import pytest

from examples.kv.launch import LOCALHOST
from examples.kv.ring import Ring
from tests.kv._kv import SINGLE, KVCluster, running_cluster

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


@pytest.mark.parametrize("mark", ["kept", "lost"])
def test_a_write_after_a_restart_with_the_clock_stepped_back_is_not_lost(
    tmp_path: Path, mark: str
) -> None:
    """
    A node's clock is 5 minutes ahead, it writes, it is killed, its clock is corrected,
    it restarts: a write acknowledged now must win over one from before the restart,
    also for a key it coordinates but does not hold (N=1 on the other node). With its
    clock file lost, its own newest write still counts (the key it holds).
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
            if mark == "lost":
                (tmp_path / node / "data" / "clock").unlink(missing_ok=True)
        cluster.start()
        for holder, key in keys.items():
            if mark == "lost" and holder != "n1":
                continue  # n1 stamped it, only n2 holds it: nothing left on n1 to tell
            put = cluster.request("n1", "PUT", f"/kv/{key}", b"after")
            assert put.status == 204, put.body
            got = cluster.request("n1", "GET", f"/kv/{key}")
            assert (got.status, got.body) == (200, b"after"), (holder, key, got.headers)
    finally:
        cluster.stop_all()


@pytest.fixture(scope="module")
def single(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KVCluster]:
    with running_cluster(tmp_path_factory.mktemp("kv-single"), ["s1"], extra_args=SINGLE) as kv:
        yield kv


def _raw(cluster: KVCluster, data: bytes, *, then_close: bool = False) -> bytes:
    """
    Send `data` on a fresh connection; the status line and headers answered (b"" when
    the node closed without one). With `then_close`, close instead of reading.
    """
    with socket.create_connection((LOCALHOST, cluster.ports["s1"]), timeout=10) as sock:
        sock.sendall(data)
        if then_close:
            return b""
        answer = b""
        while b"\r\n\r\n" not in answer:
            chunk = sock.recv(65536)
            if not chunk:
                break
            answer += chunk
        return answer


def test_a_gzip_encoded_value_is_stored_whole_and_decoded(single: KVCluster) -> None:
    """Content-Encoding: gzip stores the decoded value, not Content-Length bytes of it."""
    value = b"hello world " * 100
    put = single.request("s1", "PUT", "/kv/gz", gzip.compress(value), {"Content-Encoding": "gzip"})
    assert put.status == 204, put.body
    assert single.request("s1", "GET", "/kv/gz").body == value


def test_a_gzip_bomb_is_a_413_and_stores_nothing(single: KVCluster) -> None:
    """A 50 KB body that decodes to 50 MiB: over the 1 MiB limit, refused, not truncated."""
    bomb = gzip.compress(bytes(50 << 20))
    put = single.request("s1", "PUT", "/kv/bomb", bomb, {"Content-Encoding": "gzip"})
    assert put.status == 413, put.body
    assert "1048576" in put.json()["error"]
    assert single.request("s1", "GET", "/kv/bomb").status == 404


@pytest.mark.parametrize("framing", ["Content-Length: 10", "Transfer-Encoding: chunked"])
def test_a_trickled_body_is_a_408_by_the_deadline(single: KVCluster, framing: str) -> None:
    """A body that stops arriving can't hold the handler past the caller's deadline."""
    first = b"v" if framing.startswith("Content") else b"1\r\nv\r\n"
    head = f"PUT /kv/slow HTTP/1.1\r\nHost: x\r\nX-Request-Timeout-Ms: 300\r\n{framing}\r\n\r\n"
    answer = _raw(single, head.encode() + first)  # and nothing more
    assert answer.startswith(b"HTTP/1.1 408 "), answer
    assert single.request("s1", "GET", "/kv/slow").status == 404


def test_malformed_bodies_are_400s_and_log_no_traceback(single: KVCluster) -> None:
    """Bad chunking, an undecodable gzip body, a connection dropped mid-body: no traceback."""
    bad = [
        b"Transfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n",
        b"Content-Encoding: gzip\r\nContent-Length: 5\r\n\r\nabcde",
    ]
    for rest in bad:
        answer = _raw(single, b"PUT /kv/bad HTTP/1.1\r\nHost: x\r\nConnection: close\r\n" + rest)
        status_line = answer.split(b"\r\n")[0]
        assert status_line.startswith(b"HTTP/1."), answer
        assert b" 400 " in status_line, answer
    _raw(single, b"PUT /kv/bad HTTP/1.1\r\nHost: x\r\nContent-Length: 9\r\n\r\nv", then_close=True)
    _raw(single, b"GET /kv/" + b"a" * 9000 + b" HTTP/1.1\r\nHost: x\r\n\r\n")
    assert single.request("s1", "GET", "/kv/bad").status == 404  # and the node is serving
    log = single.processes["s1"].log_path.read_text()
    assert "Traceback" not in log, log


def test_a_request_whose_headers_never_end_is_closed(single: KVCluster) -> None:
    """Slowloris: headers sent and never finished; the node closes the connection
    after its idle timeout (20 s) instead of holding the descriptor for an hour."""
    with socket.create_connection((LOCALHOST, single.ports["s1"]), timeout=45) as sock:
        sock.sendall(b"GET /kv/a HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        started = time.monotonic()
        assert sock.recv(65536) == b""  # closed by the node, before the socket timeout
        assert time.monotonic() - started < 40


def test_hints_of_large_values_are_handed_off(tmp_path: Path) -> None:
    """
    70 hints of 1 MiB values: one handoff batch of them (70 MiB) was over a peer's
    64 MiB request limit and was refused every round, forever; batches now stop at
    4 MiB, and the restarted node gets every write it missed.
    """
    keys = [f"big-{i}" for i in range(70)]
    value = bytes(1 << 20)
    with running_cluster(tmp_path, ["n1", "n2", "n3"]) as cluster:
        cluster.kill("n3")
        for key in keys:
            put = cluster.request(
                "n1", "PUT", f"/kv/{key}", value, {"X-Request-Timeout-Ms": "20000"}
            )
            assert put.status == 204, put.body
        deadline = time.monotonic() + 30
        while cluster.request("n1", "GET", "/cluster").json()["hints"] < len(keys):
            assert time.monotonic() < deadline
            time.sleep(0.05)
        cluster.start("n3")
        deadline = time.monotonic() + 30
        while held := cluster.request("n1", "GET", "/cluster").json()["hints"]:
            assert time.monotonic() < deadline, f"{held} hints not handed off"
            time.sleep(0.1)
        assert all(cluster.internal("n3", key).body == value for key in keys)
