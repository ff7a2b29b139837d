"""
The service layer: discovery, health, balancing and the endpoint pool.

It composes policies (a breaker per instance, timeouts around health checks) into the
tools a client of a replicated service needs. Layer rule (checked by ``lint-imports``):
it imports `_engine` and `_policies`; nothing below imports it.
"""

__all__: list[str] = []
