"""
The README's Python snippets run as written, each in a fresh interpreter.

A snippet runs alone: nothing from the snippets before it, nothing from the test. The
only exception is a snippet the README itself marks as a fragment, with an HTML comment
on the line before its fence naming what it leaves to the reader::

    <!-- fragment: ping_db, ping_cache -->

Those names, and only those, get the stand-ins below (each a small, real object of the
kind the prose describes). A name declared but not used, or used but not declared, fails
the test, so the markers stay honest.
"""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from tests._paths import REPO_ROOT

README = REPO_ROOT / "README.md"

FENCE = re.compile(r"(?:<!-- fragment: (?P<names>[\w, ]+) -->\n)?```python\n(?P<code>.*?)```", re.S)

STAND_INS = {
    "ping_db": "async def ping_db() -> bool:\n    return True\n",
    "ping_cache": "async def ping_cache() -> bool:\n    return True\n",
    "breaker": "from resilient import CircuitBreaker\nbreaker = CircuitBreaker(name='db')\n",
    "bulkhead": "from resilient import Bulkhead\nbulkhead = Bulkhead(10, name='db')\n",
    "provider": (
        "from opentelemetry.sdk.trace import TracerProvider\nprovider = TracerProvider()\n"
    ),
}


def snippets() -> list[tuple[int, list[str], str]]:
    """
    Every ```python block of the README: its line, declared fragment names, code.
    """
    text = README.read_text(encoding="utf-8")
    return [
        (
            text.count("\n", 0, match.start("code")) + 1,
            [name.strip() for name in (match["names"] or "").split(",") if name.strip()],
            match["code"],
        )
        for match in FENCE.finditer(text)
    ]


def test_the_readme_has_snippets() -> None:
    """The parser finds the README's snippets (a broken pattern would test nothing)."""
    found = snippets()
    assert len(found) >= 6
    assert any(names for _, names, _ in found)  # the fragment markers are read


@pytest.mark.parametrize(("line", "names", "code"), snippets(), ids=lambda v: str(v)[:20])
def test_snippet_runs_as_written(line: int, names: list[str], code: str) -> None:
    """Each snippet runs in a fresh interpreter, warnings as errors, with stand-ins only
    for the names its fragment marker declares."""
    for name in names:
        assert name in STAND_INS, f"README line {line}: no stand-in for {name!r}"
        assert re.search(rf"\b{name}\b", code), f"README line {line}: {name!r} is not used"
    preamble = "".join(STAND_INS[name] for name in names)
    done = subprocess.run(
        [sys.executable, "-W", "error", "-c", preamble + code],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, f"README line {line}:\n{done.stderr[-3000:]}"


def test_one_name_per_kind_of_registry() -> None:
    """A name bound to a registry in one snippet is never bound to another kind elsewhere
    (a discovery `InMemoryRegistry` and a Prometheus `CollectorRegistry` both called
    ``registry`` would read as one object)."""
    kinds: dict[str, set[str]] = {}
    for _, _, code in snippets():
        for name, kind in re.findall(r"^(\w+) = (\w*Registry)\(", code, re.M):
            kinds.setdefault(name, set()).add(kind)
    assert {"metrics_registry", "service_registry"} <= kinds.keys()
    assert all(len(found) == 1 for found in kinds.values()), kinds
