"""
Client input checks: every bad request becomes a 4xx with a JSON body naming the problem.

Limits (documented in README.md):

- a key is 1 to 1024 bytes of valid UTF-8 once percent-decoded;
- a value is at most 1 MiB (larger: 413);
- ``?w=`` and ``?r=`` are integers from 1 to N;
- ``X-Request-Timeout-Ms``, when sent, is an integer from 1 to 86,400,000 (a day).
"""

from __future__ import annotations

import asyncio
import json
import re
from urllib.parse import unquote_to_bytes

from aiohttp import web

from resilient.integrations.aiohttp import DEADLINE_HEADER, parse_deadline

__all__ = [
    "DEFAULT_BUDGET",
    "MAX_KEY_BYTES",
    "MAX_VALUE_BYTES",
    "InputError",
    "budget_of",
    "error_response",
    "key_of",
    "quorum_of",
    "read_value",
]

MAX_KEY_BYTES = 1024
MAX_VALUE_BYTES = 1 << 20
DEFAULT_BUDGET = 2.0
"""Seconds a request may take when the caller sends no ``X-Request-Timeout-Ms``."""
MAX_BUDGET = 60.0
"""The longest deadline a caller may ask for: a quorum that can't be met answers by then."""
_KV_PREFIX = "/kv/"
_DIGITS = re.compile(r"[0-9]{1,9}")


def error_response(status: int, message: str, **extra: object) -> web.Response:
    """
    A JSON error: ``{"error": message, ...extra}``.
    """
    return web.Response(
        status=status,
        body=json.dumps({"error": message, **extra}).encode(),
        content_type="application/json",
    )


class InputError(Exception):
    """
    The request is malformed; answered with `status` and ``{"error": message}``.
    """

    def __init__(self, status: int, message: str) -> None:
        self.status = status
        self.message = message
        super().__init__(message)


def key_of(request: web.Request, prefix: str = _KV_PREFIX) -> bytes:
    """
    The request's key: the percent-decoded path after `prefix`.

    Raises:
        InputError: The key is empty, too long or not UTF-8.
    """
    raw = request.rel_url.raw_path
    encoded = raw[raw.find(prefix) + len(prefix) :] if prefix in raw else ""
    key = unquote_to_bytes(encoded)
    if not key:
        raise InputError(400, "key is empty")
    if len(key) > MAX_KEY_BYTES:
        raise InputError(400, f"key is {len(key)} bytes, more than the limit of {MAX_KEY_BYTES}")
    try:
        key.decode("utf-8")
    except UnicodeDecodeError as error:
        raise InputError(400, f"key is not valid UTF-8 (byte {error.start})") from error
    return key


def quorum_of(request: web.Request, name: str, default: int, replicas: int) -> int:
    """
    ``?w=`` or ``?r=``: an integer in 1..N, or `default` when absent.

    Raises:
        InputError: The value is not such an integer.
    """
    values = request.rel_url.query.getall(name, [])
    if not values:
        return default
    text = values[-1] if len(values) == 1 else None
    # At most 9 digits before int(): a 5,000-digit value would raise ValueError
    # (Python's int max str digits) and become a 500.
    if text is None or not (_DIGITS.fullmatch(text) and 1 <= int(text) <= replicas):
        shown = values if len(values) > 1 else values[0]
        raise InputError(
            400, f"?{name}={str(shown)[:40]!r}: must be an integer from 1 to {replicas}"
        )
    return int(text)


def budget_of(request: web.Request) -> float:
    """
    Seconds the caller gives this request: its ``X-Request-Timeout-Ms`` (at most 60 s), or 2 s.

    Raises:
        InputError: The header is present but malformed.
    """
    values = request.headers.getall(DEADLINE_HEADER, [])
    if not values:
        return DEFAULT_BUDGET
    budget = parse_deadline(values[0]) if len(values) == 1 else None
    if budget is None:
        raise InputError(
            400, f"{DEADLINE_HEADER}: must be one integer of milliseconds from 1 to 86400000"
        )
    return min(budget, MAX_BUDGET)


async def read_value(request: web.Request, budget: float) -> bytes:
    """
    The request body, at most 1 MiB once decoded, received within `budget` seconds.

    A body sent with a ``Content-Encoding`` (gzip, deflate) is stored decoded, as
    HTTP means it: the limit applies to the decoded value, and ``Content-Length``
    (the encoded size) is not what is read.

    Raises:
        InputError: The body is larger (413), arrives too slowly (408) or ends early
            (400). A body that can't be decoded raises aiohttp's `RequestPayloadError`,
            a dropped connection `ConnectionResetError` (``node_middleware``: 400).
    """
    try:
        async with asyncio.timeout(budget):
            return await _read_value(request)
    except TimeoutError:
        raise InputError(
            408, f"body not received within the deadline ({budget * 1000:.0f} ms)"
        ) from None


async def _read_value(request: web.Request) -> bytes:
    length = request.content_length
    if length is not None and length > MAX_VALUE_BYTES:
        raise InputError(413, f"value is {length} bytes, more than the limit of {MAX_VALUE_BYTES}")
    if length is not None and request.headers.get("Content-Encoding", "identity") == "identity":
        # The common case, a Content-Length within the limit: one read, without the
        # async iterator and the copy through a bytearray.
        try:
            return await request.content.readexactly(length)
        except asyncio.IncompleteReadError as error:
            raise InputError(
                400, f"body ended after {len(error.partial)} of {length} bytes"
            ) from error
    body = bytearray()
    async for chunk in request.content.iter_any():
        body += chunk
        if len(body) > MAX_VALUE_BYTES:
            raise InputError(413, f"value is more than the limit of {MAX_VALUE_BYTES} bytes")
    return bytes(body)
