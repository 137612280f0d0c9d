"""AsyncRedisBackend: the asyncio twin of RedisBackend, on real servers.

What a user relies on: a sync and an async process share one cache (same
keys, values, TTLs and CAS tokens, standalone and on a cluster); concurrent
atomic updates are exact; a cancelled call leaves no broken or leaked
connection; a command that may have run is never resent; a hung server costs
one timeout; a forked child opens its own connections.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import random
import signal
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import TYPE_CHECKING, TypeVar, cast

import pytest
import redis
import redis.asyncio
from hypothesis import given, settings
from hypothesis import strategies as st
from redis.crc import key_slot

import cacheorm as co
from cacheorm.backends import resp
from cacheorm.backends.base import Cas, Get, Incr, Set
from tests.proxy import Proxy
from tests.servers import start_redis_cluster, wait_until_stopped

if TYPE_CHECKING:
    from collections.abc import Iterator

    from tests.servers import RedisCluster, RedisServer, ServerFactory

_T = TypeVar("_T")


def run(coroutine: Coroutine[object, object, _T]) -> _T:
    return asyncio.run(coroutine)


@pytest.fixture
def server(redis_server: RedisServer) -> RedisServer:
    redis_server.flush()
    return redis_server


@pytest.fixture
def cluster(redis_cluster: RedisCluster) -> RedisCluster:
    redis_cluster.flush()
    return redis_cluster


def cluster_url(cluster: RedisCluster) -> str:
    return "redis+cluster://" + ",".join(f"{cluster.host}:{port}" for port in cluster.ports[:2])


@pytest.fixture(params=["standalone", "cluster"])
def urls(request: pytest.FixtureRequest) -> str:
    """A URL for either kind of deployment, on a freshly flushed server."""
    if request.param == "standalone":
        server: RedisServer = request.getfixturevalue("server")
        return server.url
    return cluster_url(request.getfixturevalue("cluster"))


def in_use(backend: co.AsyncRedisBackend) -> int:
    """Connections currently taken by calls (0 when every call is over)."""
    slots = backend._slots
    return 0 if slots is None else backend._max_connections - slots._value


# -- sharing one cache with the sync backend -------------------------------------------


@pytest.mark.timeout(30)
def test_sync_and_async_share_keys_values_ttls_and_tokens(urls: str) -> None:
    sync = co.RedisBackend(url=urls)
    keys = [b"k:%d" % i for i in range(100)]

    async def main() -> None:
        backend: co.AsyncBackend = co.AsyncRedisBackend(url=urls)  # the protocol, statically
        assert isinstance(backend, co.AsyncBackend)
        sync.set_many({key: key + b"!" for key in keys}, ttl=100)
        assert await backend.get_many(*keys) == [key + b"!" for key in keys]
        found = await backend.get_with_ttl(keys[0])
        assert found is not None
        assert found[0] == b"k:0!"
        assert 99 < found[1] <= 100
        await backend.set_many({key: key + b"?" for key in keys}, ttl=0)
        assert sync.get_many(*keys) == [key + b"?" for key in keys]
        assert sync.get_with_ttl(keys[1]) == (b"k:1?", 0.0)
        assert await backend.add(b"new", b"1", ttl=50) is True
        assert sync.add(b"new", b"2") is False
        assert await backend.incr(b"n", 5) == 5
        assert sync.incr(b"n", 2) == 7
        assert await backend.batch([Get(b"n"), Set(b"x", b"y", None), Incr(b"n", 1)]) == [
            b"7",
            True,
            8,
        ]
        assert sync.get(b"x") == b"y"
        assert await backend.touch(b"x", 30) is True
        assert 29 < (sync.get_with_ttl(b"x") or (b"", 0.0))[1] <= 30
        assert await backend.delete_many(*keys) == 100
        assert sync.get_many(*keys[:3]) == [None, None, None]
        await backend.ping()
        await backend.aclose()

    run(main())
    sync.close()


@pytest.mark.timeout(30)
def test_cas_tokens_work_across_sync_and_async(urls: str) -> None:
    sync = co.RedisBackend(url=urls)

    async def main() -> None:
        backend = co.AsyncRedisBackend(url=urls)
        sync.set(b"doc", b"v1")
        read_async = await backend.gets(b"doc")
        read_sync = sync.gets(b"doc")
        assert read_async == read_sync  # the same token: sha1 hex of the value
        assert read_async is not None
        assert sync.cas(b"doc", b"v2", read_async[1]) is True  # async token, sync cas
        assert await backend.cas(b"doc", b"v3", read_async[1]) is False  # stale now
        read_sync = sync.gets(b"doc")
        assert read_sync is not None
        assert await backend.cas(b"doc", b"v3", read_sync[1], ttl=60) is True
        assert sync.get(b"doc") == b"v3"
        assert 59 < (sync.get_with_ttl(b"doc") or (b"", 0.0))[1] <= 60
        token = (await backend.gets(b"doc") or (b"", ""))[1]
        assert sync.delete_if(b"doc", token) is True
        assert await backend.get(b"doc") is None
        await backend.aclose()

    run(main())
    sync.close()


@pytest.mark.timeout(30)
def test_200_concurrent_incr_and_cas_updates_are_exact(urls: str) -> None:
    async def main() -> None:
        backend = co.AsyncRedisBackend(url=urls)
        await backend.set(b"cas", b"0")

        async def bump() -> None:
            while True:
                found = await backend.gets(b"cas")
                assert found is not None
                value, token = found
                if await backend.cas(b"cas", b"%d" % (int(value) + 1), token):
                    return

        counts = await asyncio.gather(*(backend.incr(b"n") for _ in range(200)))
        await asyncio.gather(*(bump() for _ in range(200)))
        assert sorted(counts) == list(range(1, 201))
        assert await backend.get_many(b"n", b"cas") == [b"200", b"200"]
        assert in_use(backend) == 0
        await backend.aclose()

    run(main())


def test_a_key_of_another_type_is_a_decode_error(server: RedisServer) -> None:
    with server.client() as raw:
        raw.rpush(b"list", b"x")

    async def main() -> None:
        backend = co.AsyncRedisBackend(url=server.url)
        with pytest.raises(co.DecodeError):
            await backend.get(b"list")
        assert await backend.get_many(b"list", b"none") == [None, None]  # as MGET reports
        await backend.aclose()

    run(main())


def test_the_url_and_the_client_are_checked() -> None:
    with pytest.raises(co.ValidationError):
        co.AsyncRedisBackend()
    with pytest.raises(co.ValidationError):
        co.AsyncRedisBackend(url="redis+cluster://h:1/3")
    with pytest.raises(co.ValidationError):
        co.AsyncRedisBackend(client=redis.asyncio.Redis(decode_responses=True))
    with pytest.raises(co.ValidationError):
        co.AsyncRedisBackend(url="redis://127.0.0.1:1/0", retries=-1)


@pytest.mark.timeout(20)
def test_an_unreachable_server_is_a_backend_error(server_factory: ServerFactory) -> None:
    made = server_factory.redis()
    port = made.port
    made.stop()

    async def main() -> None:
        backend = co.AsyncRedisBackend(url=f"redis://127.0.0.1:{port}/0")
        started = time.monotonic()
        with pytest.raises(co.BackendError, match="nothing was sent") as caught:
            await backend.ping()
        assert caught.value.server == f"127.0.0.1:{port}"
        with pytest.raises(co.BackendError, match="slot map"):
            await co.AsyncRedisBackend(url=f"redis+cluster://127.0.0.1:{port}").get(b"k")
        assert time.monotonic() - started < 5
        await backend.aclose()

    run(main())


def test_aclose_leaves_a_passed_in_client_open(server: RedisServer) -> None:
    async def main() -> None:
        client = redis.asyncio.Redis(host=server.host, port=server.port, socket_timeout=2)
        backend = co.AsyncRedisBackend(client=client)
        await backend.set(b"a", b"1")
        await backend.aclose()
        assert await client.get(b"a") == b"1"  # still usable: its owner closes it
        await client.aclose()
        owned = co.AsyncRedisBackend(url=server.url)
        await owned.get(b"a")
        pool = owned._client.connection_pool  # type: ignore[union-attr]  # standalone
        await owned.aclose()
        assert not any(c.is_connected for c in pool._available_connections)

    run(main())


# -- cancellation --------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_cancelled_calls_leave_no_broken_or_leaked_connection(urls: str) -> None:
    rounds = 150
    keys = [b"c:%d" % i for i in range(50)]

    async def main() -> tuple[int, int]:
        backend = co.AsyncRedisBackend(url=urls)
        await backend.set_many({key: key for key in keys})
        await backend.set(b"doc", b"0")
        rng = random.Random(11)
        cancelled = completed = 0
        calls: list[Callable[[], Awaitable[object]]] = [
            lambda: backend.get_many(*keys),
            lambda: backend.batch([Get(key) for key in keys[:20]] + [Set(b"s", b"s", None)]),
            lambda: backend.batch([Get(b"doc"), Cas(b"doc", b"x", "0" * 40, None)]),
            lambda: backend.cas(b"doc", b"y", "0" * 40),
            lambda: backend.get(keys[3]),
        ]
        # Deadlines at random moments within a round, however fast it runs here.
        for call in calls:  # connections opened first
            await asyncio.gather(call(), call(), call(), return_exceptions=True)
        started = time.perf_counter()
        for call in calls * 4:
            await asyncio.gather(call(), call(), call(), return_exceptions=True)
        typical = (time.perf_counter() - started) / (4 * len(calls))
        await backend.set(b"doc", b"0")
        for _ in range(rounds):
            call = rng.choice(calls)
            try:
                async with asyncio.timeout(rng.uniform(0, 1.5 * typical)):
                    # return_exceptions: the block ends once all three calls have.
                    await asyncio.gather(call(), call(), call(), return_exceptions=True)
                completed += 1
            except TimeoutError:
                cancelled += 1
            # The very next calls answer correctly: no stale reply is read.
            assert await backend.get(keys[7]) == keys[7]
            assert await backend.get_many(*keys[:10]) == keys[:10]
            assert in_use(backend) == 0
        assert await backend.get(b"doc") == b"0"  # every CAS lost: token never matched
        # Every pooled connection answers its own request (none holds a stale reply).
        many = await asyncio.gather(*(backend.get_many(*keys[i:]) for i in range(30)))
        assert many == [keys[i:] for i in range(30)]
        await backend.aclose()
        return cancelled, completed

    cancelled, completed = run(main())
    assert cancelled > 20  # the deadlines did interrupt calls in flight
    print(f"cancellation rounds: {cancelled} cancelled, {completed} completed")


@pytest.mark.timeout(30)
def test_task_cancel_mid_pipeline_then_the_pool_answers(server: RedisServer) -> None:
    async def main() -> int:
        backend = co.AsyncRedisBackend(url=server.url)
        await backend.set(b"k", b"v")
        cancelled = 0
        for step in range(1, 30):
            task = asyncio.ensure_future(backend.get_many(*[b"k"] * 20000))
            await asyncio.sleep(step * 0.0002)  # a moment into its exchange
            task.cancel()
            try:
                assert await task == [b"v"] * 20000  # done before the cancel came
            except asyncio.CancelledError:
                cancelled += 1
            assert await backend.get(b"k") == b"v"
            assert in_use(backend) == 0
        await backend.aclose()
        return cancelled

    assert run(main()) >= 3


# -- never resend what may have run; one timeout for a hung server ----------------------


@pytest.fixture
def proxied(server: RedisServer) -> Iterator[tuple[Proxy, redis.Redis]]:
    with Proxy(server.host, server.port) as proxy, server.client() as raw:
        yield proxy, raw


@pytest.mark.timeout(30)
def test_a_lost_reply_is_never_answered_by_running_the_command_again(
    proxied: tuple[Proxy, redis.Redis],
) -> None:
    proxy, raw = proxied

    async def main() -> None:
        backend = co.AsyncRedisBackend(url=f"redis://127.0.0.1:{proxy.port}/0", socket_timeout=1)
        await backend.set(b"warm", b"1")
        proxy.drop_next_reply(b"INCRBY")
        with pytest.raises(co.BackendError, match="outcome is unknown") as caught:
            await backend.incr(b"n", 5)
        assert caught.value.server == f"127.0.0.1:{proxy.port}"
        assert raw.get(b"n") == b"5"  # it ran once
        proxy.drop_next_reply(b"NX")
        with pytest.raises(co.BackendError, match="outcome is unknown"):
            await backend.add(b"a", b"1")
        assert raw.get(b"a") == b"1"
        raw.set(b"g", b"value")
        proxy.drop_next_reply(b"GET")
        started = time.monotonic()
        assert await backend.get(b"g") == b"value"  # a read is safe: resent
        assert time.monotonic() - started < 1
        assert proxy.dropped == 3
        assert await backend.incr(b"n") == 6
        await backend.aclose()

    run(main())


@pytest.mark.timeout(30)
def test_a_stopped_server_costs_one_timeout(server_factory: ServerFactory) -> None:
    made = server_factory.redis()
    timeout = 0.5

    async def main() -> None:
        backend = co.AsyncRedisBackend(url=made.url, socket_timeout=timeout)
        await backend.set(b"k", b"v")
        os.kill(made.pid, signal.SIGSTOP)
        wait_until_stopped(made.pid)
        try:
            for call in (
                lambda: backend.get(b"k"),
                lambda: backend.get_many(b"k", b"j"),
                lambda: backend.incr(b"n"),
            ):
                started = time.monotonic()
                with pytest.raises(co.BackendError, match="Timeout"):
                    await call()
                assert timeout * 0.9 < time.monotonic() - started < timeout * 2
        finally:
            os.kill(made.pid, signal.SIGCONT)
        assert await backend.get(b"k") == b"v"
        assert in_use(backend) == 0
        await backend.aclose()

    run(main())


# -- the wire: values of every size, replies split across reads -------------------------


@pytest.mark.timeout(60)
def test_values_of_every_size_arrive_whole(urls: str) -> None:
    """Replies larger than one read (64 KiB) are reassembled, alone and in a pipeline."""
    sizes = [0, 1, 65535, 65536, 65537, 1 << 20, 8 << 20]
    values = {b"v:%d" % size: os.urandom(size) for size in sizes}

    async def main() -> None:
        backend = co.AsyncRedisBackend(url=urls)
        for key, value in values.items():
            await backend.set(key, value)
            assert await backend.get(key) == value
        assert await backend.get_many(*values) == list(values.values())
        await backend.aclose()

    run(main())


_ARGS = st.one_of(
    st.binary(max_size=8),
    st.binary(min_size=4094, max_size=4098),  # about the size framed in one format
    st.text(max_size=8),
    st.integers(-(2**63), 2**63 - 1),
    st.floats(allow_nan=False),
)


_COMMANDS = st.lists(
    st.tuples(st.sampled_from(["GET", "SET", "EVALSHA"]), st.lists(_ARGS, max_size=5)).map(
        lambda named: (named[0], *named[1])
    ),
    max_size=5,
)


@settings(max_examples=300, deadline=None)
@given(_COMMANDS)
def test_commands_are_packed_as_redis_py_packs_them(commands: list[tuple[object, ...]]) -> None:
    # redis-py leaves these two unannotated.
    packer = redis.connection.Connection()  # type: ignore[no-untyped-call]
    expected = b"".join(
        b"".join(packer.pack_command(*command))  # type: ignore[no-untyped-call]
        for command in commands
    )
    assert resp.pack(commands) == expected


_REPLIES = st.lists(
    st.one_of(
        st.binary(max_size=40).map(lambda v: (b"$%d\r\n%b\r\n" % (len(v), v), v)),
        st.just((b"$-1\r\n", None)),
        st.integers(-(2**40), 2**40).map(lambda n: (b":%d\r\n" % n, n)),
        st.just((b"+OK\r\n", b"OK")),
        st.lists(st.binary(max_size=8), max_size=3).map(
            lambda items: (
                b"*%d\r\n" % len(items) + b"".join(b"$%d\r\n%b\r\n" % (len(v), v) for v in items),
                items,
            )
        ),
    ),
    max_size=12,
)


@settings(max_examples=300, deadline=None)
@given(_REPLIES, st.lists(st.integers(0, 200), max_size=6))
def test_replies_split_anywhere_across_reads_parse_whole_and_in_order(
    replies: list[tuple[bytes, object]], cuts: list[int]
) -> None:
    wire = b"".join(data for data, _ in replies)
    expected = resp.Replies(len(replies), redis.exceptions.ResponseError)
    bounds = sorted({min(cut, len(wire)) for cut in cuts} | {0, len(wire)})
    done = [expected.feed(wire[a:b]) for a, b in itertools.pairwise(bounds)]
    assert expected.got == [value for _, value in replies]
    assert (done[-1] if done else not replies) is True
    assert not any(done[:-1]), "every reply was in only after the last read"


# -- processes and event loops ----------------------------------------------------------


@pytest.mark.timeout(30)
def test_a_forked_child_opens_its_own_connections(server: RedisServer) -> None:
    backend = co.AsyncRedisBackend(url=server.url)

    def idle() -> list[object]:
        return [link for links in backend._idle.values() for link in links]

    async def warm() -> list[object]:
        await backend.set(b"k", b"parent")
        return idle()

    parents = run(warm())
    assert parents
    pid = os.fork()
    if pid == 0:  # the child: its own loop, its own sockets

        async def child() -> bool:
            ok = await backend.get(b"k") == b"parent"
            await backend.set(b"child", b"1")
            return ok and bool(idle()) and not any(c in parents for c in idle())

        code = 1
        try:
            code = 0 if asyncio.run(child()) else 1
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0

    async def after() -> None:
        assert await backend.get(b"child") == b"1"  # the parent's backend still answers
        await backend.aclose()

    run(after())


def test_one_backend_serves_successive_event_loops(urls: str) -> None:
    backend = co.AsyncRedisBackend(url=urls)
    run(backend.set(b"k", b"1"))
    assert run(backend.get(b"k")) == b"1"
    assert run(backend.get_many(b"k", b"j")) == [b"1", None]
    run(backend.aclose())


# -- a cluster of our own: a frozen master, a slot migrated key by key ------------------


@pytest.fixture(scope="module")
def own_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisCluster]:
    """A three-master cluster for these tests only: they freeze a node and move a slot."""
    root = tmp_path_factory.mktemp("aredis-cluster")
    made = start_redis_cluster([root / f"n{i}" for i in range(3)])
    try:
        yield made
    finally:
        made.stop()


def owner(cluster: RedisCluster, key: bytes) -> int:
    """The port of the master serving ``key``'s slot."""
    return cluster.owners()[key_slot(key)]


@pytest.mark.timeout(60)
def test_a_frozen_master_costs_one_timeout_and_only_its_keys(own_cluster: RedisCluster) -> None:
    cluster = own_cluster
    cluster.flush()
    timeout = 0.5
    keys = [b"key:%d" % i for i in range(60)]
    victim = cluster.ports[1]
    owners = cluster.owners()
    frozen = [key for key in keys if owners[key_slot(key)] == victim]

    async def main() -> None:
        backend = co.AsyncRedisBackend(url=cluster_url(cluster), socket_timeout=timeout)
        await backend.set_many({key: key for key in keys})
        os.kill(cluster._procs[1].pid, signal.SIGSTOP)
        wait_until_stopped(cluster._procs[1].pid)
        try:
            started = time.monotonic()
            with pytest.raises(co.BackendError) as caught:
                await backend.get_many(*keys)  # three nodes at once: one timeout
            assert caught.value.server == f"{cluster.host}:{victim}"
            results = await backend.batch([Get(key) for key in keys])
            assert time.monotonic() - started < 2 * timeout + 0.8
            for key, result in zip(keys, results, strict=True):
                if key in frozen:
                    assert isinstance(result, co.BackendError)
                else:
                    assert result == key
        finally:
            os.kill(cluster._procs[1].pid, signal.SIGCONT)
        assert await backend.get_many(*keys) == keys
        if backend._refreshing is not None:
            await backend._refreshing  # the slot-map refresh the failure started, in the background
        assert in_use(backend) == 0
        await backend.aclose()

    assert frozen
    run(main())


def command(node: redis.Redis, *args: object) -> object:
    return node.execute_command(*args)  # type: ignore[no-untyped-call]  # redis-py leaves it untyped


@pytest.mark.timeout(60)
def test_batches_follow_a_slot_migrated_key_by_key(own_cluster: RedisCluster) -> None:
    cluster = own_cluster
    cluster.flush()
    moving = [b"{moving}:%d" % i for i in range(8)]
    still = [b"still:%d" % i for i in range(8)]
    everything = moving + still
    expected = [b"v-" + key for key in everything]
    slot = key_slot(moving[0])
    source = owner(cluster, moving[0])
    target = next(port for port in cluster.ports if port != source)
    nodes = {port: cluster.node_client(port) for port in cluster.ports}
    ids = {port: command(nodes[port], "CLUSTER MYID") for port in cluster.ports}

    async def main() -> None:
        backend = co.AsyncRedisBackend(url=cluster_url(cluster))
        await backend.set_many(dict(zip(everything, expected, strict=True)))
        command(nodes[target], "CLUSTER SETSLOT", slot, "IMPORTING", ids[source])
        command(nodes[source], "CLUSTER SETSLOT", slot, "MIGRATING", ids[target])
        try:
            for done, key in enumerate(moving, start=1):
                command(nodes[source], "MIGRATE", cluster.host, target, key, 0, 5000)
                assert await backend.get_many(*everything) == expected
                mixed = await backend.batch([Incr(b"{moving}:n", 1), Get(moving[0]), Get(still[0])])
                assert mixed == [done, expected[0], expected[len(moving)]]
        finally:
            for key in cast("list[bytes]", command(nodes[source], "KEYS", "*")):
                if key_slot(key) == slot:
                    command(nodes[source], "MIGRATE", cluster.host, target, key, 0, 5000)
            for port in [target, source, *cluster.ports]:
                command(nodes[port], "CLUSTER SETSLOT", slot, "NODE", ids[target])
        assert await backend.get_many(*everything) == expected  # MOVED: the map follows
        assert await backend.get(b"{moving}:n") == b"%d" % len(moving)
        await backend.aclose()

    try:
        run(main())
    finally:
        for client in nodes.values():
            client.close()
