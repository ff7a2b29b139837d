"""
Shared fixtures: real Redis, etcd and Prometheus servers, and a flushed Redis client.

Tests that use a server fixture get the `server` marker automatically (as well as any
they set themselves), so ``pytest -m "not server"`` runs the rest without one.
"""

from __future__ import annotations

import json
import signal
import time
import urllib.parse
import urllib.request
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis
from aiohttp import test_utils, web
from opentelemetry import propagate, trace
from opentelemetry.baggage.propagation import W3CBaggagePropagator
from opentelemetry.propagators.composite import CompositePropagator
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from yarl import URL

from resilient._engine.hooks import global_hooks
from tests._servers import (
    LOCALHOST,
    ServerProcess,
    ServerStartError,
    free_port,
    require_binary,
    running_server,
    start_server,
)
from tests._web import Serve

SERVER_FIXTURES = frozenset(
    {
        "redis_server",
        "redis_client",
        "redis_private",
        "etcd_server",
        "etcd_private",
        "prometheus_server",
    }
)
"""Fixtures that need a real server process; their tests are marked `server`."""


@dataclass(frozen=True, slots=True)
class RedisServer:
    """
    A running ``redis-server`` (no persistence, loopback only).

    Attributes:
        host: The address it listens on.
        port: Its TCP port.
        process: The server process.
    """

    host: str
    port: int
    process: ServerProcess

    @property
    def url(self) -> str:
        """
        ``redis://host:port/0``, for `redis.Redis.from_url` and for subprocesses.
        """
        return f"redis://{self.host}:{self.port}/0"

    def client(self) -> redis.Redis:
        """
        Return a new client for database 0 (the caller closes it).
        """
        return redis.Redis(host=self.host, port=self.port, db=0, socket_timeout=5.0)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """
    Mark every test that uses a server fixture with `server`.
    """
    for item in items:
        if SERVER_FIXTURES.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.server)


@pytest.fixture
def no_global_hooks() -> Iterator[None]:
    """
    Run a test with no global hooks, and fail it if it leaves one behind.
    """
    hooks = global_hooks()
    saved = hooks[:]
    hooks.clear()
    yield
    leaked = hooks[:]
    hooks[:] = saved
    assert leaked == [], f"test left global hooks behind: {leaked}"


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """
    A ``redis-server`` on 127.0.0.1 and a free port, for the whole session.

    Skips when ``redis-server`` is missing (fails instead under
    ``RESILIENT_REQUIRE_SERVERS=1``).
    """
    with running_server(
        "redis-server", _redis_command(), data_dir=tmp_path_factory.mktemp("redis")
    ) as process:
        yield RedisServer(process.host, process.port, process)


@pytest.fixture
def redis_private(tmp_path: Path) -> Iterator[RedisServer]:
    """
    A ``redis-server`` of this test's own, which it may freeze (SIGSTOP) and thaw.
    """
    with running_server("redis-server", _redis_command(), data_dir=tmp_path) as process:
        try:
            yield RedisServer(process.host, process.port, process)
        finally:
            process.process.send_signal(signal.SIGCONT)  # a frozen server can't stop


def _redis_command() -> Callable[[int, Path], list[str]]:
    binary = require_binary("redis-server", package="redis-server")

    def command(port: int, data_dir: Path) -> list[str]:
        return [
            binary,
            "--bind", LOCALHOST,
            "--port", str(port),
            "--save", "",
            "--appendonly", "no",
            "--dir", str(data_dir),
            "--daemonize", "no",
        ]  # fmt: skip

    return command


@pytest.fixture
def redis_client(redis_server: RedisServer) -> Iterator[redis.Redis]:
    """
    A client of `redis_server` whose database was flushed before the test.
    """
    client = redis_server.client()
    client.flushdb()
    try:
        yield client
    finally:
        client.close()


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
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                # Our own http:// URL, never a file: or custom scheme.
                url = f"{self.endpoint}/health"
                with urllib.request.urlopen(url, timeout=1.0) as answer:  # noqa: S310
                    if json.load(answer).get("health") == "true":
                        return
            except OSError:
                pass
            time.sleep(0.05)
        assert self.process is not None
        raise ServerStartError(
            f"etcd not healthy within {timeout:g}s:\n{self.process.output_tail()}"
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


@dataclass(frozen=True, slots=True)
class PrometheusServer:
    """
    A real Prometheus scraping one target every second (loopback only, temporary storage).

    Attributes:
        target: The ``host:port`` it scrapes (``/metrics``).
        process: The server process.
    """

    target: str
    process: ServerProcess

    @property
    def url(self) -> str:
        """
        ``http://127.0.0.1:<port>``.
        """
        return f"http://{self.process.address}"

    def query(self, promql: str) -> list[dict[str, object]]:
        """
        Evaluate an instant query through the HTTP API; return the result vector.

        Raises:
            AssertionError: Prometheus answered with an error.
        """
        url = f"{self.url}/api/v1/query?" + urllib.parse.urlencode({"query": promql})
        # Our own http:// URL on loopback, never a file: or custom scheme.
        with urllib.request.urlopen(url, timeout=5.0) as answer:  # noqa: S310
            body = json.load(answer)
        assert body.get("status") == "success", f"query {promql!r} failed: {body}"
        result: list[dict[str, object]] = body["data"]["result"]
        return result

    def wait_ready(self, timeout: float) -> None:
        """
        Return once ``/-/ready`` answers 200 (the TSDB is open and queries work).
        """
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"{self.url}/-/ready", timeout=1.0):  # noqa: S310
                    return
            except OSError:
                time.sleep(0.05)
        raise ServerStartError(
            f"prometheus not ready within {timeout:g}s:\n{self.process.output_tail()}"
        )


def prometheus_config(target: str) -> str:
    """
    A config with one job scraping `target` every second, and nothing else.

    No alerting, rule files, remote write or service discovery: Prometheus reaches
    nothing but `target`.
    """
    return (
        "global:\n"
        "  scrape_interval: 1s\n"
        "  scrape_timeout: 1s\n"
        "  evaluation_interval: 1s\n"
        "scrape_configs:\n"
        "  - job_name: resilient\n"
        "    static_configs:\n"
        f"      - targets: [{json.dumps(target)}]\n"
    )


@pytest.fixture
def prometheus_server(tmp_path: Path) -> Iterator[Callable[[str], PrometheusServer]]:
    """
    Start a Prometheus that scrapes ``http://<target>/metrics``: ``prometheus_server(target)``.

    Each server gets its own config, storage and port under the test's temp dir, and is
    stopped after the test. Skips when ``prometheus`` is missing (fails instead under
    ``RESILIENT_REQUIRE_SERVERS=1``).
    """
    binary = require_binary("prometheus", package="prometheus")
    started: list[ServerProcess] = []

    def start(target: str) -> PrometheusServer:
        root = tmp_path / f"prometheus-{len(started)}"
        root.mkdir()
        config = root / "prometheus.yml"
        config.write_text(prometheus_config(target))

        def command(port: int, data_dir: Path) -> list[str]:
            return [
                binary,
                f"--config.file={config}",
                f"--storage.tsdb.path={data_dir / 'tsdb'}",
                f"--web.listen-address={LOCALHOST}:{port}",
                # The Debian defaults point at /etc/prometheus; keep the run self-contained.
                f"--web.console.templates={data_dir}",
                f"--web.console.libraries={data_dir}",
                "--log.level=warn",
            ]

        process = start_server("prometheus", command, data_dir=root, startup_timeout=20.0)
        started.append(process)
        server = PrometheusServer(target, process)
        server.wait_ready(20.0)
        return server

    try:
        yield start
    finally:
        for process in started:
            process.stop()


# -- aiohttp applications and tracing, shared by the integration tests -----------------


@pytest.fixture
async def serve() -> AsyncIterator[Serve]:
    """
    Serve applications on 127.0.0.1 and ephemeral ports; stop them afterwards.
    """
    servers: list[test_utils.TestServer] = []

    async def start(app: web.Application) -> URL:
        server = test_utils.TestServer(app, host=LOCALHOST)
        servers.append(server)
        await server.start_server()
        return server.make_url("/")

    yield start
    for server in servers:
        await server.close()


@pytest.fixture
def tracer() -> Iterator[tuple[trace.Tracer, InMemorySpanExporter]]:
    """
    A tracer of an SDK `TracerProvider` recording into memory, and W3C propagation.

    The provider is not installed globally (a span made current with its tracer is all
    injection needs), so there is nothing global to undo but the propagator, which is
    pinned to tracecontext + baggage for the test and restored afterwards.
    """
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    before = propagate.get_global_textmap()
    propagate.set_global_textmap(
        CompositePropagator([TraceContextTextMapPropagator(), W3CBaggagePropagator()])
    )
    try:
        yield provider.get_tracer(__name__), exporter
    finally:
        propagate.set_global_textmap(before)
        provider.shutdown()
