"""
The ``node`` command line and its validation.

    KV_CLUSTER_TOKEN=secret python -m examples.kv node --id n1 --port 7001 \
        --data-dir ./data/n1 --peers n1=127.0.0.1:7001,n2=127.0.0.1:7002,n3=127.0.0.1:7003

Every mistake ends the process with exit code 2 and one line on stderr naming the
option and the value (argparse's own convention for usage errors).
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass
from pathlib import Path

from yarl import URL

from .hlc import NODE_ID

__all__ = [
    "CLIENT_TOKEN_ENV",
    "CLUSTER_TOKEN_ENV",
    "KEY_NOT_FOUND",
    "ConfigError",
    "Discovery",
    "NodeConfig",
    "add_node_arguments",
    "config_warnings",
    "node_config",
    "parse_address",
    "parse_discovery",
    "parse_peers",
]

CLUSTER_TOKEN_ENV = "KV_CLUSTER_TOKEN"  # noqa: S105  # a variable name, not a secret
CLIENT_TOKEN_ENV = "KV_CLIENT_TOKEN"  # noqa: S105  # a variable name, not a secret
KEY_NOT_FOUND = "key not found"
"""A GET's 404 error on the wire: it tells a node's "no such key" from another server's 404."""
_MAX_PORT = 65535


class ConfigError(ValueError):
    """
    A node option or environment variable is wrong; the message says which.
    """


@dataclass(frozen=True, slots=True)
class Discovery:
    """
    Where the members find each other: ``etcd://host:port[/prefix/][?ttl=seconds]``.

    Attributes:
        endpoint: etcd's client URL (``http://host:port``).
        prefix: The key prefix (default ``/examples-kv/``).
        ttl: Seconds a dead node stays listed, at most (default 5).
    """

    endpoint: str
    prefix: str = "/examples-kv/"
    ttl: float = 5.0


def parse_discovery(text: str) -> Discovery:
    """
    Read ``--discovery``.

    Raises:
        ConfigError: Not ``etcd://host:port``, or a bad prefix or ttl.
    """
    try:
        url = URL(text)
        port = url.port
    except ValueError:
        url, port = URL(), None
    if url.scheme != "etcd" or not url.host or port is None or url.user or url.fragment:
        raise ConfigError(f"--discovery {text!r}: expected etcd://host:port")
    ttl_text = url.query.get("ttl", "5")
    if not ttl_text.isascii() or not ttl_text.isdigit() or not 1 <= int(ttl_text) <= 3600:  # noqa: PLR2004
        raise ConfigError(f"--discovery {text!r}: ttl must be whole seconds from 1 to 3600")
    prefix = url.path if url.path not in {"", "/"} else "/examples-kv/"
    prefix = prefix if prefix.endswith("/") else prefix + "/"
    return Discovery(f"http://{url.host}:{port}", prefix, float(ttl_text))


@dataclass(frozen=True, slots=True)
class NodeConfig:
    """
    Everything a node needs to start.

    Attributes:
        node_id: This node's id.
        host: The address to listen on.
        port: The port to listen on.
        data_dir: Where the node keeps its data.
        peers: Every member (itself included), id -> ``host:port``.
        replicas: N, copies of each key.
        write_quorum: W, default replicas that must hold a write durably.
        read_quorum: R, default replicas asked for a read.
        cluster_token: The secret of ``/internal/`` calls.
        client_token: The secret of the client API, or None (open).
        discovery: Where etcd is, or None (static ``--peers``).
        traces_exporter: ``OTEL_TRACES_EXPORTER``: ``console``, ``otlp`` or ``none``.
        plain_peers: Node-to-node calls without policies (a benchmark's baseline).
        stop_on_stdin_eof: Stop (as on SIGTERM) when standard input reaches its end:
            the parent holding the pipe's other end exited, even by SIGKILL.
    """

    node_id: str
    host: str
    port: int
    data_dir: Path
    peers: dict[str, str]
    replicas: int = 3
    write_quorum: int = 2
    read_quorum: int = 2
    cluster_token: str = ""
    client_token: str | None = None
    discovery: Discovery | None = None
    traces_exporter: str = "none"
    plain_peers: bool = False
    stop_on_stdin_eof: bool = False


def parse_address(text: str, what: str = "address") -> tuple[str, int]:
    """
    Split ``host:port``.

    Raises:
        ConfigError: Not ``host:port`` with a port in 1..65535.
    """
    host, sep, port = text.strip().rpartition(":")
    if not sep or not host or not port.isascii() or not port.isdigit():
        raise ConfigError(f"{what} {text!r}: expected host:port")
    number = int(port)
    if not 0 < number <= _MAX_PORT:
        raise ConfigError(f"{what} {text!r}: port must be 1..65535")
    return host, number


def parse_peers(text: str) -> dict[str, str]:
    """
    Read ``--peers id=host:port,...`` into id -> ``host:port``.

    Raises:
        ConfigError: An entry is malformed, an id is invalid or repeated.
    """
    peers: dict[str, str] = {}
    for entry in filter(None, (part.strip() for part in text.split(","))):
        node, sep, address = entry.partition("=")
        if not sep:
            raise ConfigError(f"--peers entry {entry!r}: expected id=host:port")
        if not NODE_ID.fullmatch(node):
            raise ConfigError(f"--peers entry {entry!r}: id must match [A-Za-z0-9_-]{{1,64}}")
        if node in peers:
            raise ConfigError(f"--peers: node id {node!r} appears twice")
        host, port = parse_address(address, f"--peers entry {entry!r}")
        peers[node] = f"{host}:{port}"
    if not peers:
        raise ConfigError(f"--peers {text!r}: lists no member")
    return peers


def add_node_arguments(parser: argparse.ArgumentParser) -> None:
    """
    Declare the ``node`` command's options on `parser`, and its environment in the help.
    """
    parser.epilog = (
        f"environment: {CLUSTER_TOKEN_ENV} (required) is the secret every node of the "
        f"cluster shares for /internal/; {CLIENT_TOKEN_ENV}, when set, guards /kv/ too; "
        "OTEL_TRACES_EXPORTER=console|otlp|none and OTEL_SERVICE_NAME (default kv-<id>) "
        "set up tracing. A node serves once GET /health answers 200. "
        "See examples/kv/README.md."
    )
    parser.add_argument("--id", required=True, dest="node_id", help="this node's id")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument("--port", type=int, required=True, help="port to listen on")
    parser.add_argument("--data-dir", type=Path, required=True, help="where data is kept")
    parser.add_argument("--peers", help="every member, itself included: id=host:port,...")
    parser.add_argument("--replicas", type=int, default=3, help="N (default 3)")
    parser.add_argument("--write-quorum", type=int, default=2, help="W (default 2)")
    parser.add_argument("--read-quorum", type=int, default=2, help="R (default 2)")
    parser.add_argument("--discovery", help="etcd://host:port instead of --peers")
    parser.add_argument(
        "--plain-peers",
        action="store_true",
        help="benchmark baseline: node-to-node calls with plain aiohttp, no resilient policies",
    )
    parser.add_argument(
        "--stop-on-stdin-eof",
        action="store_true",
        help="stop gracefully when stdin closes (for a supervisor holding a pipe to it:"
        " the node then dies with its parent, even a SIGKILLed one)",
    )


def node_config(args: argparse.Namespace, environ: dict[str, str] | None = None) -> NodeConfig:
    """
    Validate parsed ``node`` options and the environment into a `NodeConfig`.

    Raises:
        ConfigError: Anything is missing, malformed or inconsistent.
    """
    env = os.environ if environ is None else environ
    token = env.get(CLUSTER_TOKEN_ENV, "")
    if not token:
        raise ConfigError(
            f"{CLUSTER_TOKEN_ENV} is not set: give every node of the cluster the same secret, "
            f"e.g. {CLUSTER_TOKEN_ENV}=secret python -m examples.kv node ..."
        )
    node_id: str = args.node_id
    if not NODE_ID.fullmatch(node_id):
        raise ConfigError(f"--id {node_id!r}: must match [A-Za-z0-9_-]{{1,64}}")
    if not 0 < args.port <= _MAX_PORT:
        raise ConfigError(f"--port {args.port}: must be 1..65535")
    discovery = None
    if args.discovery is not None:
        discovery = parse_discovery(args.discovery)
        peers = {node_id: f"{args.host}:{args.port}"}
    elif args.peers is None:
        raise ConfigError("--peers is required (or --discovery etcd://host:port)")
    else:
        peers = parse_peers(args.peers)
        if node_id not in peers:
            raise ConfigError(f"--peers does not list this node (--id {node_id!r})")
    _check_quorums(args)
    exporter = env.get("OTEL_TRACES_EXPORTER", "").strip().lower() or "none"
    if exporter not in {"console", "otlp", "none"}:
        raise ConfigError(f"OTEL_TRACES_EXPORTER={exporter!r}: expected console, otlp or none")
    return NodeConfig(
        node_id=node_id, host=args.host, port=args.port, data_dir=args.data_dir, peers=peers,
        replicas=args.replicas, write_quorum=args.write_quorum, read_quorum=args.read_quorum,
        cluster_token=token, client_token=env.get(CLIENT_TOKEN_ENV) or None,
        discovery=discovery, traces_exporter=exporter, plain_peers=args.plain_peers,
        stop_on_stdin_eof=args.stop_on_stdin_eof,
    )  # fmt: skip


def config_warnings(config: NodeConfig) -> list[str]:
    """
    What in a valid `config` is almost certainly a mistake, for stderr.

    The node starts anyway: its command line is a contract, and etcd membership changes.
    """
    if config.discovery is not None:
        return []
    found = (_too_few_members(config), _wrong_own_address(config))
    return [warning for warning in found if warning is not None]


def _too_few_members(config: NodeConfig) -> str | None:
    members = len(config.peers)
    short = [
        f"{name} ({option} {value})"
        for name, option, value in (
            ("writes", "--write-quorum", config.write_quorum),
            ("reads", "--read-quorum", config.read_quorum),
        )
        if value > members
    ]
    if not short:
        return None
    return (
        f"--peers lists {members} member(s), too few for {' and '.join(short)}: they will "
        "answer 503; list every member in --peers (this node included), or for one node "
        "pass --replicas 1 --write-quorum 1 --read-quorum 1"
    )


def _wrong_own_address(config: NodeConfig) -> str | None:
    listed, here = config.peers[config.node_id], f"{config.host}:{config.port}"
    if listed == here or not listed.startswith(f"{config.host}:"):  # other host: a proxy
        return None
    return (
        f"--peers lists {config.node_id} at {listed} but it listens on {here}: "
        "the other nodes will not reach it"
    )


def _check_quorums(args: argparse.Namespace) -> None:
    if args.replicas < 1:
        raise ConfigError(f"--replicas {args.replicas}: must be >= 1")
    for option, value in (
        ("--write-quorum", args.write_quorum),
        ("--read-quorum", args.read_quorum),
    ):
        if not 1 <= value <= args.replicas:
            raise ConfigError(f"{option} {value}: must be 1..{args.replicas} (--replicas)")
