"""
A KV cluster of four real node processes (N=3, W=2, R=2) that no test here kills.
"""

from __future__ import annotations

import http.client
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from examples.kv.ring import Ring
from resilient.integrations.aiohttp import parse_deadline
from tests._servers import wait_until
from tests.kv._kv import ROOT, TOKEN, KVCluster, Response, running_cluster

IDS = ["n1", "n2", "n3", "n4"]
FUZZ = settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KVCluster]:
    with running_cluster(tmp_path_factory.mktemp("kv"), IDS) as kv:
        yield kv


def stored_counts(cluster: KVCluster) -> list[object]:
    """
    Keys stored per node, once no node has a replica write in flight or a hint to hand off.
    """
    views: list[dict[str, Any]] = []

    def settled() -> bool:
        # A replica write that timed out on a loaded machine becomes a hint, delivered up
        # to a second later: until then a peer's count can still move by one.
        nonlocal views
        views = [cluster.request(node, "GET", "/cluster").json() for node in IDS]
        return not any(view["replicating"] or view["hints"] for view in views)

    wait_until(settled, seconds=10, interval=0.01, state=lambda: views)
    return [view["keys_stored"] for view in views]


def test_a_write_on_one_node_reads_back_on_every_node(cluster: KVCluster) -> None:
    """PUT through any node, GET the exact bytes and version through each."""
    for writer in IDS:
        value = bytes(range(256)) + writer.encode()
        put = cluster.request(writer, "PUT", f"/kv/round-{writer}", value)
        assert put.status == 204, put.body
        version = put.headers["X-KV-Version"]
        for reader in IDS:
            got = cluster.request(reader, "GET", f"/kv/round-{writer}")
            assert (got.status, got.body) == (200, value)
            assert got.headers["X-KV-Version"] == version


def test_concurrent_reads_of_1_mib_values_come_back_whole(cluster: KVCluster) -> None:
    """Sixteen 1 MiB values read at once through one coordinator (its reads to each peer
    batched, an answer capped at 8 MiB and the rest asked again): every value exact,
    twice over."""
    values = {f"big-{i}": bytes([i]) * (1 << 20) for i in range(16)}
    for key, value in values.items():
        assert cluster.request("n2", "PUT", f"/kv/{key}", value, timeout=30).status == 204

    def read(key: str) -> Response:
        return cluster.request("n1", "GET", f"/kv/{key}", timeout=30)

    with ThreadPoolExecutor(max_workers=len(values)) as pool:
        for _ in range(2):
            got = list(pool.map(read, values))
            assert [(r.status, r.body) for r in got] == [(200, v) for v in values.values()]


def test_delete_makes_later_reads_404_on_every_node(cluster: KVCluster) -> None:
    """DELETE writes a tombstone; every node then answers 404 with a JSON error."""
    assert cluster.request("n1", "PUT", "/kv/doomed", b"x").status == 204
    assert cluster.request("n2", "DELETE", "/kv/doomed").status == 204
    for node in IDS:
        got = cluster.request(node, "GET", "/kv/doomed")
        assert got.status == 404
        assert got.json()["error"] == "key not found"
    assert cluster.request("n3", "GET", "/kv/never-written").status == 404


def test_a_later_write_wins(cluster: KVCluster) -> None:
    """Two writes through two coordinators: the later one is what every node returns."""
    cluster.request("n1", "PUT", "/kv/lww", b"first")
    cluster.request("n4", "PUT", "/kv/lww", b"second")
    assert {cluster.request(n, "GET", "/kv/lww").body for n in IDS} == {b"second"}


def test_replicas_are_where_the_ring_says(cluster: KVCluster) -> None:
    """Each key is held by exactly the 3 nodes of its preference list, no other."""
    ring = Ring(IDS)
    for i in range(12):
        key = f"placed-{i}"
        assert cluster.request("n1", "PUT", f"/kv/{key}?w=3", b"v").status == 204
        holders = {n for n in IDS if cluster.internal(n, key).status == 200}
        assert holders == set(ring.preference_list(key.encode(), 3))


def test_cluster_view_lists_members_status_and_ownership(cluster: KVCluster) -> None:
    """GET /cluster: every member, up, with ring shares summing to 1."""
    view = cluster.request("n2", "GET", "/cluster").json()
    members = view["members"]
    assert isinstance(members, list)
    assert [m["id"] for m in members] == IDS
    assert {m["status"] for m in members} == {"up"}
    assert sum(m["ownership"] for m in members) == pytest.approx(1.0, abs=1e-4)
    assert (view["replicas"], view["write_quorum"], view["read_quorum"]) == (3, 2, 2)


def test_cluster_view_shows_what_stalls_a_node(cluster: KVCluster) -> None:
    """
    GET /cluster counts group commits, background checkpoints and full GCs, and shows
    the start-up objects frozen out of the collector (a running node, not a unit).
    """
    for i in range(5):
        assert cluster.request("n1", "PUT", f"/kv/stall-{i}", b"v").status == 204
    view = cluster.request("n1", "GET", "/cluster").json()
    storage, collector = view["storage"], view["gc"]
    assert storage["commits"] >= 1
    assert storage["slowest_commit_ms"] > 0
    assert set(storage) >= {"checkpoints", "wal_pages", "slowest_checkpoint_ms"}
    assert collector["frozen_objects"] > 10_000  # modules and the app
    assert set(collector) >= {"full_collections", "slowest_full_ms", "full_ms_total"}
    assert view["hedges_refused"] >= 0
    assert storage["slow_commits"] >= 0
    assert view["hints_written"] == 0  # every replica up: nothing to hint


def test_cluster_view_and_metrics_show_the_event_loop_lag(cluster: KVCluster) -> None:
    """The lag monitor runs in a node: /cluster's ``loop`` and /metrics' lag histogram."""
    deadline = time.monotonic() + 10.0
    loop = cluster.request("n1", "GET", "/cluster").json()["loop"]
    while loop["checks"] < 2 and time.monotonic() < deadline:  # checks every 10 ms
        loop = cluster.request("n1", "GET", "/cluster").json()["loop"]
    assert loop["checks"] >= 2
    assert (loop["interval_ms"], loop["stall_threshold_ms"]) == (10.0, 20.0)
    assert loop["stalls"] == len(loop["recent_stalls"]) or loop["stalls"] > 64
    assert loop["longest_ms"] >= 0
    text = cluster.request("n1", "GET", "/metrics").body.decode()
    assert 'kv_loop_lag_seconds_bucket{le="0.02"}' in text
    assert "kv_loop_stalls_total " in text


def test_health_and_metrics(cluster: KVCluster) -> None:
    """/health is 200; /metrics is Prometheus text with per-peer breaker state."""
    assert cluster.request("n1", "GET", "/health").json()["status"] == "ok"
    metrics = cluster.request("n1", "GET", "/metrics")
    assert metrics.status == 200
    text = metrics.body.decode()
    assert 'resilient_circuit_state{policy="peer-n2",state="closed"} 1.0' in text


@pytest.mark.parametrize("token", [None, "wrong", TOKEN[:-1]])
def test_internal_routes_need_the_cluster_token(cluster: KVCluster, token: str | None) -> None:
    """Without the token 401, with a wrong one 403, on every /internal/ route."""
    headers = {} if token is None else {"Authorization": f"Bearer {token}"}
    routes = (("GET", "/internal/kv/x"), ("POST", "/internal/replicate"),
              ("PUT", "/internal/peer-calls"))  # fmt: skip
    for method, path in routes:
        answer = cluster.request("n1", method, path, b"", headers)
        assert answer.status == (401 if token is None else 403)
        assert "KV_CLUSTER_TOKEN" in answer.json()["error"]  # which token, never its value
        assert TOKEN not in answer.body.decode()


def _peer_calls(cluster: KVCluster, node: str, body: bytes) -> Response:
    headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
    return cluster.request(node, "PUT", "/internal/peer-calls", body, headers)


def _retry_calls(cluster: KVCluster, node: str) -> float:
    # n1's calls through its Retry layers to every peer, from its /metrics.
    text = cluster.request(node, "GET", "/metrics").body.decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith('resilient_calls_total{kind="retry"'))  # fmt: skip


def test_peer_calls_switch_between_resilient_and_plain_at_run_time(cluster: KVCluster) -> None:
    """
    PUT /internal/peer-calls: the same node's writes replicate through its policies or
    around them (the bench measures one set of processes both ways); /cluster says which.
    """
    try:
        answer = _peer_calls(cluster, "n1", b'{"resilient": false}')
        assert (answer.status, answer.json()) == (200, {"node": "n1", "resilient": False})
        view = cluster.request("n1", "GET", "/cluster").json()
        assert view["resilient_peers"] is False
        before = _retry_calls(cluster, "n1")
        assert cluster.request("n1", "PUT", "/kv/switched?w=3", b"plain").status == 204
        assert _retry_calls(cluster, "n1") == before  # around the policies
        assert cluster.request("n2", "GET", "/kv/switched").body == b"plain"
    finally:
        answer = _peer_calls(cluster, "n1", b'{"resilient": true}')
    assert (answer.status, answer.json()["resilient"]) == (200, True)
    assert cluster.request("n1", "GET", "/cluster").json()["resilient_peers"] is True
    assert cluster.request("n1", "PUT", "/kv/switched?w=3", b"back").status == 204
    assert _retry_calls(cluster, "n1") > before  # through them again


@pytest.mark.parametrize(
    ("body", "says"),
    [
        (b"", "expected JSON"),
        (b"\xff\xfe", "expected JSON"),
        (b"[" * 100_000, "expected JSON"),
        (b'{"resilient": 1}', "resilient: expected true or false, got 1"),
        (b'{"resilient": "false"}', "resilient: expected true or false"),
        (b'{"resilient": false, "also": 1}', "exactly one field"),
        (b"true", "exactly one field"),
    ],
)
def test_peer_calls_refuses_a_bad_body_and_keeps_its_mode(
    cluster: KVCluster, body: bytes, says: str
) -> None:
    answer = _peer_calls(cluster, "n1", body)
    assert answer.status == 400
    assert says in answer.json()["error"]
    assert cluster.request("n1", "GET", "/cluster").json()["resilient_peers"] is True


def test_internal_replicate_refuses_a_garbage_batch(cluster: KVCluster) -> None:
    """A malformed batch with the right token is a 400, nothing stored."""
    before = stored_counts(cluster)
    answer = cluster.request(
        "n1", "POST", "/internal/replicate", b"\x00\x00\x00\x05garbage",
        {"Authorization": f"Bearer {TOKEN}"},
    )  # fmt: skip
    assert answer.status == 400
    assert "bad batch" in str(answer.json()["error"])
    assert stored_counts(cluster) == before


@pytest.mark.parametrize(
    ("method", "path", "body", "headers", "status", "names"),
    [
        ("GET", "/kv/", None, {}, 400, "key is empty"),
        ("PUT", "/kv/", b"x", {}, 400, "key is empty"),
        ("PUT", "/kv/%FF%FE", b"x", {}, 400, "UTF-8"),
        ("PUT", "/kv/" + "k" * 1025, b"x", {}, 400, "1024"),
        ("PUT", "/kv/big", b"x" * (1 << 20 | 1), {}, 413, "1048576"),
        ("POST", "/kv/a", b"x", {}, 405, "Method Not Allowed"),
        ("PATCH", "/kv/a", b"x", {}, 405, "Method Not Allowed"),
        ("PUT", "/kv/a?w=0", b"x", {}, 400, "?w="),
        ("PUT", "/kv/a?w=4", b"x", {}, 400, "?w="),
        ("PUT", "/kv/a?w=two", b"x", {}, 400, "?w="),
        ("PUT", "/kv/a?w=1&w=2", b"x", {}, 400, "?w="),
        ("GET", "/kv/a?r=-1", None, {}, 400, "?r="),
        ("PUT", "/kv/a?w=" + "1" * 5000, b"x", {}, 400, "?w="),  # past int()'s digit limit
        ("GET", "/kv/a?r=" + "0" * 5000 + "1", None, {}, 400, "?r="),
        ("GET", "/kv/a?r=%C2%B2", None, {}, 400, "?r="),
        ("PUT", "/kv/a", b"x", {"X-Request-Timeout-Ms": "soon"}, 400, "X-Request-Timeout-Ms"),
        ("PUT", "/kv/a", b"x", {"X-Request-Timeout-Ms": "0"}, 400, "X-Request-Timeout-Ms"),
        ("GET", "/nowhere", None, {}, 404, "Not Found"),
    ],
)
def test_bad_input_is_a_clear_4xx_and_stores_nothing(  # noqa: PLR0917  # parametrized
    cluster: KVCluster,
    method: str,
    path: str,
    body: bytes | None,
    headers: dict[str, str],
    status: int,
    names: str,
) -> None:
    """Each malformed request gets its 4xx with a JSON error naming what was wrong."""
    before = stored_counts(cluster)
    answer = cluster.request("n2", method, path, body, headers)
    assert answer.status == status
    assert names in str(answer.json()["error"])
    assert stored_counts(cluster) == before


def test_a_wrong_method_says_which_would_do(cluster: KVCluster) -> None:
    """405 carries the Allow header HTTP requires, and the message lists the methods."""
    answer = cluster.request("n1", "POST", "/kv/a", b"x")
    assert answer.status == 405
    assert set(answer.headers["Allow"].split(",")) == {"DELETE", "GET", "HEAD", "PUT"}
    assert "POST /kv/a; allowed: DELETE, GET, HEAD, PUT" in answer.json()["error"]


@FUZZ
@given(key=st.binary(min_size=0, max_size=1100))
def test_fuzzed_keys_are_stored_exactly_when_valid(cluster: KVCluster, key: bytes) -> None:
    """Any key bytes: valid keys round-trip, invalid ones get a 400 and store nothing."""
    valid = 0 < len(key) <= 1024
    try:
        key.decode("utf-8")
    except UnicodeDecodeError:
        valid = False
    path = "/kv/" + quote(key, safe="")
    before = None if valid else stored_counts(cluster)
    put = cluster.request("n3", "PUT", path, b"fuzz")
    assert put.status == (204 if valid else 400), put.body
    if valid:
        assert cluster.request("n1", "GET", path).body == b"fuzz"
    else:
        assert "error" in put.json()
        assert stored_counts(cluster) == before


_TOO_SHORT = 0.05  # seconds: a deadline a quorum on a loaded machine may not meet

header_text = st.text(
    st.characters(min_codepoint=0x21, max_codepoint=0x7E, exclude_characters=":"), min_size=1,
    max_size=40,
)  # fmt: skip
header_values = st.text(st.characters(min_codepoint=0x20, max_codepoint=0xFF), max_size=200)


@FUZZ
@given(
    headers=st.dictionaries(
        st.sampled_from(
            ["X-Request-Timeout-Ms", "Authorization", "Content-Length", "Traceparent",
             "Baggage", "Content-Type", "Expect", "X-Custom"]
        ) | header_text,
        header_values, max_size=4,
    ),
    method=st.sampled_from(["GET", "PUT", "DELETE"]),
)  # fmt: skip
@example(headers={"X-Request-Timeout-Ms": "1"}, method="GET")  # CI drew it: a 503 in time
@example(headers={"X-Request-Timeout-Ms": "1"}, method="PUT")
def test_fuzzed_headers_never_cause_a_5xx(
    cluster: KVCluster, headers: dict[str, str], method: str
) -> None:
    """Garbage or hostile headers get an answer below 500, never a traceback."""
    body = b"v" if method == "PUT" else None
    headers.pop("Content-Length", None)  # http.client sets it; a lie would desync the socket
    headers.pop("Expect", None)  # 100-continue needs a client that waits for it
    answer = cluster.request("n4", method, "/kv/fuzz-header", body, headers, timeout=5)
    # A well-formed deadline of a few milliseconds is no garbage: a quorum that can't
    # answer in time is the contract's 503, saying how many replicas did.
    budget = parse_deadline(headers.get("X-Request-Timeout-Ms"))
    if answer.status == 503 and budget is not None and budget <= _TOO_SHORT:
        assert "quorum not met" in answer.json()["error"], answer.body
        return
    # 0: aiohttp dropped a connection whose headers it could not parse; no 5xx either.
    assert answer.status < 500, (answer.status, answer.body)


def test_node_refuses_to_start_without_the_cluster_token(tmp_path: Path) -> None:
    """No KV_CLUSTER_TOKEN: exit code 2 and one line on stderr saying so."""
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, "-m", "examples.kv", "node", "--id", "n1", "--port", "7001",
         "--data-dir", str(tmp_path), "--peers", "n1=127.0.0.1:7001"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1
    assert "KV_CLUSTER_TOKEN" in lines[0]


def test_plain_peers_baseline_replicates_without_policies(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """--plain-peers (the benchmark baseline): same API, no peer breakers or policy metrics."""
    root = tmp_path_factory.mktemp("kv-plain")
    with running_cluster(root, ["p1", "p2", "p3"], extra_args=["--plain-peers"]) as kv:
        assert kv.request("p1", "PUT", "/kv/plain?w=3", b"v").status == 204
        assert kv.request("p3", "GET", "/kv/plain?r=3").body == b"v"
        view = kv.request("p2", "GET", "/cluster").json()
        assert view["resilient_peers"] is False
        assert {m["breaker"] for m in view["members"]} == {None}
        assert "resilient_calls_total{" not in kv.request("p2", "GET", "/metrics").body.decode()


def test_fewer_members_than_w_is_refused_at_once(tmp_path_factory: pytest.TempPathFactory) -> None:
    """One member, N=3, W=2: the write is refused with a 503 at once, not at the deadline."""
    root = tmp_path_factory.mktemp("kv-small")
    with running_cluster(root, ["s1"]) as kv:
        started = time.monotonic()
        answer = kv.request("s1", "PUT", "/kv/a", b"v", {"X-Request-Timeout-Ms": "10000"})
        assert answer.status == 503
        assert (answer.json()["acked"], answer.json()["needed"]) == (1, 2)
        assert time.monotonic() - started < 5.0  # half the deadline: it did not wait for it
        assert kv.request("s1", "PUT", "/kv/a?w=1", b"v").status == 204


def test_a_chunked_body_over_the_limit_is_a_413(cluster: KVCluster) -> None:
    """Without Content-Length the limit holds while reading: 413, nothing stored."""
    before = stored_counts(cluster)
    chunks = iter([b"x" * (256 << 10)] * 5)  # 1.25 MiB in chunks, no length announced
    connection = http.client.HTTPConnection("127.0.0.1", cluster.ports["n1"], timeout=10)
    try:
        connection.request("PUT", "/kv/chunked", body=chunks, encode_chunked=True)
        answer = connection.getresponse()
        assert answer.status == 413
        assert "1048576" in json.loads(answer.read())["error"]
    except ConnectionError:
        pass  # the node may close the connection before the whole body is sent
    finally:
        connection.close()
    assert stored_counts(cluster) == before
    assert cluster.request("n2", "GET", "/kv/chunked").status == 404


@FUZZ
@given(body=st.binary(max_size=300))
def test_fuzzed_replication_batches_never_cause_a_5xx(cluster: KVCluster, body: bytes) -> None:
    """Any bytes posted to /internal/replicate (with the token): 200 or 400, never a 5xx."""
    headers = {"Authorization": f"Bearer {TOKEN}"}
    for path in ("/internal/replicate", "/internal/read"):
        answer = cluster.request("n2", "POST", path, body, headers)
        assert answer.status in {200, 400}, (path, answer.status, answer.body)
