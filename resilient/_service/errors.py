"""
The errors of the service layer (discovery, balancing, the endpoint pool).

They join the tree drawn in `_engine/errors.py` under `RejectedError`, so one
``except ResilienceError`` still catches them.
"""

from __future__ import annotations

from .._engine.errors import RejectedError

__all__ = ["NoHealthyInstanceError"]


class NoHealthyInstanceError(RejectedError):
    """
    No instance of the service could take the call: none known, or all ejected.

    Attributes:
        service: The service name.
        known: Instances known.
        ejected: Of those, how many were ejected (breaker open).
    """

    def __init__(self, service: str, known: int, ejected: int) -> None:
        self.service = service
        self.known = known
        self.ejected = ejected
        super().__init__(f"no healthy instance of {service!r}: {known} known, {ejected} ejected")

    def __reduce__(self) -> tuple[type[NoHealthyInstanceError], tuple[str, int, int]]:
        return (type(self), (self.service, self.known, self.ejected))
