"""``make faults``: what a server fault costs a caller, and what it loses.

Each scenario runs a workload through the public API (``insert``, ``get``,
``get_many``, ``update``, ``delete``, ``add``, ``delete_many``, an ``execute``
of mixed ops, an ``AutoField`` insert, ``modify`` of a counter record and the
backend's ``incr``) while a second thread injects one fault and later repairs
it: a server hung (``SIGSTOP`` then ``SIGCONT``; also with
``on_backend_error="miss"``), killed (``SIGKILL``, restarted on the same port),
restarted (``SIGTERM``, restarted); a node lost from a memcached pool; a Redis
Cluster master hung; a live key-by-key slot migration; filesystem writers
killed with ``kill -9``. ``python -m bench.faults WORD...`` runs only the
scenarios whose name contains one of the words.

Every call is timed and every exception counted by type. Every write is
entered in a model of what the caller was told: an acknowledged write must be
readable once the server is back (unless the fault destroyed the server's
memory); a write that raised may or may not have happened, but never twice; a
write refused with ``AlreadyExists``/``NotFound`` must not have happened.
Counters: final value minus acknowledged increments must lie between 0 and the
number of increments that raised.

Servers are throwaway (free loopback ports, never 6379/11211, temporary
directories) and are stopped and removed at the end. The exit code is 0 even
when a target is missed: this is a report, and a FAIL row says why.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import random
import re
import shutil
import signal
import struct
import sys
import tempfile
import threading
import time
import traceback
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Final, Literal, NamedTuple, NoReturn, TypeVar

import redis
from redis.crc import key_slot

import cacheorm as co

# The private helpers restart a server on the port it had, which the public ones
# (always a fresh free port) cannot do.
from tests.servers import (
    MemcachedServer,
    RedisCluster,
    RedisServer,
    _memcached_args,
    _memcached_ready,
    _redis_args,
    _redis_ready,
    _spawn,
    _wait_until,
    start_memcached_many,
    start_redis,
    start_redis_cluster,
)

T = TypeVar("T")
Mode = Literal["raise", "miss"]

TIMEOUT: Final = 0.5
"""The socket / read timeout (and connect timeout) given to every backend under test."""

SLACK: Final = 0.25
"""Scheduling slack on a busy 2-core machine, added to the bound."""

BOUND: Final = 2 * TIMEOUT + SLACK
"""The longest one call may take: its timeout plus one retry, plus the slack."""

CHECK_TIMEOUT: Final = 5.0
"""Timeouts of the separate backend that reads everything back once the fault is over."""

BEFORE: Final = 0.6
FAULT: Final = 3.0
DOWN: Final = 2.0
AFTER: Final = 1.5
PROBE_AFTER: Final = 0.3
LATE: Final = 0.5
"""Calls starting this long after the repair should succeed again."""

SLOW: Final = 0.8 * TIMEOUT
"""A call this long waited for a timeout (healthy calls take milliseconds)."""

STEP_PAUSE: Final = 0.001
"""Between workload calls, so the loop does not take a whole shared core."""

GROUPS: Final = 6
PER_GROUP: Final = 8
PROBES: Final = 60
FILLERS: Final = 100
"""Extra keys per hash-tag group on the cluster, so a live migration lasts seconds."""

MIGRATE_PAUSE: Final = 0.003

FS_WRITERS: Final = 4
FS_KEYS: Final = 12
FS_KILLS: Final = 200
FS_SECONDS: Final = 15.0
FS_PAYLOAD: Final = (16_384, 262_144)

PREFIX: Final = "fault."
COUNTER: Final = b"fault.counter"
CTR: Final = "ctr"
SEED: Final = 9


class Item(NamedTuple):
    id: str
    n: int
    note: str


class Ticket(NamedTuple):
    id: int | None
    label: str


class Blob(NamedTuple):
    id: str
    seq: int
    payload: bytes
    digest: str


# key_format: the stored key is exactly "fault.<id>", so the harness can see which
# node holds a key with a raw client, without cacheorm internals.
ITEM = co.Schema(Item, key="id", key_format=PREFIX + "%s")
TICKET = co.Schema(Ticket, key="id", fields={"id": co.AutoField()})
BLOB = co.Schema(Blob, key="id")

NOTE: Final = "x" * 64


def raw_key(item_id: str) -> bytes:
    return (PREFIX + item_id).encode()


# -- the report ------------------------------------------------------------


@dataclass
class Row:
    """The figures of one fault against one backend."""

    fault: str
    backend: str
    timeout: float | None = TIMEOUT
    bound: float | None = BOUND
    calls: int = 0
    worst: float = 0.0
    worst_op: str = ""
    errors: Counter[str] = field(default_factory=Counter)
    foreign: list[str] = field(default_factory=list)
    lost: int = 0
    duplicated: int = 0
    destroyed: int = 0
    torn: int = 0
    served: str = "-"
    served_ok: bool = True
    late_errors: int = 0
    slow: int = 0
    warnings: int = 0
    notes: list[str] = field(default_factory=list)
    harness_error: str | None = None

    def note(self, text: str) -> None:
        if text not in self.notes:
            self.notes.append(text)

    def failures(self) -> list[str]:
        """Why this row misses a target (empty: PASS)."""
        out = []
        if self.harness_error is not None:
            out.append(f"harness error: {self.harness_error}")
        if self.bound is not None and self.worst > self.bound:
            out.append(
                f"a call ({self.worst_op}) took {self.worst:.2f} s > bound {self.bound:.2f} s"
            )
        if self.duplicated:
            out.append(f"{self.duplicated} duplicated write(s)")
        if self.lost:
            out.append(f"{self.lost} acknowledged write(s) lost")
        if self.torn:
            out.append(f"{self.torn} torn record(s)")
        if not self.served_ok:
            out.append(f"keys on live nodes not all served ({self.served})")
        if self.foreign:
            out.append(f"non-cacheorm exception escaped: {self.foreign[0]}")
        return out


class _WarningCount(logging.Handler):
    """Counts the warnings cacheorm logs (e.g. "backend unavailable") during a scenario."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.count = 0

    def emit(self, record: logging.LogRecord) -> None:
        self.count += 1


# -- the model of what the caller was told ----------------------------------


@dataclass
class KeyModel:
    """What one record key may hold, given the answers its writes got.

    Values are the unique ``n`` each write carried; ``None`` is "absent".
    """

    confirmed: int | None = None
    destroyed: bool = False
    pending: set[int | None] = field(default_factory=set)
    earlier: set[int | None] = field(default_factory=set)
    refused: set[int] = field(default_factory=set)

    def acked(self, value: int | None) -> None:
        self.earlier |= self.pending
        self.pending = set()
        self.confirmed = value
        self.destroyed = False

    def judge(self, found: int | None) -> str:
        if found == self.confirmed or found in self.pending:
            return "ok"
        if found is None and self.destroyed:
            return "destroyed"
        if found is not None and found in self.refused:
            return "duplicated"
        if found in self.earlier:
            return "lost (a timed-out write ran after a later acknowledged one)"
        return "lost"


@dataclass
class CountModel:
    """A counter: acknowledged and failed increments since it last started from 0."""

    acked: int = 0
    raised: int = 0
    destroyed: bool = False

    def restart(self, destroyed: bool) -> None:
        self.acked, self.raised, self.destroyed = 0, 0, destroyed

    def judge(self, row: Row, what: str, value: int | None) -> None:
        if value is None:
            if self.acked and not self.destroyed:
                row.lost += 1
                row.note(f"{what}: gone, {self.acked} acknowledged increments")
            return
        if value < self.acked:
            row.lost += self.acked - value
            row.note(f"{what}: {value} < {self.acked} acknowledged increments")
        elif value > self.acked + self.raised:
            row.duplicated += value - self.acked - self.raised
            row.note(
                f"{what}: {value} > {self.acked} acknowledged + {self.raised} failed increments"
            )


@dataclass
class TicketModel:
    """AutoField inserts: the id each acknowledged label got, and labels whose insert raised."""

    acked: dict[str, int] = field(default_factory=dict)
    pending: set[str] = field(default_factory=set)
    destroyable: set[str] = field(default_factory=set)
    attempts: int = 0


# -- driving a workload against a fault --------------------------------------


@dataclass
class Control:
    """Shared between the workload (main thread) and the fault (its own thread)."""

    done: threading.Event = field(default_factory=threading.Event)
    probe_wanted: threading.Event = field(default_factory=threading.Event)
    probe_done: threading.Event = field(default_factory=threading.Event)
    destroyed: list[str | None] = field(default_factory=list)
    dead_node: str | None = None
    recovered_at: float | None = None
    error: BaseException | None = None

    def probe(self) -> None:
        """Ask the workload for a served-keys probe and wait (bounded) until it ran."""
        self.probe_wanted.set()
        self.probe_done.wait(timeout=30)


Timeline = Callable[[Control], None]


class Workload:
    """A bounded mix of public calls against one backend, checked against a model."""

    def __init__(
        self,
        row: Row,
        backend: co.Backend,
        ids: Sequence[str],
        probes: Sequence[str] = (),
        mode: Mode = "raise",
        seed: int = SEED,
    ) -> None:
        self.row = row
        self.backend = backend
        self.strict = co.Repo(ITEM, backend=backend)
        self.items = self.strict.replace(on_backend_error=mode)
        self.mode = mode
        self.tickets = co.Repo(TICKET, backend=backend, on_backend_error=mode)
        self.ids = list(ids)
        self.probes = list(probes)
        self.rng = random.Random(seed)
        self.next_n = 0
        self.turn = 0
        self.keys: dict[str, KeyModel] = {}
        self.counter = CountModel()
        self.ctr = CountModel()
        self.tickets_model = TicketModel()
        self.node_of: dict[bytes, str] = {}
        self.ctl = Control()
        self.seen_destroys = 0

    # -- set-up and the calls ---------------------------------------------

    def n(self) -> int:
        self.next_n += 1
        return self.next_n

    def setup(self) -> None:
        """Write every key once (healthy server), so every key has a known node and value."""
        for item_id in [*self.ids, *self.probes]:
            value = self.n()
            co.insert(self.items, Item(item_id, value, NOTE))
            self.keys[item_id] = KeyModel(confirmed=value)
        co.insert(self.items, Item(CTR, 0, ""))
        # Created now, so a pool or cluster can tell which node holds it.
        self.backend.incr(COUNTER)
        self.counter.acked = 1

    def call(self, op: str, fn: Callable[[], T]) -> T | Exception:
        """Run one public call: time it, count its error by type (answers are not errors)."""
        started = time.monotonic()
        try:
            return fn()
        except Exception as err:
            self.count_error(op, err, started)
            return err
        finally:
            elapsed = time.monotonic() - started
            self.row.calls += 1
            self.row.slow += elapsed >= SLOW
            if elapsed > self.row.worst:
                self.row.worst, self.row.worst_op = elapsed, op

    def count_error(self, op: str, err: Exception, started: float) -> None:
        if isinstance(err, co.NotFound | co.AlreadyExists):
            return  # an answer about the data, not a failure
        self.row.errors[type(err).__name__] += 1
        recovered = self.ctl.recovered_at
        if recovered is not None and started > recovered + LATE:
            self.row.late_errors += 1
        if not isinstance(err, co.CacheORMError):
            frames = traceback.extract_tb(err.__traceback__)
            where = f" at {frames[-1].filename}:{frames[-1].lineno}" if frames else ""
            self.row.foreign.append(f"{op}: {type(err).__name__}{where}: {err!r}"[:300])

    def write(self, key: str, value: int | None, result: object) -> None:
        model = self.keys[key]
        if isinstance(result, co.NotFound | co.AlreadyExists):
            if value is not None:
                model.refused.add(value)
        elif isinstance(result, Exception):
            model.pending.add(value)
        else:
            model.acked(value)

    def step(self) -> None:
        """One call, in a fixed rotation of operations, on a random key."""
        op = self.turn % 11
        self.turn += 1
        key = self.rng.choice(self.ids)
        items = self.items
        if op == 0:
            value = self.n()
            self.write(
                key, value, self.call("insert", lambda: co.insert(items, Item(key, value, NOTE)))
            )
        elif op == 1:
            self.call("get", lambda: co.get(items, key))
        elif op == 2:
            group = self.rng.randrange(GROUPS) * PER_GROUP
            batch = self.ids[group : group + PER_GROUP]
            self.call("get_many", lambda: co.get_many(items, batch))
        elif op == 3:
            value = self.n()
            self.write(key, value, self.call("update", lambda: co.update(items, key, n=value)))
        elif op == 4:
            self.write(key, None, self.call("delete", lambda: co.delete(items, key)))
        elif op == 5:
            value = self.n()
            self.write(key, value, self.call("add", lambda: co.add(items, Item(key, value, NOTE))))
        elif op == 6:
            self.ticket()
        elif op == 7:
            self.incr()
        elif op == 8:
            self.modify()
        elif op == 9:
            self.delete_many()
        else:
            self.pipeline()

    def delete_many(self) -> None:
        keys = self.rng.sample(self.ids, 3)
        items = self.items
        result = self.call("delete_many", lambda: co.delete_many(items, keys))
        for key in keys:
            self.write(key, None, result)

    def pipeline(self) -> None:
        """One ``execute`` of a delete, an add and an exists, each op's outcome on its own."""
        gone, new, asked = self.rng.sample(self.ids, 3)
        value = self.n()
        items = self.items
        started = time.monotonic()
        result = self.call(
            "execute",
            lambda: co.execute(
                co.ops.delete(items, gone),
                co.ops.add(items, Item(new, value, NOTE)),
                co.ops.exists(items, asked),
                raise_on_error=False,
            ),
        )
        if isinstance(result, Exception):
            self.write(gone, None, result)
            self.write(new, value, result)
            return
        for part in result:
            if isinstance(part, Exception):
                self.count_error("execute", part, started)
        self.write(gone, None, result[0])
        self.write(new, value, result[1])

    def ticket(self) -> None:
        label = f"t{self.n()}"
        tickets = self.tickets
        self.tickets_model.attempts += 1
        result = self.call("insert (AutoField)", lambda: co.insert(tickets, Ticket(None, label)))
        if isinstance(result, Exception):
            self.tickets_model.pending.add(label)
        elif result.id is not None:
            self.tickets_model.acked[label] = result.id

    def incr(self) -> None:
        result = self.call("backend.incr", lambda: self.backend.incr(COUNTER))
        if isinstance(result, Exception):
            self.counter.raised += 1
        else:
            self.counter.acked += 1

    def modify(self) -> None:
        items = self.items
        result = self.call("modify", lambda: co.modify(items, CTR, lambda r: r._replace(n=r.n + 1)))
        if isinstance(result, co.NotFound):
            # In miss mode an outage reads as "not found": ask again, strictly.
            strict = self.strict
            again = self.call("get (check)", lambda: co.get_or_none(strict, CTR))
            if again is not None:
                return  # an outage, or the record is there after all: nothing was written
            if not self.ctr.destroyed:
                self.row.lost += self.ctr.acked
                self.row.note(f"modify counter record vanished after {self.ctr.acked} increments")
            # The fault destroyed it: start again from 0, as an application would.
            self.call("insert", lambda: co.insert(items, Item(CTR, 0, "")))
            self.ctr.restart(destroyed=False)
        elif isinstance(result, Exception):
            self.ctr.raised += 1
        else:
            self.ctr.acked += 1

    # -- faults seen by the workload ----------------------------------------

    def sync(self) -> None:
        """Apply memory the fault destroyed, and run a served-keys probe when asked."""
        ctl = self.ctl
        while self.seen_destroys < len(ctl.destroyed):
            self.destroy(ctl.destroyed[self.seen_destroys])
            self.seen_destroys += 1
        if ctl.probe_wanted.is_set() and not ctl.probe_done.is_set():
            try:
                if ctl.dead_node is not None:
                    self.probe(ctl.dead_node)
                elif self.mode == "miss":
                    self.burst()
            finally:
                ctl.probe_done.set()

    def on(self, node: str | None, key: bytes) -> bool:
        # A key whose node is unknown counts as on the failed node: that only relaxes the check.
        return node is None or self.node_of.get(key, node) == node

    def destroy(self, node: str | None) -> None:
        for item_id, model in self.keys.items():
            if self.on(node, raw_key(item_id)):
                model.destroyed = True
        if self.on(node, COUNTER):
            self.counter.restart(destroyed=True)
        if self.on(node, raw_key(CTR)):
            self.ctr.restart(destroyed=True)
        # Tickets and the AutoField counter may live on any node: all become destroyable.
        self.tickets_model.destroyable |= set(self.tickets_model.acked)

    def probe(self, dead: str) -> None:
        """Read every probe key while ``dead`` is down: count the live-node keys served."""
        reachable = [p for p in self.probes if self.node_of.get(raw_key(p)) != dead]
        on_dead = [p for p in self.probes if self.node_of.get(raw_key(p)) == dead]
        items = self.items

        def correct(item_id: str, record: Item | Exception | None) -> bool:
            return isinstance(record, Item) and record.n == self.keys[item_id].confirmed

        served = 0
        for item_id in reachable:
            served += correct(item_id, self.call("get", partial(co.get, items, item_id)))
        for item_id in on_dead[:3]:
            self.call("get (key on the failed node)", partial(co.get, items, item_id))
        lenient = items.replace(on_backend_error="miss")
        found = self.call("get_many (miss mode)", lambda: co.get_many(lenient, self.probes))
        many = 0
        if not isinstance(found, Exception):
            by_id = dict(zip(self.probes, found, strict=True))
            many = sum(correct(i, by_id[i]) for i in reachable)
        strict = self.call("get_many (probe)", lambda: co.get_many(items, self.probes))
        if isinstance(strict, Exception):
            self.row.note(f"get_many in raise mode during the outage: {type(strict).__name__}")
        else:
            served_strict = sum(1 for r in strict if r is not None)
            self.row.note(f"get_many in raise mode during the outage: {served_strict} hits")
        total = len(reachable)
        self.row.served = f"get {served}/{total}, get_many(miss) {many}/{total}"
        self.row.served_ok = served == total and many == total

    def burst(self) -> None:
        """Reads in a row during an outage, in miss mode: how many wait for a timeout?"""
        items, waited, reads = self.items, 0, 5
        for item_id in self.ids[:reads]:
            started = time.monotonic()
            self.call("get_or_none (outage burst)", partial(co.get_or_none, items, item_id))
            waited += time.monotonic() - started >= SLOW
        self.row.note(
            f"miss mode: {waited} of {reads} reads in a row during the outage waited "
            "a timeout (failing fast would make it 1)"
        )

    def drive(self, timeline: Timeline) -> None:
        """Run the workload until ``timeline`` (in its own thread) has injected and repaired."""
        ctl = self.ctl

        def run() -> None:
            try:
                timeline(ctl)
            except BaseException as err:  # pytest.fail from tests.servers is a BaseException
                ctl.error = err
            finally:
                ctl.done.set()

        thread = threading.Thread(target=run, name="fault", daemon=True)
        thread.start()
        try:
            while not ctl.done.is_set():
                self.sync()
                self.step()
                time.sleep(STEP_PAUSE)
            self.sync()
        finally:
            thread.join()
        if ctl.error is not None:
            raise ctl.error

    # -- the verdict --------------------------------------------------------

    def verify(self, check: co.Backend) -> None:
        """Read everything back through a healthy backend and compare with the model."""
        items = co.Repo(ITEM, backend=check)
        row = self.row
        for item_id, model in self.keys.items():
            try:
                record = co.get_or_none(items, item_id)
            except co.DecodeError as err:
                row.lost += 1
                row.note(f"{item_id}: unreadable ({err})"[:160])
                continue
            verdict = model.judge(None if record is None else record.n)
            if verdict == "destroyed":
                row.destroyed += 1
            elif verdict == "duplicated":
                row.duplicated += 1
                row.note(f"{item_id}: holds a write that was answered AlreadyExists/NotFound")
            elif verdict != "ok":
                row.lost += 1
                row.note(f"{item_id}: {verdict}")
        raw = check.get(COUNTER)
        self.counter.judge(row, "backend.incr counter", None if raw is None else int(raw))
        ctr = co.get_or_none(items, CTR)
        self.ctr.judge(row, "modify counter", None if ctr is None else ctr.n)
        self.verify_tickets(check)

    def verify_tickets(self, check: co.Backend) -> None:
        model, row = self.tickets_model, self.row
        tickets = co.Repo(TICKET, backend=check)
        highest = max(model.acked.values(), default=0)
        limit = max(highest, 2 * model.attempts) + 20
        ids_of: dict[str, list[int]] = {}
        for ticket in co.get_many(tickets, list(range(1, limit + 1))):
            if ticket is not None and ticket.id is not None:
                ids_of.setdefault(ticket.label, []).append(ticket.id)
        for label, ids in ids_of.items():
            if len(ids) > 1:
                row.duplicated += len(ids) - 1
                row.note(f"AutoField record {label!r} stored under ids {ids}")
        for label, ticket_id in model.acked.items():
            if ticket_id in ids_of.get(label, []):
                continue
            if label in model.destroyable:
                row.destroyed += 1
            else:
                row.lost += 1
                row.note(f"AutoField record {label!r} (id {ticket_id}) lost")


# -- servers: restart on the same port -----------------------------------------


def _restart_redis(server: RedisServer, extra: Sequence[str] = ()) -> None:
    """Start redis-server again on the same port and directory, once the old one has exited."""
    old = server._proc
    old.process.wait(timeout=10)
    args = _redis_args(server.port, old.directory, extra)
    new = _spawn("redis-server", args, server.port, old.directory)
    server._proc = new
    _wait_until(_redis_ready(server.port), [new], "redis-server (restarted)", 10.0)


def _restart_memcached(server: MemcachedServer) -> None:
    old = server._proc
    old.process.wait(timeout=10)
    new = _spawn("memcached", _memcached_args(server.port), server.port, old.directory)
    server._proc = new
    _wait_until(_memcached_ready(server.port), [new], "memcached (restarted)", 10.0)


def _signal(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


def hung(pid: int, node: str | None = None, probe: bool = False) -> Timeline:
    """SIGSTOP for ``FAULT`` seconds (probing served keys meanwhile), then SIGCONT."""

    def run(ctl: Control) -> None:
        time.sleep(BEFORE)
        _signal(pid, signal.SIGSTOP)
        try:
            started = time.monotonic()
            if probe:
                ctl.dead_node = node
                time.sleep(PROBE_AFTER)
                ctl.probe()
            time.sleep(max(0.0, FAULT - (time.monotonic() - started)))
        finally:
            _signal(pid, signal.SIGCONT)
        ctl.recovered_at = time.monotonic()
        time.sleep(AFTER)

    return run


def killed(
    server: RedisServer | MemcachedServer,
    restart: Callable[[], None],
    sig: signal.Signals = signal.SIGKILL,
    node: str | None = None,
    destroys: bool = True,
    down: float = DOWN,
    probe: bool = False,
) -> Timeline:
    """Send ``sig``; after ``down`` seconds (probing meanwhile) restart on the same port."""

    def run(ctl: Control) -> None:
        time.sleep(BEFORE)
        _signal(server.pid, sig)
        # Its memory counts as destroyed only once it has exited: a server stopping
        # gracefully still acknowledges writes, which the exit then destroys too.
        server._proc.process.wait(timeout=10)
        if destroys:
            ctl.destroyed.append(node)
        started = time.monotonic()
        if probe:
            ctl.dead_node = node
            time.sleep(PROBE_AFTER)
            ctl.probe()
        time.sleep(max(0.0, down - (time.monotonic() - started)))
        restart()
        ctl.recovered_at = time.monotonic()
        time.sleep(AFTER)

    return run


# -- the scenarios ---------------------------------------------------------------


class Made(NamedTuple):
    backend: co.Backend
    label: str
    close: Callable[[], None]


def _redis_backend(server: RedisServer, timeout: float) -> Made:
    backend = co.RedisBackend(
        url=server.url, socket_timeout=timeout, socket_connect_timeout=timeout
    )
    return Made(backend, "redis", backend.close)


def _memcached_backend(servers: Sequence[MemcachedServer], timeout: float) -> Made:
    backend = co.MemcachedBackend(
        servers=[s.address for s in servers], timeout=timeout, connect_timeout=timeout
    )
    label = "memcached" if len(servers) == 1 else f"memcached ({len(servers)} nodes)"
    return Made(backend, label, backend.close)


def _cluster_backend(cluster: RedisCluster, timeout: float) -> Made:
    """The ``redis+cluster://`` URL form when the backend has it, else a RedisCluster client."""
    url = f"redis+cluster://{cluster.host}:{cluster.ports[0]}"
    try:
        backend = co.RedisBackend(url=url, socket_timeout=timeout, socket_connect_timeout=timeout)
    except (co.ValidationError, TypeError):
        client = redis.RedisCluster(
            host=cluster.host,
            port=cluster.ports[0],
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
        )
        backend = co.RedisBackend(client=client)

        def close() -> None:
            backend.close()
            client.close()

        return Made(backend, "redis cluster (RedisCluster client)", close)
    return Made(backend, "redis cluster (redis+cluster:// url)", backend.close)


def plain_ids() -> list[str]:
    return [f"k{g}{j:02d}" for g in range(GROUPS) for j in range(PER_GROUP)]


def tagged_ids() -> list[str]:
    """Ids in ``GROUPS`` hash-tag groups: each group's keys share one cluster slot."""
    return [f"{{g{g}}}k{j:02d}" for g in range(GROUPS) for j in range(PER_GROUP)]


def probe_ids() -> list[str]:
    return [f"p{i:02d}" for i in range(PROBES)]


def run_workload(
    row: Row,
    made: Callable[[float], Made],
    timeline: Timeline,
    ids: Sequence[str],
    probes: Sequence[str] = (),
    locate: Callable[[Sequence[bytes]], dict[bytes, str]] | None = None,
    prepare: Callable[[co.Backend], None] | None = None,
    mode: Mode = "raise",
) -> None:
    """Set up, drive the fault, then verify through a fresh backend with long timeouts."""
    under_test = made(TIMEOUT)
    row.backend = under_test.label
    try:
        workload = Workload(row, under_test.backend, ids, probes, mode)
        workload.setup()
        if prepare is not None:
            prepare(under_test.backend)
        if locate is not None:
            raw = [raw_key(i) for i in [*ids, *probes, CTR]] + [COUNTER]
            workload.node_of = locate(raw)
        workload.drive(timeline)
    finally:
        under_test.close()
    check = made(CHECK_TIMEOUT)
    try:
        workload.verify(check.backend)
    finally:
        check.close()


@contextlib.contextmanager
def scenario_root(root: Path, name: str) -> Iterator[Path]:
    """A directory for one scenario's servers, removed afterwards."""
    directory = root / re.sub(r"[^\w.-]+", "-", name)
    directory.mkdir()
    try:
        yield directory
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def one_server_fault(
    server: RedisServer | MemcachedServer,
    fault: str,
    restart: Callable[[], None],
    restart_keeps_data: bool,
) -> Timeline:
    """The timeline of ``fault`` ("hung", "hung (miss mode)", "killed", "restarted")."""
    if fault.startswith("hung"):
        return hung(server.pid, probe="miss" in fault)
    if fault == "killed":
        return killed(server, restart)
    return killed(server, restart, sig=signal.SIGTERM, destroys=not restart_keeps_data, down=0.0)


def redis_fault(root: Path, fault: str) -> Row:
    row = Row(fault, "redis")
    with scenario_root(root, f"redis-{fault}") as directory:
        # The restart scenario persists (AOF), so a restart must lose nothing at all;
        # the kill scenario does not, so the killed server's memory is gone.
        extra = ["--appendonly", "yes", "--appendfsync", "everysec"] if fault == "restarted" else []
        server = start_redis(directory / "redis", extra)
        try:
            timeline = one_server_fault(
                server, fault, lambda: _restart_redis(server, extra), restart_keeps_data=True
            )
            if fault == "restarted":
                row.note("restart: AOF on (appendfsync everysec), so nothing may be lost")
            run_workload(
                row,
                lambda t: _redis_backend(server, t),
                timeline,
                plain_ids(),
                mode="miss" if "miss" in fault else "raise",
            )
        finally:
            server.stop()
    return row


def memcached_fault(root: Path, fault: str) -> Row:
    row = Row(fault, "memcached")
    with scenario_root(root, f"memcached-{fault}") as directory:
        (server,) = start_memcached_many([directory / "mc"])
        try:
            timeline = one_server_fault(
                server, fault, lambda: _restart_memcached(server), restart_keeps_data=False
            )
            run_workload(
                row,
                lambda t: _memcached_backend([server], t),
                timeline,
                plain_ids(),
                mode="miss" if "miss" in fault else "raise",
            )
        finally:
            server.stop()
    return row


def _locate_memcached(
    pool: Sequence[MemcachedServer],
) -> Callable[[Sequence[bytes]], dict[bytes, str]]:
    def locate(keys: Sequence[bytes]) -> dict[bytes, str]:
        where: dict[bytes, str] = {}
        for node in pool:
            client = node.client()
            try:
                for key in client.get_many(keys):
                    where[key if isinstance(key, bytes) else key.encode()] = f":{node.port}"
            finally:
                client.close()
        return where

    return locate


def pool_fault(root: Path, fault: str) -> Row:
    row = Row(fault, "memcached (2 nodes)")
    with scenario_root(root, f"pool-{fault}") as directory:
        pool = start_memcached_many([directory / "a", directory / "b"])
        try:
            victim = pool[1]
            node = f":{victim.port}"
            timeline: Timeline
            if fault.startswith("node hung"):
                timeline = hung(victim.pid, node=node, probe=True)
            else:
                timeline = killed(
                    victim,
                    lambda: _restart_memcached(victim),
                    node=node,
                    down=FAULT,
                    probe=True,
                )
            run_workload(
                row,
                lambda t: _memcached_backend(pool, t),
                timeline,
                plain_ids(),
                probe_ids(),
                locate=_locate_memcached(pool),
            )
        finally:
            for server in pool:
                server.stop()
    return row


def _locate_cluster(cluster: RedisCluster) -> Callable[[Sequence[bytes]], dict[bytes, str]]:
    def locate(keys: Sequence[bytes]) -> dict[bytes, str]:
        wanted = set(keys)
        where: dict[bytes, str] = {}
        for port in cluster.ports:
            with cluster.node_client(port) as node:
                for key in node.scan_iter(match=PREFIX + "*", count=1000):
                    if key in wanted:
                        where[key] = f":{port}"
        return where

    return locate


class _Node(NamedTuple):
    port: int
    node_id: str
    run: Callable[..., object]


def _slot_owner(nodes: Sequence[_Node], slot: int) -> _Node:
    reply = nodes[0].run("CLUSTER", "SLOTS")
    assert isinstance(reply, list)
    for entry in reply:
        start, end, master = entry[0], entry[1], entry[2]
        if start <= slot <= end:
            return next(n for n in nodes if n.port == master[1])
    raise LookupError(f"slot {slot} has no owner")


def _migrate(nodes: Sequence[_Node], host: str, slot: int, source: _Node, target: _Node) -> int:
    """Move one slot key by key (as ``redis-cli --cluster reshard`` does), slowly. Returns keys."""
    target.run("CLUSTER", "SETSLOT", slot, "IMPORTING", source.node_id)
    source.run("CLUSTER", "SETSLOT", slot, "MIGRATING", target.node_id)
    moved = 0
    while True:
        keys = source.run("CLUSTER", "GETKEYSINSLOT", slot, 1)
        assert isinstance(keys, list)
        if not keys:
            break
        source.run("MIGRATE", host, target.port, keys[0], 0, 5000)
        moved += 1
        time.sleep(MIGRATE_PAUSE)
    for node in [target, source, *[n for n in nodes if n not in (source, target)]]:
        node.run("CLUSTER", "SETSLOT", slot, "NODE", target.node_id)
    return moved


def cluster_fault(root: Path, fault: str) -> Row:
    row = Row(fault, "redis cluster")
    with scenario_root(root, "cluster-" + fault.split()[0]) as directory:
        cluster = start_redis_cluster([directory / f"n{i}" for i in range(3)])
        clients = [cluster.node_client(port) for port in cluster.ports]
        try:
            nodes = []
            for port, client in zip(cluster.ports, clients, strict=True):
                command: Callable[..., object] = client.execute_command
                node_id = command("CLUSTER", "MYID")
                assert isinstance(node_id, bytes)
                nodes.append(_Node(port, node_id.decode(), command))
            prepare: Callable[[co.Backend], None] | None = None
            timeline: Timeline
            if fault.startswith("master hung"):
                victim = cluster.ports[0]
                row.note(f"the hung master :{victim} is the one named in the URL / startup node")
                timeline = hung(cluster._procs[0].pid, node=f":{victim}", probe=True)
                ids, probes = plain_ids(), probe_ids()
            else:
                ids, probes = tagged_ids(), []
                slots = sorted({key_slot(raw_key(i)) for i in ids})

                def add_fillers(backend: co.Backend) -> None:
                    fillers = {
                        f"{PREFIX}{{g{g}}}fill{j}".encode(): b"f"
                        for g in range(GROUPS)
                        for j in range(FILLERS)
                    }
                    backend.set_many(fillers)

                prepare = add_fillers

                def reshard(ctl: Control) -> None:
                    time.sleep(BEFORE)
                    moved = 0
                    for _ in range(2):  # there and back again
                        for slot in slots:
                            owner = _slot_owner(nodes, slot)
                            target = nodes[(nodes.index(owner) + 1) % len(nodes)]
                            moved += _migrate(nodes, cluster.host, slot, owner, target)
                    row.note(f"reshard: {len(slots)} slots moved twice, {moved} MIGRATEs")
                    ctl.recovered_at = time.monotonic()
                    time.sleep(AFTER)

                timeline = reshard
            run_workload(
                row,
                lambda t: _cluster_backend(cluster, t),
                timeline,
                ids,
                probes,
                locate=_locate_cluster(cluster),
                prepare=prepare,
            )
        finally:
            for client in clients:
                client.close()
            cluster.stop()
    return row


# -- filesystem writers killed ---------------------------------------------------

_ACK: Final = struct.Struct("<HHqd")  # worker, key index, seq, seconds the insert took


def _digest(seq: int, payload: bytes) -> str:
    return hashlib.sha256(seq.to_bytes(8, "big") + payload).hexdigest()


def _fs_writer(directory: Path, worker: int, seq: int, fd: int, seed: int) -> NoReturn:
    """A forked child: insert records forever, reporting each acknowledged one on ``fd``."""
    code = 0
    try:
        repo = co.Repo(BLOB, backend=co.FileSystemBackend(directory, max_items=None))
        rng = random.Random(seed)
        while True:
            seq += 1
            index = rng.randrange(FS_KEYS)
            payload = os.urandom(rng.randrange(*FS_PAYLOAD))
            started = time.monotonic()
            co.insert(repo, Blob(f"w{worker}-{index}", seq, payload, _digest(seq, payload)))
            os.write(fd, _ACK.pack(worker, index, seq, time.monotonic() - started))
    except BaseException:  # a crash is reported by the exit code; nothing may escape a fork
        code = 3
    finally:
        os._exit(code)


@dataclass
class _Writer:
    pid: int
    fd: int
    worker: int
    kill_at: float


@dataclass
class _FsTally:
    acked: dict[str, int] = field(default_factory=dict)
    kills: int = 0
    crashed: int = 0
    buffers: dict[int, bytes] = field(default_factory=dict)


def _drain(writer: _Writer, tally: _FsTally, row: Row) -> None:
    data = tally.buffers.pop(writer.fd, b"")
    with contextlib.suppress(BlockingIOError):
        while chunk := os.read(writer.fd, 65536):
            data += chunk
    usable = len(data) - len(data) % _ACK.size
    for worker, index, seq, seconds in _ACK.iter_unpack(data[:usable]):
        key = f"w{worker}-{index}"
        tally.acked[key] = max(tally.acked.get(key, 0), seq)
        row.calls += 1
        if seconds > row.worst:
            row.worst, row.worst_op = seconds, "insert"
    if usable < len(data):
        tally.buffers[writer.fd] = data[usable:]


def _spawn_writer(directory: Path, worker: int, generation: int, rng: random.Random) -> _Writer:
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read_end)
        _fs_writer(directory, worker, generation * 10**9, write_end, rng.randrange(2**32))
    os.close(write_end)
    os.set_blocking(read_end, False)
    return _Writer(pid, read_end, worker, time.monotonic() + rng.uniform(0.005, 0.15))


def _reap(writer: _Writer, tally: _FsTally, row: Row) -> None:
    _signal(writer.pid, signal.SIGKILL)
    _, status = os.waitpid(writer.pid, 0)
    if os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL:
        tally.kills += 1
    else:
        tally.crashed += 1
    _drain(writer, tally, row)
    os.close(writer.fd)


def fs_writers_killed(root: Path) -> Row:
    row = Row(f"writers kill -9 (x{FS_KILLS})", "filesystem", timeout=None, bound=None)
    with scenario_root(root, "fs") as directory:
        store = directory / "cache"
        store.mkdir()
        rng = random.Random(SEED)
        tally = _FsTally()
        writers: list[_Writer] = []
        generation = 0
        deadline = time.monotonic() + FS_SECONDS
        try:
            for worker in range(FS_WRITERS):
                generation += 1
                writers.append(_spawn_writer(store, worker, generation, rng))
            while tally.kills + tally.crashed < FS_KILLS and time.monotonic() < deadline:
                victim = min(writers, key=lambda w: w.kill_at)
                time.sleep(max(0.0, victim.kill_at - time.monotonic()))
                writers.remove(victim)
                _reap(victim, tally, row)
                generation += 1
                writers.append(_spawn_writer(store, victim.worker, generation, rng))
        finally:
            for writer in writers:
                _reap(writer, tally, row)
        _check_files(store, tally, row)
    return row


def _check_files(store: Path, tally: _FsTally, row: Row) -> None:
    """Every record reads back whole or is absent; no acknowledged write is lost."""
    files = [p for p in store.iterdir() if not p.name.startswith(".")]
    leftovers = [p for p in store.iterdir() if p.name.startswith(".tmp-")]
    backend = co.FileSystemBackend(store, max_items=None)
    repo = co.Repo(BLOB, backend=backend)
    present = 0
    for worker in range(FS_WRITERS):
        for index in range(FS_KEYS):
            key = f"w{worker}-{index}"
            try:
                blob = co.get_or_none(repo, key)
            except co.DecodeError:
                row.torn += 1
                present += 1
                continue
            if blob is None:
                if key in tally.acked:
                    row.lost += 1
                continue
            present += 1
            if blob.digest != _digest(blob.seq, blob.payload):
                row.torn += 1
            elif blob.seq < tally.acked.get(key, 0):
                row.lost += 1
                row.note(f"{key}: holds seq {blob.seq}, acknowledged {tally.acked[key]}")
    unreadable = len(files) - present
    if unreadable > 0:
        row.torn += unreadable
        row.note(f"{unreadable} record file(s) read as absent (torn, hidden as a miss)")
    backend.close()
    row.served = f"{present}/{len(files)} files read whole"
    row.note(
        f"{tally.kills} writers killed, {tally.crashed} crashed on their own; "
        f"{len(leftovers)} leftover .tmp-* file(s) after the kills"
    )


# -- running and printing ---------------------------------------------------------


def scenarios() -> list[tuple[str, Callable[[Path], Row]]]:
    return [
        ("filesystem writers killed", fs_writers_killed),
        ("redis hung", lambda r: redis_fault(r, "hung")),
        ("redis hung, miss mode", lambda r: redis_fault(r, "hung (miss mode)")),
        ("redis killed", lambda r: redis_fault(r, "killed")),
        ("redis restarted", lambda r: redis_fault(r, "restarted")),
        ("memcached hung", lambda r: memcached_fault(r, "hung")),
        ("memcached hung, miss mode", lambda r: memcached_fault(r, "hung (miss mode)")),
        ("memcached killed", lambda r: memcached_fault(r, "killed")),
        ("memcached restarted", lambda r: memcached_fault(r, "restarted")),
        ("memcached pool node killed", lambda r: pool_fault(r, "node killed")),
        ("memcached pool node hung", lambda r: pool_fault(r, "node hung")),
        ("redis cluster master hung", lambda r: cluster_fault(r, "master hung")),
        ("redis cluster live reshard", lambda r: cluster_fault(r, "live reshard")),
    ]


def run(name: str, scenario: Callable[[Path], Row], root: Path, warnings: _WarningCount) -> Row:
    print(f"[faults] {name} ...", file=sys.stderr, flush=True)
    started = time.monotonic()
    warnings.count = 0
    try:
        row = scenario(root)
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as err:  # pytest.fail (a missing binary) is a BaseException too
        row = Row(name, "-", harness_error=f"{type(err).__name__}: {err}"[:300])
    row.warnings = warnings.count
    print(f"[faults] {name}: {time.monotonic() - started:.1f} s", file=sys.stderr, flush=True)
    return row


def _errors(row: Row) -> str:
    return ", ".join(f"{name} {count}" for name, count in row.errors.most_common()) or "-"


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def print_table(rows: Sequence[Row]) -> None:
    header = (
        f"{'fault':<26} {'backend':<36} {'timeout':>7} {'bound':>6} {'worst':>6} "
        f"{'calls':>6} {'lost':>5} {'dup':>4} {'destr':>5}  {'verdict':<7} errors by type"
    )
    print()
    print("== faults: worst call (s) against timeout + one retry; lost / duplicated writes")
    print(
        f"   bound = 2 x timeout + {SLACK:.2f} s slack (timeout plus one retry); "
        "destr = acknowledged records the fault itself destroyed (a killed server's memory)"
    )
    print(header)
    print("-" * len(header))
    for row in rows:
        verdict = "FAIL" if row.failures() else "PASS"
        print(
            f"{row.fault:<26} {row.backend:<36} {_seconds(row.timeout):>7} "
            f"{_seconds(row.bound):>6} {row.worst:6.2f} {row.calls:6d} {row.lost:5d} "
            f"{row.duplicated:4d} {row.destroyed:5d}  {verdict:<7} {_errors(row)}"
        )
    print()
    print("served / details:")
    for row in rows:
        failures = row.failures()
        mark = "FAIL" if failures else "ok  "
        details = [f"served: {row.served}"] if row.served != "-" else []
        details.append(f"worst call: {row.worst_op or '-'}")
        if row.slow:
            details.append(f"{row.slow} call(s) waited >= {SLOW:.1f} s")
        if row.late_errors:
            details.append(f"{row.late_errors} error(s) more than {LATE} s after the repair")
        if row.warnings:
            details.append(f"{row.warnings} cacheorm warning(s) logged")
        print(f"  {mark} {row.fault} / {row.backend}: " + "; ".join(details))
        for text in row.notes[:6]:
            print(f"         - {text}")
        for text in failures:
            print(f"         ! {text}")
    failed = sum(1 for row in rows if row.failures())
    print()
    print(
        f"{len(rows) - failed} of {len(rows)} PASS"
        + (f", {failed} FAIL (see '!' lines above)" if failed else "")
    )


def main(argv: Sequence[str] = ()) -> None:
    """Run every scenario, or those whose name contains one of ``argv``; print the table."""
    chosen = [(n, s) for n, s in scenarios() if not argv or any(a in n for a in argv)]
    warnings = _WarningCount()
    library = logging.getLogger("cacheorm")
    saved = library.propagate
    library.addHandler(warnings)
    library.propagate = False  # counted, not printed between the progress lines
    root = Path(tempfile.mkdtemp(prefix="cacheorm-faults-"))
    started = time.monotonic()
    rows = []
    try:
        for name, scenario in chosen:
            rows.append(run(name, scenario, root, warnings))
    finally:
        library.removeHandler(warnings)
        library.propagate = saved
        shutil.rmtree(root, ignore_errors=True)
    print_table(rows)
    print(f"(total {time.monotonic() - started:.0f} s)")


if __name__ == "__main__":
    main(sys.argv[1:])
