"""
Start, kill, restart and stop node processes on loopback: ``python -m examples.kv node``.

    cluster = LocalCluster(root, ["n1", "n2", "n3"], token="secret")
    try:
        cluster.start()                   # every node answers /health with 200
        cluster.kill("n2")                # SIGKILL: no flush, no goodbye
        cluster.start("n2")               # same port, same data directory
    finally:
        cluster.stop_all()                # SIGTERM, then SIGKILL after a grace period

Used by the demo and by the tests. Ports come from the kernel before the nodes start
(every node must know every member's address); each node has its own data directory
and log file under `root`. Each node's stdin is a pipe from this process, started with
``--stop-on-stdin-eof``: should this process die without stopping them (SIGKILL, a
crash), the kernel closes the pipe and the nodes stop by themselves.
"""

from __future__ import annotations

import http.client
import os
import signal
import subprocess
import sys
import time
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path

from .._process import LOCALHOST, free_port, log_tail
from .config import CLUSTER_TOKEN_ENV

__all__ = ["LOCALHOST", "ROOT", "ClusterStartError", "LocalCluster", "NodeProcess"]

ROOT = Path(__file__).resolve().parents[2]
"""The directory holding the ``examples`` package: the nodes' working directory."""

START_SECONDS = 20.0


class ClusterStartError(RuntimeError):
    """
    A node exited, or did not become healthy, within its start bound.
    """


@dataclass(frozen=True, slots=True)
class NodeProcess:
    """
    One running node process.

    Attributes:
        name: The node's id.
        host: The address it listens on.
        port: The port it listens on.
        directory: Its directory (data and log).
        log_path: Where its stdout and stderr go.
        process: The process.
        own_group: Whether it leads its own process group (killed as a group).
    """

    name: str
    host: str
    port: int
    directory: Path
    log_path: Path
    process: subprocess.Popen[bytes]
    own_group: bool = False

    @property
    def address(self) -> str:
        """
        ``host:port``.
        """
        return f"{self.host}:{self.port}"

    @property
    def pid(self) -> int:
        """
        The process id.
        """
        return self.process.pid

    def output_tail(self, lines: int = 20) -> str:
        """
        The last `lines` lines the node wrote to stdout or stderr.
        """
        return log_tail(self.log_path, lines)

    def signal(self, signum: int) -> None:
        """
        Send `signum` to the node (to its whole group when it leads one).
        """
        if self.process.poll() is not None:
            return
        with suppress(ProcessLookupError):
            if self.own_group:
                os.killpg(self.process.pid, signum)
            else:
                self.process.send_signal(signum)

    def wait(self, timeout: float) -> int:
        """
        Wait for the node to exit, then close this end of its stdin; its exit status.

        Raises:
            subprocess.TimeoutExpired: It still runs after `timeout` seconds.
        """
        status = self.process.wait(timeout)
        self.release()
        return status

    def release(self) -> None:
        """
        Close this end of the node's stdin pipe (a running node then stops); idempotent.
        """
        if self.process.stdin is not None:
            self.process.stdin.close()

    def kill(self, timeout: float = 10.0) -> None:
        """
        SIGKILL the node and reap it.
        """
        self.signal(signal.SIGKILL)
        self.wait(timeout)

    def stop(self, timeout: float = 5.0) -> int:
        """
        SIGTERM, then SIGKILL if it still runs after `timeout`; its exit status.
        """
        self.signal(signal.SIGTERM)
        try:
            return self.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill(timeout)
            return self.process.returncode


@dataclass
class LocalCluster:
    """
    Node processes on loopback, started and stopped by the caller.

    Attributes:
        root: A directory for the nodes' data and logs (``root/<id>/``).
        ids: The members' ids.
        token: The cluster token (``KV_CLUSTER_TOKEN``) given to every node.
        extra_args: More ``node`` options for every node.
        env: More environment variables for every node.
        discovery: ``etcd://...`` instead of ``--peers``.
        own_groups: Start each node in its own process group (killed as a group);
            otherwise nodes share the caller's group and die with it.
        first_port: Ports ``first_port``, ``first_port + 1``, ... rather than free ones.
    """

    root: Path
    ids: list[str]
    token: str
    extra_args: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    discovery: str | None = None
    own_groups: bool = False
    first_port: int | None = None
    ports: dict[str, int] = field(init=False)
    processes: dict[str, NodeProcess] = field(init=False, default_factory=dict)

    def __post_init__(self) -> None:
        ids, self.ids, self.ports = list(self.ids), [], {}
        for node in ids:
            self.add(node)

    def add(self, node: str) -> None:
        """
        A new member, with a port (start it with `start` or `launch`).
        """
        first = self.first_port
        self.ports[node] = free_port() if first is None else first + len(self.ids)
        self.ids.append(node)

    @property
    def peers(self) -> str:
        """
        The ``--peers`` value: every member as ``id=host:port``.
        """
        return ",".join(f"{node}={LOCALHOST}:{port}" for node, port in self.ports.items())

    def address(self, node: str) -> str:
        """
        `node`'s ``host:port``.
        """
        return f"{LOCALHOST}:{self.ports[node]}"

    def command(self, node: str) -> list[str]:
        """
        `node`'s argv.
        """
        return [
            sys.executable, "-m", "examples.kv", "node", "--id", node,
            "--port", str(self.ports[node]), "--data-dir", str(self.root / node / "data"),
            *(("--discovery", self.discovery) if self.discovery else ("--peers", self.peers)),
            "--stop-on-stdin-eof", *self.extra_args,
        ]  # fmt: skip

    def launch(self, node: str) -> NodeProcess:
        """
        Start `node`'s process without waiting for it.

        Its stdin is a pipe from this process (see the module docstring).
        """
        previous = self.processes.get(node)
        if previous is not None and previous.process.poll() is not None:
            previous.release()
        directory = self.root / node
        directory.mkdir(parents=True, exist_ok=True)
        log_path = directory / "node.log"
        path = os.pathsep.join(filter(None, (str(ROOT), os.environ.get("PYTHONPATH"))))
        env = {**os.environ, CLUSTER_TOKEN_ENV: self.token, "PYTHONPATH": path, **self.env}
        with log_path.open("ab") as log:
            process = subprocess.Popen(  # noqa: S603  # argv built here, no shell
                self.command(node), stdin=subprocess.PIPE, stdout=log,
                stderr=subprocess.STDOUT, cwd=ROOT, env=env,
                process_group=0 if self.own_groups else None,
            )  # fmt: skip
        started = NodeProcess(
            node, LOCALHOST, self.ports[node], directory, log_path, process, self.own_groups
        )
        self.processes[node] = started
        return started

    def start(self, *nodes: str, timeout: float = START_SECONDS) -> None:
        """
        Start `nodes` (all when none given) and wait until each answers ``/health``.

        Raises:
            ClusterStartError: A node exited or was not healthy within `timeout`.
        """
        for server in [self.launch(node) for node in nodes or self.ids]:
            self.wait_healthy(server.name, timeout)

    def wait_healthy(self, node: str, timeout: float = START_SECONDS) -> None:
        """
        Return once `node` answers ``GET /health`` with 200.

        Raises:
            ClusterStartError: It exited first, or `timeout` passed; the message carries
                the tail of its output.
        """
        server = self.processes[node]
        deadline = time.monotonic() + timeout
        while self.health(node) != 200:  # noqa: PLR2004
            status = server.process.poll()
            if status is not None:
                raise ClusterStartError(
                    f"node {node} exited with status {status} before it was healthy;"
                    f" its last output:\n{server.output_tail()}"
                )
            if time.monotonic() >= deadline:
                raise ClusterStartError(
                    f"node {node} was not healthy on {server.address} within {timeout:g} s;"
                    f" its last output:\n{server.output_tail()}"
                )
            time.sleep(0.05)

    def health(self, node: str) -> int:
        """
        `node`'s ``/health`` status; 0 when it does not answer.
        """
        connection = http.client.HTTPConnection(LOCALHOST, self.ports[node], timeout=2.0)
        try:
            connection.request("GET", "/health")
            return connection.getresponse().status
        except OSError:
            return 0
        finally:
            connection.close()

    def kill(self, node: str) -> None:
        """
        SIGKILL `node` and reap it.
        """
        self.processes[node].kill()

    def terminate(self, node: str, timeout: float = 15.0) -> int:
        """
        SIGTERM `node`; its exit status.
        """
        server = self.processes[node]
        server.signal(signal.SIGTERM)
        return server.wait(timeout)

    def stop_all(self, timeout: float = 5.0) -> None:
        """
        SIGTERM every node at once, then wait (SIGKILL after `timeout`) for each.
        """
        running = [s for s in self.processes.values() if s.process.poll() is None]
        for server in running:
            server.signal(signal.SIGCONT)  # a paused node can't exit
            server.signal(signal.SIGTERM)
        for server in running:
            server.stop(timeout)
        for server in self.processes.values():
            server.release()  # those that had exited already
