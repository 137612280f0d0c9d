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
import time
from collections.abc import Callable, Generator, Sequence
from typing import ClassVar, Final, NamedTuple, TypeAlias, TypeVar

from cacheorm.backends.base import Backend, Command, apply
from cacheorm.errors import BackendError, CacheORMError

__all__ = ["Job", "Outage", "Plan", "plan_all", "run_many", "run_one"]

logger = logging.getLogger(__name__)

T = TypeVar("T")
Plan: TypeAlias = Generator[list[Command], list[object], T]
"""Yields the commands of a phase, receives their results in order, returns the result."""


def dispatch(backend: Backend, commands: Sequence[Command]) -> list[object]:
    """Send one phase of commands to one backend in a single call.

    A lone command goes through the backend's own method; two or more through
    :meth:`~cacheorm.backends.base.Backend.batch`, which answers per command:
    a command that failed on its own (a key on a dead node of a pool) has its
    error in its slot while the others keep their results.

    Raises:
        CacheORMError: the call as a whole failed (a lone command's error included).
    """
    if len(commands) == 1:
        return [apply(backend, commands[0])]
    return backend.batch(commands)


class _Down:
    """One server that is down, and what shows its return."""

    __slots__ = ("backends", "last_failure", "probes")

    def __init__(self) -> None:
        self.probes: dict[bytes, None] = {}  # insertion-ordered set: the oldest goes first
        self.backends: set[int] = set()  # ids of the backends that reported it
        self.last_failure = 0.0


class Outage:
    """Which cache servers are down, as seen by ``on_backend_error="miss"`` calls.

    Each server's outage is logged once (at WARNING) when it starts and once
    when the server answers again, naming the server (``BackendError.server``,
    else the backend's type name). :attr:`count` counts the calls that met an
    outage.

    A call answered by several servers (a memcached pool, a cluster, a tier
    whose near cache answers alone) can fail for some keys and succeed for
    others, and a success does not say which server gave it. So a success
    never ends an outage by itself: a server is up again when one of the keys
    that last failed on it (:data:`MAX_PROBES` of them) succeeds, or when a
    call through its backend succeeds after :data:`QUIET_SECONDS` without a
    failure on it. A pool with one dead node therefore logs its outage once,
    however its calls interleave.
    """

    count = 0
    _down: ClassVar[dict[str, _Down]] = {}  # process-wide by design: one outage, one log line
    _lock = threading.Lock()
    _clock: ClassVar[Callable[[], float]] = time.monotonic

    @classmethod
    def observe(
        cls, backend: Backend, commands: Sequence[Command], results: Sequence[object]
    ) -> None:
        """Record which servers failed or answered in one call's ``results``."""
        if not cls._down and not any(isinstance(r, BackendError) for r in results):
            return  # the hot path: nothing down, nothing failed
        failed: dict[str, list[bytes]] = {}
        first_error: dict[str, BackendError] = {}
        answered: list[bytes] = []
        for command, result in zip(commands, results, strict=True):
            if isinstance(result, BackendError):
                server = result.server or type(backend).__name__
                failed.setdefault(server, []).append(command.key)
                first_error.setdefault(server, result)
            else:
                answered.append(command.key)
        started: list[str] = []
        ended: list[str] = []
        where = id(backend)
        now = cls._clock()
        with cls._lock:
            if failed:
                cls.count += 1
            for server, down in list(cls._down.items()):
                if server in failed or where not in down.backends or not answered:
                    continue
                quiet = not failed and now - down.last_failure >= QUIET_SECONDS
                if quiet or any(key in down.probes for key in answered):
                    del cls._down[server]
                    ended.append(server)
            for server, keys in failed.items():
                if server not in cls._down:
                    cls._down[server] = _Down()
                    started.append(server)
                down = cls._down[server]
                down.backends.add(where)
                down.last_failure = now
                for key in keys:
                    down.probes.pop(key, None)  # re-inserted as the newest
                    down.probes[key] = None
                while len(down.probes) > MAX_PROBES:
                    del down.probes[next(iter(down.probes))]
        for server in ended:
            logger.warning("cache server %s is available again", server)
        for server in started:
            logger.warning(
                "cache server %s is unavailable; reads through on_backend_error='miss' "
                "repos miss and writes raise until it answers: %s",
                server,
                first_error[server],
            )


MAX_PROBES: Final = 16
"""Keys remembered per down server: a success on one of them shows the server is back."""

QUIET_SECONDS: Final = 30.0
"""After this long without a failure on a down server, any success through its backend ends
its outage (its own keys may not be asked for again)."""


def call(backend: Backend, commands: Sequence[Command], miss_on_error: bool) -> list[object]:
    """One phase on one backend: :func:`dispatch`, outages observed if ``miss_on_error``.

    With ``miss_on_error`` a call that failed as a whole with ``BackendError``
    returns that error in every slot instead of raising: the plan decides what
    each command's failure means (a read misses, a write raises).

    Raises:
        CacheORMError: the call as a whole failed (and ``BackendError`` only
            without ``miss_on_error``).
    """
    try:
        results = dispatch(backend, commands)
    except BackendError as err:
        if not miss_on_error:
            raise
        results = [err] * len(commands)
    if miss_on_error:
        Outage.observe(backend, commands, results)
    return results


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
    """The plan's repo has ``on_backend_error="miss"``: a call that fails as a
    whole reaches the plan as an error in each slot (see :func:`call`)."""
    multi_phase: bool = False
    """The plan may take several phases (a read-modify-write, an auto key, a
    read-through): later plans touching its keys wait until it is done."""
    barrier: bool = False
    """The plan touches keys it cannot name in advance (an automatic key is
    drawn from a counter): it waits for every earlier plan on its backend, and
    every later plan on its backend waits for it."""


def run_many(jobs: Sequence[Job]) -> list[object]:
    """Drive several plans together; each phase is one call per distinct backend.

    The result is what running the plans one after another would give. Within a
    phase, a backend runs the merged commands in order, so single-phase plans
    share a phase freely; a plan that touches a key of an earlier, unfinished
    multi-phase plan (or of an earlier plan held back) waits for it, and a
    barrier plan runs alone in order on its backend (see :attr:`Job.barrier`).

    Each plan follows its own ``miss_on_error``: when a merged call fails as a
    whole, plans in miss mode receive the error in their slots, the others
    have it thrown at their ``yield``.

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
        held: set[int] = set()  # backends with a plan held back in this phase
        fenced: set[int] = set()  # backends behind an unfinished barrier
        groups: dict[int, list[int]] = {}
        for i in sorted(pending):
            job = jobs[i]
            where = id(job.backend)
            keys = {(where, c.key) for c in pending[i]}
            if job.multi_phase:
                keys |= touched.setdefault(i, set())
                touched[i] = keys
            wait = where in fenced or bool(keys & blocked) or (job.barrier and where in held)
            if job.barrier:
                fenced.add(where)
            if wait:
                blocked |= keys  # held back: later plans on these keys wait too
                held.add(where)
                continue
            if job.multi_phase:
                blocked |= keys
            groups.setdefault(where, []).append(i)
        for members in groups.values():
            backend = jobs[members[0]].backend
            merged = [c for i in members for c in pending[i]]
            whole: CacheORMError | None = None
            try:
                answers = dispatch(backend, merged)
            except CacheORMError as err:
                whole, answers = err, [err] * len(merged)
            outage = whole is None or isinstance(whole, BackendError)
            if outage and any(jobs[i].miss_on_error for i in members):
                Outage.observe(backend, merged, answers)
            pos = 0
            for i in members:
                n = len(pending.pop(i))
                answer: list[object] | CacheORMError = answers[pos : pos + n]
                # A failed call is thrown into each plan at its yield, except a
                # BackendError into a miss-mode plan: that one sees it per slot.
                if whole is not None and not (jobs[i].miss_on_error and outage):
                    answer = whole
                _advance(jobs[i].plan, i, answer, pending, results)
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
