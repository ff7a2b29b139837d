"""
A KV cluster whose members find each other through a real etcd (``--discovery``).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from tests._etcd import EtcdServer
from tests._servers import wait_until
from tests.kv._kv import KVCluster, running_cluster

TTL = 2
IDS = ["n1", "n2", "n3"]


@pytest.fixture
def cluster(
    etcd_server: EtcdServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[KVCluster]:
    endpoint = etcd_server.endpoint
    url = f"{endpoint.replace('http://', 'etcd://')}/kv-test-{uuid.uuid4().hex[:8]}/?ttl={TTL}"
    with running_cluster(tmp_path_factory.mktemp("kv-etcd"), IDS, discovery=url) as kv:
        yield kv


def view(cluster: KVCluster, node: str) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = cluster.request(node, "GET", "/cluster").json()["members"]
    return found


def members(cluster: KVCluster, node: str) -> list[str]:
    return [str(member["id"]) for member in view(cluster, node)]


def hints(cluster: KVCluster) -> int:
    held: int = cluster.request("n1", "GET", "/cluster").json()["hints"]
    return held


def wait_members(cluster: KVCluster, nodes: list[str], wanted: list[str], within: float) -> float:
    """
    Seconds until every node in `nodes` lists exactly `wanted`; fails after `within`.
    """
    return wait_until(
        lambda: all(members(cluster, node) == wanted for node in nodes),
        seconds=within,
        state=lambda: {n: members(cluster, n) for n in nodes},
    )


def test_members_find_each_other_and_serve(cluster: KVCluster) -> None:
    """Three nodes with no --peers: each sees all three and a write reads back anywhere."""
    wait_members(cluster, ["n1", "n2", "n3"], ["n1", "n2", "n3"], within=10)
    assert cluster.request("n1", "PUT", "/kv/etcd-key?w=3", b"v").status == 204
    for node in ("n1", "n2", "n3"):
        assert cluster.request(node, "GET", "/kv/etcd-key").body == b"v"


def test_a_killed_node_leaves_every_view_and_a_new_one_joins(cluster: KVCluster) -> None:
    """SIGKILL: gone from each view within TTL + 1 s (+ slack); a new node joins the ring."""
    wait_members(cluster, ["n1", "n2", "n3"], ["n1", "n2", "n3"], within=10)
    cluster.kill("n3")
    # The lease expires at most TTL after the last keepalive; etcd checks expiry about
    # every 0.5 s, and the watch delivers at once. 1 s more for a loaded CI machine.
    left = wait_members(cluster, ["n1", "n2"], ["n1", "n2"], within=TTL + 1 + 1)
    print(f"n3 left every view {left:.2f}s after SIGKILL (ttl {TTL}s)")
    cluster.add("n4")
    cluster.start("n4")
    wait_members(cluster, ["n1", "n2", "n4"], ["n1", "n2", "n4"], within=10)
    assert all(member["ownership"] > 0.2 for member in view(cluster, "n1"))
    assert cluster.request("n4", "PUT", "/kv/after-join?w=3", b"j").status == 204
    for node in ("n1", "n2", "n4"):
        assert cluster.request(node, "GET", "/kv/after-join?r=1").body == b"j"


def test_hints_for_a_node_that_left_the_ring_are_dropped(cluster: KVCluster) -> None:
    """
    Writes n3 misses between its SIGKILL and its lease expiring leave hints for it;
    once it has left every view, they are dropped, not offered to it forever.
    """
    wait_members(cluster, ["n1", "n2", "n3"], ["n1", "n2", "n3"], within=10)
    cluster.kill("n3")
    for i in range(10):  # W=2 on n1 and n2; the copies for n3 fail and become hints
        assert cluster.request("n1", "PUT", f"/kv/missed-{i}", b"m").status in {204, 503}
    wait_until(
        lambda: hints(cluster) != 0,
        seconds=10,
        state=lambda: "no hint was kept for n3",
    )
    wait_members(cluster, ["n1", "n2"], ["n1", "n2"], within=TTL + 1 + 1)
    wait_until(  # a handoff round every second
        lambda: hints(cluster) == 0,
        seconds=10,
        interval=0.1,
        state=lambda: f"{hints(cluster)} hints still held for n3, gone for good",
    )
    view = cluster.request("n1", "GET", "/cluster").json()
    assert view["handed_off"] == 0  # dropped, not delivered: n3 never came back
    assert view["hints_dropped"] >= 1
