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

__all__ = ["decode_acks", "decode_records", "encode_acks", "encode_records"]

_COUNT = struct.Struct("!I")
_HEADER = struct.Struct("!IBBI")  # key length, version length, flags, value length
_TOMBSTONE = 1


def encode_records(records: Iterable[Record]) -> bytes:
    """
    Encode `records` as one batch.
    """
    parts: list[bytes] = []
    for record in records:
        version = str(record.version).encode()
        value = b"" if record.value is None else record.value
        flags = _TOMBSTONE if record.value is None else 0
        parts += (_HEADER.pack(len(record.key), len(version), flags, len(value)),
                  record.key, version, value)  # fmt: skip
    return _COUNT.pack(len(parts) // 4) + b"".join(parts)


def decode_records(data: bytes) -> list[Record]:
    """
    Decode a batch made by `encode_records`.

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
            records.append(Record(key, version, value))
            offset = end
    except struct.error as error:
        raise ValueError(f"batch truncated: {error}") from error
    except UnicodeDecodeError as error:
        raise ValueError("batch holds a non-ASCII version") from error
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
