"""reveal_type of ``cacheorm.aio`` results, as mypy spells them."""

from __future__ import annotations

import cacheorm as co
from cacheorm import aio
from tests.typing_cases.records import Point

POINT: co.Schema[Point, tuple[int, int]] = co.Schema(Point, key=("x", "y"))
points = co.Repo(POINT)


async def main() -> None:
    reveal_type(await aio.get(points, (1, 2)))  # N: Revealed type is "tests.typing_cases.records.Point"
    reveal_type(await aio.get_or_none(points, (1, 2)))  # N: Revealed type is "tests.typing_cases.records.Point | None"
    reveal_type(await aio.get_many(points, [(1, 2)]))  # N: Revealed type is "list[tests.typing_cases.records.Point | None]"
    reveal_type(await aio.delete_many(points, [(1, 2)]))  # N: Revealed type is "int"
    reveal_type(await aio.execute(co.ops.get(points, (1, 2)), co.ops.delete(points, (1, 2))))  # N: Revealed type is "list[tests.typing_cases.records.Point | bool]"
