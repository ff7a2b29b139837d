"""`python -m benchmarks.instructions`: instructions per call from two valgrind runs."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import pytest

from benchmarks import instructions
from benchmarks.instructions import (
    instructions_per_call,
    main,
    parse_misses,
    parse_total,
    worker_environment,
)
from tests._paths import REPO_ROOT as ROOT
from tests._servers import require_binary

SUMMARY = """\
==4242== Cachegrind, a high-precision tracing profiler
==4242== I   refs:      1,234,567,890
"""


def test_the_total_is_read_from_cachegrinds_summary() -> None:
    assert parse_total(SUMMARY) == 1_234_567_890
    with pytest.raises(ValueError, match="no 'I refs' line"):
        parse_total("==1== valgrind: failed to start tool 'cachegrind'")


def test_one_call_is_the_difference_over_the_difference_in_calls() -> None:
    """Start-up and building, the same in both programs, cancel out."""
    start_up, per_call = 50_000_000, 330
    low, high = (1000, start_up + 1000 * per_call), (4000, start_up + 4000 * per_call)
    assert instructions_per_call(low, high) == per_call
    with pytest.raises(ValueError, match="different numbers of calls"):
        instructions_per_call((10, 1), (10, 2))


def test_each_run_seeds_string_hashing_with_its_number() -> None:
    """
    Dict and set layouts then match in a case's two programs and across the run's cases;
    left random, a count moved by a thousand instructions between invocations.
    """
    assert worker_environment(2)["PYTHONHASHSEED"] == "2"
    assert worker_environment(1)["PATH"]  # the rest of the environment is kept


def test_bad_command_lines_say_what_is_wrong() -> None:
    with pytest.raises(SystemExit, match="--low 5 must be >= 0 and below --high 5"):
        main(["--low", "5", "--high", "5"])
    with pytest.raises(SystemExit, match="--runs 0: at least 1"):
        main(["--runs", "0"])


def test_an_unknown_case_fails_before_valgrind_runs_anything(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """
    A name that is no case (a typo, or a name copied with its line break from a wrapped
    command in the docs) is refused at once, naming the known ones, not after the cases
    before it ran for minutes and inside valgrind's output.
    """

    def valgrind_ran(*args: object) -> int:
        raise AssertionError(f"valgrind ran {args[2]!r} before the names were checked")

    monkeypatch.setattr(instructions, "_count", valgrind_ran)
    with pytest.raises(SystemExit, match=r"has no case 'bare\\nClientSession'") as raised:
        main(["--case", "bare ClientSession", "--case", "bare\nClientSession"])
    assert "'aiohttp-retry RetryClient'" in str(raised.value)


def _worker(case: str, calls: int) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "benchmarks.instructions", "--worker", "benchmarks.middleware",
         case, str(calls)],
        cwd=ROOT, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip


def test_a_worker_makes_its_calls_outside_valgrind() -> None:
    """The process valgrind runs: builds the case and makes its calls (here, unmeasured)."""
    done = _worker("ResilienceMiddleware, Retry(3) only, propagate=False", 20)
    assert done.returncode == 0, done.stderr[-2000:]


def test_an_unknown_case_is_named_with_the_known_ones() -> None:
    done = _worker("no such case", 1)
    assert done.returncode != 0
    assert "has no case 'no such case'" in done.stderr
    assert "'bare ClientSession'" in done.stderr


def test_a_short_measurement_counts_a_gets_instructions() -> None:
    """Two tiny programs under valgrind: a local GET executes some 100k-1M instructions."""
    require_binary("valgrind")  # tests/run installs it; CI fails rather than skip
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.instructions", "--case", "bare ClientSession",
         "--runs", "1", "--low", "20", "--high", "60"],
        cwd=ROOT, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    per_call = int(done.stdout.splitlines()[1].split()[0].replace(",", ""))
    assert 100_000 < per_call < 1_000_000, done.stdout


CACHE_SUMMARY = """\
==4242== I   refs:      1,234,567,890
==4242== LL refs:          68,867,120  ( 65,401,966 rd   +   3,465,154 wr)
==4242== LL misses:        11,506,087  ( 10,606,238 rd   +     899,849 wr)
==4242== LL miss rate:            0.3% (        0.3%     +         0.3%  )
"""


def test_the_l2_misses_are_read_from_cachegrinds_summary() -> None:
    """With --cache-sim, the last level simulated (this machine's L2) misses this often."""
    assert parse_misses(CACHE_SUMMARY) == 11_506_087
    with pytest.raises(ValueError, match="no 'LL misses' line"):
        parse_misses(SUMMARY)  # --cache-sim=no: no cache figures


def test_cache_sim_prints_a_second_table_of_misses(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Each case's L2 misses per call, from the same two programs as its instructions."""
    counts = {"bare ClientSession": (300, 1000), "aiohttp-retry RetryClient": (330, 1200)}
    simulated: list[bool] = []

    def count(*program: Any) -> Any:  # valgrind, module, name, calls, run, cache_sim
        name, calls, cache_sim = program[2], program[3], program[5]
        simulated.append(cache_sim)
        instructions, misses = counts[name]
        return 10_000 + calls * instructions, 500 + calls * misses

    monkeypatch.setattr(instructions, "_count", count)
    monkeypatch.setattr("shutil.which", lambda _: "/usr/bin/valgrind")
    main(["--cache-sim", "--runs", "1", "--low", "1", "--high", "3",
          "--case", "bare ClientSession", "--case", "aiohttp-retry RetryClient"])  # fmt: skip
    out = capsys.readouterr().out
    assert simulated == [True] * 4
    assert "L2 misses per call" in out
    assert "+200 (200-200)  aiohttp-retry RetryClient" in out
    assert "+30 (30-30)  aiohttp-retry RetryClient" in out
