"""
The commands of ``python -m examples.kv``: node, put/get/delete, demo, bench.

Kept apart from ``__main__`` so that ``__main__`` can import it lazily and turn a missing
``kv`` extra into one line saying what to install.
"""

from __future__ import annotations

import argparse
import sys

from .bench import add_bench_arguments, run_bench
from .cli import add_client_commands, run_client
from .config import ConfigError, add_node_arguments, config_warnings, node_config
from .demo import add_demo_arguments, run_demo
from .server import run

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m examples.kv", description="run a node, or put/get/delete a key"
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
        for warning in config_warnings(config):
            print(f"kv node {config.node_id}: warning: {warning}", file=sys.stderr)
        return run(config)
    if args.command == "demo":
        return run_demo(args)
    if args.command == "bench":
        return run_bench(args, sys.argv[1:] if argv is None else argv)
    return run_client(args)
