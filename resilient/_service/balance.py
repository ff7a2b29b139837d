"""
Load balancing: which of the eligible instances takes the next call.

Each balancer picks from the candidates it is given (the pool has already removed the
ejected ones) and may read each instance's calls in flight:

- `RoundRobin`: in turn; the default.
- `RandomChoice`: uniformly at random.
- `LeastInFlight`: the one with the fewest calls in flight (ties in turn).
- `PowerOfTwoChoices`: two at random, the less loaded of them (Mitzenmacher's "power of
  two choices"; what Envoy and Finagle use by default): nearly the balance of
  least-in-flight without herding every caller onto the same idle instance.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Callable, Sequence
from typing import Protocol, runtime_checkable

from .discovery import Instance

__all__ = ["Balancer", "LeastInFlight", "PowerOfTwoChoices", "RandomChoice", "RoundRobin"]

InFlight = Callable[[Instance], int]


@runtime_checkable
class Balancer(Protocol):
    """
    Chooses one instance among non-empty candidates.
    """

    def pick(self, candidates: Sequence[Instance], in_flight: InFlight) -> Instance:
        """
        Return one of `candidates` (never empty); `in_flight(i)` is i's current load.
        """


class RoundRobin:
    """
    Each instance in turn.
    """

    __slots__ = ("_counter",)

    def __init__(self) -> None:
        self._counter = itertools.count()

    def pick(self, candidates: Sequence[Instance], in_flight: InFlight) -> Instance:  # noqa: ARG002
        """
        Return the next instance in turn.
        """
        return candidates[next(self._counter) % len(candidates)]


class RandomChoice:
    """
    Uniformly at random.

    Args:
        rng: A `random.Random` to draw from (seed it in tests).
    """

    __slots__ = ("_rng",)

    def __init__(self, rng: random.Random | None = None) -> None:
        self._rng = rng or random.Random()  # noqa: S311  # load spreading, not security

    def pick(self, candidates: Sequence[Instance], in_flight: InFlight) -> Instance:  # noqa: ARG002
        """
        Return a random instance.
        """
        return self._rng.choice(candidates)


class LeastInFlight:
    """
    The instance with the fewest calls in flight; ties broken in turn.
    """

    __slots__ = ("_counter",)

    def __init__(self) -> None:
        self._counter = itertools.count()

    def pick(self, candidates: Sequence[Instance], in_flight: InFlight) -> Instance:
        """
        Return the least loaded instance.
        """
        start = next(self._counter) % len(candidates)
        rotated = [*candidates[start:], *candidates[:start]]
        return min(rotated, key=in_flight)


class PowerOfTwoChoices:
    """
    Two instances at random; the less loaded one.

    Args:
        rng: A `random.Random` to draw from (seed it in tests).
    """

    __slots__ = ("_rng",)

    def __init__(self, rng: random.Random | None = None) -> None:
        self._rng = rng or random.Random()  # noqa: S311  # load spreading, not security

    def pick(self, candidates: Sequence[Instance], in_flight: InFlight) -> Instance:
        """
        Return the less loaded of two random instances.
        """
        if len(candidates) == 1:
            return candidates[0]
        first, second = self._rng.sample(list(candidates), 2)
        return first if in_flight(first) <= in_flight(second) else second
