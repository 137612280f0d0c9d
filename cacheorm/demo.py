"""A guided tour of cacheorm: ``python -m cacheorm.demo`` (``make demo``).

Runs on the in-process backend with no server. ``--redis URL`` or
``--memcached HOST:PORT`` runs the same walk against a real server, under a
namespace of its own so it never touches other keys.
"""

from __future__ import annotations

import argparse
import datetime as dt
import time
import uuid
from typing import NamedTuple, TypedDict

import cacheorm as co


class Person(NamedTuple):
    """A record is a plain NamedTuple (or TypedDict, or frozen dataclass)."""

    name: str
    height: float
    married: bool = False
    email: str | None = None


class Collection(TypedDict):
    """A TypedDict record with a composite key (collector, note_id)."""

    collector: str
    note_id: int
    remark: str


PERSON: co.Schema[Person, str] = co.Schema(Person, key="name")
COLLECTION: co.Schema[Collection, tuple[str, int]] = co.Schema(
    Collection,
    key=("collector", "note_id"),
    key_format="collection.%s.%d",
    defaults={"remark": ""},
)


def step(title: str) -> None:
    print(f"\n== {title}")


def show(label: str, value: object) -> None:
    print(f"   {label:<34} -> {value!r}")


def make_backend(args: argparse.Namespace) -> co.Backend:
    if args.redis:
        return co.RedisBackend(url=args.redis)
    if args.memcached:
        host, _, port = args.memcached.rpartition(":")
        return co.MemcachedBackend(servers=[(host or "127.0.0.1", int(port))])
    return co.MemoryBackend()


def walk(backend: co.Backend, namespace: str) -> None:
    """The tour itself: every call in the steps below is the public API."""
    people = co.Repo(PERSON, backend=backend, serializer="msgpack", ttl=3600, namespace=namespace)
    collections = co.Repo(COLLECTION, backend=backend, serializer="json", namespace=namespace)
    records(people)
    batches(people, collections)
    read_through(people)
    expiry_and_delete(people, collections)
    print(f"\nDone at {dt.datetime.now(dt.UTC):%H:%M:%S} UTC.")


def records(people: co.Repo[Person, str]) -> None:
    """Insert, get, update, modify, add."""
    step("insert and get: typed records in, the same typed records out")
    sam = co.insert(people, Person("Sam", 178.8, email="sam@example.com"))
    show("co.insert(people, Person('Sam', ...))", sam)
    show("co.get(people, 'Sam')", co.get(people, "Sam"))
    show("co.get_or_none(people, 'Nobody')", co.get_or_none(people, "Nobody"))
    try:
        co.get(people, "Nobody")
    except co.NotFound as err:
        show("co.get(people, 'Nobody') raises", err)

    step("update: only the named fields change; atomic under concurrent writers")
    sam = co.update(people, "Sam", height=180.0, married=True)
    show("co.update(people, 'Sam', height=180.0, ...)", sam)
    grown = co.modify(people, "Sam", lambda p: p._replace(height=p.height + 1))
    show("co.modify(people, 'Sam', fn)", grown)
    try:
        co.update(people, "Sam", heigth=1.0)  # type: ignore[call-arg]  # mypy catches it too
    except co.ValidationError as err:
        show("a misspelt field raises", err)

    step("add never overwrites")
    try:
        co.add(people, Person("Sam", 150.0))
    except co.AlreadyExists as err:
        show("co.add(people, Person('Sam', ...))", err)


def batches(
    people: co.Repo[Person, str], collections: co.Repo[Collection, tuple[str, int]]
) -> None:
    """Batch calls, a composite key, a pipeline over two repos."""
    step("batches: one round trip each")
    bob, ann = Person("Bob", 182.4), Person("Ann", 165.0)
    show("co.insert_many(people, [bob, ann])", co.insert_many(people, [bob, ann]))
    show("co.get_many(people, ['Sam', 'Zed', 'Bob'])", co.get_many(people, ["Sam", "Zed", "Bob"]))

    step("a composite key on a TypedDict, with a key format and a default")
    first = co.insert(collections, {"collector": "Bob", "note_id": 1, "remark": "good"})
    show("co.insert(collections, {...})", first)
    show("co.get(collections, ('Bob', 1))", co.get(collections, ("Bob", 1)))

    step("pipelines: several repos, one round trip per backend")
    results = co.execute(
        co.ops.get(people, "Ann"),
        co.ops.exists(collections, ("Bob", 1)),
        co.ops.delete(people, "Bob"),
    )
    show("co.execute(get, exists, delete)", results)


def read_through(people: co.Repo[Person, str]) -> None:
    """get_or_load calls its loader once."""
    step("read-through: the loader runs once, then the cache answers")
    calls: list[str] = []

    def load_person(name: str) -> Person:
        calls.append(name)
        return Person(name, 170.0)

    co.get_or_load(people, "Cleo", load_person)
    co.get_or_load(people, "Cleo", load_person)
    show("loader calls for two get_or_load", calls)


def expiry_and_delete(
    people: co.Repo[Person, str], collections: co.Repo[Collection, tuple[str, int]]
) -> None:
    """A short TTL expires; deletes say whether the record existed."""
    # memcached counts TTLs in whole seconds of its own clock: allow two.
    step("TTL: a record written with ttl=1 is gone two seconds later")
    short = people.replace(ttl=1)
    co.insert(short, Person("Mayfly", 1.0))
    show("exists right after insert", co.exists(people, "Mayfly"))
    time.sleep(2.1)
    show("exists 2.1 s later", co.exists(people, "Mayfly"))

    step("delete")
    show("co.delete(people, 'Sam')", co.delete(people, "Sam"))
    show(
        "co.delete_many(people, ['Ann', 'Cleo', 'Zed'])",
        co.delete_many(people, ["Ann", "Cleo", "Zed"]),
    )
    co.delete(collections, ("Bob", 1))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    target = parser.add_mutually_exclusive_group()
    target.add_argument("--redis", metavar="URL", help="e.g. redis://127.0.0.1:6380/0")
    target.add_argument("--memcached", metavar="HOST:PORT", help="e.g. 127.0.0.1:11212")
    args = parser.parse_args(argv)
    backend = make_backend(args)
    where = args.redis or args.memcached or "the in-process MemoryBackend (no server needed)"
    print(f"cacheorm demo on {where}")
    try:
        walk(backend, namespace=f"demo-{uuid.uuid4().hex[:8]}")
    finally:
        backend.close()


if __name__ == "__main__":
    main()
