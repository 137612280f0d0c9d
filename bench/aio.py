"""``cacheorm.aio`` against raw asyncio clients at concurrency 1 and 50 tasks, on throwaway servers.

Each row times cacheorm's coroutine twin and the raw client doing the same
work (the 6-field record of :mod:`bench.records` as a msgpack-encoded dict) in
the same run, in short alternating rounds, and prints the median of the
paired ratios (see :func:`bench.records.compare`):

* concurrency 1: µs per call, one task awaiting call after call; target: cacheorm
  within 1.15x of raw;
* 50 tasks: calls per second with 50 tasks calling at once (each on its own
  key, so neither side contends); target: at least 0.9x raw throughput.

Redis: ``co.AsyncRedisBackend`` against raw ``redis.asyncio``. Memcached:
``co.AsyncMemcachedBackend`` speaks the protocol itself (its module docstring
says why no asyncio client fits), so it is measured twice: against
:class:`RawMemcached` below, the least an application could write on asyncio
streams (a pool of connections, text protocol ``get``/``gets``/``set``/``cas``,
no key checks, no timeouts: the floor, and the target's reference), and
against aiomcache, the maintained asyncio client an application would use
instead (a dev dependency only, for this table). Against the bare client, a
diagnostic row times ``update``'s own work written out by hand on the same
backend (:func:`hand_written_update`): how close any update that checks what
it reads can come to the floor (see docs/performance.md).
"""

from __future__ import annotations

import asyncio
import shutil
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar, cast

import aiomcache
import msgpack
import redis.asyncio

import cacheorm as co
from bench.records import ROW, Row, raw_dict, row, unpack
from cacheorm import aio, crud
from tests.servers import start_memcached_many, start_redis

ROUNDS = 20
TASKS = 50
SINGLE_TARGET = 1.15
"""cacheorm's µs per call at concurrency 1, at most this many times raw's."""
MANY_TARGET = 0.9
"""cacheorm's throughput with 50 tasks, at least this fraction of raw's."""

Token = TypeVar("Token")
"""A raw memcached client's CAS token (bytes for :class:`RawMemcached`, int for aiomcache)."""

Call = Callable[[int], Awaitable[object]]
"""One call on behalf of task ``t`` (its own key)."""


async def _sequential_us(fn: Call, calls: int) -> float:
    start = time.perf_counter()
    for _ in range(calls):
        await fn(1)
    return (time.perf_counter() - start) / calls * 1e6


async def _concurrent_per_s(fn: Call, per_task: int) -> float:
    async def task(t: int) -> None:
        for _ in range(per_task):
            await fn(t)

    start = time.perf_counter()
    await asyncio.gather(*(task(t) for t in range(TASKS)))
    return TASKS * per_task / (time.perf_counter() - start)


async def compare_single(ours: Call, raw: Call, calls: int) -> tuple[float, float, float]:
    """Median µs per call of each at concurrency 1, and the median of paired ratios."""
    await ours(1), await raw(1)  # warm up connections
    batch = max(1, calls // ROUNDS)
    a, b, ratios = [], [], []
    for i in range(ROUNDS):
        if i % 2:
            x, y = await _sequential_us(ours, batch), await _sequential_us(raw, batch)
        else:
            y, x = await _sequential_us(raw, batch), await _sequential_us(ours, batch)
        a.append(x)
        b.append(y)
        ratios.append(x / y)
    return statistics.median(a), statistics.median(b), statistics.median(ratios)


async def compare_many(ours: Call, raw: Call, per_task: int) -> tuple[float, float, float]:
    """Median calls/s of each with 50 tasks, and the median of paired ratios ours/raw."""
    await _concurrent_per_s(ours, 1), await _concurrent_per_s(raw, 1)  # open 50 connections
    a, b, ratios = [], [], []
    for i in range(ROUNDS):
        if i % 2:
            x, y = await _concurrent_per_s(ours, per_task), await _concurrent_per_s(raw, per_task)
        else:
            y, x = await _concurrent_per_s(raw, per_task), await _concurrent_per_s(ours, per_task)
        a.append(x)
        b.append(y)
        ratios.append(x / y)
    return statistics.median(a), statistics.median(b), statistics.median(ratios)


def print_single(name: str, ours: float, raw: float, ratio: float) -> None:
    flag = "ok" if ratio <= SINGLE_TARGET else f"MISS (target <= {SINGLE_TARGET})"
    print(f"  {name:<22} {'1':>5} {ours:9.1f} {raw:9.1f} µs {ratio:6.2f}x  {flag}")


def print_many(name: str, ours: float, raw: float, ratio: float) -> None:
    flag = "ok" if ratio >= MANY_TARGET else f"MISS (target >= {MANY_TARGET})"
    print(f"  {name:<22} {TASKS:>5} {ours:9.0f} {raw:9.0f} /s {ratio:6.2f}x  {flag}")


class Pair:
    """cacheorm's and the raw client's version of one operation."""

    def __init__(self, name: str, ours: Call, raw: Call, calls: int, per_task: int) -> None:
        self.name, self.ours, self.raw = name, ours, raw
        self.calls, self.per_task = calls, per_task


async def run_rows(title: str, pairs: list[Pair]) -> None:
    print(f"\n{title:<24} tasks  cacheorm       raw      ratio")
    for p in pairs:
        print_single(p.name, *await compare_single(p.ours, p.raw, p.calls))
    for p in pairs:
        print_many(p.name, *await compare_many(p.ours, p.raw, p.per_task))


def operations(
    repo: co.Repo[Row, int],
    raw_get: Callable[[int], Awaitable[bytes | None]],
    raw_get_many: Callable[[], Awaitable[list[bytes | None]]],
    raw_set: Callable[[int, bytes], Awaitable[object]],
    raw_update: Call,
) -> list[Pair]:
    """The four rows, given the raw client's primitives; task ``t`` uses key ``t``."""
    pack = msgpack.packb
    ids = list(range(100))

    async def get_raw(t: int) -> object:
        return unpack(await raw_get(t))

    async def get_many_raw(t: int) -> object:
        return [unpack(v) for v in await raw_get_many()]

    async def insert_raw(t: int) -> object:
        return await raw_set(t, pack(raw_dict(t)))

    return [
        Pair("get", lambda t: aio.get(repo, t), get_raw, 2000, 40),
        Pair("insert", lambda t: aio.insert(repo, row(t)), insert_raw, 2000, 40),
        Pair("get_many (100)", lambda t: aio.get_many(repo, ids), get_many_raw, 400, 4),
        Pair("update (one field)", lambda t: aio.update(repo, t, score=2.5), raw_update, 2000, 40),
    ]


async def bench_redis(url: str) -> None:
    # The raw client gets the same timeouts as cacheorm's backend.
    client = redis.asyncio.Redis.from_url(url, socket_timeout=2.0, socket_connect_timeout=2.0)
    backend = co.AsyncRedisBackend(url=url)
    repo = co.Repo(ROW, backend=backend, serializer="msgpack")
    pack = msgpack.packb
    keys = [b"raw:%d" % i for i in range(100)]
    await aio.insert_many(repo, [row(i) for i in range(100)])
    await client.mset({keys[i]: pack(raw_dict(i)) for i in range(100)})

    async def raw_update(t: int) -> object:
        d = unpack(await client.get(keys[t]))
        assert isinstance(d, dict)
        d["score"] = 2.5
        return await client.set(keys[t], pack(d))

    async def raw_get(t: int) -> bytes | None:
        return cast("bytes | None", await client.get(keys[t]))  # decode_responses is off

    async def raw_get_many() -> list[bytes | None]:
        return cast("list[bytes | None]", await client.mget(keys))

    async def raw_set(t: int, value: bytes) -> object:
        return await client.set(keys[t], value)

    try:
        pairs = operations(repo, raw_get, raw_get_many, raw_set, raw_update)
        await run_rows("redis (aio vs redis.asyncio)", pairs)
    finally:
        await client.aclose()
        await backend.aclose()


class RawMemcached:
    """The raw baseline: memcached's text protocol on asyncio streams, a pool of connections.

    Its reads are bounded by the same timeout as cacheorm's backend (2 s), the
    way ``redis.asyncio`` bounds its own (``asyncio.timeout`` around each
    reply), as every raw client in these benchmarks is: without one, a hung
    server would hang the call for ever.
    """

    def __init__(self, host: str, port: int, timeout: float = 2.0) -> None:
        self.host, self.port, self.timeout = host, port, timeout
        self.idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []

    async def _exchange(self, request: bytes, keys: int) -> list[tuple[bytes, bytes]]:
        """Send ``request``; read a retrieval reply (up to ``keys`` values) or a status line."""
        if self.idle:
            reader, writer = self.idle.pop()
        else:
            reader, writer = await asyncio.open_connection(self.host, self.port)
        writer.write(request)
        values: list[tuple[bytes, bytes]] = []
        async with asyncio.timeout(self.timeout):
            while True:
                line = await reader.readline()
                if not line.startswith(b"VALUE "):
                    break
                header = line.split()
                data = await reader.readexactly(int(header[3]) + 2)
                values.append((data[:-2], header[4] if len(header) > 4 else header[1]))
        self.idle.append((reader, writer))
        if not keys:
            values.append((line.rstrip(), b""))
        return values

    async def get(self, key: bytes) -> bytes | None:
        got = await self._exchange(b"get " + key + b"\r\n", 1)
        return got[0][0] if got else None

    async def get_many(self, keys: list[bytes]) -> list[bytes | None]:
        got = await self._exchange(b"get " + b" ".join(keys) + b"\r\n", len(keys))
        return [value for value, _ in got]  # all present here: in key order

    async def gets(self, key: bytes) -> tuple[bytes, bytes]:
        ((value, cas),) = await self._exchange(b"gets " + key + b"\r\n", 1)
        return value, cas

    async def set(self, key: bytes, value: bytes) -> bool:
        request = b"set %s 0 0 %d\r\n%s\r\n" % (key, len(value), value)
        ((status, _),) = await self._exchange(request, 0)
        return status == b"STORED"

    async def cas(self, key: bytes, value: bytes, cas: bytes) -> bool:
        request = b"cas %s 0 0 %d %s\r\n%s\r\n" % (key, len(value), cas, value)
        ((status, _),) = await self._exchange(request, 0)
        return status == b"STORED"

    async def close(self) -> None:
        for _, writer in self.idle:
            writer.close()
            await writer.wait_closed()
        self.idle.clear()


async def _memcached_rows(
    title: str,
    address: tuple[str, int],
    keys: list[bytes],
    get: Callable[[bytes], Awaitable[bytes | None]],
    get_many: Callable[[], Awaitable[list[bytes | None]]],
    store: Callable[[bytes, bytes], Awaitable[object]],
    gets: Callable[[bytes], Awaitable[tuple[bytes, Token]]],
    cas: Callable[[bytes, bytes, Token], Awaitable[object]],
    *,
    floor: bool = False,
) -> None:
    """The four rows against one raw memcached client, given its primitives on ``keys``.

    ``floor``: the client is the bare streams one; a diagnostic row follows
    (:func:`hand_written_update`).
    """
    backend = co.AsyncMemcachedBackend(servers=[address])
    repo = co.Repo(ROW, backend=backend, serializer="msgpack")
    pack = msgpack.packb
    await aio.insert_many(repo, [row(i) for i in range(100)])
    for i in range(100):
        await store(keys[i], pack(raw_dict(i)))

    async def raw_update(t: int) -> object:
        value, token = await gets(keys[t])
        d = unpack(value)
        assert isinstance(d, dict)
        d["score"] = 2.5
        return await cas(keys[t], pack(d), token)

    try:
        pairs = operations(
            repo, lambda t: get(keys[t]), get_many, lambda t, v: store(keys[t], v), raw_update
        )
        await run_rows(title, pairs)
        if floor:
            print("  (diagnostic: update's own work written by hand, without plans or driver)")
            print_single(
                "update, hand-written",
                *await compare_single(hand_written_update(repo, backend), raw_update, 2000),
            )
    finally:
        await backend.aclose()


def hand_written_update(repo: co.Repo[Row, int], backend: co.AsyncMemcachedBackend) -> Call:
    """``aio.update(repo, t, score=2.5)``'s work written out on the same client.

    What any update that checks what it reads must do: check the change,
    ``gets``, decode and check the record against its key, apply the change,
    encode, ``cas``; none of the plan, driver or twin machinery. It times how
    close to the bare streams client a validating update can come at all.
    """
    schema = repo.schema
    change = {"score": 2.5}

    async def update(t: int) -> object:
        bkey = schema.encode_key(t, repo.namespace)
        schema.check_changes(change)
        got = await backend.gets(bkey)
        assert got is not None
        old = crud._decode(repo, got[0], t, bkey)
        new = schema.evolve(old, change, checked=True, prepared=True)
        return await backend.cas(bkey, crud._encode(repo, new, bkey), got[1], co.KEEP_TTL)

    return update


async def bench_memcached(address: tuple[str, int]) -> None:
    client = RawMemcached(*address)
    keys = [b"raw:%d" % i for i in range(100)]
    try:
        await _memcached_rows(
            "memcached (aio vs raw)",
            address,
            keys,
            client.get,
            lambda: client.get_many(keys),
            client.set,
            client.gets,
            client.cas,
            floor=True,
        )
    finally:
        await client.close()


async def bench_aiomcache(address: tuple[str, int]) -> None:
    client = aiomcache.Client(*address, pool_size=TASKS)
    keys = [b"am:%d" % i for i in range(100)]

    async def gets(key: bytes) -> tuple[bytes, int]:
        value, token = await client.gets(key)
        assert value is not None
        assert token is not None
        return value, token

    async def get_many() -> list[bytes | None]:
        return list(await client.multi_get(*keys))

    try:
        await _memcached_rows(
            "memcached (aio vs aiomcache)",
            address,
            keys,
            client.get,
            get_many,
            client.set,
            gets,
            client.cas,
        )
    finally:
        await client.close()


def main() -> None:
    root = Path(tempfile.mkdtemp(prefix="cacheorm-bench-aio-"))
    server = start_redis(root / "redis")
    (mc,) = start_memcached_many([root / "memcached"])
    try:
        print(
            f"\n== cacheorm.aio vs raw asyncio clients (medians of {ROUNDS} alternating rounds; "
            f"targets: {SINGLE_TARGET}x raw's µs per call at 1 task, "
            f">= {MANY_TARGET}x raw's calls/s at {TASKS} tasks)"
        )
        asyncio.run(bench_redis(server.url))
        asyncio.run(bench_memcached(mc.address))
        asyncio.run(bench_aiomcache(mc.address))
    finally:
        server.stop()
        mc.stop()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
