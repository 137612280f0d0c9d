"""Runs plans against backends: one round trip per backend and phase.

Every public function is written once, as a *plan*: a generator that yields the
storage :class:`~cacheorm.backends.base.Command` list it needs next, receives
their results, and finally returns the function's result. A direct call such
as ``co.get`` drives one plan (:func:`run_one`); ``co.execute`` drives many at
once (:func:`run_many`), merging each phase's commands per backend into one
call. Both paths run the same plan code, so they cannot drift apart.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Generator, Sequence
from typing import NamedTuple, TypeAlias, TypeVar

from cacheorm.backends.base import Backend, Command, apply
from cacheorm.errors import BackendError, CacheORMError

__all__ = ["Job", "Outage", "Plan", "plan_all", "run_many", "run_one"]

logger = logging.getLogger(__name__)

T = TypeVar("T")
Plan: TypeAlias = Generator[list[Command], list[object], T]
"""Yields the commands of a phase, receives their results in order, returns the result."""


def dispatch(
    backend: Backend, commands: Sequence[Command], isolate_errors: bool = False
) -> list[object]:
    """Send one phase of commands to one backend in a single call where possible.

    ``isolate_errors`` keeps one failing write from failing the others (``batch``
    reports errors per command; ``set_many`` fails as a whole).
    """
    if len(commands) == 1:
        return [apply(backend, commands[0])]
    first = commands[0]
    if all(c.op == "get" for c in commands):
        return list(backend.get_many(*[c.key for c in commands]))
    if (
        not isolate_errors
        and first.op == "set"
        and all(c.op == "set" and c.ttl == first.ttl for c in commands)
    ):
        ttl = first.ttl if isinstance(first.ttl, int) else None  # a set never carries KEEP_TTL
        backend.set_many({c.key: c.value for c in commands}, ttl)
        return [True] * len(commands)
    return backend.batch(commands)


class Outage:
    """Answers commands as a miss while a backend is down, for ``on_backend_error="miss"``.

    Reads miss and writes are skipped. Each outage is logged once (at WARNING)
    and counted in :attr:`count`; the log line repeats after the backend has
    answered again.
    """

    count = 0
    _down: set[int] = set()  # noqa: RUF012  # process-wide by design
    _lock = threading.Lock()

    @classmethod
    def answer(
        cls, backend: Backend, commands: Sequence[Command], results: Sequence[object]
    ) -> list[object]:
        """Replace each ``BackendError`` in ``results`` by the command's miss answer."""
        errors = [r for r in results if isinstance(r, BackendError)]
        if not errors:
            cls.recovered(backend)
            return list(results)
        with cls._lock:
            cls.count += 1
            first = id(backend) not in cls._down
            cls._down.add(id(backend))
        if first:
            logger.warning(
                "cache backend %r is unavailable, serving misses: %s", backend, errors[0]
            )
        return [
            _miss(c, r) if isinstance(r, BackendError) else r
            for c, r in zip(commands, results, strict=True)
        ]

    @classmethod
    def recovered(cls, backend: Backend) -> None:
        if cls._down and id(backend) in cls._down:
            with cls._lock:
                cls._down.discard(id(backend))
            logger.warning("cache backend %r is available again", backend)


def _miss(c: Command, err: BackendError) -> object:
    if c.op in ("get", "gets"):
        return None
    if c.op in ("set", "add", "replace", "cas"):
        return True  # skipped: the caller proceeds as if written
    if c.op in ("delete", "delete_if", "has", "touch"):
        return False
    return err  # incr cannot be answered without the server


def call(
    backend: Backend,
    commands: Sequence[Command],
    miss_on_error: bool,
    isolate_errors: bool = False,
) -> list[object]:
    """One phase on one backend: :func:`dispatch`, with outages answered as misses if asked.

    Raises:
        CacheORMError: the call as a whole failed (and is not answered as a miss).
    """
    try:
        results = dispatch(backend, commands, isolate_errors)
    except BackendError as err:
        if not miss_on_error:
            raise
        results = [err] * len(commands)
    return Outage.answer(backend, commands, results) if miss_on_error else results


def run_one(backend: Backend, plan: Plan[T], miss_on_error: bool = False) -> T:
    """Drive one plan to completion against one backend and return its result.

    A failed call is thrown into the plan at its ``yield``, so the plan can
    clean up (``get_or_load`` releases its lock) before the error reaches the
    caller.
    """
    try:
        commands = next(plan)
        while True:
            try:
                results = call(backend, commands, miss_on_error)
            except CacheORMError as err:
                commands = plan.throw(err)
                continue
            commands = plan.send(results)
    except StopIteration as stop:
        result: T = stop.value
        return result
    finally:
        plan.close()


class Job(NamedTuple):
    """One plan for :func:`run_many`."""

    backend: Backend
    plan: Plan[object]
    miss_on_error: bool = False
    multi_phase: bool = False
    """The plan may take several phases (a read-modify-write, an auto key, a
    read-through): later plans touching its keys wait until it is done."""


def run_many(jobs: Sequence[Job]) -> list[object]:
    """Drive several plans together; each phase is one call per distinct backend.

    The result is what running the plans one after another would give. Within a
    phase, a backend runs the merged commands in order, so single-phase plans
    share a phase freely; a plan that touches a key of an earlier, unfinished
    multi-phase plan (or of an earlier plan held back) waits for it.

    Returns:
        Each plan's result in order, or the exception it raised.
    """
    results: list[object] = [None] * len(jobs)
    pending: dict[int, list[Command]] = {}
    touched: dict[int, set[tuple[int, bytes]]] = {}
    for i, job in enumerate(jobs):
        _advance(job.plan, i, None, pending, results)
    while pending:
        blocked: set[tuple[int, bytes]] = set()
        groups: dict[int, list[int]] = {}
        for i in sorted(pending):
            job = jobs[i]
            keys = {(id(job.backend), c.key) for c in pending[i]}
            if job.multi_phase:
                keys |= touched.setdefault(i, set())
                touched[i] = keys
            if keys & blocked:
                blocked |= keys  # held back: later plans on these keys wait too
                continue
            if job.multi_phase:
                blocked |= keys
            groups.setdefault(id(job.backend), []).append(i)
        for members in groups.values():
            first = jobs[members[0]]
            merged = [c for i in members for c in pending[i]]
            try:
                answers = call(
                    first.backend, merged, first.miss_on_error, isolate_errors=len(members) > 1
                )
            except CacheORMError as err:
                # The whole call failed: each plan sees the error at its yield.
                for i in members:
                    del pending[i]
                    _advance(jobs[i].plan, i, err, pending, results)
                continue
            pos = 0
            for i in members:
                n = len(pending.pop(i))
                _advance(jobs[i].plan, i, answers[pos : pos + n], pending, results)
                pos += n
        for i in list(touched):
            if i not in pending:
                del touched[i]
    return results


def _advance(
    plan: Plan[object],
    i: int,
    answer: list[object] | CacheORMError | None,
    pending: dict[int, list[Command]],
    results: list[object],
) -> None:
    """Start the plan, send it its answers, or throw it its call's error."""
    try:
        if answer is None:
            pending[i] = next(plan)
        elif isinstance(answer, CacheORMError):
            pending[i] = plan.throw(answer)
        else:
            pending[i] = plan.send(answer)
    except StopIteration as stop:
        results[i] = stop.value
    except Exception as err:  # per-op errors: a hook or loader may raise anything
        results[i] = err


def plan_all(plans: Sequence[Plan[T]]) -> Plan[list[T | Exception]]:
    """Run several plans in lockstep as one plan: each phase merges their commands.

    The plans must touch distinct keys. A plan that raises has its exception in
    its result slot; a failed call is thrown into every plan waiting on it.
    """
    results: list[object] = [None] * len(plans)
    pending: dict[int, list[Command]] = {}
    for i, plan in enumerate(plans):
        _advance(plan, i, None, pending, results)
    while pending:
        order = sorted(pending)
        try:
            answers = yield [c for i in order for c in pending[i]]
        except CacheORMError as err:
            for i in order:
                del pending[i]
                _advance(plans[i], i, err, pending, results)
            continue
        pos = 0
        for i in order:
            n = len(pending.pop(i))
            _advance(plans[i], i, answers[pos : pos + n], pending, results)
            pos += n
    return results  # type: ignore[return-value]  # each slot holds its plan's T or an error
