"""
Packaging: what a wheel holds, what a non-editable install imports, and what type
checkers see through the editable install.

`integrations/` ships as `resilient.integrations` through the tracked symlink
``resilient/integrations -> ../integrations``: the wheel copies the linked files under
``resilient/integrations/`` and has no top-level ``integrations``. The editable install is
a static path entry (the project root), which mypy follows; setuptools' import-hook
finder, used for a ``package-dir`` mapping, hides the package from type checkers.

The wheel is built once per module, offline (``--no-build-isolation``, with the
``setuptools`` the dev extra installs), from a copy of the files git tracks or would
track: about two seconds.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

from tests._paths import REPO_ROOT


def run(argv: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    """
    Run `argv` (our own interpreter and tools) in `cwd`, within 120 s.
    """
    return subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=120, check=False)


def source_files() -> list[str]:
    """
    The files a clean clone would have (tracked, or new and not ignored).
    """
    if shutil.which("git") is None or not (REPO_ROOT / ".git").exists():
        pytest.skip("needs a git checkout to know which files a clean clone has")
    listed = run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], REPO_ROOT)
    assert listed.returncode == 0, listed.stderr
    return [name for name in listed.stdout.split("\0") if name]


def clean_copy(target: Path) -> Path:
    """
    Copy the clean-clone files (symlinks as symlinks) to `target`; return it.
    """
    for name in source_files():
        source, copy = REPO_ROOT / name, target / name
        if not source.is_symlink() and not source.exists():
            continue  # deleted in the work tree, not yet in the index
        copy.parent.mkdir(parents=True, exist_ok=True)
        if source.is_symlink():
            copy.symlink_to(source.readlink())
        else:
            shutil.copy2(source, copy)
    return target


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """
    A wheel built from a clean copy of the project.
    """
    source = clean_copy(tmp_path_factory.mktemp("source"))
    out = tmp_path_factory.mktemp("wheel")
    argv = [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation"]
    built = run([*argv, "--no-cache-dir", "-w", str(out), str(source)], source)
    assert built.returncode == 0, built.stdout + built.stderr
    (path,) = out.glob("resilient-*.whl")
    return path


def modules_under(folder: Path) -> set[str]:
    """
    Every ``.py`` file and ``py.typed`` under `folder`, relative to it, as posix paths.
    """
    return {
        path.relative_to(folder).as_posix()
        for path in folder.rglob("*")
        if path.suffix == ".py" or path.name == "py.typed"
    }


def test_wheel_holds_every_module_under_resilient(wheel: Path) -> None:
    """
    The wheel carries every module of resilient/ and of integrations/ (under
    resilient/integrations/), the py.typed marker, and nothing at top level but
    `resilient` and its metadata.
    """
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
    core = {f"resilient/{name}" for name in modules_under(REPO_ROOT / "resilient")}
    linked = {
        f"resilient/integrations/{name}" for name in modules_under(REPO_ROOT / "integrations")
    }
    assert "resilient/integrations/aiohttp/_client.py" in linked  # the walk saw subpackages
    assert {"resilient/_engine/policy.py", "resilient/_service/pool.py"} <= core  # and layers
    assert core | linked <= names
    tops = {name.split("/")[0] for name in names}
    assert {top for top in tops if not top.endswith(".dist-info")} == {"resilient"}


def test_wheel_install_has_no_top_level_integrations(wheel: Path, tmp_path: Path) -> None:
    """
    Installed from the wheel (not editable), ``resilient.integrations.aiohttp`` imports
    from the install and ``import integrations`` fails.
    """
    target = tmp_path / "site"
    installed = run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target),
         str(wheel)],
        tmp_path,
    )  # fmt: skip
    assert installed.returncode == 0, installed.stderr
    # -S: no site processing, so the editable install's .pth (the project root) is not
    # read; the venv's site-packages is appended bare for the dependencies.
    dependencies = sysconfig.get_paths()["purelib"]
    code = (
        "import sys, importlib.util\n"
        f"sys.path[:0] = [{str(target)!r}]; sys.path.append({dependencies!r})\n"
        "import resilient.integrations.aiohttp as module\n"
        "print(module.__file__)\n"
        "print(importlib.util.find_spec('integrations'))\n"
    )
    completed = run([sys.executable, "-S", "-c", code], tmp_path)
    assert completed.returncode == 0, completed.stderr
    path, spec = completed.stdout.split()
    assert Path(path).is_relative_to(target)
    assert spec == "None"


def test_editable_install_is_visible_to_mypy(tmp_path: Path) -> None:
    """
    Run from another folder, mypy (with this interpreter, so through its editable
    install) finds `resilient.integrations.aiohttp` and `.etcd` with their types.
    """
    probe = tmp_path / "probe.py"
    probe.write_text(
        "import resilient\n"
        "import resilient.integrations.aiohttp\n"
        "from resilient.integrations.etcd import EtcdRegistry\n"
        "wrong: int = EtcdRegistry\n"  # an error only if the class's type is known
    )
    argv = [sys.executable, "-m", "mypy", "--no-incremental", "--follow-imports=silent"]
    completed = run([*argv, "--config-file=/dev/null", str(probe)], tmp_path)
    output = completed.stdout + completed.stderr
    assert "import-not-found" not in output, output
    assert "probe.py:4: error: Incompatible types in assignment" in output, output
