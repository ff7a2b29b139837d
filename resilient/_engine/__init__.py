"""
The engine: what every policy is built on.

The policy contract (`policy`), hooks and call listeners (`hooks`), composition
(`pipeline`), events, errors, the clock, parameter checks, call-scoped context (the
deadline and `no_retries`) and the bucketed sliding window.

Layer rule (checked by ``lint-imports``, see docs/architecture.md): the engine imports
only the standard library, tenacity and itself; never `_policies` or `_service`.
"""

__all__: list[str] = []
