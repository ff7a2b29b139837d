"""
A real Prometheus for the tests that need one (tests/integrations/prometheus, tests/kv).
"""

from __future__ import annotations

import json
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests._servers import LOCALHOST, ServerProcess, require_binary, start_server, wait_for_http

__all__ = ["PrometheusServer", "prometheus_config", "prometheus_server"]


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
        wait_for_http(self.process, f"{self.url}/-/ready", timeout)


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
