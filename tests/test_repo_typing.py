"""The repo's typed joins at run time: hooks per event, and what a backend must be.

The static side (a hook of the wrong shape for its event, a backend that is
not a ``co.Backend``) is checked by ``tests/typing_cases/*_typed_joins.py``.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from typing import TypedDict

import pymemcache
import pytest
import redis
from pymemcache.client.hash import HashClient

import cacheorm as co
from tests.records import PERSON, Person
from tests.servers import free_port


class Collection(TypedDict):
    collector: str
    note_id: int
    remark: str


COLLECTION: co.Schema[Collection, tuple[str, int]] = co.Schema(
    Collection, key=("collector", "note_id")
)

# Clients connect lazily: building one opens no connection (and nothing listens
# on a free port anyway).
RAW_CLIENTS: dict[str, tuple[Callable[[int], object], str]] = {
    "redis.Redis": (lambda port: redis.Redis(port=port), "co.RedisBackend(client=...)"),
    "pymemcache.Client": (
        lambda port: pymemcache.Client(("127.0.0.1", port)),
        "co.MemcachedBackend(client=...)",
    ),
    "pymemcache.HashClient": (
        lambda port: HashClient([("127.0.0.1", port)]),
        "co.MemcachedBackend(client=...)",
    ),
}


# ------------------------------------------------------------------ backends


@pytest.mark.parametrize("name", RAW_CLIENTS)
def test_a_raw_client_is_refused_naming_its_wrapper(name: str) -> None:
    make, wrapper = RAW_CLIENTS[name]
    raw = make(free_port())
    started = time.monotonic()
    with pytest.raises(co.ValidationError, match=re.escape(f"backend={wrapper}")):
        co.Repo(PERSON, backend=raw)  # type: ignore[arg-type]  # the slip under test
    people = co.Repo(PERSON)
    with pytest.raises(co.ValidationError, match=re.escape(wrapper)):
        people.replace(backend=raw)  # type: ignore[arg-type]  # the slip under test
    assert time.monotonic() - started < 1.0  # refused at once, no connection tried


def test_what_is_not_a_backend_is_refused_naming_what_it_lacks() -> None:
    class GetOnly:
        def get(self, key: bytes) -> bytes | None:
            return None

    with pytest.raises(co.ValidationError, match=r"it lacks .*\bset\b") as refused:
        co.Repo(PERSON, backend=GetOnly())  # type: ignore[arg-type]  # the mistake under test
    assert "get," not in str(refused.value)  # only what is missing is named
    with pytest.raises(co.ValidationError, match=r"not a co\.Backend"):
        co.Repo(PERSON, backend={})  # type: ignore[arg-type]  # the mistake under test


def test_every_backend_and_a_delegating_proxy_are_accepted(tmp_path: object) -> None:
    class Proxy:
        """Forwards everything, as instrumentation wrappers do."""

        def __init__(self, inner: co.Backend) -> None:
            self.inner = inner

        def __getattr__(self, name: str) -> object:
            return getattr(self.inner, name)

    memory = co.MemoryBackend()
    files = co.FileSystemBackend(str(tmp_path))
    try:
        backends: list[co.Backend] = [
            memory,
            co.SimpleBackend(),
            files,
            co.TieredBackend(co.MemoryBackend(), memory),
        ]
        for backend in backends:
            people = co.Repo(PERSON, backend=backend)
            assert co.insert(people, Person("Sam", 1.0)) == co.get(people, "Sam")
        proxied = co.Repo(PERSON, backend=Proxy(memory))  # type: ignore[arg-type]  # duck-typed
        assert co.get(proxied, "Sam") == Person("Sam", 1.0)
    finally:
        files.close()


# ------------------------------------------------------------------ hooks


def test_typed_hooks_see_records_and_keys_of_their_event() -> None:
    seen: list[tuple[str, object]] = []

    def tidy(repo: co.Repo[Collection, tuple[str, int]], item: Collection) -> Collection:
        return {**item, "remark": item["remark"].strip()}

    def stored(repo: co.Repo[Collection, tuple[str, int]], item: Collection) -> None:
        seen.append(("after", item))

    def deleting(repo: co.Repo[Collection, tuple[str, int]], key: tuple[str, int]) -> None:
        seen.append(("delete", key))

    def keep(repo: co.Repo[Collection, tuple[str, int]], item: Collection) -> None:
        seen.append(("before_update", item))  # returns None: the record is kept

    collections = co.Repo(COLLECTION)
    collections = co.on(collections, "before_insert", tidy)
    collections = co.on(collections, "before_update", keep)
    collections = co.on(collections, "before_update", tidy)
    collections = co.on(collections, "after_insert", stored)
    collections = co.on(collections, "after_update", stored)
    collections = co.on(collections, "before_delete", deleting)
    inserted = co.insert(collections, {"collector": "Bob", "note_id": 1, "remark": " hi "})
    assert inserted["remark"] == "hi"
    updated = co.update(collections, ("Bob", 1), remark=" there ")
    assert updated == {"collector": "Bob", "note_id": 1, "remark": "there"}
    assert co.delete(collections, ("Bob", 1)) is True
    assert seen == [
        ("after", inserted),
        ("before_update", {"collector": "Bob", "note_id": 1, "remark": " there "}),
        ("after", updated),
        ("delete", ("Bob", 1)),
    ]


def test_a_hook_returning_a_foreign_value_is_refused_before_writing() -> None:
    def broken(repo: co.Repo[Person, str], subject: object) -> object:
        return "not a Person"  # the untyped form: only the run-time check can catch it

    people = co.Repo(PERSON)
    with pytest.raises(co.ValidationError):
        co.insert(co.on(people, "before_insert", broken), Person("Sam", 1.0))
    assert co.get_or_none(people, "Sam") is None


def test_repos_with_the_same_hooks_are_equal() -> None:
    def audit(repo: co.Repo[Person, str], person: Person) -> None: ...

    people = co.Repo(PERSON)
    assert co.on(people, "after_insert", audit) == co.on(people, "after_insert", audit)
    assert co.on(people, "after_insert", audit) != co.on(people, "after_update", audit)
    assert co.on(people, "after_insert", audit) != people
    assert people.replace(ttl=5).hooks == people.hooks
    hooked = co.on(people, "after_insert", audit)
    assert hooked.replace(ttl=5).hooks == hooked.hooks  # replace keeps the hooks
