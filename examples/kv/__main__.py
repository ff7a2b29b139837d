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

import argparse
import sys

from .bench import add_bench_arguments, run_bench
from .cli import add_client_commands, run_client
from .config import ConfigError, add_node_arguments, node_config
from .demo import add_demo_arguments, run_demo
from .server import run

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m examples.kv", description=__doc__.split("\n")[1]
    )
    commands = parser.add_subparsers(dest="command", required=True)
    add_node_arguments(commands.add_parser("node", help="run a node"))
    add_client_commands(commands)
    add_demo_arguments(commands.add_parser("demo", help="watch a local cluster survive a kill"))
    add_bench_arguments(
        commands.add_parser("bench", help="throughput and latency, with and without resilient")
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    """
    Parse `argv` and run the command; the exit code.
    """
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command == "node":
        try:
            config = node_config(args)
        except ConfigError as error:
            print(f"kv node: error: {error}", file=sys.stderr)
            return 2
        return run(config)
    if args.command == "demo":
        return run_demo(args)
    if args.command == "bench":
        return run_bench(args, sys.argv[1:] if argv is None else argv)
    return run_client(args)


if __name__ == "__main__":
    sys.exit(main())
