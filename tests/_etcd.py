"""
Real etcd servers for the tests that need one (tests/integrations/etcd, tests/kv).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests._servers import (
    LOCALHOST,
    ServerProcess,
    free_port,
    require_binary,
    start_server,
    wait_for_http,
)

__all__ = ["EtcdServer", "etcd_private", "etcd_server"]


@dataclass(slots=True)
class EtcdServer:
    """
    A single-member etcd cluster on loopback that a test may stop and start again.

    It keeps its client and peer ports across restarts, so clients reconnect to the
    same endpoint; `start(wipe=True)` starts it on a fresh, empty data directory (a new
    cluster: every lease and key is gone).

    Attributes:
        binary: The ``etcd`` executable.
        root: A temporary directory for its data directories and logs.
        port: The client port (fixed after the first start).
        peer_port: The peer port (fixed after the first start).
        process: The running server, or None while stopped.
        generation: Which data directory it uses (`start(wipe=True)` moves on).
        starts: How many times it was started.
    """

    binary: str
    root: Path
    port: int | None = None
    peer_port: int | None = None
    process: ServerProcess | None = None
    generation: int = 0
    starts: int = 0

    @property
    def endpoint(self) -> str:
        """
        ``http://127.0.0.1:<client port>``.
        """
        return f"http://{LOCALHOST}:{self.port}"

    def _command(self, port: int, _root: Path) -> list[str]:
        if self.peer_port is None or self.port is None:
            # First start: a fresh peer port on every attempt start_server makes.
            self.peer_port = free_port()
        client, peer = f"http://{LOCALHOST}:{port}", f"http://{LOCALHOST}:{self.peer_port}"
        return [
            self.binary,
            "--name", "t",
            "--data-dir", str(self.root / f"data-{self.generation}"),
            "--listen-client-urls", client,
            "--advertise-client-urls", client,
            "--listen-peer-urls", peer,
            "--initial-advertise-peer-urls", peer,
            "--initial-cluster", f"t={peer}",
        ]  # fmt: skip

    def start(self, *, wipe: bool = False) -> None:
        """
        Start it (on its previous ports, if any) and wait until it serves requests.
        """
        assert self.process is None, "etcd is already running"
        if wipe:
            self.generation += 1
        self.starts += 1
        name = f"etcd-start{self.starts}"
        self.process = start_server(name, self._command, data_dir=self.root, port=self.port)
        self.port = self.process.port
        self._wait_healthy(10.0)

    def _wait_healthy(self, timeout: float) -> None:
        # Listening comes before a leader is elected; until then requests stall or fail.
        assert self.process is not None
        wait_for_http(
            self.process,
            f"{self.endpoint}/health",
            timeout,
            ready=lambda body: json.loads(body).get("health") == "true",
            state="healthy",
        )

    def stop(self) -> None:
        """
        Stop it gracefully (SIGTERM); its data directory stays.
        """
        if self.process is not None:
            self.process.stop()
            self.process = None

    def kill(self) -> None:
        """
        Kill it (SIGKILL): a crash; its data directory stays.
        """
        if self.process is not None:
            self.process.process.kill()
            self.process.process.wait(5.0)
            self.process = None


@pytest.fixture(scope="session")
def etcd_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdServer]:
    """
    An etcd on 127.0.0.1 for the whole session; tests must not stop it.

    Skips when ``etcd`` is missing (fails instead under ``RESILIENT_REQUIRE_SERVERS=1``).
    """
    server = EtcdServer(
        require_binary("etcd", package="etcd-server"), tmp_path_factory.mktemp("etcd")
    )
    server.start()
    try:
        yield server
    finally:
        server.kill()


@pytest.fixture
def etcd_private(tmp_path: Path) -> Iterator[EtcdServer]:
    """
    An etcd of this test's own, which it may stop, kill and start again.
    """
    server = EtcdServer(require_binary("etcd", package="etcd-server"), tmp_path)
    server.start()
    try:
        yield server
    finally:
        server.kill()
