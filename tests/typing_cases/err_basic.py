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

co.insert(people, note)  # E[plain]: Cannot infer value of type parameter "R" of "insert"  # E[plugin]: Argument 2 to "insert" has incompatible type "Collection"; expected "Person"
co.insert(people, Point(1, 2))  # E[plain]: Cannot infer value of type parameter "R" of "insert"  # E[plugin]: Argument 2 to "insert" has incompatible type "Point"; expected "Person"
co.get(people, 1)  # E[plain]: Cannot infer value of type parameter "K" of "get"  # E[plugin]: Argument 2 to "get" has incompatible type "int"; expected "str"
co.get(collections, ("Bob", "1"))  # E[plain]: Cannot infer value of type parameter "K" of "get"  # E[plugin]: Argument 2 to "get" has incompatible type "tuple[str, str]"; expected "tuple[str, int]"
co.get(collections, "Bob")  # E[plain]: Cannot infer value of type parameter "K" of "get"  # E[plugin]: Argument 2 to "get" has incompatible type "str"; expected "tuple[str, int]"
co.delete_many(people, [1, 2])  # E[plain]: Cannot infer value of type parameter "K" of "delete_many"  # E[plugin]: List item 0 has incompatible type "int"; expected "str"  # E[plugin]: List item 1 has incompatible type "int"
height: str = co.get(people, "Sam").height  # E: Incompatible types in assignment
maybe: Person = co.get_or_none(people, "Sam")  # E: Incompatible types in assignment
found: list[Person] = co.get_many(people, ["Sam"])  # E: Incompatible types in assignment
count: bool = co.delete_many(people, ["Sam"])  # E: Incompatible types in assignment
wrong_repo: co.Repo[Person, int] = people  # E: Incompatible types in assignment
co.modify(people, "Sam", lambda p: p.height)  # E: Argument 3 to "modify" has incompatible type "Callable[[Person], float]"  # E: Incompatible return value type (got "float", expected "Person")
co.get_or_load(people, "Sam", lambda name: name)  # E: Argument 3 to "get_or_load" has incompatible type  # E: Incompatible return value type (got "str", expected "Person | None")
co.ops.get(people, 1)  # E[plain]: Cannot infer function type argument  # E[plugin]: Argument 2 to "get" has incompatible type "int"; expected "str"
bad: list[Person] = co.execute(co.ops.get(people, "Sam"), co.ops.exists(people, "Sam"))  # E: Argument 2 to "execute" has incompatible type "Op[bool]"
co.execute(co.ops.get(people, "Sam"), raise_on_error=False)[0].name  # E: Item "Exception" of "Person | Exception" has no attribute "name"
