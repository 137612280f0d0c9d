"""reveal_type of the main results, as mypy spells them."""

from __future__ import annotations

import cacheorm as co
from tests.typing_cases.records import Collection, Person, Point

PERSON: co.Schema[Person, str] = co.Schema(Person, key="name")
COLLECTION: co.Schema[Collection, tuple[str, int]] = co.Schema(Collection, key=("collector", "note_id"))
POINT: co.Schema[Point, tuple[int, int]] = co.Schema(Point, key=("x", "y"))
people = co.Repo(PERSON)
collections = co.Repo(COLLECTION)
points = co.Repo(POINT)

reveal_type(people)  # N: Revealed type is "cacheorm.repo.Repo[tuple[str, float, bool, str | None, fallback=tests.typing_cases.records.Person], str]"
reveal_type(co.get(people, "Sam"))  # N: Revealed type is "tuple[str, float, bool, str | None, fallback=tests.typing_cases.records.Person]"
reveal_type(co.get(points, (1, 2)))  # N: Revealed type is "tests.typing_cases.records.Point"
reveal_type(co.get_or_none(points, (1, 2)))  # N: Revealed type is "tests.typing_cases.records.Point | None"
reveal_type(co.get_many(collections, [("Bob", 1)]))  # N: Revealed type is "list[TypedDict(tests.typing_cases.records.Collection, {'collector': str, 'note_id': int, 'remark': str}) | None]"
reveal_type(co.insert_many(points, [Point(1, 2)]))  # N: Revealed type is "list[tests.typing_cases.records.Point]"
reveal_type(co.delete_many(points, [(1, 2)]))  # N: Revealed type is "int"
reveal_type(co.exists(points, (1, 2)))  # N: Revealed type is "bool"
reveal_type(co.ops.get(points, (1, 2)))  # N: Revealed type is "cacheorm.ops.Op[tests.typing_cases.records.Point]"
reveal_type(co.execute(co.ops.get(points, (1, 2)), co.ops.delete(points, (1, 2))))  # N: Revealed type is "list[tests.typing_cases.records.Point | bool]"
