"""
Fixtures of the integration tests: aiohttp applications on loopback, in-memory tracing.
"""

from tests._tracing import tracer  # noqa: F401  # fixtures
from tests._web import serve  # noqa: F401  # fixtures
