"""Plugin-free typing of ``cacheorm.aio``: every twin awaits to its sync twin's result.

Checked with mypy --strict (with and without the cacheorm plugin) and pyright --strict.
"""

from __future__ import annotations

import asyncio
from typing import assert_type

import cacheorm as co
from cacheorm import aio
from tests.typing_cases.records import Collection, Person, Point

PERSON: co.Schema[Person, str] = co.Schema(Person, key="name")
COLLECTION: co.Schema[Collection, tuple[str, int]] = co.Schema(
    Collection, key=("collector", "note_id"), defaults={"remark": ""}
)
POINT: co.Schema[Point, tuple[int, int]] = co.Schema(Point, key=("x", "y"))

people: co.Repo[Person, str] = co.Repo(PERSON)
collections = co.Repo(COLLECTION, ttl=60)
points = co.Repo(POINT, backend=co.AsyncFileSystemBackend("/tmp/unused"))
tiered = co.Repo(PERSON, backend=co.AsyncTieredBackend(co.MemoryBackend(), co.AsyncFileSystemBackend("/tmp/x")))

sam = Person("Sam", 1.8)
note: Collection = {"collector": "Bob", "note_id": 1, "remark": ""}


def taller(p: Person) -> Person:
    return p._replace(height=p.height + 1)


async def taller_later(p: Person) -> Person:
    await asyncio.sleep(0)
    return p._replace(height=p.height + 1)


async def load(name: str) -> Person:
    return Person(name, 1.7)


async def main() -> None:
    assert_type(await aio.insert(people, sam), Person)
    assert_type(await aio.insert_many(people, [sam]), list[Person])
    assert_type(await aio.add(collections, note), Collection)
    assert_type(await aio.get(people, "Sam"), Person)
    assert_type(await aio.get(collections, ("Bob", 1)), Collection)
    assert_type(await aio.get(points, (1, 2)), Point)
    assert_type(await aio.get_or_none(people, "Sam"), Person | None)
    assert_type(await aio.get_many(people, ["Sam", "Bo"]), list[Person | None])
    assert_type(await aio.exists(people, "Sam"), bool)
    assert_type(await aio.update(people, "Sam", height=1.9), Person)
    assert_type(await aio.modify(people, "Sam", taller), Person)
    assert_type(await aio.modify(people, "Sam", taller_later), Person)
    assert_type(await aio.update_many(people, {"Sam": {"height": 2.0}}), list[Person | None])
    assert_type(await aio.replace(points, Point(1, 2, "b")), Point)
    assert_type(await aio.delete(people, "Sam"), bool)
    assert_type(await aio.delete_many(collections, [("Bob", 1)]), int)
    assert_type(await aio.get_or_load(people, "Al", lambda name: Person(name, 1.7)), Person)
    assert_type(await aio.get_or_load(people, "Al", load), Person)
    assert_type(await aio.get_or_load(tiered, "Al", load, lock_ttl=5, wait=1.0), Person)

    # The same ops as co.execute, awaited.
    assert_type(await aio.execute(co.ops.get(people, "Sam")), list[Person])
    results = await aio.execute(
        co.ops.insert(people, sam),
        co.ops.get(collections, ("Bob", 1)),
        co.ops.delete(points, (1, 2)),
    )
    assert_type(results, list[Person | Collection | bool])
    failures = await aio.execute(co.ops.exists(people, "Sam"), raise_on_error=False)
    assert_type(failures, list[bool | Exception])

    # Twins are coroutines: a task keeps the type.
    task = asyncio.create_task(aio.get(people, "Sam"))
    assert_type(await task, Person)
