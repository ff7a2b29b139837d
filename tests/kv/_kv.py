"""
A KV cluster of real node processes for tests: ``python -m examples.kv node`` each.

    cluster = KVCluster(tmp_path, ["n1", "n2", "n3"])
    cluster.start()
    try:
        status, headers, body = cluster.request("n1", "PUT", "/kv/a", b"1")
    finally:
        cluster.stop_all()

Launching, killing and stopping the processes is `examples.kv.launch.LocalCluster`
(the demo uses it too); this adds the test token and plain HTTP requests.
"""

from __future__ import annotations

import http.client
import json
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from examples.kv.launch import LOCALHOST, ROOT, LocalCluster

__all__ = ["ROOT", "SINGLE", "TOKEN", "KVCluster", "Response", "running_cluster"]

TOKEN = "test-cluster-token"  # noqa: S105  # a test secret
SINGLE = ("--replicas", "1", "--write-quorum", "1", "--read-quorum", "1")
"""Options of a one-node cluster."""


@dataclass(frozen=True, slots=True)
class Response:
    """
    What a node answered.
    """

    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class KVCluster(LocalCluster):
    """
    Node processes on loopback with the test token, started and stopped by the test.
    """

    token: str = field(default=TOKEN)

    def request(
        self,
        node: str,
        method: str,
        path: str,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
        *,
        timeout: float = 10.0,
    ) -> Response:
        """
        One HTTP request to `node`; no answer (connection refused or dropped) is status 0.
        """
        connection = http.client.HTTPConnection(LOCALHOST, self.ports[node], timeout=timeout)
        try:
            connection.request(method, path, body=body, headers=headers or {})
            answer = connection.getresponse()
            return Response(answer.status, dict(answer.getheaders()), answer.read())
        except ConnectionError:  # refused, or accepted then closed by a stopping node
            return Response(0, {}, b"")
        finally:
            connection.close()

    def internal(self, node: str, key: str) -> Response:
        """
        `node`'s own record of `key` (``GET /internal/kv/``, with the token).
        """
        headers = {"Authorization": f"Bearer {TOKEN}"}
        return self.request(node, "GET", f"/internal/kv/{key}", headers=headers)


@contextmanager
def running_cluster(
    root: Path,
    ids: Sequence[str],
    *,
    extra_args: Sequence[str] = (),
    env: dict[str, str] | None = None,
    discovery: str | None = None,
) -> Iterator[KVCluster]:
    """
    Start `ids` as a cluster under `root`; stop every node on exit, whatever happened.
    """
    cluster = KVCluster(
        root, list(ids), extra_args=list(extra_args), env=env or {}, discovery=discovery
    )
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop_all()
