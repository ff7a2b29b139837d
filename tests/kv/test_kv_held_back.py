"""
Batched reads of large values: ``/internal/read`` answers capped in bytes (`HELD_BACK`).

A replica stops its answer at `READ_ANSWER_BYTES` of keys and values, for a coordinator
that says it reads the marker; the coordinator's reader coalescer sends the held-back
keys again in a later batch, each caller getting its own outcome. Several tests here
come from an adversarial review (adv25): hostile and contradictory answers, one failure
failing keys already answered, a peer making the coordinator ask a thousand times, and
a coordinator of the previous release meeting a capped answer.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from types import SimpleNamespace
from typing import cast

import aiohttp
import pytest
from aiohttp import web

from examples.kv.codec import (
    HELD_BACK,
    HELD_BACK_HEADER,
    READ_ANSWER_BYTES,
    HeldBack,
    decode_found,
    decode_keys,
    encode_found,
    encode_keys,
)
from examples.kv.handlers import NODE_KEY, internal_read
from examples.kv.hlc import Version
from examples.kv.node import Node
from examples.kv.peers import PeerError, Peers
from examples.kv.storage import Record
from tests._aio import within

VERSION = Version(1, 0, "n2")
MIB = 1 << 20
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class _Shelf:
    """A node's storage as `internal_read` reads it: records by key."""

    def __init__(self, records: dict[bytes, Record]) -> None:
        self.records = records

    def get(self, key: bytes) -> Record | None:
        return self.records.get(key)


async def _serve(handler: Handler, records: dict[bytes, Record] | None = None) -> tuple[
    web.AppRunner, str
]:  # fmt: skip
    app = web.Application(client_max_size=64 << 20)
    app[NODE_KEY] = cast("Node", SimpleNamespace(storage=_Shelf(records or {})))
    app.router.add_post("/internal/read", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    return runner, f"127.0.0.1:{runner.addresses[0][1]}"


def _record(key: bytes, size: int = 0) -> Record:
    return Record(key, VERSION, b"x" * size if size else b"value of " + key)


async def _read_all(
    handler: Handler, keys: list[bytes], records: dict[bytes, Record] | None = None
) -> list[Record | BaseException | None]:
    """Each key read through `Peers.read` at once (one coalescer), each outcome."""
    runner, address = await _serve(handler, records)
    peers = Peers({"n2": address}, "token")
    try:
        until = asyncio.get_running_loop().time() + 10.0
        futures = [peers.read("n2", key, until) for key in keys]
        await within(asyncio.gather(*futures, return_exceptions=True), 20.0)
        return [future.exception() or future.result() for future in futures]
    finally:
        await peers.close()
        await runner.cleanup()


async def test_reads_of_large_values_come_in_answers_capped_in_bytes() -> None:
    """Twenty 1 MiB values and an absent key read at once: every caller gets its record
    (or None), in answers of at most the cap and one record each (three of them), not
    one 20 MiB answer."""
    records = {f"k{i}".encode(): _record(f"k{i}".encode(), MIB) for i in range(20)}
    sizes: list[int] = []

    async def measured(request: web.Request) -> web.StreamResponse:
        response = cast("web.Response", await internal_read(request))
        assert isinstance(response.body, bytes)
        sizes.append(len(response.body))
        return response

    got = await _read_all(measured, [*records, b"absent"], records)
    assert got == [*records.values(), None]
    assert len(sizes) == 3  # 8 + 8 + 4 values: the cap is 8 MiB
    assert max(sizes) <= READ_ANSWER_BYTES + MIB + 4096


async def test_a_replica_caps_only_for_a_coordinator_that_reads_the_marker() -> None:
    """Without the header (a coordinator of the previous release, whose codec would take
    the marker for a malformed record) the answer is whole, as before; with it, capped."""
    records = {f"k{i}".encode(): _record(f"k{i}".encode(), MIB) for i in range(10)}
    keys = list(records)
    runner, address = await _serve(internal_read, records)
    url = f"http://{address}/internal/read"
    try:
        async with aiohttp.ClientSession() as session:
            async with session.post(url, data=encode_keys(keys)) as whole:
                found = decode_found(await whole.read(), keys)
            assert found == list(records.values())
            headers = {HELD_BACK_HEADER: "1"}
            async with session.post(url, data=encode_keys(keys), headers=headers) as capped:
                found = decode_found(await capped.read(), keys)
            assert found[:8] == list(records.values())[:8]
            assert found[8:] == [HELD_BACK, HELD_BACK]
    finally:
        await runner.cleanup()


@pytest.mark.parametrize(
    "data",
    [
        # one entry: key length 1, flags _ABSENT | _HELD_BACK, the key
        b"\x00\x00\x00\x01\x00\x00\x00\x01\x00\x0a\x00\x00\x00\x00a",
        # one entry: key 1, version 8 bytes, _HELD_BACK, value 5: a marker with a record
        b"\x00\x00\x00\x01\x00\x00\x00\x01\x08\x08\x00\x00\x00\x05a1.0.0.n2hello",
    ],
    ids=["absent-and-held-back", "held-back-with-a-value"],
)
def test_contradictory_markers_are_malformed(data: bytes) -> None:
    """Entries `encode_found` never writes are refused, not read as one or the other
    (a false "absent" would start a read repair)."""
    with pytest.raises(ValueError, match="marker"):
        decode_found(data, [b"a"])


async def test_an_answer_for_other_keys_is_refused() -> None:
    """Records placed by position only would give b's record to a's caller: an answer
    whose entries are not the keys asked, in order, is a malformed answer."""

    async def reversed_answer(request: web.Request) -> web.StreamResponse:
        keys = decode_keys(await request.read())[::-1]
        return web.Response(body=encode_found(keys, [_record(key) for key in keys]))

    got = await _read_all(reversed_answer, [b"a", b"b"])
    assert all(isinstance(outcome, PeerError) for outcome in got), got
    assert "not the record of the key asked" in str(got[0])


async def test_a_record_received_reaches_its_caller_when_the_next_ask_fails() -> None:
    """a's record came in a full first answer that held b back; asking again for b fails
    (503). a's caller has a's record; only b's caller gets the error."""
    calls: list[list[bytes]] = []

    async def then_503(request: web.Request) -> web.StreamResponse:
        keys = decode_keys(await request.read())
        calls.append(keys)
        if len(calls) == 1:
            full = [_record(k, READ_ANSWER_BYTES) if k == b"a" else HELD_BACK for k in keys]
            return web.Response(body=encode_found(keys, full))
        return web.Response(status=503)

    got = await _read_all(then_503, [b"a", b"b"])
    assert calls == [[b"a", b"b"], [b"b"]]
    assert got[0] == _record(b"a", READ_ANSWER_BYTES)
    assert isinstance(got[1], PeerError)


async def test_a_peer_holding_keys_back_from_an_answer_that_is_not_full_is_refused() -> None:
    """A peer sending one small record per answer and holding the rest back would be
    asked again and again (1,024 rounds, each re-listing every pending key): an answer
    that holds keys back before reaching the cap is the peer's error, at once."""
    calls: list[int] = []

    async def one_per_answer(request: web.Request) -> web.StreamResponse:
        body = await request.read()
        calls.append(len(body))
        keys = decode_keys(body)
        found: list[Record | HeldBack | None] = [Record(keys[0], VERSION, b"x")]
        found += [HELD_BACK] * (len(keys) - 1)
        return web.Response(body=encode_found(keys, found))

    keys = [b"%04d" % i + b"k" * 96 for i in range(1024)]
    got = await _read_all(one_per_answer, keys)
    assert len(calls) == 1
    assert all(isinstance(outcome, PeerError) for outcome in got)
    assert "held keys back from an answer of 101 bytes" in str(got[0])


async def test_a_key_held_back_past_its_deadline_times_out_alone() -> None:
    """A held-back key whose caller's deadline has passed is not asked again: its caller
    gets a TimeoutError, the other callers their records."""
    calls: list[list[bytes]] = []

    async def slow_full(request: web.Request) -> web.StreamResponse:
        keys = decode_keys(await request.read())
        calls.append(keys)
        await asyncio.sleep(0.3)  # past the short deadline below
        full = [_record(k, READ_ANSWER_BYTES) if k == keys[0] else HELD_BACK for k in keys]
        return web.Response(body=encode_found(keys, full))

    runner, address = await _serve(slow_full)
    peers = Peers({"n2": address}, "token")
    try:
        now = asyncio.get_running_loop().time()
        long = peers.read("n2", b"a", now + 10.0)
        short = peers.read("n2", b"b", now + 0.1)
        await within(asyncio.gather(long, short, return_exceptions=True), 10.0)
    finally:
        await peers.close()
        await runner.cleanup()
    assert long.result() == _record(b"a", READ_ANSWER_BYTES)
    assert isinstance(short.exception(), TimeoutError)
    assert calls == [[b"a", b"b"]]


async def test_a_held_back_read_is_not_overtaken_by_later_reads() -> None:
    """A key held back from a full answer goes back to the front of the reader's queue:
    under a steady flow of new 1 MiB reads (eight per round trip, a capped answer's
    worth), behind them it would be held back every round and time out (adversary
    adv26)."""
    version = Version(1, 0, "n2")
    keys = [b"k%d" % i for i in range(8)]
    records = {key: Record(key, version, b"x" * MIB) for key in [*keys, b"old"]}
    peers: Peers | None = None
    later: list[asyncio.Future[Record | None]] = []
    old: asyncio.Future[Record | None] | None = None
    rounds = 0

    async def busy(request: web.Request) -> web.StreamResponse:
        # While this batch is on the wire, eight more callers ask (steady load).
        nonlocal rounds
        rounds += 1
        assert peers is not None
        assert old is not None
        if not old.done() and rounds < 400:
            until = asyncio.get_running_loop().time() + 30.0
            later.extend(peers.read("n2", key, until) for key in keys)
        return await internal_read(request)

    runner, address = await _serve(busy, records)
    peers = Peers({"n2": address}, "token")
    try:
        now = asyncio.get_running_loop().time()
        first = [peers.read("n2", key, now + 30.0) for key in keys]
        old = peers.read("n2", b"old", now + 1.5)  # ninth: held back from the first answer
        await within(asyncio.gather(old, return_exceptions=True), 60.0)
        await within(asyncio.gather(*first, *later, return_exceptions=True), 60.0)
    finally:
        await peers.close()
        await runner.cleanup()
    answered_later = sum(1 for f in later if not f.cancelled() and f.exception() is None)
    assert old.exception() is None, (
        f"the read queued first got {old.exception()!r} after {rounds} rounds, while"
        f" {answered_later} reads submitted after it were answered"
    )
    assert old.result() == records[b"old"]
