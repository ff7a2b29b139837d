"""
Running this interpreter in a subprocess: the examples, the docs' programs, code that must
start from a fresh import state.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

from tests._paths import REPO_ROOT

__all__ = ["python", "run_module", "run_python"]


def python(
    *args: str,
    cwd: Path = REPO_ROOT,
    env: Mapping[str, str] | None = None,
    timeout: float = 60.0,
) -> subprocess.CompletedProcess[str]:
    """
    Run this interpreter with `args` in `cwd`, within `timeout` seconds; return the
    outcome, output captured as text, whatever the exit status.

    Args:
        args: The interpreter's arguments (``"-c", code`` or ``"-m", module, ...``).
        cwd: Where it runs (default: the repository root, so ``tests`` and ``examples``
            import).
        env: Variables added to this process's environment.
        timeout: Seconds it may take (`subprocess.TimeoutExpired` after).
    """
    return subprocess.run(  # our own interpreter and arguments
        [sys.executable, *args],
        cwd=cwd,
        env={**os.environ, **env} if env else None,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def run_python(*args: str, timeout: float = 60.0) -> str:
    """
    Run this interpreter with `args` from the repository root; return what it printed.

    Fails the test (with the tail of stderr) when it exits non-zero.
    """
    done = python(*args, timeout=timeout)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def run_module(*args: str, timeout: float = 60.0) -> str:
    """
    `run_python` of ``-m`` `args`: run a module, return what it printed.
    """
    return run_python("-m", *args, timeout=timeout)
