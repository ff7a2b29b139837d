"""
The circuit breaker: one state machine, its outcome accounting, and where its state lives.

    machine.py          CircuitBreaker: admission, outcomes, transitions, events
    settings.py         its parameters checked and turned into a `BreakerSpec`
    accounting.py       how closed-state outcomes are counted (consecutive, windows)
    store.py            the state-store protocol (`BreakerStore`) and its messages
    link.py             the breaker's bounded, logged round trips to a store
    redis_store.py      RedisBreakerStore (lua.py: its script)
    pybreaker_store.py  pybreaker storages as a store (the optional extra)
"""

__all__: list[str] = []
