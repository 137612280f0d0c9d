"""``get_or_load`` still catches a wrong key, or a loader of another key type, where K is known."""

from __future__ import annotations

import cacheorm as co
from tests.typing_cases.records import Person

PERSON: co.Schema[Person, str] = co.Schema(Person, key="name")
people = co.Repo(PERSON)


def load_person(name: str) -> Person:
    return Person(name, 170.0)


def load_by_id(person_id: int) -> Person:
    return Person(str(person_id), 170.0)


co.get_or_load(people, 1, load_person)  # E[plain]: Cannot infer value of type parameter "K" of "get_or_load"  # E[plugin]: No overload variant of "get_or_load" matches argument types "Repo[Person, str]", "int", "Callable[[str], Person]"
co.get_or_load(people, 1, load_by_id)  # E[plain]: Cannot infer value of type parameter "K" of "get_or_load"  # E[plugin]: No overload variant of "get_or_load" matches argument types "Repo[Person, str]", "int", "Callable[[int], Person]"
co.get_or_load(people, "Dee", load_by_id)  # E: Argument 3 to "get_or_load" has incompatible type "Callable[[int], Person]"; expected "Callable[[str], Person | None]"
co.ops.get_or_load(people, 1, load_person)  # E[plain]: Cannot infer function type argument  # E[plugin]: No overload variant of "get_or_load" matches argument types "Repo[Person, str]", "int", "Callable[[str], Person]"
co.get_or_load(people, "Dee", load_person, lock_ttl="10")  # E: No overload variant of "get_or_load" matches argument types "Repo[Person, str]", "str", "Callable[[str], Person]", "str"
