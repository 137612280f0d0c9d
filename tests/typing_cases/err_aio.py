"""Plain-generics mistakes with ``cacheorm.aio``, as with the sync functions."""

from __future__ import annotations

import cacheorm as co
from cacheorm import aio
from tests.typing_cases.records import Person

PERSON: co.Schema[Person, str] = co.Schema(Person, key="name")
people: co.Repo[Person, str] = co.Repo(PERSON)


async def load_int(key: int) -> Person:
    return Person(str(key), 1.0)


async def main() -> None:
    await aio.get(people, 1)  # E[plain]: Cannot infer function type argument  # E[plugin]: Argument 2 to "get" has incompatible type "int"; expected "str"
    await aio.insert(people, "Sam")  # E[plain]: Cannot infer function type argument  # E[plugin]: Argument 2 to "insert" has incompatible type "str"; expected "Person"
    height: str = (await aio.get(people, "Sam")).height  # E: Incompatible types in assignment (expression has type "float", variable has type "str")
    await aio.get_or_load(people, "Al", load_int)  # E: Argument 3 to "get_or_load" has incompatible type
    print(height)
