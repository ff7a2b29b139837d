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

from . import missing_extra

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m examples.kv", description=__doc__.split("\n")[1]
    )
    from .config import add_node_arguments

    commands = parser.add_subparsers(dest="command", required=True)
    add_node_arguments(commands.add_parser("node", help="run a node"))
    from .cli import add_client_commands

    add_client_commands(commands)
    from .demo import add_demo_arguments

    add_demo_arguments(commands.add_parser("demo", help="watch a local cluster survive a kill"))
    from .bench import add_bench_arguments

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
        from .config import ConfigError, config_warnings, node_config

        try:
            config = node_config(args)
        except ConfigError as error:
            print(f"kv node: error: {error}", file=sys.stderr)
            return 2
        for warning in config_warnings(config):
            print(f"kv node {config.node_id}: warning: {warning}", file=sys.stderr)
        from .server import run

        return run(config)
    if args.command == "demo":
        from .demo import run_demo

        return run_demo(args)
    if args.command == "bench":
        from .bench import run_bench

        return run_bench(args, sys.argv[1:] if argv is None else argv)
    from .cli import run_client

    return run_client(args)


def _main_or_missing_extra() -> int:
    try:
        return main()
    except ModuleNotFoundError as error:  # no kv extra: one line saying what to install
        message = missing_extra(error)
        if message is None:
            raise
        print(f"python -m examples.kv: {message}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(_main_or_missing_extra())
