"""
Smoke tests: the runnable example and the benchmark harness still work end to end.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def run_module(*args: str, timeout: float = 60.0) -> str:
    return run_python("-m", *args, timeout=timeout)


def run_python(*args: str, timeout: float = 60.0) -> str:
    """
    Run this interpreter with `args` from the repository root; return what it printed.
    """
    done = subprocess.run(
        [sys.executable, *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def summary(output: str) -> dict[str, int]:
    lines = output.split("\nsummary\n", 1)[1].splitlines()
    return {key: int(value) for key, value in (line.split() for line in lines if line.strip())}


def test_quickstart_survives_the_outage() -> None:
    """The quickstart's breaker opens during the outage, falls back, and closes again."""
    counts = summary(run_module("examples.quickstart", "--seconds", "2", "--quiet"))
    assert counts["served"] > 0
    assert counts["fallback"] > 0
    assert counts["breaker_open"] >= 1
    assert counts["breaker_closed"] >= 1  # recovered after the outage
    assert counts["rejected_circuit_open"] > 0
    # The breaker spared the dependency: fewer calls reached it than callers made.
    assert counts["dependency_calls"] < counts["served"] + counts["fallback"]


def test_overhead_benchmark_quick_run(tmp_path: Path) -> None:
    """`benchmarks.overhead --quick` measures resilient's contenders and writes a report."""
    report = tmp_path / "bench.md"
    output = run_module(
        "benchmarks.overhead",
        "--quick",
        "--rounds",
        "1",
        "--calls",
        "200",
        "--md",
        str(report),
        "--png",
        str(tmp_path / "bench.png"),
        timeout=120.0,
    )
    assert "resilient pipeline" in output
    assert "resilient pipeline" in report.read_text()


def test_overload_benchmark_quick_run(tmp_path: Path) -> None:
    """
    `benchmarks.overload --quick` drives a real server process at 3x its capacity with
    and without a limiter, and reports each client's goodput and latency with a chart.
    """
    report, chart = tmp_path / "overload.md", tmp_path / "overload.png"
    output = run_module(
        "benchmarks.overload", "--quick", "--only", "none", "vegas",
        "--md", str(report), "--png", str(chart), timeout=60.0,
    )  # fmt: skip
    assert "AdaptiveConcurrency(), the default: Vegas()" in output
    text = report.read_text()
    assert text.count("<!-- overload-sim:begin -->") == 1
    rows = [line for line in text.splitlines() if line.startswith("| ")]
    assert [row.split(" | ")[0] for row in rows[1:]] == [
        "| unloaded (30% of capacity, no limiter)",
        "| no limiter",
        "| AdaptiveConcurrency(), the default: Vegas()",
    ]
    assert chart.stat().st_size > 10_000


def test_revisions_benchmark_compares_a_revision_with_this_tree() -> None:
    """`benchmarks.revisions HEAD` builds each policy from git's HEAD and this tree."""
    output = run_module("benchmarks.revisions", "HEAD", "--rounds", "1", "--calls", "200")
    rows = [line for line in output.splitlines() if line.startswith(("retry/", "stack/"))]
    assert len(rows) == 3  # Retry, Retry.call and the pipeline, each before and after
