"""
Unit tests of the KV node's parts: ring, hybrid logical clock, codec, configuration.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import threading
import time
from collections import Counter
from pathlib import Path
from typing import cast

import pytest
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from examples.kv.coalesce import Coalescer
from examples.kv.codec import (
    HELD_BACK,
    HeldBack,
    decode_acks,
    decode_found,
    decode_keys,
    decode_records,
    encode_acks,
    encode_found,
    encode_keys,
    encode_records,
)
from examples.kv.config import (
    ConfigError,
    Discovery,
    add_node_arguments,
    config_warnings,
    node_config,
    parse_discovery,
    parse_peers,
)
from examples.kv.coordinator import Coordinator, QuorumError
from examples.kv.gcpauses import GcPauses
from examples.kv.hlc import HybridClock, Version
from examples.kv.looplag import LoopLag
from examples.kv.loops import running_loop, use_loop
from examples.kv.node import KeyCount, peer_status
from examples.kv.peers import PeerError, Peers
from examples.kv.ring import Ring, ring_hash
from examples.kv.storage import Record, Storage
from resilient import RetryBudget
from tests._aio import until, within

node_ids = st.from_regex(r"[A-Za-z0-9_-]{1,64}", fullmatch=True)
versions = st.builds(Version, st.integers(0, 10**15 - 1), st.integers(0, 10**9 - 1), node_ids)


def test_ring_hash_is_stable_across_processes() -> None:
    """The ring position is BLAKE2b, not Python's salted hash(): a fixed value."""
    assert ring_hash(b"key") == int.from_bytes(
        __import__("hashlib").blake2b(b"key", digest_size=8).digest(), "big"
    )


def test_preference_list_is_n_distinct_nodes_clockwise() -> None:
    """Each key gets N distinct nodes; the first is the owner of the next point clockwise."""
    ring = Ring(["a", "b", "c", "d", "e"], vnodes=16)
    for i in range(200):
        nodes = ring.preference_list(f"k{i}".encode(), 3)
        assert len(nodes) == 3
        assert len(set(nodes)) == 3
    assert ring.preference_list(b"x", 9) == ring.preference_list(b"x", 5)


def test_preference_list_is_the_same_for_any_member_order() -> None:
    """Two nodes listing the members in different orders agree on every key."""
    one, two = Ring(["n1", "n2", "n3", "n4"]), Ring(["n4", "n3", "n2", "n1"])
    for i in range(100):
        assert one.preference_list(str(i).encode(), 3) == two.preference_list(str(i).encode(), 3)


def test_ownership_shares_sum_to_one_and_are_balanced() -> None:
    """128 virtual nodes spread ownership within a few percent of equal."""
    shares = Ring([f"n{i}" for i in range(5)]).ownership()
    assert sum(shares.values()) == pytest.approx(1.0)
    assert all(0.12 < share < 0.28 for share in shares.values())


def test_keys_spread_over_primaries() -> None:
    """Keys land on every node as primary owner, none with most of them."""
    ring = Ring(["n1", "n2", "n3"])
    owners = Counter(ring.preference_list(f"key-{i}".encode(), 1)[0] for i in range(3000))
    assert set(owners) == {"n1", "n2", "n3"}
    assert max(owners.values()) < 1500


def test_ring_rejects_bad_arguments() -> None:
    """An empty ring, duplicate ids and vnodes < 1 are refused, naming the parameter."""
    with pytest.raises(ValueError, match="nodes"):
        Ring([])
    with pytest.raises(ValueError, match="duplicate"):
        Ring(["a", "a"])
    with pytest.raises(ValueError, match="vnodes"):
        Ring(["a"], vnodes=0)


@given(versions)
def test_version_round_trips_through_its_header_form(version: Version) -> None:
    """str() then Version.parse() gives the same version back."""
    assert Version.parse(str(version)) == version


@given(versions, versions)
def test_versions_order_totally_by_wall_logical_node(a: Version, b: Version) -> None:
    """Versions compare as (wall, logical, node) tuples."""
    assert (a < b) == ((a.wall, a.logical, a.node) < (b.wall, b.logical, b.node))


@pytest.mark.parametrize("text", ["", "1.2", "x.1.n", "1.2.n n", "1.2." + "n" * 65, "-1.0.n"])
def test_version_parse_rejects_malformed_text(text: str) -> None:
    """A malformed version header is a ValueError, not a crash."""
    with pytest.raises(ValueError, match="version"):
        Version.parse(text)


def test_clock_is_monotonic_within_one_millisecond() -> None:
    """Stamps in the same millisecond advance the logical counter."""
    clock = HybridClock("n1", millis=lambda: 1000)
    stamps = [clock.now() for _ in range(5)]
    assert stamps == sorted(stamps)
    assert [s.logical for s in stamps] == [0, 1, 2, 3, 4]


def test_clock_moves_past_an_observed_version() -> None:
    """After seeing a peer's newer version, the next stamp is newer still."""
    clock = HybridClock("n1", millis=lambda: 1000)
    clock.observe(Version(5000, 7, "n2"))
    assert clock.now() > Version(5000, 7, "n2")


def test_clock_ignores_a_version_far_in_the_future() -> None:
    """A peer's clock a day ahead does not drag this node's versions along."""
    clock = HybridClock("n1", millis=lambda: 1000)
    clock.observe(Version(1000 + 86_400_000, 0, "n2"))
    assert clock.now().wall == 1000


def test_a_clock_stepped_back_across_a_restart_still_stamps_newer(tmp_path: Path) -> None:
    """A new clock on the same mark file stamps past every stamp of the old one."""
    mark = tmp_path / "clock"
    before = HybridClock("n1", millis=lambda: 500_000, mark=mark)
    last = [before.now() for _ in range(3)][-1]
    after = HybridClock("n1", millis=lambda: 200_000, mark=mark)  # 5 minutes back
    assert after.now() > last
    assert int(mark.read_text()) <= 500_000 + 2_000  # the ceiling stays near real time


def test_a_clock_mark_is_written_about_once_a_second(tmp_path: Path) -> None:
    """Stamps within the ceiling write nothing; the first past it moves the ceiling."""
    now = [10_000]
    mark = tmp_path / "clock"
    clock = HybridClock("n1", millis=lambda: now[0], mark=mark)
    clock.now()
    ceiling = int(mark.read_text())
    mark.unlink()
    now[0] = ceiling - 1
    clock.now()
    assert not mark.exists()
    now[0] = ceiling
    clock.now()
    assert int(mark.read_text()) > ceiling


def test_a_clock_mark_that_is_not_a_number_is_refused(tmp_path: Path) -> None:
    """A corrupted mark file is a clear error naming it, not a clock starting at 0."""
    mark = tmp_path / "clock"
    mark.write_text("garbage")
    with pytest.raises(ValueError, match="clock ceiling"):
        HybridClock("n1", mark=mark)


def test_advance_moves_past_an_own_stamp_however_far_ahead() -> None:
    """advance (own stamps found in storage) is not bounded like observe."""
    clock = HybridClock("n1", millis=lambda: 1000)
    clock.advance(Version(1000 + 86_400_000, 3, "n1"))
    assert clock.now() > Version(1000 + 86_400_000, 3, "n1")


def test_clock_rejects_a_bad_node_id() -> None:
    """A node id that can't travel in a header is refused."""
    with pytest.raises(ValueError, match="node"):
        HybridClock("a.b")


records = st.builds(
    Record, st.binary(min_size=1, max_size=64), versions, st.none() | st.binary(max_size=256)
)


@given(st.lists(records, max_size=20))
def test_codec_round_trips_record_batches(batch: list[Record]) -> None:
    """encode_records then decode_records gives the batch back, tombstones included."""
    assert decode_records(encode_records(batch)) == batch


def test_codec_rejects_truncated_and_padded_batches() -> None:
    """A batch cut short or with trailing bytes is a ValueError."""
    data = encode_records([Record(b"k", Version(1, 0, "n"), b"value")])
    with pytest.raises(ValueError, match="truncated"):
        decode_records(data[:-1])
    with pytest.raises(ValueError, match="after"):
        decode_records(data + b"x")
    with pytest.raises(ValueError, match="truncated"):
        decode_records(b"\x00")


@given(st.lists(st.binary(max_size=64), max_size=20), st.data())
def test_codec_round_trips_lookups(keys: list[bytes], data: st.DataObject) -> None:
    """Keys of a batched read and its answer (records, absent or held back) survive the
    wire."""
    assert decode_keys(encode_keys(keys)) == keys
    drawn = data.draw(st.lists(st.none() | st.just(HELD_BACK) | records, min_size=len(keys),
                               max_size=len(keys)))  # fmt: skip
    found: list[Record | HeldBack | None] = [
        record if record is None or isinstance(record, HeldBack)
        else Record(key, record.version, record.value)
        for key, record in zip(keys, drawn, strict=True)
    ]  # fmt: skip
    assert decode_found(encode_found(keys, found), keys) == found


def test_codec_rejects_malformed_lookups() -> None:
    """Truncated key batches and answers of the wrong size are ValueErrors."""
    with pytest.raises(ValueError, match="truncated"):
        decode_keys(encode_keys([b"abc"])[:-1])
    with pytest.raises(ValueError, match="after"):
        decode_keys(encode_keys([b"abc"]) + b"x")
    with pytest.raises(ValueError, match="expected 2"):
        decode_found(encode_found([b"a"], [None]), [b"a", b"b"])
    with pytest.raises(ValueError, match="trailing"):
        decode_found(encode_found([b"a"], [None]) + b"x", [b"a"])


def test_acks_round_trip_and_check_their_count() -> None:
    """One ack byte per record; a count mismatch is a ValueError."""
    assert decode_acks(encode_acks([True, False]), 2) == [True, False]
    with pytest.raises(ValueError, match="expected 3"):
        decode_acks(b"\x01", 3)


def _args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_node_arguments(parser)
    return parser.parse_args(list(argv))


BASE = ("--id", "n1", "--port", "7001", "--data-dir", "d", "--peers", "n1=127.0.0.1:7001,n2=h:2")


def test_config_reads_the_contract() -> None:
    """The contract's options and the tokens from the environment."""
    env = {"KV_CLUSTER_TOKEN": "s", "KV_CLIENT_TOKEN": "c"}
    config = node_config(_args(*BASE, "--write-quorum", "3"), env)
    assert config.peers == {"n1": "127.0.0.1:7001", "n2": "h:2"}
    assert (config.replicas, config.write_quorum, config.read_quorum) == (3, 3, 2)
    assert (config.cluster_token, config.client_token, config.host) == ("s", "c", "127.0.0.1")


@pytest.mark.parametrize(
    ("argv", "env", "message"),
    [
        (BASE, {}, "KV_CLUSTER_TOKEN is not set"),
        ((*BASE, "--write-quorum", "4"), {"KV_CLUSTER_TOKEN": "s"}, "--write-quorum 4"),
        ((*BASE, "--read-quorum", "0"), {"KV_CLUSTER_TOKEN": "s"}, "--read-quorum 0"),
        ((*BASE, "--replicas", "0"), {"KV_CLUSTER_TOKEN": "s"}, "--replicas 0"),
        (("--id", "n9", *BASE[2:]), {"KV_CLUSTER_TOKEN": "s"}, "does not list this node"),
        (BASE[:6], {"KV_CLUSTER_TOKEN": "s"}, "--peers is required"),
        ((*BASE[:6], "--discovery", "http://x:1"), {"KV_CLUSTER_TOKEN": "s"}, "etcd://"),
        (("--id", "a.b", *BASE[2:]), {"KV_CLUSTER_TOKEN": "s"}, "--id"),
        (("--id", "n1", "--port", "0", *BASE[4:]), {"KV_CLUSTER_TOKEN": "s"}, "--port 0"),
    ],
)
def test_config_errors_name_the_option(
    argv: tuple[str, ...], env: dict[str, str], message: str
) -> None:
    """Each mistake is a ConfigError naming the option and the value."""
    with pytest.raises(ConfigError, match=message.replace("?", r"\?")):
        node_config(_args(*argv), env)


def test_node_help_names_the_environment() -> None:
    """`node --help` says which variables the node reads, the required token first."""
    parser = argparse.ArgumentParser()
    add_node_arguments(parser)
    text = " ".join(parser.format_help().split())
    assert "environment: KV_CLUSTER_TOKEN (required)" in text
    assert "KV_CLIENT_TOKEN" in text
    assert "OTEL_TRACES_EXPORTER" in text


def test_a_missing_token_says_how_to_give_one() -> None:
    """The error names the variable and shows how to set it, not only that it is unset."""
    with pytest.raises(ConfigError, match="KV_CLUSTER_TOKEN is not set") as raised:
        node_config(_args(*BASE), {"KV_CLUSTER_TOKEN": ""})
    assert "KV_CLUSTER_TOKEN=secret python -m examples.kv node" in str(raised.value)


@pytest.mark.parametrize(
    ("argv", "warned"),
    [
        (("--peers", "n1=127.0.0.1:7001"), ["writes (--write-quorum 2) and reads (--read"]),
        (("--peers", "n1=127.0.0.1:7001", "--replicas", "1", "--write-quorum", "1",
          "--read-quorum", "1"), []),
        (("--peers", "n1=127.0.0.1:7001,n2=h:2", "--write-quorum", "3"),
         ["too few for writes (--write-quorum 3): they"]),
        (("--peers", "n1=127.0.0.1:7002,n2=h:2"), ["listens on 127.0.0.1:7001"]),
        (("--peers", "n1=10.0.0.5:7002,n2=h:2"), []),  # advertised through a proxy or NAT
        (("--peers", "n1=127.0.0.1:7001,n2=h:2"), []),
        (("--discovery", "etcd://127.0.0.1:2379"), []),  # members come and go
    ],
)  # fmt: skip
def test_config_warnings_name_what_cannot_work(argv: tuple[str, ...], warned: list[str]) -> None:
    """A config the node accepts (the contract) but that cannot serve gets a warning
    naming the option and what to do; a sound one gets none."""
    config = node_config(_args(*BASE[:6], *argv), {"KV_CLUSTER_TOKEN": "s"})
    warnings = config_warnings(config)
    assert len(warnings) == len(warned), warnings
    for warning, text in zip(warnings, warned, strict=True):
        assert text in warning
        assert "--peers" in warning


def test_a_quorum_error_names_the_replicas_and_where_to_look() -> None:
    """The 503's message says who was asked, how many answered, and what shows the rest."""
    write = str(QuorumError("write", 1, 2, ("n1", "n2", "n3")))
    assert write.startswith("write quorum not met: 1 of this key's replicas (n1, n2, n3) ")
    assert "acknowledged in time, 2 needed" in write
    assert "GET /cluster" in write
    assert "1 answered in time, 3 needed" in str(QuorumError("read", 1, 3))


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("n1", "expected id=host:port"),
        ("n1=h", "expected host:port"),
        ("n1=h:x", "expected host:port"),
        ("n1=h:70000", "1..65535"),
        ("n1=h:1,n1=h:2", "twice"),
        ("a b=h:1", "id must match"),
        (",", "lists no member"),
    ],
)
def test_peers_errors_name_the_entry(text: str, message: str) -> None:
    """A malformed --peers entry is named in the error."""
    with pytest.raises(ConfigError, match=message):
        parse_peers(text)


async def test_coalescer_sends_items_of_one_iteration_in_one_batch() -> None:
    """Items submitted together leave in one batch; each gets its own answer."""
    batches: list[list[int]] = []

    async def ship(items: list[int], budget: float) -> list[int]:
        batches.append(items)
        return [item * 10 for item in items]

    coalescer: Coalescer[int, int] = Coalescer(ship)
    until = asyncio.get_running_loop().time() + 5
    answers = await asyncio.gather(*(coalescer.submit(i, until) for i in range(10)))
    assert answers == [i * 10 for i in range(10)]
    assert batches == [list(range(10))]


async def test_coalescer_gathers_while_batches_are_in_flight() -> None:
    """With max_in_flight batches on the wire, later items wait and leave together."""
    gate = asyncio.Event()
    batches: list[list[int]] = []

    async def ship(items: list[int], budget: float) -> list[None]:
        batches.append(items)
        await gate.wait()
        return [None] * len(items)

    coalescer: Coalescer[int, None] = Coalescer(ship, max_in_flight=1)
    until = asyncio.get_running_loop().time() + 5
    first = coalescer.submit(0, until)
    await asyncio.sleep(0)  # the first batch leaves
    await asyncio.sleep(0)
    rest = [coalescer.submit(i, until) for i in range(1, 6)]
    gate.set()
    await asyncio.gather(first, *rest)
    assert batches == [[0], [1, 2, 3, 4, 5]]
    await coalescer.drain()


async def test_coalescer_cuts_a_backlog_into_batches_of_max_batch_in_order() -> None:
    """A backlog leaves in submission order, each batch closed by the item that reaches
    max_batch (in `size` units), each item answered by its own batch."""
    gate = asyncio.Event()
    batches: list[list[int]] = []

    async def ship(items: list[int], budget: float) -> list[int]:
        batches.append(items)
        await gate.wait()
        return [-item for item in items]

    coalescer: Coalescer[int, int] = Coalescer(ship, size=lambda item: item, max_in_flight=1,
                                               max_batch=10)  # fmt: skip
    until = asyncio.get_running_loop().time() + 5
    first = coalescer.submit(1, until)
    await asyncio.sleep(0)  # the first batch leaves; the rest queue behind it
    backlog = [4, 4, 4, 3, 9, 1, 1, 12, 2]
    rest = [coalescer.submit(item, until) for item in backlog]
    gate.set()
    assert await asyncio.gather(first, *rest) == [-1] + [-item for item in backlog]
    assert batches == [[1], [4, 4, 4], [3, 9], [1, 1, 12], [2]]
    assert (coalescer.batches, coalescer.items) == (5, 10)


async def test_coalescer_fails_only_the_item_whose_size_raises() -> None:
    """An item whose size() raises gets that error; the items around it still leave
    (adversary adv23: the bad item used to stay at the head and block the rest)."""
    sent: list[list[int]] = []

    async def ship(items: list[int], budget: float) -> list[int]:
        sent.append(items)
        return items

    def size(item: int) -> int:
        if item == 2:
            raise ValueError("no size for 2")
        return 1

    coalescer: Coalescer[int, int] = Coalescer(ship, size=size)
    until = asyncio.get_running_loop().time() + 5
    futures = [coalescer.submit(i, until) for i in range(1, 5)]
    outcomes = await asyncio.gather(*futures, return_exceptions=True)
    assert outcomes[0] == 1
    assert isinstance(outcomes[1], ValueError)
    assert outcomes[2:] == [3, 4]
    assert sent == [[1, 3, 4]]
    await coalescer.drain()


@pytest.mark.parametrize(("in_flight", "batch"), [(0, 10), (1, 0), (2, -1)])
def test_coalescer_refuses_limits_below_one(in_flight: int, batch: int) -> None:
    """max_in_flight or max_batch below 1 would never send (a busy loop of empty batches)."""

    async def ship(items: list[int], budget: float) -> list[int]:
        return items

    with pytest.raises(ValueError, match="must be >= 1"):
        Coalescer(ship, max_in_flight=in_flight, max_batch=batch)


async def test_coalescer_hands_each_caller_the_batch_error() -> None:
    """A failed batch fails every item's future with the error; a spent deadline too."""

    async def ship(items: list[int], budget: float) -> list[int]:
        raise ConnectionError("peer down")

    coalescer: Coalescer[int, int] = Coalescer(ship)
    loop = asyncio.get_running_loop()
    futures = [coalescer.submit(i, loop.time() + 5) for i in range(3)]
    for future in futures:
        with pytest.raises(ConnectionError, match="peer down"):
            await future
    with pytest.raises(TimeoutError, match="deadline"):
        await coalescer.submit(9, loop.time() - 1)


def test_discovery_url_gives_endpoint_prefix_and_ttl() -> None:
    """etcd://host:port, with an optional key prefix and ?ttl=."""
    assert parse_discovery("etcd://127.0.0.1:2379") == Discovery("http://127.0.0.1:2379")
    assert parse_discovery("etcd://h:1/mine?ttl=3") == Discovery("http://h:1", "/mine/", 3.0)


@pytest.mark.parametrize(
    "text", ["http://h:1", "etcd://h", "etcd://:1", "etcd://h:1?ttl=0", "etcd://h:1?ttl=x", "etcd"]
)
def test_discovery_url_errors_name_the_option(text: str) -> None:
    """A malformed --discovery is a ConfigError naming it."""
    with pytest.raises(ConfigError, match="--discovery"):
        parse_discovery(text)


@pytest.mark.parametrize(
    ("state", "status"),
    [(None, "up"), ("closed", "up"), ("half-open", "suspect"), ("open", "down")],
)
def test_a_peers_status_follows_its_breaker(state: str | None, status: str) -> None:
    """/cluster reads a probing (half-open) peer as suspect, an open one as down."""
    assert peer_status(state) == status


async def test_a_peer_that_left_is_no_longer_called_and_keeps_its_breaker() -> None:
    """
    update() with a smaller member set drops the peer's address (no more calls, its
    hints then dropped); back under the same id it finds its breaker again.
    """
    peers = Peers({"n2": "127.0.0.1:1", "n3": "127.0.0.1:2"}, "token")
    breaker = peers.breakers["n3"]
    peers.update({"n2": "127.0.0.1:1"})
    assert set(peers.addresses) == {"n2"}
    with pytest.raises(PeerError, match="n3 is not a member"):
        await peers.send_batch("n3", [], 1.0)
    with pytest.raises(PeerError, match="n3 is not a member"):
        await peers.read_batch("n3", [b"k"], 1.0)
    peers.update({"n2": "127.0.0.1:1", "n3": "127.0.0.1:3"})
    assert peers.addresses["n3"] == "127.0.0.1:3"
    assert peers.breakers["n3"] is breaker
    await peers.close()


async def test_key_count_runs_off_the_loop_one_at_a_time_and_exact() -> None:
    """
    /cluster's key count (a full scan) runs in a worker thread, never two at once;
    callers arriving during a count share the next one, begun after they asked.
    """
    loop_thread = threading.get_ident()
    calls: list[int] = []
    running = threading.Semaphore(1)

    def slow_count() -> int:
        assert running.acquire(blocking=False), "two counts at once"
        try:
            calls.append(threading.get_ident())
            time.sleep(0.05)  # in the worker thread: the loop keeps serving
            return len(calls)
        finally:
            running.release()

    keys = KeyCount(slow_count)
    first = asyncio.ensure_future(keys.get())
    await asyncio.sleep(0)  # one step: the first caller has begun count 1
    late = await asyncio.wait_for(asyncio.gather(keys.get(), keys.get(), keys.get()), 10)
    assert await asyncio.wait_for(first, 10) == 1
    assert list(late) == [2, 2, 2]  # one count for the three, begun after they asked
    assert len(calls) == 2
    assert loop_thread not in calls
    assert await asyncio.wait_for(keys.get(), 10) == 3  # never a stale value


class _HungFirstPeers:
    """
    Peers whose first answer for each key never comes; any later ask answers at once.
    """

    def __init__(self, records: dict[bytes, Record]) -> None:
        self.records = records
        self.asked: Counter[bytes] = Counter()
        self.hung: list[asyncio.Future[Record | None]] = []

    def is_open(self, node: str) -> bool:
        return False

    def read(self, node: str, key: bytes, until: float) -> asyncio.Future[Record | None]:
        future: asyncio.Future[Record | None] = asyncio.get_running_loop().create_future()
        self.asked[key] += 1
        if self.asked[key] == 1:
            self.hung.append(future)
        else:
            future.set_result(self.records[key])
        return future


async def test_hedges_stay_within_their_budget(tmp_path: Path) -> None:
    """
    A read hedges only while the budget allows (here half the reads, no floor); past it
    the read waits for the slow replica (here until its deadline) instead of adding load.
    """
    records = {
        f"k{i}".encode(): Record(f"k{i}".encode(), Version(1, 0, "n1"), b"v") for i in range(6)
    }
    storage = Storage(tmp_path)
    try:
        await storage.apply(list(records.values()))
        peers = _HungFirstPeers(records)
        coordinator = Coordinator(
            "n1", Ring({"n1": "a:1", "n2": "b:1", "n3": "c:1"}), storage,
            cast("Peers", peers), HybridClock("n1"), hedge_delay=0.005,
            hedge_budget=RetryBudget(0.5, min_per_second=0),
        )  # fmt: skip
        answered = []
        for key in records:
            try:
                answered.append(await within(coordinator.read(key, 2, 0.2)) is not None)
            except QuorumError:
                answered.append(False)
    finally:
        storage.close()
    # The budget after read k allows 0.5 * k hedges, each needing a whole one.
    assert answered == [False, True, False, True, False, True]
    assert coordinator.hedges == 3
    assert all(future.cancelled() for future in peers.hung)  # given up, not leaked


def test_gc_pauses_count_full_collections_only_while_installed() -> None:
    """Full collections are counted and timed between install and uninstall, not after."""
    pauses = GcPauses()
    pauses.install()
    pauses.install()  # idempotent: still heard once per collection
    try:
        gc.collect(0)  # a young collection is not a full one
        assert pauses.collections == 0
        gc.collect()
        gc.collect()
    finally:
        pauses.uninstall()
    assert pauses.collections == 2
    assert 0 < pauses.slowest <= pauses.total
    gc.collect()
    assert pauses.collections == 2
    assert pauses.view()["full_collections"] == 2


def test_loop_lag_counts_only_lateness_at_the_threshold_as_a_stall() -> None:
    """Lateness goes to the histogram; from the threshold on it is a stall, stamped."""
    registry = CollectorRegistry()
    walls = iter([100.0, 200.0])
    lag = LoopLag(registry, interval=0.01, threshold=0.02, wall=lambda: next(walls))
    for late in (0.001, 0.0199, 0.02, -0.003, 0.25):
        lag.observe(late)
    assert (lag.checks, lag.stalls) == (5, 2)
    assert lag.longest == 0.25
    assert lag.stalled == pytest.approx(0.27)
    assert list(lag.recent) == [(100.0, 0.02), (200.0, 0.25)]
    sample = registry.get_sample_value
    assert sample("kv_loop_stalls_total") == 2
    assert sample("kv_loop_lag_seconds_count") == 5
    assert sample("kv_loop_lag_seconds_bucket", {"le": "0.001"}) == 2  # 0.001 and the -0.003
    assert sample("kv_loop_lag_seconds_bucket", {"le": "0.1"}) == 4
    view = lag.view()
    assert (view["stalls"], view["longest_ms"], view["stalled_ms_total"]) == (2, 250.0, 270.0)
    assert view["recent_stalls"] == [[100.0, 20.0], [200.0, 250.0]]


@pytest.mark.parametrize(
    ("interval", "threshold", "named"),
    [(0.0, 0.02, "interval"), (0.01, -1.0, "threshold"), (float("nan"), 1.0, "interval")],
)
def test_loop_lag_refuses_a_period_or_threshold_that_is_not_positive(
    interval: float, threshold: float, named: str
) -> None:
    """A zero or negative (or NaN) interval or threshold is an error naming it."""
    with pytest.raises(ValueError, match=f"^{named} must be > 0"):
        LoopLag(CollectorRegistry(), interval=interval, threshold=threshold)


async def test_loop_lag_sees_the_loop_held() -> None:
    """Holding the event loop 0.2 s shows as a stall of about that length, not before."""
    lag = LoopLag(CollectorRegistry(), interval=0.01, threshold=0.1)
    task = asyncio.get_running_loop().create_task(lag.run())
    try:
        await until(lambda: lag.checks >= 2)
        before = lag.stalls
        time.sleep(0.2)  # noqa: ASYNC251  # the stall under test: the loop held on purpose
        checks = lag.checks
        await until(lambda: lag.checks > checks)
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await within(task)
    assert lag.stalls > before
    # Late by the hold less at most one interval; a loaded machine only adds to it.
    assert max(late for _, late in lag.recent) >= 0.19


def test_running_loop_is_the_recorded_loop_where_it_was_recorded_and_asyncios_elsewhere() -> None:
    """
    `use_loop` records the loop for what the current task starts from then on; a task
    of another run never sees it, and with no loop at all the error is asyncio's.
    """

    recorded_loop = asyncio.new_event_loop()  # never run: only `use_loop` makes it the answer

    async def recorded() -> tuple[bool, bool]:
        use_loop(recorded_loop)
        child = await asyncio.get_running_loop().create_task(_answer())
        return running_loop() is recorded_loop, child is recorded_loop

    async def _answer() -> asyncio.AbstractEventLoop:
        return running_loop()

    async def fresh() -> bool:
        return running_loop() is asyncio.get_running_loop()

    try:
        assert asyncio.run(recorded()) == (True, True)
    finally:
        recorded_loop.close()
    assert asyncio.run(fresh())  # a task of another run never sees the recorded loop
    with pytest.raises(RuntimeError, match="no running event loop"):
        running_loop()


async def test_running_loop_in_a_worker_thread_is_not_the_recorded_loop() -> None:
    """
    `asyncio.to_thread` copies the context, record included: a worker thread must not
    be handed the node's loop (a future made there would belong to another thread's
    loop), nor a loop run inside the worker (`asyncio.run` in a thread) the node's one.
    """
    use_loop(asyncio.get_running_loop())  # this test's task context only

    def bare() -> str:
        with pytest.raises(RuntimeError, match="no running event loop"):
            running_loop()
        return "raised"

    async def own() -> bool:
        return running_loop() is asyncio.get_running_loop()

    assert running_loop() is asyncio.get_running_loop()
    assert await within(asyncio.to_thread(bare)) == "raised"
    assert await within(asyncio.to_thread(asyncio.run, own()))


def test_running_loop_in_a_forked_child_is_not_the_parents_loop() -> None:
    """
    A forked child inherits the record with the thread; the parent's loop is not
    running there (3.11's `get_running_loop` checks the pid for that very reason).
    """

    async def fork() -> int:
        use_loop(asyncio.get_running_loop())
        pid = os.fork()
        if pid == 0:  # the child: report through the exit status, run nothing else
            try:
                running_loop()
            except RuntimeError:
                os._exit(0)
            except BaseException:  # any other outcome is a failure
                os._exit(2)
            os._exit(1)  # the parent's loop came back
        return pid

    pid = asyncio.run(fork())
    _, status = os.waitpid(pid, 0)  # the child only reads a context variable and exits
    assert os.waitstatus_to_exitcode(status) == 0
