"""
The policies: retry, timeout, bulkhead, breaker, rate limiters, hedging, fallback, ...

One module per policy, each a `Policy` subclass implementing `_run` (docs/extending.md).
Layer rule (checked by ``lint-imports``): policies import `_engine` and each other, never
`_service`.
"""

__all__: list[str] = []
