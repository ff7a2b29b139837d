"""
Fixtures of the KV example tests: etcd for discovery, Prometheus for its metrics, served
applications and in-memory tracing.
"""

from tests._etcd import etcd_server  # noqa: F401  # fixtures
from tests._prometheus import prometheus_server  # noqa: F401  # fixtures
from tests._tracing import tracer  # noqa: F401  # fixtures
from tests._web import serve  # noqa: F401  # fixtures
