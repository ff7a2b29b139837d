"""Benchmarks for ``resilient``.

Run ``python -m benchmarks.overhead --help`` from the repository root; see
``benchmarks/README.md`` for what is measured and how.
"""
