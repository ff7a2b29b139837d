"""
Where a benchmark's report goes.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

__all__ = ["report_path"]


def report_path(given: Path | None, *, quick: bool, default: Path) -> Path:
    """
    As given, else a temp dir for a quick run (so a smoke run never overwrites the
    committed figures), else `default`.
    """
    if given is not None:
        return given
    if quick:
        return Path(tempfile.mkdtemp(prefix="resilient-bench-")) / "benchmarks.md"
    return default
