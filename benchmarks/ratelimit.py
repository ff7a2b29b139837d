"""
Happy-path cost per call of a rate limiter: resilient's `RateLimiter` against aiolimiter,
limits (its three async strategies) and hyx's token bucket, and a hand-written floor.

Every limiter is set to a rate no benchmark reaches (10^9 permits per second, bursts of
10^9), so each call is admitted at once: what is measured is the bookkeeping of an
admitted call. Timing is `_harness`'s (interleaved, shuffled rounds; overhead against
the bare call of the same round). The headline is resilient's overhead over the fastest
peer's, per round, so a noisy round moves both.

    python -m benchmarks.ratelimit            # ~1 min; updates docs/benchmarks.md
    python -m benchmarks.ratelimit --quick    # smoke run, report in a temp dir
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from benchmarks._cli import add_run_options, report_path, run_size
from benchmarks._docs import command_line, merge_region
from benchmarks._harness import (
    BARE_KEY,
    AsyncFn,
    Contender,
    Spread,
    Summary,
    noop,
    run_rounds,
    summarise,
    verify,
)
from benchmarks._report import machine_info, now_utc, package_versions

RATE = 10**9
"""Permits per second, and the burst: never reached, so every call is admitted."""

FULL = {"rounds": 30, "calls": 20_000, "warmup": 2}
QUICK = {"rounds": 5, "calls": 2_000, "warmup": 1}
DEFAULT_MD = Path(__file__).resolve().parent.parent / "docs" / "benchmarks.md"
BEGIN, END = "<!-- ratelimit:begin -->", "<!-- ratelimit:end -->"
PEERS = ("aiolimiter", "limits", "hyx")


class Refused(Exception):
    """A peer refused a call (it never should here)."""


def resilient_contenders() -> list[Contender]:
    """resilient's RateLimiter as a decorator (primary) and through `.call`."""
    from resilient import RateLimiter  # imported inside the loop, as peers

    decorated = RateLimiter(RATE, burst=RATE)(noop)
    limiter = RateLimiter(RATE, burst=RATE)

    async def through_call() -> object:
        return await limiter.call(noop)

    api = "RateLimiter(1e9, burst=1e9)"
    return [
        Contender("resilient", "ratelimit", "resilient @RateLimiter", "resilient", "resilient",
                  decorated, f"@{api}"),
        Contender("resilient.call", "ratelimit", "resilient RateLimiter.call", "resilient",
                  "resilient", through_call, f"await {api}.call(noop)", primary=False),
    ]  # fmt: skip


def aiolimiter_contender() -> Contender:
    """aiolimiter's only form: ``async with limiter``."""
    from aiolimiter import AsyncLimiter

    limiter = AsyncLimiter(RATE, 1)

    async def limited() -> object:
        async with limiter:
            return await noop()

    return Contender("aiolimiter", "ratelimit", "aiolimiter AsyncLimiter", "aiolimiter", "peer",
                     limited, "async with AsyncLimiter(1e9, 1): await noop()")  # fmt: skip


def limits_contenders() -> list[Contender]:
    """limits' three async strategies on its async in-memory storage."""
    from limits import RateLimitItemPerSecond
    from limits.aio import storage, strategies

    item = RateLimitItemPerSecond(RATE)
    built = []
    for strategy in ("FixedWindow", "MovingWindow", "SlidingWindowCounter"):
        limiter = getattr(strategies, f"{strategy}RateLimiter")(storage.MemoryStorage())
        built.append(
            Contender(f"limits.{strategy}", "ratelimit", f"limits {strategy}", "limits", "peer",
                      _hitting(limiter.hit, item),
                      f"if await {strategy}RateLimiter(MemoryStorage()).hit(1e9/s): await noop()")
        )  # fmt: skip
    return built


def _hitting(hit: Callable[..., object], item: object) -> AsyncFn:
    async def limited() -> object:
        if not await hit(item):  # type: ignore[misc]
            raise Refused
        return await noop()

    return limited


def hyx_contender() -> Contender:
    """hyx's token bucket decorator."""
    from hyx.ratelimit import tokenbucket

    decorated = tokenbucket(max_executions=RATE, per_time_secs=1, bucket_size=RATE)(noop)
    api = "@tokenbucket(max_executions=1e9, per_time_secs=1, bucket_size=1e9)"
    return Contender("hyx", "ratelimit", "hyx @tokenbucket", "hyx", "peer", decorated, api)


def floor_contender() -> Contender:
    """A hand-written GCRA check inline: the least an admitted call can cost."""
    monotonic, interval = time.monotonic, 1 / RATE
    tolerance, state = RATE * interval, [monotonic()]

    async def limited() -> object:
        now = monotonic()
        tat = max(state[0], now) + interval
        if tat - tolerance > now:
            raise Refused
        state[0] = tat
        return await noop()

    return Contender("floor", "ratelimit", "hand-written GCRA (floor)", "stdlib", "floor",
                     limited, "time.monotonic() + two comparisons, inline")  # fmt: skip


BUILDERS: tuple[Callable[[], Contender | list[Contender]], ...] = (
    resilient_contenders,
    aiolimiter_contender,
    limits_contenders,
    hyx_contender,
    floor_contender,
)


async def build() -> tuple[list[Contender], list[str]]:
    """Every contender that builds and answers 42 once, and why the others don't."""
    built = [Contender(BARE_KEY, "bare", "bare await noop()", "-", "bare", noop, "await noop()")]
    missing = []
    for builder in BUILDERS:
        try:
            made = builder()
        except Exception as exc:  # a missing peer only loses its row
            missing.append(f"{builder.__name__}: {type(exc).__name__}: {exc}")
            continue
        for contender in made if isinstance(made, list) else [made]:
            reason = await verify(contender)
            if reason is None:
                built.append(contender)
            else:
                missing.append(f"{contender.label}: {reason}")
    return built, missing


def round_ratios(mine: Summary, peer: Summary) -> list[float]:
    """resilient's overhead over the peer's, round by round."""
    return [
        ours / theirs
        for ours, theirs in zip(mine.overhead_samples, peer.overhead_samples, strict=True)
        if theirs > 0
    ]


def render(  # noqa: PLR0917  # the parts of one report
    argv: Sequence[str], opts: argparse.Namespace, summaries: list[Summary],
    missing: list[str], started: str, ratios: Spread,
) -> str:  # fmt: skip
    """The markdown region, markers included."""
    info = machine_info()
    versions = package_versions(["resilient", *PEERS])
    mine = next(s for s in summaries if s.contender.key == "resilient")
    rows = sorted(summaries, key=lambda s: s.overhead_ns.median)
    lines = [
        BEGIN,
        "<!-- Generated by benchmarks/ratelimit.py; edits between these markers are"
        " overwritten. -->",
        "",
        "## Rate limiter: happy-path overhead",
        "",
        f"- **Command:** `{command_line('benchmarks.ratelimit', argv)}`",
        f"- **When:** {started}",
        f"- **Machine:** {info['python']} on {info['platform']}, {info['cpu_count']} CPUs"
        f" ({info.get('cpus_usable', '?')} usable), {info['cpu_model']}",
        "- **Versions:** " + ", ".join(f"{n} {v}" for n, v in versions.items()),
        f"- **Method:** {opts.rounds} rounds (+{opts.warmup} warm-up) of {opts.calls:,}"
        " sequential admitted calls per contender, order shuffled every round"
        f" (seed {opts.seed}); every limiter at 10^9 permits/s with bursts of 10^9, so"
        " none ever refuses. Overhead = ns/call - bare ns/call of the same round.",
        f"- **resilient / fastest peer:** median {ratios.median:.2f}x"
        f" (IQR {ratios.q1:.2f}-{ratios.q3:.2f}, min-max {ratios.minimum:.2f}-"
        f"{ratios.maximum:.2f}) over the rounds; below 1 means resilient is cheaper.",
        "",
        "| contender | kind | ns/call (median) | overhead ns (median) | overhead IQR"
        " | vs resilient |",
        "|---|---|--:|--:|--:|--:|",
    ]
    for s in rows:
        theirs = s.overhead_ns.median
        versus = f"{mine.overhead_ns.median / theirs:.2f}x" if theirs > 0 else "n/a"
        lines.append(
            f"| {s.contender.label} | {s.contender.kind} | {s.ns_per_call.median:.0f}"
            f" | {theirs:+.0f} | {s.overhead_ns.q1:+.0f}..{s.overhead_ns.q3:+.0f} | {versus} |"
        )
    lines += ["", "| contender | how it is built |", "|---|---|"]
    lines += [f"| {s.contender.label} | `{s.contender.api}` |" for s in summaries]
    if missing:
        lines += ["", "Not measured: " + "; ".join(missing)]
    lines += [
        "",
        "hyx's bucket reads no clock while it holds tokens (it refills only when empty),"
        " so its happy path is a subtraction; resilient's reads the clock on every call,"
        " as GCRA needs. limits is built for shared storages: its in-memory async storage"
        " takes a lock and keeps per-key state in dictionaries.",
        "",
        END,
    ]
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    """Run, print a summary, write the report; returns the exit code."""
    args = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="python -m benchmarks.ratelimit", description=__doc__)
    add_run_options(parser, FULL, default_md=DEFAULT_MD)
    opts = parser.parse_args(args)
    opts.rounds, opts.calls, opts.warmup = run_size(parser, opts, FULL, QUICK)
    started = now_utc()

    async def measure() -> tuple[list[Summary], list[str]]:
        contenders, missing = await build()
        gc.collect()
        gc.freeze()
        samples = await run_rounds(
            contenders, rounds=opts.rounds, calls=opts.calls, warmup=opts.warmup, seed=opts.seed
        )
        return summarise(samples), missing

    summaries, missing = asyncio.run(measure())
    mine = next(s for s in summaries if s.contender.key == "resilient")
    peers = [s for s in summaries if s.contender.kind == "peer"]
    fastest = min(peers, key=lambda s: s.overhead_ns.median)
    ratios = Spread.of(round_ratios(mine, fastest))
    for s in sorted(summaries, key=lambda s: s.overhead_ns.median):
        print(f"{s.contender.label:<40} {s.ns_per_call.median:7.0f} ns/call"
              f"  overhead {s.overhead_ns.median:+6.0f} ns")  # fmt: skip
    print(f"resilient / fastest peer ({fastest.contender.label}): median"
          f" {ratios.median:.2f}x, IQR {ratios.q1:.2f}-{ratios.q3:.2f},"
          f" min-max {ratios.minimum:.2f}-{ratios.maximum:.2f}")  # fmt: skip
    path = report_path(opts.md, quick=opts.quick, default=DEFAULT_MD)
    existing = path.read_text() if path.exists() else None
    region = render(args, opts, summaries, missing, started, ratios)
    path.write_text(merge_region(existing, region, begin=BEGIN, end=END))
    print(f"wrote {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
