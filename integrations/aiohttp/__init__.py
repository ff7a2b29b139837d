"""
aiohttp integration: resilient client middleware, server middleware, health and metrics
routes, and a discovery-aware client.

Needs the ``aiohttp`` extra: ``pip install "resilient[aiohttp]"``.
"""

from __future__ import annotations

try:
    import aiohttp as _aiohttp
except ImportError as exc:  # pragma: no cover - exercised in a subprocess test
    raise ImportError(
        "resilient.integrations.aiohttp needs aiohttp >= 3.12: pip install 'resilient[aiohttp]'"
    ) from exc

__all__: list[str] = []
