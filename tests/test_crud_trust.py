"""What the record functions trust: loaders, payloads, outages (issue 9, items 3, 5, 6, 10-12).

* a loader's record must be the record of the key asked for;
* a payload read under a key must be that key's record in that namespace;
* with ``on_backend_error="miss"`` reads degrade during an outage, writes and
  deletes that did not happen raise, and each server's outage is logged once;
* ``execute`` gives what running its ops one after another would give, each op
  following its own repo's ``on_backend_error``.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import signal
import time
from collections.abc import Callable, Iterator, Sequence
from typing import NamedTuple

import pytest

import cacheorm as co
from cacheorm.backends.base import Command
from cacheorm.crud import LOCK_PREFIX
from tests.records import NOTE, PERSON, Note, Person
from tests.servers import RedisServer, ServerFactory, free_port, wait_until_stopped

# A call against a dead server configured with 0.2 s timeouts: well under this.
FAST = 3.0


def dead_backend(kind: str) -> co.Backend:
    """A backend whose server is not there: a closed loopback port, short timeouts."""
    if kind == "redis":
        return co.RedisBackend(
            url=f"redis://127.0.0.1:{free_port()}/0",
            socket_timeout=0.2,
            socket_connect_timeout=0.2,
        )
    return co.MemcachedBackend(
        servers=[("127.0.0.1", free_port())], connect_timeout=0.2, timeout=0.2
    )


@pytest.fixture(params=["redis", "memcached"])
def dead(request: pytest.FixtureRequest) -> Iterator[co.Backend]:
    backend = dead_backend(request.param)
    try:
        yield backend
    finally:
        backend.close()


@pytest.fixture(autouse=True)
def fresh_outages(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test starts with no server known to be down (the record is process-wide).

    These tests show what each call does when its server fails: every call asks
    the server (no fail-fast wait between probes; see tests/test_failfast.py).
    """
    monkeypatch.setattr(co.engine.Outage, "_down", {})
    monkeypatch.setattr(co.engine.Outage, "retry_seconds", 0.0)


class Clock:
    """Asserts that a block took less than ``limit`` seconds."""

    def __init__(self, limit: float) -> None:
        self.limit = limit

    def __enter__(self) -> Clock:
        self.start = time.monotonic()
        return self

    def __exit__(self, *exc: object) -> None:
        took = time.monotonic() - self.start
        assert took < self.limit, f"took {took:.2f}s, bound {self.limit}s"


def outage_lines(caplog: pytest.LogCaptureFixture, word: str) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == "cacheorm.engine" and word in r.getMessage()
    ]


# ------------------------------------------------------------------ loader trust (item 5)


def test_get_or_load_refuses_a_loader_returning_another_key() -> None:
    backend = co.MemoryBackend()
    people = co.Repo(PERSON, backend=backend)

    def wrong_loader(name: str) -> Person:
        return Person("Bob", 1.0)

    with pytest.raises(co.ValidationError) as caught:
        co.get_or_load(people, "Ann", wrong_loader)
    message = str(caught.value)
    assert "wrong_loader" in message
    assert "'Ann'" in message
    assert "'Bob'" in message
    assert co.get_or_none(people, "Ann") is None  # nothing written
    assert co.get_or_none(people, "Bob") is None  # the other key is untouched
    assert len(backend) == 0  # the lock is released too
    assert co.get_or_load(people, "Ann", lambda n: Person(n, 2.0)) == Person("Ann", 2.0)


def test_get_or_load_refuses_a_loader_overwriting_an_existing_record() -> None:
    people = co.Repo(PERSON)
    co.insert(people, Person("Bob", 1.0))
    with pytest.raises(co.ValidationError, match="returned the record of key 'Bob'"):
        co.get_or_load(people, "Ann", lambda n: Person("Bob", 99.0))
    assert co.get(people, "Bob") == Person("Bob", 1.0)
    (result,) = co.execute(
        co.ops.get_or_load(people, "Ann", lambda n: Person("Bob", 99.0)), raise_on_error=False
    )
    assert isinstance(result, co.ValidationError)
    assert co.get(people, "Bob") == Person("Bob", 1.0)


def test_get_or_load_accepts_the_key_its_field_normalises() -> None:
    class Tick(NamedTuple):
        at: dt.datetime
        n: int

    ticks = co.Repo(co.Schema(Tick, key="at", fields={"at": co.TimestampField(resolution=1000)}))
    precise = dt.datetime(2024, 1, 1, 12, 0, 0, 123456)
    loaded = co.get_or_load(ticks, precise, lambda at: Tick(at, 1))
    assert loaded.n == 1
    assert co.get(ticks, precise) == loaded  # stored as ms, read back by the µs key
    assert co.get_many(ticks, [precise]) == [loaded]


@pytest.mark.parametrize("lock_ttl", [0, -1, 1.5, True, None])
def test_get_or_load_refuses_a_lock_ttl_that_never_expires(lock_ttl: object) -> None:
    people = co.Repo(PERSON)
    calls: list[str] = []

    def loader(name: str) -> Person:
        calls.append(name)
        return Person(name, 1.0)

    with pytest.raises(co.ValidationError, match="lock_ttl"):
        co.get_or_load(people, "Ann", loader, lock_ttl=lock_ttl)  # type: ignore[call-overload]  # runtime check
    assert calls == []


@pytest.mark.parametrize("wait", [-1, -0.5, float("nan"), "1"])
def test_get_or_load_refuses_a_negative_wait(wait: object) -> None:
    people = co.Repo(PERSON)
    with pytest.raises(co.ValidationError, match="wait"):
        co.get_or_load(people, "Ann", lambda n: Person(n, 1.0), wait=wait)  # type: ignore[call-overload]  # runtime check


# ------------------------------------------------------------------ payload trust (item 6)

SERIALIZERS: dict[str, Callable[[], str | co.Serializer]] = {
    "msgpack": lambda: "msgpack",
    "json": lambda: "json",
    "signed-pickle": lambda: co.signed("pickle", b"s" * 32),
    "compressed-json": lambda: co.compressed("json", min_size=1),
    "signed-msgpack": lambda: co.signed("msgpack", b"k" * 32),
}


@pytest.fixture(params=sorted(SERIALIZERS))
def serializer(request: pytest.FixtureRequest) -> str | co.Serializer:
    return SERIALIZERS[request.param]()


@pytest.fixture(params=["memory", "redis"])
def store(request: pytest.FixtureRequest) -> Iterator[co.Backend]:
    if request.param == "memory":
        backend: co.Backend = co.MemoryBackend()
    else:
        server: RedisServer = request.getfixturevalue("redis_server")
        server.flush()
        backend = co.RedisBackend(url=server.url)
    try:
        yield backend
    finally:
        backend.close()


def copy_payload(
    repo: co.Repo[Person, str], src: str, dst: str, into: co.Repo[Person, str] | None = None
) -> None:
    """Copy the raw stored bytes of ``src`` over ``dst`` (in ``into``'s namespace)."""
    target = repo if into is None else into
    raw = repo.sync_backend.get(PERSON.encode_key(src, repo.namespace))
    assert raw is not None
    target.sync_backend.set(PERSON.encode_key(dst, target.namespace), raw)


def test_a_payload_copied_under_another_key_is_a_decode_error(
    store: co.Backend, serializer: str | co.Serializer
) -> None:
    people = co.Repo(PERSON, backend=store, serializer=serializer)
    co.insert_many(people, [Person("Ann", 1.0), Person("Bob", 2.0)])
    copy_payload(people, "Bob", "Ann")
    with pytest.raises(co.DecodeError, match="Ann"):
        co.get(people, "Ann")
    with pytest.raises(co.DecodeError):
        co.get_or_none(people, "Ann")
    with pytest.raises(co.DecodeError):
        co.get_many(people, ["Bob", "Ann"])
    with pytest.raises(co.DecodeError):
        co.update(people, "Ann", height=3.0)
    with pytest.raises(co.DecodeError):
        co.modify(people, "Ann", lambda p: p._replace(height=3.0))
    results = co.execute(co.ops.get(people, "Ann"), co.ops.get(people, "Bob"), raise_on_error=False)
    assert isinstance(results[0], co.DecodeError)
    assert results[1] == Person("Bob", 2.0)
    assert co.get(people, "Bob") == Person("Bob", 2.0)  # neither update touched Bob
    # get_or_load treats the planted payload as a miss and overwrites it.
    assert co.get_or_load(people, "Ann", lambda n: Person(n, 5.0)) == Person("Ann", 5.0)
    assert co.get(people, "Ann") == Person("Ann", 5.0)


def test_decode_error_names_schema_key_asked_and_key_found() -> None:
    people = co.Repo(PERSON)
    co.insert(people, Person("Bob", 2.0))
    copy_payload(people, "Bob", "Ann")
    with pytest.raises(co.DecodeError) as caught:
        co.get(people, "Ann")
    message = str(caught.value)
    assert PERSON.name in message
    assert "'Ann'" in message
    assert "'Bob'" in message


@pytest.mark.parametrize(("src_ns", "dst_ns"), [("a", "b"), ("", "a"), ("a", "")])
def test_a_payload_copied_under_another_namespace_is_a_decode_error(
    store: co.Backend, serializer: str | co.Serializer, src_ns: str, dst_ns: str
) -> None:
    src = co.Repo(PERSON, backend=store, serializer=serializer, namespace=src_ns)
    dst = src.replace(namespace=dst_ns)
    co.insert(src, Person("Ann", 1.0))
    copy_payload(src, "Ann", "Ann", into=dst)
    with pytest.raises(co.DecodeError):
        co.get(dst, "Ann")
    with pytest.raises(co.DecodeError):
        co.get_many(dst, ["Ann"])
    with pytest.raises(co.DecodeError):
        co.update(dst, "Ann", height=3.0)
    assert co.get(src, "Ann") == Person("Ann", 1.0)  # the original still reads
    assert co.get_or_load(dst, "Ann", lambda n: Person(n, 7.0)) == Person("Ann", 7.0)
    assert co.get(dst, "Ann") == Person("Ann", 7.0)


def test_records_round_trip_in_every_namespace(serializer: str | co.Serializer) -> None:
    backend = co.MemoryBackend()
    for namespace in ("", "a", "tenant:1"):
        people = co.Repo(PERSON, backend=backend, serializer=serializer, namespace=namespace)
        sam = co.insert(people, Person("Sam", float(len(namespace))))
        assert co.get(people, "Sam") == sam
        assert co.update(people, "Sam", married=True).married
        assert co.get_many(people, ["Sam", "x"]) == [sam._replace(married=True), None]


def test_protobuf_payloads_carry_no_namespace_mark_and_still_read() -> None:
    from tests.proto_gen import person_pb2

    backend = co.MemoryBackend()
    people = co.Repo(
        PERSON, backend=backend, serializer=co.ProtobufSerializer(person_pb2.Person), namespace="a"
    )
    assert not people.marks_namespace  # the message has no field for it
    sam = co.insert(people, Person("Sam", 1.5))
    assert co.get(people, "Sam") == sam
    # Without the mark, a copy under another key is still caught by the key check.
    co.insert(people, Person("Bob", 2.0))
    copy_payload(people, "Bob", "Sam")
    with pytest.raises(co.DecodeError):
        co.get(people, "Sam")


def test_an_unnamespaced_payload_stays_as_small_as_before() -> None:
    backend = co.MemoryBackend()
    plain = co.Repo(PERSON, backend=backend, serializer="json")
    co.insert(plain, Person("Sam", 1.5))
    raw = backend.get(PERSON.encode_key("Sam"))
    assert raw is not None
    assert b"\\u0000ns" not in raw
    assert b"\x00ns" not in raw


# ------------------------------------------------------------------ miss mode (items 3, 10)


@pytest.mark.timeout(30)
def test_miss_mode_reads_degrade_against_a_dead_server(dead: co.Backend) -> None:
    people = co.Repo(PERSON, backend=dead, on_backend_error="miss")
    loads: list[str] = []

    def loader(name: str) -> Person:
        loads.append(name)
        return Person(name, 9.0)

    with Clock(FAST):
        assert co.get_or_none(people, "Sam") is None
    with Clock(FAST):
        assert co.get_many(people, ["Sam", "Bob"]) == [None, None]
    with Clock(FAST):
        assert co.exists(people, "Sam") is False
    with Clock(FAST), pytest.raises(co.NotFound):
        co.get(people, "Sam")
    with Clock(FAST):
        assert co.get_or_load(people, "Sam", loader) == Person("Sam", 9.0)
    assert loads == ["Sam"]
    with Clock(FAST):
        assert co.execute(co.ops.get_or_none(people, "Sam"), co.ops.exists(people, "Bob")) == [
            None,
            False,
        ]


@pytest.mark.timeout(60)
def test_miss_mode_writes_and_deletes_that_did_not_happen_raise(dead: co.Backend) -> None:
    people = co.Repo(PERSON, backend=dead, on_backend_error="miss")
    sam = Person("Sam", 1.0)
    calls: list[tuple[str, Callable[[], object]]] = [
        ("insert", lambda: co.insert(people, sam)),
        ("insert_many", lambda: co.insert_many(people, [sam, Person("Bob", 2.0)])),
        ("add", lambda: co.add(people, sam)),
        ("replace", lambda: co.replace(people, sam)),
        ("update", lambda: co.update(people, "Sam", height=2.0)),
        ("modify", lambda: co.modify(people, "Sam", lambda p: p._replace(height=2.0))),
        ("update_many", lambda: co.update_many(people, {"Sam": {"height": 2.0}, "Bob": {}})),
        ("delete", lambda: co.delete(people, "Sam")),
        ("delete_many", lambda: co.delete_many(people, ["Sam", "Bob"])),
    ]
    for name, call in calls:
        with Clock(FAST), pytest.raises(co.BackendError):  # noqa: PT012  # fail names the call
            call()
            pytest.fail(f"{name} reported success though nothing was written")
    results = co.execute(
        co.ops.insert(people, sam), co.ops.delete(people, "Bob"), raise_on_error=False
    )
    assert all(isinstance(r, co.BackendError) for r in results), results


class LockRefusing(co.MemoryBackend):
    """A store whose lock ``add`` fails as if the server were unreachable."""

    def add(self, key: bytes, value: bytes, ttl: int | None = None) -> bool:
        if key.startswith(LOCK_PREFIX):
            raise co.BackendError("lock server unreachable", server="10.0.0.1:1")
        return super().add(key, value, ttl)


def test_get_or_load_loads_without_the_lock_when_miss_mode_cannot_take_it() -> None:
    backend = LockRefusing()
    lenient = co.Repo(PERSON, backend=backend, on_backend_error="miss")
    assert co.get_or_load(lenient, "Sam", lambda n: Person(n, 3.0)) == Person("Sam", 3.0)
    assert co.get(lenient, "Sam") == Person("Sam", 3.0)  # stored: only the lock failed
    strict = lenient.replace(on_backend_error="raise")
    with pytest.raises(co.BackendError):
        co.get_or_load(strict, "Bob", lambda n: Person(n, 3.0))
    assert co.get_or_none(strict, "Bob") is None


@pytest.mark.timeout(30)
def test_a_delete_during_an_outage_raises_and_no_stale_value_is_served_after(
    server_factory: ServerFactory,
) -> None:
    server = server_factory.redis()
    backend = co.RedisBackend(url=server.url, socket_timeout=0.2, socket_connect_timeout=0.2)
    people = co.Repo(PERSON, backend=backend, on_backend_error="miss")
    co.insert(people, Person("Sam", 1.0))
    os.kill(server.pid, signal.SIGSTOP)
    wait_until_stopped(server.pid)
    try:
        with Clock(FAST):
            assert co.get_or_none(people, "Sam") is None  # reads degrade
        with Clock(FAST), pytest.raises(co.BackendError):
            co.delete(people, "Sam")  # the caller learns the delete did not happen
        with Clock(FAST), pytest.raises(co.BackendError):
            co.update(people, "Sam", height=2.0)
    finally:
        os.kill(server.pid, signal.SIGCONT)
    # The DEL may have reached the server before it stopped answering (outcome
    # unknown): the caller, told so, deletes again once it is back.
    assert co.delete(people, "Sam") in (True, False)
    assert co.get_or_none(people, "Sam") is None
    backend.close()


# ------------------------------------------------------------------ outage log (item 3)


@pytest.mark.timeout(30)
def test_an_outage_is_logged_once_naming_the_server_and_its_end_once(
    server_factory: ServerFactory, caplog: pytest.LogCaptureFixture
) -> None:
    server = server_factory.redis()
    backend = co.RedisBackend(url=server.url, socket_timeout=0.2, socket_connect_timeout=0.2)
    people = co.Repo(PERSON, backend=backend, on_backend_error="miss")
    co.insert(people, Person("Sam", 1.0))
    before = co.engine.Outage.count
    with caplog.at_level(logging.WARNING, logger="cacheorm"):
        os.kill(server.pid, signal.SIGSTOP)
        wait_until_stopped(server.pid)
        try:
            for _ in range(3):
                assert co.get_or_none(people, "Sam") is None
                assert co.get_many(people, ["Sam", "Bob"]) == [None, None]
        finally:
            os.kill(server.pid, signal.SIGCONT)
        assert co.get(people, "Sam") == Person("Sam", 1.0)
    assert co.engine.Outage.count - before == 6
    down = outage_lines(caplog, "unavailable")
    up = outage_lines(caplog, "available again")
    assert len(down) == 1, down
    assert len(up) == 1, up
    assert f"{server.host}:{server.port}" in down[0]
    assert f"{server.host}:{server.port}" in up[0]
    assert "RedisBackend(" not in down[0]  # the server, not the object's repr
    backend.close()


class HalfDeadPool(co.MemoryBackend):
    """A two-node pool stand-in: keys containing ``b"dead"`` live on a node that is down."""

    def __init__(self, dead_server: str) -> None:
        super().__init__()
        self.dead_server = dead_server
        self.down = True

    def _error(self, key: bytes) -> co.BackendError | None:
        if self.down and b"dead" in key:
            return co.BackendError("node down", server=self.dead_server)
        return None

    def get(self, key: bytes) -> bytes | None:
        err = self._error(key)
        if err is not None:
            raise err
        return super().get(key)

    def batch(self, commands: Sequence[Command]) -> list[object]:
        answers = super().batch(commands)
        return [self._error(c.key) or a for c, a in zip(commands, answers, strict=True)]


def test_a_dead_pool_node_fails_only_its_keys_and_is_logged_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    dead_server = f"10.0.0.9:{free_port()}"  # unique: the outage state is process-wide
    pool = HalfDeadPool(dead_server)
    strict = co.Repo(PERSON, backend=pool)
    lenient = strict.replace(on_backend_error="miss")
    pool.down = False
    co.insert_many(strict, [Person("ok-1", 1.0), Person("dead-1", 2.0), Person("ok-2", 3.0)])
    pool.down = True
    with caplog.at_level(logging.WARNING, logger="cacheorm"):
        for _ in range(3):
            # Keys on the healthy node are served; the dead node's keys miss.
            assert co.get_many(lenient, ["ok-1", "dead-1", "ok-2"]) == [
                Person("ok-1", 1.0),
                None,
                Person("ok-2", 3.0),
            ]
            # Calls reaching only the healthy node do not end the dead node's outage.
            assert co.get(lenient, "ok-1") == Person("ok-1", 1.0)
            assert co.get_many(lenient, ["ok-1", "ok-2"])[0] == Person("ok-1", 1.0)
        with pytest.raises(co.BackendError):
            co.get_many(strict, ["ok-1", "dead-1"])
        with pytest.raises(co.BackendError):  # a write to the dead node raises in miss mode too
            co.insert_many(lenient, [Person("ok-3", 1.0), Person("dead-2", 1.0)])
        assert co.get(lenient, "ok-3") == Person("ok-3", 1.0)  # the healthy node took its write
        pool.down = False
        assert co.get(lenient, "dead-1") == Person("dead-1", 2.0)
        assert co.get(lenient, "dead-1") == Person("dead-1", 2.0)
    down = [line for line in outage_lines(caplog, "unavailable") if dead_server in line]
    up = [line for line in outage_lines(caplog, "available again") if dead_server in line]
    assert len(down) == 1, down
    assert len(up) == 1, up


def test_an_outage_ends_after_a_quiet_period_when_its_keys_are_not_asked_again(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    now = [1000.0]
    monkeypatch.setattr(co.engine.Outage, "_clock", lambda: now[0])
    dead_server = f"10.0.0.8:{free_port()}"
    pool = HalfDeadPool(dead_server)
    lenient = co.Repo(PERSON, backend=pool, on_backend_error="miss")
    co.insert(lenient, Person("ok-1", 1.0))
    with caplog.at_level(logging.WARNING, logger="cacheorm"):
        assert co.get_or_none(lenient, "dead-1") is None
        now[0] += co.engine.QUIET_SECONDS - 1
        assert co.get(lenient, "ok-1") == Person("ok-1", 1.0)  # too soon: still down
        assert co.get_or_none(lenient, "dead-2") is None  # a new failure restarts the quiet
        now[0] += co.engine.QUIET_SECONDS - 1
        assert co.get(lenient, "ok-1") == Person("ok-1", 1.0)
        assert not outage_lines(caplog, "available again")
        now[0] += 1
        pool.down = False
        assert co.get(lenient, "ok-1") == Person("ok-1", 1.0)
        assert co.get(lenient, "ok-1") == Person("ok-1", 1.0)
    assert len([x for x in outage_lines(caplog, "unavailable") if dead_server in x]) == 1
    assert len([x for x in outage_lines(caplog, "available again") if dead_server in x]) == 1


# ------------------------------------------------------------------ execute (item 12b, 12c)


@pytest.mark.parametrize("kind", ["memory", "redis"])
def test_execute_runs_an_auto_key_insert_before_later_ops_on_its_id(
    kind: str, request: pytest.FixtureRequest
) -> None:
    if kind == "memory":
        backend: co.Backend = co.MemoryBackend()
    else:
        server: RedisServer = request.getfixturevalue("redis_server")
        server.flush()
        backend = co.RedisBackend(url=server.url)
    notes = co.Repo(NOTE, backend=backend)
    first, seen = co.execute(co.ops.insert(notes, Note(None, "x")), co.ops.get_or_none(notes, 1))
    assert first == Note(1, "x", NOTE.prepare(Note(1, "x")).created_at)
    assert seen == first
    second, deleted = co.execute(co.ops.insert(notes, Note(None, "y")), co.ops.delete(notes, 2))
    assert isinstance(second, Note)
    assert second.id == 2
    assert deleted is True
    assert co.get_or_none(notes, 2) is None
    # Ops before the insert still see the state before it.
    before, third, after = co.execute(
        co.ops.exists(notes, 3), co.ops.insert(notes, Note(None, "z")), co.ops.exists(notes, 3)
    )
    assert isinstance(third, Note)
    assert (before, third.id, after) == (False, 3, True)
    backend.close()


@pytest.mark.timeout(30)
@pytest.mark.parametrize("strict_first", [True, False])
def test_each_op_in_a_merged_execute_follows_its_own_repo(strict_first: bool) -> None:
    backend = dead_backend("redis")
    strict = co.Repo(PERSON, backend=backend)
    lenient = strict.replace(on_backend_error="miss")
    ops = [co.ops.get_or_none(strict, "Sam"), co.ops.get_or_none(lenient, "Sam")]
    many = [co.ops.get_many(strict, ["a", "b"]), co.ops.get_many(lenient, ["a", "b"])]
    if not strict_first:
        ops.reverse()
        many.reverse()
    with Clock(FAST):
        results = co.execute(*ops, *many, raise_on_error=False)
    by_repo = dict(zip([op.repo.on_backend_error for op in ops], results[:2], strict=True))
    assert isinstance(by_repo["raise"], co.BackendError)
    assert by_repo["miss"] is None
    by_repo = dict(zip([op.repo.on_backend_error for op in many], results[2:], strict=True))
    assert isinstance(by_repo["raise"], co.BackendError)
    assert by_repo["miss"] == [None, None]
    with Clock(FAST), pytest.raises(co.BackendError):
        co.execute(*ops)  # raise_on_error: the strict op's error is raised
    backend.close()


# ------------------------------------------------------------------ update_many (item 12a)


def test_update_many_with_a_bad_change_writes_nothing() -> None:
    class Row(NamedTuple):
        k: str
        n: int

    rows = co.Repo(co.Schema(Row, key="k"))
    co.insert_many(rows, [Row("a", 1), Row("b", 2)])
    null_b: dict[str, dict[str, object]] = {"a": {"n": 10}, "b": {"n": None}}
    with pytest.raises(co.ValidationError, match=r"Row\.n"):
        co.update_many(rows, null_b)
    assert co.get_many(rows, ["a", "b"]) == [Row("a", 1), Row("b", 2)]
    text_b: dict[str, dict[str, object]] = {"a": {"n": 10}, "b": {"n": "x"}}
    (result,) = co.execute(co.ops.update_many(rows, text_b), raise_on_error=False)
    assert isinstance(result, co.ValidationError)
    assert co.get_many(rows, ["a", "b"]) == [Row("a", 1), Row("b", 2)]


@pytest.mark.timeout(60)
def test_miss_mode_on_a_memcached_pool_with_a_dead_node_serves_the_live_nodes_keys(
    server_factory: ServerFactory, caplog: pytest.LogCaptureFixture
) -> None:
    live, doomed = server_factory.memcached(), server_factory.memcached()
    backend = co.MemcachedBackend(
        servers=[live.address, doomed.address], connect_timeout=0.2, timeout=0.2
    )
    people = co.Repo(PERSON, backend=backend)
    lenient = people.replace(on_backend_error="miss")
    records = [Person(f"p{i}", float(i)) for i in range(20)]
    co.insert_many(people, records)
    names = [r.name for r in records]
    raw = live.client()
    try:
        on_live = {n for n in names if raw.get(PERSON.encode_key(n)) is not None}
    finally:
        raw.close()
    assert 0 < len(on_live) < 20
    doomed.stop()
    with caplog.at_level(logging.WARNING, logger="cacheorm"):
        for _ in range(3):
            with Clock(FAST):
                got = co.get_many(lenient, names)
            assert got == [r if r.name in on_live else None for r in records]
        with Clock(FAST), pytest.raises(co.BackendError):
            co.get_many(people, names)
        with Clock(FAST), pytest.raises(co.BackendError):
            co.delete_many(lenient, names)
    assert co.get_many(lenient, sorted(on_live)) == [None] * len(on_live)  # deleted where live
    down = outage_lines(caplog, "unavailable")
    assert len(down) == 1, down
    assert f"{doomed.host}:{doomed.port}" in down[0]
    backend.close()


def test_get_or_load_overwrites_a_redis_key_of_another_type(redis_server: RedisServer) -> None:
    redis_server.flush()
    backend = co.RedisBackend(url=redis_server.url)
    try:
        people = co.Repo(PERSON, backend=backend)
        client = redis_server.client()
        client.rpush(PERSON.encode_key("Sam"), b"not a record")
        with pytest.raises(co.DecodeError, match="Sam"):
            co.get(people, "Sam")
        sam = co.get_or_load(people, "Sam", lambda key: Person(key, 1.8))
        assert co.get(people, "Sam") == sam
        client.close()
    finally:
        backend.close()
