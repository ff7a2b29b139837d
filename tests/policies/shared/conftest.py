"""
Fixtures of the policies whose state is shared between processes: the breaker and the
rate limiter on a real Redis. In a folder of their own, so the other policy tests run
without redis (nor the OpenTelemetry SDK it imports) loaded.
"""

from tests._redis import (  # noqa: F401  # fixtures
    aclient,
    redis_client,
    redis_private,
    redis_server,
)
