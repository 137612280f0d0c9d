"""Pipelines as values: ``co.ops.<name>(...)`` describes a call, ``co.execute`` runs many.

An op is an inert, frozen, hashable value: building one does nothing. Each op
builder is derived by :func:`op` from its function's one declaration in
:mod:`cacheorm.crud`, so it takes the very same parameters. ``execute`` runs the
same plans as the direct functions (see :mod:`cacheorm.engine`),
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
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Concatenate, Generic, Literal, TypeVar, cast, overload

from cacheorm import crud
from cacheorm.engine import DECLARED, Declared, Job, P, Plan, T, dressed, run_many
from cacheorm.repo import K, R, Repo
from cacheorm.stats import observed

__all__ = ["Op", "execute"]
__all__ += crud.__all__  # one op builder per public function

T1 = TypeVar("T1")
T2 = TypeVar("T2")
T3 = TypeVar("T3")
T4 = TypeVar("T4")
T5 = TypeVar("T5")
T6 = TypeVar("T6")
T_co = TypeVar("T_co", covariant=True)


@dataclass(frozen=True, eq=True, repr=True)
class Op(Generic[T_co]):
    """One described call: the function's name, its repo and its other arguments.

    Equal ops compare equal; an op is hashable even when it carries a
    ``TypedDict`` record (the hash covers the name and the repo).
    """

    name: str
    repo: Repo[object, object]
    args: tuple[object, ...]
    kwargs: Mapping[str, object] = field(default_factory=dict)

    def __hash__(self) -> int:
        return hash((self.name, self.repo))

    @property
    def declared(self) -> Declared:
        """The declaration of the op's function (see :func:`cacheorm.engine.declare`)."""
        return DECLARED[self.name]

    @property
    def multi_phase(self) -> bool:
        """Whether the op may need several round trips (see :class:`cacheorm.engine.Job`)."""
        return self.declared.multi_phase or self.barrier

    @property
    def barrier(self) -> bool:
        """Whether the op writes keys it cannot name in advance (an ``AutoField`` insert, a clear).

        :func:`execute` runs it alone in order on its backend (see
        :attr:`cacheorm.engine.Job.barrier`), so later ops see the key it drew.
        """
        declared = self.declared
        return declared.barrier or (declared.draws_keys and self.repo.schema.auto_key)

    def plan(self) -> Plan[T_co]:
        """The plan that carries this op out (used by :func:`execute`)."""
        plan = self.declared.plan(self.repo, *self.args, **self.kwargs)
        if self.repo.stats is not None:  # instrumented: counted (cacheorm.stats)
            plan = observed(self.name, self.repo, plan, self.args[0] if self.args else None)
        return cast("Plan[T_co]", plan)  # the declaration's Plan[T] for this op's T


def op(
    function: Callable[Concatenate[Repo[R, K], P], T],
) -> Callable[Concatenate[Repo[R, K], P], Op[T]]:
    """The op builder of a public function: its very parameters, an :class:`Op` as result.

    Building an op does nothing but record the arguments (the argument after
    the repo as its declaration's ``snapshot`` says, e.g. keys as a tuple).
    """
    declared = DECLARED[function.__name__]
    snapshot = cast("Callable[[object], object] | None", declared.snapshot)  # takes that argument

    def build(repo: Repo[R, K], /, *args: P.args, **kwargs: P.kwargs) -> Op[T]:
        kept = tuple(args)
        if snapshot is not None and kept:
            kept = (snapshot(kept[0]), *kept[1:])
        return Op(declared.name, repo, kept, dict(kwargs))  # type: ignore[arg-type]  # Repo is invariant; ops only read it

    dressed(build, function, __name__, lambda result: f"Op[{result}]")
    build.__doc__ = (
        f"Describe :func:`cacheorm.{declared.name}` as an :class:`Op` for :func:`execute`."
    )
    return build


add = op(crud.add)
clear = op(crud.clear)
delete = op(crud.delete)
delete_many = op(crud.delete_many)
exists = op(crud.exists)
get = op(crud.get)
get_many = op(crud.get_many)
get_many_or_load = op(crud.get_many_or_load)
get_or_load = op(crud.get_or_load)
get_or_none = op(crud.get_or_none)
insert = op(crud.insert)
insert_many = op(crud.insert_many)
modify = op(crud.modify)
replace = op(crud.replace)
update = op(crud.update)
update_many = op(crud.update_many)


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
        >>> import cacheorm as co
        >>> from cacheorm.demo import PERSON, Person  # co.Schema(Person, key="name")
        >>> people = co.Repo(PERSON)
        >>> co.execute(co.ops.insert(people, Person("Sam", 1.8)), co.ops.exists(people, "Sam"))
        [Person(name='Sam', height=1.8, married=False, email=None), True]
    """
    results = run_many(jobs_of(ops))
    return settle(results, raise_on_error)  # type: ignore[return-value]  # each slot holds its op's T (or an error)


def jobs_of(ops: Iterable[Op[object]]) -> builtins.list[Job]:
    """The engine's jobs for these ops, in order (for :func:`execute` and its ``aio`` twin)."""
    return [
        Job(
            op.repo.backend,
            op.plan(),
            miss_on_error=op.repo.on_backend_error == "miss",
            multi_phase=op.multi_phase,
            barrier=op.barrier,
        )
        for op in ops
    ]


def settle(results: builtins.list[object], raise_on_error: bool) -> builtins.list[object]:
    """The results of :func:`execute` (and its ``aio`` twin), once every op has run.

    Raises:
        Exception: the first op's error, with ``raise_on_error``.
    """
    if raise_on_error:
        for result in results:
            if isinstance(result, Exception):
                raise result
    return results
