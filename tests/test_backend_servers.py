"""Redis- and memcached-specific behaviour: faults, timeouts, limits, key encoding, sharding.

The behaviour every backend shares is in ``tests/test_backend_conformance.py``;
this file covers what only a real server can show: a dead port, a frozen
process, a slow command, the item size limit, where keys land on a cluster or a
memcached pool, and memcached's key and TTL rules.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from typing import TYPE_CHECKING

import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pymemcache.client.base import Client

import cacheorm as co
from cacheorm.backends.base import KEEP_TTL, Cas, Command, Delete, Get, Gets, Incr, Set
from cacheorm.backends.memcached import MemcachedBackend, memcached_key
from cacheorm.backends.redis import RedisBackend
from tests.servers import free_port, wait_until_stopped

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

    from tests.servers import MemcachedServer, RedisCluster, RedisServer, ServerFactory

THIRTY_DAYS = 30 * 24 * 3600


def _legal_memcached_key(key: bytes) -> bool:
    return 1 <= len(key) <= 250 and all(0x21 <= byte <= 0x7E for byte in key)


def _meta_ttl(server: MemcachedServer, key: bytes) -> int:
    """The remaining TTL memcached itself reports for ``key`` (meta get, memcached >= 1.6)."""
    with socket.create_connection(server.address, timeout=2) as sock:
        sock.sendall(b"mg " + memcached_key(key) + b" t\r\n")
        reply = sock.recv(256)
    assert reply.startswith(b"HD "), reply
    return int(reply.split()[1][1:])


@pytest.fixture
def mc(memcached_servers: list[MemcachedServer]) -> Iterator[MemcachedBackend]:
    memcached_servers[0].flush()
    backend = MemcachedBackend(servers=[memcached_servers[0].address])
    yield backend
    backend.close()


@pytest.fixture
def rb(redis_server: RedisServer) -> Iterator[RedisBackend]:
    redis_server.flush()
    backend = RedisBackend(url=redis_server.url)
    yield backend
    backend.close()


# -- faults and timeouts -------------------------------------------------------


@pytest.mark.timeout(20)
def test_redis_closed_port_raises_backend_error_quickly() -> None:
    backend = RedisBackend(url=f"redis://127.0.0.1:{free_port()}/0", socket_connect_timeout=0.5)
    started = time.monotonic()
    with pytest.raises(co.BackendError) as caught:
        backend.get(b"k")
    assert time.monotonic() - started < 2.0
    assert isinstance(caught.value.__cause__, redis.RedisError)
    backend.close()


@pytest.mark.timeout(20)
def test_memcached_closed_port_raises_backend_error_quickly() -> None:
    backend = MemcachedBackend(servers=[("127.0.0.1", free_port())], connect_timeout=0.5)
    started = time.monotonic()
    with pytest.raises(co.BackendError) as caught:
        backend.set(b"k", b"v")
    assert time.monotonic() - started < 2.0
    assert isinstance(caught.value.__cause__, OSError)
    backend.close()


@pytest.mark.timeout(30)
def test_memcached_frozen_by_sigstop_times_out_then_recovers(server_factory: ServerFactory) -> None:
    server = server_factory.memcached()
    backend = MemcachedBackend(servers=[server.address], timeout=0.5)
    backend.set(b"k", b"v")
    os.kill(server.pid, signal.SIGSTOP)
    wait_until_stopped(server.pid)
    try:
        started = time.monotonic()
        with pytest.raises(co.BackendError):
            backend.get(b"k")
        assert time.monotonic() - started < 1.5
    finally:
        os.kill(server.pid, signal.SIGCONT)
    assert backend.get(b"k") == b"v"
    backend.close()


@pytest.mark.timeout(30)
def test_redis_slow_command_times_out_then_recovers(server_factory: ServerFactory) -> None:
    server = server_factory.redis()
    backend = RedisBackend(url=server.url, socket_timeout=0.5)
    backend.set(b"k", b"v")
    with socket.create_connection((server.host, server.port), timeout=10) as blocker:
        blocker.sendall(b"DEBUG SLEEP 3\r\n")  # blocks the single-threaded server for 3 s
        time.sleep(0.05)
        started = time.monotonic()
        with pytest.raises(co.BackendError) as caught:
            backend.get(b"k")
        elapsed = time.monotonic() - started
        assert elapsed < 1.5, "a timeout must not be retried (nor wait for the server)"
        assert isinstance(caught.value.__cause__, redis.TimeoutError)
        assert blocker.recv(16).startswith(b"+OK")  # the sleep is over
    assert backend.get(b"k") == b"v"
    backend.close()


@pytest.mark.timeout(30)
def test_memcached_pool_with_a_dead_node_raises_instead_of_missing(
    memcached_servers: list[MemcachedServer],
) -> None:
    live = memcached_servers[1]
    live.flush()
    backend = MemcachedBackend(servers=[live.address, ("127.0.0.1", free_port())], timeout=0.5)
    outcomes = {}
    for i in range(40):
        key = b"key-%d" % i
        try:
            backend.set(key, b"v")
            outcomes[key] = "stored"
        except co.BackendError:
            outcomes[key] = "raised"
    assert set(outcomes.values()) == {"stored", "raised"}
    # Retrying never remaps a dead node's keys to the live node, nor turns them into misses.
    for key, outcome in outcomes.items():
        if outcome == "raised":
            with pytest.raises(co.BackendError):
                backend.get(key)
        else:
            assert backend.get(key) == b"v"
    backend.close()


# -- value size limits -------------------------------------------------------


@pytest.mark.parametrize("write", ["set", "replace", "cas", "set_many"])
def test_memcached_value_too_large_raises_and_drops_the_old_value(
    mc: MemcachedBackend, write: str
) -> None:
    big = b"x" * (2 * 1024 * 1024)  # memcached's default item limit is 1 MiB
    mc.set(b"k", b"old")
    got = mc.gets(b"k")
    assert got is not None
    writes: dict[str, Callable[[], object]] = {
        "set": lambda: mc.set(b"k", big),
        "replace": lambda: mc.replace(b"k", big),
        "cas": lambda: mc.cas(b"k", big, got[1]),
        "set_many": lambda: mc.set_many({b"k": big, b"other": b"small"}),
    }
    with pytest.raises(co.ValueTooLarge):
        writes[write]()
    assert mc.get(b"k") is None
    mc.set(b"k", b"new")  # the connection is still usable
    assert mc.get(b"k") == b"new"


def test_memcached_batch_of_sets_reports_each_key_and_keeps_one_keys_order(
    mc: MemcachedBackend,
) -> None:
    big = b"x" * (2 * 1024 * 1024)
    mc.set_many({b"a": b"old", b"b": b"old", b"c": b"old"})
    # Distinct keys (one pipelined write per server): each slot has its own result.
    results = mc.batch([Set(b"a", big), Set(b"b", b"new"), Set(b"c", b"x", ttl=-5)])
    assert isinstance(results[0], co.ValueTooLarge)
    assert results[1] is True
    assert isinstance(results[2], co.ValidationError)
    assert mc.get_many(b"a", b"b", b"c") == [None, b"new", b"old"]
    # One key twice: the refused value's old one is deleted before the later write lands.
    results = mc.batch([Set(b"b", big), Set(b"b", b"newer"), Set(b"a", b"1")])
    assert isinstance(results[0], co.ValueTooLarge)
    assert results[1:] == [True, True]
    assert mc.get_many(b"a", b"b") == [b"1", b"newer"]


def test_memcached_get_many_tells_keys_apart_whatever_their_bytes(mc: MemcachedBackend) -> None:
    # A key with a space (or over 250 bytes, or starting with ~) is no plain memcached key:
    # a read of many keys must not take it for two keys, nor mix it up with its parts.
    keys = [b"a b", b"a", b"b", b"~x", b"x" * 300, b"", b"plain"]
    mc.set_many({key: b"value of %d" % i for i, key in enumerate(keys)})
    assert mc.get_many(*keys) == [b"value of %d" % i for i in range(len(keys))]
    assert mc.get_many(b"a", b"missing", b"a") == [b"value of 1", None, b"value of 1"]
    assert mc.get_many(b"a b", b"a", b"b") == [b"value of 0", b"value of 1", b"value of 2"]
    results = mc.batch([Get(key) for key in reversed(keys)])
    assert results == [b"value of %d" % i for i in reversed(range(len(keys)))]


def test_memcached_batch_of_sets_checks_key_length_against_the_key_prefix(
    memcached_servers: list[MemcachedServer],
) -> None:
    node = memcached_servers[0]
    client = Client(node.address, key_prefix=b"app:", timeout=2)  # one server: no placement
    backend = MemcachedBackend(client=client)
    long_key = b"k" * 248  # fits memcached's 250 bytes alone, not behind the prefix
    results = backend.batch([Set(long_key, b"v"), Set(b"batch-short", b"v")])
    assert isinstance(results[0], co.ValidationError)
    assert "too long" in str(results[0])
    assert results[1] is True
    read = backend.batch([Get(long_key), Get(b"batch-short")])
    assert isinstance(read[0], co.ValidationError)
    assert read[1] == b"v"
    raw = node.client()
    try:
        assert raw.get(b"app:batch-short") == b"v"  # written behind the client's prefix
    finally:
        raw.close()
    backend.close()
    client.close()


def test_redis_value_over_limit_raises_and_drops_the_old_value(redis_server: RedisServer) -> None:
    redis_server.flush()
    backend = RedisBackend(url=redis_server.url, max_value_size=1024)
    backend.set(b"k", b"old")
    with pytest.raises(co.ValueTooLarge):
        backend.set(b"k", b"x" * 1025)
    assert backend.get(b"k") is None
    results = backend.batch([Set(b"a", b"x" * 2000), Set(b"b", b"ok")])
    assert isinstance(results[0], co.ValueTooLarge)
    assert results[1] is True
    backend.close()


# -- memcached keys -----------------------------------------------------------


@given(st.lists(st.binary(max_size=400), min_size=2, max_size=20, unique=True))
def test_memcached_key_encoding_is_injective_and_legal(keys: list[bytes]) -> None:
    encoded = [memcached_key(key) for key in keys]
    assert all(_legal_memcached_key(key) for key in encoded)
    assert len(set(encoded)) == len(keys)


@given(st.text(alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7D), min_size=1))
def test_memcached_key_leaves_plain_short_keys_alone(text: str) -> None:
    key = text.encode()[:250]
    assert memcached_key(key) == key


def test_memcached_key_encoding_distinguishes_lookalikes() -> None:
    plain = b"~bYSBi"  # looks like the encoding of b"a b"
    assert memcached_key(b"a b") == plain
    assert memcached_key(plain) != plain
    assert len({memcached_key(k) for k in (b"", b" ", b"~", b"a b", plain, b"x" * 251)}) == 6


def test_memcached_key_encoding_is_stable_across_processes() -> None:
    samples = [b"", b"plain", b"with space", b"\x00\xff", "ünï".encode(), b"~x", b"k" * 300]
    program = (
        "import sys; from cacheorm.backends.memcached import memcached_key as m; "
        f"sys.stdout.write(repr([m(k) for k in {samples!r}]))"
    )
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    out = subprocess.run(
        [sys.executable, "-c", program], capture_output=True, check=True, env=env, text=True
    ).stdout
    assert out == repr([memcached_key(k) for k in samples])


@settings(max_examples=60, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.dictionaries(st.binary(max_size=300), st.binary(max_size=50), min_size=1, max_size=8))
def test_memcached_stores_any_key_without_collisions(
    memcached_servers: list[MemcachedServer], items: dict[bytes, bytes]
) -> None:
    backend = MemcachedBackend(servers=[memcached_servers[0].address])
    try:
        backend.delete_many(*items)
        backend.set_many(items)
        assert backend.get_many(*items) == list(items.values())
        for key, value in items.items():
            assert backend.get(key) == value
    finally:
        backend.close()


# -- memcached TTLs and counters -------------------------------------------------


def test_memcached_ttl_over_30_days_is_not_an_instant_expiry(
    mc: MemcachedBackend, memcached_servers: list[MemcachedServer]
) -> None:
    forty_days = 40 * 24 * 3600
    mc.set(b"long", b"v", ttl=forty_days)
    assert mc.get(b"long") == b"v"
    assert abs(_meta_ttl(memcached_servers[0], b"long") - forty_days) <= 2


@pytest.mark.parametrize("ttl", [100, 40 * 24 * 3600])
def test_memcached_cas_keep_ttl_keeps_the_remaining_lifetime(
    mc: MemcachedBackend, memcached_servers: list[MemcachedServer], ttl: int
) -> None:
    mc.set(b"k", b"v1", ttl=ttl)
    got = mc.gets(b"k")
    assert got is not None
    assert mc.cas(b"k", b"v2", got[1], ttl=KEEP_TTL)
    assert mc.get(b"k") == b"v2"
    assert abs(_meta_ttl(memcached_servers[0], b"k") - ttl) <= 2
    # touch rewrites the remembered expiry too, so a later KEEP_TTL keeps the new one.
    assert mc.touch(b"k", ttl=50)
    again = mc.gets(b"k")
    assert again is not None
    assert mc.cas(b"k", b"v3", again[1], ttl=KEEP_TTL)
    assert abs(_meta_ttl(memcached_servers[0], b"k") - 50) <= 2


def test_memcached_delete_if_hides_the_item(mc: MemcachedBackend) -> None:
    mc.set(b"k", b"v")
    got = mc.gets(b"k")
    assert got is not None
    mc.set(b"k", b"changed")
    assert not mc.delete_if(b"k", got[1])
    fresh = mc.gets(b"k")
    assert fresh is not None
    assert mc.delete_if(b"k", fresh[1])
    assert mc.get(b"k") is None
    assert not mc.has(b"k")
    assert mc.add(b"k", b"again")


def test_memcached_counters_go_negative_and_back(mc: MemcachedBackend) -> None:
    assert mc.decr(b"n", 3) == -3
    assert mc.get(b"n") == b"-3"
    assert mc.incr(b"n", 5) == 2
    assert mc.incr(b"n", 10) == 12
    assert mc.decr(b"n", 12) == 0
    assert mc.decr(b"n") == -1
    assert int(mc.get(b"n") or b"") == -1


@pytest.mark.timeout(60)
def test_memcached_counter_is_atomic_across_threads(mc: MemcachedBackend) -> None:
    """Native incr, the cas loop and the lock together lose no update under contention."""

    def work(delta: int) -> None:
        for _ in range(150):
            mc.incr(b"shared", delta)

    threads = [threading.Thread(target=work, args=(d,)) for d in (1, 2, -1, -3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert mc.incr(b"shared", 0) == 150 * (1 + 2 - 1 - 3)


def test_memcached_lock_is_cheap_next_to_a_round_trip(mc: MemcachedBackend) -> None:
    lock = threading.Lock()
    rounds = 2000
    started = time.perf_counter()
    for _ in range(rounds):
        with lock:
            pass
    lock_cost = (time.perf_counter() - started) / rounds
    mc.set(b"k", b"v")
    started = time.perf_counter()
    for _ in range(rounds // 4):
        mc.get(b"k")
    get_cost = (time.perf_counter() - started) / (rounds // 4)
    assert lock_cost < get_cost / 20, (lock_cost, get_cost)


def test_memcached_batch_groups_without_reordering_same_key(mc: MemcachedBackend) -> None:
    results = mc.batch(
        [
            Get(b"a"),
            Set(b"a", b"1"),
            Set(b"b", b"2", ttl=100),
            Get(b"a"),
            Gets(b"b"),
            Incr(b"n", delta=-2),
            Delete(b"a"),
            Get(b"a"),
            Set(b"bad", b"x", ttl=-1),
        ]
    )
    assert results[0] is None
    assert results[1:3] == [True, True]
    assert results[3] == b"1"
    gets = results[4]
    assert isinstance(gets, tuple)
    assert gets[0] == b"2"
    assert results[5:8] == [-2, True, None]
    assert isinstance(results[8], co.ValidationError)


# -- where keys land -------------------------------------------------------------


@pytest.mark.timeout(60)
def test_redis_cluster_many_keys_spread_over_every_master(redis_cluster: RedisCluster) -> None:
    redis_cluster.flush()
    backend = RedisBackend(client=redis_cluster.client())
    items = {b"key:%d" % i: b"value:%d" % i for i in range(1000)}
    backend.set_many(items, ttl=300)
    assert backend.get_many(*items) == list(items.values())
    sizes = []
    for port in redis_cluster.ports:
        with redis_cluster.node_client(port) as node:
            sizes.append(node.dbsize())
    assert all(size > 0 for size in sizes), sizes
    assert sum(sizes) == 1000
    assert backend.delete_many(*items, b"missing") == 1000
    backend.close()


def test_redis_cluster_batch_spans_slots(redis_cluster: RedisCluster) -> None:
    redis_cluster.flush()
    backend = RedisBackend(client=redis_cluster.client())
    backend.set(b"c", b"old")
    got = backend.gets(b"c")
    assert got is not None
    commands: list[Command] = [Set(b"k%d" % i, b"v%d" % i) for i in range(20)]
    commands += [Cas(b"c", b"new", token=got[1], ttl=KEEP_TTL)]
    commands += [Get(b"k%d" % i) for i in range(20)]
    commands += [Incr(b"n", delta=-5)]
    results = backend.batch(commands)
    assert results[:20] == [True] * 20
    assert results[20] is True
    assert results[21:41] == [b"v%d" % i for i in range(20)]
    assert results[41:] == [-5]
    assert backend.get(b"c") == b"new"
    assert backend.touch(b"c", ttl=0) is True
    backend.close()


def test_memcached_pool_puts_data_on_both_nodes(memcached_servers: list[MemcachedServer]) -> None:
    nodes = memcached_servers[1:3]
    for node in nodes:
        node.flush()
    backend = MemcachedBackend(servers=[node.address for node in nodes])
    items = {b"key:%d" % i: b"v%d" % i for i in range(200)}
    backend.set_many(items)
    assert backend.get_many(*items) == list(items.values())
    held = []
    for node in nodes:
        client = node.client()
        try:
            held.append(set(client.get_many([memcached_key(key) for key in items])))
        finally:
            client.close()
    assert all(held), "every node holds part of the data"
    assert not held[0] & held[1]
    assert len(held[0] | held[1]) == 200
    backend.close()


# -- construction -------------------------------------------------------------


def test_redis_backend_rejects_a_decoding_client(redis_server: RedisServer) -> None:
    client = redis.Redis(redis_server.host, redis_server.port, decode_responses=True)
    with pytest.raises(co.ValidationError):
        RedisBackend(client=client)
    client.close()
    with pytest.raises(co.ValidationError):
        RedisBackend()


def test_redis_token_from_another_backend_is_rejected(
    rb: RedisBackend, mc: MemcachedBackend
) -> None:
    mc.set(b"k", b"v")
    rb.set(b"k", b"v")
    foreign = mc.gets(b"k")
    assert foreign is not None
    with pytest.raises(co.ValidationError):
        rb.cas(b"k", b"w", foreign[1])
    own = rb.gets(b"k")
    assert own is not None
    with pytest.raises(co.ValidationError):
        mc.cas(b"k", b"w", own[1])


def test_backend_modules_import_their_driver_lazily() -> None:
    program = (
        "import sys\n"
        "sys.modules['redis'] = None\n"  # makes any `import redis` fail
        "sys.modules['pymemcache'] = None\n"
        "import cacheorm.backends.redis, cacheorm.backends.memcached\n"
    )
    subprocess.run([sys.executable, "-c", program], check=True)


@pytest.mark.parametrize("kind", ["redis", "memcached"])
def test_a_ttl_beyond_what_the_server_can_express_means_never(
    kind: str, rb: RedisBackend, mc: MemcachedBackend
) -> None:
    backend: co.Backend = rb if kind == "redis" else mc
    backend.set(b"k", b"v", ttl=10**20)
    assert backend.get(b"k") == b"v"
    got = backend.gets(b"k")
    assert got is not None
    assert backend.cas(b"k", b"w", got[1], ttl=10**20)
    assert backend.touch(b"k", ttl=10**20)
    assert backend.get(b"k") == b"w"


def test_redis_backend_rejects_a_bad_url() -> None:
    with pytest.raises(co.ValidationError):
        RedisBackend(url="http://example.invalid/")


def test_memcached_backend_adopts_a_client_but_refuses_ignore_exc(
    memcached_servers: list[MemcachedServer],
) -> None:
    from pymemcache.client.base import Client
    from pymemcache.client.hash import HashClient

    node = memcached_servers[0]
    node.flush()
    with pytest.raises(co.ValidationError):
        MemcachedBackend(client=Client(node.address, ignore_exc=True))
    pool = HashClient([node.address], timeout=0.5)
    backend = MemcachedBackend(client=pool)
    backend.set(b"a b", b"v", ttl=100)  # unsafe key, flags carry the expiry
    got = backend.gets(b"a b")
    assert got is not None
    assert got[0] == b"v"
    backend.close()


def test_repeated_keys_in_get_many_and_delete_many(
    rb: RedisBackend, mc: MemcachedBackend, redis_cluster: RedisCluster
) -> None:
    redis_cluster.flush()
    cluster = RedisBackend(client=redis_cluster.client())
    for backend in (rb, mc, cluster):
        backend.set(b"a", b"1")
        assert backend.get_many(b"a", b"x", b"a") == [b"1", None, b"1"]
        assert backend.delete_many(b"a", b"a", b"x") == 1
    cluster.close()


def test_close_leaves_a_passed_in_client_open(
    redis_server: RedisServer, memcached_servers: list[MemcachedServer]
) -> None:
    client = redis_server.client()
    co.RedisBackend(client=client).close()
    assert client.ping() is True  # still usable by its owner
    client.close()
    raw = memcached_servers[0].client()
    co.MemcachedBackend(client=raw).close()
    raw.set("still-open", b"1", noreply=False)
    raw.close()
