"""
The command-line options every benchmark shares: run size, seed and report paths.
"""

from __future__ import annotations

import argparse
import tempfile
from collections.abc import Mapping
from pathlib import Path

__all__ = ["add_run_options", "report_path", "run_size"]


def add_run_options(
    parser: argparse.ArgumentParser,
    full: Mapping[str, int],
    *,
    count: str = "calls",
    default_md: Path,
) -> None:
    """
    Add --quick, --rounds, --<count>, --warmup, --seed, --md and --json to `parser`.
    """
    parser.add_argument("--quick", action="store_true", help="smoke run; report to a temp dir")
    parser.add_argument("--rounds", type=int, help=f"recorded rounds (default {full['rounds']})")
    parser.add_argument(f"--{count}", type=int, help=f"{count} per batch (default {full[count]})")
    parser.add_argument("--warmup", type=int, help=f"discarded rounds (default {full['warmup']})")
    parser.add_argument("--seed", type=int, default=1, help="shuffle seed (default 1)")
    parser.add_argument("--md", type=Path, help=f"markdown report (default {default_md})")
    parser.add_argument("--json", type=Path, help="also write raw samples and figures here")


def run_size(
    parser: argparse.ArgumentParser,
    ns: argparse.Namespace,
    full: Mapping[str, int],
    quick: Mapping[str, int],
    *,
    count: str = "calls",
) -> tuple[int, int, int]:
    """
    Rounds, batch size and warm-up rounds: given values, else the quick or full ones.

    Exits through `parser.error` when they are out of range.
    """
    base = quick if ns.quick else full
    rounds = base["rounds"] if ns.rounds is None else ns.rounds
    size = base[count] if getattr(ns, count) is None else getattr(ns, count)
    warmup = base["warmup"] if ns.warmup is None else ns.warmup
    if rounds < 1 or size < 1 or warmup < 0:
        parser.error(f"--rounds and --{count} must be >= 1, --warmup >= 0")
    return rounds, size, warmup


def report_path(given: Path | None, *, quick: bool, default: Path) -> Path:
    """
    Where the report goes: as given, else a temp dir for a quick run (so a smoke run
    never overwrites the committed figures), else `default`.
    """
    if given is not None:
        return given
    if quick:
        return Path(tempfile.mkdtemp(prefix="resilient-bench-")) / "benchmarks.md"
    return default
