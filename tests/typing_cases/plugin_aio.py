"""With the plugin: ``aio.update`` knows the record's fields, as ``co.update`` does."""

from __future__ import annotations

from typing import assert_type

import cacheorm as co
from cacheorm import aio
from tests.typing_cases.records import Person, Point

people = co.Repo(co.Schema(Person, key="name"))
points = co.Repo(co.Schema(Point, key=("x", "y")))


async def main() -> None:
    assert_type(await aio.update(people, "Sam", height=1.9, married=True), Person)
    assert_type(await aio.get(points, (1, 2)), Point)
    await aio.update(people, "Sam", heigth=1.0)  # E: Unexpected keyword argument "heigth" for "update"; did you mean "height"?
    await aio.update(people, "Sam", height="tall")  # E: Argument "height" to "update" has incompatible type "str"; expected "float"
    await aio.update_many(people, {"Sam": {"heigth": 1.0}})  # E: Unexpected TypedDict key "heigth"
    await aio.get(people, 1)  # E: Argument 2 to "get" has incompatible type "int"; expected "str"
