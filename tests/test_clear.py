"""``co.clear`` / ``aio.clear``: every record of one schema in one namespace, and nothing else.

Run over every backend kind, sync and async (an async kind is filled through its
sync facade and cleared through ``aio.clear``), with neighbours whose keys begin
like the cleared ones: another schema whose name extends it, namespaces that
extend it or that a glob would confuse with it, another version, records whose
memcached keys are base64-encoded, the ``AutoField`` counter and a stampede lock.
"""

from __future__ import annotations

import asyncio
import re
import socket
import threading
import time
from typing import NamedTuple
from urllib.parse import unquote_to_bytes

import pytest

import cacheorm as co
from cacheorm import aio, crud
from cacheorm.backends import memcached as mc
from cacheorm.backends.base import Clear, Get, Set, glob_escape, in_scope
from cacheorm.errors import BackendError
from cacheorm.repo import K, R
from tests.async_facade import SyncFacade
from tests.conftest import ASYNC_BACKEND_KINDS, BACKEND_KINDS
from tests.records import COLLECTION, NOTE, PERSON, Collection, Note, Person
from tests.servers import MemcachedServer, ServerFactory


class PersonX(NamedTuple):
    name: str
    height: float


PERSON_X = co.Schema(PersonX, key="name")  # "PersonX:" starts like "Person"
PERSON_V2 = co.Schema(Person, key="name", version="2")  # "Person@2:"
PROFILE = co.Schema(PersonX, key="name", name="Profile", key_format="user:{name}:profile")
SETTINGS = co.Schema(PersonX, key="name", name="Settings", key_format="user:{name}:settings")

# Namespaces a prefix match or an unescaped glob would confuse with "a" or "a*".
NEIGHBOUR_NAMESPACES = ("", "ab", "a/b", "abc", "a?", "[a]", "a\\")
NAMES = ("Sam", "Zoë Smith", "x" * 200, "key with spaces", "*", "[x]")


def run_clear(repo: co.Repo[R, K], backend: co.Backend) -> int:
    """``co.clear``, or for an async kind ``aio.clear`` on the facade's own loop."""
    if isinstance(backend, SyncFacade):
        return backend.runner.run(aio.clear(repo.replace(backend=backend.inner)))
    return co.clear(repo)


@pytest.mark.parametrize("backend_kind", BACKEND_KINDS + ASYNC_BACKEND_KINDS)
def test_clear_removes_the_schemas_records_in_its_namespace_and_nothing_else(
    backend: co.Backend,
) -> None:
    cleared = co.Repo(PERSON, backend=backend, namespace="a*")
    same_schema_elsewhere = [
        co.Repo(PERSON, backend=backend, namespace=ns) for ns in NEIGHBOUR_NAMESPACES
    ]
    people = [Person(name, 1.5) for name in NAMES]
    for repo in (cleared, *same_schema_elsewhere):
        co.insert_many(repo, people)
    others = co.Repo(PERSON_X, backend=backend, namespace="a*")
    co.insert_many(others, [PersonX(name, 2.0) for name in NAMES])
    versioned = co.Repo(PERSON_V2, backend=backend, namespace="a*")
    co.insert(versioned, Person("Sam", 3.0))
    notes = co.Repo(NOTE, backend=backend, namespace="a*")
    first = co.insert(notes, Note(None, "first"))
    lock = crud.LOCK_PREFIX + PERSON.encode_key("Sam", "a*")
    backend.set(lock, b"held by a loader in flight", 60)

    assert run_clear(cleared, backend) == len(NAMES)

    assert co.get_many(cleared, list(NAMES)) == [None] * len(NAMES)
    for repo in same_schema_elsewhere:
        assert co.get_many(repo, list(NAMES)) == people, repo.namespace
    assert co.get_many(others, list(NAMES)) == [PersonX(name, 2.0) for name in NAMES]
    assert co.get(versioned, "Sam").height == 3.0
    assert backend.get(lock) == b"held by a loader in flight"
    # The AutoField counter stays: ids go on from where they were, never reused.
    assert run_clear(notes, backend) == 1
    assert co.get_or_none(notes, first.id) is None
    assert co.insert(notes, Note(None, "second")).id == (first.id or 0) + 1
    assert run_clear(cleared, backend) == 0


@pytest.mark.parametrize("backend_kind", BACKEND_KINDS + ASYNC_BACKEND_KINDS)
def test_clear_a_key_format_removes_keys_of_its_shape_only(backend: co.Backend) -> None:
    profiles = co.Repo(PROFILE, backend=backend)
    settings = co.Repo(SETTINGS, backend=backend)
    collections = co.Repo(COLLECTION, backend=backend, namespace="n")
    for i in range(30):
        co.insert(profiles, PersonX(f"u{i}", 1.0))
        co.insert(settings, PersonX(f"u{i}", 2.0))
    items: list[Collection] = [{"collector": "Bo", "note_id": i, "remark": ""} for i in range(5)]
    co.insert_many(collections, items)
    backend.set(b"user:u1", b"not a profile: no :profile suffix")

    assert run_clear(profiles, backend) == 30
    assert co.get_or_none(profiles, "u3") is None
    assert co.get(settings, "u3") == PersonX("u3", 2.0)
    assert backend.get(b"user:u1") == b"not a profile: no :profile suffix"
    assert run_clear(collections, backend) == 5
    assert co.get_many(settings, ["u0", "u29"]) == [PersonX("u0", 2.0), PersonX("u29", 2.0)]


def test_a_key_format_that_cannot_tell_its_keys_apart_is_refused() -> None:
    shapeless = co.Schema(PersonX, key="name", key_format="{name}")
    computed = co.Schema(PersonX, key="name", key_format=lambda name: f"p.{name}")
    for schema in (shapeless, computed):
        repo = co.Repo(schema)
        co.insert(repo, PersonX("Sam", 1.0))
        with pytest.raises(co.ValidationError, match="cannot tell this schema's keys"):
            co.clear(repo)
        assert co.get(repo, "Sam") == PersonX("Sam", 1.0)  # nothing was removed
        (refused,) = co.execute(co.ops.clear(repo), raise_on_error=False)
        assert isinstance(refused, co.ValidationError)


def test_the_scope_of_a_schema_is_an_exact_prefix_or_an_anchored_shape() -> None:
    prefix, shape = PERSON.key_scope("a*")
    assert (prefix, shape) == (b"a*/Person:", None)
    assert in_scope(PERSON.encode_key("x", "a*"), prefix, shape)
    for other in (PERSON.encode_key("x", "a*b"), PERSON_X.encode_key("x", "a*")):
        assert not in_scope(other, prefix, shape)
    assert not in_scope(NOTE.counter_key("a*"), *NOTE.key_scope("a*"))  # the id counter stays
    assert glob_escape(prefix) + b"*" == b"a\\*/Person:*"
    prefix, shape = COLLECTION.key_scope()
    assert prefix == b"collection."
    assert shape is not None
    assert shape.fullmatch(b"collection.Bob.1")
    assert not in_scope(b"collectionX.Bob.1", prefix, shape)


@pytest.mark.parametrize("backend_kind", ["memory", "redis", "memcached_multi"])
def test_in_execute_a_clear_runs_after_the_ops_before_it_and_before_those_after(
    backend: co.Backend,
) -> None:
    people = co.Repo(PERSON, backend=backend)
    co.insert(people, Person("Ann", 1.0))
    results = co.execute(
        co.ops.update(people, "Ann", height=2.0),  # two phases: it finishes first
        co.ops.insert(people, Person("Bob", 1.0)),
        co.ops.clear(people),
        co.ops.get_or_none(people, "Ann"),
        co.ops.insert(people, Person("Cy", 1.0)),
    )
    assert results == [Person("Ann", 2.0), Person("Bob", 1.0), 2, None, Person("Cy", 1.0)]
    assert co.get_many(people, ["Ann", "Bob", "Cy"]) == [None, None, Person("Cy", 1.0)]


@pytest.mark.parametrize("backend_kind", ["memory", "redis", "redis_cluster", "memcached_multi"])
def test_a_batch_runs_a_clear_in_its_place(backend: co.Backend) -> None:
    prefix = b"batch:"
    results = backend.batch(
        [
            Set(b"batch:1", b"one"),
            Clear(prefix),
            Set(b"batch:2", b"two"),
            Get(b"batch:1"),
        ]
    )
    assert results == [True, 1, True, None]
    assert backend.get(b"batch:2") == b"two"


@pytest.mark.parametrize("backend_kind", ["tiered", "atiered"])
def test_a_tier_clears_its_near_copies_too(backend: co.Backend) -> None:
    people = co.Repo(PERSON, backend=backend)
    co.insert_many(people, [Person("Ann", 1.0), Person("Bob", 2.0)])
    assert co.get(people, "Ann") == Person("Ann", 1.0)  # a near copy
    assert run_clear(people, backend) == 2
    assert co.get_many(people, ["Ann", "Bob"]) == [None, None]


@pytest.mark.parametrize("backend_kind", ["memory"])
def test_clear_removes_remembered_absences_so_the_loader_runs_again(
    backend: co.Backend,
) -> None:
    people = co.Repo(PERSON, backend=backend)
    calls: list[str] = []

    def nobody(name: str) -> Person | None:
        calls.append(name)
        return None

    for _ in range(2):
        with pytest.raises(co.NotFound):
            co.get_or_load(people, "Ghost", nobody, negative_ttl=60)
    assert calls == ["Ghost"]
    assert co.clear(people) == 1
    with pytest.raises(co.NotFound):
        co.get_or_load(people, "Ghost", nobody, negative_ttl=60)
    assert calls == ["Ghost", "Ghost"]


def test_clear_is_a_write_a_down_server_makes_it_raise_in_miss_mode_too() -> None:
    dead = co.RedisBackend(url="redis://127.0.0.1:1/0", socket_connect_timeout=0.5)
    loud = co.Repo(PERSON, backend=dead)
    for repo in (loud, loud.replace(on_backend_error="miss")):
        with pytest.raises(BackendError):
            co.clear(repo)


# -- memcached: the metadump crawl ---------------------------------------------------------


def _exchange(reply_chunks: list[bytes], keep: re.Pattern[bytes] | None = None) -> object:
    """Feed a metadump reply to the sans-I/O exchange in ``reply_chunks``; return its reply."""

    class Node:
        name = "mc:1"
        prefix = b""

    def pick(line: bytes) -> bytes | None:
        key = unquote_to_bytes(line[4:].split(b" ")[0])
        return key if keep is None or keep.fullmatch(key) is not None else None

    listing = mc._Listing(b"lru_crawler metadump all", pick)
    exchange = mc._Exchange(Node(), [mc._Task(0, mc._listing_job(listing))])
    assert exchange.out == b"lru_crawler metadump all\r\n"
    for chunk in reply_chunks:
        exchange.buf += chunk
        exchange.parse()
    assert exchange.done
    (reply,) = exchange.replies
    return reply


def test_a_metadump_is_parsed_as_it_streams_in_whatever_the_chunks() -> None:
    dump = (
        b"key=person%3ASam exp=-1 la=1 cas=1 fetch=no cls=1 size=70\n"
        b"key=~bWm_DqyBTbWl0aA%3D%3D exp=-1 la=1 cas=2 fetch=no cls=1 size=66\n"
        b"key=other exp=-1 la=1 cas=3 fetch=no cls=1 size=60\n"
        b"END\r\n"
    )
    for size in (1, 7, 64, len(dump)):
        chunks = [dump[i : i + size] for i in range(0, len(dump), size)]
        reply = _exchange(chunks, re.compile(rb"person:.*|~b.*"))
        assert reply == [b"person:Sam", b"~bWm_DqyBTbWl0aA=="]
    assert _exchange([b"END\r\n"]) == []


def test_a_busy_or_disabled_crawler_is_an_error_naming_the_server() -> None:
    busy = _exchange([b"BUSY currently processing crawler request\r\n"])
    assert isinstance(busy, mc._Busy)
    assert busy.server == "mc:1"
    refused = _exchange([b"ERROR lru crawler disabled\r\n"])
    assert isinstance(refused, BackendError)
    assert "1.4.31" in str(refused)


def test_memcached_keys_map_back_to_the_keys_they_encode() -> None:
    for key in (b"person:Sam", b"a b", "Zoë".encode(), b"~tilde", b"x" * 186):
        assert mc.original_key(mc.memcached_key(key)) == key
    assert mc.original_key(mc.memcached_key(b" " * 187)) is None  # hashed: not recoverable
    assert mc.original_key(b"~bnot base64!") is None


def _fill(server: MemcachedServer, items: int) -> None:
    client = server.client()
    try:
        for start in range(0, items, 500):
            client.set_many({f"filler:{i}": b"x" * 50 for i in range(start, start + 500)})
    finally:
        client.close()


def _crawling(server: MemcachedServer) -> bool:
    client = server.client()
    try:
        return client.stats()[b"lru_crawler_running"] == 1
    finally:
        client.close()


def _hold_the_crawler(server: MemcachedServer) -> socket.socket:
    """A raw connection that starts a metadump and reads none of it: the crawl stalls."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before connecting: small window
    sock.connect(server.address)
    sock.sendall(b"lru_crawler metadump all\r\n")
    deadline = time.monotonic() + 5
    while not _crawling(server):
        assert time.monotonic() < deadline, "the crawl did not start"
        time.sleep(0.02)
    return sock


def test_clear_waits_for_another_clients_crawl_without_queueing_behind_it(
    server_factory: ServerFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = server_factory.memcached()
    _fill(server, 50_000)  # enough that an unread metadump stalls on full socket buffers
    backend = co.MemcachedBackend(servers=[server.address], timeout=5)
    people = co.Repo(PERSON, backend=backend)
    co.insert_many(people, [Person(f"p{i}", 1.0) for i in range(10)])
    held = _hold_the_crawler(server)
    threading.Timer(0.5, held.close).start()  # the other client goes away mid-crawl
    started = time.monotonic()
    assert co.clear(people) == 10
    assert time.monotonic() - started >= 0.4  # it waited for the other crawl to end

    monkeypatch.setattr(mc, "_BUSY_PAUSES", (0.05, 0.05))
    co.insert(people, Person("p1", 1.0))
    held = _hold_the_crawler(server)
    try:
        with pytest.raises(BackendError, match="stayed busy") as raised:
            co.clear(people)
        assert raised.value.server == f"{server.host}:{server.port}"
        # It never asked for a metadump of its own, which memcached would have queued
        # behind the stalled one, holding up the worker thread of its connection.
        assert co.get(people, "p1") == Person("p1", 1.0)
    finally:
        held.close()
    deadline = time.monotonic() + 5
    while _crawling(server):
        assert time.monotonic() < deadline
        time.sleep(0.02)
    assert co.clear(people) == 1
    backend.close()


def test_async_memcached_clears_what_sync_wrote(memcached_servers: list[MemcachedServer]) -> None:
    nodes = [server.address for server in memcached_servers[1:3]]
    for server in memcached_servers[1:3]:
        server.flush()
    sync = co.Repo(PERSON, backend=co.MemcachedBackend(servers=nodes))
    co.insert_many(sync, [Person(f"p{i} é", 1.0) for i in range(100)])
    co.insert(sync.replace(namespace="kept"), Person("p1 é", 1.0))

    async def main() -> int:
        backend = co.AsyncMemcachedBackend(servers=nodes)
        try:
            return await aio.clear(sync.replace(backend=backend))
        finally:
            await backend.aclose()

    assert asyncio.run(main()) == 100
    assert co.get_or_none(sync, "p1 é") is None
    assert co.get(sync.replace(namespace="kept"), "p1 é") == Person("p1 é", 1.0)
