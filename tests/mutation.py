"""
Mutation testing with cosmic-ray: plant small bugs in the code, run the tests, list the
bugs no test noticed (the survivors).

Not part of CI (a full run takes hours): run it on the code you changed, with the tests
that cover it, before you call the tests done. See docs/contributing.md.

    python -m tests.mutation resilient/_service/discovery.py::ServiceView._follow \\
        --tests "tests/service/test_discovery.py"

Each target is a file (every mutant in it) or ``file::Qualified.name`` (the mutants in
that function or class). The tree is copied to a scratch directory and mutated there, so
the work tree is never touched, even by an interrupted run; ``resilient/integrations``
stays a symlink to ``integrations/``, as in the repository. Prints every surviving mutant
(file, line, operator, diff) and the score, killed / (killed + survived); exits 1 when a
mutant survived.
"""

from __future__ import annotations

import argparse
import ast
import json
import shlex
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from tests._paths import REPO_ROOT

# Not copied to the scratch tree: caches, virtualenvs and build output.
IGNORED = shutil.ignore_patterns(
    ".git",
    ".venv*",
    "__pycache__",
    "*.egg-info",
    ".mypy_cache",
    ".ruff_cache",
    ".pytest_cache",
    ".hypothesis",
    ".coverage",
    "build",
    "dist",
)


@dataclass(frozen=True, slots=True)
class Target:
    """
    Where mutants are planted: a file, and the lines of one definition in it (or all).
    """

    path: str
    name: str | None
    lines: range | None


def parse_target(spec: str, source: Path) -> Target:
    """
    Turn ``file`` or ``file::Qualified.name`` into a `Target`, checking that it exists.
    """
    path, _, name = spec.partition("::")
    module = source / path
    if not module.is_file():
        raise SystemExit(f"mutation: no file {path!r} under {source}")
    if not name:
        return Target(path, None, None)
    tree = ast.parse(module.read_text(), filename=str(module))
    lines = definition_lines(tree, name.split("."))
    if lines is None:
        raise SystemExit(f"mutation: no function or class {name!r} in {path}")
    return Target(path, name, lines)


def definition_lines(node: ast.AST, names: Sequence[str]) -> range | None:
    """
    The lines (decorators included) of the definition reached by `names` from `node`.
    """
    for child in ast.iter_child_nodes(node):
        if (
            isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef)
            and child.name == names[0]
        ):
            if len(names) > 1:
                return definition_lines(child, names[1:])
            first = min([child.lineno, *(d.lineno for d in child.decorator_list)])
            return range(first, (child.end_lineno or child.lineno) + 1)
    return None


def pytest_command(tests: str) -> list[str]:
    """
    The command testing one mutant: stop at the first failure, leave no cache behind.
    """
    return [
        sys.executable,
        "-m",
        "pytest",
        "-x",
        "-q",
        "-p",
        "no:cacheprovider",
        *shlex.split(tests),
    ]


def write_config(work: Path, targets: Iterable[Target], tests: str, timeout: float) -> Path:
    """
    Write the cosmic-ray session config: the files to mutate and the test command.
    """
    paths = sorted({target.path for target in targets})
    command = pytest_command(tests)
    config = work / "mutation.toml"
    # json.dumps writes valid TOML strings and arrays of strings.
    config.write_text(
        "[cosmic-ray]\n"
        f"module-path = {json.dumps(paths)}\n"
        f"timeout = {float(timeout)}\n"
        "excluded-modules = []\n"
        f"test-command = {json.dumps(shlex.join(command))}\n"
        '\n[cosmic-ray.distributor]\nname = "local"\n'
    )
    return config


def annotation_spans(module: Path) -> list[tuple[tuple[int, int], tuple[int, int]]]:
    """
    The (start, end) positions of every type annotation in `module`.

    A mutant there (``Clock | None`` made ``Clock & None``) is equivalent: the modules
    use ``from __future__ import annotations``, so annotations are never evaluated.
    """
    spans = []
    for node in ast.walk(ast.parse(module.read_text())):
        for note in (getattr(node, "annotation", None), getattr(node, "returns", None)):
            if isinstance(note, ast.expr) and note.end_lineno is not None:
                end = (note.end_lineno, note.end_col_offset or 0)
                spans.append(((note.lineno, note.col_offset), end))
    return spans


def keep_in_scope(session: Path, targets: Sequence[Target]) -> int:
    """
    Drop the session's mutants outside the targets' lines or in annotations; return how
    many are left.
    """
    from cosmic_ray.work_db import use_db  # noqa: PLC0415  # the optional mutation extra

    notes = {t.path: annotation_spans(session.parent / t.path) for t in targets}
    with use_db(str(session)) as db:
        kept = [
            item
            for item in db.work_items
            if all(in_scope(m, targets) and not in_annotation(m, notes) for m in item.mutations)
        ]
        db.clear()
        db.add_work_items(kept)
    return len(kept)


def in_scope(mutation: object, targets: Sequence[Target]) -> bool:
    """
    Whether a cosmic-ray `MutationSpec` lies in one of the targets.
    """
    path = str(getattr(mutation, "module_path", ""))
    line = getattr(mutation, "start_pos", (0, 0))[0]
    return any(
        target.path == path and (target.lines is None or line in target.lines) for target in targets
    )


def in_annotation(
    mutation: object, notes: dict[str, list[tuple[tuple[int, int], tuple[int, int]]]]
) -> bool:
    """
    Whether a cosmic-ray `MutationSpec` lies in a type annotation.
    """
    start = tuple(getattr(mutation, "start_pos", (0, 0)))
    spans = notes.get(str(getattr(mutation, "module_path", "")), [])
    return any(first <= start < last for first, last in spans)


def report(session: Path) -> int:
    """
    Print the survivors and the score; return how many survived.
    """
    from cosmic_ray.work_db import WorkDB, use_db  # noqa: PLC0415  # the optional mutation extra
    from cosmic_ray.work_item import TestOutcome  # noqa: PLC0415  # as above

    counts = dict.fromkeys(TestOutcome, 0)
    with use_db(str(session), WorkDB.Mode.open) as db:
        for item, result in db.completed_work_items:
            if result.test_outcome is None:
                continue
            counts[result.test_outcome] += 1
            if result.test_outcome is TestOutcome.SURVIVED:
                for mutation in item.mutations:
                    print(
                        f"SURVIVED {mutation.module_path}:{mutation.start_pos[0]}"
                        f" in {mutation.definition_name} ({mutation.operator_name})"
                    )
                print(result.diff or "", end="\n\n")
    killed, survived = counts[TestOutcome.KILLED], counts[TestOutcome.SURVIVED]
    judged = killed + survived
    score = f"{100 * killed / judged:.1f}%" if judged else "n/a"
    print(
        f"mutants: {judged + counts[TestOutcome.INCOMPETENT]}; killed {killed}, survived"
        f" {survived}, incompetent {counts[TestOutcome.INCOMPETENT]}; score {score}"
    )
    return survived


def run(args: argparse.Namespace) -> int:
    """
    Copy the tree, plant the mutants in scope one at a time, test each, report.
    """
    source = Path(args.source).resolve()
    targets = [parse_target(spec, source) for spec in args.targets]
    scratch = Path(tempfile.mkdtemp(prefix="resilient-mutation-"))
    work = scratch / "tree"
    try:
        shutil.copytree(source, work, symlinks=True, ignore=IGNORED)
        config = write_config(work, targets, args.tests, args.timeout)
        session = work / "mutation.sqlite"
        baseline = subprocess.run(
            pytest_command(args.tests),
            cwd=work,
            capture_output=True,
            text=True,
            check=False,
        )
        if baseline.returncode != 0:
            print(baseline.stdout[-3000:], baseline.stderr[-3000:], sep="\n")
            print("mutation: the tests fail without any mutant; fix them first")
            return 2
        cosmic_ray = [sys.executable, "-m", "cosmic_ray.cli"]
        subprocess.run([*cosmic_ray, "init", str(config), str(session)], cwd=work, check=True)
        print(f"mutation: {keep_in_scope(session, targets)} mutants in scope", flush=True)
        subprocess.run(
            [*cosmic_ray, "exec", str(config), str(session)],
            cwd=work,
            check=True,
            stdout=subprocess.DEVNULL,
        )
        survived = report(session)
    finally:
        if args.keep:
            print(f"mutation: scratch tree kept in {work}")
        else:
            shutil.rmtree(scratch, ignore_errors=True)
    return 1 if survived else 0


def main(argv: Sequence[str] | None = None) -> int:
    """
    Parse the command line and run.
    """
    parser = argparse.ArgumentParser(
        prog="python -m tests.mutation",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,  # keeps the example one command
    )
    parser.add_argument("targets", nargs="+", help="file or file::Qualified.name to mutate")
    parser.add_argument(
        "--tests", default="tests", help='pytest arguments choosing the tests (default "tests")'
    )
    parser.add_argument(
        "--timeout", type=float, default=300.0, help="seconds one test run may take"
    )
    parser.add_argument(
        "--source", default=str(REPO_ROOT), help="the tree to copy (default: this one)"
    )
    parser.add_argument("--keep", action="store_true", help="keep the scratch tree afterwards")
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
