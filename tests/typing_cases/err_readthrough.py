"""Read-through mistakes that plain generics catch: keys, loaders and decorated calls."""

from __future__ import annotations

import cacheorm as co
from tests.typing_cases.records import Person

PERSON: co.Schema[Person, str] = co.Schema(Person, key="name")
people = co.Repo(PERSON)


def find_people(names: list[str]) -> dict[str, Person]:
    return {name: Person(name, 1.7) for name in names}


def find_by_id(ids: list[int]) -> dict[int, Person]:
    return {i: Person(str(i), 1.7) for i in ids}


def find_list(names: list[str]) -> list[Person]:
    return [Person(name, 1.7) for name in names]


co.get_many_or_load(people, [1], find_people)  # E[plain]: Cannot infer value of type parameter "K" of "get_many_or_load"  # E[plugin]: List item 0 has incompatible type "int"; expected "str"
co.get_many_or_load(people, ["Al"], find_by_id)  # E: Argument 3 to "get_many_or_load" has incompatible type "Callable[[list[int]], dict[int, Person]]"; expected "Callable[[list[str]], Mapping[str, Person | None]]"
co.get_many_or_load(people, ["Al"], find_list)  # E: Argument 3 to "get_many_or_load" has incompatible type "Callable[[list[str]], list[Person]]"
co.get_many_or_load(people, ["Al"], find_people, negative_ttl="30")  # E: No overload variant of "get_many_or_load" matches argument types
found: list[Person] = co.get_many_or_load(people, ["Al"], find_people)  # E: Incompatible types in assignment (expression has type "list[Person | None]", variable has type "list[Person]")


@co.cached(people)
def person(name: str) -> Person:
    return Person(name, 1.7)


@co.cached(people)  # E: Argument 1 to "__call__" of "CachedDecorator" has incompatible type "Callable[[str], float]"; expected "Callable[[str], Person | None]"
def height(name: str) -> float:
    return 1.7


person(1)  # E: Argument 1 to "__call__" of "Cached" has incompatible type "int"; expected "str"
person.invalidate(1)  # E: Argument 1 to "invalidate" of "Cached" has incompatible type "int"; expected "str"
named: str = person("Al")  # E: Incompatible types in assignment (expression has type "Person", variable has type "str")
