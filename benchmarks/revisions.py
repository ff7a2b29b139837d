"""
Happy-path cost of this tree against an earlier revision, side by side in one process.

    python -m benchmarks.revisions 1825b3a              # 15 rounds x 20,000 calls, seed 1
    python -m benchmarks.revisions 1825b3a --seed 2 --rounds 30

`resilient/` of the revision is taken from git (``git archive``) into a temporary folder
as the package ``resilient_base`` (its imports are relative, so it loads beside this
tree's `resilient`). Each policy of `benchmarks._resilient` is built from both, and all
are timed in interleaved, shuffled rounds by `benchmarks._harness`, so machine noise hits
both alike. Prints, per policy, the median ns per call before and after, their ratio, and
the spread of the per-round ratio. Used to show a change leaves the happy path as it was.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import importlib
import io
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path
from types import ModuleType

import resilient
from benchmarks import _resilient as builders
from benchmarks._harness import Contender, run_rounds, summarise
from benchmarks.overhead import bare_contender

ROOT = Path(__file__).resolve().parent.parent
BUILDERS = (
    builders.build_retry,
    builders.build_retry_call,
    builders.build_breaker,
    builders.build_bulkhead,
    builders.build_timeout,
    builders.build_fallback,
    builders.build_pipeline,
)


def load_revision(revision: str, into: Path) -> ModuleType:
    """
    Extract `resilient/` of `revision` under `into` and import it as ``resilient_base``.
    """
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


def contenders(base: ModuleType) -> list[Contender]:
    """
    The bare call, then each policy built from `base` ("before") and this tree ("after").
    """
    built = [bare_contender()]
    for build in BUILDERS:
        for tag, module in (("before", base), ("after", resilient)):
            one = build(module)
            built.append(
                dataclasses.replace(one, key=f"{tag}:{one.key}", label=f"{tag} {one.label}")
            )
    return built


async def compare(base: ModuleType, rounds: int, calls: int, seed: int) -> None:
    """
    Time both trees' policies and print the table.
    """
    timed = contenders(base)
    samples = await run_rounds(timed, rounds=rounds, calls=calls, warmup=2, seed=seed)
    by_key = {summary.contender.key: summary for summary in summarise(samples)}
    print(f"{'policy':34} {'before ns':>10} {'after ns':>10} {'ratio':>6}  per-round ratio")
    for contender in timed[1::2]:
        key = contender.key.removeprefix("before:")
        before, after = by_key[f"before:{key}"], by_key[f"after:{key}"]
        per_round = [a / b for a, b in zip(after.samples, before.samples, strict=True)]
        ratio = after.ns_per_call.median / before.ns_per_call.median
        print(
            f"{key:34} {before.ns_per_call.median:10.0f} {after.ns_per_call.median:10.0f}"
            f" {ratio:6.3f}  {min(per_round):.3f}..{max(per_round):.3f}"
        )


def main() -> None:
    """
    Parse the options and run the comparison.
    """
    parser = argparse.ArgumentParser(prog="python -m benchmarks.revisions", description=__doc__)
    parser.add_argument("revision", help="the git revision to compare with, e.g. 1825b3a")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--calls", type=int, default=20_000)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="resilient-base-") as folder:
        base = load_revision(args.revision, Path(folder))
        asyncio.run(compare(base, args.rounds, args.calls, args.seed))


if __name__ == "__main__":
    main()
