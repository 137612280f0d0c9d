"""Runs plans: one round trip per backend and phase, waits and user code on the driver.

Every public function is declared once, in :mod:`cacheorm.crud`, as a *plan*
(see :func:`declare`): a generator that yields the *steps* it needs next and
finally returns the function's result. A step is

* a phase: the list of storage :data:`~cacheorm.backends.base.Command` values
  to send, answered with the list of their results, in order;
* :class:`Sleep`: wait that long (a compare-and-set backoff, polling a
  stampede lock), answered with ``[]``;
* :class:`Call`: run user code (a loader, a ``modify`` function), answered
  with ``[result]``; an exception it raises is thrown into the plan at that
  ``yield``, so the plan cleans up (``get_or_load`` releases its lock) as if
  it had called the function itself.

A plan never sleeps, calls user code or does I/O itself (it may read the clock
and draw random numbers), so any driver runs it. A direct call such as
``co.get`` drives one plan (:func:`run_one`); ``co.execute`` drives many at
once (:func:`run_many`), merging each phase's commands per backend into one
call; :func:`plan_all` runs plans in lockstep as one plan.

The asynchronous drivers, :func:`run_one_async` (``await aio.get``) and
:func:`run_many_async` (``await aio.execute``), run the very same plans and
differ only where they carry out a step: a phase is awaited on an
:class:`~cacheorm.backends.base.AsyncBackend` (or run directly on an
in-process store, which does no I/O), ``Sleep`` is ``asyncio.sleep``, and a
``Call`` whose result is awaitable (a coroutine loader or ``modify``
function) is awaited. :func:`run_many_async` shares :func:`run_many`'s
bookkeeping (:func:`_next_phase`, :func:`_merged`, :func:`_share`,
:func:`_forward`), so grouping, ordering and per-plan errors are the same. A
cancellation (``task.cancel()``, ``asyncio.timeout``) met at an await is
thrown into the plan like a failed call, so the plan cleans up first
(``get_or_load`` releases its lock), then reaches the caller.
:mod:`cacheorm.aio` derives its coroutine functions from :data:`DECLARED`
(``Callable[P, T]`` to ``Callable[P, Coroutine[Any, Any, T]]``), as
:func:`declare` derives the sync ones and :func:`cacheorm.ops.op` the op
builders; only ``modify``, ``get_or_load`` and ``get_many_or_load``, whose
callables may there be coroutine functions, have signatures of their own.

A repo is checked once for the driver that serves it
(:attr:`cacheorm.Repo.sync_backend`, :attr:`cacheorm.Repo.aio_direct`): an
async backend given to ``co``, or a blocking one given to ``aio``, is a
``TypeError``.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import logging
import threading
import time
from collections.abc import Callable, Generator, Sequence
from typing import (
    ClassVar,
    Concatenate,
    Final,
    NamedTuple,
    Never,
    ParamSpec,
    Protocol,
    TypeAlias,
    TypeVar,
    assert_never,
    cast,
)

from cacheorm.backends.base import (
    AsyncBackend,
    Backend,
    Clear,
    Command,
    Get,
    Gets,
    Has,
    apply,
    apply_async,
)
from cacheorm.errors import BackendError, CacheORMError
from cacheorm.repo import K, R, Repo, backend_driver
from cacheorm.stats import observed

__all__ = [
    "DECLARED",
    "Call",
    "Declared",
    "Job",
    "Outage",
    "Plan",
    "Sleep",
    "Step",
    "declare",
    "invoke",
    "plan_all",
    "run_many",
    "run_many_async",
    "run_one",
    "run_one_async",
]

logger = logging.getLogger(__name__)

A = TypeVar("A")
P = ParamSpec("P")
T = TypeVar("T")
Y = TypeVar("Y")
D = TypeVar("D", bound=Callable[..., object])  # a function derived from a declaration


class Sleep(NamedTuple):
    """An instruction: wait ``seconds``, then resume the plan with ``[]``."""

    seconds: float


class Call(NamedTuple):
    """An instruction: run user code ``fn()`` and resume the plan with ``[result]``.

    Build it with :func:`invoke`, which gives the plan the typed result. An
    async driver awaits the result when it is awaitable (a coroutine function).
    Whatever ``fn`` raises is thrown into the plan at its ``yield``.
    """

    fn: Callable[[], object]


Instruction: TypeAlias = Sleep | Call
Step: TypeAlias = list[Command] | Instruction
"""What a plan yields: a phase of commands, or an instruction for its driver."""

Plan: TypeAlias = Generator[Step, list[object], T]
"""Yields steps, receives each one's answer (a phase's results in order), returns the result."""


def invoke(fn: Callable[[A], T], arg: A) -> Plan[T]:
    """Have the driver call user code: ``record = yield from invoke(loader, key)``."""
    (result,) = yield Call(functools.partial(fn, arg))
    return cast("T", result)  # the driver answers a Call with [fn(arg)]


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


RETRY_SECONDS: Final = 2.0
"""How long a down server is skipped by miss-mode calls before one of them probes it
(:attr:`Outage.retry_seconds`, which may be set to change it)."""

LOST_PROBE_SECONDS: Final = 60.0
"""A probe claimed this long ago and never released (its thread forked away) is let go."""

MAX_PROBES: Final = 16
"""Keys remembered per down server: a success on one of them shows the server is back."""

QUIET_SECONDS: Final = 30.0
"""After this long without a failure on a down server, any success through its backend ends
its outage (its own keys may not be asked for again)."""


class _Down:
    """One server that is down: what shows its return, and when to try it again."""

    __slots__ = ("backends", "error", "last_failure", "probes", "probing", "retry_at")

    def __init__(self, error: BackendError) -> None:
        self.probes: dict[bytes, None] = {}  # insertion-ordered set: the oldest goes first
        self.backends: set[int] = set()  # ids of the backends that reported it
        self.last_failure = 0.0
        self.retry_at = 0.0  # until then, miss-mode calls skip it
        self.probing = 0.0  # when the call probing it started (0.0: none in flight)
        self.error = error  # its last failure, chained from the errors of skipped commands


class Placed(Protocol):
    """A backend that can tell which server a key's commands go to (see :class:`Outage`)."""

    def server_for(self, key: bytes, reading: bool = False) -> str | None:
        """``"host:port"`` of the server ``key``'s commands go to; ``None``: it cannot tell.

        ``reading``: the command is a ``Get``, which a tier may answer from its
        near copy (then ``None``: no server need answer).
        """
        ...


class Gate:
    """What :meth:`Outage.gate` decided for one call: the commands sent, the ones skipped.

    Skipped commands go to a server in an outage; each gets a
    :class:`~cacheorm.BackendError` naming it, chained to its last failure.
    """

    __slots__ = ("probing", "sent", "skipped")

    def __init__(
        self, commands: Sequence[Command], skipped: dict[int, BackendError], probing: list[str]
    ) -> None:
        self.skipped = skipped
        self.probing = probing  # servers this call probes (released by Outage.release)
        self.sent = [c for i, c in enumerate(commands) if i not in skipped]

    def merged(self, answers: Sequence[object]) -> list[object]:
        """The answers to the sent commands, with the skipped commands' errors in their slots."""
        if not self.skipped:
            return list(answers)
        sent = iter(answers)
        total = len(self.sent) + len(self.skipped)
        return [self.skipped[i] if i in self.skipped else next(sent) for i in range(total)]


class Outage:
    """Which cache servers are down, as seen by ``on_backend_error="miss"`` calls.

    **Fail fast.** Once a miss-mode call fails on a server with
    :class:`~cacheorm.BackendError`, miss-mode calls skip that server for
    :attr:`retry_seconds`: its commands are not sent and fail at once with a
    ``BackendError`` naming it (so reads miss and writes raise without waiting
    for a timeout). Then the first call to reach it is let through as the
    probe, while the others keep skipping it; a probe answered ends the
    outage, a probe that fails starts another wait. A hung server thus costs
    one timeout per :attr:`retry_seconds`, not one per call.

    Which commands go to the down server: a backend with ``server_for(key)``
    (:class:`Placed`: memcached, Redis standalone and Cluster, a tier over
    one of them) says so per key, so only the keys of a pool's or cluster's
    down node are skipped, and the others are served. Another backend is
    skipped as a whole once a call on it failed as a whole (every command,
    reads among them: a failed write alone may be a full disk), until a
    probe is answered. ``clear`` is never skipped: it needs
    every server. Calls in ``on_backend_error="raise"`` mode are never skipped.

    **Logging.** Each server's outage is logged once (at WARNING) when it
    starts and once when the server answers again, naming the server
    (``BackendError.server``, else the backend's type name). :attr:`count`
    counts the calls that met an outage. A call answered by a backend that
    cannot place keys (a tier whose near cache answers alone) does not say
    which server gave it: there a server is up again when one of the keys
    that last failed on it (:data:`MAX_PROBES` of them) succeeds, or when a
    call through its backend succeeds after :data:`QUIET_SECONDS` without a
    failure on it.

    State is process-wide and thread-safe (one lock, never held across I/O),
    shared by threads and event loops alike.
    """

    count = 0
    retry_seconds: ClassVar[float] = RETRY_SECONDS
    """Seconds a down server is skipped before a call probes it again."""
    _down: ClassVar[dict[str, _Down]] = {}  # process-wide by design: one outage, one log line
    _whole: ClassVar[dict[int, str]] = {}  # backends without server_for skipped as a whole
    _lock = threading.Lock()
    _clock: ClassVar[Callable[[], float]] = time.monotonic

    @classmethod
    def gate(
        cls,
        backend: Backend | AsyncBackend,
        commands: Sequence[Command],
        eligible: Sequence[bool] | None = None,
    ) -> Gate | None:
        """Decide which of a miss-mode call's commands skip a down server; ``None``: send all.

        ``eligible``: per command, whether it may be skipped (in ``co.execute``,
        the commands of miss-mode ops); all of them when not given. A server
        due for a probe is claimed by this call: :meth:`release` it after.
        """
        if not cls._down:
            return None  # the hot path: nothing is down
        names = _servers(backend, commands, cls._whole.get(id(backend)))
        if not any(name in cls._down for name in names):
            return None
        now = cls._clock()
        skipped: dict[int, BackendError] = {}
        probing: list[str] = []
        skipping: dict[str, BackendError] = {}
        with cls._lock:
            for i, name in enumerate(names):
                if name is None or (eligible is not None and not eligible[i]):
                    continue
                down = cls._down.get(name)
                if down is None or name in probing:
                    continue
                error = skipping.get(name)
                if error is None:
                    idle = not down.probing or now - down.probing > LOST_PROBE_SECONDS
                    if idle and now >= down.retry_at:
                        down.probing = now  # this call probes it
                        probing.append(name)
                        continue
                    error = skipping[name] = _skipped(name, down, now)
                skipped[i] = error
            if skipped:
                cls.count += 1
        if not skipped and not probing:
            return None
        return Gate(commands, skipped, probing)

    @classmethod
    def release(cls, gate: Gate | None) -> None:
        """End the probes ``gate`` claimed, answered or not (a cancelled call's included)."""
        if gate is None or not gate.probing:
            return
        with cls._lock:
            for name in gate.probing:
                down = cls._down.get(name)
                if down is not None:
                    down.probing = 0.0

    @classmethod
    def observe(
        cls,
        backend: Backend | AsyncBackend,
        commands: Sequence[Command],
        results: Sequence[object],
        gate: Gate | None = None,
    ) -> None:
        """Record which servers failed or answered in one call's ``results``.

        ``commands``: those sent (``gate.sent`` when the call was gated).
        """
        if not cls._down and not any(isinstance(r, BackendError) for r in results):
            return  # the hot path: nothing down, nothing failed
        placed = _servers(backend, commands, None)
        failed, first_error, answered, answering = _tally(backend, commands, results, placed)
        where = id(backend)
        now = cls._clock()
        with cls._lock:
            if failed and (gate is None or not gate.skipped):  # else counted by gate()
                cls.count += 1
            if answered:
                cls._whole.pop(where, None)
            elif failed and all(name is None for name in placed) and _reads(commands):
                # Every command failed, reads included, on keys it cannot place: the
                # backend looks down as a whole (a failed write alone may be a full disk).
                cls._whole[where] = next(iter(failed))
            ended = cls._ended(where, now, failed, answered, answering)
            started = cls._started(where, now, failed, first_error)
            for where_, server in list(cls._whole.items()):
                if server not in cls._down:
                    del cls._whole[where_]
        _log_outages(started, ended, first_error)

    @classmethod
    def _ended(
        cls,
        where: int,
        now: float,
        failed: dict[str, list[bytes]],
        answered: list[bytes],
        answering: set[str],
    ) -> list[str]:
        """End the outages a call's answers show are over; their servers (lock held)."""
        ended: list[str] = []
        for server, down in list(cls._down.items()):
            if server in failed or not answered:
                continue
            if server in answering:
                del cls._down[server]
                ended.append(server)
                continue
            if where not in down.backends:
                continue
            quiet = not failed and now - down.last_failure >= QUIET_SECONDS
            if quiet or any(key in down.probes for key in answered):
                del cls._down[server]
                ended.append(server)
        return ended

    @classmethod
    def _started(
        cls,
        where: int,
        now: float,
        failed: dict[str, list[bytes]],
        first_error: dict[str, BackendError],
    ) -> list[str]:
        """Note a call's failures: new outages (their servers) and renewed ones (lock held)."""
        started: list[str] = []
        for server, keys in failed.items():
            if server not in cls._down:
                cls._down[server] = _Down(first_error[server])
                started.append(server)
            down = cls._down[server]
            down.backends.add(where)
            down.last_failure = now
            down.retry_at = now + cls.retry_seconds
            down.error = first_error[server]
            for key in keys:
                down.probes.pop(key, None)  # re-inserted as the newest
                down.probes[key] = None
            while len(down.probes) > MAX_PROBES:
                del down.probes[next(iter(down.probes))]
        return started


def _tally(
    backend: Backend | AsyncBackend,
    commands: Sequence[Command],
    results: Sequence[object],
    placed: Sequence[str | None],
) -> tuple[dict[str, list[bytes]], dict[str, BackendError], list[bytes], set[str]]:
    """A call's keys by outcome: per failed server its keys and first error, the keys
    answered, and the servers known to have answered (keys the backend places)."""
    failed: dict[str, list[bytes]] = {}
    first_error: dict[str, BackendError] = {}
    answered: list[bytes] = []
    answering: set[str] = set()
    for command, result, name in zip(commands, results, placed, strict=True):
        if isinstance(result, BackendError):
            server = result.server or type(backend).__name__
            failed.setdefault(server, []).append(command.key)
            first_error.setdefault(server, result)
        else:
            answered.append(command.key)
            if name is not None:
                answering.add(name)
    return failed, first_error, answered, answering


def _servers(
    backend: Backend | AsyncBackend, commands: Sequence[Command], whole: str | None
) -> list[str | None]:
    """The server each command goes to, as the backend places it (see :class:`Placed`).

    ``whole`` for a command it cannot place (``None``: unknown); always
    ``None`` for a ``Clear``, which goes to every server.
    """
    place = cast("Callable[[bytes, bool], str | None] | None", getattr(backend, "server_for", None))
    if place is not None and inspect.iscoroutinefunction(place):
        place = None  # not a Placed backend (an object answering every attribute)
    names: list[str | None] = []
    for command in commands:
        if type(command) is Clear:
            names.append(None)
            continue
        name = None if place is None else place(command.key, type(command) is Get)
        names.append(whole if name is None else name)
    return names


def _reads(commands: Sequence[Command]) -> bool:
    """Whether any of ``commands`` only reads."""
    return any(type(command) in _READS for command in commands)


_READS: Final = frozenset({Get, Gets, Has})


def _skipped(server: str, down: _Down, now: float) -> BackendError:
    """The error of a command not sent to ``server``, which is down."""
    error = BackendError(
        f"cache server {server} is down (it failed {now - down.last_failure:.1f} s ago: "
        f"{down.error}); not asked again for {max(down.retry_at - now, 0.0):.1f} s, "
        "as on_backend_error='miss' fails fast",
        server=server,
    )
    error.__cause__ = down.error
    return error


def _log_outages(started: list[str], ended: list[str], errors: dict[str, BackendError]) -> None:
    """One WARNING per server whose outage ended or started (with its first error)."""
    for server in ended:
        logger.warning("cache server %s is available again", server)
    for server in started:
        logger.warning(
            "cache server %s is unavailable; reads through on_backend_error='miss' "
            "repos miss and writes raise until it answers (it is asked again every "
            "%g s): %s",
            server,
            Outage.retry_seconds,
            errors[server],
        )


def send_phase(backend: Backend, commands: Sequence[Command], miss_on_error: bool) -> list[object]:
    """One phase on one backend: :func:`dispatch`, outages observed if ``miss_on_error``.

    With ``miss_on_error`` a call that failed as a whole with ``BackendError``
    returns that error in every slot instead of raising: the plan decides what
    each command's failure means (a read misses, a write raises). Commands for
    a server in an outage are not sent (see :class:`Outage`): their slots hold
    a ``BackendError`` at once.

    Raises:
        CacheORMError: the call as a whole failed (and ``BackendError`` only
            without ``miss_on_error``).
    """
    if not miss_on_error:  # the common case: nothing to observe
        return dispatch(backend, commands)
    gate = Outage.gate(backend, commands)
    if gate is None:
        try:
            outcome: list[object] | BackendError = dispatch(backend, commands)
        except BackendError as err:
            outcome = err
        return settle_phase(backend, commands, miss_on_error, outcome)
    try:
        try:
            outcome = dispatch(backend, gate.sent) if gate.sent else []
        except BackendError as err:
            outcome = err
        return settle_phase(backend, commands, miss_on_error, outcome, gate)
    finally:
        Outage.release(gate)


def settle_phase(
    backend: Backend | AsyncBackend,
    commands: Sequence[Command],
    miss_on_error: bool,
    outcome: list[object] | BackendError,
    gate: Gate | None = None,
) -> list[object]:
    """A phase's results from its dispatch's outcome (for :func:`send_phase` and its async twin).

    ``outcome`` answers the commands ``gate`` let through (all without a gate).

    Raises:
        BackendError: ``outcome``, a failure of the call as a whole, without ``miss_on_error``.
    """
    sent = commands if gate is None else gate.sent
    if isinstance(outcome, BackendError):
        if not miss_on_error:
            raise outcome
        outcome = [outcome] * len(sent)
    if miss_on_error:
        Outage.observe(backend, sent, outcome, gate)
    return outcome if gate is None else gate.merged(outcome)


async def dispatch_async(
    backend: Backend | AsyncBackend, commands: Sequence[Command], direct: bool
) -> list[object]:
    """:func:`dispatch` for the async driver: awaited on an :class:`AsyncBackend`.

    ``direct``: ``backend`` is an in-process sync store (``MemoryBackend``),
    called here and now, as it does no I/O.
    """
    if direct:
        return dispatch(backend, commands)  # type: ignore[arg-type]  # direct: a sync Backend
    aio_backend = cast("AsyncBackend", backend)
    if len(commands) == 1:
        return [await apply_async(aio_backend, commands[0])]
    return await aio_backend.batch(commands)


async def send_phase_async(
    backend: Backend | AsyncBackend,
    commands: Sequence[Command],
    miss_on_error: bool,
    direct: bool,
) -> list[object]:
    """:func:`send_phase` for the async driver (see :func:`dispatch_async`).

    Its commonest case, one command with no outage to observe, is awaited by
    :func:`run_one_async` itself, a frame less.
    """
    gate = Outage.gate(backend, commands) if miss_on_error else None
    try:
        sent = commands if gate is None else gate.sent
        try:
            outcome: list[object] | BackendError = (
                await dispatch_async(backend, sent, direct) if sent else []
            )
        except BackendError as err:
            outcome = err
        return settle_phase(backend, commands, miss_on_error, outcome, gate)
    finally:
        Outage.release(gate)


def _perform(plan: Generator[Y, list[object], object], step: Instruction) -> Y:
    """Carry out an instruction synchronously; return the plan's next step.

    Whatever the instruction raises (a loader's error, ``KeyboardInterrupt``
    in a sleep) is thrown into the plan at its ``yield``, where it would have
    been raised had the plan slept or called the function itself.
    """
    try:
        match step:
            case Sleep(seconds):
                time.sleep(seconds)
                answer: list[object] = []
            case Call(fn):
                answer = [fn()]
            case _:
                assert_never(step)
    except BaseException as err:
        return plan.throw(err)
    return plan.send(answer)


async def _carry_out(step: Instruction) -> list[object] | BaseException:
    """Carry out an instruction on the event loop: its answer, or the error it raised.

    A :class:`Call` whose result is awaitable (a coroutine function's) is
    awaited. The error (``CancelledError`` in a sleep or a loader included) is
    for the driver to throw into the plan, as :func:`_perform` does.
    """
    try:
        match step:
            case Sleep(seconds):
                await asyncio.sleep(seconds)
                return []
            case Call(fn):
                result = fn()
                if inspect.isawaitable(result):
                    result = await result
                return [result]
            case _:
                assert_never(step)
    except BaseException as err:  # thrown into the plan by the driver, like _perform
        return err


def _resume(
    plan: Generator[Y, list[object], object], answer: list[object] | BaseException | None
) -> Y:
    """Start the plan (``None``), send it an answer, or throw it an error; its next step."""
    if answer is None:
        return next(plan)
    if isinstance(answer, BaseException):
        return plan.throw(answer)
    return plan.send(answer)


def run_one(backend: Backend, plan: Plan[T], miss_on_error: bool = False) -> T:
    """Drive one plan to completion against one backend and return its result.

    A failed call is thrown into the plan at its ``yield``, so the plan can
    clean up (``get_or_load`` releases its lock) before the error reaches the
    caller; so is an exception raised by a :class:`Call`'s user code.
    """
    try:
        step = next(plan)
        while True:
            if not isinstance(step, list):
                step = _perform(plan, step)
                continue
            try:
                if miss_on_error:
                    results = send_phase(backend, step, miss_on_error)
                else:  # nothing to observe: send_phase's common case, a frame less
                    results = dispatch(backend, step)
            except CacheORMError as err:
                step = plan.throw(err)
                continue
            step = plan.send(results)
    except StopIteration as stop:
        result: T = stop.value
        return result
    finally:
        plan.close()


async def run_one_async(
    backend: Backend | AsyncBackend, plan: Plan[T], miss_on_error: bool, direct: bool
) -> T:
    """:func:`run_one` on the event loop: the same plan, its steps awaited.

    ``direct``: ``backend`` is an in-process sync store, called directly (see
    :func:`dispatch_async`). A cancellation (``task.cancel()``,
    ``asyncio.timeout``) met at a phase or an instruction is thrown into the
    plan like a failed call, so the plan cleans up first (``get_or_load``
    releases its lock: the cancellation has been delivered, so that phase
    runs); then it reaches the caller.
    """
    # The common phase (one command to an AsyncBackend, no outage to observe) is
    # awaited here, without send_phase_async's frame.
    lone = not miss_on_error and not direct
    aio_backend = cast("AsyncBackend", backend)  # used only when not direct
    answer: list[object] | BaseException
    try:
        step = next(plan)
        while True:  # ends with the StopIteration that carries the plan's result
            if isinstance(step, list):
                try:
                    if lone and len(step) == 1:
                        answer = [await apply_async(aio_backend, step[0])]
                    else:
                        answer = await send_phase_async(backend, step, miss_on_error, direct)
                except (CacheORMError, asyncio.CancelledError) as err:
                    answer = err
            else:
                answer = await _carry_out(step)
            step = plan.throw(answer) if isinstance(answer, BaseException) else plan.send(answer)
    except StopIteration as stop:
        result: T = stop.value
        return result
    finally:
        plan.close()


class Job(NamedTuple):
    """One plan for :func:`run_many` (or :func:`run_many_async`)."""

    backend: Backend | AsyncBackend
    plan: Plan[object]
    miss_on_error: bool = False
    """The plan's repo has ``on_backend_error="miss"``: a call that fails as a
    whole reaches the plan as an error in each slot (see :func:`send_phase`)."""
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
    have it thrown at their ``yield``. A plan's instructions are carried out
    when it yields them (a ``get_or_load`` waiting for another caller's load
    holds the other plans up meanwhile).

    Returns:
        Each plan's result in order, or the exception it raised.
    """
    for job in jobs:
        if backend_driver(job.backend) == "async":
            raise TypeError(
                f"{type(job.backend).__name__} is an async backend: run these ops with "
                "`await cacheorm.aio.execute(...)`, not co.execute"
            )
    results: list[object] = [None] * len(jobs)
    pending: dict[int, list[Command]] = {}
    touched: dict[int, set[tuple[int, bytes]]] = {}
    for i, job in enumerate(jobs):
        _advance(job.plan, i, None, pending, results)
    while pending:
        for members in _next_phase(jobs, pending, touched).values():
            backend = cast("Backend", jobs[members[0]].backend)  # checked above: not async
            merged = _merged(members, pending)
            gate = _gate(jobs, members, pending, merged)
            sent = merged if gate is None else gate.sent
            try:
                try:
                    answers, whole = (dispatch(backend, sent) if sent else []), None
                except CacheORMError as err:
                    answers, whole = [err] * len(sent), err
                shares = _share(jobs, members, pending, merged, answers, whole, gate)
            finally:
                Outage.release(gate)
            for i, answer in shares:
                _advance(jobs[i].plan, i, answer, pending, results)
        _forget_finished(pending, touched)
    return results


async def run_many_async(jobs: Sequence[Job]) -> list[object]:
    """:func:`run_many` on the event loop: the same grouping, order and per-plan error rules.

    A job's backend is an :class:`AsyncBackend` (awaited) or an in-process
    sync store (called directly); the caller has checked it is one of them. A
    phase's calls to distinct backends are made one after another, as in
    :func:`run_many`. A cancellation met anywhere is thrown into every plan
    still running (each cleans up: ``get_or_load`` releases its lock; nothing
    else is sent for it), then re-raised.
    """
    results: list[object] = [None] * len(jobs)
    pending: dict[int, list[Command]] = {}
    touched: dict[int, set[tuple[int, bytes]]] = {}
    direct = {id(job.backend): backend_driver(job.backend) != "async" for job in jobs}
    cancelled: asyncio.CancelledError | None = None
    told: set[int] = set()  # plans that have met the cancellation

    async def advance(i: int, answer: list[object] | BaseException | None) -> None:
        nonlocal cancelled
        met = await _advance_async(jobs[i].plan, i, answer, pending, results, cancelled)
        if met is not None:
            cancelled = cancelled or met
            told.add(i)

    for i in range(len(jobs)):
        await advance(i, cancelled if cancelled is not None else None)
    while pending:
        if cancelled is not None:
            for i in sorted(pending):
                if i not in told:  # its phase is not sent: the plan meets the cancellation
                    del pending[i]
                    await advance(i, cancelled)
        for where, members in _next_phase(jobs, pending, touched).items():
            merged = _merged(members, pending)
            gate = _gate(jobs, members, pending, merged)
            sent = merged if gate is None else gate.sent
            try:
                backend = jobs[members[0]].backend
                answers = await dispatch_async(backend, sent, direct[where]) if sent else []
                shares = _share(jobs, members, pending, merged, answers, None, gate)
            except CacheORMError as err:
                shares = _share(jobs, members, pending, merged, [err] * len(sent), err, gate)
            except asyncio.CancelledError as err:
                shares = [(i, err) for i in members]
                for i in members:
                    del pending[i]
            finally:
                Outage.release(gate)
            for i, answer in shares:
                await advance(i, answer)
            if cancelled is not None:
                break  # the other groups' plans meet it before sending anything more
        _forget_finished(pending, touched)
    if cancelled is not None:
        raise cancelled
    return results


def _forget_finished(
    pending: dict[int, list[Command]], touched: dict[int, set[tuple[int, bytes]]]
) -> None:
    """Drop the keys remembered for multi-phase plans that are done."""
    for i in list(touched):
        if i not in pending:
            del touched[i]


def _next_phase(
    jobs: Sequence[Job],
    pending: dict[int, list[Command]],
    touched: dict[int, set[tuple[int, bytes]]],
) -> dict[int, list[int]]:
    """The pending plans that go in this phase, grouped by backend (see :func:`run_many`)."""
    blocked: set[tuple[int, bytes]] = set()
    held: set[int] = set()  # backends with a plan held back in this phase
    fenced: set[int] = set()  # backends behind an unfinished barrier
    running: set[int] = set()  # backends with an earlier multi-phase plan in this phase
    groups: dict[int, list[int]] = {}
    for i in sorted(pending):
        job = jobs[i]
        where = id(job.backend)
        keys = {(where, c.key) for c in pending[i]}
        if job.multi_phase:
            keys |= touched.setdefault(i, set())
            touched[i] = keys
        wait = (
            where in fenced
            or bool(keys & blocked)
            or (job.barrier and (where in held or where in running))
        )
        if job.barrier:
            fenced.add(where)
        if wait:
            blocked |= keys  # held back: later plans on these keys wait too
            held.add(where)
            continue
        if job.multi_phase:
            blocked |= keys
            running.add(where)
        groups.setdefault(where, []).append(i)
    return groups


def _merged(members: list[int], pending: dict[int, list[Command]]) -> list[Command]:
    """The commands of ``members`` (pending plans on one backend), in order, for one call."""
    return [c for i in members for c in pending[i]]


def _gate(
    jobs: Sequence[Job],
    members: list[int],
    pending: dict[int, list[Command]],
    merged: list[Command],
) -> Gate | None:
    """:meth:`Outage.gate` for one merged call: only miss-mode plans' commands may be skipped."""
    if not Outage._down:
        return None  # the hot path
    eligible = [jobs[i].miss_on_error for i in members for _ in pending[i]]
    if not any(eligible):
        return None
    return Outage.gate(jobs[members[0]].backend, merged, eligible)


def _share(
    jobs: Sequence[Job],
    members: list[int],
    pending: dict[int, list[Command]],
    merged: list[Command],
    answers: list[object],
    whole: CacheORMError | None,
    gate: Gate | None = None,
) -> list[tuple[int, list[object] | BaseException]]:
    """Each member's answer to one merged call (``whole``: the call failed as a whole).

    ``answers`` answer the commands ``gate`` let through (all of ``merged``
    without a gate); the skipped ones get their errors. Observes outages for
    miss-mode plans and takes the members out of ``pending``.
    """
    outage = whole is None or isinstance(whole, BackendError)
    if outage and any(jobs[i].miss_on_error for i in members):
        sent = merged if gate is None else gate.sent
        Outage.observe(jobs[members[0]].backend, sent, answers, gate)
    if gate is not None:
        answers = gate.merged(answers)
    shares: list[tuple[int, list[object] | BaseException]] = []
    pos = 0
    for i in members:
        n = len(pending.pop(i))
        answer: list[object] | BaseException = answers[pos : pos + n]
        # A failed call is thrown into each plan at its yield, except a
        # BackendError into a miss-mode plan: that one sees it per slot.
        if whole is not None and not (jobs[i].miss_on_error and outage):
            answer = whole
        shares.append((i, answer))
        pos += n
    return shares


def _forward(
    plan: Plan[object],
    i: int,
    answer: list[object] | BaseException | None,
    pending: dict[int, list[Command]],
    results: list[object],
) -> Generator[Instruction, list[object], None]:
    """Advance plan ``i`` to its next phase (put in ``pending``) or its end (in ``results``).

    Its instructions are yielded on, to whoever drives this generator, and
    their answers (or errors) passed back to the plan.
    """
    try:
        step = _resume(plan, answer)
        while not isinstance(step, list):
            try:
                reply = yield step
            except GeneratorExit:
                raise
            except BaseException as err:  # the instruction failed: the plan sees it at its yield
                step = plan.throw(err)
            else:
                step = plan.send(reply)
        pending[i] = step
    except StopIteration as stop:
        results[i] = stop.value
    except Exception as err:  # per-op errors: a hook or loader may raise anything
        results[i] = err


def _advance(
    plan: Plan[object],
    i: int,
    answer: list[object] | BaseException | None,
    pending: dict[int, list[Command]],
    results: list[object],
) -> None:
    """:func:`_forward` with its instructions carried out here and now."""
    steps = _forward(plan, i, answer, pending, results)
    try:
        step = next(steps)
        while True:
            step = _perform(steps, step)
    except StopIteration:
        return


async def _advance_async(
    plan: Plan[object],
    i: int,
    answer: list[object] | BaseException | None,
    pending: dict[int, list[Command]],
    results: list[object],
    cancelled: asyncio.CancelledError | None = None,
) -> asyncio.CancelledError | None:
    """:func:`_advance` with its instructions carried out on the event loop.

    Once ``cancelled`` (the pipeline met a cancellation), an instruction is not
    carried out: the plan meets the cancellation there instead (a loader is
    not started after the caller gave up).

    Returns:
        The cancellation this plan met (it was thrown into the plan, which
        cleaned up; the caller re-raises it once every plan is done), or ``None``.
    """
    steps = _forward(plan, i, answer, pending, results)
    met = answer if isinstance(answer, asyncio.CancelledError) else None
    try:
        step = next(steps)
        while True:
            reply = cancelled or met or await _carry_out(step)
            if isinstance(reply, asyncio.CancelledError):
                met = reply
            step = _resume(steps, reply)
    except StopIteration:
        pass
    except asyncio.CancelledError as err:  # the plan let the cancellation through
        met = err
    return met


def plan_all(plans: Sequence[Plan[T]]) -> Plan[list[T | Exception]]:
    """Run several plans in lockstep as one plan: each phase merges their commands.

    The plans must touch distinct keys. A plan that raises has its exception in
    its result slot; a failed call is thrown into every plan waiting on it. The
    plans' instructions are passed on to the driver as they come.
    """
    results: list[object] = [None] * len(plans)
    pending: dict[int, list[Command]] = {}
    for i, plan in enumerate(plans):
        yield from _forward(plan, i, None, pending, results)
    while pending:
        order = sorted(pending)
        try:
            answers = yield [c for i in order for c in pending[i]]
        except CacheORMError as err:
            for i in order:
                del pending[i]
                yield from _forward(plans[i], i, err, pending, results)
            continue
        pos = 0
        for i in order:
            n = len(pending.pop(i))
            yield from _forward(plans[i], i, answers[pos : pos + n], pending, results)
            pos += n
    return results  # type: ignore[return-value]  # each slot holds its plan's T or an error


# --------------------------------------------------------------------------- declarations


class Declared(NamedTuple):
    """A public function as :func:`declare` recorded it: its plan, and how ops run it."""

    name: str
    plan: Callable[..., Plan[object]]
    """The plan factory, taking the function's own parameters."""
    multi_phase: bool
    """The plan may take several phases (see :attr:`Job.multi_phase`)."""
    draws_keys: bool
    """The plan draws ``AutoField`` keys if the repo's schema has one (see :attr:`Job.barrier`)."""
    snapshot: Callable[[Never], object] | None
    """What an op keeps of the argument after the repo, e.g. ``tuple`` for an iterable that
    may be one-shot (it takes that parameter's declared type)."""
    barrier: bool = False
    """The plan touches keys it cannot name (``clear``): a barrier op (see :attr:`Job.barrier`)."""


DECLARED: dict[str, Declared] = {}
"""Every declared public function by name, in declaration order (see :func:`declare`)."""


def declare(
    *,
    multi_phase: bool = False,
    draws_keys: bool = False,
    snapshot: Callable[[Never], object] | None = None,
    barrier: bool = False,
) -> Callable[
    [Callable[Concatenate[Repo[R, K], P], Plan[T]]], Callable[Concatenate[Repo[R, K], P], T]
]:
    """Declare a public function once, as its plan; the decorator returns the sync function.

    The decorated function is the declaration: its parameters (the repo first,
    positional-only), its docstring and its result ``Plan[T]`` are the public
    function's. It must build its plan without raising (a generator function,
    or a function returning another plan): arguments are checked when the plan
    runs, so a bad one is an op's own error in ``co.execute``.

    The returned function drives the plan against the repo's backend with
    :func:`run_one` and returns ``T``; ``help()`` shows the declaration's
    docstring and signature. The declaration is recorded in :data:`DECLARED`,
    from which :func:`cacheorm.ops.op` derives the op builder (and an async
    module its coroutine twin). For overloads, decorate each ``@overload``
    item and the implementation alike (the implementation is recorded last).

    Args:
        multi_phase: the plan may take several phases (see :attr:`Job.multi_phase`).
        draws_keys: the plan draws ``AutoField`` keys (see :attr:`Job.barrier`).
        snapshot: applied by an op to the argument after the repo when the op
            is built, e.g. ``tuple`` for an iterable that may be one-shot.
        barrier: the plan touches keys it cannot name (see :attr:`Job.barrier`).
    """

    def wrap(
        plan: Callable[Concatenate[Repo[R, K], P], Plan[T]],
    ) -> Callable[Concatenate[Repo[R, K], P], T]:
        name = plan.__name__
        DECLARED[name] = Declared(name, plan, multi_phase, draws_keys, snapshot, barrier)
        return dressed(_driven(plan), plan, plan.__module__, lambda result: result)

    return wrap


def _driven(
    plan: Callable[Concatenate[Repo[R, K], P], Plan[T]],
) -> Callable[Concatenate[Repo[R, K], P], T]:
    """The synchronous function that drives ``plan`` against its repo's backend.

    An instrumented repo's call runs its plan :func:`~cacheorm.stats.observed`;
    the others pay only the ``repo.stats`` check.
    """
    name = plan.__name__
    kinds = [parameter.kind for parameter in inspect.signature(plan).parameters.values()]
    if kinds == [inspect.Parameter.POSITIONAL_ONLY] * 2:
        # The common shape (get, insert, delete, ...) without *args packing, which
        # costs a measurable share of a get from memory.
        plan_of_one = cast("Callable[[Repo[R, K], object], Plan[T]]", plan)

        def driven_one(repo: Repo[R, K], arg: object, /) -> T:
            if repo.stats is not None:
                counted = observed(name, repo, plan_of_one(repo, arg), arg)
                return run_one(repo.sync_backend, counted, repo.on_backend_error == "miss")
            return run_one(
                repo.sync_backend, plan_of_one(repo, arg), repo.on_backend_error == "miss"
            )

        return cast("Callable[Concatenate[Repo[R, K], P], T]", driven_one)

    def driven(repo: Repo[R, K], /, *args: P.args, **kwargs: P.kwargs) -> T:
        if repo.stats is not None:
            counted = observed(name, repo, plan(repo, *args, **kwargs), args[0] if args else None)
            return run_one(repo.sync_backend, counted, repo.on_backend_error == "miss")
        return run_one(
            repo.sync_backend, plan(repo, *args, **kwargs), repo.on_backend_error == "miss"
        )

    return driven


def dressed(
    derived: D, function: Callable[..., object], module: str, result: Callable[[str], str]
) -> D:
    """``derived`` (made from a declared ``function``) shown as ``function`` in ``module``.

    For ``help()``: the declared function's name and docstring, and its plan's
    signature with the ``Plan[T]`` result shown as ``result("T")``. Used for
    the sync function, its op builder and its coroutine twin alike.
    """
    functools.update_wrapper(derived, function)
    derived.__module__ = module
    plan = DECLARED[function.__name__].plan
    derived.__dict__["__signature__"] = signature_of(plan, result)
    return derived


def signature_of(plan: Callable[..., object], result: Callable[[str], str]) -> inspect.Signature:
    """A declaration's signature, its ``Plan[T]`` result shown as ``result("T")`` (for help())."""
    signature = inspect.signature(plan)
    returns = signature.return_annotation
    if isinstance(returns, str) and returns.startswith("Plan[") and returns.endswith("]"):
        return signature.replace(return_annotation=result(returns[len("Plan[") : -1]))
    return signature
