"""
Writing a benchmark's figures into docs/benchmarks.md.

Each benchmark owns one region of the file, between ``<!-- name:begin -->`` and
``<!-- name:end -->``; regenerating it replaces that region and keeps the rest.
"""

from __future__ import annotations

import shlex
from collections.abc import Sequence

__all__ = ["command_line", "merge_region"]


def merge_region(
    existing: str | None,
    region: str,
    *,
    begin: str,
    end: str,
    preamble: str = "# Benchmarks\n\n",
    after: str | None = None,
) -> str:
    """
    Replace the marked region of `existing`, or add it; keep everything else.

    A new region goes right after the marker `after` when there is one (a ``-cpu`` region
    beside its wall-time sibling), else at the end.

    Raises:
        ValueError: Only one of the markers is there, or they are out of order.
    """
    if existing is None:
        return preamble + region
    start, stop = existing.find(begin), existing.find(end)
    if start == -1 and stop == -1:
        anchor = -1 if after is None else existing.find(after)
        if anchor != -1:
            cut = anchor + len(after)  # type: ignore[arg-type]  # found, so not None
            return existing[:cut] + "\n\n" + region.rstrip("\n") + existing[cut:]
        return existing.rstrip("\n") + "\n\n" + region
    if start == -1 or stop == -1 or stop < start:
        raise ValueError(f"unbalanced {begin} / {end} markers")
    return existing[:start] + region.rstrip("\n") + existing[stop + len(end) :]


def command_line(module: str, argv: Sequence[str]) -> str:
    """
    The command as typed from the repository root.
    """
    return shlex.join(["python", "-m", module, *argv])
