"""
``python -m examples.kv put|get|delete KEY [VALUE] --node host:port``.

``get`` writes the value's raw bytes to stdout; a missing key exits 1 with a message on
stderr; a refused request (bad input, quorum not met) or an unreachable node exits 2.
``KV_CLIENT_TOKEN`` is sent when set.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from typing import Any

from resilient import ResilienceError

from .client import KVClient, KVError
from .config import CLIENT_TOKEN_ENV

__all__ = ["add_client_commands", "run_client"]


def add_client_commands(commands: Any) -> None:
    """
    Declare ``put``, ``get`` and ``delete`` on an argparse subparsers object.
    """
    for name, text in (
        ("put", "store a value"),
        ("get", "print a value"),
        ("delete", "delete a key"),
    ):
        command: argparse.ArgumentParser = commands.add_parser(name, help=text)
        command.add_argument("key")
        if name == "put":
            command.add_argument("value", help="the value ('-' reads stdin)")
        command.add_argument(
            "--node", action="append", required=True, help="host:port of a node (repeatable)"
        )
        command.add_argument("--timeout", type=float, default=2.0, help="seconds (default 2)")


def run_client(args: argparse.Namespace) -> int:
    """
    Run a parsed client command; the exit code.
    """
    try:
        return asyncio.run(_run(args))
    except KVError as error:
        print(f"kv {args.command}: {error}", file=sys.stderr)
    except (ResilienceError, OSError) as error:
        print(f"kv {args.command}: {_unanswered(args.node, error)}", file=sys.stderr)
    except ValueError as error:
        print(f"kv {args.command}: error: {error}", file=sys.stderr)
    return 2


def _unanswered(nodes: list[str], error: BaseException) -> str:
    # str, not repr: aiohttp's connector errors read well as text and as reprs do not.
    reason = str(error) or type(error).__name__
    return (
        f"no node answered (tried {', '.join(nodes)}): {reason}; is a node running there? "
        "(a node serves once GET /health answers 200)"
    )


async def _run(args: argparse.Namespace) -> int:
    token = os.environ.get(CLIENT_TOKEN_ENV) or None
    async with KVClient(args.node, timeout=args.timeout, token=token) as kv:
        if args.command == "put":
            value = sys.stdin.buffer.read() if args.value == "-" else os.fsencode(args.value)
            print(await kv.put(args.key, value))
            return 0
        if args.command == "delete":
            print(await kv.delete(args.key))
            return 0
        value = await kv.get(args.key)
        if value is None:
            print(f"kv get: {args.key!r} not found", file=sys.stderr)
            return 1
        sys.stdout.buffer.write(value)
        sys.stdout.buffer.flush()
        return 0
