"""``cacheorm.aio``: coroutine twins on the same plans, mixing caught, async backend forms.

The shared suites run over the async path too (tests/conftest.py: the backend
conformance suite over every async backend, the record suite through ``aio``);
this module covers what only the async driver has.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple, TypeVar, cast

import pytest

import cacheorm as co
from cacheorm import aio, crud
from cacheorm.backends.atiered import InProcessAsync
from cacheorm.engine import DECLARED
from cacheorm.errors import BackendError

if TYPE_CHECKING:
    from tests.servers import RedisServer

pytestmark = pytest.mark.timeout(30)

T = TypeVar("T")


class Person(NamedTuple):
    name: str
    height: float


class Note(NamedTuple):
    id: int | None
    text: str


PERSON: co.Schema[Person, str] = co.Schema(Person, key="name")
NOTE: co.Schema[Note, int | None] = co.Schema(Note, key="id", fields={"id": co.AutoField()})


@pytest.fixture(params=["memory", "afilesystem", "aredis", "atiered"])
def async_backend(
    request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[co.MemoryBackend | co.AsyncBackend]:
    """A backend ``aio`` takes: in-process memory, or an async backend."""
    kind: str = request.param
    if kind == "memory":
        yield co.MemoryBackend()
        return
    if kind == "afilesystem":
        yield co.AsyncFileSystemBackend(tmp_path / "cache")
        return
    server: RedisServer = request.getfixturevalue("redis_server")
    server.flush()
    far = co.AsyncRedisBackend(url=server.url)
    yield far if kind == "aredis" else co.AsyncTieredBackend(co.MemoryBackend(), far)


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


async def _closing(backend: co.MemoryBackend | co.AsyncBackend) -> None:
    if isinstance(backend, co.MemoryBackend):
        backend.close()
    else:
        await backend.aclose()


# -- the twins -------------------------------------------------------------------------------


def test_every_declared_function_has_a_coroutine_twin_with_its_parameters() -> None:
    assert set(aio.__all__) == {"cached", "execute", "twin", *DECLARED}
    assert set(crud.__all__) == set(DECLARED)
    for name, declared in DECLARED.items():
        twin = getattr(aio, name)
        assert inspect.iscoroutinefunction(twin), name
        assert list(inspect.signature(twin).parameters) == list(
            inspect.signature(declared.plan).parameters
        ), name
    assert inspect.iscoroutinefunction(aio.execute)


def test_the_contract_example_runs_on_every_async_backend(
    async_backend: co.MemoryBackend | co.AsyncBackend,
) -> None:
    async def main() -> None:
        people = co.Repo(PERSON, backend=async_backend)
        try:
            sam = await aio.insert(people, Person("Sam", 178.8))
            assert await aio.get(people, "Sam") == sam
            sam = await aio.update(people, "Sam", height=180.0)
            assert sam == Person("Sam", 180.0)
            results = await aio.execute(co.ops.get(people, "Sam"), co.ops.delete(people, "Bob"))
            assert results == [sam, False]
            assert await aio.get_many(people, ["Sam", "Bob"]) == [sam, None]
            with pytest.raises(co.NotFound):
                await aio.get(people, "Bob")
            with pytest.raises(co.AlreadyExists):
                await aio.add(people, sam)
            assert await aio.delete_many(people, ["Sam", "Bob"]) == 1
            assert not await aio.exists(people, "Sam")
        finally:
            await _closing(async_backend)

    run(main())


def test_modify_and_get_or_load_take_plain_or_coroutine_functions() -> None:
    async def main() -> None:
        people = co.Repo(PERSON)

        async def grow(p: Person) -> Person:
            await asyncio.sleep(0)
            return p._replace(height=p.height + 1)

        async def load(name: str) -> Person:
            await asyncio.sleep(0)
            return Person(name, 1.0)

        assert await aio.get_or_load(people, "Sam", load) == Person("Sam", 1.0)
        assert await aio.get_or_load(people, "Bo", lambda name: Person(name, 2.0)) == Person(
            "Bo", 2.0
        )
        assert await aio.modify(people, "Sam", grow) == Person("Sam", 2.0)
        assert await aio.modify(people, "Sam", lambda p: p._replace(height=9.0)) == Person(
            "Sam", 9.0
        )

    run(main())


def test_get_or_load_loads_once_across_30_tasks(
    async_backend: co.MemoryBackend | co.AsyncBackend,
) -> None:
    calls: list[str] = []

    async def main() -> None:
        people = co.Repo(PERSON, backend=async_backend)

        async def load(name: str) -> Person:
            calls.append(name)
            await asyncio.sleep(0.05)
            return Person(name, 1.5)

        try:
            found = await asyncio.gather(*(aio.get_or_load(people, "Sam", load) for _ in range(30)))
        finally:
            await _closing(async_backend)
        assert found == [Person("Sam", 1.5)] * 30

    run(main())
    assert calls == ["Sam"]


def test_concurrent_modify_tasks_lose_no_increment(
    async_backend: co.MemoryBackend | co.AsyncBackend,
) -> None:
    async def main() -> float:
        people = co.Repo(PERSON, backend=async_backend)
        try:
            await aio.insert(people, Person("Sam", 0.0))

            async def bump(p: Person) -> Person:
                await asyncio.sleep(0)  # let the other tasks interleave
                return p._replace(height=p.height + 1)

            await asyncio.gather(*(aio.modify(people, "Sam", bump) for _ in range(50)))
            return (await aio.get(people, "Sam")).height
        finally:
            await _closing(async_backend)

    assert run(main()) == 50.0


def test_a_cancelled_get_or_load_releases_its_lock(
    async_backend: co.MemoryBackend | co.AsyncBackend,
) -> None:
    loading = asyncio.Event

    async def main() -> None:
        people = co.Repo(PERSON, backend=async_backend)
        started = loading()

        async def slow(name: str) -> Person:
            started.set()
            await asyncio.sleep(10)
            return Person(name, 1.0)

        try:
            task = asyncio.create_task(aio.get_or_load(people, "Sam", slow))
            await asyncio.wait_for(started.wait(), 5)
            begun = time.monotonic()
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert time.monotonic() - begun < 2
            lock = crud.LOCK_PREFIX + PERSON.encode_key("Sam")
            raw = await aio.execute(co.ops.exists(people, "Sam"))
            assert raw == [False]  # nothing half-written
            has = (
                async_backend.has(lock)
                if isinstance(async_backend, co.MemoryBackend)
                else await async_backend.has(lock)
            )
            assert not has  # the lock was released: the next caller loads at once
            with pytest.raises(TimeoutError):
                async with asyncio.timeout(0.05):
                    await aio.get_or_load(people, "Sam", slow)
            assert await aio.get_or_load(people, "Sam", lambda n: Person(n, 2.0)) == Person(
                "Sam", 2.0
            )
        finally:
            await _closing(async_backend)

    run(main())


# -- execute ------------------------------------------------------------------------------------


def test_execute_gives_the_results_co_execute_gives() -> None:
    def ops(
        people: co.Repo[Person, str], notes: co.Repo[Note, int | None]
    ) -> list[co.ops.Op[object]]:
        return [
            co.ops.insert(people, Person("Sam", 1.0)),
            co.ops.insert(notes, Note(None, "a")),  # an AutoField key: a barrier
            co.ops.update(people, "Sam", height=2.0),
            co.ops.get(notes, 1),
            co.ops.modify(people, "Sam", lambda p: p._replace(height=p.height * 2)),
            co.ops.get(people, "Bob"),
            co.ops.get_many(people, ["Sam", "Bob"]),
            co.ops.delete(people, "Sam"),
        ]

    def fresh() -> tuple[co.Repo[Person, str], co.Repo[Note, int | None]]:
        memory = co.MemoryBackend()
        return co.Repo(PERSON, backend=memory), co.Repo(NOTE, backend=memory)

    expected = co.execute(*ops(*fresh()), raise_on_error=False)

    async def main() -> list[object]:
        return await aio.execute(*ops(*fresh()), raise_on_error=False)

    got = run(main())
    assert isinstance(got, list)
    assert [repr(x) for x in got] == [repr(x) for x in expected]
    assert isinstance(got[5], co.NotFound)


# -- mixing ------------------------------------------------------------------------------------


def test_a_sync_io_backend_given_to_aio_is_a_type_error(tmp_path: Path) -> None:
    people = co.Repo(PERSON, backend=co.FileSystemBackend(tmp_path))

    async def main() -> None:
        with pytest.raises(TypeError, match="use the co functions or an async backend"):
            await aio.get(people, "Sam")
        with pytest.raises(TypeError, match="use the co functions or an async backend"):
            await aio.execute(co.ops.insert(people, Person("Sam", 1.0)))

    run(main())
    assert not co.exists(people, "Sam")  # nothing ran


def test_an_async_backend_given_to_co_is_a_type_error(tmp_path: Path) -> None:
    people = co.Repo(PERSON, backend=co.AsyncFileSystemBackend(tmp_path))
    with pytest.raises(TypeError, match=r"use cacheorm\.aio"):
        co.get(people, "Sam")
    with pytest.raises(TypeError, match=r"use cacheorm\.aio"):
        co.insert(people, Person("Sam", 1.0))
    with pytest.raises(TypeError, match=r"cacheorm\.aio\.execute"):
        co.execute(co.ops.insert(people, Person("Sam", 1.0)))
    assert not run(aio.exists(people, "Sam"))  # nothing ran


def test_memory_serves_both_and_the_choice_is_made_once_per_repo() -> None:
    people = co.Repo(PERSON)
    co.insert(people, Person("Sam", 1.0))
    assert run(aio.get(people, "Sam")) == Person("Sam", 1.0)
    assert people.__dict__["sync_backend"] is people.backend  # cached on the repo
    assert people.__dict__["aio_direct"] is True


def test_async_backends_implement_the_protocol(tmp_path: Path) -> None:
    files = co.AsyncFileSystemBackend(tmp_path)
    tier = co.AsyncTieredBackend(co.MemoryBackend(), files)
    for backend in (files, tier, InProcessAsync(co.MemoryBackend())):
        assert isinstance(backend, co.AsyncBackend)
    with pytest.raises(TypeError, match="far must be an async backend"):
        co.AsyncTieredBackend(co.MemoryBackend(), co.MemoryBackend())  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="near must be"):
        co.AsyncTieredBackend(co.FileSystemBackend(tmp_path / "x"), files)


# -- miss mode and outages ----------------------------------------------------------------------


class _Down:
    """An async backend whose server never answers."""

    default_ttl = 0

    def __getattr__(self, name: str) -> object:
        async def fail(*args: object, **kwargs: object) -> object:
            raise BackendError("connection refused", server="127.0.0.1:1")

        return fail

    async def batch(self, commands: object) -> list[object]:
        raise BackendError("connection refused", server="127.0.0.1:1")

    async def aclose(self) -> None:
        return None


def test_miss_mode_reads_miss_and_writes_raise_as_in_sync() -> None:
    people = co.Repo(PERSON, backend=_Down(), on_backend_error="miss")  # type: ignore[arg-type]
    loud = people.replace(on_backend_error="raise")

    async def main() -> None:
        assert await aio.get_or_none(people, "Sam") is None
        assert await aio.get_many(people, ["Sam", "Bo"]) == [None, None]
        assert not await aio.exists(people, "Sam")
        with pytest.raises(co.NotFound):
            await aio.get(people, "Sam")
        assert await aio.get_or_load(people, "Sam", lambda n: Person(n, 1.0)) == Person("Sam", 1.0)
        with pytest.raises(BackendError):
            await aio.insert(people, Person("Sam", 1.0))
        with pytest.raises(BackendError):
            await aio.get_or_none(loud, "Sam")
        results = await aio.execute(
            co.ops.get_or_none(people, "Sam"),
            co.ops.get_or_none(loud, "Sam"),
            raise_on_error=False,
        )
        assert results[0] is None
        assert isinstance(results[1], BackendError)

    run(main())


# -- the async filesystem and tiered forms ----------------------------------------------------


def test_sync_and_async_filesystem_backends_share_one_directory(tmp_path: Path) -> None:
    sync_people = co.Repo(PERSON, backend=co.FileSystemBackend(tmp_path))
    async_people = co.Repo(PERSON, backend=co.AsyncFileSystemBackend(tmp_path))
    co.insert(sync_people, Person("Sam", 1.0))

    async def main() -> None:
        assert await aio.get(async_people, "Sam") == Person("Sam", 1.0)
        await aio.update(async_people, "Sam", height=2.0)
        await aio.insert(async_people, Person("Bo", 3.0))

    run(main())
    assert co.get_many(sync_people, ["Sam", "Bo"]) == [Person("Sam", 2.0), Person("Bo", 3.0)]


def test_async_filesystem_io_leaves_the_loop_free(tmp_path: Path) -> None:
    people = co.Repo(PERSON, backend=co.AsyncFileSystemBackend(tmp_path, durable=True))

    async def main() -> float:
        gaps: list[float] = []
        done = asyncio.Event()

        async def tick() -> None:
            last = time.monotonic()
            while not done.is_set():
                await asyncio.sleep(0.001)
                now = time.monotonic()
                gaps.append(now - last)
                last = now

        ticker = asyncio.create_task(tick())
        await asyncio.gather(*(aio.insert(people, Person(f"p{i}", 1.0)) for i in range(100)))
        done.set()
        await ticker
        return max(gaps)

    # Done on the loop, 100 fsynced inserts would stall it for their whole run
    # (0.5-2 s here); in threads the worst gap is tens of ms on a loaded 2-core
    # machine (test_aio_concurrency checks the ~20 ms target over repeated passes).
    assert run(main()) < 0.25


def test_async_tier_serves_reads_from_near_and_writes_through(tmp_path: Path) -> None:
    near = co.MemoryBackend()
    far = co.AsyncFileSystemBackend(tmp_path)
    tier = co.AsyncTieredBackend(near, far, near_ttl=30)
    people = co.Repo(PERSON, backend=tier, ttl=100)
    key = PERSON.encode_key("Sam")

    async def main() -> None:
        await aio.insert(people, Person("Sam", 1.0))
        assert near.get_with_ttl(key) is not None  # the write copied into near (capped TTL)
        copy = near.get_with_ttl(key)
        assert copy is not None
        assert 0 < copy[1] <= 30
        near.delete(key)
        assert await aio.get(people, "Sam") == Person("Sam", 1.0)  # read through far
        assert near.get(key) is not None  # and filled near
        await far.delete(key)  # another process deletes in far: near still serves its copy
        assert await aio.get(people, "Sam") == Person("Sam", 1.0)
        assert await aio.delete(people, "Sam") is False  # far decides; near dropped
        assert near.get(key) is None
        await tier.aclose()

    run(main())


def test_a_cancelled_execute_lets_every_plan_clean_up(
    async_backend: co.MemoryBackend | co.AsyncBackend,
) -> None:
    async def main() -> None:
        people = co.Repo(PERSON, backend=async_backend)
        started = asyncio.Event()

        async def slow(name: str) -> Person:
            started.set()
            await asyncio.sleep(10)
            return Person(name, 1.0)

        # Ops are typed by the sync declarations: a coroutine loader runs under
        # aio.execute only, which the op's type cannot say.
        loader = cast("Callable[[str], Person]", slow)
        try:
            await aio.insert(people, Person("Bo", 1.0))
            task = asyncio.create_task(
                aio.execute(
                    co.ops.get_or_load(people, "Sam", loader),
                    co.ops.get_or_load(people, "Al", loader),
                    co.ops.update(people, "Bo", height=2.0),
                )
            )
            await asyncio.wait_for(started.wait(), 5)
            begun = time.monotonic()
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert time.monotonic() - begun < 2  # the other loader was never started
            for name in ("Sam", "Al"):
                lock = crud.LOCK_PREFIX + PERSON.encode_key(name)
                has = (
                    async_backend.has(lock)
                    if isinstance(async_backend, co.MemoryBackend)
                    else await async_backend.has(lock)
                )
                assert not has, name
            # The next calls work at once (no lock, connections usable).
            assert await aio.get_or_load(people, "Sam", lambda n: Person(n, 3.0)) == Person(
                "Sam", 3.0
            )
            assert (await aio.get(people, "Bo")).height in (1.0, 2.0)
        finally:
            await _closing(async_backend)

    run(main())
