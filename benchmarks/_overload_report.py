"""
The overload simulation's figures: per-scenario summary, markdown region and chart.
"""

from __future__ import annotations

import argparse
import math
import statistics
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from benchmarks._docs import command_line, merge_region
from benchmarks._report import machine_info, now_utc, package_versions

if TYPE_CHECKING:
    from benchmarks.overload import Trace

__all__ = ["Row", "line", "now_utc", "summarise", "verdict", "write_chart", "write_markdown"]

BEGIN, END = "<!-- overload-sim:begin -->", "<!-- overload-sim:end -->"
BIN = 0.5
"""Seconds per point of the chart's goodput and latency lines."""
STARVED_MS = 50.0
"""Client lag (p99) beyond which the client itself was short of CPU during a run."""


@dataclass(frozen=True)
class Row:
    """One scenario's figures over its measured window (after the warm-up)."""

    key: str
    label: str
    sent: int
    ok: int
    goodput: float
    share: float
    p50_ms: float
    p99_ms: float
    timeouts: int
    rejected: int
    errors: dict[str, int]
    lag_p99_ms: float
    useful: float
    """Share of the server's completed requests that reached a client in time."""


def quantile(values: Sequence[float], q: float) -> float:
    """The `q` quantile (0..1) of `values`, interpolated; nan when there are none."""
    if len(values) < 2:
        return values[0] if values else float("nan")
    return statistics.quantiles(values, n=1000, method="inclusive")[round(q * 1000) - 1]


def summarise(trace: Trace, *, warmup: float, label: str = "") -> Row:
    """Figures of the requests that started after `warmup` seconds."""
    from benchmarks.overload import CAPACITY

    kept = [i for i, t in enumerate(trace.started) if t >= warmup]
    outcomes = Counter(trace.outcome[i] for i in kept)
    ok = [trace.latency[i] for i in kept if trace.outcome[i] == "ok"]
    window = trace.seconds - warmup
    all_ok = sum(o == "ok" for o in trace.outcome)
    return Row(
        key=trace.key,
        label=label or trace.key,
        sent=len(kept),
        ok=len(ok),
        goodput=len(ok) / window,
        share=len(ok) / window / CAPACITY,
        p50_ms=quantile(ok, 0.5) * 1000,
        p99_ms=quantile(ok, 0.99) * 1000,
        timeouts=outcomes["timeout"],
        rejected=sum(n for o, n in outcomes.items() if o.startswith("rejected:")),
        errors={o[6:]: n for o, n in outcomes.items() if o.startswith("error:")},
        lag_p99_ms=quantile([trace.lag[i] for i in kept], 0.99) * 1000,
        useful=all_ok / trace.server_completed if trace.server_completed else float("nan"),
    )


def line(key: str, row: Row) -> str:
    """One row for the terminal."""
    return (
        f"{key:<11} goodput {row.goodput:6.1f}/s ({row.share:4.0%}) p50 {row.p50_ms:6.1f} ms"
        f" p99 {row.p99_ms:6.1f} ms timeouts {row.timeouts:5d} rejected {row.rejected:5d}"
        f" errors {sum(row.errors.values()):4d} client lag p99 {row.lag_p99_ms:5.1f} ms"
    )


def verdict(unloaded: Row, rows: Sequence[Row]) -> str:
    """Which scenarios met the target: p99 <= 2x unloaded and goodput >= 90%."""
    out = [f"unloaded p99 {unloaded.p99_ms:.1f} ms; target p99 <= {2 * unloaded.p99_ms:.1f} ms"
           " and goodput >= 90% of capacity"]  # fmt: skip
    for row in rows:
        met = row.p99_ms <= 2 * unloaded.p99_ms and row.share >= 0.9
        ratio = _times(row.p99_ms / unloaded.p99_ms)
        out.append(f"  {row.label:<40} {'meets' if met else 'misses'} the target"
                   f" (p99 {ratio}, goodput {row.share:.0%})")  # fmt: skip
    return "\n".join(out)


def _table(unloaded: Row, rows: Sequence[Row]) -> list[str]:
    lines = [
        "| client | goodput /s | of capacity | p50 ms | p99 ms | p99 / unloaded | timeouts"
        " | rejected | other errors | server work used | client lag p99 ms |",
        "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for r in [unloaded, *rows]:
        errors = ", ".join(f"{k} {n}" for k, n in sorted(r.errors.items())) or "0"
        lines.append(
            f"| {r.label} | {r.goodput:.1f} | {r.share:.0%} | {_ms(r.p50_ms)} | {_ms(r.p99_ms)}"
            f" | {_times(r.p99_ms / unloaded.p99_ms)} | {r.timeouts} | {r.rejected} | {errors}"
            f" | {r.useful:.0%} | {r.lag_p99_ms:.0f} |"
        )
    return lines


def _starved(rows: Sequence[Row]) -> list[str]:
    """A warning naming the runs whose client fell behind its own arrival times."""
    late = [r.label for r in rows if r.lag_p99_ms > STARVED_MS]
    if not late:
        return []
    return [
        f"Client lag p99 over {STARVED_MS:.0f} ms ({', '.join(late)}): the load generator"
        " was short of CPU during that run (another process, or the client's own work),"
        " so its latencies include time the client, not the server, took.",
        "",
    ]


def _ms(value: float) -> str:
    return "-" if math.isnan(value) else f"{value:.1f}"


def _times(value: float) -> str:
    return "-" if math.isnan(value) else f"{value:.2f}x"


def write_markdown(  # noqa: PLR0917  # the parts of one report
    path: Path, png: Path, argv: Sequence[str], opts: argparse.Namespace, started: str,
    unloaded: Row, rows: Sequence[Row],
) -> None:  # fmt: skip
    """Write the generated region of `path`, keeping the rest of the file."""
    from benchmarks import overload as sim

    info = machine_info()
    versions = package_versions(["resilient", "aiohttp"])
    region = [
        BEGIN,
        "<!-- Generated by benchmarks/overload.py; edits between these markers are"
        " overwritten. -->",
        "",
        f"- **Command:** `{command_line('benchmarks.overload', argv)}`",
        f"- **When:** {started}",
        f"- **Machine:** {info['python']} on {info['platform']}, {info['cpu_count']} CPUs"
        f" ({info.get('cpus_usable', '?')} usable), {info['cpu_model']}",
        "- **Versions:** " + ", ".join(f"{n} {v}" for n, v in versions.items()),
        f"- **Server:** {sim.WORKERS} workers, {sim.SERVICE * 1000:.0f} ms +-25% per request,"
        f" +{sim.SLOWDOWN:.0%} per request waiting (at most x{sim.MAX_SLOWDOWN:g}):"
        f" capacity {sim.CAPACITY:.0f} req/s.",
        f"- **Load:** Poisson arrivals (seed {opts.seed}) at {sim.LOAD:g}x capacity"
        f" ({sim.CAPACITY * sim.LOAD:.0f} req/s) for {opts.seconds:g} s per client, deadline"
        f" {sim.DEADLINE * 1000:.0f} ms; figures from the last {opts.seconds - opts.warmup:g} s."
        f" Unloaded: {sim.UNLOADED:.0%} of capacity for {opts.baseline:g} s, no limiter.",
        f"- **Target:** p99 <= 2x unloaded ({2 * unloaded.p99_ms:.1f} ms) and goodput >= 90% of"
        f" capacity ({0.9 * sim.CAPACITY:.0f}/s).",
        "",
        *_table(unloaded, rows),
        "",
        *_starved([unloaded, *rows]),
        f"![Goodput, p99 latency and limit over time]({png.name})",
        "",
        END,
    ]
    existing = path.read_text() if path.exists() else None
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(merge_region(existing, "\n".join(region) + "\n", begin=BEGIN, end=END))


def _bins(trace: Trace) -> tuple[list[float], list[float], list[float]]:
    """Per `BIN` seconds: the bin's middle, goodput per second and p99 of successes."""
    count = int(trace.seconds / BIN + 0.5)
    ok: list[list[float]] = [[] for _ in range(count)]
    for start, latency, outcome in zip(trace.started, trace.latency, trace.outcome, strict=True):
        if outcome == "ok" and int(start / BIN) < count:
            ok[int(start / BIN)].append(latency)
    mids = [(i + 0.5) * BIN for i in range(count)]
    return mids, [len(b) / BIN for b in ok], [quantile(b, 0.99) * 1000 for b in ok]


def write_chart(path: Path, traces: Sequence[Trace], unloaded: Row, warmup: float) -> None:
    """Goodput, p99 latency of successes, and the limiters' limits, over time."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from benchmarks.overload import CAPACITY, SCENARIOS, WORKERS

    colours = {s.key: f"C{i}" for i, s in enumerate(SCENARIOS)}  # the same in every panel
    fig, (good, late, limit) = plt.subplots(3, 1, figsize=(10, 10), sharex=True)
    for trace in traces:
        mids, goodput, p99 = _bins(trace)
        colour = colours.get(trace.key)
        good.plot(mids, goodput, label=trace.key, color=colour)
        late.plot(mids, p99, label=trace.key, color=colour)
        if trace.limit:
            times, limits, in_flight = zip(*trace.limit, strict=True)
            limit.plot(times, limits, label=trace.key, color=colour)
            limit.plot(times, in_flight, color=colour, alpha=0.3, linewidth=0.8)
    good.axhline(CAPACITY, color="black", linestyle="--", linewidth=0.8, label="capacity")
    good.axhline(0.9 * CAPACITY, color="grey", linestyle=":", linewidth=0.8, label="90%")
    late.axhline(
        unloaded.p99_ms, color="black", linestyle="--", linewidth=0.8, label="unloaded p99"
    )
    late.axhline(2 * unloaded.p99_ms, color="grey", linestyle=":", linewidth=0.8, label="2x")
    limit.axhline(WORKERS, color="black", linestyle="--", linewidth=0.8, label="server workers")
    good.set_ylabel(f"goodput (ok/s, {BIN:g} s bins)")
    late.set_ylabel("p99 latency of successes (ms)")
    late.set_yscale("log")
    limit.set_ylabel("limit (faint: calls in flight)")
    limit.set_yscale("log")
    limit.set_xlabel("seconds since the start of the run")
    for ax in (good, late, limit):
        ax.axvline(warmup, color="grey", linewidth=0.6)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="upper right", ncol=2)
    good.set_title("Overload simulation: 3x capacity, one run per client", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
