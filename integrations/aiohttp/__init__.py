"""
aiohttp integration.

Resilient client middleware, server middleware, health and metrics routes.

    session = aiohttp.ClientSession(middlewares=[ResilienceMiddleware()])
    app = web.Application(middlewares=[resilience_middleware()])

Needs the ``aiohttp`` extra: ``pip install "resilient[aiohttp]"``.
"""

from __future__ import annotations

import importlib.util

if importlib.util.find_spec("aiohttp") is None:  # pragma: no cover - needs an env without it
    raise ImportError(
        "resilient.integrations.aiohttp needs aiohttp >= 3.12: pip install 'resilient[aiohttp]'"
    )

from .._public import publish
from ._client import (
    DEFAULT_MAX_KEYS,
    IDEMPOTENT_METHODS,
    ResilienceMiddleware,
    UnhealthyResponse,
    default_policy,
    is_failure_status,
    parse_retry_after,
)
from ._discovery_client import DiscoveryClient, DiscoveryRequest
from ._health_routes import add_health_routes, health_routes, report_json
from ._propagation import DEADLINE_HEADER, PRIORITY_HEADER, parse_deadline
from ._server import add_metrics_route, resilience_middleware

__all__ = [
    "DEADLINE_HEADER",
    "DEFAULT_MAX_KEYS",
    "IDEMPOTENT_METHODS",
    "PRIORITY_HEADER",
    "DiscoveryClient",
    "DiscoveryRequest",
    "ResilienceMiddleware",
    "UnhealthyResponse",
    "add_health_routes",
    "add_metrics_route",
    "default_policy",
    "health_routes",
    "is_failure_status",
    "parse_deadline",
    "parse_retry_after",
    "report_json",
    "resilience_middleware",
]

publish(globals())  # public names show this path, not their private modules
