"""
Happy-path cost of this tree against an earlier revision, side by side in one process.

    python -m benchmarks.revisions 1825b3a              # 15 rounds x 20,000 calls, seed 1
    python -m benchmarks.revisions 1825b3a --seed 2 --rounds 30
    python -m benchmarks.revisions 1825b3a --cpu         # CPU time: beside other work

`resilient/` of the revision is taken from git (``git archive``) into a temporary folder
as the package ``resilient_base`` (its imports are relative, so it loads beside this
tree's `resilient`). Each policy of `benchmarks.overhead` is built from both, and all are
timed in the same interleaved, shuffled rounds (`benchmarks._perf.interleave`), so
machine noise hits both alike. Prints, per policy, the median ns per call before and
after, their ratio, and the range of the per-round ratio.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import importlib
import io
import statistics
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path
from types import ModuleType

import resilient
from benchmarks import _perf
from benchmarks._perf import Case, interleave
from benchmarks.overhead import resilient_cases

ROOT = Path(__file__).resolve().parent.parent


def load_revision(revision: str, into: Path) -> ModuleType:
    """Extract `resilient/` of `revision` under `into` and import it as ``resilient_base``."""
    archive = subprocess.run(
        ["git", "archive", "--format=tar", revision, "resilient"],
        cwd=ROOT,
        capture_output=True,
        check=True,
    ).stdout
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(into, filter="data")
    (into / "resilient").rename(into / "resilient_base")
    sys.path.insert(0, str(into))
    return importlib.import_module("resilient_base")


def contenders(base: ModuleType) -> list[Case]:
    """Each policy (Hedge aside: a task per call) built from `base`, then from this tree."""
    built = []
    for tag, module in (("before", base), ("after", resilient)):
        built += [
            dataclasses.replace(case, name=f"{tag}:{case.name}")
            for case in resilient_cases(module)
            if not case.name.startswith("hedge/")
        ]
    return built


def main() -> None:
    """Parse the options, time both trees' policies and print the table."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.revisions", description=__doc__)
    parser.add_argument("revision", help="the git revision to compare with, e.g. 1825b3a")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--calls", type=int, default=20_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--cpu", action="store_true", help="time process CPU, not wall time (a shared machine)"
    )
    args = parser.parse_args()
    _perf._use(argparse.Namespace(cpu=args.cpu, uvloop=False))  # noqa: SLF001  # the clock
    with tempfile.TemporaryDirectory(prefix="resilient-base-") as folder:
        cases = contenders(load_revision(args.revision, Path(folder)))
        samples = asyncio.run(interleave(cases, args.rounds + 2, args.calls, args.seed))
    print(f"{'policy':34} {'before ns':>10} {'after ns':>10} {'ratio':>6}  per-round ratio")
    for case in cases[len(cases) // 2 :]:
        key = case.name.removeprefix("after:")
        before, after = samples[f"before:{key}"][2:], samples[case.name][2:]  # 2 warm-up rounds
        per_round = [a / b for a, b in zip(after, before, strict=True)]
        b_ns, a_ns = statistics.median(before) * 1e9, statistics.median(after) * 1e9
        print(
            f"{key:34} {b_ns:10.0f} {a_ns:10.0f} {a_ns / b_ns:6.3f}"
            f"  {min(per_round):.3f}..{max(per_round):.3f}"
        )


if __name__ == "__main__":
    main()
