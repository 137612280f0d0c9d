"""Plugin-free typing of read-through: ``get_many_or_load``, ``negative_ttl``, ``cached``.

Checked with mypy --strict (with and without the cacheorm plugin) and pyright --strict.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import assert_type

import cacheorm as co
from cacheorm import aio
from tests.typing_cases.records import Person, Point

PERSON: co.Schema[Person, str] = co.Schema(Person, key="name")
POINT: co.Schema[Point, tuple[int, int]] = co.Schema(Point, key=("x", "y"))
people = co.Repo(PERSON)
points = co.Repo(POINT)
loose = co.Repo(co.Schema(Person, key="name"))  # unannotated: Hashable keys without the plugin


def find_people(names: list[str]) -> dict[str, Person]:
    return {name: Person(name, 1.7) for name in names}


def find_some(names: list[str]) -> Mapping[str, Person | None]:
    return {name: None for name in names}


def find_points(wanted: list[tuple[int, int]]) -> dict[tuple[int, int], Point]:
    return {(x, y): Point(x, y) for x, y in wanted}


def find_person(name: str) -> Person | None:
    return None


assert_type(co.get_many_or_load(people, ["Al"], find_people), list[Person | None])
assert_type(co.get_many_or_load(people, ("Al", "Bo"), find_some, negative_ttl=30), list[Person | None])
assert_type(co.get_many_or_load(points, [(1, 2)], find_points, lock_ttl=5, wait=1.0), list[Point | None])
assert_type(co.get_many_or_load(loose, ["Al"], find_people), list[Person | None])
assert_type(co.get_or_load(people, "Al", find_person, negative_ttl=30), Person)
assert_type(co.get_or_load(loose, "Al", find_person), Person)
assert_type(co.ops.get_many_or_load(people, ["Al"], find_people), co.ops.Op[list[Person | None]])
assert_type(co.execute(co.ops.get_many_or_load(people, ["Al"], find_people, wait=1.0)), list[list[Person | None]])


@co.cached(people, negative_ttl=30)
def person(name: str) -> Person | None:
    return None


@co.cached(loose)
def loose_person(name: str) -> Person:
    return Person(name, 1.7)


assert_type(person("Al"), Person)
assert_type(person(name="Al"), Person)
assert_type(person.invalidate("Al"), bool)
assert_type(loose_person("Al"), Person)


async def fetch_people(names: list[str]) -> dict[str, Person]:
    return {name: Person(name, 1.7) for name in names}


async def fetch_person(name: str) -> Person | None:
    return None


@aio.cached(people, wait=1.0)
async def remote_person(name: str) -> Person | None:
    return None


async def main() -> None:
    assert_type(await aio.get_many_or_load(people, ["Al"], fetch_people), list[Person | None])
    assert_type(await aio.get_many_or_load(people, ["Al"], find_people, negative_ttl=5), list[Person | None])
    assert_type(await aio.get_many_or_load(loose, ["Al"], fetch_people), list[Person | None])
    assert_type(await aio.get_or_load(people, "Al", fetch_person, negative_ttl=5), Person)
    assert_type(await remote_person("Al"), Person)
    assert_type(await remote_person.invalidate("Al"), bool)
