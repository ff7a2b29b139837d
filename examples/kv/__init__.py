"""
A sharded, replicated, durable key-value service built on `resilient`.

Run ``python -m examples.kv --help``; the design is in ``examples/kv/README.md``.
"""

from .client import KVClient, KVError

__all__ = ["KVClient", "KVError"]
