"""With the plugin: K is inferred from ``key=``, and update() knows the record's fields."""

from __future__ import annotations

from typing import NamedTuple, assert_type

import cacheorm as co
from tests.typing_cases.records import Collection, Person, Point

# No annotation needed: the plugin reads the key field's type.
people = co.Repo(co.Schema(Person, key="name"))
collections = co.Repo(co.Schema(Collection, key=("collector", "note_id"), defaults={"remark": ""}))
points = co.Repo(co.Schema(Point, key=["x", "y"]))
assert_type(people, co.Repo[Person, str])
assert_type(collections, co.Repo[Collection, tuple[str, int]])
assert_type(points, co.Repo[Point, tuple[int, int]])
# A one-field key is a scalar at run time, even when spelt as a tuple.
solo = co.Repo(co.Schema(Person, key=("name",)))
assert_type(solo, co.Repo[Person, str])

# The contract's explicit annotations keep working with the plugin on.
annotated: co.Repo[Person, str] = co.Repo(co.Schema(Person, key="name"))
PERSON: co.Schema[Person, str] = co.Schema(Person, key="name")
# An annotation with the default key type deliberately widens it.
wide: co.Schema[Person] = co.Schema(Person, key="name")

assert_type(co.get(people, "Sam"), Person)
assert_type(co.get(collections, ("Bob", 1)), Collection)
assert_type(co.update(people, "Sam", height=1.9, married=True, email=None), Person)
assert_type(co.update(collections, ("Bob", 1), remark="hi"), Collection)
assert_type(co.update(points, (1, 2), label="p"), Point)
assert_type(co.ops.update(people, "Sam", email="s@example.com"), co.ops.Op[Person])
assert_type(co.update_many(people, {"Sam": {"height": 2.0}, "Bo": {"married": True}}), list[Person | None])
assert_type(co.ops.update_many(collections, {("Bob", 1): {"remark": ""}}), co.ops.Op[list[Collection | None]])

# R and K come from the repo: a TypedDict literal is checked as the record, and a
# result may flow into an `object` parameter (plain mypy infers R = object there).
assert_type(co.insert(collections, {"collector": "Bob", "note_id": 1, "remark": ""}), Collection)
assert_type(co.ops.add(collections, {"collector": "Bob", "note_id": 2, "remark": ""}), co.ops.Op[Collection])
seen: object = co.get_or_none(people, "Sam")
handled = co.on(people, "after_insert", lambda repo, record: print(repo.schema.name, record))
assert_type(handled, co.Repo[Person, str])

# Dynamic changes stay accepted as the contract declares them.
changes: dict[str, object] = {"height": 2.0}
assert_type(co.update(people, "Sam", **changes), Person)
batch: dict[str, dict[str, object]] = {"Sam": changes}
assert_type(co.update_many(people, batch), list[Person | None])


# An AutoField key: the stored key is never None, so K is int.
class Note(NamedTuple):
    id: int | None
    text: str


notes = co.Repo(co.Schema(Note, key="id", fields={"id": co.AutoField()}))
assert_type(notes, co.Repo[Note, int | None])
assert_type(co.get(notes, 1), Note)
