"""
Smoke tests: the runnable example and the benchmark harness still work end to end.
"""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest

from benchmarks.report import Figure, Report
from tests._run import run_module


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


# What each benchmark's report must show whatever peers are installed: resilient's rows.
QUICK_RUNS = {
    "overhead": ("stack/resilient pipeline", "stack/resilient Pipeline.call", "Retry / tenacity"),
    "paths": ("failure/resilient Retry", "open/resilient CircuitBreaker",
              "concurrent/resilient pipeline", "`Retry(3)(fn)`"),
    "ratelimit": ("resilient @RateLimiter", "hand-written GCRA (floor)"),
    "observability": ("Retry(attempts=3) / prometheus", "piece: a clock read"),
    "breakdown": ("4 pass-through layers", "full pipeline"),
    "breaker_store": ("resilient RedisBreakerStore consecutive", "raw EVALSHA of a trivial script"),
}  # fmt: skip


@pytest.mark.parametrize("name", sorted(QUICK_RUNS))
def test_benchmark_quick_run(name: str, tmp_path: Path) -> None:
    """
    `benchmarks.<name> --quick` times every case it can build (peers that are not
    installed are left out and named) and writes its region with resilient's rows.
    """
    report = tmp_path / "bench.md"
    report.write_text("# Benchmarks\n\nkept\n")
    output = run_module(
        f"benchmarks.{name}", "--quick", "--rounds", "1", "--calls", "200",
        "--md", str(report), timeout=120.0,
    )  # fmt: skip
    text = report.read_text()
    assert text.startswith("# Benchmarks\n\nkept\n")
    assert text.count(f"<!-- {name}:begin -->") == text.count(f"<!-- {name}:end -->") == 1
    for row in QUICK_RUNS[name]:
        assert row in text
    assert QUICK_RUNS[name][0] in output
    # A page without one baseline (each figure names its own) has no overhead columns.
    header = "| case | ns/call | how it is built |"
    page = importlib.import_module(f"benchmarks.{name}").PAGE
    assert (header in text) is (page.base is None)


def test_a_benchmarks_help_leads_to_the_quick_runs_options() -> None:
    """
    ``--help`` is pyperf's and lists only ``--quick``, whose options (the ones the docs'
    commands use) a second parser reads: the flag says where they are, and they have help.
    """

    def words(*args: str) -> str:  # argparse wraps help at the terminal's width
        return " ".join(run_module("benchmarks.middleware", *args).split())

    assert "(--quick --help lists its own options: --rounds" in words("--help")
    quick = words("--quick", "--help")
    for option in ("--rounds ROUNDS rounds of", "--calls CALLS calls", "--seed SEED shuffles"):
        assert option in quick


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
    assert len(rows) == 4  # Retry, Retry.call, the pipeline and Pipeline.call


def test_report_figures_divide_overheads_of_the_same_run() -> None:
    """A figure divides two overheads of one run, by the fastest of its denominators;
    a missing case or a denominator within noise of zero gives no figure."""
    run = {"bare": 1.0, "mine": 3.0, "peer": 5.0, "fast": 2.0, "noise": 1.0}
    assert Figure("x", ("mine", "bare"), [("peer", "bare"), ("fast", "bare")]).value(run) == 2.0
    assert Figure("x", ("mine", "bare"), [("bare", None)], percent=True).value(run) == 200.0
    assert Figure("x", ("mine", "bare")).value(run) == 2.0
    assert Figure("x", ("mine", "bare"), [("noise", "bare")]).value(run) is None
    assert Figure("x", ("gone", "bare"), [("peer", "bare")]).value(run) is None


def test_a_targeted_figure_undefined_in_some_run_is_not_met() -> None:
    """A run whose denominator is within noise of zero gives that figure no value; the
    row says in how many runs, and the target isn't met on the runs that are left. (A
    peer adding nothing in one run while we add something is that run's miss, not a run
    to leave out: dropping it judged a ratio of small differences on its kindest runs.)"""
    figure = Figure("mine / peer (overheads)", ("mine", "bare"), [("peer", "bare")], 1.0)
    runs = [
        {"bare": 1.0, "mine": 1.5, "peer": 2.0},  # 0.5x
        {"bare": 1.0, "mine": 1.6, "peer": 2.0},  # 0.6x
        {"bare": 1.0, "mine": 1.5, "peer": 1.0},  # the peer added nothing: undefined
    ]
    page = Report("x", "x", "bare", [figure])
    text = page.render(runs, [], [], "how", "machine")
    row = next(line for line in text.splitlines() if line.startswith("| mine / peer"))
    assert "undefined in 1 of 3 runs" in row
    assert " met" not in row
    assert "**not judged**" in row
    # Defined in every run: judged as before.
    text = page.render(runs[:2], [], [], "how", "machine")
    row = next(line for line in text.splitlines() if line.startswith("| mine / peer"))
    assert row == "| mine / peer (overheads) | 0.55x | 0.50x .. 0.60x | <= 1.00x met |"


def test_interleaved_runs_make_a_region_through_the_report(tmp_path: Path) -> None:
    """`--quick -o RUN.json` writes the interleaved rounds as pyperf JSON, which
    `benchmarks.report` turns into the region (its command named, not pyperf's), and
    an existing file is never overwritten."""
    runs = [tmp_path / f"run{seed}.json" for seed in (1, 2, 3)]
    for seed, run in enumerate(runs, start=1):
        run_module(
            "benchmarks.ratelimit", "--quick", "--cpu", "--rounds", "2", "--calls", "100",
            "--seed", str(seed), "-o", str(run), "--md", str(tmp_path / "quick.md"),
            timeout=120.0,
        )  # fmt: skip
        assert run.stat().st_size > 0
    page = tmp_path / "bench.md"
    page.write_text("# Benchmarks\n")
    run_module("benchmarks.report", "ratelimit", *map(str, runs), "--md", str(page))
    text = page.read_text()
    assert text.count("<!-- ratelimit-cpu:begin -->") == 1
    assert (
        "3 runs of `python -m benchmarks.ratelimit --quick --cpu --rounds 2 --calls 100"
        " --seed N -o RUN.json`" in text
    )
    assert "resilient @RateLimiter" in text
    with pytest.raises(AssertionError, match="exists"):
        run_module(
            "benchmarks.ratelimit", "--quick", "--rounds", "1", "--calls", "10",
            "-o", str(runs[0]),
        )  # fmt: skip


def test_the_report_names_the_command_of_every_run_or_refuses(tmp_path: Path) -> None:
    """The region's command is the one every run shares, whatever the spelling of its
    flags (``--seed=2``, ``--output=FILE``: no run's own seed or file in the docs); runs
    of different commands (rounds, calls, clocks) make no region: their medians don't
    compare."""
    runs = [tmp_path / "run1.json", tmp_path / "run2.json", tmp_path / "run3.json"]
    spellings = [
        ("--seed=1", f"--output={runs[0]}", "--rounds", "1"),
        ("--seed", "2", f"-o{runs[1]}", "--rounds", "1"),
        ("--seed", "3", "-o", str(runs[2]), "--rounds", "2"),  # another command
    ]
    for flags in spellings:
        run_module(
            "benchmarks.ratelimit", "--quick", "--cpu", "--calls", "50", *flags,
            "--md", str(tmp_path / "quick.md"), timeout=120.0,
        )  # fmt: skip
    page = tmp_path / "bench.md"
    page.write_text("# Benchmarks\n")
    run_module("benchmarks.report", "ratelimit", str(runs[0]), str(runs[1]), "--md", str(page))
    text = page.read_text()
    assert (
        "2 runs of `python -m benchmarks.ratelimit --quick --cpu --rounds 1 --calls 50"
        " --seed N -o RUN.json`" in text
    )
    assert "--seed=" not in text
    assert str(tmp_path) not in text
    with pytest.raises(AssertionError, match="--rounds 2"):
        run_module("benchmarks.report", "ratelimit", *map(str, runs), "--md", str(page))


def test_a_new_variant_region_goes_beside_its_sibling() -> None:
    """A region written for the first time lands after the marker it is told to follow
    (a -cpu region beside its wall-time one), else at the end; an existing one is
    replaced where it is."""
    from benchmarks._docs import merge_region  # noqa: PLC0415  # the harness, not the package

    page = "# B\n\n<!-- m:begin -->\nwall\n<!-- m:end -->\n\n## later\n"
    cpu = "<!-- m-cpu:begin -->\ncpu\n<!-- m-cpu:end -->\n"
    markers = {"begin": "<!-- m-cpu:begin -->", "end": "<!-- m-cpu:end -->"}
    added = merge_region(page, cpu, **markers, after="<!-- m:end -->")
    assert added == (
        "# B\n\n<!-- m:begin -->\nwall\n<!-- m:end -->\n\n<!-- m-cpu:begin -->\ncpu\n"
        "<!-- m-cpu:end -->\n\n## later\n"
    )
    again = merge_region(added, cpu.replace("cpu\n", "cpu 2\n"), **markers, after="<!-- m:end -->")
    assert again == added.replace("cpu\n<!-- m-cpu:end", "cpu 2\n<!-- m-cpu:end")
    assert merge_region(page, cpu, **markers, after="<!-- gone:end -->").endswith(
        "## later\n\n" + cpu
    )
