"""Coroutine twins of the record functions, for asyncio services: ``await aio.get(repo, key)``.

Every public function of :mod:`cacheorm.crud` has a twin here with the same
parameters, results, errors and atomicity, plus :func:`execute`::

    from cacheorm import aio

    people = co.Repo(PERSON, backend=co.AsyncRedisBackend(url="redis://127.0.0.1:6380/0"))
    sam = await aio.insert(people, Person("Sam", 178.8))
    sam = await aio.update(people, "Sam", height=180.0)  # atomic, as in sync
    results = await aio.execute(co.ops.get(people, "Sam"), co.ops.delete(people, "Bob"))

The twins are derived from the functions' one declaration each (see
:mod:`cacheorm.engine`): they run the very same plans as the sync functions,
through :func:`cacheorm.engine.run_one_async` and
:func:`~cacheorm.engine.run_many_async`, so the two cannot drift apart. A
function declared later gets its twin here automatically (at runtime; its
typed line is one ``name = twin(crud.name)``).

Backends: an :class:`~cacheorm.AsyncBackend` (``co.AsyncRedisBackend``,
``co.AsyncMemcachedBackend``, ``co.AsyncFileSystemBackend``,
``co.AsyncTieredBackend``) is awaited; ``co.MemoryBackend`` serves ``aio`` and
``co`` alike (it does no I/O, so it is called directly). A repo whose backend
blocks on I/O (``co.RedisBackend``...) given to a twin raises ``TypeError``;
decided once per repo. The callables of :func:`modify`, :func:`get_or_load` and
:func:`get_many_or_load` may be plain functions or coroutine functions;
:func:`cached` is ``co.cached`` for coroutine loaders.

A call cancelled at any await (``task.cancel()``, ``asyncio.timeout``) lets
its plan clean up first (``get_or_load`` releases its lock) and then raises
``CancelledError``; a record is written by one command, so it is either
written whole or not at all.
"""

from __future__ import annotations

import builtins
import functools
import inspect
from collections.abc import Awaitable, Callable, Coroutine, Hashable, Iterable, Mapping
from typing import Any, Concatenate, Generic, Protocol, cast, overload

from cacheorm import crud
from cacheorm.crud import KL
from cacheorm.engine import DECLARED, P, Plan, T, dressed, run_many_async, run_one_async
from cacheorm.ops import Op, jobs_of, settle
from cacheorm.ops import execute as _execute_sync
from cacheorm.readthrough import ReadThrough, key_and_loader
from cacheorm.repo import K, R, Repo
from cacheorm.stats import observed

__all__ = ["cached", "execute", "twin"]
__all__ += crud.__all__  # one coroutine twin per public function


async def _drive(name: str, repo: Repo[R, K], /, *args: object, **kwargs: object) -> object:
    """Run the declared plan ``name`` with these arguments on the repo's backend."""
    direct = repo.aio_direct  # TypeError for a backend that blocks on I/O; cached per repo
    plan = DECLARED[name].plan(repo, *args, **kwargs)
    if repo.stats is not None:  # instrumented: counted (cacheorm.stats)
        plan = observed(name, repo, plan, args[0] if args else None)
    return await run_one_async(repo.backend, plan, repo.on_backend_error == "miss", direct)


def twin(
    function: Callable[Concatenate[Repo[R, K], P], T],
) -> Callable[Concatenate[Repo[R, K], P], Coroutine[Any, Any, T]]:
    """The coroutine twin of a declared public function: its very parameters, awaited result.

    The twin's result is typed ``Coroutine[Any, Any, T]``, exactly what an
    ``async def`` returning ``T`` gives, so a twin fits wherever a coroutine
    function does (``asyncio.create_task``, ``gather``, a user's annotations).

    Args:
        function: a function declared with :func:`cacheorm.engine.declare`.
    """
    declared = DECLARED[function.__name__]
    plan = cast("Callable[Concatenate[Repo[R, K], P], Plan[T]]", declared.plan)  # its own T
    name = declared.name

    kinds = [parameter.kind for parameter in inspect.signature(plan).parameters.values()]
    if kinds == [inspect.Parameter.POSITIONAL_ONLY] * 2:
        # The common shape (get, insert, delete, ...) without *args packing, as in sync.
        plan_of_one = cast("Callable[[Repo[R, K], object], Plan[T]]", plan)

        async def run_one_arg(repo: Repo[R, K], arg: object, /) -> T:
            direct = repo.aio_direct  # TypeError for a backend that blocks on I/O
            miss = repo.on_backend_error == "miss"
            if repo.stats is not None:  # instrumented: counted (cacheorm.stats)
                counted = observed(name, repo, plan_of_one(repo, arg), arg)
                return await run_one_async(repo.backend, counted, miss, direct)
            return await run_one_async(repo.backend, plan_of_one(repo, arg), miss, direct)

        runner = cast("Callable[Concatenate[Repo[R, K], P], Coroutine[Any, Any, T]]", run_one_arg)
        return dressed(runner, function, __name__, lambda result: result)

    # _drive inlined: one coroutine frame less on every call.
    async def run(repo: Repo[R, K], /, *args: P.args, **kwargs: P.kwargs) -> T:
        direct = repo.aio_direct  # TypeError for a backend that blocks on I/O; cached per repo
        miss = repo.on_backend_error == "miss"
        if repo.stats is not None:  # instrumented: counted (cacheorm.stats)
            counted = observed(name, repo, plan(repo, *args, **kwargs), args[0] if args else None)
            return await run_one_async(repo.backend, counted, miss, direct)
        return await run_one_async(repo.backend, plan(repo, *args, **kwargs), miss, direct)

    return dressed(run, function, __name__, lambda result: result)


add = twin(crud.add)
clear = twin(crud.clear)
delete = twin(crud.delete)
delete_many = twin(crud.delete_many)
exists = twin(crud.exists)
get = twin(crud.get)
get_many = twin(crud.get_many)
get_or_none = twin(crud.get_or_none)
insert = twin(crud.insert)
insert_many = twin(crud.insert_many)
replace = twin(crud.replace)
update = twin(crud.update)
update_many = twin(crud.update_many)


async def modify(repo: Repo[R, K], key: K, fn: Callable[[R], R | Awaitable[R]], /) -> R:
    """Replace the record under ``key`` by ``fn(old)`` atomically; return the new record.

    ``fn`` is a plain or a coroutine function; it may be called more than once
    under contention, so it must be pure. As :func:`cacheorm.modify` otherwise.
    """
    return cast("R", await _drive("modify", repo, key, fn))


@overload
async def get_or_load(
    repo: Repo[R, K],
    key: K,
    loader: Callable[[K], R | Awaitable[R | None] | None],
    /,
    *,
    lock_ttl: int = 10,
    wait: float = 10.0,
    negative_ttl: int | None = None,
) -> R: ...
@overload
async def get_or_load(
    repo: Repo[R, Hashable],
    key: KL,
    loader: Callable[[KL], R | Awaitable[R | None] | None],
    /,
    *,
    lock_ttl: int = 10,
    wait: float = 10.0,
    negative_ttl: int | None = None,
) -> R: ...
async def get_or_load(
    repo: Repo[R, K],
    key: K,
    loader: Callable[[KL], R | Awaitable[R | None] | None],
    /,
    *,
    lock_ttl: int = 10,
    wait: float = 10.0,
    negative_ttl: int | None = None,
) -> R:
    """Return the stored record, or load, store and return it on a miss.

    ``loader`` is a plain or a coroutine function, called once across tasks,
    threads and processes sharing the backend (the others poll for its
    result). A cancelled call releases the lock it holds. As
    :func:`cacheorm.get_or_load` otherwise (``None`` from the loader raises
    ``NotFound``, remembered for ``negative_ttl`` seconds if set).
    """
    options = {"lock_ttl": lock_ttl, "wait": wait, "negative_ttl": negative_ttl}
    return cast("R", await _drive("get_or_load", repo, key, loader, **options))


@overload
async def get_many_or_load(
    repo: Repo[R, K],
    keys: Iterable[K],
    loader: Callable[[list[K]], Mapping[K, R | None] | Awaitable[Mapping[K, R | None]]],
    /,
    *,
    lock_ttl: int = 10,
    wait: float = 10.0,
    negative_ttl: int | None = None,
) -> list[R | None]: ...
@overload
async def get_many_or_load(
    repo: Repo[R, Hashable],
    keys: Iterable[KL],
    loader: Callable[[list[KL]], Mapping[KL, R | None] | Awaitable[Mapping[KL, R | None]]],
    /,
    *,
    lock_ttl: int = 10,
    wait: float = 10.0,
    negative_ttl: int | None = None,
) -> list[R | None]: ...
async def get_many_or_load(
    repo: Repo[R, K],
    keys: Iterable[K],
    loader: Callable[[list[KL]], Mapping[KL, R | None] | Awaitable[Mapping[KL, R | None]]],
    /,
    *,
    lock_ttl: int = 10,
    wait: float = 10.0,
    negative_ttl: int | None = None,
) -> list[R | None]:
    """Return the records in key order, loading the missing ones with one loader call.

    ``loader`` is a plain or a coroutine function. A cancelled call releases
    every lock it holds. As :func:`cacheorm.get_many_or_load` otherwise.
    """
    options = {"lock_ttl": lock_ttl, "wait": wait, "negative_ttl": negative_ttl}
    found = await _drive("get_many_or_load", repo, keys, loader, **options)
    return cast("list[R | None]", found)


class AsyncCached(Generic[P, R, K]):
    """A coroutine loader made a read-through by :func:`cached`; await it as the loader.

    As :class:`cacheorm.readthrough.Cached`, through :func:`get_or_load`.
    """

    __name__: str  # the loader's, as functools.update_wrapper copies them
    __wrapped__: Callable[P, Awaitable[R | None]]

    def __init__(
        self, through: ReadThrough[R, K], loader: Callable[P, Awaitable[R | None]]
    ) -> None:
        functools.update_wrapper(self, loader)
        self.through = through
        self.loader = loader

    async def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        key, load = key_and_loader(self.loader, args, kwargs)
        options = self.through.options
        return cast("R", await _drive("get_or_load", self.through.repo, key, load, **options))

    async def invalidate(self, key: K) -> bool:
        """Delete the record of ``key``, or its remembered absence; return whether one was there."""
        return await delete(self.through.repo, key)


class AsyncCachedDecorator(Generic[R, K]):
    """What :func:`cached` returns: apply it to a coroutine loader."""

    def __init__(self, through: ReadThrough[R, K]) -> None:
        self.through = through

    def __call__(self, loader: Callable[P, Awaitable[R | None]], /) -> AsyncCached[P, R, K]:
        return AsyncCached(self.through, loader)


def cached(
    repo: Repo[R, K],
    /,
    *,
    lock_ttl: int = 10,
    wait: float = 10.0,
    negative_ttl: int | None = None,
) -> AsyncCachedDecorator[R, K]:
    """:func:`cacheorm.cached` for a coroutine loader ``async (key) -> R | None``.

    The decorated coroutine function takes the loader's parameters and returns
    the repo's record through :func:`get_or_load` (a cancelled call releases
    its lock); ``await f.invalidate(key)`` deletes the record or remembered
    absence.

    Raises:
        ValidationError: an illegal ``lock_ttl``, ``wait`` or ``negative_ttl``.
    """
    return AsyncCachedDecorator(ReadThrough(repo, lock_ttl, wait, negative_ttl))


# Twins of functions declared after this module was written: runtime only (the
# typed lines above are what a type checker sees).
def _derive_the_rest() -> None:
    for name, declared in DECLARED.items():
        if name not in globals():
            globals()[name] = twin(declared.plan)


_derive_the_rest()


class _AwaitedTwin(Protocol):
    """What :func:`awaited_twin` returns: generic in the sync function's own overloads."""

    def __call__(self, sync: Callable[P, T], /) -> Callable[P, Coroutine[Any, Any, T]]: ...


def awaited_twin(run: Callable[..., Coroutine[Any, Any, object]], /) -> _AwaitedTwin:
    """``awaited_twin(run)(sync)`` is ``run``, typed as the awaited twin of ``sync``.

    For a coroutine function whose work differs from its sync twin's (as
    :func:`execute`'s does) but whose parameters and results are the same,
    awaited: the overloads are written once, on ``sync``, and type checkers
    carry every one of them over (a ParamSpec solved from one overloaded
    argument keeps its overloads; hence the two calls).
    """

    def typed(sync: Callable[P, T], /) -> Callable[P, Coroutine[Any, Any, T]]:
        run.__name__, run.__qualname__ = sync.__name__, sync.__qualname__
        return cast("Callable[P, Coroutine[Any, Any, T]]", run)  # run takes what sync takes

    return typed


async def _execute(
    *ops: Op[T], raise_on_error: bool = True
) -> builtins.list[T] | builtins.list[T | Exception]:
    """Run the ops, one round trip per backend and phase; return their results in order.

    The ``co.ops.*`` values of :func:`cacheorm.execute`, run on the event loop
    with the same grouping, ordering and per-op errors.

    Args:
        ops: values from ``co.ops.<name>(...)``, over any repos and async backends.
        raise_on_error: ``True`` raises the first op's error after every op has run;
            ``False`` puts each failed op's exception in its result slot.

    Raises:
        TypeError: an op's repo has a backend that blocks on I/O (nothing is run).
    """
    for op in ops:
        op.repo.aio_direct  # noqa: B018  # TypeError for a blocking backend, before anything runs
    results = await run_many_async(jobs_of(ops))
    return settle(results, raise_on_error)  # type: ignore[return-value]  # each slot holds its op's T (or an error)


execute = awaited_twin(_execute)(_execute_sync)
