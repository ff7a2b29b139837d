"""
Run a node: the aiohttp application, its listening socket and a graceful stop.

On SIGTERM (or SIGINT) the node reports 503 on ``/health``, stops accepting
connections, lets in-flight requests finish (up to 10 s), waits for replication
batches on the wire, flushes storage (the writer thread commits what is queued and
checkpoints the WAL) and returns; the process exits 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import signal
import sys
import threading

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.typedefs import Middleware

from resilient import ResilienceError
from resilient.integrations.aiohttp import add_metrics_route, resilience_middleware
from resilient.integrations.otel import aiohttp_server_span_middleware

from .._process import uvloop_factory
from .config import NodeConfig
from .handlers import NODE_KEY, node_middleware, routes
from .loops import use_loop
from .node import Node
from .validate import MAX_BUDGET

__all__ = ["build_app", "serve"]

_INTERNAL_MAX_BYTES = 64 << 20  # a replication batch: up to 4 MiB of records, plus slack
_DRAIN_SECONDS = 10.0
_IDLE_SECONDS = 20.0
"""A connection without a request in progress is closed after this: an idle keep-alive
connection, and one whose request headers never finish (slowloris), which would
otherwise hold a file descriptor for aiohttp's default of an hour. Above aiohttp's
client pool idle time (15 s), so a pooling client (a peer, `KVClient`) drops an idle
connection before the node closes it under its feet."""
_log = logging.getLogger("examples.kv")


def build_app(node: Node) -> web.Application:
    """
    The node's application: routes, error and auth middleware, deadline and trace.
    """
    middlewares: list[Middleware] = [node_middleware]
    if node.tracing is not None:
        # The caller's trace context made current, then a SERVER span under it. Not
        # needed for deadlines: handlers read X-Request-Timeout-Ms themselves and the
        # coordinator answers within it (a 503 saying how many replicas answered), and
        # peer batches carry their own deadline. Without tracing it is not installed:
        # it costs every request, internal ones included.
        middlewares += [
            resilience_middleware(enforce_deadline=False, max_deadline=MAX_BUDGET),
            aiohttp_server_span_middleware(node.tracing.provider),
        ]
    app = web.Application(middlewares=middlewares, client_max_size=_INTERNAL_MAX_BYTES)
    app[NODE_KEY] = node
    app.add_routes(routes())
    add_metrics_route(app, node.registry)
    return app


async def serve(config: NodeConfig) -> None:
    """
    Run a node until SIGTERM or SIGINT, then stop gracefully.
    """
    use_loop(asyncio.get_running_loop())  # before the app: its tasks inherit it
    node = Node(config)
    runner = web.AppRunner(
        build_app(node), access_log=None, handle_signals=False,
        shutdown_timeout=_DRAIN_SECONDS, keepalive_timeout=_IDLE_SECONDS,
    )  # fmt: skip
    await runner.setup()
    site = web.TCPSite(runner, config.host, config.port, backlog=1024)
    try:
        await site.start()
    except OSError as error:
        await runner.cleanup()
        await node.close()
        raise SystemExit(
            f"kv node {config.node_id}: cannot listen on {config.port}: {error}"
        ) from error
    try:
        await node.start()  # listening first: peers that learn of us can reach us
    except (OSError, ResilienceError) as error:
        await runner.cleanup()
        await node.close()
        raise SystemExit(f"kv node {config.node_id}: {_join_failed(config, error)}") from error
    _freeze_startup_objects()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    if config.stop_on_stdin_eof:
        _watch_stdin(loop, stop)
    node.ready = True
    print(f"kv node {config.node_id} listening on {config.host}:{config.port}", flush=True)
    await stop.wait()
    node.ready = False
    _log.info("stopping: draining in-flight requests")
    await runner.cleanup()  # stop listening, then wait for in-flight handlers
    await node.close()
    print(f"kv node {config.node_id} stopped", flush=True)


def _watch_stdin(loop: asyncio.AbstractEventLoop, stop: asyncio.Event) -> None:
    """
    Set `stop` once stdin reaches its end (``--stop-on-stdin-eof``).

    A parent that starts nodes with a pipe as their stdin keeps the other end; when it
    exits, however it exits (a SIGKILL included), the kernel closes that end and every
    node sees end of file and stops gracefully. Unlike ``PR_SET_PDEATHSIG`` this is
    portable and follows the parent process, not the thread that started the node.
    A blocking read in a daemon thread: stdin may be a pipe, a file or a terminal.
    """

    def wait_for_eof() -> None:
        try:
            while os.read(0, 4096):
                pass  # whatever the parent writes means nothing
        except OSError:
            pass  # stdin closed or unreadable: the lifeline is gone all the same
        _log.warning("stdin closed: stopping")
        with contextlib.suppress(RuntimeError):  # the loop already closed: stopped anyway
            loop.call_soon_threadsafe(stop.set)

    threading.Thread(target=wait_for_eof, name="kv-stdin-watch", daemon=True).start()


class _ClientFaultsInOneLine(logging.Filter):
    """
    Log a client's malformed request as one line, without aiohttp's traceback.

    aiohttp's server logs a malformed request (bad chunking, an undecodable body, a
    request line too long) with a traceback: anyone could fill the node's log with
    them. Such a record keeps its line and loses the traceback; others pass unchanged.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        if isinstance(error, _CLIENT_FAULTS):
            text = " ".join(str(error).split())[:200]
            record.msg = f"{record.getMessage()}: {type(error).__name__}: {text}"
            record.args = None
            record.exc_info = record.exc_text = None
        return True


_CLIENT_FAULTS = (HttpProcessingError, web.RequestPayloadError, ConnectionResetError)


def _freeze_startup_objects() -> None:
    # What exists once the node is up (modules, the app, the node: some 44,000 objects)
    # lives as long as the process. Frozen, a full collection under load scans only what
    # requests left behind, not all of these again, and a full collection stops the
    # event loop and every request on it while it scans (GET /cluster counts them and
    # their durations). gc.freeze as in Instagram's Python servers.
    gc.collect()
    gc.freeze()


def run(config: NodeConfig) -> int:
    """
    Run `serve` on a fresh event loop (uvloop's when installed); the exit code.
    """
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    logging.getLogger("aiohttp.server").addFilter(_ClientFaultsInOneLine())
    with asyncio.Runner(loop_factory=uvloop_factory()) as runner:
        runner.run(serve(config))
    return 0


def _join_failed(config: NodeConfig, error: BaseException) -> str:
    # The innermost cause says what went wrong ("Cannot connect to host ..."); the
    # wrappers' reprs around it only hide it.
    cause = error
    while cause.__cause__ is not None:
        cause = cause.__cause__
    reason = str(cause) or type(cause).__name__
    if config.discovery is None:
        return f"cannot join the cluster: {reason}"
    return (
        f"cannot join the cluster through etcd at {config.discovery.endpoint}: {reason} "
        "(is etcd running there? --discovery etcd://host:port names its client port)"
    )
