# mypy: disallow-any-expr
"""The public API leaks no ``Any``: every expression below has a precise type."""

from __future__ import annotations

import dataclasses

import cacheorm as co
from tests.typing_cases.records import Person

PERSON: co.Schema[Person, str] = co.Schema(Person, key="name", defaults={"married": False})
people: co.Repo[Person, str] = co.Repo(PERSON, backend=co.MemoryBackend(), ttl=60)
hourly = dataclasses.replace(people, ttl=3600)
people = co.on(people, "after_insert", lambda repo, record: None)

sam = co.insert(people, Person("Sam", 1.8))
same = co.get(people, "Sam")
maybe = co.get_or_none(hourly, "Bo")
both = co.get_many(people, ["Sam", "Bo"])
taller = co.update(people, "Sam", height=1.9)
older = co.modify(people, "Sam", lambda p: p._replace(married=True))
gone = co.delete_many(people, ["Sam"])
loaded = co.get_or_load(people, "Al", lambda name: Person(name, 1.7))
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
