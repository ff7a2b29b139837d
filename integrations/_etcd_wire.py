"""
etcd's v3 JSON gateway on the wire: errors, records, and how values are (de)coded.

Wire format (checked against etcd 3.4.23): every call is a ``POST /v3/<service>/<method>``
with a JSON body; keys and values are base64; int64 fields (revisions, lease IDs, TTLs)
travel as strings and fields equal to zero are omitted. Errors come back as
``{"error": ..., "message": ..., "code": <gRPC code>}`` with a matching HTTP status.
``/v3/watch`` and ``/v3/lease/keepalive`` are streams of newline-delimited
``{"result": {...}}`` objects. etcd 3.3 served this under ``/v3beta``, 3.2 under
``/v3alpha``; 3.4 serves ``/v3`` and ``/v3beta``, 3.5 only ``/v3``, so ``/v3`` is the one
path that works from 3.4 on. An instance is stored as JSON (`encode_instance`).

Errors (re-exported by `resilient.integrations.etcd`):

    ResilienceError
    └── EtcdError                      anything that went wrong talking to etcd
        ├── EtcdUnavailableError       no answer: refused, timed out, stream broken
        │                              (also a builtin ConnectionError)
        └── EtcdResponseError          etcd answered with an error (.code, .message)
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from typing import Any

from yarl import URL

from resilient import Instance, ResilienceError

__all__ = [
    "GRPC_NOT_FOUND",
    "EtcdError",
    "EtcdResponseError",
    "EtcdUnavailableError",
    "Json",
    "KeyValue",
    "WatchBatch",
    "check_endpoint",
    "decode_answer",
    "decode_instance",
    "encode",
    "encode_instance",
    "key_value",
    "prefix_end",
    "raise_for_error",
    "revision_of",
    "watch_batch",
]

Json = dict[str, Any]
"""A decoded JSON object."""
_GRPC_UNKNOWN = 2
GRPC_NOT_FOUND = 5
"""The gRPC status etcd answers with for a lease it does not have."""


class EtcdError(ResilienceError):
    """
    Talking to etcd failed.
    """


class EtcdUnavailableError(EtcdError, ConnectionError):
    """
    etcd did not answer: connection refused or reset, timeout, or a watch stream ended.
    """


class EtcdResponseError(EtcdError):
    """
    etcd (or its gateway) answered with an error.

    Attributes:
        code: The gRPC status code (e.g. 5 not found, 11 out of range), or the HTTP
            status when the answer was not etcd's JSON.
        message: etcd's message.
    """

    def __init__(self, code: int, message: str) -> None:
        self.code = code
        self.message = message
        super().__init__(f"etcd error {code}: {message}")


@dataclass(frozen=True, slots=True)
class KeyValue:
    """
    One key as etcd returns it (``value`` is empty for a delete event).
    """

    key: str
    value: bytes
    mod_revision: int


@dataclass(frozen=True, slots=True)
class WatchBatch:
    """
    One message of a watch stream.

    Attributes:
        revision: The store revision the message was sent at.
        events: ``(is_delete, kv)`` pairs, in the order etcd applied them.
        canceled: etcd ended the watch.
        compact_revision: Non-zero when it ended because the start revision was
            compacted away.
        cancel_reason: etcd's reason otherwise, if it gave one.
    """

    revision: int
    events: tuple[tuple[bool, KeyValue], ...]
    canceled: bool = False
    compact_revision: int = 0
    cancel_reason: str = ""


def check_endpoint(owner: str, value: object) -> URL:
    """
    Return `value` as the base URL of an etcd endpoint, or raise naming `owner`.
    """
    if not isinstance(value, str):
        raise TypeError(f"{owner}(endpoint=...): expected a URL string, got {value!r}")
    try:
        url = URL(value)
    except ValueError:
        url = URL()
    if url.scheme not in {"http", "https"} or not url.host:
        raise ValueError(f"{owner}(endpoint={value!r}): must be an http(s)://host:port URL")
    if url.user or url.password or url.query_string or url.fragment:
        # Credentials in the URL would end up in logs and reprs; etcd auth is not
        # supported here (put TLS/auth in front, or use a session that adds headers).
        raise ValueError(f"{owner}(endpoint=...): must not carry credentials or a query")
    return url.with_path(url.path.rstrip("/"))


def encode(text: str) -> str:
    """
    Return `text` as etcd's base64.
    """
    return base64.b64encode(text.encode()).decode("ascii")


def prefix_end(prefix: str) -> str:
    """
    Return the exclusive end of the key range starting with `prefix` (etcd's rule).
    """
    raw = bytearray(prefix.encode())
    # The prefix is non-empty text ending in "/", so the last byte is never 0xff.
    raw[-1] += 1
    return base64.b64encode(bytes(raw)).decode("ascii")


def key_value(raw: Json) -> KeyValue:
    """
    Return the `KeyValue` etcd sent as `raw`.
    """
    return KeyValue(
        key=base64.b64decode(raw.get("key", "")).decode(errors="replace"),
        value=base64.b64decode(raw.get("value", "")),
        mod_revision=int(raw.get("mod_revision", 0)),
    )


def revision_of(message: Json) -> int:
    """
    Return the store revision in `message`'s header (0 when absent).
    """
    return int(message.get("header", {}).get("revision", 0))


def raise_for_error(message: Json) -> None:
    """
    Raise `EtcdResponseError` if `message` is one of etcd's error answers.
    """
    error = message.get("error")
    if error is None:
        return
    # etcd 3.4 sends {"error": text, "message": text, "code": n}; other grpc-gateway
    # versions nest an object with "grpc_code" under "error" on streams.
    details: Json = error if isinstance(error, dict) else message
    code = details.get("grpc_code") or details.get("code") or _GRPC_UNKNOWN
    raise EtcdResponseError(int(code), str(details.get("message") or error))


def watch_batch(message: object) -> WatchBatch:
    """
    Return the watch message `message` as a `WatchBatch`.

    Raises:
        EtcdUnavailableError: It is not a JSON object.
        EtcdResponseError: It is one of etcd's errors.
    """
    if not isinstance(message, dict):
        raise EtcdUnavailableError("etcd sent a watch message that is not a JSON object")
    raise_for_error(message)
    result: Json = message.get("result", {})
    events = tuple(
        (event.get("type") == "DELETE", key_value(event.get("kv", {})))
        for event in result.get("events", ())
    )
    return WatchBatch(
        revision=revision_of(result),
        events=events,
        canceled=bool(result.get("canceled", False)),
        compact_revision=int(result.get("compact_revision", 0)),
        cancel_reason=str(result.get("cancel_reason", "")),
    )


def decode_answer(method: str, status: int, raw: bytes) -> Json:
    """
    Return the JSON answer `raw` to `method`, or raise etcd's error.

    Raises:
        EtcdResponseError: etcd answered with an error, or this is not etcd's answer.
    """
    try:
        answer = json.loads(raw)
    except ValueError:
        answer = None
    if not isinstance(answer, dict):
        # Not the gateway's JSON: a wrong path (etcd < 3.4) or something else listening.
        raise EtcdResponseError(status, f"{method}: HTTP {status}, not an etcd v3 gateway answer")
    raise_for_error(answer)
    if status != 200:  # noqa: PLR2004  # HTTP OK
        raise EtcdResponseError(status, f"{method}: HTTP {status}")
    return answer


def encode_instance(instance: Instance) -> bytes:
    """
    Return `instance` as the JSON value stored under its key.
    """
    fields = {
        "service": instance.service,
        "id": instance.id,
        "host": instance.host,
        "port": instance.port,
        "scheme": instance.scheme,
        "metadata": dict(instance.metadata),
    }
    return json.dumps(fields, sort_keys=True).encode()


def decode_instance(value: bytes) -> Instance:
    """
    Return the instance stored as `value`.

    Raises:
        ValueError: Not JSON.
        TypeError: Not an object, or metadata that is not strings.
        KeyError: A required field is missing.
    """
    fields = json.loads(value)
    if not isinstance(fields, dict):
        raise TypeError("not a JSON object")
    metadata = fields.get("metadata", {})
    if not isinstance(metadata, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()
    ):
        raise TypeError("metadata must map strings to strings")
    # Known fields only: a newer writer may add some, and an older reader ignores them.
    return Instance(
        service=fields["service"],
        id=fields["id"],
        host=fields["host"],
        port=fields["port"],
        scheme=fields.get("scheme", "http"),
        metadata=metadata,
    )
