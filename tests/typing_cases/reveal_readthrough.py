"""reveal_type of read-through results and of a ``cached`` loader, as mypy spells them."""

from __future__ import annotations

import cacheorm as co
from cacheorm import aio
from tests.typing_cases.records import Point

POINT: co.Schema[Point, tuple[int, int]] = co.Schema(Point, key=("x", "y"))
points = co.Repo(POINT)


def find_points(wanted: list[tuple[int, int]]) -> dict[tuple[int, int], Point]:
    return {(x, y): Point(x, y) for x, y in wanted}


@co.cached(points, negative_ttl=60)
def point(at: tuple[int, int]) -> Point | None:
    return None


@aio.cached(points)
async def remote_point(at: tuple[int, int]) -> Point | None:
    return None


reveal_type(co.get_many_or_load(points, [(1, 2)], find_points))  # N: Revealed type is "list[tests.typing_cases.records.Point | None]"
reveal_type(co.get_or_load(points, (1, 2), lambda at: None, negative_ttl=5))  # N: Revealed type is "tests.typing_cases.records.Point"
reveal_type(point)  # N: Revealed type is "cacheorm.readthrough.Cached[[at: tuple[int, int]], tests.typing_cases.records.Point, tuple[int, int]]"
reveal_type(point((1, 2)))  # N: Revealed type is "tests.typing_cases.records.Point"
reveal_type(point.invalidate)  # N: Revealed type is "def (key: tuple[int, int]) -> bool"
reveal_type(remote_point)  # N: Revealed type is "cacheorm.aio.AsyncCached[[at: tuple[int, int]], tests.typing_cases.records.Point, tuple[int, int]]"


async def main() -> None:
    reveal_type(await aio.get_many_or_load(points, [(1, 2)], find_points))  # N: Revealed type is "list[tests.typing_cases.records.Point | None]"
    reveal_type(await remote_point((1, 2)))  # N: Revealed type is "tests.typing_cases.records.Point"
