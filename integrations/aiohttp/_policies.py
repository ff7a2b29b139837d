"""
The policies of `ResilienceMiddleware`, one per key, in a bounded cache.

A factory builds a key's policy on first use. Keys are unbounded in general (an origin
per host a crawler visits, a route per id in a path), so the cache holds at most
``max_keys`` policies and drops the least recently used *idle* one to make room. A
policy is idle when no request of its key is in flight and no circuit breaker in it is
open with time left on its ``reset_timeout``: dropping a busy policy would split one
key's calls between two breakers and bulkheads, and dropping a breaker still open would
send traffic to a host known to be down. (An open breaker nobody calls again never
closes, nor does a half-open one; once it would let a probe through, a fresh one loses
only the probe limit, and without that the cache would keep every host that ever went
down.) When more keys than ``max_keys`` are busy or open, the cache holds them all and
shrinks back as they settle.
Policies from a mapping are fixed: never dropped.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterator, Mapping
from typing import Any

from resilient import CircuitBreaker, CircuitState, Pipeline, Policy
from resilient.validation import check_int

__all__ = ["DEFAULT_MAX_KEYS", "PolicyCache", "PolicyEntry"]

DEFAULT_MAX_KEYS = 1000
"""Policies a middleware's factory keeps at most, idle ones dropped least recently used."""


_SCAN = 16  # entries one shrinking pass looks at, beyond the room it must make


class PolicyEntry:
    """
    A key's policy in the cache, and how many of its requests are in flight.

    The caller counts its requests in `in_flight` while they run (the cache keeps a
    busy key's policy), from a lookup with nothing awaited since, and calls
    `PolicyCache.shrink` after one ends while the cache is `overfull`.
    """

    __slots__ = ("in_flight", "key", "policy", "run")

    def __init__(self, policy: Policy, key: str) -> None:
        self.policy = policy
        self.key = key
        self.in_flight = 0
        # The caller's `policy.runner(...)`, made on the key's first request.
        self.run: Callable[..., Awaitable[Any]] | None = None


def _checked(policy: object, what: str) -> Policy:
    # At construction (or a key's first use), not as an AttributeError in every request.
    if not isinstance(policy, Policy):
        raise TypeError(f"ResilienceMiddleware: {what} is {policy!r}, not a Policy")
    return policy


def _breakers(policy: Policy) -> Iterator[CircuitBreaker]:
    if isinstance(policy, CircuitBreaker):
        yield policy
    elif isinstance(policy, Pipeline):
        for layer in policy.policies:
            yield from _breakers(layer)


def _settled(breaker: CircuitBreaker) -> bool:
    # Half-open with nothing in flight (`_idle` checks that first) is settled too: its
    # probe ended, yet it stays half-open until the next call (success_threshold > 1,
    # a probe cancelled or refused), which a key never called again never makes.
    return breaker.state is not CircuitState.OPEN or not breaker.retry_in()


def _idle(entry: PolicyEntry) -> bool:
    return entry.in_flight == 0 and all(_settled(b) for b in _breakers(entry.policy))


class PolicyCache:
    """
    Policies by key: fixed ones, then built ones (at most `max_keys` when idle).

    Args:
        factory: Builds a key's policy (None: only `fixed` and `default`).
        fixed: Policies by key, never dropped.
        default: The policy of keys in neither (with no factory).
        max_keys: How many built policies to keep, >= 1.

    Raises:
        TypeError: `max_keys` is not an int, or a policy is not a `Policy` (also when
            the factory returns one that is not, at the key's first use).
        ValueError: `max_keys` < 1.
    """

    __slots__ = (
        "_built",
        "_default",
        "_factory",
        "_fixed",
        "last",
        "max_keys",
        "overfull",
    )

    def __init__(
        self,
        factory: Callable[[str], Policy] | None,
        fixed: Mapping[str, Policy],
        default: Policy | None,
        max_keys: int,
    ) -> None:
        self.max_keys = check_int("ResilienceMiddleware", "max_keys", max_keys, minimum=1)
        self._factory = factory
        self._fixed = {
            key: PolicyEntry(_checked(policy, f"policies[{key!r}]"), key)
            for key, policy in fixed.items()
        }
        self._default = (  # never dropped
            PolicyEntry(_checked(default, "default"), "") if default is not None else None
        )
        self._built: OrderedDict[str, PolicyEntry] = OrderedDict()
        # The entry `get_entry` returned last for its own key (a built or fixed one), while
        # nothing moved in the LRU order since: a built one is at the end of `_built`, and
        # the caller may reuse it for an equal key without asking (most requests go to the
        # host of the one before).
        self.last: PolicyEntry | None = None
        # More built policies than `max_keys`: keys busy (or open) when the cache filled
        # up, to drop once they settle.
        self.overfull = False

    def __len__(self) -> int:
        return len(self._fixed) + len(self._built)

    def get(self, key: str) -> Policy | None:
        """
        The policy of `key`, built on first use (None: no policy).
        """
        entry = self._entry(key)
        return entry.policy if entry is not None else None

    def get_entry(self, key: str) -> PolicyEntry | None:
        """
        The entry of `key`, its policy built on first use (None: no policy).

        Count a request in its `PolicyEntry.in_flight` before awaiting anything, so the
        cache keeps the policy while it runs.
        """
        return self._entry(key)

    def in_flight(self) -> int:
        """
        Requests in flight, all keys together.
        """
        entries = [*self._fixed.values(), *self._built.values()]
        if self._default is not None:
            entries.append(self._default)
        return sum(entry.in_flight for entry in entries)

    def shrink(self) -> None:
        """
        Drop idle policies while there are more than `max_keys` (a request just ended).
        """
        self._shrink()
        self.overfull = len(self._built) > self.max_keys

    def _entry(self, key: str) -> PolicyEntry | None:
        entry = self._built.get(key)
        if entry is not None:
            if entry is not self.last:  # else at the end already (see `last`)
                self._built.move_to_end(key)
                self.last = entry
            return entry
        if self._factory is None:  # a mapping: fixed policies only
            fixed = self._fixed.get(key)
            if fixed is None:
                return self._default  # not `last`: its key is not the one asked for
            self.last = fixed
            return fixed
        entry = PolicyEntry(_checked(self._factory(key), f"policies({key!r})"), key)
        if len(self._built) >= self.max_keys:
            self._shrink(room=1)  # before adding: the new key is never the one dropped
        self._built[key] = entry
        self.last = entry
        self.overfull = len(self._built) > self.max_keys
        return entry

    def _shrink(self, room: int = 0) -> None:
        # Oldest first; a busy entry goes to the back, so the next pass starts past it.
        # A pass looks at a few entries, not all: with thousands of keys busy (or open)
        # past the cap, a full scan per request would cost O(keys) each, O(keys^2) in all.
        # Passes at every request's start and end still go round them all as they settle.
        for _ in range(min(len(self._built), room + _SCAN)):
            if len(self._built) + room <= self.max_keys:
                return
            key, entry = next(iter(self._built.items()))
            self.last = None  # the order changes: the next request asks again
            if _idle(entry):
                del self._built[key]
            else:
                self._built.move_to_end(key)
