"""Fail-fast outages: with ``on_backend_error="miss"``, a hung server costs one timeout.

After a miss-mode call fails on a server, miss-mode calls skip that server for
``Outage.retry_seconds`` (reads miss at once, writes and deletes raise
``BackendError`` at once), then one call probes it while the others keep
skipping it, and an answered probe ends the outage. On a memcached pool or a
Redis Cluster only the down node's keys are skipped. Hung servers are a
blackholing proxy (accepts, never answers) or a SIGSTOPped process.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Iterator, Sequence

import pytest

import cacheorm as co
from cacheorm import aio
from cacheorm.backends.base import Command
from cacheorm.engine import Outage
from tests.proxy import Proxy
from tests.records import PERSON, Person
from tests.servers import (
    MemcachedServer,
    RedisCluster,
    RedisServer,
    ServerFactory,
    frozen,
)

TIMEOUT = 0.5
"""The backends' socket and connect timeouts here: what one call on a hung server costs."""
RETRY = 1.5
"""``Outage.retry_seconds`` in these tests."""
FAST = 0.25
"""Ample for a call that skips its server (a few ms), far below one TIMEOUT."""

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(autouse=True)
def short_retry(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Outage, "retry_seconds", RETRY)


class Took:
    """Measures a block: ``with Took() as took: ...; took.seconds``."""

    def __enter__(self) -> Took:
        self.start = time.monotonic()
        self.seconds = 0.0
        return self

    def __exit__(self, *exc: object) -> None:
        self.seconds = time.monotonic() - self.start


def load(name: str) -> Person:
    return Person(name, 9.0)


@pytest.fixture
def proxied(redis_server: RedisServer) -> Iterator[tuple[Proxy, co.RedisBackend]]:
    redis_server.flush()
    with Proxy(redis_server.host, redis_server.port) as proxy:
        backend = co.RedisBackend(
            url=f"redis://127.0.0.1:{proxy.port}/0",
            socket_timeout=TIMEOUT,
            socket_connect_timeout=TIMEOUT,
        )
        try:
            yield proxy, backend
        finally:
            backend.close()


def test_a_blackholed_server_costs_one_timeout_then_calls_return_at_once(
    proxied: tuple[Proxy, co.RedisBackend], caplog: pytest.LogCaptureFixture
) -> None:
    proxy, backend = proxied
    people = co.Repo(PERSON, backend=backend, on_backend_error="miss")
    co.insert(people, Person("Sam", 1.0))
    server = f"127.0.0.1:{proxy.port}"
    proxy.blackhole()
    with caplog.at_level(logging.WARNING, logger="cacheorm"):
        with Took() as first:
            assert co.get_or_none(people, "Sam") is None  # pays the timeout, starts the outage
        assert first.seconds >= TIMEOUT * 0.9
        with Took() as then:
            for _ in range(20):
                assert co.get_or_none(people, "Sam") is None
            assert co.get_many(people, ["Sam", "Bob"]) == [None, None]
            assert not co.exists(people, "Sam")
            with pytest.raises(co.NotFound):
                co.get(people, "Sam")
            assert co.get_or_load(people, "Sam", load) == Person("Sam", 9.0)  # not stored
        assert then.seconds < FAST, then.seconds
        # Writes and deletes that did not happen raise at once, naming the server.
        for write in (
            lambda: co.insert(people, Person("Sam", 2.0)),
            lambda: co.delete(people, "Sam"),
            lambda: co.update(people, "Sam", height=3.0),
        ):
            with Took() as took, pytest.raises(co.BackendError) as raised:
                write()
            assert took.seconds < FAST
            assert raised.value.server == server
            assert f"cache server {server} is down" in str(raised.value)
        # A clear needs every server, so it is never skipped: it asks, and times out.
        with Took() as took, pytest.raises(co.BackendError):
            co.clear(people)
        assert took.seconds >= TIMEOUT * 0.9
    down = [r.getMessage() for r in caplog.records if "unavailable" in r.getMessage()]
    assert len(down) == 1
    assert server in down[0]


def test_after_the_interval_one_call_probes_while_the_others_keep_skipping(
    proxied: tuple[Proxy, co.RedisBackend], caplog: pytest.LogCaptureFixture
) -> None:
    proxy, backend = proxied
    people = co.Repo(PERSON, backend=backend, on_backend_error="miss")
    co.insert(people, Person("Sam", 1.0))
    proxy.blackhole()
    assert co.get_or_none(people, "Sam") is None  # the outage starts
    time.sleep(RETRY)
    probe_took: list[float] = []

    def probe() -> None:
        with Took() as took:
            assert co.get_or_none(people, "Sam") is None
        probe_took.append(took.seconds)

    prober = threading.Thread(target=probe)
    prober.start()
    time.sleep(0.1)  # the probe is in flight, waiting on the hung server
    with Took() as others:
        for _ in range(10):
            assert co.get_or_none(people, "Sam") is None
    prober.join()
    assert others.seconds < FAST
    assert probe_took[0] >= TIMEOUT * 0.9  # the probe asked the server, and waited
    # The server answers again: the next probe (after the interval) ends the outage.
    proxy.forward()
    with caplog.at_level(logging.WARNING, logger="cacheorm"):
        assert co.get_or_none(people, "Sam") is None  # still within the interval: skipped
        time.sleep(RETRY)
        assert co.get(people, "Sam") == Person("Sam", 1.0)
        assert co.insert(people, Person("Bob", 2.0)) == Person("Bob", 2.0)
    up = [r.getMessage() for r in caplog.records if "available again" in r.getMessage()]
    assert len(up) == 1
    assert f"127.0.0.1:{proxy.port}" in up[0]


def test_raise_mode_calls_are_never_skipped(proxied: tuple[Proxy, co.RedisBackend]) -> None:
    proxy, backend = proxied
    lenient = co.Repo(PERSON, backend=backend, on_backend_error="miss")
    strict = lenient.replace(on_backend_error="raise")
    proxy.blackhole()
    assert co.get_or_none(lenient, "Sam") is None
    with Took() as took, pytest.raises(co.BackendError):
        co.get_or_none(strict, "Sam")  # it asks, and times out
    assert took.seconds >= TIMEOUT * 0.9
    # In a pipeline, each op follows its own repo's mode.
    with Took() as took:
        skipped, asked = co.execute(
            co.ops.get_or_none(lenient, "Sam"),
            co.ops.get_or_none(strict, "Bob"),
            raise_on_error=False,
        )
    assert skipped is None
    assert isinstance(asked, co.BackendError)
    assert took.seconds >= TIMEOUT * 0.9


def test_a_tier_serves_its_near_copies_and_skips_the_rest_while_far_is_down(
    proxied: tuple[Proxy, co.RedisBackend],
) -> None:
    proxy, far = proxied
    people = co.Repo(
        PERSON, backend=co.TieredBackend(co.MemoryBackend(), far), on_backend_error="miss"
    )
    co.insert(people, Person("Sam", 1.0))  # a near copy too
    proxy.blackhole()
    assert co.get_or_none(people, "Ann") is None  # not in near: far times out once
    with Took() as took:
        for _ in range(10):
            assert co.get_or_none(people, "Sam") == Person("Sam", 1.0)  # its near copy
            assert co.get_or_none(people, "Ann") is None  # skipped at once
        with pytest.raises(co.BackendError):
            co.insert(people, Person("Sam", 3.0))  # writes go to far: skipped, raised
    assert took.seconds < FAST


def test_execute_in_miss_mode_skips_the_down_server_too(
    proxied: tuple[Proxy, co.RedisBackend],
) -> None:
    proxy, backend = proxied
    people = co.Repo(PERSON, backend=backend, on_backend_error="miss")
    proxy.blackhole()
    assert co.get_or_none(people, "Sam") is None
    with Took() as took:
        results = co.execute(
            co.ops.get(people, "Sam"),
            co.ops.get_many(people, ["Sam", "Bob"]),
            co.ops.insert(people, Person("Cy", 1.0)),
            raise_on_error=False,
        )
    assert took.seconds < FAST
    assert isinstance(results[0], co.NotFound)
    assert results[1] == [None, None]
    assert isinstance(results[2], co.BackendError)


def test_aio_fails_fast_as_well(redis_server: RedisServer) -> None:
    redis_server.flush()

    async def main(port: int) -> None:
        backend = co.AsyncRedisBackend(
            url=f"redis://127.0.0.1:{port}/0",
            socket_timeout=TIMEOUT,
            socket_connect_timeout=TIMEOUT,
        )
        people = co.Repo(PERSON, backend=backend, on_backend_error="miss")
        await aio.insert(people, Person("Sam", 1.0))
        proxy.blackhole()
        assert await aio.get_or_none(people, "Sam") is None
        started = time.monotonic()
        got = await asyncio.gather(*(aio.get_or_none(people, "Sam") for _ in range(20)))
        assert got == [None] * 20
        assert await aio.get_or_load(people, "Sam", load) == Person("Sam", 9.0)
        with pytest.raises(co.BackendError):
            await aio.insert(people, Person("Sam", 2.0))
        assert time.monotonic() - started < FAST
        proxy.forward()
        await asyncio.sleep(RETRY)
        assert await aio.get(people, "Sam") == Person("Sam", 1.0)
        await backend.aclose()

    with Proxy(redis_server.host, redis_server.port) as proxy:
        asyncio.run(main(proxy.port))


def test_a_memcached_pool_skips_only_the_hung_nodes_keys(server_factory: ServerFactory) -> None:
    nodes: list[MemcachedServer] = [server_factory.memcached(), server_factory.memcached()]
    backend = co.MemcachedBackend(
        servers=[node.address for node in nodes], timeout=TIMEOUT, connect_timeout=TIMEOUT
    )
    people = co.Repo(PERSON, backend=backend, on_backend_error="miss")
    records = [Person(f"p{i}", float(i)) for i in range(40)]
    co.insert_many(people, records)
    hung = nodes[0]
    hung_name = f"{hung.host}:{hung.port}"
    on_hung = [p for p in records if backend.server_for(PERSON.encode_key(p.name)) == hung_name]
    assert 0 < len(on_hung) < len(records)
    names = [p.name for p in records]
    with frozen(hung.pid):
        with Took() as first:
            found = co.get_many(people, names)  # the hung node times out once
        assert first.seconds >= TIMEOUT * 0.9
        expected = [None if p in on_hung else p for p in records]
        assert found == expected  # the live node's keys are served
        with Took() as then:
            for _ in range(10):
                assert co.get_many(people, names) == expected
            live = next(p for p in records if p not in on_hung)
            assert co.get(people, live.name) == live
            assert co.insert(people, live._replace(height=99.0)).height == 99.0
            with pytest.raises(co.BackendError) as raised:
                co.insert(people, on_hung[0])
            assert raised.value.server == hung_name
        assert then.seconds < FAST
    time.sleep(RETRY)
    assert co.get(people, on_hung[0].name) == on_hung[0]  # probed, answered: back
    backend.close()


def test_a_cluster_skips_only_the_hung_masters_keys(redis_cluster: RedisCluster) -> None:
    redis_cluster.flush()
    backend = co.RedisBackend(
        url=f"redis+cluster://{redis_cluster.host}:{redis_cluster.ports[0]}",
        socket_timeout=TIMEOUT,
        socket_connect_timeout=TIMEOUT,
    )
    people = co.Repo(PERSON, backend=backend, on_backend_error="miss")
    records = [Person(f"c{i}", float(i)) for i in range(60)]
    co.insert_many(people, records)
    hung_port = redis_cluster.ports[1]
    hung_name = f"{redis_cluster.host}:{hung_port}"
    on_hung = [p for p in records if backend.server_for(PERSON.encode_key(p.name)) == hung_name]
    assert 0 < len(on_hung) < len(records)
    expected = [None if p in on_hung else p for p in records]
    pid = redis_cluster._procs[1].pid
    with frozen(pid):
        assert co.get_many(people, [p.name for p in records]) == expected
        with Took() as then:
            for _ in range(10):
                assert co.get_many(people, [p.name for p in records]) == expected
        assert then.seconds < FAST * 2
    time.sleep(RETRY)
    assert co.get_many(people, [p.name for p in records]) == records
    backend.close()


class FlakyFiles(co.MemoryBackend):
    """A store without ``server_for`` whose every call fails while ``down``."""

    down = False
    calls = 0

    def batch(self, commands: Sequence[Command]) -> list[object]:
        self.calls += 1
        if self.down:
            raise co.BackendError("disk gone", server="local-disk")
        return super().batch(commands)

    def get(self, key: bytes) -> bytes | None:
        self.calls += 1
        if self.down:
            raise co.BackendError("disk gone", server="local-disk")
        return super().get(key)


def test_a_backend_that_cannot_place_keys_is_skipped_whole(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    now = [1000.0]
    monkeypatch.setattr(Outage, "_clock", lambda: now[0])
    store = FlakyFiles()
    people = co.Repo(PERSON, backend=store, on_backend_error="miss")
    co.insert(people, Person("Sam", 1.0))
    store.down = True
    assert co.get_or_none(people, "Sam") is None
    asked = store.calls
    for _ in range(5):
        assert co.get_many(people, ["Sam", "Bob"]) == [None, None]
    assert store.calls == asked  # not asked: skipped as a whole
    store.down = False
    now[0] += RETRY
    assert co.get(people, "Sam") == Person("Sam", 1.0)  # the probe
    assert co.get(people, "Sam") == Person("Sam", 1.0)
    assert store.calls == asked + 2
