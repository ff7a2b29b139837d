"""
The layer rule and the absence of import cycles (docs/architecture.md), as contracts of
import-linter in pyproject.toml, run with `lint-imports`.

The engine imports nothing above it, policies never import the service layer, the core
never imports the integrations, the integrations import only the public core API, and no
modules or packages import each other in a cycle.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests._paths import REPO_ROOT

LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")
CONTRACTS = (
    "Layers: the service layer on the policies on the engine",
    "Integrations import only the public core API",
    "The core never imports the integrations",
    "No import cycles between modules or packages",
)


def lint_imports(root: Path) -> subprocess.CompletedProcess[str]:
    """
    Run lint-imports in `root` (its pyproject.toml, its `resilient`), without a cache.
    """
    if not LINT_IMPORTS.exists():
        pytest.fail(f"{LINT_IMPORTS} missing: install the dev extra (import-linter)")
    return subprocess.run(  # our own tool on our own files
        [str(LINT_IMPORTS), "--no-cache", "--no-logo"],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def copy_of_the_package(target: Path) -> Path:
    """
    Copy pyproject.toml, resilient/ and integrations/ (the link kept a link) to `target`.
    """
    shutil.copy2(REPO_ROOT / "pyproject.toml", target / "pyproject.toml")
    ignore = shutil.ignore_patterns("__pycache__")
    shutil.copytree(REPO_ROOT / "resilient", target / "resilient", symlinks=True, ignore=ignore)
    shutil.copytree(REPO_ROOT / "integrations", target / "integrations", ignore=ignore)
    return target


def test_every_contract_is_kept() -> None:
    """
    The project keeps each of its import contracts.
    """
    completed = lint_imports(REPO_ROOT)
    assert completed.returncode == 0, completed.stdout + completed.stderr
    for name in CONTRACTS:
        assert f"{name} KEPT" in completed.stdout, completed.stdout


@pytest.mark.parametrize(
    ("module", "line", "contract"),
    [
        ("_engine/clock.py", "from .._service import pool", CONTRACTS[0]),
        ("_policies/retry.py", "from .._service import health", CONTRACTS[0]),
        ("integrations/otel.py", "from resilient._engine import hooks", CONTRACTS[1]),
        ("_service/pool.py", "from resilient.integrations import prometheus", CONTRACTS[2]),
        ("_engine/events.py", "from . import policy", CONTRACTS[3]),
    ],
)
def test_a_forbidden_import_breaks_its_contract(
    tmp_path: Path, module: str, line: str, contract: str
) -> None:
    """
    The check can fail: one forbidden import added to a copy of the package breaks the
    contract it offends (and lint-imports exits non-zero).
    """
    root = copy_of_the_package(tmp_path)
    path = root / "resilient" / module
    path.write_text(path.read_text() + f"\n{line}  # noqa\n")
    completed = lint_imports(root)
    assert completed.returncode != 0
    assert f"{contract} BROKEN" in completed.stdout, completed.stdout
