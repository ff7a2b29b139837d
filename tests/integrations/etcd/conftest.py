"""
Fixtures of the etcd tests: real etcd servers (`serve` and `tracer` come from above).
"""

from tests._etcd import etcd_private, etcd_server  # noqa: F401  # fixtures
