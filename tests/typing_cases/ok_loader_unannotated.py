"""The README quickstart's read-through, pasted as written: no annotation, no plugin needed.

An unannotated schema's key type is ``Hashable`` without the plugin; ``get_or_load``
then types its loader by the key given, so ``load_person(name: str)`` fits ``"Dee"``.
"""

from __future__ import annotations

from typing import NamedTuple, assert_type

import cacheorm as co


class Person(NamedTuple):
    name: str
    height: float
    married: bool = False
    email: str | None = None


PERSON = co.Schema(Person, key="name")
people = co.Repo(PERSON, ttl=3600)  # backend=None: an in-process MemoryBackend


def load_person(name: str) -> Person:  # e.g. a database query
    return Person(name, 170.0)


assert co.get_or_load(people, "Dee", load_person) == Person("Dee", 170.0)
assert_type(co.get_or_load(people, "Dee", load_person), Person)
assert_type(co.get_or_load(people, "Dee", load_person, lock_ttl=5, wait=0.5), Person)
assert_type(co.ops.get_or_load(people, "Dee", load_person), co.ops.Op[Person])
assert_type(co.execute(co.ops.get_or_load(people, "Dee", load_person, wait=1.0)), list[Person])

# An annotated schema keeps its precise key type, and the loader takes it.
ANNOTATED: co.Schema[Person, str] = co.Schema(Person, key="name")
annotated = co.Repo(ANNOTATED)
assert_type(co.get_or_load(annotated, "Dee", load_person), Person)
assert_type(co.get_or_load(annotated, "Dee", lambda name: Person(name.upper(), 1.0)), Person)
