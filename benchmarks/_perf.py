"""
The `Case` every timing benchmark is made of, and two ways to time cases: through pyperf
(`main`: worker processes, calibration, JSON for `benchmarks.report` and pyperf's own
``stats`` / ``compare_to``), or with ``--quick`` in this process, in interleaved,
shuffled rounds and without pyperf (`interleave`: the smoke tests, `benchmarks.revisions`).
Either way a process builds one event loop (uvloop's with ``--uvloop``), builds and checks
each case inside it, and times sequential batches with gc collected before, off during.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import importlib.util
import inspect
import random
import statistics
import sys
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from itertools import repeat
from pathlib import Path
from typing import Any

from benchmarks import report
from benchmarks._cli import report_path

AsyncFn = Callable[[], Awaitable[object]]
Timer = Callable[[Any, int], Awaitable[float]]
NOOP_RESULT = 42
"""What `noop` returns; a case's function must return it (a wrapper that lost it fails)."""


async def noop() -> int:
    """The function every case wraps: returns at once, never fails."""
    return NOOP_RESULT


def now() -> float:
    """The clock the timers read: wall time, or the process' CPU time with ``--cpu``."""
    return _clock()


async def sequential(fn: AsyncFn, loops: int) -> float:
    """Seconds for `loops` sequential ``await fn()``, gc off."""
    with _gc_off():
        started = _clock()
        for _ in repeat(None, loops):
            await fn()
        return _clock() - started


async def synchronous(fn: Callable[[], object], loops: int) -> float:
    """Seconds for `loops` calls of a plain function, gc off."""
    with _gc_off():
        started = _clock()
        for _ in repeat(None, loops):
            fn()
        return _clock() - started


@contextmanager
def _gc_off() -> Iterator[None]:
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


@dataclass(frozen=True)
class Case:
    """
    One thing to time. `build` runs inside the event loop and returns the callable
    (or an awaitable of it); unless `check` is False it is called once and must return
    `NOOP_RESULT`. `inner` is the calls one timer loop makes; `needs` the modules it
    imports (missing: the case is left out); `activate`, run around every batch,
    switches on a global hook and returns its undo.
    """

    name: str
    build: Callable[[], Any]
    api: str
    needs: tuple[str, ...] = ()
    timer: Timer = sequential
    inner: int = 1
    check: bool = True
    activate: Callable[[], Callable[[], None]] | None = None


def available(cases: Sequence[Case]) -> tuple[list[Case], list[str]]:
    """The cases whose modules are installed, and the names of the others."""
    ok = [c for c in cases if all(importlib.util.find_spec(m) for m in c.needs)]
    return ok, [c.name for c in cases if c not in ok]


async def built(case: Case) -> Any:
    """The case's callable, checked."""
    fn = case.build()
    if inspect.isawaitable(fn):
        fn = await fn
    if case.check:
        with _active(case):
            result = await fn()
        if result != NOOP_RESULT:
            raise RuntimeError(f"{case.name}: returned {result!r}, not {NOOP_RESULT}")
    return fn


async def timed(case: Case, fn: Any, loops: int) -> float:
    """Seconds for `loops` timer loops of `case`, its hook on around them."""
    for _ in range(2):  # the loop's housekeeping (cancelled timers) outside the timing
        await asyncio.sleep(0)
    with _active(case):
        return await case.timer(fn, loops)


_closers: list[Callable[[], Awaitable[object]]] = []


def close_at_end(close: Callable[[], Awaitable[object]]) -> None:
    """Have `close()` awaited after a quick run (a session a case opened, say)."""
    _closers.append(close)


async def close_all() -> None:
    """Await every `close_at_end` callback (the cases' sessions), once."""
    while _closers:
        await _closers.pop(0)()


async def interleave(
    cases: Sequence[Case], rounds: int, calls: int, seed: int
) -> dict[str, list[float]]:
    """Seconds per call of each case, one sample per round, in a fresh shuffled order."""
    fns = {case.name: await built(case) for case in cases}
    gc.collect()
    gc.freeze()  # setup objects stay out of every later collection
    samples: dict[str, list[float]] = {case.name: [] for case in cases}
    order, rng = list(cases), random.Random(seed)  # a shuffle, not a secret
    try:
        for _ in range(rounds):
            rng.shuffle(order)
            for case in order:
                loops = max(1, calls // case.inner)
                elapsed = await timed(case, fns[case.name], loops)
                samples[case.name].append(elapsed / (loops * case.inner))
    finally:
        await close_all()
    return samples


def main(module: str, cases: Callable[[], Sequence[Case]], page: report.Report) -> int:
    """The command line of a timing benchmark: ``--quick`` in this process, else pyperf."""
    parser = argparse.ArgumentParser(add_help=False)
    _flags(parser)
    known, rest = parser.parse_known_args()
    _use(known)
    chosen, missing = available(cases())
    if known.quick:
        variant = "-".join(f for f in ("uvloop", "cpu") if getattr(known, f))
        return _quick(module, chosen, missing, page, rest, variant)
    try:
        import pyperf  # type: ignore[import-not-found, unused-ignore]
    except ImportError:
        sys.exit(f"{module}: a full run needs pyperf: pip install -e '.[bench]' (or --quick)")
    runner = pyperf.Runner(
        program_args=("-m", module),
        add_cmdline_args=lambda cmd, args: cmd.extend(
            f"--{flag}" for flag in ("uvloop", "cpu") if getattr(args, flag)
        ),
        metadata={"loop": _loop_name(known), "clock": "process_time" if known.cpu else "wall"},
    )
    _flags(runner.argparser)
    if missing and not runner.parse_args().worker:
        print(f"not installed, not measured: {', '.join(missing)}", file=sys.stderr)
    for case in chosen:
        runner.bench_time_func(case.name, _worker_timer(case), inner_loops=case.inner)
    return 0


def _flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--quick",
        action="store_true",
        help="interleaved rounds in this process, without pyperf's workers"
        " (--quick --help lists its own options: --rounds, --calls, --seed, --md, -o)",
    )
    parser.add_argument("--uvloop", action="store_true", help="time on uvloop's event loop")
    parser.add_argument("--cpu", action="store_true", help="time process CPU, not wall time")


def _quick(  # noqa: PLR0917  # main's parts, passed on
    module: str,
    cases: list[Case],
    missing: list[str],
    page: report.Report,
    argv: list[str],
    variant: str,
) -> int:
    parser = argparse.ArgumentParser(prog=f"python -m {module} --quick")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of every case (3)")
    parser.add_argument("--calls", type=int, default=500, help="calls per case and round (500)")
    parser.add_argument("--seed", type=int, default=1, help="shuffles the rounds' case order (1)")
    parser.add_argument("--md", type=Path, help="report here (default: a temp dir)")
    parser.add_argument(
        "-o",
        "--output",
        type=Path,
        help="also write the rounds as pyperf JSON, for benchmarks.report (needs pyperf)",
    )
    ns = parser.parse_args(argv)
    if ns.rounds < 1 or ns.calls < 1:
        parser.error("--rounds and --calls must be >= 1")
    if ns.output is not None and ns.output.exists():
        parser.error(f"-o {ns.output}: exists; pick a fresh name (as pyperf would)")
    samples = _run_loop(interleave(cases, ns.rounds, ns.calls, ns.seed))
    medians = {name: statistics.median(values) for name, values in samples.items()}
    for name, seconds in medians.items():
        print(f"{name:<56} {seconds * 1e9:>12,.0f} ns/call")
    if ns.output is not None:
        # What the figures depend on, spelled one way: not the seed, the files written
        # (`benchmarks.report` adds ``--seed N -o RUN.json``) nor how argv spelled it.
        flags = " ".join(["--quick", *_variant_flags(variant)])
        command = f"python -m {module} {flags} --rounds {ns.rounds} --calls {ns.calls}"
        _dump(ns.output, samples, variant, command)
        print(f"wrote {ns.output}", file=sys.stderr)
    how = f"`--quick`: {ns.rounds} interleaved rounds of {ns.calls:,} calls, in one process"
    path = report_path(ns.md, quick=True, default=Path())
    machine = report.local_machine("uvloop" if "uvloop" in variant else "asyncio")
    text = page.render([medians], cases, missing, how, machine, variant)
    report.write(path, page, text, variant)
    print(f"wrote {path}", file=sys.stderr)
    return 0


def _variant_flags(variant: str) -> list[str]:
    return [f"--{flag}" for flag in variant.split("-") if flag]


def _dump(path: Path, samples: dict[str, list[float]], variant: str, command: str) -> None:
    """
    Interleaved rounds as pyperf JSON: one run per case, a value per round.

    `benchmarks.report` reads it as it reads a pyperf run (median of the values), and
    takes `command` from its metadata for the region's "how".
    """
    import pyperf  # type: ignore[import-not-found, unused-ignore]

    metadata = {
        "loop": "uvloop" if "uvloop" in variant else "asyncio",
        "clock": "process_time" if "cpu" in variant else "wall",
        "command": command,
        "loops": 1,
    }
    benchmarks = [
        pyperf.Benchmark([pyperf.Run(values, metadata={**metadata, "name": name})])
        for name, values in samples.items()
    ]
    pyperf.BenchmarkSuite(benchmarks).dump(str(path))


_clock = time.perf_counter
_loop: asyncio.AbstractEventLoop | None = None
_new_loop: Callable[[], asyncio.AbstractEventLoop] = asyncio.new_event_loop


def _use(args: argparse.Namespace) -> None:
    """Take the loop and the clock the options ask for."""
    global _clock, _new_loop  # noqa: PLW0603  # one choice per process, made once
    _clock = time.process_time if args.cpu else time.perf_counter
    if args.uvloop:
        import uvloop  # type: ignore[import-not-found, unused-ignore]

        _new_loop = uvloop.new_event_loop


def _loop_name(args: argparse.Namespace) -> str:
    return "uvloop" if args.uvloop else "asyncio"


def _run_loop(work: Awaitable[Any]) -> Any:
    """Run `work` on this process's one event loop, made on first use."""
    global _loop  # noqa: PLW0603  # kept across pyperf's calls of a worker's timer
    if _loop is None:
        _loop = _new_loop()
        asyncio.set_event_loop(_loop)
    return _loop.run_until_complete(work)


def _worker_timer(case: Case) -> Callable[[int], float]:
    """pyperf's time function for `case`: builds it on first call, then times loops."""
    fn: list[Any] = []

    def time_func(loops: int) -> float:
        if not fn:
            fn.append(_run_loop(built(case)))
            gc.collect()
            gc.freeze()  # as in `interleave`: setup objects out of every later collection
        result: float = _run_loop(timed(case, fn[0], loops))
        return result

    return time_func


@contextmanager
def _active(case: Case) -> Iterator[None]:
    """`case`'s global hook switched on, if it has one."""
    undo = case.activate() if case.activate else None
    try:
        yield
    finally:
        if undo is not None:
            undo()
