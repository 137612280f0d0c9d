# mypy: disallow-any-expr
"""The public API leaks no ``Any``: every expression below has a precise type."""

from __future__ import annotations

import dataclasses

import cacheorm as co
from tests.typing_cases.records import Person

PERSON: co.Schema[Person, str] = co.Schema(Person, key="name", defaults={"married": False})
people: co.Repo[Person, str] = co.Repo(PERSON, backend=co.MemoryBackend(), ttl=60)
hourly = dataclasses.replace(people, ttl=3600)


def audit(repo: co.Repo[Person, str], record: Person) -> None:
    del repo, record


people = co.on(people, "after_insert", audit)

sam = co.insert(people, Person("Sam", 1.8))
same = co.get(people, "Sam")
maybe = co.get_or_none(hourly, "Bo")
both = co.get_many(people, ["Sam", "Bo"])
taller = co.update(people, "Sam", height=1.9)
older = co.modify(people, "Sam", lambda p: p._replace(married=True))
gone = co.delete_many(people, ["Sam"])


def load(name: str) -> Person:
    return Person(name, 1.7)


# A def, not a lambda: mypy types a lambda given to an overloaded function as
# Callable[[Any], ...] first (python/mypy#5879), which disallow-any-expr reports.
loaded = co.get_or_load(people, "Al", load)
results = co.execute(co.ops.insert(people, sam), co.ops.exists(people, "Sam"))
height: float = same.height
kept: bool = co.exists(people, "Sam")

json = co.registry.get_by_name("json")
raw: bytes = b"" if json is None else json.dumps({"name": "Sam"})
try:
    co.get(people, "Nobody")
except co.NotFound as err:
    print(err)
print(sam, hourly, maybe, both, taller, older, gone, loaded, results, height, kept, raw)
