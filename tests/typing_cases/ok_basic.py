"""Plugin-free typing: with the two-parameter annotations every result is precise.

Checked with mypy --strict (with and without the cacheorm plugin) and pyright --strict.
"""

from __future__ import annotations

from typing import assert_type

import cacheorm as co
from tests.typing_cases.records import Collection, Person, Point

PERSON: co.Schema[Person, str] = co.Schema(Person, key="name")
COLLECTION: co.Schema[Collection, tuple[str, int]] = co.Schema(
    Collection, key=("collector", "note_id"), defaults={"remark": ""}
)
POINT: co.Schema[Point, tuple[int, int]] = co.Schema(Point, key=("x", "y"))

people: co.Repo[Person, str] = co.Repo(PERSON)
collections = co.Repo(COLLECTION, ttl=60)
points = co.Repo(POINT, serializer="json")
assert_type(collections, co.Repo[Collection, tuple[str, int]])
assert_type(people.replace(ttl=0), co.Repo[Person, str])

sam = Person("Sam", 1.8)
note: Collection = {"collector": "Bob", "note_id": 1, "remark": ""}

assert_type(co.insert(people, sam), Person)
assert_type(co.insert_many(people, [sam]), list[Person])
assert_type(co.add(collections, note), Collection)
assert_type(co.get(people, "Sam"), Person)
assert_type(co.get(collections, ("Bob", 1)), Collection)
assert_type(co.get(points, (1, 2)), Point)
assert_type(co.get_or_none(people, "Sam"), Person | None)
assert_type(co.get_many(people, ["Sam", "Bo"]), list[Person | None])
assert_type(co.exists(people, "Sam"), bool)
assert_type(co.update(people, "Sam", height=1.9), Person)
assert_type(co.modify(people, "Sam", lambda p: p._replace(height=p.height + 0.1)), Person)
assert_type(co.update_many(people, {"Sam": {"height": 2.0}}), list[Person | None])
assert_type(co.replace(points, Point(1, 2, "b")), Point)
assert_type(co.delete(people, "Sam"), bool)
assert_type(co.delete_many(collections, [("Bob", 1)]), int)
assert_type(co.get_or_load(people, "Al", lambda name: Person(name, 1.7)), Person)


def taller(p: Person) -> Person:
    return p._replace(height=p.height + 1)


assert_type(co.modify(people, "Sam", taller), Person)

# Pipelines: each op keeps its result type; execute returns the union per slot.
assert_type(co.ops.get(people, "Sam"), co.ops.Op[Person])
assert_type(co.ops.delete_many(points, [(1, 2)]), co.ops.Op[int])
assert_type(co.execute(co.ops.get(people, "Sam")), list[Person])
results = co.execute(
    co.ops.insert(people, sam),
    co.ops.get(collections, ("Bob", 1)),
    co.ops.delete(points, (1, 2)),
)
assert_type(results, list[Person | Collection | bool])
failures = co.execute(co.ops.exists(people, "Sam"), raise_on_error=False)
assert_type(failures, list[bool | Exception])
many = [co.ops.get(people, name) for name in ("a", "b", "c", "d", "e", "f", "g")]
assert_type(co.execute(*many), list[Person])
