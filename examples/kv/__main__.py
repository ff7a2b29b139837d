"""
``python -m examples.kv``: run a node, or put/get/delete a key.

    KV_CLUSTER_TOKEN=secret python -m examples.kv node --id n1 --port 7001 \
        --data-dir ./data/n1 --peers n1=127.0.0.1:7001,n2=127.0.0.1:7002,n3=127.0.0.1:7003
    python -m examples.kv put greeting hello --node 127.0.0.1:7001
    python -m examples.kv get greeting --node 127.0.0.1:7002
    python -m examples.kv demo       # a 5-node cluster loses a node and keeps serving
    python -m examples.kv bench      # throughput and latency, with and without resilient
"""

from __future__ import annotations

import sys

from . import missing_extra


def _main_or_missing_extra() -> int:
    try:
        # Lazily, so that a missing kv extra (aiohttp, rich...) is one line, not a traceback.
        from .commands import main  # noqa: PLC0415

        return main()
    except ModuleNotFoundError as error:  # no kv extra: one line saying what to install
        message = missing_extra(error)
        if message is None:
            raise
        print(f"python -m examples.kv: {message}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(_main_or_missing_extra())
