"""
The compact binary encoding of record batches sent between nodes.

A batch is a count followed by records; each record is a fixed header (key length,
version length, flags, value length; network byte order) then the key, the version
in its text form and the value, raw. No base64, no JSON: a 1 MiB value costs 1 MiB
plus 10 bytes on the wire.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Sequence

from .hlc import Version
from .storage import Record

__all__ = [
    "HELD_BACK",
    "HELD_BACK_HEADER",
    "READ_ANSWER_BYTES",
    "HeldBack",
    "answer_bytes",
    "decode_acks",
    "decode_found",
    "decode_keys",
    "decode_records",
    "decode_traced",
    "encode_acks",
    "encode_found",
    "encode_keys",
    "encode_records",
]

_COUNT = struct.Struct("!I")
_HEADER = struct.Struct("!IBBI")  # key length, version length, flags, value length
_TOMBSTONE = 1
_TRACED = 4  # the record carries its writer's traceparent (u8 length, then ASCII)
_ABSENT = 2  # in a lookup's answer: the node holds no record of this key
_HELD_BACK = 8  # in a lookup's answer: not sent (the answer's size cap): ask again
_KEY = struct.Struct("!I")


def encode_records(records: Iterable[Record], traces: Sequence[str | None] | None = None) -> bytes:
    """
    Encode `records` as one batch, each with its writer's ``traceparent`` if given.
    """
    parts: list[bytes] = []
    count = 0
    for index, record in enumerate(records):
        version = str(record.version).encode()
        value = b"" if record.value is None else record.value
        flags = _TOMBSTONE if record.value is None else 0
        trace = traces[index] if traces is not None else None
        if trace:
            flags |= _TRACED
        parts += (_HEADER.pack(len(record.key), len(version), flags, len(value)),
                  record.key, version, value)  # fmt: skip
        if trace:
            encoded = trace.encode("ascii", "replace")[:255]
            parts += (bytes((len(encoded),)), encoded)
        count += 1
    return _COUNT.pack(count) + b"".join(parts)


def decode_records(data: bytes) -> list[Record]:
    """
    Decode a batch made by `encode_records`.

    Raises:
        ValueError: `data` is truncated, too long or holds a malformed version.
    """
    return [record for record, _ in decode_traced(data)]


def decode_traced(data: bytes) -> list[tuple[Record, str | None]]:
    """
    Decode a batch made by `encode_records`: each record with its ``traceparent``.

    Raises:
        ValueError: `data` is truncated, too long or holds a malformed version.
    """
    view = memoryview(data)
    try:
        (count,) = _COUNT.unpack_from(view, 0)
        offset = _COUNT.size
        records = []
        for _ in range(count):
            key_len, version_len, flags, value_len = _HEADER.unpack_from(view, offset)
            offset += _HEADER.size
            end = offset + key_len + version_len + value_len
            if end > len(view):
                raise ValueError("batch truncated")
            key = bytes(view[offset : offset + key_len])
            offset += key_len
            version = Version.parse(bytes(view[offset : offset + version_len]).decode("ascii"))
            offset += version_len
            value = None if flags & _TOMBSTONE else bytes(view[offset:end])
            trace = None
            if flags & _TRACED:
                size = view[end]
                trace = bytes(view[end + 1 : end + 1 + size]).decode("ascii")
                end += 1 + size
            records.append((Record(key, version, value), trace))
            offset = end
    except (struct.error, IndexError) as error:
        raise ValueError(f"batch truncated: {error}") from error
    except UnicodeDecodeError as error:
        raise ValueError("batch holds non-ASCII text") from error
    if offset != len(view):
        raise ValueError(f"batch has {len(view) - offset} bytes after its {count} records")
    return records


def encode_acks(applied: Sequence[bool]) -> bytes:
    """
    One byte per record: 1 replaced the stored state, 0 a newer one was kept.
    """
    return bytes(int(flag) for flag in applied)


def decode_acks(data: bytes, expected: int) -> list[bool]:
    """
    Read `encode_acks` output for a batch of `expected` records.

    Raises:
        ValueError: The count does not match.
    """
    if len(data) != expected:
        raise ValueError(f"expected {expected} acks, got {len(data)}")
    return [byte == 1 for byte in data]


def encode_keys(keys: Sequence[bytes]) -> bytes:
    """
    Encode the keys of a batched lookup.
    """
    return _COUNT.pack(len(keys)) + b"".join(_KEY.pack(len(key)) + key for key in keys)


def decode_keys(data: bytes) -> list[bytes]:
    """
    Decode `encode_keys` output.

    Raises:
        ValueError: `data` is truncated or too long.
    """
    view = memoryview(data)
    try:
        (count,) = _COUNT.unpack_from(view, 0)
        offset, keys = _COUNT.size, []
        for _ in range(count):
            (size,) = _KEY.unpack_from(view, offset)
            offset += _KEY.size
            if offset + size > len(view):
                raise ValueError("keys truncated")
            keys.append(bytes(view[offset : offset + size]))
            offset += size
    except struct.error as error:
        raise ValueError(f"keys truncated: {error}") from error
    if offset != len(view):
        raise ValueError(f"keys batch has {len(view) - offset} bytes after its {count} keys")
    return keys


class HeldBack:
    """
    The type of `HELD_BACK`: a key a lookup's answer left out, to be asked again.
    """

    __slots__ = ()

    def __repr__(self) -> str:
        return "HELD_BACK"


HELD_BACK = HeldBack()
"""In a lookup's answer: the key's record was not sent (the answer reached its size cap)."""

READ_ANSWER_BYTES = 8 << 20
"""
Keys and values a lookup's answer carries before it holds the other keys back.

Only for a coordinator that says it reads `HELD_BACK` (`HELD_BACK_HEADER`): an older one
gets the whole answer, as before. An answer holding keys back carries at least this much.
"""

HELD_BACK_HEADER = "X-KV-Held-Back"
"""Sent by a coordinator that reads `HELD_BACK` markers: the replica may cap its answer."""


def answer_bytes(record: Record) -> int:
    """
    What `record` counts toward `READ_ANSWER_BYTES`: its key and value.

    The replica caps its answer with it and the coordinator checks a held-back answer
    with it: both must count alike.
    """
    return len(record.key) + len(record.value or b"")


def encode_found(keys: Sequence[bytes], found: Sequence[Record | HeldBack | None]) -> bytes:
    """
    Encode a lookup's answer: per key its record, or a marker (none here, held back).
    """
    parts = [_COUNT.pack(len(keys))]
    for key, record in zip(keys, found, strict=True):
        if record is None:
            parts += (_HEADER.pack(len(key), 0, _ABSENT, 0), key)
        elif isinstance(record, HeldBack):
            parts += (_HEADER.pack(len(key), 0, _HELD_BACK, 0), key)
        else:
            parts.append(encode_records([record])[_COUNT.size :])
    return b"".join(parts)


def decode_found(data: bytes, keys: Sequence[bytes]) -> list[Record | HeldBack | None]:
    """
    Decode `encode_found` output for a lookup of `keys`, checking each entry is its key's.

    Raises:
        ValueError: Malformed: truncated, trailing bytes, the wrong count, an entry for
            another key (or out of order), or a marker with contradictory flags or a
            version or value.
    """
    view = memoryview(data)
    try:
        (count,) = _COUNT.unpack_from(view, 0)
    except struct.error as error:
        raise ValueError(f"answer truncated: {error}") from error
    if count != len(keys):
        raise ValueError(f"expected {len(keys)} records, got {count}")
    offset, found = _COUNT.size, list[Record | HeldBack | None]()
    for index, asked in enumerate(keys):
        try:
            key_len, version_len, flags, value_len = _HEADER.unpack_from(view, offset)
        except struct.error as error:
            raise ValueError(f"answer truncated: {error}") from error
        start = offset + _HEADER.size
        end = start + key_len + version_len + value_len
        if view[start : start + key_len] != asked:
            raise ValueError(f"entry {index} is not the record of the key asked")
        marker = flags & (_ABSENT | _HELD_BACK)
        if marker and (marker == _ABSENT | _HELD_BACK or version_len or value_len):
            raise ValueError(f"entry {index}: a marker with flags {flags} and a record")
        if marker == _ABSENT:
            found.append(None)
        elif marker == _HELD_BACK:
            found.append(HELD_BACK)
        else:
            found.extend(decode_records(_COUNT.pack(1) + bytes(view[offset:end])))
        offset = end
    if offset != len(view):
        raise ValueError("answer has trailing bytes")
    return found
