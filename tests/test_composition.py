"""Atomic read-modify-write, pipelines, read-through, hooks, outages and scale-out."""

from __future__ import annotations

import logging
import multiprocessing
import threading
import time
from collections import Counter as Tally
from collections.abc import Mapping
from pathlib import Path

import pytest

import cacheorm as co
from tests.records import COLLECTION, COUNTER, PERSON, Collection, Counter, Person
from tests.servers import MemcachedServer, RedisCluster, RedisServer, ServerFactory
from tests.workers import increment, load_once, shared_spec


def hammer(repo: co.Repo[Counter, str], threads: int, times: int) -> None:
    def work() -> None:
        for _ in range(times):
            co.modify(repo, "hits", lambda c: c._replace(value=c.value + 1))

    pool = [threading.Thread(target=work) for _ in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()


@pytest.mark.timeout(180)
def test_modify_8_threads_x_200_is_exact(backend: co.Backend) -> None:
    counters = co.Repo(COUNTER, backend=backend)
    co.insert(counters, Counter("hits", 0))
    hammer(counters, threads=8, times=200)
    assert co.get(counters, "hits").value == 1600


@pytest.mark.timeout(180)
@pytest.mark.parametrize("kind", ["redis", "memcached", "filesystem"])
def test_modify_two_processes_is_exact(
    kind: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    spec = shared_spec(kind, request, tmp_path)
    from tests.workers import backend_from_spec

    backend = backend_from_spec(spec)
    co.insert(co.Repo(COUNTER, backend=backend), Counter("hits", 0))
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=increment, args=(spec, 200)) for _ in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(150)
        assert p.exitcode == 0
    assert co.get(co.Repo(COUNTER, backend=backend), "hits").value == 400
    backend.close()


def test_conflict_error_when_retries_run_out(monkeypatch: pytest.MonkeyPatch) -> None:
    backend = co.MemoryBackend()
    counters = co.Repo(COUNTER, backend=backend)
    co.insert(counters, Counter("hits", 0))
    monkeypatch.setattr(co.crud, "MAX_CAS_ATTEMPTS", 3)
    calls = 0

    def meddle(c: Counter) -> Counter:
        nonlocal calls
        calls += 1
        co.insert(counters, Counter("hits", c.value + 100))  # someone else writes each time
        return c._replace(value=c.value + 1)

    with pytest.raises(co.ConflictError):
        co.modify(counters, "hits", meddle)
    assert calls == 3
    assert co.get(counters, "hits").value == 300


# ------------------------------------------------------------------ get_or_load


@pytest.mark.timeout(60)
def test_get_or_load_runs_the_loader_once(backend: co.Backend) -> None:
    people = co.Repo(PERSON, backend=backend)
    calls: list[str] = []

    def slow_loader(name: str) -> Person:
        calls.append(name)
        time.sleep(0.3)
        return Person(name, 1.0)

    results: list[Person] = []

    def work() -> None:
        results.append(co.get_or_load(people, "Sam", slow_loader))

    pool = [threading.Thread(target=work) for _ in range(8)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    assert calls == ["Sam"]
    assert results == [Person("Sam", 1.0)] * 8
    assert co.get(people, "Sam") == Person("Sam", 1.0)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("kind", ["redis", "filesystem"])
def test_get_or_load_runs_the_loader_once_across_processes(
    kind: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    spec = shared_spec(kind, request, tmp_path)
    log = tmp_path / "loader-calls.txt"
    ctx = multiprocessing.get_context("spawn")
    start_at = time.time() + 3.0  # after every child has imported cacheorm
    procs = [ctx.Process(target=load_once, args=(spec, str(log), start_at)) for _ in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    assert log.read_text(encoding="utf-8").splitlines() == ["Sam"]


def test_get_or_load_loader_error_releases_the_lock() -> None:
    people = co.Repo(PERSON)

    def broken(name: str) -> Person:
        raise RuntimeError("database down")

    with pytest.raises(RuntimeError, match="database down"):
        co.get_or_load(people, "Sam", broken)
    started = time.monotonic()
    assert co.get_or_load(people, "Sam", lambda n: Person(n, 2.0)) == Person("Sam", 2.0)
    assert time.monotonic() - started < 1.0  # the lock was released, no waiting


def test_get_or_load_overwrites_an_undecodable_payload() -> None:
    backend = co.MemoryBackend()
    people = co.Repo(PERSON, backend=backend)
    backend.set(PERSON.encode_key("Sam"), b"\xc1 not msgpack")
    assert co.get_or_load(people, "Sam", lambda n: Person(n, 3.0)) == Person("Sam", 3.0)
    assert co.get(people, "Sam") == Person("Sam", 3.0)


# ------------------------------------------------------------------ pipelines


class Counting:
    """Wraps a real backend and counts the calls (round trips) made to it."""

    def __init__(self, inner: co.Backend) -> None:
        self.inner = inner
        self.default_ttl = inner.default_ttl
        self.calls: Tally[str] = Tally()

    def __getattr__(self, name: str) -> object:
        attr = getattr(self.inner, name)
        if callable(attr):

            def counted(*args: object, **kwargs: object) -> object:
                self.calls[name] += 1
                return attr(*args, **kwargs)

            return counted
        return attr


def memcached_stats(node: MemcachedServer) -> dict[bytes, int]:
    client = node.client()
    try:
        return {k: v for k, v in client.stats().items() if isinstance(v, int)}
    finally:
        client.close()


def test_ops_are_inert_hashable_values() -> None:
    people = co.Repo(PERSON)
    op = co.ops.insert(people, Person("Sam", 1.0))
    assert op == co.ops.insert(people, Person("Sam", 1.0))
    assert len({op, co.ops.insert(people, Person("Sam", 1.0))}) == 1
    assert co.get_or_none(people, "Sam") is None  # building an op did nothing
    collections = co.Repo(COLLECTION)
    td_op = co.ops.insert(collections, {"collector": "a", "note_id": 1, "remark": ""})
    assert isinstance(hash(td_op), int)


@pytest.mark.timeout(60)
def test_twenty_op_pipeline_is_one_round_trip_per_backend(
    redis_server: RedisServer, memcached_servers: list[MemcachedServer]
) -> None:
    redis_server.flush()
    node = memcached_servers[0]
    node.flush()
    redis_b = Counting(co.RedisBackend(url=redis_server.url))
    mc_b = Counting(co.MemcachedBackend(servers=[node.address]))
    people = co.Repo(PERSON, backend=redis_b)  # type: ignore[arg-type]  # a counting proxy
    others = co.Repo(PERSON, backend=redis_b, namespace="others")  # type: ignore[arg-type]  # ditto
    collections = co.Repo(COLLECTION, backend=mc_b, serializer="json")  # type: ignore[arg-type]  # ditto
    co.insert(people, Person("old", 1.0))
    co.insert(collections, {"collector": "old", "note_id": 0, "remark": ""})
    redis_b.calls.clear()
    mc_b.calls.clear()
    with redis_server.client() as raw:
        raw.config_resetstat()
    before = memcached_stats(node)
    ops: list[co.ops.Op[object]] = []
    for i in range(6):
        ops.append(co.ops.insert(people, Person(f"p{i}", float(i))))
    for i in range(4):
        ops.append(co.ops.get_or_none(others, f"p{i}"))
    ops.append(co.ops.delete(people, "old"))
    for i in range(6):
        rec: Collection = {"collector": "c", "note_id": i, "remark": ""}
        ops.append(co.ops.insert(collections, rec))
    ops.append(co.ops.get(collections, ("old", 0)))
    ops.append(co.ops.exists(collections, ("c", 99)))
    ops.append(co.ops.get_many(people, ["p0", "old"]))
    assert len(ops) == 20
    results = co.execute(*ops)
    assert results[:6] == [Person(f"p{i}", float(i)) for i in range(6)]
    assert results[6:10] == [None] * 4
    assert results[10] is True
    assert results[17] == {"collector": "old", "note_id": 0, "remark": ""}
    assert results[18] is False
    assert results[19] == [Person("p0", 0.0), None]  # ops run in order, in one round trip
    assert sum(redis_b.calls.values()) == 1, redis_b.calls
    assert sum(mc_b.calls.values()) == 1, mc_b.calls
    with redis_server.client() as raw:
        stats: Mapping[str, Mapping[str, int]] = raw.info("commandstats")
    assert stats["cmdstat_set"]["calls"] == 6
    assert stats["cmdstat_get"]["calls"] + stats.get("cmdstat_mget", {}).get("calls", 0) >= 1
    assert stats["cmdstat_del"]["calls"] == 1
    after = memcached_stats(node)
    assert after[b"cmd_set"] - before[b"cmd_set"] == 6  # one set per insert, no extra writes
    assert after[b"cmd_get"] - before[b"cmd_get"] == 2  # the get and the exists, nothing more


def test_execute_reports_errors_per_op() -> None:
    people = co.Repo(PERSON)
    co.insert(people, Person("Sam", 1.0))
    results = co.execute(
        co.ops.add(people, Person("Sam", 2.0)),
        co.ops.insert(people, Person("Bob", 1.0)),
        co.ops.get(people, "Nobody"),
        raise_on_error=False,
    )
    assert isinstance(results[0], co.AlreadyExists)
    assert results[1] == Person("Bob", 1.0)
    assert isinstance(results[2], co.NotFound)
    with pytest.raises(co.AlreadyExists):
        co.execute(co.ops.add(people, Person("Sam", 2.0)), co.ops.insert(people, Person("Cy", 1.0)))
    assert co.exists(people, "Cy")  # the other op still ran


def test_execute_update_and_modify_ops(backend: co.Backend) -> None:
    people = co.Repo(PERSON, backend=backend)
    co.insert_many(people, [Person("A", 1.0), Person("B", 2.0)])
    results = co.execute(
        co.ops.update(people, "A", height=5.0),
        co.ops.modify(people, "B", lambda p: p._replace(married=True)),
        co.ops.update_many(people, {"A": {"married": True}, "Z": {"height": 1.0}}),
    )
    assert results[0] == Person("A", 5.0)
    assert results[1] == Person("B", 2.0, married=True)
    assert co.get(people, "A").height == 5.0


# ------------------------------------------------------------------ hooks


def test_hooks_replace_veto_and_observe() -> None:
    seen: list[tuple[str, object]] = []
    people = co.Repo(PERSON)

    def shout(repo: co.Repo[Person, str], record: object) -> object:
        assert isinstance(record, Person)
        return record._replace(email=record.name.lower() + "@example.com")

    def veto_bob(repo: co.Repo[Person, str], key: object) -> None:
        if key == "Bob":
            raise PermissionError("Bob stays")

    def log(event: str) -> co.repo.Hook[Person, str]:
        return lambda repo, subject: seen.append((event, subject))

    people = co.on(people, "before_insert", shout)
    people = co.on(people, "after_insert", log("after_insert"))
    people = co.on(people, "before_delete", veto_bob)
    people = co.on(people, "after_delete", log("after_delete"))
    people = co.on(people, "after_update", log("after_update"))
    sam = co.insert(people, Person("Sam", 1.0))
    assert sam.email == "sam@example.com"
    assert co.get(people, "Sam") == sam
    co.insert_many(people, [Person("Bob", 1.0), Person("Ann", 1.0)])
    co.execute(co.ops.insert(people, Person("Cy", 1.0)))
    assert [s for e, s in seen if e == "after_insert"] == [
        sam,
        Person("Bob", 1.0, email="bob@example.com"),
        Person("Ann", 1.0, email="ann@example.com"),
        Person("Cy", 1.0, email="cy@example.com"),
    ]
    with pytest.raises(PermissionError):
        co.delete(people, "Bob")
    assert co.exists(people, "Bob")
    assert co.delete(people, "Ann") is True
    co.update(people, "Sam", height=2.0)
    assert ("after_delete", "Ann") in seen
    assert ("after_update", Person("Sam", 2.0, email="sam@example.com")) in seen
    with pytest.raises(co.ValidationError):
        co.on(people, "before_everything", log("x"))  # type: ignore[call-overload]  # runtime check


# ------------------------------------------------------------------ outages


def test_on_backend_error_miss_keeps_serving(caplog: pytest.LogCaptureFixture) -> None:
    from tests.servers import free_port

    dead = co.RedisBackend(url=f"redis://127.0.0.1:{free_port()}/0", socket_connect_timeout=0.2)
    strict = co.Repo(PERSON, backend=dead)
    with pytest.raises(co.BackendError):
        co.get_or_none(strict, "Sam")
    lenient = strict.replace(on_backend_error="miss")
    before = co.engine.Outage.count
    with caplog.at_level(logging.WARNING, logger="cacheorm"):
        assert co.get_or_none(lenient, "Sam") is None
        with pytest.raises(co.BackendError):  # a write that did not happen is never "stored"
            co.insert(lenient, Person("Sam", 1.0))
        assert co.get_many(lenient, ["a", "b"]) == [None, None]
        assert co.get_or_load(lenient, "Sam", lambda n: Person(n, 9.0)) == Person("Sam", 9.0)
    assert co.engine.Outage.count > before
    warnings = [r for r in caplog.records if "unavailable" in r.getMessage()]
    assert len(warnings) == 1  # logged once per outage


# ------------------------------------------------------------------ scale-out


@pytest.mark.timeout(60)
def test_cluster_batches_spread_over_three_masters(redis_cluster: RedisCluster) -> None:
    redis_cluster.flush()
    people = co.Repo(PERSON, backend=co.RedisBackend(client=redis_cluster.client()))
    records = [Person(f"person-{i}", float(i)) for i in range(1000)]
    co.insert_many(people, records)
    assert co.get_many(people, [r.name for r in records]) == records
    for port in redis_cluster.ports:
        with redis_cluster.node_client(port) as node:
            assert node.dbsize() > 200
    results = co.execute(*[co.ops.update(people, f"person-{i}", married=True) for i in range(50)])
    assert all(r.married for r in results)
    assert co.delete_many(people, [r.name for r in records]) == 1000


def test_two_memcached_nodes_both_hold_data(
    memcached_servers: list[MemcachedServer], monkeypatch: pytest.MonkeyPatch
) -> None:
    nodes = memcached_servers[1:3]
    for node in nodes:
        node.flush()
    backend = co.MemcachedBackend(servers=[n.address for n in nodes])
    people = co.Repo(PERSON, backend=backend)
    records = [Person(f"person-{i}", float(i)) for i in range(200)]
    co.insert_many(people, records)
    for node in nodes:
        assert memcached_stats(node)[b"curr_items"] > 30
    # get_many asks each node once, with one get line for all of its keys.
    from cacheorm.backends import memcached as memcached_module

    rounds: list[list[int]] = []
    real = memcached_module._converse

    def counted(exchanges: list[memcached_module._Exchange[memcached_module._Node]]) -> None:
        rounds.append(sorted(len(exchange.groups) for exchange in exchanges))
        real(exchanges)

    monkeypatch.setattr(memcached_module, "_converse", counted)
    assert co.get_many(people, [r.name for r in records]) == records
    assert rounds == [[1, 1]]  # one round trip, one command line per node


@pytest.mark.timeout(120)
def test_killing_a_cluster_master_fails_fast_and_others_keep_working(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    from tests.servers import start_redis_cluster

    root = tmp_path_factory.mktemp("doomed-cluster")
    cluster = start_redis_cluster([root / f"n{i}" for i in range(3)])
    try:
        from redis import RedisCluster as Client

        client = Client(
            host=cluster.host,
            port=cluster.ports[0],
            socket_timeout=0.5,
            socket_connect_timeout=0.5,
        )
        people = co.Repo(PERSON, backend=co.RedisBackend(client=client))
        names = [f"person-{i}" for i in range(300)]
        co.insert_many(people, [Person(n, 1.0) for n in names])
        victim = cluster.ports[2]
        with cluster.node_client(victim) as node:
            held = set(node.scan_iter(count=1000))
        doomed = {n for n in names if PERSON.encode_key(n) in held}
        assert doomed
        cluster._procs[2].stop()
        survivors = [n for n in names if n not in doomed]
        started = time.monotonic()
        with pytest.raises(co.BackendError):
            co.get(people, next(iter(doomed)))
        assert time.monotonic() - started < 15
        for name in survivors[:20]:
            assert co.get(people, name) == Person(name, 1.0)
    finally:
        cluster.stop()


def test_a_dead_memcached_node_fails_fast(server_factory: ServerFactory) -> None:
    node = server_factory.memcached()
    people = co.Repo(PERSON, backend=co.MemcachedBackend(servers=[node.address], timeout=0.5))
    co.insert(people, Person("Sam", 1.0))
    node.stop()
    with pytest.raises(co.BackendError):
        co.get(people, "Sam")


# ------------------------------------------------------------------ tiers through repos


def test_tier_in_front_of_redis_serves_repeated_reads_locally(redis_server: RedisServer) -> None:
    redis_server.flush()
    far = Counting(co.RedisBackend(url=redis_server.url))
    tier = co.TieredBackend(co.MemoryBackend(), far, near_ttl=5)  # type: ignore[arg-type]  # proxy
    people = co.Repo(PERSON, backend=tier, ttl=60)
    others = co.Repo(PERSON, backend=tier, ttl=60)  # a second repo sharing the tier
    co.insert(people, Person("Sam", 1.0))
    far.calls.clear()
    for _ in range(10):
        assert co.get(people, "Sam") == Person("Sam", 1.0)
    assert far.calls["get"] == 0  # all served by the near tier
    co.update(others, "Sam", height=2.0)
    assert co.get(people, "Sam").height == 2.0  # a write through another repo is visible at once
    co.delete(others, "Sam")
    assert co.get_or_none(people, "Sam") is None


def test_tier_near_entries_never_outlive_the_record_ttl(redis_server: RedisServer) -> None:
    redis_server.flush()
    tier = co.TieredBackend(co.MemoryBackend(), co.RedisBackend(url=redis_server.url))
    people = co.Repo(PERSON, backend=tier, ttl=1)
    co.insert(people, Person("Sam", 1.0))
    assert co.exists(people, "Sam")
    time.sleep(1.5)
    assert co.get_or_none(people, "Sam") is None


@pytest.mark.parametrize("kind", ["memcached", "redis"])
def test_one_oversized_op_does_not_fail_the_others_in_a_pipeline(
    kind: str, request: pytest.FixtureRequest
) -> None:
    backend: co.Backend
    if kind == "memcached":
        node: MemcachedServer = request.getfixturevalue("memcached_servers")[0]
        node.flush()
        backend = co.MemcachedBackend(servers=[node.address])
    else:
        server: RedisServer = request.getfixturevalue("redis_server")
        server.flush()
        backend = co.RedisBackend(url=server.url, max_value_size=1024 * 1024)
    people = co.Repo(PERSON, backend=backend)
    huge = Person("Huge", 1.0, email="x" * (2 * 1024 * 1024))  # over memcached's 1 MiB items
    results = co.execute(
        co.ops.insert(people, Person("Sam", 1.0)),
        co.ops.insert(people, huge),
        co.ops.insert(people, Person("Bob", 2.0)),
        raise_on_error=False,
    )
    assert results[0] == Person("Sam", 1.0)
    assert isinstance(results[1], co.ValueTooLarge)
    assert results[2] == Person("Bob", 2.0)
    assert co.get_many(people, ["Sam", "Huge", "Bob"]) == [results[0], None, results[2]]


# ------------------------------------------------------------------ audit regressions


def test_get_or_load_failing_write_raises_its_error_and_releases_the_lock(
    memcached_servers: list[MemcachedServer],
) -> None:
    node = memcached_servers[0]
    node.flush()
    backend = co.MemcachedBackend(servers=[node.address])
    people = co.Repo(PERSON, backend=backend)
    huge = Person("Sam", 1.0, email="x" * (2 * 1024 * 1024))  # over memcached's item limit
    with pytest.raises(co.ValueTooLarge):
        co.get_or_load(people, "Sam", lambda name: huge)
    assert backend.get(co.crud.LOCK_PREFIX + PERSON.encode_key("Sam")) is None
    with pytest.raises(co.ValueTooLarge):
        co.execute(co.ops.get_or_load(people, "Sam", lambda name: huge))
    assert co.get_or_load(people, "Sam", lambda name: Person(name, 2.0)) == Person("Sam", 2.0)


def test_a_record_key_never_meets_a_lock_key() -> None:
    people = co.Repo(PERSON)
    co.insert(people, Person("Ann\x00lock", 1.0))
    started = time.monotonic()
    assert co.get_or_load(people, "Ann", lambda n: Person(n, 2.0)) == Person("Ann", 2.0)
    assert time.monotonic() - started < 1.0
    assert co.get(people, "Ann\x00lock") == Person("Ann\x00lock", 1.0)


def test_execute_runs_ops_on_the_same_key_in_order(backend: co.Backend) -> None:
    people = co.Repo(PERSON, backend=backend)
    co.insert(people, Person("x", 0.0))
    results = co.execute(
        co.ops.update(people, "x", height=1.0),
        co.ops.get(people, "x"),
        co.ops.insert(people, Person("x", 9.0)),
        co.ops.modify(people, "x", lambda p: p._replace(height=p.height + 1)),
        co.ops.delete(people, "x"),
        co.ops.exists(people, "x"),
    )
    assert results == [
        Person("x", 1.0),
        Person("x", 1.0),
        Person("x", 9.0),
        Person("x", 10.0),
        True,
        False,
    ]


def test_miss_mode_covers_batched_calls_and_hooks_see_only_real_deletes(
    server_factory: ServerFactory,
) -> None:
    server = server_factory.redis()
    backend = co.RedisBackend(url=server.url, socket_timeout=0.5, socket_connect_timeout=0.5)
    deleted: list[object] = []
    people = co.on(
        co.Repo(PERSON, backend=backend), "after_delete", lambda repo, key: deleted.append(key)
    )
    co.insert_many(people, [Person("a", 1.0), Person("b", 1.0)])
    server.stop()
    with pytest.raises(co.BackendError):
        co.delete_many(people, ["a", "b"])
    assert deleted == []  # the deletes failed: no after_delete
    lenient = people.replace(on_backend_error="miss")
    # Reads miss; deletes and updates that did not happen raise, in miss mode too.
    with pytest.raises(co.BackendError):
        co.delete_many(lenient, ["a", "b"])
    with pytest.raises(co.BackendError):
        co.update_many(lenient, {"a": {"height": 2.0}})
    assert deleted == []
    assert co.execute(co.ops.get_or_none(lenient, "a"), co.ops.exists(lenient, "b")) == [
        None,
        False,
    ]
