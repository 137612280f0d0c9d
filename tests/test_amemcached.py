"""The asyncio memcached backend: interop with the sync backend, concurrency, cancellation, faults.

Every test runs its coroutines with ``asyncio.run`` inside a plain test
function, against real memcached servers (``memcached_servers``: node 0 alone,
nodes 1 and 2 as a pool; ``server_factory`` for servers a test may freeze).
Fault tests bound the time a call takes as well as its outcome.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import time
from typing import TYPE_CHECKING

import pytest

import cacheorm as co
from cacheorm.backends import amemcached
from cacheorm.backends.base import Get, Incr, Set
from tests.proxy import Proxy
from tests.servers import frozen
from tests.workers import Forked

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from tests.servers import MemcachedServer, ServerFactory

TIMEOUT = 0.5
"""The backends' connect and read timeout in the fault tests, in seconds."""
ONE_TIMEOUT = TIMEOUT + 0.7
"""What a call that meets one timeout may take, with room for a busy machine."""


def _fresh(nodes: list[MemcachedServer]) -> list[tuple[str, int]]:
    for node in nodes:
        node.flush()
    return [node.address for node in nodes]


def _pair(
    addresses: list[tuple[str, int]],
) -> tuple[co.MemcachedBackend, co.AsyncMemcachedBackend]:
    return co.MemcachedBackend(servers=addresses), co.AsyncMemcachedBackend(addresses)


async def _timed(call: Callable[[], Awaitable[object]]) -> tuple[object, float]:
    """``await call()``'s result, or the CacheORMError it raised, and the seconds it took."""
    started = time.monotonic()
    try:
        result = await call()
    except co.CacheORMError as err:
        result = err
    return result, time.monotonic() - started


# -- one cache for sync and async processes ------------------------------------------


@pytest.mark.timeout(30)
@pytest.mark.parametrize("pool", [False, True], ids=["one-node", "two-nodes"])
def test_sync_and_async_backends_share_one_cache(
    memcached_servers: list[MemcachedServer], pool: bool
) -> None:
    addresses = _fresh(memcached_servers[1:3] if pool else memcached_servers[:1])
    sync, aio = _pair(addresses)
    synced = {b"sync-%d" % i: b"s%d" % i for i in range(200)}
    asynced = {b"async-%d" % i: b"a%d" % i for i in range(200)}
    odd = [b"", b"a key with spaces", b"\xff" * 300]  # encoded keys agree too

    async def main() -> None:
        sync.set_many(synced, 3600)
        await aio.set_many(asynced, 3600)
        for key in odd:
            await aio.set(key, key + b"!")
        assert await aio.get_many(*synced) == list(synced.values())
        assert sync.get_many(*asynced) == list(asynced.values())
        assert [sync.get(key) for key in odd] == [key + b"!" for key in odd]
        got = await aio.get_with_ttl(b"sync-7")
        assert got is not None
        assert got[0] == b"s7"
        assert 3590 < got[1] <= 3600
        assert sync.incr(b"n", 5) == 5
        assert await aio.incr(b"n", 2) == 7
        assert await aio.decr(b"n", 10) == -3  # below zero: the cas path, in both
        assert sync.incr(b"n") == -2
        assert await aio.delete_many(*synced) == 200
        assert sync.get_many(*list(synced)[:3]) == [None, None, None]
        await aio.aclose()

    asyncio.run(main())
    if pool:  # both nodes hold keys: placement was exercised, and it agreed
        for node in memcached_servers[1:3]:
            stats = node.client()
            try:
                items = stats.stats()[b"curr_items"]
                assert isinstance(items, int)
                assert items > 50
            finally:
                stats.close()
    sync.close()


@pytest.mark.timeout(30)
def test_cas_tokens_pass_between_sync_and_async(memcached_servers: list[MemcachedServer]) -> None:
    sync, aio = _pair(_fresh(memcached_servers[1:3]))

    async def main() -> None:
        sync.set(b"k", b"v1", 3600)
        got = await aio.gets(b"k")
        assert got is not None
        assert sync.cas(b"k", b"v2", got[1]) is True  # an async token, used by sync
        assert await aio.cas(b"k", b"v3", got[1]) is False  # spent
        again = sync.gets(b"k")
        assert again is not None
        assert await aio.cas(b"k", b"v3", again[1]) is True  # and the reverse; KEEP_TTL
        kept = sync.get_with_ttl(b"k")
        assert kept is not None
        assert kept[0] == b"v3"
        assert 3590 < kept[1] <= 3600
        last = await aio.gets(b"k")
        assert last is not None
        assert sync.delete_if(b"k", last[1]) is True
        assert await aio.get(b"k") is None
        await aio.aclose()

    asyncio.run(main())
    sync.close()


@pytest.mark.timeout(60)
def test_values_of_every_size_arrive_whole_through_both_drivers(
    memcached_servers: list[MemcachedServer],
) -> None:
    """Values larger than one read (64 KiB) are reassembled, alone and in a batch, either way."""
    sync, aio = _pair(_fresh(memcached_servers[:1]))
    sizes = [0, 1, 65535, 65536, 65537, 200_000, 1_000_000]  # up to memcached's 1 MiB items
    by_sync = {b"s:%d" % size: os.urandom(size) for size in sizes}
    by_aio = {b"a:%d" % size: os.urandom(size) for size in sizes}

    async def main() -> None:
        sync.set_many(by_sync)
        for key, value in by_aio.items():
            await aio.set(key, value)
        for key, value in by_sync.items():
            assert await aio.get(key) == value
        for key, value in by_aio.items():
            assert sync.get(key) == value
        assert await aio.get_many(*by_sync, *by_aio) == [*by_sync.values(), *by_aio.values()]
        assert sync.get_many(*by_aio, *by_sync) == [*by_aio.values(), *by_sync.values()]
        await aio.aclose()

    asyncio.run(main())
    sync.close()


# -- concurrency and cancellation ----------------------------------------------------


@pytest.mark.timeout(30)
def test_200_concurrent_cas_increments_count_exactly(
    memcached_servers: list[MemcachedServer],
) -> None:
    addresses = _fresh(memcached_servers[1:3])

    async def main() -> None:
        aio = co.AsyncMemcachedBackend(addresses, max_connections=8)
        await aio.set(b"count", b"0")

        async def bump() -> None:
            while True:
                got = await aio.gets(b"count")
                assert got is not None
                if await aio.cas(b"count", b"%d" % (int(got[0]) + 1), got[1]):
                    return

        await asyncio.gather(*(bump() for _ in range(200)))
        await asyncio.gather(*(aio.incr(b"native") for _ in range(200)))
        assert await aio.get_many(b"count", b"native") == [b"200", b"200"]
        for pool in aio._pools:  # bounded: never more connections than allowed
            assert len(pool.idle) <= 8
        await aio.aclose()

    asyncio.run(main())


@pytest.mark.timeout(30)
def test_concurrent_calls_share_round_trips_and_each_gets_its_own_answer(
    memcached_servers: list[MemcachedServer], monkeypatch: pytest.MonkeyPatch
) -> None:
    """50 tasks calling at once: far fewer exchanges than calls, and every call its own
    result or error (an incr of a value that is no counter fails that call alone)."""
    addresses = _fresh(memcached_servers[1:3])
    exchanges = 0
    real = amemcached._Conn.converse

    async def counted(self: amemcached._Conn, *args: object) -> Exception | None:
        nonlocal exchanges
        exchanges += 1
        return await real(self, *args)  # type: ignore[arg-type]  # converse's own arguments

    async def main() -> None:
        aio = co.AsyncMemcachedBackend(addresses)
        await aio.set_many({b"k%d" % i: b"v%d" % i for i in range(0, 50, 2)})
        await aio.set(b"n", b"0")
        monkeypatch.setattr(amemcached._Conn, "converse", counted)

        async def call(i: int) -> object:
            try:
                if i == 7:
                    return await aio.incr(b"k0")  # refused: b"v0" is no counter
                if i % 5 == 4:
                    return await aio.incr(b"n")
                return await aio.get(b"k%d" % i)
            except co.CacheORMError as err:
                return err

        for _ in range(3):
            results = await asyncio.gather(*(call(i) for i in range(50)))
            for i, result in enumerate(results):
                if i == 7:
                    assert isinstance(result, co.CacheORMError), result
                elif i % 5 != 4:
                    assert result == (b"v%d" % i if i % 2 == 0 else None), (i, result)
        counters = [result for i, result in enumerate(results) if i % 5 == 4]
        assert sorted(c for c in counters if isinstance(c, int)) == list(range(21, 31))
        # 10 incrs a pass, none lost or doubled
        await aio.aclose()

    asyncio.run(main())
    assert 0 < exchanges < 3 * 50 // 2, exchanges  # calls shared round trips (else >= 150)


def _work(
    aio: co.AsyncMemcachedBackend, kind: int, values: dict[bytes, bytes]
) -> Awaitable[object]:
    """A call of one round (reads, or writes) or of several (a batch with an incr)."""
    if kind == 0:
        return aio.get_many(*values)
    if kind == 1:
        return aio.batch([Set(b"w", b"x" * 50_000), Get(b"big-3"), Incr(b"n", 1)])
    return aio.set_many(values)


async def _interrupted(work: Awaitable[object], delay: float, from_inside: bool) -> bool:
    """Run ``work``, cancelled after ``delay`` seconds; whether the cancellation landed."""
    task = asyncio.ensure_future(work)
    if from_inside:  # asyncio.timeout cancels the same way, from inside
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(delay):
                await asyncio.shield(task)
    else:
        await asyncio.sleep(delay)
    task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        return True
    return False


@pytest.mark.timeout(60)
def test_a_call_cancelled_at_any_moment_leaves_the_next_call_correct(
    memcached_servers: list[MemcachedServer],
) -> None:
    addresses = _fresh(memcached_servers[1:3])
    values = {b"big-%d" % i: bytes([65 + i % 26]) * (2000 + 97 * i) for i in range(60)}
    rng = random.Random(11)
    cancelled = 0

    async def main() -> None:
        nonlocal cancelled
        aio = co.AsyncMemcachedBackend(addresses, max_connections=4)
        await aio.set_many(values)
        await aio.set(b"n", b"0")
        # Cancel at random moments within each kind of call, however fast it runs here.
        lasts = []
        for kind in range(3):
            started = time.perf_counter()
            for _ in range(5):
                await _work(aio, kind, values)
            lasts.append((time.perf_counter() - started) / 5)
        await aio.set(b"n", b"0")
        counted = 0
        for attempt in range(300):
            kind = attempt % 3
            work = _work(aio, kind, values)
            delay = rng.random() * 1.5 * lasts[kind]
            if await _interrupted(work, delay, from_inside=attempt % 2 == 0):
                cancelled += 1
            else:
                counted += kind == 1
            # The next call gets its own answers, not a cancelled call's.
            assert await aio.get_many(*values) == list(values.values())
            assert await aio.get(b"big-5") == values[b"big-5"]
        # Every incr either ran or not; none ran twice: n is at most the number sent.
        n = int(await aio.get(b"n") or b"0")
        assert counted <= n <= 100
        for pool in aio._pools:
            assert len(pool.idle) <= 4
        await aio.aclose()

    asyncio.run(main())
    assert cancelled > 30  # the test did interrupt calls at many points


@pytest.mark.timeout(30)
def test_an_overflowing_incr_is_undone_even_where_memcached_misreads_the_number(
    server_factory: ServerFactory,
) -> None:
    # memcached's safe_strtoull looks for a "-" with strchr, past the end of an
    # item's value (which is not NUL-terminated) when the number is >= 2**63: a
    # "-" left in the slab by an earlier item makes it refuse the decr that
    # undoes an overflowing incr as "non-numeric". Plant such leftovers.
    server = server_factory.memcached()
    raw = server.client()
    for i in range(500):
        raw.set(b"t%d" % i, b"-" * 34)
    for i in range(500):
        raw.delete(b"t%d" % i, noreply=False)
    raw.close()
    top = b"%d" % (2**63 - 1)
    sync, aio = _pair([server.address])
    for i in range(5):
        sync.set(b"top%d" % i, top)
        with pytest.raises(co.ValidationError):
            sync.incr(b"top%d" % i)
        assert sync.get(b"top%d" % i) == top

    async def main() -> None:
        for i in range(5, 10):
            await aio.set(b"top%d" % i, top)
            with pytest.raises(co.ValidationError):
                await aio.incr(b"top%d" % i)
            assert await aio.get(b"top%d" % i) == top
        await aio.aclose()

    asyncio.run(main())
    sync.close()


# -- faults --------------------------------------------------------------------------


@pytest.mark.timeout(30)
def test_a_frozen_node_costs_one_timeout_and_fails_only_its_keys(
    server_factory: ServerFactory,
) -> None:
    nodes = [server_factory.memcached(), server_factory.memcached()]
    addresses = [node.address for node in nodes]
    sync = co.MemcachedBackend(servers=addresses)
    keys = [b"k%d" % i for i in range(100)]
    sync.set_many({key: key for key in keys})
    frozen_name = f"{nodes[0].host}:{nodes[0].port}"

    async def main() -> None:
        aio = co.AsyncMemcachedBackend(addresses, timeout=TIMEOUT, connect_timeout=TIMEOUT)
        await aio.ping()
        with frozen(nodes[0].pid):
            batch = [Get(key) for key in keys]
            results, elapsed = await _timed(lambda: aio.batch(batch))
            assert elapsed < ONE_TIMEOUT
            assert isinstance(results, list)
            failed = [r for r in results if isinstance(r, co.BackendError)]
            assert 20 < len(failed) < 80
            assert all(error.server == frozen_name for error in failed)
            assert [r for r in results if not isinstance(r, co.BackendError)] == [
                key for key, r in zip(keys, results, strict=True) if r == key
            ]
            # Concurrent calls meet the hung node at the same time: still one timeout.
            started = time.monotonic()
            outcomes = await asyncio.gather(
                *(aio.get_many(*keys) for _ in range(5)), return_exceptions=True
            )
            assert time.monotonic() - started < ONE_TIMEOUT
            assert all(isinstance(out, co.BackendError) for out in outcomes)
            with pytest.raises(co.BackendError) as raised:
                await aio.ping()
            assert raised.value.server == frozen_name
        # Thawed: the connections that timed out were discarded, fresh ones answer.
        await aio.ping()
        assert await aio.get_many(*keys) == keys
        await aio.aclose()

    asyncio.run(main())
    sync.close()


@pytest.mark.timeout(30)
def test_a_batch_of_sets_answers_per_key_as_the_sync_backend_does(
    server_factory: ServerFactory,
) -> None:
    nodes = [server_factory.memcached(), server_factory.memcached()]
    addresses = [node.address for node in nodes]
    sync = co.MemcachedBackend(servers=addresses)
    big = b"x" * (2 * 1024 * 1024)  # over memcached's 1 MiB item limit
    keys = [b"k%d" % i for i in range(40)]
    sync.set_many(dict.fromkeys([*keys, b"a", b"b"], b"old"))
    frozen_name = f"{nodes[0].host}:{nodes[0].port}"

    async def main() -> None:
        aio = co.AsyncMemcachedBackend(addresses, timeout=TIMEOUT, connect_timeout=TIMEOUT)
        results = await aio.batch([Set(b"a", big), Set(b"b", b"new"), Set(b"c", b"x", ttl=-1)])
        assert isinstance(results[0], co.ValueTooLarge)
        assert results[1] is True
        assert isinstance(results[2], co.ValidationError)
        assert sync.get_many(b"a", b"b", b"c") == [None, b"new", None]  # a's old value gone
        # One key twice: the refused value's old one goes before the later write lands.
        results = await aio.batch([Set(b"b", big), Set(b"b", b"newer")])
        assert isinstance(results[0], co.ValueTooLarge)
        assert results[1] is True
        assert sync.get(b"b") == b"newer"
        await aio.set_many(dict.fromkeys(keys, b"v"))
        assert sync.get_many(*keys) == [b"v"] * len(keys)
        with frozen(nodes[0].pid):
            written, elapsed = await _timed(lambda: aio.batch([Set(k, b"w") for k in keys]))
            assert elapsed < ONE_TIMEOUT
        assert isinstance(written, list)
        failed = [r for r in written if isinstance(r, co.BackendError)]
        assert 0 < len(failed) < len(keys)  # the frozen node's keys only
        assert all(e.server == frozen_name and "outcome unknown" in str(e) for e in failed)
        assert all(r is True for r in written if not isinstance(r, co.BackendError))
        await aio.aclose()

    asyncio.run(main())
    sync.close()


@pytest.mark.timeout(30)
def test_an_unreachable_node_raises_backend_error_naming_it() -> None:
    async def main() -> None:
        aio = co.AsyncMemcachedBackend([("127.0.0.1", 9)], connect_timeout=TIMEOUT)
        result, elapsed = await _timed(lambda: aio.get(b"k"))
        assert isinstance(result, co.BackendError)
        assert result.server == "127.0.0.1:9"
        assert elapsed < ONE_TIMEOUT
        await aio.aclose()

    asyncio.run(main())


@pytest.mark.timeout(30)
@pytest.mark.parametrize("verb", [b"incr", b"add"])
def test_a_write_whose_reply_is_dropped_raises_and_is_not_resent(
    server_factory: ServerFactory, verb: bytes
) -> None:
    server = server_factory.memcached()
    direct = co.MemcachedBackend(servers=[server.address])
    direct.set(b"n", b"10")

    async def main(port: int, proxy: Proxy) -> None:
        aio = co.AsyncMemcachedBackend([("127.0.0.1", port)], timeout=TIMEOUT)
        assert await aio.get(b"n") == b"10"  # a pooled connection, then its reply lost
        proxy.drop_next_reply(match=verb)
        write = aio.incr(b"n") if verb == b"incr" else aio.add(b"added", b"a")
        result, elapsed = await _timed(lambda: write)
        assert isinstance(result, co.BackendError)
        assert "outcome unknown" in str(result)
        assert result.server == f"127.0.0.1:{port}"
        assert elapsed < ONE_TIMEOUT
        # Ran once, by the server; never sent again. The next call works.
        assert await aio.get(b"n") == (b"11" if verb == b"incr" else b"10")
        assert await aio.get(b"added") == (b"a" if verb == b"add" else None)
        await aio.aclose()

    with Proxy(server.host, server.port) as proxy:
        asyncio.run(main(proxy.port, proxy))
        assert proxy.dropped == 1
    direct.close()


@pytest.mark.timeout(30)
def test_connections_the_server_closed_while_idle_are_replaced_before_use(
    server_factory: ServerFactory,
) -> None:
    server = server_factory.memcached()

    async def main(port: int, proxy: Proxy) -> None:
        aio = co.AsyncMemcachedBackend([("127.0.0.1", port)], timeout=TIMEOUT)
        await asyncio.gather(*(aio.set(b"k%d" % i, b"v") for i in range(8)))  # 8 pooled
        proxy.disconnect_all()  # a restart, or an idle timeout, seen from the client
        await asyncio.sleep(0.05)  # idle: the event loop sees the connections close
        assert await aio.get_many(*(b"k%d" % i for i in range(8))) == [b"v"] * 8
        assert await aio.incr(b"n") == 1  # a write too: nothing failed, nothing was resent
        await aio.aclose()

    with Proxy(server.host, server.port) as proxy:
        asyncio.run(main(proxy.port, proxy))


@pytest.mark.timeout(30)
def test_a_forked_child_opens_its_own_connections(server_factory: ServerFactory) -> None:
    server = server_factory.memcached()
    aio = co.AsyncMemcachedBackend([server.address], timeout=2)
    asyncio.run(aio.set(b"k", b"v"))  # a pooled connection exists before the fork
    child = Forked(lambda: repr(asyncio.run(aio.get(b"k"))).encode())
    assert child.report() == b"b'v'"

    async def parent() -> None:  # the parent's backend still works (in a new loop, too)
        assert await aio.get(b"k") == b"v"
        await aio.aclose()

    asyncio.run(parent())
