"""
Fixtures of the project tests: the docs snippets that talk to Redis get a real one.
"""

from tests._redis import redis_server  # noqa: F401  # fixtures
