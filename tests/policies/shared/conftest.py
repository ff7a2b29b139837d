"""
Fixtures of the policy tests: the shared breaker and rate limiter run on a real Redis.
"""

from tests._redis import redis_client, redis_private, redis_server  # noqa: F401  # fixtures
