"""Memory `ResilienceMiddleware` holds after requests to many distinct origins.

Usage (from the repository root)::

    python -m benchmarks.middleware_keys                    # 100,000 origins, default cap
    python -m benchmarks.middleware_keys --keys 5000 --max-keys 100

Each origin's policy (the default policy) is built through `policy_for`, the path every
request takes; the script prints how much the process' resident memory grew and how
many policies the middleware still holds. Linux only (reads ``/proc/self/status``).
"""

from __future__ import annotations

import argparse
import gc
import sys
import time
from pathlib import Path

from resilient.integrations.aiohttp import DEFAULT_MAX_KEYS, ResilienceMiddleware


def rss_mib() -> float:
    """
    This process' resident set size, in MiB.
    """
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def main(argv: list[str] | None = None) -> int:
    """
    Build the policies of `--keys` origins; print the memory growth and the repr.
    """
    parser = argparse.ArgumentParser(prog="python -m benchmarks.middleware_keys")
    parser.add_argument("--keys", type=int, default=100_000)
    parser.add_argument("--max-keys", type=int, default=DEFAULT_MAX_KEYS)
    args = parser.parse_args(argv)
    middleware = ResilienceMiddleware(max_keys=args.max_keys)
    middleware.policy_for("http://warm-up")
    gc.collect()
    before, started = rss_mib(), time.perf_counter()
    for n in range(args.keys):
        middleware.policy_for(f"http://host-{n}.example:80")
    gc.collect()
    print(
        f"RSS +{rss_mib() - before:.1f} MiB after {args.keys:,} origins"
        f" in {time.perf_counter() - started:.1f} s; {middleware!r}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
