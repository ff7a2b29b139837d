"""
The mutation-testing command's own interface (``python -m tests.mutation``), which a new
contributor meets through ``--help`` before reading docs/contributing.md.
"""

from __future__ import annotations

import pytest

from tests import mutation


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
