"""
The HTTP API: client routes under ``/kv/``, node-to-node routes under ``/internal/``.
"""

from __future__ import annotations

import hmac
import json
import logging
from collections.abc import Awaitable, Callable

from aiohttp import web

from .codec import (
    HELD_BACK,
    HELD_BACK_HEADER,
    READ_ANSWER_BYTES,
    HeldBack,
    answer_bytes,
    decode_keys,
    decode_traced,
    encode_acks,
    encode_found,
)
from .config import KEY_NOT_FOUND
from .coordinator import QuorumError
from .loops import running_loop
from .node import Node
from .storage import Record
from .validate import InputError, budget_of, error_response, key_of, quorum_of, read_value

__all__ = ["NODE_KEY", "node_middleware", "routes"]

NODE_KEY = web.AppKey("node", Node)
VERSION_HEADER = "X-KV-Version"
_NEEDS_CLUSTER = "send the cluster token (the nodes' KV_CLUSTER_TOKEN)"
_NEEDS_CLIENT = "send the client token (the nodes' KV_CLIENT_TOKEN)"
_log = logging.getLogger(__name__)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def node_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """
    Tokens, then the handler; every error as JSON ``{"error": ...}``, never a traceback.

    ``/internal/`` needs the cluster token; ``/kv/`` the client token when one is set.
    One middleware, not two: each layer costs every request a coroutine and aiohttp's
    per-middleware wrapper, and this runs on every client and node-to-node request.
    """
    try:
        config = request.app[NODE_KEY].config
        path = request.path
        if path.startswith("/internal"):
            refused = _bearer_ok(request, config.cluster_token, _NEEDS_CLUSTER)
        elif config.client_token is not None and path.startswith("/kv"):
            refused = _bearer_ok(request, config.client_token, _NEEDS_CLIENT)
        else:
            refused = None
        return refused if refused is not None else await handler(request)
    except InputError as error:
        return error_response(error.status, error.message)
    except (ConnectionResetError, web.RequestPayloadError) as error:
        # The client's fault, not ours: a body that can't be decoded, or a connection
        # dropped mid-body (then nobody reads this answer). No traceback in the log.
        return error_response(400, f"body unreadable: {str(error)[:200]}")
    except web.HTTPException as error:
        if error.status < 400 or error.content_type == "application/json":  # noqa: PLR2004
            raise
        return _http_error(request, error)
    except Exception:  # noqa: BLE001  # the last line of defence: never a traceback
        _log.exception("%s %s failed", request.method, request.path[:200])
        return error_response(500, "internal error")


def _http_error(request: web.Request, error: web.HTTPException) -> web.Response:
    # aiohttp's own errors (404, 405) as JSON; a 405 keeps its Allow header (RFC 9110
    # requires it) and says which methods would do.
    path = request.path[:200]
    if isinstance(error, web.HTTPMethodNotAllowed):
        allowed = ", ".join(sorted(error.allowed_methods))
        response = error_response(
            405, f"{error.reason}: {request.method[:20]} {path}; allowed: {allowed}", path=path
        )
        response.headers["Allow"] = ",".join(sorted(error.allowed_methods))
        return response
    return error_response(error.status, error.reason, path=path)


def _bearer_ok(request: web.Request, token: str, which: str) -> web.Response | None:
    # `which` names the variable that holds the token, never the token itself.
    given = request.headers.get("Authorization")
    if given is None:
        response = error_response(401, f"missing Authorization: Bearer <token>: {which}")
        response.headers["WWW-Authenticate"] = "Bearer"
        return response
    scheme, _, secret = given.partition(" ")
    expected = token.encode()
    if scheme.lower() != "bearer" or not hmac.compare_digest(
        secret.strip().encode("utf-8", "replace"), expected
    ):
        return error_response(403, f"wrong token: {which}")
    return None


def _quorum_failed(node: Node, op: str, error: QuorumError) -> web.Response:
    node.count(op, "503")
    return error_response(503, str(error), acked=error.acked, needed=error.needed)


async def put_key(request: web.Request) -> web.StreamResponse:
    """
    ``PUT /kv/{key}``: store the body on W replicas; 204 with ``X-KV-Version``.
    """
    return await _write(request, delete=False)


async def delete_key(request: web.Request) -> web.StreamResponse:
    """
    ``DELETE /kv/{key}``: write a tombstone on W replicas; 204.
    """
    return await _write(request, delete=True)


async def _write(request: web.Request, *, delete: bool) -> web.StreamResponse:
    node = request.app[NODE_KEY]
    op = "delete" if delete else "put"
    key = key_of(request)
    w = quorum_of(request, "w", node.config.write_quorum, node.config.replicas)
    budget = budget_of(request)
    if not delete:
        # The deadline covers the body too: a client trickling it in can't hold a
        # handler (and a slot of the drain at SIGTERM) for longer than it asked for.
        loop = running_loop()
        started = loop.time()
        value = await read_value(request, budget)
        budget -= loop.time() - started
    else:
        value = None
    try:
        record, acked = await node.coordinator.write(key, value, w, budget)
    except QuorumError as error:
        return _quorum_failed(node, op, error)
    node.count(op, "204")
    headers = {VERSION_HEADER: str(record.version), "X-KV-Acked": str(acked)}
    return web.Response(status=204, headers=headers)


async def get_key(request: web.Request) -> web.StreamResponse:
    """
    ``GET /kv/{key}``: the newest of R replicas; 404 when absent or deleted.
    """
    node = request.app[NODE_KEY]
    key = key_of(request)
    r = quorum_of(request, "r", node.config.read_quorum, node.config.replicas)
    budget = budget_of(request)
    try:
        record = await node.coordinator.read(key, r, budget)
    except QuorumError as error:
        return _quorum_failed(node, "get", error)
    if record is None or record.value is None:
        node.count("get", "404")
        response = error_response(404, KEY_NOT_FOUND)
        if record is not None:
            response.headers[VERSION_HEADER] = str(record.version)
        return response
    node.count("get", "200")
    return web.Response(
        body=record.value,
        headers={VERSION_HEADER: str(record.version)},
        content_type="application/octet-stream",
    )


async def internal_replicate(request: web.Request) -> web.StreamResponse:
    """
    ``POST /internal/replicate``: store a batch of records; one ack byte each.
    """
    node = request.app[NODE_KEY]
    try:
        batch = decode_traced(await request.read())
    except ValueError as error:
        return error_response(400, f"bad batch: {error}")
    for record, _ in batch:
        node.clock.observe(record.version)
    tracing = node.tracing
    spans = [] if tracing is None else [tracing.replica_span(t, node.id) for _, t in batch if t]
    try:
        applied = await node.storage.apply([record for record, _ in batch])
    finally:
        for span in spans:
            span.end()
    return web.Response(body=encode_acks(applied), content_type="application/octet-stream")


async def internal_read(request: web.Request) -> web.StreamResponse:
    """
    ``POST /internal/read``: this node's own records of a batch of keys.

    With the ``X-KV-Held-Back`` header (from a coordinator that reads the marker) the
    answer stops once it carries `READ_ANSWER_BYTES` of keys and values, and marks the
    other keys `HELD_BACK`.
    """
    node = request.app[NODE_KEY]
    try:
        keys = decode_keys(await request.read())
    except ValueError as error:
        return error_response(400, f"bad batch: {error}")
    found: list[Record | HeldBack | None] = []
    size = 0
    # Capped in bytes, not only in keys: 1,024 keys of 1 MiB values would be a 1 GiB
    # answer built here and held by the coordinator. The keys past the cap are held back
    # (the coordinator asks again); the first is always sent, so each answer makes
    # progress. Only for a coordinator that reads the marker: an older one would take
    # it for a malformed record and fail the whole batch.
    cap = READ_ANSWER_BYTES if HELD_BACK_HEADER in request.headers else None
    for key in keys:
        if cap is not None and size >= cap:
            found.append(HELD_BACK)
            continue
        record = node.storage.get(key)
        found.append(record)
        if record is not None:
            size += answer_bytes(record)
    return web.Response(body=encode_found(keys, found), content_type="application/octet-stream")


async def internal_key(request: web.Request) -> web.StreamResponse:
    """
    ``GET /internal/kv/{key}``: this node's own record of one key (for operators, tests).

    200 with the value and ``X-KV-Version`` (``X-KV-Tombstone: 1`` for a tombstone),
    404 when the node holds no record of it.
    """
    node = request.app[NODE_KEY]
    record = node.storage.get(key_of(request, "/internal/kv/"))
    if record is None:
        return error_response(404, "no record here")
    headers = {VERSION_HEADER: str(record.version)}
    if record.value is None:
        headers["X-KV-Tombstone"] = "1"
    return web.Response(body=record.value or b"", headers=headers)


async def internal_peer_calls(request: web.Request) -> web.StreamResponse:
    """
    ``PUT /internal/peer-calls``: this node's calls to its peers, with or without policies.

    Body ``{"resilient": true}`` or ``{"resilient": false}`` (plain aiohttp, as with
    ``--plain-peers``); answers the mode now in force. For benchmarks: one set of
    processes measured both ways, so nothing but the calls' path differs.
    """
    node = request.app[NODE_KEY]
    try:
        body = json.loads(await request.read())
    except (ValueError, RecursionError):  # bad JSON, bad UTF-8, or nested too deep
        return error_response(400, 'body: expected JSON {"resilient": true|false}')
    if not isinstance(body, dict) or set(body) != {"resilient"}:
        return error_response(400, 'body: expected exactly one field, {"resilient": true|false}')
    resilient = body["resilient"]
    if not isinstance(resilient, bool):
        return error_response(400, f"resilient: expected true or false, got {resilient!r:.40}")
    node.peers.switch(plain=not resilient)
    return web.json_response({"node": node.id, "resilient": not node.peers.plain})


async def cluster(request: web.Request) -> web.StreamResponse:
    """
    ``GET /cluster``: members, status as seen from here, ring ownership.
    """
    node = request.app[NODE_KEY]
    await node.keys_stored.get()  # off the event loop: a full scan (node.KeyCount)
    view = node.cluster_view()
    return web.Response(body=json.dumps(view).encode(), content_type="application/json")


async def health(request: web.Request) -> web.StreamResponse:
    """
    ``GET /health``: 200 when serving, 503 while starting or stopping.
    """
    node = request.app[NODE_KEY]
    if not node.ready:
        return error_response(503, "not ready", node=node.id)
    return web.json_response({"status": "ok", "node": node.id})


def routes() -> list[web.RouteDef]:
    """
    Every route of a node.
    """
    return [
        web.put("/kv/{key:[\\s\\S]*}", put_key),
        web.get("/kv/{key:[\\s\\S]*}", get_key),
        web.delete("/kv/{key:[\\s\\S]*}", delete_key),
        web.post("/internal/replicate", internal_replicate),
        web.post("/internal/read", internal_read),
        web.get("/internal/kv/{key:[\\s\\S]*}", internal_key),
        web.put("/internal/peer-calls", internal_peer_calls),
        web.get("/cluster", cluster),
        web.get("/health", health),
    ]
