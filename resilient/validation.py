"""
Parameter checks for code that extends `resilient`: your own policies, integrations.

The policies check their parameters with these, so yours can fail the same way: early, at
construction, with an error naming the owner, the parameter and the value::

    from resilient.validation import check_int, check_seconds

    class Debounce(Policy):
        def __init__(self, seconds: float, *, burst: int = 1) -> None:
            super().__init__(name=None, clock=None, hooks=None)
            self.seconds = check_seconds("Debounce", "seconds", seconds)
            self.burst = check_int("Debounce", "burst", burst, minimum=1)

    Debounce(-1)  # ValueError: Debounce(seconds=-1): seconds must be finite and > 0

Each function returns the checked value (as a float for seconds and fractions) and raises
`TypeError` for a value of the wrong type, `ValueError` for one out of range.
"""

from __future__ import annotations

from ._engine.public import publish
from ._engine.validate import check_fraction, check_int, check_seconds

__all__ = ["check_fraction", "check_int", "check_seconds"]

publish(globals())
