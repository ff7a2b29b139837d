"""
Fixtures of the Prometheus tests: a real Prometheus scraping a target of the test.
"""

from tests._prometheus import prometheus_server  # noqa: F401  # fixtures
