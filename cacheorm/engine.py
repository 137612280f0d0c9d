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
from typing import TypeAlias, TypeVar

from cacheorm.backends.base import Backend, Command, apply
from cacheorm.errors import BackendError, CacheORMError

__all__ = ["Outage", "Plan", "run_many", "run_one"]

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
        cls, backend: Backend, commands: Sequence[Command], err: BackendError
    ) -> list[object]:
        with cls._lock:
            cls.count += 1
            first = id(backend) not in cls._down
            cls._down.add(id(backend))
        if first:
            logger.warning("cache backend %r is unavailable, serving misses: %s", backend, err)
        return [_miss(c, err) for c in commands]

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


def run_one(backend: Backend, plan: Plan[T], miss_on_error: bool = False) -> T:
    """Drive one plan to completion against one backend and return its result."""
    try:
        commands = next(plan)
        while True:
            try:
                results = dispatch(backend, commands)
            except BackendError as err:
                if not miss_on_error:
                    raise
                results = Outage.answer(backend, commands, err)
            else:
                if miss_on_error:
                    Outage.recovered(backend)
            commands = plan.send(results)
    except StopIteration as stop:
        result: T = stop.value
        return result
    finally:
        plan.close()


def run_many(
    jobs: Sequence[tuple[Backend, Plan[object], bool]],
) -> list[object]:
    """Drive several plans together; each phase is one call per distinct backend.

    Args:
        jobs: ``(backend, plan, miss_on_error)`` triples.

    Returns:
        Each plan's result in order, or the exception it raised.
    """
    results: list[object] = [None] * len(jobs)
    pending: dict[int, list[Command]] = {}
    for i, (_, plan, _miss_flag) in enumerate(jobs):
        _advance(jobs, i, plan, None, pending, results)
    while pending:
        groups: dict[int, list[int]] = {}
        for i in pending:
            groups.setdefault(id(jobs[i][0]), []).append(i)
        step: dict[int, list[object] | BaseException] = {}
        for members in groups.values():
            backend = jobs[members[0]][0]
            merged = [c for i in members for c in pending[i]]
            try:
                answers = dispatch(backend, merged, isolate_errors=len(members) > 1)
            except CacheORMError as err:
                # The whole call failed (server down, or a merged set_many refused
                # one value): every op in it gets the error, or a miss when allowed.
                for i in members:
                    if jobs[i][2] and isinstance(err, BackendError):
                        step[i] = Outage.answer(backend, pending[i], err)
                    else:
                        step[i] = err
                continue
            pos = 0
            for i in members:
                n = len(pending[i])
                step[i] = answers[pos : pos + n]
                pos += n
        for i, answer in step.items():
            del pending[i]
            plan = jobs[i][1]
            if isinstance(answer, BaseException):
                results[i] = answer
                plan.close()
            else:
                _advance(jobs, i, plan, answer, pending, results)
    return results


def _advance(
    jobs: Sequence[tuple[Backend, Plan[object], bool]],
    i: int,
    plan: Plan[object],
    answer: list[object] | None,
    pending: dict[int, list[Command]],
    results: list[object],
) -> None:
    try:
        pending[i] = next(plan) if answer is None else plan.send(answer)
    except StopIteration as stop:
        results[i] = stop.value
    except Exception as err:  # per-op errors: a hook or loader may raise anything
        results[i] = err


def plan_all(plans: Sequence[Plan[T]]) -> Plan[list[T | Exception]]:
    """Run several plans in lockstep as one plan: each phase merges their commands.

    A plan that raises has its exception in its result slot.
    """
    results: list[T | Exception] = [Exception("unreachable")] * len(plans)
    pending: dict[int, list[Command]] = {}

    def advance(i: int, answer: list[object] | None) -> None:
        try:
            pending[i] = next(plans[i]) if answer is None else plans[i].send(answer)
        except StopIteration as stop:
            results[i] = stop.value
        except Exception as err:  # per-plan errors are results
            results[i] = err

    for i in range(len(plans)):
        advance(i, None)
    while pending:
        order = list(pending)
        answers = yield [c for i in order for c in pending[i]]
        pos = 0
        for i in order:
            n = len(pending.pop(i))
            advance(i, answers[pos : pos + n])
            pos += n
    return results
