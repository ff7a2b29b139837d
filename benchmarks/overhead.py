"""Happy-path per-call overhead of resilience wrappers, resilient vs peers.

Usage (from the repository root)::

    python -m benchmarks.overhead                 # full run, updates docs/
    python -m benchmarks.overhead --quick         # CI smoke run (< 20 s), temp dir
    python -m benchmarks.overhead --rounds 50 --calls 50000 --json results.json

Every contender wraps the same no-op ``async def``; all are timed in one
process and one event loop, in interleaved rounds (see ``_harness``).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from benchmarks import _peers, _report, _resilient
from benchmarks._cli import add_run_options, run_size
from benchmarks._harness import (
    BARE_KEY,
    Contender,
    Summary,
    Unavailable,
    noop,
    run_rounds,
    summarise,
    verify,
)

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_MD = REPO_ROOT / "docs" / "benchmarks.md"
DEFAULT_PNG = REPO_ROOT / "docs" / "benchmarks-overhead.png"

FULL = {"rounds": 30, "calls": 20_000, "warmup": 2}
QUICK = {"rounds": 5, "calls": 2_000, "warmup": 1}


@dataclass(frozen=True)
class Options:
    """Parsed command line."""

    rounds: int
    calls: int
    warmup: int
    seed: int
    quick: bool
    md: Path | None
    png: Path | None
    json: Path | None
    argv: tuple[str, ...]


def parse_args(argv: Sequence[str]) -> Options:
    """Parse ``argv`` (without the program name)."""
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.overhead",
        description="Happy-path per-call overhead of resilient vs peer libraries.",
    )
    add_run_options(parser, FULL, default_md=DEFAULT_MD)
    parser.add_argument("--png", type=Path, help=f"bar chart (default {DEFAULT_PNG})")
    ns = parser.parse_args(argv)
    rounds, calls, warmup = run_size(parser, ns, FULL, QUICK)
    return Options(
        rounds=rounds,
        calls=calls,
        warmup=warmup,
        seed=ns.seed,
        quick=ns.quick,
        md=ns.md,
        png=ns.png,
        json=ns.json,
        argv=tuple(argv),
    )


def output_paths(opts: Options) -> tuple[Path, Path]:
    """Where the markdown and the chart go.

    A quick run must not overwrite the committed full-run figures, so unless
    told otherwise it writes into a fresh temporary directory.
    """
    if opts.quick:
        tmp = Path(tempfile.mkdtemp(prefix="resilient-bench-"))
        return (
            opts.md or tmp / "benchmarks.md",
            opts.png or tmp / "benchmarks-overhead.png",
        )
    return opts.md or DEFAULT_MD, opts.png or DEFAULT_PNG


def bare_contender() -> Contender:
    """The baseline: ``await noop()`` with nothing around it."""
    return Contender(
        key=BARE_KEY,
        category="bare",
        label="bare await noop()",
        library="-",
        kind="bare",
        fn=noop,
        api="await noop()",
    )


def build_contenders() -> tuple[list[Contender], list[Unavailable]]:
    """Build every contender that can be built; record the rest with a reason.

    Must run inside the event loop.
    """
    built: list[Contender] = [bare_contender()]
    missing: list[Unavailable] = list(_peers.LACKS)
    for category, library, builder in _peers.BUILDERS:
        try:
            built.append(builder())
        except Exception as exc:  # a broken peer only loses its row
            missing.append(Unavailable(category, library, f"{type(exc).__name__}: {exc}"))
    module, why = _resilient.import_resilient()
    for category, rbuilder in _resilient.BUILDERS:
        if module is None:
            missing.append(Unavailable(category, _resilient.LIBRARY, why))
            continue
        try:
            built.append(rbuilder(module))
        except Exception as exc:  # API may be half-written
            missing.append(
                Unavailable(category, _resilient.LIBRARY, f"{type(exc).__name__}: {exc}")
            )
    return _dedupe_missing(built, missing)


def _dedupe_missing(
    built: list[Contender], missing: list[Unavailable]
) -> tuple[list[Contender], list[Unavailable]]:
    """Drop repeated (category, library, reason) entries (e.g. Retry and Retry.call)."""
    seen: set[tuple[str, str, str]] = set()
    unique = []
    for u in missing:
        if (u.category, u.library, u.reason) not in seen:
            seen.add((u.category, u.library, u.reason))
            unique.append(u)
    return built, unique


async def verified(
    contenders: list[Contender],
) -> tuple[list[Contender], list[Unavailable]]:
    """Keep contenders whose single test call returns noop's result."""
    good, bad = [], []
    for c in contenders:
        reason = await verify(c)
        if reason is None:
            good.append(c)
        else:
            bad.append(Unavailable(c.category, c.library, f"{c.label}: {reason}"))
    return good, bad


def _progress(done: int, total: int) -> None:
    print(
        f"\r  round {done}/{total}",
        end="" if done < total else "\n",
        file=sys.stderr,
        flush=True,
    )


async def measure(opts: Options) -> tuple[list[Summary], list[Unavailable]]:
    """Build, verify and time all contenders inside one event loop."""
    contenders, missing = build_contenders()
    contenders, broken = await verified(contenders)
    gc.collect()
    gc.freeze()  # setup objects stay out of every later collection
    print(
        f"timing {len(contenders)} contenders: {opts.rounds} rounds x "
        f"{opts.calls:,} calls (+{opts.warmup} warm-up) on {_report.python_info()}",
        file=sys.stderr,
    )
    samples = await run_rounds(
        contenders,
        rounds=opts.rounds,
        calls=opts.calls,
        warmup=opts.warmup,
        seed=opts.seed,
        progress=_progress,
    )
    return summarise(samples), missing + broken


def write_outputs(opts: Options, summaries: list[Summary], unavailable: list[Unavailable]) -> None:
    """Print the summary and write markdown, chart and (optionally) JSON."""
    module, _ = _resilient.import_resilient()
    versions = _report.package_versions(_peers.PEER_LIBRARIES)
    versions["resilient"] = _resilient.version(module) if module else "not importable"
    versions["matplotlib (chart only)"] = _report.package_versions(["matplotlib"])["matplotlib"]
    info = _report.RunInfo(
        command=_report.command_line(opts.argv),
        rounds=opts.rounds,
        calls=opts.calls,
        warmup=opts.warmup,
        seed=opts.seed,
        started=_report.now_utc(),
        machine=_report.machine_info(),
        versions=versions,
    )
    ratios = _report.headline_ratios(summaries)
    print(_report.text_summary(summaries, ratios))
    md_path, png_path = output_paths(opts)
    chart_ref = _relative(png_path, md_path.parent)
    _report.write_chart(png_path, summaries, _report.chart_title(info))
    _report.write_markdown(
        md_path,
        _report.render_markdown(info, summaries, unavailable, ratios, chart_ref),
    )
    print(f"wrote {md_path} and {png_path}", file=sys.stderr)
    if opts.json is not None:
        _report.write_json(opts.json, info, summaries, unavailable, ratios)
        print(f"wrote {opts.json}", file=sys.stderr)


def _relative(target: Path, start: Path) -> str:
    """``target`` relative to ``start`` when possible, else absolute (POSIX)."""
    import os

    try:
        return Path(os.path.relpath(target.resolve(), start.resolve())).as_posix()
    except ValueError:
        return target.resolve().as_posix()


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the process exit code."""
    opts = parse_args(sys.argv[1:] if argv is None else argv)
    summaries, unavailable = asyncio.run(measure(opts))
    write_outputs(opts, summaries, unavailable)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
