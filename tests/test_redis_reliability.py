"""The Redis backend under faults: nothing run twice, every wait bounded, migrations followed.

* A reply lost after the server ran the command (a proxy drops it): the command
  is not sent again unless running it twice ends the same (``GET``, plain
  ``SET``); otherwise the call raises ``BackendError`` saying the outcome is
  unknown, and the server has run it exactly once.
* A cluster master frozen by SIGSTOP: its keys fail within the documented
  bound while the other masters' keys are served.
* A slot migrated key by key: batched reads follow ``ASK``/``TRYAGAIN``.
* A key of the wrong Redis type under a record key is a ``DecodeError``.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from typing import TYPE_CHECKING, NamedTuple, cast

import pytest
import redis
from hypothesis import given, settings
from hypothesis import strategies as st
from redis.crc import key_slot

import cacheorm as co
from cacheorm.backends.base import FRESH, Add, Delete, Get, Gets, Incr, Set
from cacheorm.backends.redis import RedisBackend, hash_slots
from cacheorm.crud import LOCK_PREFIX
from tests.proxy import Proxy
from tests.records import NOTE, PERSON, Note, Person
from tests.servers import free_port, start_redis_cluster, wait_until_stopped
from tests.workers import Forked

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

    from tests.servers import RedisCluster, RedisServer

UNKNOWN = "not resent"


class Tally(NamedTuple):
    name: str
    total: int


TALLY = co.Schema(Tally, key="name")


def calls(raw: redis.Redis, command: str) -> int:
    """How many times the server ran ``command`` since its stats were reset."""
    stats: dict[str, dict[str, int]] = raw.info("commandstats")
    return stats.get(f"cmdstat_{command}", {}).get("calls", 0)


@pytest.fixture
def raw(redis_server: RedisServer) -> Iterator[redis.Redis]:
    """A plain client on the real server (behind no proxy), which starts empty."""
    redis_server.flush()
    with redis_server.client() as client:
        client.config_resetstat()
        yield client


@pytest.fixture
def proxy(redis_server: RedisServer, raw: redis.Redis) -> Iterator[Proxy]:
    with Proxy(redis_server.host, redis_server.port) as running:
        yield running


@pytest.fixture
def backend(proxy: Proxy) -> Iterator[RedisBackend]:
    """A backend built from a URL, talking to the server through the proxy."""
    made = RedisBackend(url=f"redis://127.0.0.1:{proxy.port}/0", socket_timeout=0.5)
    made.set(b"warm", b"1")  # the connection handshake is done: the next request is ours
    yield made
    made.close()


# -- 1. a lost reply is never answered by running the command again ---------------------


@pytest.mark.timeout(20)
def test_incr_whose_reply_is_lost_counts_once_and_raises(
    backend: RedisBackend, proxy: Proxy, raw: redis.Redis
) -> None:
    proxy.drop_next_reply(b"INCRBY")
    started = time.monotonic()
    with pytest.raises(co.BackendError, match=UNKNOWN) as caught:
        backend.incr(b"n", 5)
    assert time.monotonic() - started < 1.0
    assert proxy.dropped == 1
    assert "unknown" in str(caught.value)
    assert caught.value.server == f"127.0.0.1:{proxy.port}"
    assert isinstance(caught.value.__cause__, redis.ConnectionError)
    assert raw.get(b"n") == b"5"  # run once, not twice
    assert calls(raw, "incrby") == 1
    assert backend.incr(b"n") == 6  # and the backend reconnects


@pytest.mark.timeout(20)
def test_add_whose_reply_is_lost_raises_backend_error_and_stores_once(
    backend: RedisBackend, proxy: Proxy, raw: redis.Redis
) -> None:
    proxy.drop_next_reply(b"NX")
    with pytest.raises(co.BackendError, match=UNKNOWN):
        backend.add(b"k", b"v")  # a resend would answer "exists": the caller's own write
    assert raw.get(b"k") == b"v"
    assert calls(raw, "set") == 2  # the warm-up and the add, nothing resent


@pytest.mark.timeout(20)
def test_cas_whose_reply_is_lost_is_applied_once(
    backend: RedisBackend, proxy: Proxy, raw: redis.Redis
) -> None:
    backend.set(b"c", b"old")
    backend.set(b"other", b"x")
    first = backend.gets(b"other")
    assert first is not None
    assert backend.cas(b"other", b"y", first[1])  # the script is now loaded: EVALSHA runs it
    got = backend.gets(b"c")
    assert got is not None
    before = calls(raw, "evalsha")
    proxy.drop_next_reply(b"EVALSHA")
    with pytest.raises(co.BackendError, match=UNKNOWN):
        backend.cas(b"c", b"new", got[1])
    assert raw.get(b"c") == b"new"
    assert calls(raw, "evalsha") == before + 1
    assert backend.cas(b"c", b"newer", got[1]) is False  # what a resend would have said


@pytest.mark.timeout(20)
def test_a_lost_pipeline_resends_only_what_is_safe(
    backend: RedisBackend, proxy: Proxy, raw: redis.Redis
) -> None:
    raw.set(b"x", b"x0")
    raw.set(b"y", b"y0")
    proxy.drop_next_reply(b"INCRBY")
    results = backend.batch(
        [
            Get(b"y"),
            Get(b"x"),
            Incr(b"n", delta=1),
            Set(b"s", b"v"),
            Delete(b"x"),
            Add(b"a", b"1"),
        ]
    )
    assert results[0] == b"y0"  # GET and plain SET end the same when run twice: resent
    assert results[3] is True
    for lost in (results[2], results[4], results[5]):
        assert isinstance(lost, co.BackendError)
        assert UNKNOWN in str(lost)
    # Resent alone, the GET of x would see the DEL that followed it, or not: not resent.
    assert isinstance(results[1], co.BackendError)
    assert calls(raw, "get") == 3  # the pipeline's two, then y's again
    assert calls(raw, "incrby") == calls(raw, "del") == 1
    assert raw.get(b"n") == b"1"
    assert raw.get(b"x") is None
    assert raw.get(b"a") == b"1"


@pytest.mark.timeout(20)
def test_a_read_whose_reply_is_lost_is_resent(proxy: Proxy, raw: redis.Redis) -> None:
    raw.set(b"k", b"v")
    backend = RedisBackend(url=f"redis://127.0.0.1:{proxy.port}/0", socket_timeout=0.5)
    backend.set(b"warm", b"1")
    proxy.drop_next_reply(b"GET")
    assert backend.get(b"k") == b"v"
    assert proxy.dropped == 1
    strict = RedisBackend(url=f"redis://127.0.0.1:{proxy.port}/0", retries=0)
    strict.set(b"warm", b"1")
    proxy.drop_next_reply(b"GET")
    with pytest.raises(co.BackendError) as caught:
        strict.get(b"k")
    assert UNKNOWN not in str(caught.value)  # a read: nothing to be unsure about
    for made in (backend, strict):
        made.close()


@pytest.mark.timeout(20)
def test_a_blackholed_server_costs_one_timeout_per_call(
    backend: RedisBackend, proxy: Proxy, raw: redis.Redis
) -> None:
    proxy.blackhole()
    for call in (lambda: backend.get(b"k"), lambda: backend.incr(b"n")):
        started = time.monotonic()
        with pytest.raises(co.BackendError) as caught:
            call()
        assert time.monotonic() - started < 0.5 + 0.4  # one socket timeout, never retried
        assert isinstance(caught.value.__cause__, redis.TimeoutError)
    proxy.forward()
    assert backend.get(b"warm") == b"1"


@pytest.mark.timeout(20)
def test_nothing_sent_says_so() -> None:
    backend = RedisBackend(url=f"redis://127.0.0.1:{free_port()}/0", socket_connect_timeout=0.5)
    with pytest.raises(co.BackendError, match="nothing was sent") as caught:
        backend.incr(b"n")
    assert caught.value.server is not None
    assert caught.value.server.startswith("127.0.0.1:")
    backend.close()


# -- 1, through the public API ----------------------------------------------------------


def _repo_behind(proxy: Proxy) -> RedisBackend:
    made = RedisBackend(url=f"redis://127.0.0.1:{proxy.port}/0", socket_timeout=0.5)
    made.set(b"warm", b"1")
    return made


@pytest.mark.timeout(20)
def test_co_add_whose_reply_is_lost_raises_backend_error(proxy: Proxy, raw: redis.Redis) -> None:
    people = co.Repo(PERSON, backend=_repo_behind(proxy))
    proxy.drop_next_reply(b"NX")
    with pytest.raises(co.BackendError, match=UNKNOWN):
        co.add(people, Person("Sam", 1.8))  # not AlreadyExists for its own record
    assert co.get(people, "Sam") == Person("Sam", 1.8)
    assert calls(raw, "set") == 2  # the warm-up and the add


@pytest.mark.timeout(20)
def test_autofield_insert_whose_reply_is_lost_is_stored_under_one_id(
    proxy: Proxy, raw: redis.Redis
) -> None:
    notes = co.Repo(NOTE, backend=_repo_behind(proxy))
    proxy.drop_next_reply(b"NX")
    with pytest.raises(co.BackendError, match=UNKNOWN):
        co.insert(notes, Note(None, "x"))
    records = [key for key in raw.scan_iter() if key not in (b"warm", NOTE.counter_key())]
    assert records == [NOTE.encode_key(1)]  # one id, no second copy under id 2
    assert co.get(notes, 1).title == "x"
    assert co.insert(notes, Note(None, "y")).id == 2


@pytest.mark.timeout(20)
def test_co_update_and_modify_whose_reply_is_lost_apply_once(
    proxy: Proxy, raw: redis.Redis
) -> None:
    tallies = co.Repo(TALLY, backend=_repo_behind(proxy))
    co.insert(tallies, Tally("t", 0))
    co.update(tallies, "t", total=1)  # loads the CAS script: the next calls use EVALSHA
    before = calls(raw, "evalsha")
    proxy.drop_next_reply(b"EVALSHA")
    with pytest.raises(co.BackendError, match=UNKNOWN):
        co.update(tallies, "t", total=2)
    assert calls(raw, "evalsha") == before + 1
    assert co.get(tallies, "t").total == 2
    proxy.drop_next_reply(b"EVALSHA")
    with pytest.raises(co.BackendError, match=UNKNOWN):
        co.modify(tallies, "t", lambda t: t._replace(total=t.total + 1))
    assert co.get(tallies, "t").total == 3  # once, not 4


# -- 2. a frozen cluster master costs one timeout, and only its keys --------------------


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisCluster]:
    """Our own three-master cluster: these tests freeze a node and migrate a slot."""
    root = tmp_path_factory.mktemp("reliability-cluster")
    made = start_redis_cluster([root / f"n{i}" for i in range(3)])
    try:
        yield made
    finally:
        made.stop()


def _command(node: redis.Redis, *args: object) -> object:
    return node.execute_command(*args)  # type: ignore[no-untyped-call]  # redis-py leaves it untyped


def _owner(cluster: RedisCluster, key: bytes) -> int:
    """The port of the master serving ``key``'s slot."""
    return cluster.owners()[key_slot(key)]


@pytest.mark.timeout(60)
def test_a_frozen_master_fails_its_keys_within_the_bound(cluster: RedisCluster) -> None:
    cluster.flush()
    timeout, retries = 0.5, 1
    seeds = ",".join(f"{cluster.host}:{port}" for port in cluster.ports[:2])
    backend = RedisBackend(
        url=f"redis+cluster://{seeds}",
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        retries=retries,
    )
    keys = [b"key:%d" % i for i in range(60)]
    backend.set_many({key: key for key in keys})
    victim = cluster.ports[1]
    owners = cluster.owners()
    frozen = [key for key in keys if owners[key_slot(key)] == victim]
    served = [key for key in keys if key not in frozen]
    assert frozen
    assert served
    bound = timeout * (1 + retries) + 1
    os.kill(cluster._procs[1].pid, signal.SIGSTOP)
    wait_until_stopped(cluster._procs[1].pid)
    try:
        for call in (
            lambda: backend.get(frozen[0]),
            lambda: backend.get_many(*frozen),
            lambda: backend.get_many(*keys),
        ):
            started = time.monotonic()
            with pytest.raises(co.BackendError) as caught:
                call()
            assert time.monotonic() - started < bound
            assert caught.value.server == f"{cluster.host}:{victim}"
        started = time.monotonic()
        results = backend.batch([Get(key) for key in keys])
        assert time.monotonic() - started < bound
        for key, result in zip(keys, results, strict=True):
            if key in frozen:
                assert isinstance(result, co.BackendError)
                assert result.server == f"{cluster.host}:{victim}"
            else:
                assert result == key
        started = time.monotonic()
        assert [backend.get(key) for key in served[:10]] == served[:10]
        assert backend.get_many(*served) == served
        assert time.monotonic() - started < 1.0
    finally:
        os.kill(cluster._procs[1].pid, signal.SIGCONT)
    assert backend.get_many(*keys) == keys
    backend.close()


def test_cluster_url_is_checked() -> None:
    with pytest.raises(co.ValidationError):
        RedisBackend(url="redis+cluster://127.0.0.1:7000/1")
    with pytest.raises(co.ValidationError):
        RedisBackend(url="redis+cluster://")
    started = time.monotonic()
    port = free_port()
    with pytest.raises(co.BackendError) as caught:
        RedisBackend(url=f"redis+cluster://127.0.0.1:{port}", socket_connect_timeout=0.5)
    assert time.monotonic() - started < 2
    assert caught.value.server == f"127.0.0.1:{port}"


_KEY_BYTES = st.sampled_from([b"{", b"}", b"{}", b"a", b"\x00", b"\xff", b"user:1"])


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.binary(max_size=12) | st.lists(_KEY_BYTES, max_size=6).map(b"".join), max_size=12)
)
def test_batch_keys_hash_to_redis_slots_hash_tags_included(keys: list[bytes]) -> None:
    # A batch groups keys by slot (one MGET per slot): a wrong slot would be a CROSSSLOT.
    assert hash_slots(keys) == [key_slot(key) for key in keys]


# -- 3. a slot migrated key by key ------------------------------------------------------


@pytest.mark.timeout(60)
def test_batches_follow_a_slot_migrated_key_by_key(cluster: RedisCluster) -> None:
    cluster.flush()
    backend = RedisBackend(url=f"redis+cluster://{cluster.host}:{cluster.ports[0]}")
    moving = [b"{moving}:%d" % i for i in range(12)]
    still = [b"still:%d" % i for i in range(12)]
    everything = moving + still
    backend.set_many({key: b"v-" + key for key in everything})
    expected = [b"v-" + key for key in everything]
    slot = key_slot(moving[0])
    source = _owner(cluster, moving[0])
    target = next(port for port in cluster.ports if port != source)
    nodes = {port: cluster.node_client(port) for port in cluster.ports}
    ids = {port: _command(nodes[port], "CLUSTER MYID") for port in cluster.ports}
    _command(nodes[target], "CLUSTER SETSLOT", slot, "IMPORTING", ids[source])
    _command(nodes[source], "CLUSTER SETSLOT", slot, "MIGRATING", ids[target])
    increments = 0
    try:
        for key in moving:
            _command(nodes[source], "MIGRATE", cluster.host, target, key, 0, 5000)
            assert backend.get_many(*everything) == expected
            reads = backend.batch([Gets(key) for key in everything])
            assert [r[0] if isinstance(r, tuple) else r for r in reads] == expected
            mixed = backend.batch(
                [
                    Incr(b"{moving}:n", delta=1),
                    Get(moving[0]),
                    Set(b"{moving}:w", b"w"),
                    Get(b"{moving}:w"),
                    Get(still[0]),
                ]
            )
            increments += 1
            assert mixed == [increments, expected[0], True, b"w", expected[len(moving)]]
    finally:
        for key in cast("list[bytes]", nodes[source].keys()):
            if key_slot(key) == slot:
                _command(nodes[source], "MIGRATE", cluster.host, target, key, 0, 5000)
        for port in [target, source, *cluster.ports]:
            _command(nodes[port], "CLUSTER SETSLOT", slot, "NODE", ids[target])
        for client in nodes.values():
            client.close()
    assert backend.get_many(*everything) == expected  # MOVED now: the map is updated
    assert backend.get(b"{moving}:n") == b"%d" % len(moving)
    assert _owner(cluster, moving[0]) == target
    backend.close()


# -- 4. a key of another Redis type is not a backend failure -----------------------------


@pytest.mark.parametrize("kind", ["redis", "redis_cluster"])
def test_a_key_of_the_wrong_type_is_a_decode_error(
    kind: str, redis_server: RedisServer, redis_cluster: RedisCluster
) -> None:
    if kind == "redis":
        redis_server.flush()
        backend = RedisBackend(url=redis_server.url)
        raw: redis.Redis | redis.RedisCluster = redis_server.client()
    else:
        redis_cluster.flush()
        raw = redis_cluster.client()
        backend = RedisBackend(client=raw)
    people = co.Repo(PERSON, backend=backend)
    key = PERSON.encode_key("Sam")
    raw.rpush(key, b"not a record")
    with pytest.raises(co.DecodeError, match="Sam") as caught:
        co.get(people, "Sam")
    assert "WRONGTYPE" in str(caught.value.__cause__)
    with pytest.raises(co.DecodeError):
        co.update(people, "Sam", height=1.0)
    assert co.get_many(people, ["Sam", "Bob"]) == [None, None]  # MGET reports it missing
    backend.close()
    raw.close()


@pytest.mark.timeout(20)
def test_get_or_load_gives_back_a_lock_whose_add_reply_was_lost(
    backend: RedisBackend, proxy: Proxy, raw: redis.Redis
) -> None:
    people = co.Repo(PERSON, backend=backend)
    proxy.drop_next_reply(b"NX")
    with pytest.raises(co.BackendError, match=UNKNOWN):
        co.get_or_load(people, "Sam", lambda name: Person(name, 1.8))
    assert raw.get(LOCK_PREFIX + PERSON.encode_key("Sam")) is None  # not left for lock_ttl
    assert co.get_or_load(people, "Sam", lambda name: Person(name, 1.8)) == Person("Sam", 1.8)


# -- 5. connections kept between calls ---------------------------------------------------


@pytest.mark.timeout(20)
def test_a_kept_connection_closed_while_idle_is_replaced_before_anything_is_sent(
    proxy: Proxy, raw: redis.Redis, backend: RedisBackend
) -> None:
    """Even an INCR, never resent, counts once: the closed connection is found out first."""
    proxy.disconnect_all()  # the server side of the kept connection is gone
    time.sleep(FRESH * 3)  # idle past FRESH: polled before reuse
    assert backend.incr(b"n", 1) == 1
    assert raw.get(b"n") == b"1"


@pytest.mark.timeout(20)
def test_a_clients_connection_goes_back_to_its_pool_after_each_call(
    redis_server: RedisServer,
) -> None:
    client = redis.Redis(host=redis_server.host, port=redis_server.port, max_connections=1)
    backend = RedisBackend(client=client)
    try:
        backend.set(b"k", b"v")
        assert client.get(b"k") == b"v"  # the pool's only connection is free again
        assert backend.get(b"k") == b"v"
    finally:
        backend.close()
        client.close()


@pytest.mark.timeout(30)
def test_a_forked_child_never_uses_the_parents_kept_connection(
    redis_server: RedisServer,
) -> None:
    backend = RedisBackend(url=redis_server.url)
    backend.set(b"parent", b"p")  # its connection is kept now

    def child() -> bytes:
        for i in range(200):
            backend.set(b"child:%d" % i, b"%d" % i)
        same = all(backend.get(b"child:%d" % i) == b"%d" % i for i in range(200))
        return b"ok" if same else b"mixed up"

    forked = Forked(child)
    try:
        for _ in range(200):  # meanwhile the parent's replies stay its own
            assert backend.get(b"parent") == b"p"
        assert forked.report() == b"ok"
    finally:
        forked.reap()
        backend.close()


# -- 6. a master that leaves the cluster ------------------------------------------------


def _clients_of(cluster: RedisCluster, port: int) -> int:
    """How many client connections master ``port`` has open, besides the one asking."""
    with cluster.node_client(port) as node:
        return sum(1 for client in node.client_list() if client["cmd"] != "client|list")


@pytest.mark.timeout(60)
@pytest.mark.parametrize("kind", ["sync", "async"])
def test_connections_to_a_master_that_left_the_cluster_are_closed(
    kind: str, tmp_path: Path
) -> None:
    """A master scaled in (its slots handed over) keeps no connection of ours open.

    The backend keeps connections between calls. A ``MOVED`` makes it re-read
    the slot map in the background; then those to a server the map no longer
    names are closed, not left open until ``close()``, and the remaining
    masters serve every key.
    """
    made = start_redis_cluster([tmp_path / f"n{i}" for i in range(3)])
    url = f"redis+cluster://{made.host}:{made.ports[0]}"
    leaving, taking = made.ports[2], made.ports[0]
    keys = [b"k:%d" % i for i in range(60)]
    owners = made.owners()
    moved = next(key for key in keys if owners[key_slot(key)] == leaving)

    def gone() -> bool:
        return _clients_of(made, leaving) == 0

    try:
        if kind == "sync":
            backend = RedisBackend(url=url)
            backend.set_many({key: key for key in keys})  # a connection to every master, kept
            assert not gone()
            made.retire(leaving, into=taking)
            assert backend.get(moved) is None  # MOVED: followed, and the map is re-read
            deadline = time.monotonic() + 10
            while not gone() and time.monotonic() < deadline:
                time.sleep(0.05)
            assert gone()
            backend.set_many({key: key for key in keys})
            assert backend.get_many(*keys) == keys
            backend.close()
        else:

            async def scenario() -> None:
                backend = co.AsyncRedisBackend(url=url)
                await backend.set_many({key: key for key in keys})
                assert not gone()
                made.retire(leaving, into=taking)
                assert await backend.get(moved) is None
                deadline = time.monotonic() + 10
                while not gone() and time.monotonic() < deadline:
                    await asyncio.sleep(0.05)  # the map is re-read by a task of this loop
                assert gone()
                await backend.set_many({key: key for key in keys})
                assert await backend.get_many(*keys) == keys
                await backend.aclose()

            asyncio.run(scenario())
    finally:
        made.stop()
