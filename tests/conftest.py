"""
What every test needs, and nothing more: the `server` marker and `no_global_hooks`.

Server and application fixtures (Redis, etcd, Prometheus, `serve`, `tracer`) live in
tests/_redis.py, _etcd.py, _prometheus.py, _web.py and _tracing.py; the conftest of each
folder imports the ones its tests use, so the engine and policy tests run without redis,
aiohttp or the OpenTelemetry SDK imported. Tests that use a server fixture get the
`server` marker automatically (as well as any they set themselves), so
``pytest -m "not server"`` runs the rest without one.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from resilient._engine.hooks import global_hooks

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
