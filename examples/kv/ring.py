"""
Consistent hashing with virtual nodes (Karger et al.; Dynamo section 4.2).

Each node owns `vnodes` points on a 64-bit ring, placed by BLAKE2b of ``<node>#<i>``,
so every process computes the same ring (Python's `hash()` is salted per process and
must never be used here). A key's preference list is the first N distinct nodes met
walking clockwise from the key's hash.
"""

from __future__ import annotations

import bisect
import hashlib
from collections.abc import Iterable

__all__ = ["Ring", "ring_hash"]

_SPACE = 1 << 64


def ring_hash(data: bytes) -> int:
    """
    A stable 64-bit position on the ring.
    """
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "big")


class Ring:
    """
    The ring of a fixed set of nodes.

    Args:
        nodes: The members' ids.
        vnodes: Points per node; more points spread ownership more evenly.

    Raises:
        ValueError: No nodes, a duplicate id, or `vnodes` < 1.
    """

    def __init__(self, nodes: Iterable[str], *, vnodes: int = 128) -> None:
        members = list(nodes)
        if not members:
            raise ValueError("Ring(nodes=[]): needs at least one node")
        if len(set(members)) != len(members):
            raise ValueError(f"Ring(nodes={members!r}): duplicate node ids")
        if vnodes < 1:
            raise ValueError(f"Ring(vnodes={vnodes!r}): must be >= 1")
        self.nodes: tuple[str, ...] = tuple(sorted(members))
        self.vnodes = vnodes
        points = sorted(
            (ring_hash(f"{node}#{i}".encode()), node) for node in self.nodes for i in range(vnodes)
        )
        self._hashes = [h for h, _ in points]
        self._owners = [node for _, node in points]

    def preference_list(self, key: bytes, n: int) -> tuple[str, ...]:
        """
        The first `n` distinct nodes clockwise from `key` (fewer if the ring is smaller).
        """
        n = min(n, len(self.nodes))
        start = bisect.bisect_right(self._hashes, ring_hash(key))
        found: list[str] = []
        size = len(self._owners)
        for step in range(size):
            node = self._owners[(start + step) % size]
            if node not in found:
                found.append(node)
                if len(found) == n:
                    break
        return tuple(found)

    def ownership(self) -> dict[str, float]:
        """
        Each node's share of the ring as primary owner (the shares sum to 1).
        """
        shares = dict.fromkeys(self.nodes, 0.0)
        previous = self._hashes[-1] - _SPACE
        for point, node in zip(self._hashes, self._owners, strict=True):
            shares[node] += (point - previous) / _SPACE
            previous = point
        return shares
