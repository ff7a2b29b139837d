"""
The docs pages' complete programs run as written, each in a fresh interpreter.

Most blocks in docs/*.md are signatures or fragments. A block that is a whole program
says so with an HTML comment on the line before its fence::

    <!-- runs -->

and this test runs it, warnings as errors; when the page then says "It prints:" over a
``text`` block, the output must be exactly that. ``<!-- runs: needs redis-server on
127.0.0.1:6379 -->`` marks one that talks to Redis: it runs against the session's
``redis-server``, with the documented port replaced by the fixture's.
"""

from __future__ import annotations

import re

import pytest

from tests._paths import REPO_ROOT
from tests._redis import RedisServer
from tests._run import run_python

DOCS = REPO_ROOT / "docs"
REDIS_PORT = "port=6379"

FENCE = re.compile(
    r"<!-- runs(?P<needs>: needs redis-server[^>]*)? -->\n```python\n(?P<code>.*?)```"
    r"(?:\n+It prints[^\n]*\n+```text\n(?P<output>.*?)```)?",
    re.S,
)


def programs() -> list[tuple[str, bool, str, str | None]]:
    """
    Every marked block of the docs: where it is, whether it needs Redis, its code, and
    the output the page shows for it (None when it shows none).
    """
    found = []
    for page in sorted(DOCS.glob("*.md")):
        text = page.read_text(encoding="utf-8")
        for match in FENCE.finditer(text):
            line = text.count("\n", 0, match.start("code")) + 1
            where = f"{page.name}:{line}"
            found.append((where, bool(match["needs"]), match["code"], match["output"]))
    return found


def test_the_docs_have_marked_programs() -> None:
    """The marker is found (a broken pattern would test nothing), Redis ones included."""
    found = programs()
    assert len(found) >= 4
    assert any(needs for _, needs, _, _ in found)
    assert any(output for _, _, _, output in found)


@pytest.mark.parametrize(
    ("where", "code", "output"),
    [(where, code, output) for where, needs, code, output in programs() if not needs],
    ids=lambda v: str(v)[:24],
)
def test_program_runs_as_written(where: str, code: str, output: str | None) -> None:
    """Each marked program runs in a fresh interpreter, warnings as errors, and prints
    what the page says it prints."""
    printed = run_python("-W", "error", "-c", code)
    if output is not None:
        assert printed == output, where


@pytest.mark.server
@pytest.mark.parametrize(
    ("where", "code"),
    [(where, code) for where, needs, code, _ in programs() if needs],
    ids=lambda v: str(v)[:24],
)
def test_redis_program_runs_against_a_real_redis(
    where: str, code: str, redis_server: RedisServer
) -> None:
    """Each program that needs Redis runs as written against a real one (only its
    documented port changed)."""
    assert REDIS_PORT in code, f"{where}: expected {REDIS_PORT!r} to point at the test's Redis"
    run_python("-W", "error", "-c", code.replace(REDIS_PORT, f"port={redis_server.port}"))


def test_the_benchmark_targets_table_has_a_figure_in_every_row() -> None:
    """Each row of docs/benchmarks.md's targets table says what was reached: a figure or a
    verdict, never a placeholder left for a later edit (three rows once read
    "PATHS_FAILURE" and the like for a whole day)."""
    lines = (REPO_ROOT / "docs" / "benchmarks.md").read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("| target (issues"))
    rows = []
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        rows.append(line)
    assert len(rows) >= 10, rows
    for row in rows:
        reached = row.rstrip(" |").rsplit(" | ", 1)[1]
        assert not re.search(r"\b[A-Z]{2,}(?:_[A-Z]+)+\b", reached), row
        assert re.search(r"\d", reached), row  # a figure, with its spread
