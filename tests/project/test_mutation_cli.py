"""
The mutation-testing command's own interface (``python -m tests.mutation``), which a new
contributor meets through ``--help`` before reading docs/contributing.md.
"""

from __future__ import annotations

import re

import pytest

from tests import mutation
from tests._paths import REPO_ROOT


def test_help_keeps_the_example_command_as_written(capsys: pytest.CaptureFixture[str]) -> None:
    """
    ``--help`` prints the module's example as the command to copy, one argument per line
    with its backslash continuation, not reflowed into the surrounding prose.
    """
    with pytest.raises(SystemExit) as exit_info:
        mutation.main(["--help"])
    assert exit_info.value.code == 0
    lines = capsys.readouterr().out.splitlines()
    example = "    python -m tests.mutation resilient/_service/discovery.py::ServiceView._follow \\"
    assert example in lines
    assert '        --tests "tests/service/test_discovery.py"' in lines


def test_every_target_in_the_contributing_table_exists() -> None:
    """
    The scopes table in docs/contributing.md names functions to mutate; one renamed in
    the code (``set_deadline_header`` became ``stamp_headers``) would make the documented
    command exit at once. Each ``file::name`` there must resolve, a ``::name`` alone
    being in the file before it.
    """
    text = (REPO_ROOT / "docs" / "contributing.md").read_text()
    rows = [line for line in text.splitlines() if line.startswith("| ") and "::" in line]
    assert len(rows) >= 5
    checked = 0
    for row in rows:
        targets = row.split("|")[2]
        path = ""
        for spec in re.findall(r"`([^`]*::[^`]*)`", targets):
            file, _, name = spec.partition("::")
            path = file or path
            mutation.parse_target(f"{path}::{name}", REPO_ROOT)  # SystemExit if missing
            checked += 1
    assert checked >= len(rows)
