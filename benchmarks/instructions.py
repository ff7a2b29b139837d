"""
Instructions per call under valgrind: a measure that doesn't move with the machine.

    python -m benchmarks.instructions benchmarks.middleware             # every case, 3 runs
    python -m benchmarks.instructions benchmarks.middleware --case "bare ClientSession" \\
        --case "aiohttp-retry RetryClient" --runs 3 --low 1000 --high 4000
    python -m benchmarks.instructions benchmarks.middleware --cache-sim   # and L2 misses

Each case of a timing benchmark (its module's ``cases()``) runs in a process of its own
under ``valgrind --tool=cachegrind --cache-sim=no``, twice: once making `--low` calls after
building the case, once `--high`. The difference of the two programs' instruction counts
over the difference of their calls is what one call executes; start-up, imports, the
case's own server and its building cancel out. The first case named is the base the
others' overheads are taken against. In run N (of `--runs`) every program gets
``PYTHONHASHSEED=N``: string hashes, and with them the layout of every dict and set,
are then the same in a case's two programs (start-up cancels exactly) and in every case
of that run (cases are compared on equal terms); left random, they moved a case's count
by a thousand instructions or more from one invocation to the next. Runs agree within
a few hundred instructions of a ~330,000-instruction local GET, where a timing's
run-to-run noise is a few percent: a change of 1% in what a call executes shows.
Instructions are not time (a cache miss costs more than an add; the timings stay the
figures the targets judge), but they rank changes to Python code well: each bytecode
executed costs tens of them.

With ``--cache-sim`` cachegrind also simulates caches of fixed sizes, those of the machines
the figures in docs/benchmarks.md come from (AMD EPYC: 32 KiB L1 for instructions and for
data, a 512 KiB L2 per core, simulated as the last level), and each case gets a second
figure: its L2 misses per call, instructions and data alike. They explain what instructions
don't: a request's overhead costs more per instruction than the GET it wraps, because
between two requests the GET's own work evicts the middleware's code and objects from L2,
and each line read again from L3 or memory costs tens of nanoseconds
(docs/benchmarks.md, "What a request's overhead is made of").

Needs valgrind (``apt-get install valgrind``). Each program takes 20-60 s on this kind of
machine, most of it start-up under valgrind, and a case runs two per run: the defaults
(3 runs, 1,000 and 4,000 calls) take 2-5 minutes per case on an idle machine, ``--cache-sim``
about twice that, so the middleware's eleven cases take most of an hour; name the cases
you need. A line on stderr says which program runs.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import os
import re
import shutil
import statistics
import subprocess
import sys
from collections.abc import Sequence

from benchmarks import _perf
from benchmarks._perf import Case

__all__ = ["instructions_per_call", "main", "parse_misses", "parse_total", "worker_environment"]

# cachegrind's summary line: "==123== I   refs:      1,234,567"
_TOTAL = re.compile(r"I\s+refs:\s+([\d,]+)")
# With --cache-sim=yes: "==123== LL misses:      12,345  ( 10,000 rd + 2,345 wr)"
_LL_MISSES = re.compile(r"LL misses:\s+([\d,]+)")
# This machine's caches (AMD EPYC): L1i and L1d 32 KiB 8-way, L2 512 KiB 8-way per core,
# 64-byte lines. The L2 is simulated as the last level: the L3 is shared with the
# server process and other tenants.
_CACHES = ("--I1=32768,8,64", "--D1=32768,8,64", "--LL=524288,8,64")


def parse_total(summary: str) -> int:
    """
    The program's instruction count from cachegrind's summary on stderr.

    Raises:
        ValueError: No summary line in `summary` (valgrind failed, or isn't cachegrind).
    """
    match = _TOTAL.search(summary)
    if match is None:
        raise ValueError(f"no 'I refs' line in valgrind's output: {summary[-500:]!r}")
    return int(match.group(1).replace(",", ""))


def parse_misses(summary: str) -> int:
    """
    The program's last-level cache misses from cachegrind's summary (``--cache-sim=yes``).

    Raises:
        ValueError: No "LL misses" line in `summary` (the caches weren't simulated).
    """
    match = _LL_MISSES.search(summary)
    if match is None:
        raise ValueError(f"no 'LL misses' line in valgrind's output: {summary[-500:]!r}")
    return int(match.group(1).replace(",", ""))


def instructions_per_call(low: tuple[int, int], high: tuple[int, int]) -> float:
    """
    Instructions one call executes, from two programs' (calls, instructions).

    Raises:
        ValueError: The two made the same number of calls.
    """
    (calls_low, total_low), (calls_high, total_high) = low, high
    if calls_high == calls_low:
        raise ValueError("the two programs must make different numbers of calls")
    return (total_high - total_low) / (calls_high - calls_low)


def _case(module: str, name: str) -> Case:
    cases: Sequence[Case] = importlib.import_module(module).cases()
    for case in cases:
        if case.name == name:
            return case
    known = ", ".join(repr(c.name) for c in cases)
    raise SystemExit(f"benchmarks.instructions: {module} has no case {name!r} (it has {known})")


def _check_names(module: str, names: Sequence[str]) -> None:
    """
    Every name a case of `module`, before anything runs under valgrind.

    Checked here, not only in the worker: a misspelt later name would otherwise end the
    run after the cases before it had taken minutes, its error inside valgrind's output.
    """
    for name in names:
        _case(module, name)


async def _calls(case: Case, count: int) -> None:
    try:
        fn = await _perf.built(case)
        for _ in range(count):
            await fn()
    finally:
        await _perf.close_all()


def _worker(module: str, name: str, count: int) -> None:
    asyncio.run(_calls(_case(module, name), count))


def worker_environment(run: int) -> dict[str, str]:
    """
    The environment of run `run`'s programs: this one's, string hashing seeded with `run`.
    """
    return {**os.environ, "PYTHONHASHSEED": str(run)}


def _count(  # noqa: PLR0917  # one program's whole description
    valgrind: str, module: str, name: str, calls: int, run: int, cache_sim: bool = False
) -> tuple[int, int | None]:
    # (instructions, L2 misses or None without --cache-sim) of one program.
    caches = ["--cache-sim=yes", *_CACHES] if cache_sim else ["--cache-sim=no"]
    argv = [
        valgrind, "--tool=cachegrind", *caches, "--cachegrind-out-file=/dev/null",
        sys.executable, "-m", "benchmarks.instructions", "--worker", module, name, str(calls),
    ]  # fmt: skip
    print(f"run {run}: {name!r}, {calls} calls", file=sys.stderr, flush=True)
    done = subprocess.run(
        argv, capture_output=True, text=True, check=False, env=worker_environment(run)
    )
    if done.returncode != 0:
        raise SystemExit(f"benchmarks.instructions: {name!r} failed:\n{done.stderr[-2000:]}")
    return parse_total(done.stderr), parse_misses(done.stderr) if cache_sim else None


def _spread(values: Sequence[float]) -> str:
    middle = statistics.median(values)
    return f"{middle:,.0f} ({min(values):,.0f}-{max(values):,.0f})"


def main(argv: Sequence[str] | None = None) -> int:
    """The command line (see the module docstring)."""
    args = _parser().parse_args(argv)
    if args.worker:
        module, name, count = args.worker
        _worker(module, name, int(count))
        return 0
    valgrind = shutil.which("valgrind")
    if valgrind is None:
        raise SystemExit("benchmarks.instructions: needs valgrind (apt-get install valgrind)")
    if not 0 <= args.low < args.high:
        raise SystemExit(f"--low {args.low} must be >= 0 and below --high {args.high}")
    if args.runs < 1:
        raise SystemExit(f"--runs {args.runs}: at least 1")
    module = importlib.import_module(args.module)
    names = args.case or [case.name for case in _perf.available(module.cases())[0]]
    _check_names(args.module, names)
    per_call: dict[str, list[float]] = {name: [] for name in names}
    misses: dict[str, list[float]] = {name: [] for name in names}
    for run in range(1, args.runs + 1):
        for name in names:  # one case after another: nothing here depends on the load
            low = _count(valgrind, args.module, name, args.low, run, args.cache_sim)
            high = _count(valgrind, args.module, name, args.high, run, args.cache_sim)
            per_call[name].append(instructions_per_call((args.low, low[0]), (args.high, high[0])))
            if low[1] is not None and high[1] is not None:
                misses[name].append(instructions_per_call((args.low, low[1]), (args.high, high[1])))
    _table("instructions", per_call, args.runs, names[0])
    if args.cache_sim:
        _table("L2 misses", misses, args.runs, names[0])
    return 0


def _table(what: str, per_call: dict[str, list[float]], runs: int, base_name: str) -> None:
    base = per_call[base_name]
    print(f"{what} per call, median (min-max) of {runs} runs; overhead against {base_name!r}")
    for name, values in per_call.items():
        extra = [v - b for v, b in zip(values, base, strict=True)]
        line = f"{_spread(values):>32}"
        if name != base_name:
            line += f"  {'+' + _spread(extra):>28}"
        print(f"{line}  {name}")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.instructions",
        description="Instructions per call of a timing benchmark's cases, under valgrind.",
    )
    parser.add_argument(
        "module",
        nargs="?",
        default="benchmarks.middleware",
        help="a benchmark module with cases() (default: the middleware's)",
    )
    parser.add_argument(
        "--case",
        action="append",
        help="a case's name (repeatable; default: all; the first is the base)",
    )
    parser.add_argument(
        "--cache-sim",
        action="store_true",
        help="also simulate this machine's caches: L2 misses per call (about twice as slow)",
    )
    parser.add_argument(
        "--runs", type=int, default=3, help="runs, each seeding string hashing (default: 3)"
    )
    parser.add_argument(
        "--low", type=int, default=1000, help="calls of the shorter program (default: 1000)"
    )
    parser.add_argument(
        "--high", type=int, default=4000, help="calls of the longer program (default: 4000)"
    )
    parser.add_argument(
        "--worker", nargs=3, metavar=("MODULE", "CASE", "CALLS"), help=argparse.SUPPRESS
    )
    return parser


if __name__ == "__main__":
    raise SystemExit(main())
