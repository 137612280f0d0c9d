"""Operating it: counts, latencies, spans and log lines for every call through a repo.

::

    stats = co.Stats()
    people = co.instrument(co.Repo(PERSON, backend=...), stats)
    co.get_or_none(people, "Sam")
    stats.hits, stats.misses                  # totals, ints
    stats.by_operation["get_or_none"].p99     # seconds
    stats.by_schema["Person"].calls
    stats.as_dict()                           # for an exporter or a /metrics page

What is counted, per call (``co.*``, their ``cacheorm.aio`` twins and each op
of ``co.execute``/``aio.execute`` alike):

* ``calls`` and a latency figure, whatever the outcome;
* ``hits``/``misses``: per key read. ``get`` (a ``NotFound`` is a miss),
  ``get_or_none``, ``get_many`` (per key), ``exists``; ``get_or_load`` and
  ``get_many_or_load`` count, per key, a hit when they need no load (a
  record, or an absence remembered with ``negative_ttl``), else a miss, as
  the loader is called for it (and a write per loaded record stored);
* ``writes``: per record written by ``insert``, ``insert_many``, ``add``,
  ``replace``, ``update``, ``modify``, ``update_many``;
* ``deletes``: per record that ``delete``/``delete_many``/``clear`` removed (a
  key that was not there counts nothing);
* ``errors``: calls that the cache itself failed: they raised
  :class:`~cacheorm.BackendError` or :class:`~cacheorm.DecodeError`, or (with
  ``on_backend_error="miss"``) a read answered a miss because its server
  failed. A call counts one error at most. Outcomes the caller asked about
  (``NotFound``, ``AlreadyExists``), refused arguments (``ValidationError``),
  a loader's own exception and cancellations are not errors;
* ``retries``: compare-and-set attempts of ``update``/``modify``/``update_many``
  that lost a race and went round again; ``conflicts``: calls that raised
  :class:`~cacheorm.ConflictError` (they gave up).

Latency is the call's time from start to result, as the caller waited for it
(in a pipeline, an op's time includes the phases it shared with the other
ops). Percentiles come from a fixed log-scale histogram (16 buckets per
doubling, from 0.1 µs to about an hour): memory stays bounded however many
calls are counted, and a percentile is within about 2 % of the exact value.

Where counting happens: :func:`observed` wraps a call's plan (see
:mod:`cacheorm.engine`) when its repo has ``stats``, so every driver, sync,
async and pipelined, counts the same way. It reads the
outcome off the result for the functions in :data:`OUTCOMES`; what only the
plan knows (a ``get_or_load`` hit or load, a lost compare-and-set race) the plan
reports with :func:`count`, which is a no-op outside an observed call. A new
function either gets an :data:`OUTCOMES` entry or calls :func:`count` from its
plan. An un-instrumented call pays one ``repo.stats is not None`` check (no
measurable cost on a ``co.get`` from memory).

Logging: one DEBUG line per call through an instrumented repo, on the
``cacheorm.stats`` logger: operation, schema, number of keys, outcome,
duration; cacheorm never configures handlers. Only instrumented repos log
them: asking ``isEnabledFor(DEBUG)`` on every call of every repo cost about
0.05 to 0.1 µs per ``co.get`` from memory (1 to 2 %); to see a repo's
calls, instrument it (``co.instrument(repo, co.Stats(otel=False))``).

OpenTelemetry: when ``opentelemetry-api`` is installed (``pip install
cacheorm[otel]``), each call through an instrumented repo is also a CLIENT
span named ``"<operation> <schema>"`` following the database semantic
conventions, and is measured in the ``db.client.operation.duration``
histogram (seconds) and the ``cacheorm.client.hits``/``cacheorm.client.misses``
counters; see :class:`Stats`.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import threading
import time
import weakref
from collections.abc import Callable, Sized
from typing import TYPE_CHECKING, Final, NamedTuple, TypeAlias

from cacheorm.errors import (
    AlreadyExists,
    BackendError,
    ConflictError,
    DecodeError,
    NotFound,
    ValidationError,
)
from cacheorm.repo import K, R, Repo

if TYPE_CHECKING:
    from opentelemetry.metrics import MeterProvider
    from opentelemetry.trace import Span, TracerProvider
    from opentelemetry.util.types import AttributeValue

    from cacheorm.backends.base import AsyncBackend, Backend
    from cacheorm.engine import Plan, T

__all__ = [
    "OUTCOMES",
    "Counts",
    "Latency",
    "Snapshot",
    "Stats",
    "StatsDict",
    "count",
    "instrument",
    "observed",
]

logger = logging.getLogger(__name__)

_debug_enabled: Final = logger.isEnabledFor


# --------------------------------------------------------------------------- latency


_BASE: Final = 1e-7
"""Seconds: the lower edge of the second histogram bucket (everything faster is in the first)."""

_PER_DOUBLING: Final = 16
"""Buckets per doubling of the duration: a bucket's edges are 4.4 % apart."""

_BUCKETS: Final = 36 * _PER_DOUBLING
"""Bucket count: the last one starts at 0.1 µs * 2**36, about two hours."""


def _bucket(seconds: float) -> int:
    if seconds <= _BASE:
        return 0
    return min(_BUCKETS - 1, 1 + int(math.log2(seconds / _BASE) * _PER_DOUBLING))


def _middle(bucket: int) -> float:
    """A bucket's representative duration: its geometric middle."""
    if bucket == 0:
        return _BASE
    return _BASE * 2 ** ((bucket - 0.5) / _PER_DOUBLING)


class _Histogram:
    """Durations in fixed log-scale buckets: bounded memory, percentiles within ~2 %."""

    __slots__ = ("buckets", "count", "max", "min", "total")

    def __init__(self) -> None:
        self.buckets: dict[int, int] = {}  # sparse: only the buckets used
        self.count = 0
        self.total = 0.0
        self.min = math.inf
        self.max = 0.0

    def add(self, seconds: float) -> None:
        buckets = self.buckets
        i = _bucket(seconds)
        buckets[i] = buckets.get(i, 0) + 1
        self.count += 1
        self.total += seconds
        if seconds < self.min:
            self.min = seconds
        if seconds > self.max:
            self.max = seconds

    def merge(self, other: _Histogram) -> None:
        """Add ``other``'s durations to these."""
        for i, n in other.buckets.items():
            self.buckets[i] = self.buckets.get(i, 0) + n
        self.count += other.count
        self.total += other.total
        self.min = min(self.min, other.min)
        self.max = max(self.max, other.max)

    def percentile(self, q: float) -> float:
        """The duration below which ``q`` percent of the calls fall (nearest rank)."""
        if not self.count:
            return 0.0
        rank = max(1, math.ceil(q / 100 * self.count))
        seen = 0
        for bucket in sorted(self.buckets):
            seen += self.buckets[bucket]
            if seen >= rank:
                return min(self.max, max(self.min, _middle(bucket)))
        return self.max

    def latency(self) -> Latency:
        if not self.count:
            return Latency(0, 0.0, 0.0, 0.0, 0.0, 0.0)
        return Latency(
            calls=self.count,
            mean=self.total / self.count,
            p50=self.percentile(50),
            p90=self.percentile(90),
            p99=self.percentile(99),
            max=self.max,
        )


# --------------------------------------------------------------------------- figures


class Latency(NamedTuple):
    """Durations of the calls counted, in seconds (all ``0.0`` before the first call)."""

    calls: int
    mean: float
    p50: float
    p90: float
    p99: float
    max: float


StatsDict: TypeAlias = dict[str, "int | float | StatsDict"]
"""What :meth:`Stats.as_dict` returns: nested dicts of numbers, ready for ``json.dumps``."""

_COUNTERS: Final = (
    "calls",
    "hits",
    "misses",
    "writes",
    "deletes",
    "errors",
    "retries",
    "conflicts",
)


class Counts(NamedTuple):
    """The figures of a set of calls: all of them, one operation's or one schema's.

    See the module docstring for what each counter counts.
    """

    calls: int
    hits: int
    misses: int
    writes: int
    deletes: int
    errors: int
    retries: int
    conflicts: int
    latency: Latency

    @property
    def p50(self) -> float:
        """Median call duration, in seconds."""
        return self.latency.p50

    @property
    def p99(self) -> float:
        """99th percentile call duration, in seconds."""
        return self.latency.p99

    @property
    def hit_ratio(self) -> float:
        """``hits / (hits + misses)``; ``0.0`` before the first read."""
        reads = self.hits + self.misses
        return self.hits / reads if reads else 0.0

    def as_dict(self) -> StatsDict:
        """The counters and latency figures as a flat dict (``"p50"`` ... in seconds)."""
        figures: StatsDict = {name: getattr(self, name) for name in _COUNTERS}
        latency = self.latency
        figures.update(mean=latency.mean, p50=latency.p50, p90=latency.p90, p99=latency.p99)
        figures["max"] = latency.max
        return figures


class Snapshot(NamedTuple):
    """Every figure of a :class:`Stats` at one moment, taken together."""

    total: Counts
    by_operation: dict[str, Counts]
    by_schema: dict[str, Counts]

    def as_dict(self) -> StatsDict:
        """``{"total": {...}, "by_operation": {op: {...}}, "by_schema": {schema: {...}}}``."""
        return {
            "total": self.total.as_dict(),
            "by_operation": {name: c.as_dict() for name, c in self.by_operation.items()},
            "by_schema": {name: c.as_dict() for name, c in self.by_schema.items()},
        }


class _Tally:
    """The running figures of the calls of one operation on one schema (or of a merge)."""

    __slots__ = (*_COUNTERS, "histogram")

    def __init__(self) -> None:
        self.calls = self.hits = self.misses = self.writes = self.deletes = 0
        self.errors = self.retries = self.conflicts = 0
        self.histogram = _Histogram()

    def add(self, call: _Call, seconds: float) -> None:
        self.calls += 1
        self.hits += call.hits
        self.misses += call.misses
        self.writes += call.writes
        self.deletes += call.deletes
        self.errors += call.errors
        self.retries += call.retries
        self.conflicts += call.conflicts
        self.histogram.add(seconds)

    def merge(self, other: _Tally) -> None:
        """Add ``other``'s figures to these."""
        for name in _COUNTERS:
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.histogram.merge(other.histogram)

    def counts(self) -> Counts:
        return Counts(
            self.calls,
            self.hits,
            self.misses,
            self.writes,
            self.deletes,
            self.errors,
            self.retries,
            self.conflicts,
            self.histogram.latency(),
        )


class Stats:
    """Thread-safe counters for the calls through the repos given to :func:`instrument`.

    One ``Stats`` may serve many repos (and threads, and event loops): figures
    are kept per operation (``"get"``, ``"update_many"``...; an op in
    ``execute`` under its own name) and schema (its ``name``), and read in
    total, per operation or per schema. A call takes a lock once, when it ends,
    to add its figures; reading merges them under the same lock, so
    :meth:`snapshot` is consistent.

    Args:
        otel: emit OpenTelemetry spans and metrics when ``opentelemetry-api``
            is installed (``False``: never, even then).
        tracer_provider: the ``TracerProvider`` to get cacheorm's tracer from
            (default: the global one, as ``trace.get_tracer`` does).
        meter_provider: the ``MeterProvider`` for the metrics (default: the global one).

    Example:
        >>> import cacheorm as co
        >>> from cacheorm.demo import PERSON, Person
        >>> stats = co.Stats()
        >>> people = co.instrument(co.Repo(PERSON), stats)
        >>> _ = co.insert(people, Person("Sam", 1.8))
        >>> co.get_many(people, ["Sam", "Bob"])[1] is None
        True
        >>> stats.writes, stats.hits, stats.misses, stats.by_operation["get_many"].calls
        (1, 1, 1, 1)
    """

    def __init__(
        self,
        *,
        otel: bool = True,
        tracer_provider: TracerProvider | None = None,
        meter_provider: MeterProvider | None = None,
    ) -> None:
        self._lock = threading.Lock()
        self._cells: dict[tuple[str, str], _Tally] = {}  # by (operation, schema name)
        self._otel = _Otel.start(tracer_provider, meter_provider) if otel else None

    # -- totals ---------------------------------------------------------------

    def _sum(self, counter: str) -> int:
        with self._lock:
            return sum(getattr(cell, counter) for cell in self._cells.values())

    @property
    def calls(self) -> int:
        """Calls counted."""
        return self._sum("calls")

    @property
    def hits(self) -> int:
        """Keys read and found."""
        return self._sum("hits")

    @property
    def misses(self) -> int:
        """Keys read and not found (or loaded by ``get_or_load``)."""
        return self._sum("misses")

    @property
    def writes(self) -> int:
        """Records written."""
        return self._sum("writes")

    @property
    def deletes(self) -> int:
        """Records deleted (that existed)."""
        return self._sum("deletes")

    @property
    def errors(self) -> int:
        """Calls the cache failed (``BackendError``, ``DecodeError``, a degraded read)."""
        return self._sum("errors")

    @property
    def retries(self) -> int:
        """Compare-and-set attempts that lost a race and were retried."""
        return self._sum("retries")

    @property
    def conflicts(self) -> int:
        """Calls that raised ``ConflictError``."""
        return self._sum("conflicts")

    @property
    def otel(self) -> bool:
        """Whether calls emit OpenTelemetry spans and metrics."""
        return self._otel is not None

    # -- detail ---------------------------------------------------------------

    @property
    def total(self) -> Counts:
        """Every figure over all calls."""
        return self.snapshot().total

    @property
    def by_operation(self) -> dict[str, Counts]:
        """Figures per operation name (``"get"``, ``"get_many"``...), a copy."""
        return self.snapshot().by_operation

    @property
    def by_schema(self) -> dict[str, Counts]:
        """Figures per schema name, a copy."""
        return self.snapshot().by_schema

    def snapshot(self) -> Snapshot:
        """Every figure, read together under the lock."""
        total = _Tally()
        operations: dict[str, _Tally] = {}
        schemas: dict[str, _Tally] = {}
        with self._lock:
            for (operation, schema), cell in self._cells.items():
                total.merge(cell)
                operations.setdefault(operation, _Tally()).merge(cell)
                schemas.setdefault(schema, _Tally()).merge(cell)
        return Snapshot(
            total.counts(),
            {name: tally.counts() for name, tally in operations.items()},
            {name: tally.counts() for name, tally in schemas.items()},
        )

    def as_dict(self) -> StatsDict:
        """:meth:`snapshot` as nested dicts of numbers (for JSON or a metrics exporter)."""
        return self.snapshot().as_dict()

    def reset(self) -> None:
        """Forget every figure (the OpenTelemetry instruments keep theirs)."""
        with self._lock:
            self._cells = {}

    def _record(self, call: _Call, seconds: float) -> None:
        """Add one finished call."""
        where = (call.op, call.repo.schema.name)
        with self._lock:
            cell = self._cells.get(where)
            if cell is None:
                cell = self._cells[where] = _Tally()
            cell.add(call, seconds)

    def __repr__(self) -> str:
        total = self.total
        figures = ", ".join(f"{name}={getattr(total, name)}" for name in _COUNTERS)
        return f"Stats({figures})"


def instrument(repo: Repo[R, K], stats: Stats | None, /) -> Repo[R, K]:
    """A copy of ``repo`` whose every call is counted in ``stats`` (``None``: no longer).

    Every function and its ``cacheorm.aio`` twin and ``co.ops`` op counts, as
    the :mod:`cacheorm.stats` docstring says. The repo is otherwise the same
    (``repo.replace(...)``, ``dataclasses.replace`` and :func:`cacheorm.on`
    keep ``stats``).

    Raises:
        ValidationError: ``stats`` is not a :class:`Stats`.
    """
    if stats is not None and not isinstance(stats, Stats):
        raise ValidationError(f"instrument() takes a co.Stats or None, got {stats!r}")
    return dataclasses.replace(repo, stats=stats)


# --------------------------------------------------------------------------- one call


class _Call:
    """What one observed call did so far: the counters its plan and its result add up."""

    __slots__ = (
        "conflicts",
        "deletes",
        "errors",
        "hits",
        "misses",
        "op",
        "repo",
        "retries",
        "writes",
    )

    def __init__(self, repo: Repo[R, K], op: str) -> None:
        self.repo: Repo[object, object] = repo  # type: ignore[assignment]  # only read
        self.op = op
        self.hits = self.misses = self.writes = self.deletes = 0
        self.errors = self.retries = self.conflicts = 0


class _Current(threading.local):
    call: _Call | None = None
    """The observed call whose plan is running a step in this thread."""


_current: Final = _Current()


def count(
    repo: Repo[R, K],
    /,
    *,
    hits: int = 0,
    misses: int = 0,
    writes: int = 0,
    deletes: int = 0,
    errors: int = 0,
    retries: int = 0,
) -> None:
    """Add to the counts of the call on ``repo`` whose plan is running; else do nothing.

    For plans (:mod:`cacheorm.crud`) to report what only they know: a
    ``get_or_load`` hit or load, a lost compare-and-set race, a read that
    degraded to a miss (``errors=1``; a call counts one error at most). Cheap
    when the repo is not observed (one thread-local read). The counts go to the
    call's own operation, whichever function the plan helper serves.
    """
    call = _current.call
    if call is None or call.repo is not repo:
        return
    call.hits += hits
    call.misses += misses
    call.writes += writes
    call.deletes += deletes
    call.retries += retries
    if errors:
        call.errors = 1


def observed(name: str, repo: Repo[R, K], plan: Plan[T], subject: object = None) -> Plan[T]:
    """``plan``, the call ``name`` on ``repo``, counted, traced and logged when it ends.

    A plan like any other (every driver runs it): it passes each step on and
    each answer or error back, unchanged. While the wrapped plan runs a step,
    :func:`count` adds to this call. ``subject``: the argument after the repo
    (its size is the number of keys logged for a batch function).
    """
    call = _Call(repo, name)
    stats = repo.stats
    otel = stats._otel if stats is not None else None
    span = otel.start_span(call) if otel is not None else None  # never raises
    local = _current
    started = time.perf_counter()
    answer: list[object] = []
    thrown: BaseException | None = None
    first = True
    try:
        while True:
            outer = local.call
            local.call = call
            try:
                if first:
                    first = False
                    step = next(plan)
                elif thrown is not None:
                    error, thrown = thrown, None
                    step = plan.throw(error)
                else:
                    step = plan.send(answer)
            finally:
                local.call = outer
            try:
                answer = yield step
            except GeneratorExit:
                raise
            except BaseException as err:  # the driver's failed call or instruction: to the plan
                thrown = err
    except StopIteration as stop:
        result: T = stop.value
        _finish(call, subject, result, None, started, span)
        return result
    except GeneratorExit:  # the driver gave up on the call (a KeyboardInterrupt in a phase)
        plan.close()
        _finish(call, subject, None, GeneratorExit(), started, span)
        raise
    except BaseException as err:
        _finish(call, subject, None, err, started, span)
        raise


# What a returned result says, per function; a function missing here counts what
# its plan reports with count() (get_or_load), or only its calls and latency.


def _got(call: _Call, result: object) -> None:
    call.hits += 1


def _found(call: _Call, result: object) -> None:
    if result is None or result is False:
        call.misses += 1
    else:
        call.hits += 1


def _each_found(call: _Call, result: object) -> None:
    if isinstance(result, list):
        found = sum(1 for record in result if record is not None)
        call.hits += found
        call.misses += len(result) - found


def _wrote(call: _Call, result: object) -> None:
    call.writes += 1


def _wrote_each(call: _Call, result: object) -> None:
    if isinstance(result, list):
        call.writes += sum(1 for record in result if record is not None)


def _deleted(call: _Call, result: object) -> None:
    if isinstance(result, bool | int):
        call.deletes += int(result)


OUTCOMES: Final[dict[str, Callable[[_Call, object], None]]] = {
    "get": _got,
    "get_or_none": _found,
    "exists": _found,
    "get_many": _each_found,
    "insert": _wrote,
    "add": _wrote,
    "replace": _wrote,
    "update": _wrote,
    "modify": _wrote,
    "insert_many": _wrote_each,
    "update_many": _wrote_each,
    "delete": _deleted,
    "delete_many": _deleted,
    "clear": _deleted,
}
"""How a function's result counts, by function name (see :func:`observed`)."""

_MISSED_BY_NOT_FOUND: Final = frozenset({"get"})
"""Functions whose ``NotFound`` is a read miss (``update``'s is not a read)."""

_ANSWERS: Final = (NotFound, AlreadyExists)
"""Exceptions that answer the caller's question: not failures (no ``error.type``)."""


def _finish(
    call: _Call,
    subject: object,
    result: object,
    error: BaseException | None,
    started: float,
    span: Span | None,
) -> None:
    """Count, trace and log one call once it ended (``error``: what it raised)."""
    seconds = time.perf_counter() - started
    name = call.op
    if error is None:
        outcome = OUTCOMES.get(name)
        if outcome is not None:
            outcome(call, result)
    elif isinstance(error, NotFound):
        if name in _MISSED_BY_NOT_FOUND:
            call.misses += 1
    elif isinstance(error, BackendError | DecodeError):
        call.errors = 1
    elif isinstance(error, ConflictError):
        call.conflicts += 1
    stats = call.repo.stats
    if stats is not None:
        stats._record(call, seconds)
        if stats._otel is not None and span is not None:
            stats._otel.finish(call, span, seconds, error)
    if _debug_enabled(logging.DEBUG):
        _log(call, subject, error, seconds)


def _keys(name: str, subject: object) -> int | None:
    """How many keys (or records) a call was about; ``None`` if it takes none."""
    from cacheorm.engine import DECLARED  # imported late: the engine imports this module

    declared = DECLARED.get(name)
    if declared is not None and declared.snapshot is not None:
        return len(subject) if isinstance(subject, Sized) else None
    return None if subject is None else 1


_LABELS: Final = ("hits", "misses", "writes", "deletes", "retries", "conflicts")


def _log(call: _Call, subject: object, error: BaseException | None, seconds: float) -> None:
    """The call's DEBUG line: operation, schema, keys, outcome, duration."""
    parts = [f"{label}={getattr(call, label)}" for label in _LABELS if getattr(call, label)]
    if error is not None:
        parts.append(f"raised {type(error).__name__}")
    elif call.errors:
        parts.append("store failed (read as a miss)")
    keys = _keys(call.op, subject)
    logger.debug(
        "%s %s: %s, %s, %.3f ms",
        call.op,
        call.repo.schema.name,
        "no key" if keys is None else f"{keys} key" + ("" if keys == 1 else "s"),
        ", ".join(parts) or "ok",
        seconds * 1000,
    )


# --------------------------------------------------------------------------- OpenTelemetry


_DURATION_BUCKETS: Final = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)
"""Seconds: the advised boundaries of ``db.client.operation.duration`` (a cache answers in
well under the semantic conventions' 1 ms first boundary)."""


class _Target(NamedTuple):
    """What a backend tells the semantic conventions: the system and, if one, its server."""

    system: str
    address: str | None
    port: int | None


def _describe(backend: Backend | AsyncBackend | object) -> _Target:
    """``db.system.name`` and ``server.address``/``server.port`` of a backend, where known.

    Redis (standalone: its ``host:port``; a cluster: the first seed node),
    memcached (one node: its address; several: none), a tier as its far
    store; anything else is ``"other"``, with no server.
    """
    far = getattr(backend, "far", None)
    if far is not None:
        return _describe(far)
    kind = type(backend).__name__.lower()
    system = "redis" if "redis" in kind else "memcached" if "memcached" in kind else "other"
    server: object = getattr(getattr(backend, "_core", None), "server", None)
    nodes = getattr(backend, "_nodes", None) or getattr(backend, "_pools", None)
    if server is None and isinstance(nodes, list) and len(nodes) == 1:
        server = getattr(nodes[0], "name", None)
    if not isinstance(server, str) or system == "other":
        return _Target(system, None, None)
    host, _, port = server.rpartition(":")
    if host and port.isdigit():
        return _Target(system, host.strip("[]"), int(port))
    return _Target(system, server, None)


_TARGETS: Final[weakref.WeakKeyDictionary[object, _Target]] = weakref.WeakKeyDictionary()


def _target(backend: object) -> _Target:
    """:func:`_describe`, worked out once per backend."""
    try:
        return _TARGETS[backend]
    except KeyError:
        pass
    except TypeError:  # not weakly referenceable: described each time
        return _describe(backend)
    target = _TARGETS[backend] = _describe(backend)
    return target


_MAX_CACHED: Final = 1024
"""Operation and repo pairs whose OpenTelemetry attributes are kept (then all are forgotten)."""


class _Otel:
    """cacheorm's tracer and instruments, from the providers given or the global ones."""

    def __init__(
        self, tracer_provider: TracerProvider | None, meter_provider: MeterProvider | None
    ) -> None:
        from opentelemetry import metrics, trace
        from opentelemetry.trace import SpanKind, Status, StatusCode

        from cacheorm import __version__

        self.tracer = trace.get_tracer("cacheorm", __version__, tracer_provider)
        meter = metrics.get_meter("cacheorm", __version__, meter_provider)
        self.duration = meter.create_histogram(
            "db.client.operation.duration",
            unit="s",
            description="Duration of cacheorm operations.",
            explicit_bucket_boundaries_advisory=_DURATION_BUCKETS,
        )
        self.hits = meter.create_counter(
            "cacheorm.client.hits", unit="{key}", description="Keys read and found."
        )
        self.misses = meter.create_counter(
            "cacheorm.client.misses", unit="{key}", description="Keys read and not found."
        )
        self.client = SpanKind.CLIENT
        self.error_status = Status(StatusCode.ERROR)
        self._attributes: dict[tuple[str, int], tuple[object, dict[str, AttributeValue]]] = {}

    @classmethod
    def start(
        cls, tracer_provider: TracerProvider | None, meter_provider: MeterProvider | None
    ) -> _Otel | None:
        """The OpenTelemetry glue, or ``None`` when ``opentelemetry-api`` is not installed."""
        try:
            import opentelemetry.metrics
            import opentelemetry.trace  # noqa: F401
        except ImportError:
            return None
        return cls(tracer_provider, meter_provider)

    def attributes(self, call: _Call) -> dict[str, AttributeValue]:
        """The semantic conventions' attributes of a call (for its span and its metrics).

        Worked out once per operation and repo (the last :data:`_MAX_CACHED` of them).
        Read only: the dict is shared.
        """
        repo = call.repo
        cached = self._attributes.get((call.op, id(repo)))
        if cached is not None and cached[0] is repo:  # the repo kept alive: its id is its own
            return cached[1]
        if len(self._attributes) >= _MAX_CACHED:
            self._attributes.clear()
        attributes = self._attributes_of(call.op, repo)
        self._attributes[call.op, id(repo)] = (repo, attributes)
        return attributes

    @staticmethod
    def _attributes_of(op: str, repo: Repo[object, object]) -> dict[str, AttributeValue]:
        target = _target(repo.backend)
        attributes: dict[str, AttributeValue] = {
            "db.system.name": target.system,
            "db.system": target.system,  # the pre-1.26 name, still read by many backends
            "db.operation.name": op,
            "db.collection.name": repo.schema.name,
        }
        if repo.namespace:
            attributes["db.namespace"] = repo.namespace
        if target.address is not None:
            attributes["server.address"] = target.address
        if target.port is not None:
            attributes["server.port"] = target.port
        return attributes

    def start_span(self, call: _Call) -> Span | None:
        """The call's span, started; ``None`` if OpenTelemetry failed (logged, never raised)."""
        try:
            return self.tracer.start_span(
                f"{call.op} {call.repo.schema.name}",
                kind=self.client,
                attributes=self.attributes(call),
            )
        except Exception:  # telemetry never fails a call
            logger.exception("OpenTelemetry could not start the span of %s", call.op)
            return None

    def finish(self, call: _Call, span: Span, seconds: float, error: BaseException | None) -> None:
        """End the call's span and record its metrics (a failure is logged, never raised)."""
        try:
            self._finish(call, span, seconds, error)
        except Exception:  # telemetry never fails a call
            logger.exception("OpenTelemetry could not record %s", call.op)

    def _finish(self, call: _Call, span: Span, seconds: float, error: BaseException | None) -> None:
        attributes = self.attributes(call)
        if error is not None and not isinstance(error, _ANSWERS):
            kind = type(error)
            error_type = f"{kind.__module__}.{kind.__qualname__}"
            attributes = {**attributes, "error.type": error_type}
            span.set_attribute("error.type", error_type)
            span.set_status(self.error_status)
        for name in ("hits", "misses", "writes", "deletes", "retries"):
            if getattr(call, name):
                span.set_attribute(f"cacheorm.{name}", getattr(call, name))
        span.end()
        self.duration.record(seconds, attributes)
        if call.hits:
            self.hits.add(call.hits, attributes)
        if call.misses:
            self.misses.add(call.misses, attributes)
