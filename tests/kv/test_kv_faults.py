"""
A three-node KV cluster (N=3, W=2, R=2) under real faults: SIGKILL, SIGSTOP, SIGTERM.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import cast

import pytest

from examples.kv.ring import Ring
from tests._prometheus import PrometheusServer
from tests._servers import wait_until
from tests.kv._kv import KVCluster, Response, running_cluster

IDS = ["n1", "n2", "n3"]
KEYS = [f"key-{i}" for i in range(40)]


@pytest.fixture
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KVCluster]:
    with running_cluster(tmp_path_factory.mktemp("kv"), IDS) as kv:
        yield kv


def write_all(cluster: KVCluster, node: str, keys: list[str], value: bytes, **kw: str) -> None:
    for key in keys:
        answer = cluster.request(node, "PUT", f"/kv/{key}", value, kw or None)
        assert answer.status == 204, (key, answer.status, answer.body)


def read(cluster: KVCluster, node: str, key: str, query: str = "") -> Response:
    return cluster.request(node, "GET", f"/kv/{key}{query}")


def test_one_node_killed_every_key_still_reads_and_writes(cluster: KVCluster) -> None:
    """With one of three SIGKILLed, W=2/R=2 reads and writes succeed through both others."""
    write_all(cluster, "n1", KEYS, b"before")
    cluster.kill("n3")
    for node in ("n1", "n2"):
        for key in KEYS:
            got = read(cluster, node, key)
            assert (got.status, got.body) == (200, b"before"), key
    write_all(cluster, "n2", KEYS, b"after")
    for key in KEYS:
        assert read(cluster, "n1", key).body == b"after"


def test_two_nodes_down_is_a_503_within_the_deadline(cluster: KVCluster) -> None:
    """Two peers frozen (SIGSTOP): 503 naming acked/needed, returned within the deadline."""
    write_all(cluster, "n1", ["frozen"], b"v")
    for node in ("n2", "n3"):
        cluster.processes[node].process.send_signal(signal.SIGSTOP)
    try:
        for method, path, body, kind in (
            ("PUT", "/kv/frozen", b"w", "write"),
            ("GET", "/kv/frozen", None, "read"),
            ("DELETE", "/kv/frozen", None, "write"),
        ):
            started = time.monotonic()
            answer = cluster.request(
                "n1", method, path, body, {"X-Request-Timeout-Ms": "800"}, timeout=30
            )
            elapsed = time.monotonic() - started
            assert answer.status == 503, answer.body
            detail = answer.json()
            assert (detail["acked"], detail["needed"]) == (1, 2)
            assert kind in str(detail["error"])
            assert "(n1, n2, n3)" in str(detail["error"])  # the replicas asked
            assert elapsed < 0.8 + 0.7, f"{method} took {elapsed:.2f}s for an 800 ms deadline"
    finally:
        for node in ("n2", "n3"):
            cluster.processes[node].process.send_signal(signal.SIGCONT)


def test_two_nodes_killed_is_a_503_and_w1_still_writes(cluster: KVCluster) -> None:
    """Two peers dead: W=2 is refused at once; an explicit ?w=1 / ?r=1 is served."""
    cluster.kill("n2")
    cluster.kill("n3")
    started = time.monotonic()
    answer = cluster.request("n1", "PUT", "/kv/lonely", b"v")
    assert answer.status == 503
    assert time.monotonic() - started < 2.0 + 0.7  # the default deadline is 2 s
    assert cluster.request("n1", "PUT", "/kv/lonely?w=1", b"v").status == 204
    assert read(cluster, "n1", "lonely", "?r=1").body == b"v"


def test_a_restarted_node_serves_what_it_held(cluster: KVCluster) -> None:
    """SIGKILL then restart: the node's own copies (R=1 from it) are all still there."""
    write_all(cluster, "n1", KEYS, b"durable", **{"X-Request-Timeout-Ms": "5000"})
    write_all(cluster, "n1", ["all-three"], b"x")
    held = [key for key in KEYS if cluster.internal("n3", key).status == 200]
    assert held == KEYS  # N=3 on three nodes: n3 holds every key (W=2 may ack first)
    cluster.kill("n3")
    cluster.start("n3")
    for key in KEYS:
        got = read(cluster, "n3", key, "?r=1")
        assert (got.status, got.body) == (200, b"durable"), key


def test_sigterm_loses_no_acknowledged_write_and_exits_0(cluster: KVCluster) -> None:
    """SIGTERM during a stream of writes: exit 0, and every acknowledged write is readable."""
    keys = [f"term-{i}" for i in range(300)]
    acked: list[str] = []

    def put(key: str) -> None:
        if cluster.request("n3", "PUT", f"/kv/{key}", key.encode()).status == 204:
            acked.append(key)

    with ThreadPoolExecutor(8) as pool:
        futures = [pool.submit(put, key) for key in keys]
        while len(acked) < 50:
            time.sleep(0.005)
        status = cluster.terminate("n3")
        for future in futures:
            future.result()
    assert status == 0, cluster.processes["n3"].output_tail()
    assert len(acked) >= 50
    for key in acked:
        assert read(cluster, "n1", key).body == key.encode(), key
    cluster.start("n3")
    owned = [k for k in acked if "n3" in Ring(IDS).preference_list(k.encode(), 3)]
    for key in owned:
        assert cluster.internal("n3", key).status == 200, key


def test_prometheus_sees_the_breaker_to_a_dead_peer_open(
    cluster: KVCluster, prometheus_server: Callable[[str], PrometheusServer]
) -> None:
    """A real Prometheus scraping n1 reads n1's breaker to a SIGKILLed n3 as open."""
    prometheus = prometheus_server(cluster.address("n1"))
    cluster.kill("n3")
    query = 'resilient_circuit_state{policy="peer-n3",state="open"}'
    result: list[dict[str, object]] = []

    def opened() -> bool:
        nonlocal result
        write_all(cluster, "n1", ["breaker-probe"], b"v")  # W=2 still met by n1 and n2
        result = prometheus.query(query)
        return bool(result) and cast("list[object]", result[0]["value"])[1] == "1"  # [t, "1"]

    wait_until(opened, seconds=20, interval=0.2, state=lambda: result)
    view = cluster.request("n1", "GET", "/cluster").json()["members"]
    assert [m["status"] for m in view] == ["up", "up", "down"]


def test_a_frozen_replica_is_hedged_around(cluster: KVCluster) -> None:
    """One replica frozen (SIGSTOP): R=2 reads still answer, well before the deadline."""
    keys = [f"hedge-{i}" for i in range(10)]
    write_all(cluster, "n1", keys, b"h", **{"X-Request-Timeout-Ms": "5000"})
    frozen = cluster.processes["n3"].process
    frozen.send_signal(signal.SIGSTOP)
    try:
        for key in keys:
            started = time.monotonic()
            got = cluster.request(
                "n2", "GET", f"/kv/{key}", headers={"X-Request-Timeout-Ms": "3000"}
            )
            assert (got.status, got.body) == (200, b"h")
            # Hedged after 50 ms; without hedging the read would wait on n3 until its
            # attempt times out (1 s) before asking another replica.
            assert time.monotonic() - started < 0.8
    finally:
        frozen.send_signal(signal.SIGCONT)
    assert cluster.request("n2", "GET", "/cluster").json()["hedges"] >= 1


def test_a_read_repairs_a_stale_replica(cluster: KVCluster) -> None:
    """
    A replica that missed a write gets the newest version back from a read. The write
    goes through n2, which is then killed: the hint it kept for n3 can't be handed off,
    so only read repair can bring n3 up to date.
    """
    write_all(cluster, "n1", ["repair-me"], b"old", **{"X-Request-Timeout-Ms": "5000"})
    deadline = time.monotonic() + 15
    while cluster.internal("n3", "repair-me").body != b"old":  # W=2 acked before n3 had it
        assert time.monotonic() < deadline
        time.sleep(0.05)
    cluster.kill("n3")
    write_all(cluster, "n2", ["repair-me"], b"new")
    cluster.kill("n2")
    cluster.start("n3")
    assert cluster.internal("n3", "repair-me").body == b"old"  # stale after the restart
    while cluster.internal("n3", "repair-me").body != b"new":
        got = read(cluster, "n1", "repair-me")  # 503 while n1's breaker to n3 is open
        assert got.status in {200, 503}
        assert time.monotonic() < deadline, got
        time.sleep(0.1)
    assert cluster.request("n1", "GET", "/cluster").json()["repairs"] >= 1


def test_a_restarted_node_catches_up_by_hinted_handoff(cluster: KVCluster) -> None:
    """Writes n3 missed while dead reach it after restart, with no read to repair them."""
    keys = [f"handoff-{i}" for i in range(20)]
    cluster.kill("n3")
    write_all(cluster, "n1", keys, b"missed")
    deadline = time.monotonic() + 20
    # The last hint lands just after its write's 204: n1 and n2 acked before n3 failed.
    while cluster.request("n1", "GET", "/cluster").json()["hints"] < len(keys):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    cluster.start("n3")
    while missing := [k for k in keys if cluster.internal("n3", k).body != b"missed"]:
        assert time.monotonic() < deadline, missing
        time.sleep(0.1)
    view = cluster.request("n1", "GET", "/cluster").json()
    assert view["handed_off"] >= len(keys)
    assert view["hints"] == 0
