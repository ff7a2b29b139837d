"""
`examples.kv.KVClient` and the ``put|get|delete`` command line against real nodes.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator

import pytest
from aiohttp import web

from examples._process import free_port
from examples.kv import KVClient, KVError
from resilient import CircuitState, Event, StateChanged
from tests._web import Serve
from tests.kv._kv import ROOT, SINGLE, TOKEN, KVCluster, running_cluster

IDS = ["n1", "n2", "n3"]
CLIENT_TOKEN = "client-secret"  # noqa: S105  # a test secret


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KVCluster]:
    with running_cluster(tmp_path_factory.mktemp("kv"), IDS) as kv:
        yield kv


def client_for(cluster: KVCluster, timeout: float = 2.0) -> KVClient:
    return KVClient([cluster.address(node) for node in IDS], timeout=timeout)


def served_by(cluster: KVCluster, node: str) -> float:
    text = cluster.request(node, "GET", "/metrics").body.decode()
    found = re.findall(r'^kv_requests_total\{op="put",status="204"\} (\S+)$', text, re.M)
    return float(found[0]) if found else 0.0


async def test_client_round_trip_and_versions(cluster: KVCluster) -> None:
    """put, get (with version), delete, get of a missing key through KVClient."""
    async with client_for(cluster) as kv:
        version = await kv.put("client-key", b"\x00bytes\xff")
        assert await kv.get_versioned("client-key") == (b"\x00bytes\xff", version)
        assert await kv.get(b"client-key", r=3) == b"\x00bytes\xff"
        tombstone = await kv.delete("client-key", w=3)
        assert tombstone > version
        assert await kv.get("client-key") is None
        assert await kv.get("never-there") is None


async def test_client_spreads_requests_over_nodes(cluster: KVCluster) -> None:
    """Round robin: every node coordinates some of the client's writes."""
    before = {node: served_by(cluster, node) for node in IDS}
    async with client_for(cluster) as kv:
        for i in range(30):
            await kv.put(f"spread-{i}", b"v")
    assert all(served_by(cluster, node) > before[node] for node in IDS)


async def test_client_raises_kv_error_with_the_nodes_detail(cluster: KVCluster) -> None:
    """A refused request is a KVError carrying the status and the node's JSON error."""
    async with client_for(cluster) as kv:
        with pytest.raises(KVError) as refused:
            await kv.put("k" * 2000, b"v")
        assert refused.value.status == 400
        assert "1024" in str(refused.value.detail["error"])
        with pytest.raises(KVError) as bad_quorum:
            await kv.get("k", r=7)
        assert bad_quorum.value.status == 400


async def test_a_404_from_another_server_is_not_a_missing_key(serve: Serve) -> None:
    """A wrong address answering 404 (not a KV node) raises KVError naming it; None is
    kept for a node's own "key not found"."""
    app = web.Application()  # answers 404 to everything, as a proxy or a wrong port does
    url = await serve(app)
    async with KVClient([f"{url.host}:{url.port}"]) as kv:
        with pytest.raises(KVError, match="answered 404 without 'key not found'") as raised:
            await kv.get("greeting")
    assert raised.value.status == 404
    assert f"{url.host}:{url.port}" in str(raised.value)


def test_client_refuses_no_nodes() -> None:
    """KVClient() without nodes or registry is a ValueError naming the parameter."""
    with pytest.raises(ValueError, match="nodes"):
        KVClient([])
    with pytest.raises(ValueError, match="host:port"):
        KVClient(["nowhere"])


def cli(cluster: KVCluster, *args: str, node: str = "n1") -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "examples.kv", *args, "--node", cluster.address(node)],
        cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True,
        timeout=30, check=False,
    )  # fmt: skip


def test_cli_put_get_delete(cluster: KVCluster) -> None:
    """put prints the version, get prints the raw value, delete then get exits 1."""
    put = cli(cluster, "put", "cli-key", "héllo", node="n1")
    assert put.returncode == 0, put.stderr
    assert re.fullmatch(rb"\d+\.\d+\.n1\n", put.stdout)
    got = cli(cluster, "get", "cli-key", node="n2")
    assert (got.returncode, got.stdout) == (0, "héllo".encode())
    assert cli(cluster, "delete", "cli-key", node="n3").returncode == 0
    missing = cli(cluster, "get", "cli-key", node="n1")
    assert missing.returncode == 1
    assert b"not found" in missing.stderr


def test_cli_reports_refusals_and_unreachable_nodes(cluster: KVCluster) -> None:
    """A 4xx or no reachable node exits 2 with one message on stderr."""
    refused = cli(cluster, "put", "k" * 2000, "v")
    assert refused.returncode == 2
    assert b"400" in refused.stderr
    down = subprocess.run(
        [sys.executable, "-m", "examples.kv", "get", "k", "--node", "127.0.0.1:1",
         "--timeout", "1"],
        cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True,
        timeout=30, check=False,
    )  # fmt: skip
    assert down.returncode == 2
    message = down.stderr.decode()
    assert len(message.strip().splitlines()) == 1, message
    assert "no node answered (tried 127.0.0.1:1)" in message
    assert "is a node running there?" in message
    assert "ConnectionKey(" not in message  # text, not nested reprs


async def test_client_fails_over_and_ejects_a_dead_node(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """One node SIGKILLed: every call still succeeds in time and the node is ejected."""
    with running_cluster(tmp_path_factory.mktemp("kv-failover"), IDS) as kv_cluster:
        async with client_for(kv_cluster, timeout=3.0) as kv:
            await kv.put("before", b"1")
            kv_cluster.kill("n2")
            for i in range(30):
                await kv.put(f"during-{i}", b"2")
                assert await kv.get(f"during-{i}") == b"2"
            stats = await kv.statistics()
        assert stats.ejected == (kv_cluster.address("n2"),)
        assert stats.failovers >= 1


async def test_client_token_guards_the_client_api(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """With KV_CLIENT_TOKEN set, /kv/ needs it (401 without, 403 wrong); KVClient sends it."""
    root = tmp_path_factory.mktemp("kv-token")
    env = {"KV_CLIENT_TOKEN": CLIENT_TOKEN}
    with running_cluster(root, ["t1"], extra_args=SINGLE, env=env) as kv_cluster:
        missing = kv_cluster.request("t1", "PUT", "/kv/a", b"v")
        assert missing.status == 401
        assert "KV_CLIENT_TOKEN" in missing.json()["error"]  # which token, never its value
        wrong = {"Authorization": "Bearer nope"}
        wrong_answer = kv_cluster.request("t1", "PUT", "/kv/a", b"v", wrong)
        assert wrong_answer.status == 403
        assert "KV_CLIENT_TOKEN" in wrong_answer.json()["error"]
        assert CLIENT_TOKEN not in wrong_answer.body.decode()
        cluster_token = {"Authorization": f"Bearer {TOKEN}"}
        assert kv_cluster.request("t1", "GET", "/kv/a", headers=cluster_token).status == 403
        assert kv_cluster.request("t1", "GET", "/health").status == 200
        async with KVClient([kv_cluster.address("t1")], token=CLIENT_TOKEN) as kv:
            await kv.put("a", b"v")
            assert await kv.get("a") == b"v"
        async with KVClient([kv_cluster.address("t1")]) as anonymous:
            with pytest.raises(KVError) as refused:
                await anonymous.get("a")
        assert refused.value.status == 401


async def test_client_reports_a_quorum_failure_without_ejecting_the_node(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """Two of three nodes dead: KVError 503 with acked/needed; the live node stays eligible."""
    with running_cluster(tmp_path_factory.mktemp("kv-quorum"), IDS) as kv_cluster:
        kv_cluster.kill("n2")
        kv_cluster.kill("n3")
        async with KVClient([kv_cluster.address("n1")], timeout=3.0) as kv:
            for _ in range(5):  # more than the node breaker's threshold of 3
                with pytest.raises(KVError) as refused:
                    await kv.put("k", b"v")
                assert refused.value.status == 503
                assert (refused.value.detail["acked"], refused.value.detail["needed"]) == (1, 2)
            assert (await kv.statistics()).ejected == ()
            assert await kv.put("k", b"v", w=1)


async def test_client_hooks_hear_exactly_its_own_policies() -> None:
    """`hooks=` gets this client's breaker and timeout events, not another client's."""
    dead = f"127.0.0.1:{free_port()}"  # nothing listens: every call is refused
    heard: list[Event] = []
    mine = KVClient([dead], timeout=1.0, max_attempts=1, hooks=[heard.append])
    other = KVClient([f"127.0.0.1:{free_port()}"], timeout=1.0, max_attempts=1)
    async with mine, other:
        for client in (mine, other):
            for _ in range(4):  # the breaker opens after 3 consecutive failures
                with pytest.raises(Exception):  # noqa: B017  # refused, then rejected
                    await client.put("k", b"v")
    names = {event.name for event in heard}
    assert names <= {"kv-client", f"kv-node-{dead}"}
    opened = [e for e in heard if isinstance(e, StateChanged) and e.new is CircuitState.OPEN]
    assert [e.name for e in opened] == [f"kv-node-{dead}"]
