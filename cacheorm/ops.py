"""Pipelines as values: ``co.ops.<name>(...)`` describes a call, ``co.execute`` runs many.

An op is an inert, frozen, hashable value: building one does nothing. ``execute``
runs the same plans as the direct functions (see :mod:`cacheorm.engine`),
grouping each phase's storage commands per backend, so a pipeline of reads and
writes over several repos costs one round trip per backend and phase::

    results = co.execute(
        co.ops.insert(people, sam),
        co.ops.get(notes, 1),
        co.ops.delete(collections, ("Bob", 1)),
    )

Errors are per op: with ``raise_on_error=True`` (the default) every op still
runs, then the first failure is raised; with ``raise_on_error=False`` a failed
op's slot holds its exception instead of a result. Each op follows its own
repo's ``on_backend_error``, even when its commands share a call with other
repos' ops, and the results equal running the ops one after another (an
``AutoField`` insert runs before later ops on its backend, so they see the
key it drew).
"""

from __future__ import annotations

import builtins
from collections.abc import Callable, Hashable, Iterable, Mapping
from dataclasses import dataclass
from typing import Generic, Literal, TypeVar, cast, overload

from typing_extensions import TypeVar as TypeVarWithDefault

from cacheorm import crud
from cacheorm.engine import Job, Plan, run_many
from cacheorm.repo import Repo

__all__ = [
    "Op",
    "add",
    "delete",
    "delete_many",
    "execute",
    "exists",
    "get",
    "get_many",
    "get_or_load",
    "get_or_none",
    "insert",
    "insert_many",
    "modify",
    "replace",
    "update",
    "update_many",
]

R = TypeVar("R")
K = TypeVarWithDefault("K", default=Hashable)
T = TypeVar("T")
T1 = TypeVar("T1")
T2 = TypeVar("T2")
T3 = TypeVar("T3")
T4 = TypeVar("T4")
T5 = TypeVar("T5")
T6 = TypeVar("T6")
T_co = TypeVar("T_co", covariant=True)


@dataclass(frozen=True, eq=True, repr=True)
class Op(Generic[T_co]):
    """One described call: the function's name, its repo and its arguments.

    Equal ops compare equal; an op is hashable even when it carries a
    ``TypedDict`` record (the hash covers the name and the repo).
    """

    name: str
    repo: Repo[object, object]
    args: tuple[object, ...]

    def __hash__(self) -> int:
        return hash((self.name, self.repo))

    @property
    def multi_phase(self) -> bool:
        """Whether the op may need several round trips (see :class:`cacheorm.engine.Job`)."""
        return self.name in _MULTI_PHASE or self.barrier

    @property
    def barrier(self) -> bool:
        """Whether the op writes keys it cannot name in advance (an ``AutoField`` insert).

        :func:`execute` runs it alone in order on its backend (see
        :attr:`cacheorm.engine.Job.barrier`), so later ops see the key it drew.
        """
        return self.name in _INSERTS and self.repo.schema.auto_key

    def plan(self) -> Plan[T_co]:
        """The plan that carries this op out (used by :func:`execute`)."""
        return cast("Plan[T_co]", _PLANS[self.name](self.repo, *self.args))


_MULTI_PHASE = frozenset({"update", "modify", "update_many", "get_or_load"})
_INSERTS = frozenset({"insert", "insert_many", "add"})

_PLANS: dict[str, Callable[..., Plan[object]]] = {
    "insert": crud.plan_insert,
    "insert_many": crud.plan_insert_many,
    "add": lambda repo, record: crud.plan_insert(repo, record, only_new=True),
    "get": crud.plan_get,
    "get_or_none": crud.plan_get_or_none,
    "get_many": crud.plan_get_many,
    "exists": crud.plan_exists,
    "update": crud.plan_update,
    "modify": crud.plan_modify,
    "update_many": crud.plan_update_many,
    "replace": crud.plan_replace,
    "delete": crud.plan_delete,
    "delete_many": crud.plan_delete_many,
    "get_or_load": crud.plan_get_or_load,
}


def _op(name: str, repo: Repo[R, K], *args: object) -> Op[T]:
    return Op(name, repo, args)  # type: ignore[arg-type]  # Repo is invariant; ops only read it


def insert(repo: Repo[R, K], record: R, /) -> Op[R]:
    """Describe :func:`cacheorm.insert`."""
    return _op("insert", repo, record)


def insert_many(repo: Repo[R, K], records: Iterable[R], /) -> Op[builtins.list[R]]:
    """Describe :func:`cacheorm.insert_many`."""
    return _op("insert_many", repo, tuple(records))


def add(repo: Repo[R, K], record: R, /) -> Op[R]:
    """Describe :func:`cacheorm.add`."""
    return _op("add", repo, record)


def get(repo: Repo[R, K], key: K, /) -> Op[R]:
    """Describe :func:`cacheorm.get`."""
    return _op("get", repo, key)


def get_or_none(repo: Repo[R, K], key: K, /) -> Op[R | None]:
    """Describe :func:`cacheorm.get_or_none`."""
    return _op("get_or_none", repo, key)


def get_many(repo: Repo[R, K], keys: Iterable[K], /) -> Op[builtins.list[R | None]]:
    """Describe :func:`cacheorm.get_many`."""
    return _op("get_many", repo, tuple(crud.key_list(keys)))


def exists(repo: Repo[R, K], key: K, /) -> Op[bool]:
    """Describe :func:`cacheorm.exists`."""
    return _op("exists", repo, key)


def update(repo: Repo[R, K], key: K, /, **changes: object) -> Op[R]:
    """Describe :func:`cacheorm.update`."""
    return _op("update", repo, key, changes)


def modify(repo: Repo[R, K], key: K, fn: Callable[[R], R], /) -> Op[R]:
    """Describe :func:`cacheorm.modify`."""
    return _op("modify", repo, key, fn)


def update_many(
    repo: Repo[R, K], changes: Mapping[K, Mapping[str, object]], /
) -> Op[builtins.list[R | None]]:
    """Describe :func:`cacheorm.update_many`."""
    return _op("update_many", repo, {k: dict(v) for k, v in changes.items()})


def replace(repo: Repo[R, K], record: R, /) -> Op[R]:
    """Describe :func:`cacheorm.replace`."""
    return _op("replace", repo, record)


def delete(repo: Repo[R, K], key: K, /) -> Op[bool]:
    """Describe :func:`cacheorm.delete`."""
    return _op("delete", repo, key)


def delete_many(repo: Repo[R, K], keys: Iterable[K], /) -> Op[int]:
    """Describe :func:`cacheorm.delete_many`."""
    return _op("delete_many", repo, tuple(crud.key_list(keys)))


def get_or_load(repo: Repo[R, K], key: K, loader: Callable[[K], R], /) -> Op[R]:
    """Describe :func:`cacheorm.get_or_load`."""
    return _op("get_or_load", repo, key, loader)


# One overload pair per arity up to 6 ops: each op's result type joins the list's
# union (a single `*ops: Op[T]` would solve T to `object` and, as Repo is
# invariant, reject ops over different record types). Longer pipelines fall
# back to one T, fine for ops of one result type or a `*ops` list.
@overload
def execute(op1: Op[T1], /, *, raise_on_error: Literal[True] = True) -> builtins.list[T1]: ...
@overload
def execute(op1: Op[T1], /, *, raise_on_error: bool) -> builtins.list[T1 | Exception]: ...
@overload
def execute(
    op1: Op[T1], op2: Op[T2], /, *, raise_on_error: Literal[True] = True
) -> builtins.list[T1 | T2]: ...
@overload
def execute(
    op1: Op[T1], op2: Op[T2], /, *, raise_on_error: bool
) -> builtins.list[T1 | T2 | Exception]: ...
@overload
def execute(
    op1: Op[T1], op2: Op[T2], op3: Op[T3], /, *, raise_on_error: Literal[True] = True
) -> builtins.list[T1 | T2 | T3]: ...
@overload
def execute(
    op1: Op[T1], op2: Op[T2], op3: Op[T3], /, *, raise_on_error: bool
) -> builtins.list[T1 | T2 | T3 | Exception]: ...
@overload
def execute(
    op1: Op[T1], op2: Op[T2], op3: Op[T3], op4: Op[T4], /, *, raise_on_error: Literal[True] = True
) -> builtins.list[T1 | T2 | T3 | T4]: ...
@overload
def execute(
    op1: Op[T1], op2: Op[T2], op3: Op[T3], op4: Op[T4], /, *, raise_on_error: bool
) -> builtins.list[T1 | T2 | T3 | T4 | Exception]: ...
@overload
def execute(
    op1: Op[T1],
    op2: Op[T2],
    op3: Op[T3],
    op4: Op[T4],
    op5: Op[T5],
    /,
    *,
    raise_on_error: Literal[True] = True,
) -> builtins.list[T1 | T2 | T3 | T4 | T5]: ...
@overload
def execute(
    op1: Op[T1], op2: Op[T2], op3: Op[T3], op4: Op[T4], op5: Op[T5], /, *, raise_on_error: bool
) -> builtins.list[T1 | T2 | T3 | T4 | T5 | Exception]: ...
@overload
def execute(
    op1: Op[T1],
    op2: Op[T2],
    op3: Op[T3],
    op4: Op[T4],
    op5: Op[T5],
    op6: Op[T6],
    /,
    *,
    raise_on_error: Literal[True] = True,
) -> builtins.list[T1 | T2 | T3 | T4 | T5 | T6]: ...
@overload
def execute(
    op1: Op[T1],
    op2: Op[T2],
    op3: Op[T3],
    op4: Op[T4],
    op5: Op[T5],
    op6: Op[T6],
    /,
    *,
    raise_on_error: bool,
) -> builtins.list[T1 | T2 | T3 | T4 | T5 | T6 | Exception]: ...
@overload
def execute(*ops: Op[T], raise_on_error: Literal[True] = True) -> builtins.list[T]: ...
@overload
def execute(*ops: Op[T], raise_on_error: Literal[False]) -> builtins.list[T | Exception]: ...
@overload
def execute(*ops: Op[T], raise_on_error: bool) -> builtins.list[T | Exception]: ...
def execute(
    *ops: Op[T], raise_on_error: bool = True
) -> builtins.list[T] | builtins.list[T | Exception]:
    """Run the ops, one round trip per backend and phase; return their results in order.

    Args:
        ops: values from ``co.ops.<name>(...)``, over any repos and backends.
        raise_on_error: ``True`` raises the first op's error after every op has run
            (ops that succeeded stay done); ``False`` puts each failed op's
            exception in its result slot.

    Example:
        >>> from typing import NamedTuple
        >>> import cacheorm as co
        >>> class Person(NamedTuple):
        ...     name: str
        ...     height: float
        >>> people = co.Repo(co.Schema(Person, key="name"))
        >>> co.execute(co.ops.insert(people, Person("Sam", 1.8)), co.ops.exists(people, "Sam"))
        [Person(name='Sam', height=1.8), True]
    """
    jobs = [
        Job(
            op.repo.backend,
            op.plan(),
            miss_on_error=op.repo.on_backend_error == "miss",
            multi_phase=op.multi_phase,
            barrier=op.barrier,
        )
        for op in ops
    ]
    results = run_many(jobs)
    if raise_on_error:
        for result in results:
            if isinstance(result, Exception):
                raise result
    return results  # type: ignore[return-value]  # each slot holds its op's T (or an error)
