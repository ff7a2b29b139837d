"""
A KV cluster of real node processes for tests: ``python -m examples.kv node`` each.

    cluster = KVCluster(tmp_path, ["n1", "n2", "n3"])
    cluster.start_all()
    try:
        status, headers, body = cluster.request("n1", "PUT", "/kv/a", b"1")
    finally:
        cluster.stop_all()

Ports come from the kernel before the nodes start (every node must know every
member's address); each node has its own data directory and log under `root`.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests._servers import LOCALHOST, ServerProcess, free_port, wait_for_port

__all__ = ["SINGLE", "TOKEN", "KVCluster", "Response", "running_cluster"]

ROOT = Path(__file__).resolve().parent.parent
TOKEN = "test-cluster-token"  # noqa: S105  # a test secret
_START_SECONDS = 20.0
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
class KVCluster:
    """
    Node processes on loopback, started and stopped by the test.
    """

    root: Path
    ids: list[str]
    extra_args: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    discovery: str | None = None  # etcd://... instead of --peers
    ports: dict[str, int] = field(init=False)
    processes: dict[str, ServerProcess] = field(init=False, default_factory=dict)

    def __post_init__(self) -> None:
        self.ports = {node: free_port() for node in self.ids}

    def add(self, node: str) -> None:
        """
        A new member, with a free port (start it with `start`).
        """
        self.ids.append(node)
        self.ports[node] = free_port()

    @property
    def peers(self) -> str:
        return ",".join(f"{node}={LOCALHOST}:{port}" for node, port in self.ports.items())

    def address(self, node: str) -> str:
        return f"{LOCALHOST}:{self.ports[node]}"

    def command(self, node: str) -> list[str]:
        return [
            sys.executable, "-m", "examples.kv", "node", "--id", node,
            "--port", str(self.ports[node]), "--data-dir", str(self.root / node / "data"),
            *(("--discovery", self.discovery) if self.discovery else ("--peers", self.peers)),
            *self.extra_args,
        ]  # fmt: skip

    def launch(self, node: str) -> ServerProcess:
        """
        Start `node`'s process without waiting for it.
        """
        directory = self.root / node
        directory.mkdir(parents=True, exist_ok=True)
        log_path = directory / "node.log"
        env = {**os.environ, "KV_CLUSTER_TOKEN": TOKEN, "PYTHONPATH": str(ROOT), **self.env}
        with log_path.open("ab") as log:
            process = subprocess.Popen(
                self.command(node), stdin=subprocess.DEVNULL, stdout=log,
                stderr=subprocess.STDOUT, cwd=ROOT, env=env,
            )  # fmt: skip
        server = ServerProcess(node, LOCALHOST, self.ports[node], directory, log_path, process)
        self.processes[node] = server
        return server

    def start(self, *nodes: str) -> None:
        """
        Start `nodes` (all when none given) and wait until each answers ``/health``.
        """
        servers = [self.launch(node) for node in nodes or self.ids]
        for server in servers:
            wait_for_port(server, _START_SECONDS)
            self.wait_healthy(server.name)

    def wait_healthy(self, node: str, timeout: float = _START_SECONDS) -> None:
        deadline = time.monotonic() + timeout
        while self.request(node, "GET", "/health").status != 200:
            assert time.monotonic() < deadline, self.processes[node].output_tail()
            time.sleep(0.02)

    def kill(self, node: str) -> None:
        """
        SIGKILL `node` and reap it.
        """
        process = self.processes[node].process
        with suppress(ProcessLookupError):
            process.send_signal(signal.SIGKILL)
        process.wait(10)

    def terminate(self, node: str, timeout: float = 15.0) -> int:
        """
        SIGTERM `node`; its exit status.
        """
        process = self.processes[node].process
        with suppress(ProcessLookupError):
            process.send_signal(signal.SIGTERM)
        return process.wait(timeout)

    def stop_all(self) -> None:
        """
        SIGTERM every node at once, then wait (SIGKILL after 5 s) for each.
        """
        for server in self.processes.values():
            if server.process.poll() is None:
                with suppress(ProcessLookupError):
                    server.process.send_signal(signal.SIGCONT)  # a paused node can't exit
                    server.process.send_signal(signal.SIGTERM)
        for server in self.processes.values():
            server.stop()

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
    cluster = KVCluster(root, list(ids), list(extra_args), env or {}, discovery)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop_all()
