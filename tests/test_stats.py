"""Operating it: ``co.Stats`` and ``co.instrument`` count every call, trace and log it.

Counts are exact for every function through each driver (``co``, ``co.execute``,
``cacheorm.aio``, ``aio.execute``), on memory and on a real Redis; latency
percentiles track real durations; compare-and-set races are counted as retries
and their give-ups as conflicts; counting is exact under 8 threads and under
asyncio interleaving; OpenTelemetry spans and metrics follow the database
semantic conventions; a DEBUG line per call; repos without stats are untouched.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import TYPE_CHECKING, Any, NamedTuple

import pytest

import cacheorm as co
from cacheorm import aio, crud
from cacheorm.stats import _PER_DOUBLING
from tests.records import PERSON, Person
from tests.servers import free_port

if TYPE_CHECKING:
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from tests.servers import RedisServer


class Counter(NamedTuple):
    name: str
    value: int


COUNTER: co.Schema[Counter, str] = co.Schema(Counter, key="name")

Figures = tuple[int, int, int, int, int, int]
"""(calls, hits, misses, writes, deletes, errors) of one operation."""


def figures(counts: co.stats.Counts) -> Figures:
    return (counts.calls, counts.hits, counts.misses, counts.writes, counts.deletes, counts.errors)


# -- the drivers ------------------------------------------------------------------------------

Runner = Callable[..., Awaitable[object]]


async def through_co(name: str, repo: co.Repo[Any, Any], *args: object, **kw: object) -> object:
    return getattr(co, name)(repo, *args, **kw)


async def through_execute(
    name: str, repo: co.Repo[Any, Any], *args: object, **kw: object
) -> object:
    (result,) = co.execute(getattr(co.ops, name)(repo, *args, **kw))
    return result


async def through_aio(name: str, repo: co.Repo[Any, Any], *args: object, **kw: object) -> object:
    return await getattr(aio, name)(repo, *args, **kw)


async def through_aio_execute(
    name: str, repo: co.Repo[Any, Any], *args: object, **kw: object
) -> object:
    (result,) = await aio.execute(getattr(co.ops, name)(repo, *args, **kw))
    return result


RUNNERS: dict[str, Runner] = {
    "co": through_co,
    "execute": through_execute,
    "aio": through_aio,
    "aio_execute": through_aio_execute,
}


@pytest.fixture(params=["memory", "redis"])
def backend_of(request: pytest.FixtureRequest) -> Iterator[Callable[[bool], Any]]:
    """Builds an empty backend of the kind, sync or async (``aio``), closed afterwards."""
    kind: str = request.param
    made: list[Any] = []

    def make(for_aio: bool) -> Any:
        if kind == "memory":
            backend: Any = co.MemoryBackend()
        else:
            server: RedisServer = request.getfixturevalue("redis_server")
            server.flush()
            backend = (co.AsyncRedisBackend if for_aio else co.RedisBackend)(url=server.url)
        made.append(backend)
        return backend

    yield make
    for backend in made:
        if not isinstance(backend, co.AsyncRedisBackend):
            backend.close()


# -- exact counts, every function, every driver -------------------------------------------------


def load(name: str) -> Person:
    return Person(name, 170.0)


def load_all_but_nemo(names: list[str]) -> dict[str, Person]:
    return {name: Person(name, 170.0) for name in names if name != "Nemo"}


def taller(person: Person) -> Person:
    return person._replace(height=person.height + 1)


async def every_function(call: Runner, people: co.Repo[Person, str]) -> None:
    """Each public function once or twice, with outcomes known in advance."""
    await call("insert", people, Person("Sam", 1.8))
    await call("insert_many", people, [Person("Bob", 1.7), Person("Ann", 1.6)])
    await call("add", people, Person("Cy", 1.5))
    with pytest.raises(co.AlreadyExists):
        await call("add", people, Person("Cy", 1.5))
    await call("get", people, "Sam")
    with pytest.raises(co.NotFound):
        await call("get", people, "Zed")
    assert await call("get_or_none", people, "Zed") is None
    await call("get_or_none", people, "Sam")
    assert await call("get_many", people, ["Sam", "Zed", "Bob"]) is not None
    assert await call("exists", people, "Sam") is True
    assert await call("exists", people, "Zed") is False
    await call("update", people, "Sam", height=1.9)
    with pytest.raises(co.NotFound):
        await call("update", people, "Zed", height=1.0)
    await call("modify", people, "Bob", taller)
    await call("update_many", people, {"Sam": {"married": True}, "Zed": {"married": True}})
    await call("replace", people, Person("Ann", 1.65))
    assert await call("delete", people, "Ann") is True
    assert await call("delete", people, "Ann") is False
    assert await call("delete_many", people, ["Bob", "Cy", "Zed"]) == 2
    assert await call("get_or_load", people, "Dee", load) == Person("Dee", 170.0)
    assert await call("get_or_load", people, "Dee", load) == Person("Dee", 170.0)
    found = await call("get_many_or_load", people, ["Dee", "Eve", "Nemo"], load_all_but_nemo)
    assert found == [Person("Dee", 170.0), Person("Eve", 170.0), None]
    assert await call("clear", people) == 3  # Sam, Dee, Eve


EXPECTED: dict[str, Figures] = {
    # operation: (calls, hits, misses, writes, deletes, errors)
    "insert": (1, 0, 0, 1, 0, 0),
    "insert_many": (1, 0, 0, 2, 0, 0),
    "add": (2, 0, 0, 1, 0, 0),
    "get": (2, 1, 1, 0, 0, 0),
    "get_or_none": (2, 1, 1, 0, 0, 0),
    "get_many": (1, 2, 1, 0, 0, 0),
    "exists": (2, 1, 1, 0, 0, 0),
    "update": (2, 0, 0, 1, 0, 0),
    "modify": (1, 0, 0, 1, 0, 0),
    "update_many": (1, 0, 0, 1, 0, 0),
    "replace": (1, 0, 0, 1, 0, 0),
    "delete": (2, 0, 0, 0, 1, 0),
    "delete_many": (1, 0, 0, 0, 2, 0),
    "get_or_load": (2, 1, 1, 1, 0, 0),
    "get_many_or_load": (1, 1, 2, 1, 0, 0),  # a miss per key given to the loader
    "clear": (1, 0, 0, 0, 3, 0),
}


@pytest.mark.parametrize("driver", list(RUNNERS))
def test_every_function_counts_exactly_through_every_driver(
    driver: str, backend_of: Callable[[bool], Any]
) -> None:
    stats = co.Stats()
    people = co.instrument(co.Repo(PERSON, backend=backend_of(driver.startswith("aio"))), stats)
    asyncio.run(every_function(RUNNERS[driver], people))

    assert {name: figures(c) for name, c in stats.by_operation.items()} == EXPECTED
    calls = sum(f[0] for f in EXPECTED.values())
    assert figures(stats.total) == tuple(sum(f[i] for f in EXPECTED.values()) for i in range(6))
    assert (stats.calls, stats.hits, stats.misses) == (calls, 7, 7)
    assert (stats.writes, stats.deletes, stats.errors) == (10, 6, 0)
    assert (stats.retries, stats.conflicts) == (0, 0)
    assert figures(stats.by_schema["Person"]) == figures(stats.total)
    assert stats.total.latency.calls == calls
    assert stats.by_operation["get_many"].hit_ratio == pytest.approx(2 / 3)


def test_a_pipeline_counts_each_op_under_its_own_name_and_repo() -> None:
    stats = co.Stats()
    people = co.instrument(co.Repo(PERSON), stats)
    counters = co.Repo(COUNTER)  # not instrumented: its ops count nowhere
    co.execute(
        co.ops.insert(people, Person("Sam", 1.8)),
        co.ops.insert(counters, Counter("c", 1)),
        co.ops.get(people, "Sam"),
        co.ops.get(counters, "c"),
        co.ops.get_or_none(people, "Bob"),
    )
    assert {name: figures(c) for name, c in stats.by_operation.items()} == {
        "insert": (1, 0, 0, 1, 0, 0),
        "get": (1, 1, 0, 0, 0, 0),
        "get_or_none": (1, 0, 1, 0, 0, 0),
    }
    assert set(stats.by_schema) == {"Person"}


def test_read_through_helpers_count_as_get_or_load() -> None:
    stats = co.Stats()
    people = co.instrument(co.Repo(PERSON), stats)

    @co.cached(people, negative_ttl=30)
    def person(name: str) -> Person | None:
        return None if name == "Nemo" else Person(name, 1.0)

    assert person("Sam") == Person("Sam", 1.0)
    assert person("Sam") == Person("Sam", 1.0)
    for _ in range(2):  # loaded once, then its absence is remembered: a hit
        with pytest.raises(co.NotFound):
            person("Nemo")
    assert figures(stats.by_operation["get_or_load"]) == (4, 2, 2, 1, 0, 0)


# -- errors -----------------------------------------------------------------------------------


def test_undecodable_data_and_unreachable_servers_count_as_errors() -> None:
    stats = co.Stats()
    backend = co.MemoryBackend()
    people = co.instrument(co.Repo(PERSON, backend=backend), stats)
    backend.set(PERSON.encode_key("Sam", ""), b"\xc1 not msgpack")
    with pytest.raises(co.DecodeError):
        co.get(people, "Sam")
    with pytest.raises(co.ValidationError):  # the caller's mistake, not the cache's
        co.insert(people, Counter("c", 1))  # type: ignore[arg-type]  # the wrong record type
    assert figures(stats.by_operation["get"]) == (1, 0, 0, 0, 0, 1)
    assert figures(stats.by_operation["insert"]) == (1, 0, 0, 0, 0, 0)

    nowhere = co.RedisBackend(
        url=f"redis://127.0.0.1:{free_port()}/0", socket_timeout=0.5, socket_connect_timeout=0.5
    )
    try:
        down = co.instrument(co.Repo(PERSON, backend=nowhere), stats)
        with pytest.raises(co.BackendError):
            co.get(down, "Sam")
        with pytest.raises(co.BackendError):
            co.delete(down, "Sam")
        degraded = down.replace(on_backend_error="miss")
        assert co.get_or_none(degraded, "Sam") is None
        assert co.get_many(degraded, ["Sam", "Bob"]) == [None, None]
        assert co.get_or_load(degraded, "Dee", load) == Person("Dee", 170.0)
    finally:
        nowhere.close()
    operations = stats.by_operation
    assert figures(operations["get"]) == (2, 0, 0, 0, 0, 2)
    assert figures(operations["delete"]) == (1, 0, 0, 0, 0, 1)
    # A read degraded by on_backend_error="miss" is a miss and an error (one per call).
    assert figures(operations["get_or_none"]) == (1, 0, 1, 0, 0, 1)
    assert figures(operations["get_many"]) == (1, 0, 2, 0, 0, 1)
    assert figures(operations["get_or_load"]) == (1, 0, 1, 0, 0, 1)
    assert stats.errors == 6


# -- compare-and-set races --------------------------------------------------------------------


def test_lost_compare_and_set_races_are_counted_as_retries(
    backend_of: Callable[[bool], Any],
) -> None:
    stats = co.Stats()
    counters = co.instrument(co.Repo(COUNTER, backend=backend_of(False)), stats)
    co.insert(counters, Counter("hits", 0))
    attempts = 0
    lock = threading.Lock()

    def bump(counter: Counter) -> Counter:
        nonlocal attempts
        with lock:
            attempts += 1
        time.sleep(0.002)  # holds the read value long enough for others to write
        return counter._replace(value=counter.value + 1)

    def writer() -> None:
        for _ in range(10):
            co.modify(counters, "hits", bump)

    threads = [threading.Thread(target=writer) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert co.get(counters, "hits").value == 80
    modify = stats.by_operation["modify"]
    assert (modify.calls, modify.writes, modify.conflicts) == (80, 80, 0)
    # Every attempt called bump once: the ones that lost the race are the retries.
    assert modify.retries == attempts - 80 > 0
    assert stats.retries == modify.retries


def test_an_update_that_gives_up_counts_a_conflict(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(crud, "MAX_CAS_ATTEMPTS", 2)
    stats = co.Stats()
    backend = co.MemoryBackend()
    plain = co.Repo(COUNTER, backend=backend)
    counters = co.instrument(plain, stats)
    co.insert(plain, Counter("hits", 0))

    def raced(counter: Counter) -> Counter:
        co.update(plain, "hits", value=counter.value + 100)  # another writer, every time
        return counter._replace(value=counter.value + 1)

    with pytest.raises(co.ConflictError):
        co.modify(counters, "hits", raced)
    modify = stats.by_operation["modify"]
    assert (modify.calls, modify.writes, modify.retries, modify.conflicts) == (1, 0, 2, 1)
    assert (stats.conflicts, stats.errors) == (1, 0)


def test_update_many_counts_the_retries_of_its_records() -> None:
    stats = co.Stats()
    plain = co.Repo(COUNTER)
    co.insert_many(plain, [Counter("a", 0), Counter("b", 0)])
    races = {"a": 1, "b": 2}  # compare-and-set races each record will lose

    def another_writer(repo: co.Repo[Counter, str], counter: Counter) -> None:
        if races[counter.name]:
            races[counter.name] -= 1
            co.update(plain, counter.name, value=10)  # between our read and our write

    counters = co.instrument(co.on(plain, "before_update", another_writer), stats)
    assert co.update_many(counters, {"a": {"value": 1}, "b": {"value": 2}}) == [
        Counter("a", 1),
        Counter("b", 2),
    ]
    update_many = stats.by_operation["update_many"]
    assert (update_many.calls, update_many.writes, update_many.retries) == (1, 2, 3)
    assert set(stats.by_operation) == {"update_many"}  # the other writer's calls: not counted


# -- latency ----------------------------------------------------------------------------------


def test_percentiles_follow_the_real_durations() -> None:
    stats = co.Stats()
    people = co.instrument(co.Repo(PERSON), stats)

    def slow_load(name: str) -> Person:
        time.sleep(0.05)
        return Person(name, 1.0)

    co.insert(people, Person("Sam", 1.8))
    for _ in range(98):
        co.get(people, "Sam")
    co.get_or_load(people, "Slow1", slow_load)
    co.get_or_load(people, "Slow2", slow_load)

    # A percentile is its bucket's geometric middle: up to half a bucket below a
    # duration in it (a 50.1 ms call reads 49.1 ms), as the histogram documents.
    slow = 0.05 * 2 ** (-1 / (2 * _PER_DOUBLING))
    get = stats.by_operation["get"].latency
    assert get.calls == 98
    assert 0 < get.p50 <= get.p90 <= get.p99 <= get.max < 0.05
    loads = stats.by_operation["get_or_load"]
    assert loads.p50 >= slow
    assert loads.p99 >= slow
    assert loads.latency.max < 2.0
    total = stats.total.latency
    assert total.calls == 101
    assert total.p50 < 0.01 <= slow <= total.p99 <= total.max  # 2 slow calls in 101: p99
    assert total.max >= 0.05
    assert total.mean == pytest.approx(
        sum(c.latency.mean * c.latency.calls for c in stats.by_operation.values()) / 101
    )


def test_the_histogram_reports_percentiles_within_its_bucket_width() -> None:
    from cacheorm.stats import _Histogram

    histogram = _Histogram()
    durations = [0.0001 * 1.01**i for i in range(1000)]  # 0.1 ms to about 2 s
    for seconds in durations:
        histogram.add(seconds)
    ordered = sorted(durations)
    for q in (50, 90, 99):
        exact = ordered[q * len(ordered) // 100 - 1]
        assert histogram.percentile(q) == pytest.approx(exact, rel=0.045)
    assert len(histogram.buckets) <= 16 * 15  # bounded: buckets, not samples


# -- concurrency -----------------------------------------------------------------------------


def test_counts_stay_exact_under_eight_threads() -> None:
    stats = co.Stats()
    people = co.instrument(co.Repo(PERSON), stats)

    def worker(n: int) -> None:
        for i in range(200):
            name = f"p{n}-{i}"
            co.insert(people, Person(name, 1.0))
            co.get(people, name)
            co.get_or_none(people, f"missing-{n}-{i}")

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert (stats.calls, stats.writes, stats.hits, stats.misses) == (4800, 1600, 1600, 1600)
    assert stats.total.latency.calls == 4800
    assert stats.by_operation["get_or_none"].calls == 1600


def test_interleaved_tasks_count_each_call_on_its_own(redis_server: RedisServer) -> None:
    redis_server.flush()

    async def main() -> tuple[co.Stats, int]:
        stats = co.Stats()
        backend = co.AsyncRedisBackend(url=redis_server.url)
        counters = co.instrument(co.Repo(COUNTER, backend=backend), stats)
        await aio.insert(counters, Counter("hits", 0))
        attempts = 0

        async def bump(counter: Counter) -> Counter:
            nonlocal attempts
            attempts += 1
            await asyncio.sleep(0.002)  # the other tasks run meanwhile
            return counter._replace(value=counter.value + 1)

        async def loaded(name: str) -> Counter:
            await asyncio.sleep(0.001)
            return Counter(name, 0)

        await asyncio.gather(
            *(aio.modify(counters, "hits", bump) for _ in range(10)),
            *(aio.get_or_load(counters, f"k{i}", loaded) for i in range(10)),
            *(aio.get(counters, "hits") for _ in range(10)),
        )
        assert (await aio.get(counters, "hits")).value == 10
        await backend.aclose()
        return stats, attempts

    stats, attempts = asyncio.run(main())
    operations = stats.by_operation
    assert figures(operations["get_or_load"]) == (10, 0, 10, 10, 0, 0)
    assert operations["get_or_load"].retries == 0
    assert (operations["modify"].writes, operations["modify"].retries) == (10, attempts - 10)
    assert (operations["get"].calls, operations["get"].hits) == (11, 11)


def test_a_cancelled_call_is_counted_and_still_cleans_up() -> None:
    stats = co.Stats()
    backend = co.MemoryBackend()
    people = co.instrument(co.Repo(PERSON, backend=backend), stats)

    async def never(name: str) -> Person:
        await asyncio.sleep(60)
        raise AssertionError("cancelled before")

    async def main() -> None:
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(aio.get_or_load(people, "Sam", never), 0.05)

    asyncio.run(main())
    assert backend.get(crud.LOCK_PREFIX + PERSON.encode_key("Sam", "")) is None  # released
    assert figures(stats.by_operation["get_or_load"]) == (1, 0, 1, 0, 0, 0)  # not an error


# -- the repo value ---------------------------------------------------------------------------


def test_repos_without_stats_are_not_counted_and_stats_travel_with_the_repo() -> None:
    stats = co.Stats()
    plain = co.Repo(PERSON)
    people = co.instrument(plain, stats)
    assert plain.stats is None
    assert people.stats is stats
    assert people != plain
    assert people.backend is plain.backend
    co.insert(plain, Person("Sam", 1.8))
    co.get(plain, "Sam")
    co.execute(co.ops.get(plain, "Sam"))
    assert stats.calls == 0

    assert people.replace(ttl=60).stats is stats
    hooked = co.on(people, "after_insert", lambda repo, record: None)
    co.insert(hooked, Person("Bob", 1.7))
    assert co.instrument(people, None).stats is None
    co.get(co.instrument(people, None), "Sam")
    assert (stats.calls, stats.writes) == (1, 1)
    with pytest.raises(co.ValidationError):
        co.instrument(plain, object())  # type: ignore[arg-type]  # not a Stats


def test_snapshot_export_and_reset() -> None:
    stats = co.Stats(otel=False)
    assert not stats.otel
    people = co.instrument(co.Repo(PERSON), stats)
    co.insert(people, Person("Sam", 1.8))
    co.get(people, "Sam")
    exported = json.loads(json.dumps(stats.as_dict()))
    assert exported["total"]["calls"] == 2
    assert exported["by_operation"]["get"]["hits"] == 1
    assert exported["by_schema"]["Person"]["writes"] == 1
    assert exported["by_operation"]["get"]["p50"] > 0
    snapshot = stats.snapshot()
    assert snapshot.total == stats.total
    assert "calls=2" in repr(stats)
    stats.reset()
    assert (stats.calls, stats.hits, stats.by_operation) == (0, 0, {})
    assert stats.total.latency == co.stats.Latency(0, 0.0, 0.0, 0.0, 0.0, 0.0)
    co.get(people, "Sam")
    assert (snapshot.total.calls, stats.calls) == (2, 1)  # a snapshot stays as it was


# -- logging ----------------------------------------------------------------------------------


def test_each_call_of_an_instrumented_repo_logs_one_debug_line(
    caplog: pytest.LogCaptureFixture,
) -> None:
    plain = co.Repo(PERSON)
    people = co.instrument(plain, co.Stats(otel=False))
    co.insert(plain, Person("Sam", 1.8))
    with caplog.at_level(logging.DEBUG, logger="cacheorm.stats"):
        co.get(plain, "Sam")  # not instrumented: no line
        co.get(people, "Sam")
        co.get_many(people, ["Sam", "Bob", "Ann"])
        with pytest.raises(co.NotFound):
            co.update(people, "Zed", height=1.0)
        co.clear(people)
    lines = [r.getMessage() for r in caplog.records if r.name == "cacheorm.stats"]
    assert len(lines) == 4
    assert all(r.levelno == logging.DEBUG for r in caplog.records if r.name == "cacheorm.stats")
    assert lines[0].startswith("get Person: 1 key, hits=1, ")
    assert lines[0].endswith(" ms")
    assert lines[1].startswith("get_many Person: 3 keys, hits=1, misses=2, ")
    assert lines[2].startswith("update Person: 1 key, raised NotFound, ")
    assert lines[3].startswith("clear Person: no key, deletes=1, ")


# -- OpenTelemetry ----------------------------------------------------------------------------


class Otel(NamedTuple):
    stats: co.Stats
    spans: InMemorySpanExporter
    metrics: InMemoryMetricReader


@pytest.fixture
def otel() -> Otel:
    """A Stats on an SDK tracer and meter of its own (the global providers stay unset)."""
    pytest.importorskip("opentelemetry.sdk")  # the dev extra installs it
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    spans = InMemorySpanExporter()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(spans))
    reader = InMemoryMetricReader()
    stats = co.Stats(
        tracer_provider=tracer_provider, meter_provider=MeterProvider(metric_readers=[reader])
    )
    return Otel(stats, spans, reader)


def test_each_call_is_a_client_span_with_the_database_conventions(
    otel: Otel, redis_server: RedisServer
) -> None:
    from opentelemetry.trace import SpanKind, StatusCode

    redis_server.flush()
    backend = co.RedisBackend(url=redis_server.url)
    try:
        people = co.instrument(co.Repo(PERSON, backend=backend, namespace="shop"), otel.stats)
        co.insert(people, Person("Sam", 1.8))
        co.get(people, "Sam")
        with pytest.raises(co.NotFound):
            co.get(people, "Bob")
    finally:
        backend.close()
    nowhere = co.RedisBackend(
        url=f"redis://127.0.0.1:{free_port()}/0", socket_timeout=0.5, socket_connect_timeout=0.5
    )
    try:
        with pytest.raises(co.BackendError):
            co.get(co.instrument(co.Repo(PERSON, backend=nowhere), otel.stats), "Sam")
    finally:
        nowhere.close()

    insert, hit, miss, failed = otel.spans.get_finished_spans()
    assert [s.name for s in (insert, hit, miss, failed)] == [
        "insert Person",
        "get Person",
        "get Person",
        "get Person",
    ]
    assert all(s.kind is SpanKind.CLIENT for s in (insert, hit, miss, failed))
    attributes = dict(hit.attributes or {})
    assert attributes["db.system.name"] == "redis"
    assert attributes["db.operation.name"] == "get"
    assert attributes["db.collection.name"] == "Person"
    assert attributes["db.namespace"] == "shop"
    assert attributes["server.address"] == "127.0.0.1"
    assert attributes["server.port"] == redis_server.port
    assert attributes["cacheorm.hits"] == 1
    assert dict(miss.attributes or {})["cacheorm.misses"] == 1
    assert "error.type" not in (miss.attributes or {})  # a miss answers the question
    assert miss.status.status_code is StatusCode.UNSET
    assert dict(failed.attributes or {})["error.type"] == "cacheorm.errors.BackendError"
    assert failed.status.status_code is StatusCode.ERROR
    assert "db.namespace" not in (failed.attributes or {})  # no namespace: none
    assert hit.end_time is not None
    assert hit.start_time is not None
    assert hit.end_time > hit.start_time


def test_calls_feed_the_duration_histogram_and_hit_and_miss_counters(otel: Otel) -> None:
    from opentelemetry.sdk.metrics.export import HistogramDataPoint, NumberDataPoint

    people = co.instrument(co.Repo(PERSON), otel.stats)
    co.insert(people, Person("Sam", 1.8))
    co.get_many(people, ["Sam", "Bob", "Ann"])
    co.get(people, "Sam")

    data = otel.metrics.get_metrics_data()
    assert data is not None
    metrics = {
        metric.name: metric
        for resource in data.resource_metrics
        for scope in resource.scope_metrics
        for metric in scope.metrics
    }
    duration = metrics["db.client.operation.duration"]
    assert duration.unit == "s"
    by_operation: dict[object, HistogramDataPoint] = {}
    for point in duration.data.data_points:
        assert isinstance(point, HistogramDataPoint)
        by_operation[dict(point.attributes or {})["db.operation.name"]] = point
    assert {name: point.count for name, point in by_operation.items()} == {
        "insert": 1,
        "get_many": 1,
        "get": 1,
    }
    get = by_operation["get"]
    assert dict(get.attributes or {})["db.system.name"] == "other"  # in-process memory
    assert 0 < get.sum < 1  # seconds

    def total(name: str) -> float:
        points = metrics[name].data.data_points
        return sum(p.value for p in points if isinstance(p, NumberDataPoint))

    assert total("cacheorm.client.hits") == 2
    assert total("cacheorm.client.misses") == 2


def test_async_calls_emit_spans_too(otel: Otel) -> None:
    people = co.instrument(co.Repo(PERSON), otel.stats)

    async def main() -> None:
        await aio.insert(people, Person("Sam", 1.8))
        await aio.execute(co.ops.get(people, "Sam"), co.ops.exists(people, "Bob"))

    asyncio.run(main())
    names = [span.name for span in otel.spans.get_finished_spans()]
    assert names == ["insert Person", "get Person", "exists Person"]
