"""Mistakes that plain generics catch (with or without the plugin)."""

from __future__ import annotations

import cacheorm as co
from tests.typing_cases.records import Collection, Person, Point

PERSON: co.Schema[Person, str] = co.Schema(Person, key="name")
COLLECTION: co.Schema[Collection, tuple[str, int]] = co.Schema(
    Collection, key=("collector", "note_id")
)
people = co.Repo(PERSON)
collections = co.Repo(COLLECTION)
note: Collection = {"collector": "Bob", "note_id": 1, "remark": ""}

co.insert(people, note)  # E: Cannot infer value of type parameter "R" of "insert"
co.insert(people, Point(1, 2))  # E: Cannot infer value of type parameter "R" of "insert"
co.get(people, 1)  # E: Cannot infer value of type parameter "K" of "get"
co.get(collections, ("Bob", "1"))  # E: Cannot infer value of type parameter "K" of "get"
co.get(collections, "Bob")  # E: Cannot infer value of type parameter "K" of "get"
co.delete_many(people, [1, 2])  # E: Cannot infer value of type parameter "K" of "delete_many"
height: str = co.get(people, "Sam").height  # E: Incompatible types in assignment
maybe: Person = co.get_or_none(people, "Sam")  # E: Incompatible types in assignment
found: list[Person] = co.get_many(people, ["Sam"])  # E: Incompatible types in assignment
count: bool = co.delete_many(people, ["Sam"])  # E: Incompatible types in assignment
wrong_repo: co.Repo[Person, int] = people  # E: Incompatible types in assignment
co.modify(people, "Sam", lambda p: p.height)  # E: Argument 3 to "modify" has incompatible type "Callable[[Person], float]"  # E: Incompatible return value type (got "float", expected "Person")
co.get_or_load(people, "Sam", lambda name: None)  # E: Argument 3 to "get_or_load" has incompatible type  # E: Incompatible return value type (got "None", expected "Person")
co.ops.get(people, 1)  # E: Cannot infer value of type parameter "K" of "get"
bad: list[Person] = co.execute(co.ops.get(people, "Sam"), co.ops.exists(people, "Sam"))  # E: Argument 2 to "execute" has incompatible type "Op[bool]"
co.execute(co.ops.get(people, "Sam"), raise_on_error=False)[0].name  # E: Item "Exception" of "Person | Exception" has no attribute "name"
