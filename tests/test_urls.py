"""Backends from URLs, and ``ping``, on real throwaway servers.

What a user relies on: every scheme gives a working backend (sync and async,
sharing one cache), its query parameters are really applied (a short
``socket_timeout`` or memcached ``timeout`` bounds a call to a hung server, a
database number or ``client_name`` reaches Redis, ``default_ttl`` and
``durable`` reach the backend), a bad URL is refused with a message that says
what is supported, and ``ping`` answers on a live store and raises
``BackendError`` (naming the server) at once on a dead one and within the
timeout on a hung one.
"""

from __future__ import annotations

import asyncio
import shutil
import time
from collections.abc import Callable, Coroutine, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import pytest
import redis

import cacheorm as co
from cacheorm import aio
from tests.records import PERSON, Person
from tests.servers import frozen

if TYPE_CHECKING:
    from tests.servers import MemcachedServer, RedisCluster, RedisServer, ServerFactory

_T = TypeVar("_T")


def run(coroutine: Coroutine[object, object, _T]) -> _T:
    return asyncio.run(coroutine)


@contextmanager
def closing(backend: co.Backend) -> Iterator[co.Backend]:
    try:
        yield backend
    finally:
        backend.close()


async def round_trip(url: str, person: Person) -> Person:
    """Insert through an async backend from ``url``, read back, ping and close."""
    backend = co.async_backend_from_url(url)
    try:
        repo = co.Repo(PERSON, backend=backend)
        await aio.insert(repo, person)
        await backend.ping()
        return await aio.get(repo, person.name)
    finally:
        await backend.aclose()


def raises_within(seconds: float, call: Callable[[], object]) -> co.BackendError:
    """``call()`` raises ``BackendError`` in less than ``seconds``; return the error."""
    started = time.monotonic()
    with pytest.raises(co.BackendError) as caught:
        call()
    assert time.monotonic() - started < seconds
    return caught.value


def async_ping(url: str) -> None:
    """``await ping()`` on a new async backend from ``url``, closed afterwards."""

    async def ping() -> None:
        backend = co.async_backend_from_url(url)
        try:
            await backend.ping()
        finally:
            await backend.aclose()

    run(ping())


# ------------------------------------------------------------------ in-process


def test_memory_url_applies_its_options_and_serves_both_drivers() -> None:
    backend = co.backend_from_url("memory://?max_items=2&default_ttl=30")
    assert isinstance(backend, co.MemoryBackend)
    assert (backend.max_items, backend.default_ttl) == (2, 30)
    people = co.Repo(PERSON, backend=backend)
    for name in ("Ann", "Bob", "Cy"):
        co.insert(people, Person(name, 1.0))
    assert co.get_many(people, ["Ann", "Bob", "Cy"])[0] is None  # max_items=2 evicted Ann
    found = backend.get_with_ttl(PERSON.encode_key("Cy"))
    assert found is not None
    assert 29 < found[1] <= 30
    backend.ping()
    unbounded = co.backend_from_url("memory://?max_items=none")
    assert isinstance(unbounded, co.MemoryBackend)
    assert unbounded.max_items is None
    assert run(round_trip("memory://", Person("Dee", 2.0))) == Person("Dee", 2.0)


def test_file_url_applies_its_options_and_shares_the_directory(tmp_path: Path) -> None:
    directory = tmp_path / "cache dir"  # a space: percent-encoded in the URL
    url = f"{directory.as_uri()}?durable=true&max_items=500"
    with closing(co.backend_from_url(url)) as backend:
        assert isinstance(backend, co.FileSystemBackend)
        assert (backend.directory, backend.durable, backend.max_items) == (directory, True, 500)
        backend.ping()
        co.insert(co.Repo(PERSON, backend=backend), Person("Sam", 1.5))
    # The async backend of the same URL reads what the sync one wrote, and the reverse.
    assert run(round_trip(url, Person("Ann", 1.6))) == Person("Ann", 1.6)
    with closing(
        co.backend_from_url(directory.as_uri().replace("file://", "file://localhost"))
    ) as again:
        assert co.get(co.Repo(PERSON, backend=again), "Ann") == Person("Ann", 1.6)
        assert co.get(co.Repo(PERSON, backend=again), "Sam") == Person("Sam", 1.5)


def test_ping_fails_on_a_removed_or_replaced_directory(tmp_path: Path) -> None:
    directory = tmp_path / "cache"
    with closing(co.backend_from_url(directory.as_uri())) as backend:
        backend.ping()
        shutil.rmtree(directory)
        error = raises_within(1.0, backend.ping)
        assert str(directory) in str(error)
        directory.write_text("not a directory")
        raises_within(1.0, backend.ping)
        # Tiered: the near tier's failure is reported too.
        raises_within(1.0, co.TieredBackend(backend, co.MemoryBackend()).ping)
        raises_within(1.0, co.TieredBackend(co.MemoryBackend(), backend).ping)

    async def async_ping() -> None:
        shutil.rmtree(tmp_path / "async", ignore_errors=True)
        backend = co.async_backend_from_url((tmp_path / "async").as_uri())
        try:
            await backend.ping()
            shutil.rmtree(tmp_path / "async")
            with pytest.raises(co.BackendError):
                await backend.ping()
            tiered = co.AsyncTieredBackend(co.MemoryBackend(), backend)
            with pytest.raises(co.BackendError):
                await tiered.ping()
        finally:
            await backend.aclose()

    run(async_ping())


# ------------------------------------------------------------------ Redis


def test_redis_url_reaches_the_database_and_redis_py(redis_server: RedisServer) -> None:
    redis_server.flush()
    base = f"redis://{redis_server.host}:{redis_server.port}"
    url = f"{base}/3?socket_timeout=0.5&socket_connect_timeout=0.5&client_name=h1-urls"
    with closing(co.backend_from_url(url + "&default_ttl=60&retries=0")) as backend:
        assert isinstance(backend, co.RedisBackend)
        backend.ping()
        assert backend.default_ttl == 60
        co.insert(co.Repo(PERSON, backend=backend), Person("Sam", 1.5))
        with redis.Redis(redis_server.host, redis_server.port, db=3, socket_timeout=5) as raw:
            names = {client["name"] for client in raw.client_list()}
            assert "h1-urls" in names  # client_name reached redis-py's connections
            key = PERSON.encode_key("Sam")
            assert raw.exists(key) == 1
            assert 0 < raw.ttl(key) <= 60  # default_ttl reached the backend
    assert run(round_trip(url, Person("Ann", 1.6))) == Person("Ann", 1.6)
    # ?db= is the same as the path's database.
    with closing(co.backend_from_url(f"{base}?db=3")) as same:
        assert co.get(co.Repo(PERSON, backend=same), "Ann") == Person("Ann", 1.6)


def test_redis_cluster_url_serves_every_slot(redis_cluster: RedisCluster) -> None:
    redis_cluster.flush()
    seeds = ",".join(f"{redis_cluster.host}:{port}" for port in redis_cluster.ports[:2])
    url = f"redis+cluster://{seeds}?socket_timeout=0.5&client_name=h1-cluster"
    people = [Person(f"p{i}", float(i)) for i in range(30)]
    with closing(co.backend_from_url(url)) as backend:
        backend.ping()
        repo = co.Repo(PERSON, backend=backend)
        co.insert_many(repo, people)
        assert co.get_many(repo, [p.name for p in people]) == people
        for port in redis_cluster.ports:  # every master holds some, from a client of that name
            with redis_cluster.node_client(port) as node:
                assert node.dbsize() > 0
                assert "h1-cluster" in {client["name"] for client in node.client_list()}

    async def read_back() -> list[Person | None]:
        backend = co.async_backend_from_url(url)
        try:
            await backend.ping()
            return await aio.get_many(co.Repo(PERSON, backend=backend), [p.name for p in people])
        finally:
            await backend.aclose()

    assert run(read_back()) == people


def test_redis_socket_timeout_bounds_a_hung_server(server_factory: ServerFactory) -> None:
    server = server_factory.redis()
    url = f"{server.url}?socket_timeout=0.2&socket_connect_timeout=0.2"
    with closing(co.backend_from_url(url)) as backend:
        backend.ping()
        with frozen(server.pid):
            error = raises_within(1.0, backend.ping)  # the default would wait 2 s
            assert error.server == f"{server.host}:{server.port}"
            raises_within(1.0, lambda: async_ping(url))
        backend.ping()  # answers again once resumed
        server.stop()
        error = raises_within(0.5, backend.ping)  # killed: refused at once
        assert error.server == f"{server.host}:{server.port}"
        raises_within(0.5, lambda: async_ping(url))
        raises_within(0.5, co.TieredBackend(co.MemoryBackend(), backend).ping)


# ------------------------------------------------------------------ memcached


def test_memcached_url_spreads_over_the_pair_for_both_drivers(
    memcached_servers: list[MemcachedServer],
) -> None:
    pair = memcached_servers[1:3]
    for node in pair:
        node.flush()
    hosts = ",".join(f"{node.host}:{node.port}" for node in pair)
    url = f"memcached://{hosts}?timeout=0.5&connect_timeout=0.5&default_ttl=60"
    people = [Person(f"p{i}", float(i)) for i in range(30)]
    with closing(co.backend_from_url(url)) as backend:
        assert isinstance(backend, co.MemcachedBackend)
        assert backend.default_ttl == 60
        backend.ping()
        co.insert_many(co.Repo(PERSON, backend=backend), people)
        found = backend.get_with_ttl(PERSON.encode_key("p0"))
        assert found is not None
        assert 0 < found[1] <= 60
    for node in pair:
        client = node.client()
        try:
            items = client.stats()[b"curr_items"]
            assert isinstance(items, int)
            assert items > 0  # both nodes hold some
        finally:
            client.close()

    async def read_back() -> list[Person | None]:
        backend = co.async_backend_from_url(url + "&max_connections=4")
        try:
            assert isinstance(backend, co.AsyncMemcachedBackend)
            await backend.ping()
            # The async backend places keys as the sync one did: it finds every record.
            return await aio.get_many(co.Repo(PERSON, backend=backend), [p.name for p in people])
        finally:
            await backend.aclose()

    assert run(read_back()) == people


def test_memcached_timeout_bounds_a_hung_node_and_ping_names_it(
    server_factory: ServerFactory, memcached_servers: list[MemcachedServer]
) -> None:
    live = memcached_servers[0]
    node = server_factory.memcached()
    url = f"memcached://{live.host}:{live.port},{node.host}:{node.port}?timeout=0.2"
    with closing(co.backend_from_url(url)) as backend:
        backend.ping()
        with frozen(node.pid):
            error = raises_within(1.0, backend.ping)  # the default would wait 2 s
            assert error.server == f"{node.host}:{node.port}"
            error = raises_within(1.0, lambda: async_ping(url))
            assert error.server == f"{node.host}:{node.port}"
        backend.ping()
        node.stop()
        error = raises_within(0.5, backend.ping)
        assert error.server == f"{node.host}:{node.port}"
        raises_within(0.5, lambda: async_ping(url))


# ------------------------------------------------------------------ bad URLs


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("memcache://127.0.0.1:11211", "unknown scheme 'memcache'; supported: memory://"),
        ("127.0.0.1:6379", "supported: memory://"),
        ("file://relative/dir", "file:///abs/dir"),
        ("file:relative/dir", "must be absolute"),
        ("memory://somewhere", "names no host or path"),
        ("redis://127.0.0.1:99999/0", "port '99999'"),
        ("redis://127.0.0.1:http/0", "port 'http'"),
        ("redis://127.0.0.1/zero", "not a database number"),
        ("redis://a:1,b:2", "redis+cluster://"),
        ("redis://127.0.0.1?socket_timeout=fast", "socket_timeout='fast': expected seconds"),
        ("redis://127.0.0.1?socket_timeout=-1", "socket_timeout='-1'"),
        ("redis://127.0.0.1?sockettimeout=1", "unknown query parameter sockettimeout"),
        ("redis://127.0.0.1?retry_on_timeout=true", "set retries=N instead"),
        ("redis://127.0.0.1?ssl_cert_reqs=none", "use rediss://"),
        ("redis+cluster://127.0.0.1:7000/1", "only database 0"),
        ("memcached://127.0.0.1:11211?timeout=0", "timeout='0'"),
        ("memcached://127.0.0.1:11211?socket_timeout=1", "takes: connect_timeout, default_ttl"),
        ("memcached://127.0.0.1:11211?max_connections=4", "async_backend_from_url"),
        ("memcached://h:1,h:1", "listed twice"),
        ("memory://?max_items=0", "max_items='0'"),
        ("memory://?durable=true", "unknown query parameter durable"),
        ("file:///tmp/x?durable=maybe", "durable='maybe': expected true or false"),
        ("memory://?default_ttl=1&default_ttl=2", "given twice"),
    ],
)
def test_a_bad_url_is_refused_saying_why(url: str, says: str) -> None:
    with pytest.raises(co.ValidationError) as caught:
        co.backend_from_url(url)
    assert says in str(caught.value)
    assert isinstance(caught.value, ValueError)
    if "max_connections" not in url:  # the async twin refuses the same URLs
        with pytest.raises(co.ValidationError):
            co.async_backend_from_url(url)


def test_a_password_never_appears_in_an_error() -> None:
    with pytest.raises(co.ValidationError) as caught:
        co.backend_from_url("rediss://me:hunter2@cache:6380/0?ssl_password=pw2&bogus=1")
    message = str(caught.value)
    assert "hunter2" not in message
    assert "pw2" not in message
    assert "me:***@cache" in message
    assert "bogus" in message


def test_redis_backend_errors_never_show_the_password() -> None:
    """A URL given to RedisBackend directly is redacted in its errors too."""
    for url in ("redis://me:s3cret@127.0.0.1:notaport/0", "redis+cluster://me:s3cret@h:1/5"):
        with pytest.raises(co.ValidationError) as refused:
            co.RedisBackend(url=url)
        assert "s3cret" not in str(refused.value)
        assert "***" in str(refused.value)
