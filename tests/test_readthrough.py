"""Read-through: ``get_many_or_load``, remembered absences (``negative_ttl``) and ``co.cached``.

The behaviours run on every backend kind: the sync kinds and the async kinds
(behind their sync facade, tests/async_facade.py) through ``co``, and the
in-process and async kinds through ``cacheorm.aio`` on an event loop. "Loaded
once" is checked across threads, tasks and two processes.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Coroutine, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

import pytest

import cacheorm as co
from cacheorm import aio, crud, engine
from cacheorm.backends.base import Command
from tests.async_facade import LoopThread, SyncFacade
from tests.conftest import ASYNC_BACKEND_KINDS, BACKEND_KINDS
from tests.records import PERSON, Person
from tests.workers import Forked, backend_from_spec, shared_spec

if TYPE_CHECKING:
    pass

pytestmark = pytest.mark.timeout(60)

every_kind = pytest.mark.parametrize("backend_kind", BACKEND_KINDS + ASYNC_BACKEND_KINDS)
"""Every backend kind, through ``co`` (an async kind behind its sync facade)."""

aio_kinds = pytest.mark.parametrize("backend_kind", ["memory", *ASYNC_BACKEND_KINDS])
"""The kinds ``cacheorm.aio`` serves: in-process memory and every async backend."""


def lock_of(name: str) -> bytes:
    return crud.LOCK_PREFIX + PERSON.encode_key(name)


def assert_no_locks(backend: co.Backend, names: Sequence[str]) -> None:
    left = [name for name in names if backend.get(lock_of(name)) is not None]
    assert not left, f"stampede locks left behind for {left}"


class Log:
    """A thread-safe record of the keys each loader call was asked for."""

    def __init__(self) -> None:
        self.calls: list[list[str]] = []
        self._lock = threading.Lock()

    def add(self, names: Sequence[str]) -> None:
        with self._lock:
            self.calls.append(list(names))

    @property
    def keys(self) -> list[str]:
        return sorted(name for call in self.calls for name in call)


def loader_of(
    log: Log, *, absent: Sequence[str] = (), pause: float = 0.0
) -> Callable[[list[str]], dict[str, Person]]:
    """A ``get_many_or_load`` loader: each name's person, except the ``absent`` ones."""

    def load(names: list[str]) -> dict[str, Person]:
        log.add(names)
        time.sleep(pause)
        return {name: Person(name, float(len(name))) for name in names if name not in absent}

    return load


def person(name: str) -> Person:
    return Person(name, float(len(name)))


@pytest.fixture
def phases(monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    """Each round trip the sync driver makes, as the names of its commands' types."""
    sent: list[list[str]] = []
    real = engine.dispatch

    def recording(backend: co.Backend, commands: Sequence[Command]) -> list[object]:
        sent.append([type(command).__name__ for command in commands])
        return real(backend, commands)

    monkeypatch.setattr(engine, "dispatch", recording)
    return sent


# ------------------------------------------------------------------ get_many_or_load


@every_kind
def test_get_many_or_load_reads_once_and_loads_only_the_misses(
    backend: co.Backend, phases: list[list[str]]
) -> None:
    people = co.Repo(PERSON, backend=backend)
    co.insert_many(people, [person("Al"), person("Cyd")])
    log = Log()
    load = loader_of(log, absent=["Dee"])
    phases.clear()
    got = co.get_many_or_load(people, ["Bo", "Al", "Dee", "Cyd", "Bo"], load)
    assert got == [person("Bo"), person("Al"), None, person("Cyd"), person("Bo")]
    assert log.calls == [["Bo", "Dee"]]  # once, the misses only, in key order, Bo once
    assert phases[0] == ["Get"] * 4  # the hits in one round trip, each key once
    assert [phase for phase in phases if "Set" in phase] == [["Set"]]  # stored in one
    assert co.get(people, "Bo") == person("Bo")
    assert co.get_or_none(people, "Dee") is None  # nothing stored for a key left out
    assert_no_locks(backend, ["Bo", "Dee"])

    phases.clear()
    assert co.get_many_or_load(people, ["Al", "Bo"], load) == [person("Al"), person("Bo")]
    assert phases == [["Get", "Get"]]  # all hits: one round trip, no loader call
    assert co.get_many_or_load(people, ["Dee"], load) == [None]
    assert log.calls[1:] == [["Dee"]]  # without negative_ttl nothing is remembered


def test_get_many_or_load_of_no_keys_asks_nothing_and_a_lone_string_is_refused() -> None:
    people = co.Repo(PERSON)
    log = Log()
    assert co.get_many_or_load(people, [], loader_of(log)) == []
    assert co.get_many_or_load(people, iter(["Al"]), loader_of(log)) == [person("Al")]
    with pytest.raises(co.ValidationError, match="single key"):
        co.get_many_or_load(people, "Al", loader_of(log))
    assert log.calls == [["Al"]]


def test_get_many_or_load_accepts_mappings_with_none_for_absent_keys() -> None:
    people = co.Repo(PERSON)

    def load(names: list[str]) -> Mapping[str, Person | None]:
        return {name: None if name == "Ghost" else person(name) for name in names}

    assert co.get_many_or_load(people, ["Ghost", "Al"], load) == [None, person("Al")]
    assert co.exists(people, "Ghost") is False


def test_get_many_or_load_runs_as_an_op_in_a_pipeline() -> None:
    people = co.Repo(PERSON)
    log = Log()
    keys = iter(["Al", "Bo"])  # one-shot: the op keeps a snapshot
    op = co.ops.get_many_or_load(people, keys, loader_of(log), negative_ttl=5, wait=1.0)
    assert op.kwargs == {"negative_ttl": 5, "wait": 1.0}
    results = co.execute(
        co.ops.insert(people, person("Al")),
        op,
        co.ops.get(people, "Bo"),
        co.ops.delete(people, "Al"),
    )
    assert results == [person("Al"), [person("Al"), person("Bo")], person("Bo"), True]
    assert log.calls == [["Bo"]]  # ops run as if one after another: Al was inserted first


def wrong_key(names: list[str]) -> dict[str, Person]:
    return {name: person("Mallory") for name in names}


def not_asked(names: list[str]) -> dict[str, Person]:
    return {"Mallory": person("Mallory"), **{name: person(name) for name in names}}


def not_a_mapping(names: list[str]) -> list[Person]:
    return [person(name) for name in names]


def not_a_record(names: list[str]) -> dict[str, object]:
    return {name: {"name": name, "height": 1.0} for name in names}


@pytest.mark.parametrize(
    ("loader", "message"),
    [
        (wrong_key, "returned, under key 'Al', the record of key 'Mallory'"),
        (not_asked, "returned key 'Mallory', which it was not asked for"),
        (not_a_mapping, "must return a mapping of key to record, got list"),
        (not_a_record, "returned, for key 'Al', dict"),
    ],
    ids=["another-key", "not-asked", "not-a-mapping", "not-a-record"],
)
@every_kind
def test_a_wrong_loader_result_is_refused_naming_the_loader_and_nothing_is_written(
    backend: co.Backend, loader: Callable[[list[str]], object], message: str
) -> None:
    people = co.Repo(PERSON, backend=backend)
    with pytest.raises(co.ValidationError, match=message) as raised:
        co.get_many_or_load(people, ["Al", "Bo"], loader)  # type: ignore[arg-type]  # wrong on purpose
    assert loader.__qualname__ in str(raised.value)
    assert co.get_many(people, ["Al", "Bo", "Mallory"]) == [None, None, None]
    assert_no_locks(backend, ["Al", "Bo"])


@pytest.mark.parametrize(
    "value", [{"name": "Al", "height": 1.0}, 42, "Al"], ids=["dict", "int", "str"]
)
def test_get_or_load_refuses_a_loader_returning_something_else_naming_it(value: object) -> None:
    backend = co.MemoryBackend()
    people = co.Repo(PERSON, backend=backend)

    def find_person(name: str) -> object:
        return value

    with pytest.raises(co.ValidationError, match=r"loader .*find_person returned, for key 'Al'"):
        co.get_or_load(people, "Al", find_person)  # type: ignore[arg-type]  # wrong on purpose
    assert co.get_or_none(people, "Al") is None
    assert_no_locks(backend, ["Al"])


@every_kind
def test_a_loader_error_releases_every_lock(backend: co.Backend) -> None:
    people = co.Repo(PERSON, backend=backend)

    def broken(names: list[str]) -> dict[str, Person]:
        raise RuntimeError("database down")

    with pytest.raises(RuntimeError, match="database down"):
        co.get_many_or_load(people, ["Al", "Bo", "Cyd"], broken)
    assert_no_locks(backend, ["Al", "Bo", "Cyd"])
    log = Log()
    started = time.monotonic()
    got = co.get_many_or_load(people, ["Al", "Bo", "Cyd"], loader_of(log))
    assert got == [person("Al"), person("Bo"), person("Cyd")]
    assert time.monotonic() - started < 2.0  # no lock to wait for
    assert log.calls == [["Al", "Bo", "Cyd"]]


@every_kind
def test_overlapping_callers_in_threads_load_each_key_once(backend: co.Backend) -> None:
    people = co.Repo(PERSON, backend=backend)
    names = [f"k{i}" for i in range(6)]
    log = Log()
    load = loader_of(log, pause=0.3)
    start = threading.Barrier(6)
    results: dict[int, list[Person | None]] = {}
    errors: list[BaseException] = []

    def work(i: int) -> None:
        wanted = [names[(i + j) % len(names)] for j in range(3)]  # overlaps its neighbours'
        try:
            start.wait(10)
            results[i] = co.get_many_or_load(people, wanted, load)
        except BaseException as err:
            errors.append(err)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(45)
    assert not errors, errors
    assert log.keys == names  # every key loaded, none twice
    for i, got in results.items():
        assert got == [person(names[(i + j) % len(names)]) for j in range(3)]
    assert_no_locks(backend, names)


def _load_in_process(
    spec: tuple[str, str], names: list[str], log: Path, start_at: float
) -> list[Person | None]:
    """``get_many_or_load`` with a slow loader that appends each name it loads to ``log``."""
    backend = backend_from_spec(spec)
    people = co.Repo(PERSON, backend=backend)

    def load(wanted: list[str]) -> dict[str, Person]:
        with log.open("a", encoding="utf-8") as out:
            out.write("".join(f"{name}\n" for name in wanted))
        time.sleep(0.5)
        return {name: person(name) for name in wanted}

    try:
        time.sleep(max(0.0, start_at - time.time()))  # both processes ask at the same moment
        return co.get_many_or_load(people, names, load)
    finally:
        backend.close()


@pytest.mark.parametrize("kind", ["redis", "memcached", "filesystem"])
def test_two_processes_with_overlapping_keys_load_each_key_once(
    kind: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    spec = shared_spec(kind, request, tmp_path)
    log = tmp_path / "loaded.txt"
    start_at = time.time() + 1.0
    child_keys, parent_keys = ["a", "b", "c", "d"], ["c", "d", "e", "b"]
    child = Forked(lambda: repr(_load_in_process(spec, child_keys, log, start_at)).encode())
    try:
        mine = _load_in_process(spec, parent_keys, log, start_at)
    finally:
        report = child.report(30)
    assert report.decode() == repr([person(name) for name in child_keys])
    assert mine == [person(name) for name in parent_keys]
    loaded = log.read_text(encoding="utf-8").split()
    assert sorted(loaded) == ["a", "b", "c", "d", "e"]  # each key by one process only


@every_kind
def test_a_slow_key_held_by_another_caller_does_not_hold_up_the_others(
    backend: co.Backend,
) -> None:
    people = co.Repo(PERSON, backend=backend)
    loading = threading.Event()
    seen_while_loading: list[list[Person | None]] = []

    def slow(name: str) -> Person:  # another caller's loader, holding Slow's lock
        loading.set()
        # Held until the other caller's own keys are stored (for at most 10 s: a caller
        # that waited for Slow before storing them would show None for both below).
        deadline = time.monotonic() + 10
        while None in co.get_many(people, ["A", "B"]) and time.monotonic() < deadline:
            time.sleep(0.01)
        seen_while_loading.append(co.get_many(people, ["A", "B"]))
        return Person(name, 9.0)

    holder = threading.Thread(target=lambda: co.get_or_load(people, "Slow", slow))
    holder.start()
    try:
        assert loading.wait(10)
        log = Log()
        started = time.monotonic()
        got = co.get_many_or_load(people, ["A", "Slow", "B"], loader_of(log), wait=15.0)
        elapsed = time.monotonic() - started
    finally:
        holder.join(20)
    assert got == [person("A"), Person("Slow", 9.0), person("B")]
    assert log.calls == [["A", "B"]]  # Slow was the holder's to load, and it did
    # A and B were loaded and stored at once, while Slow was still loading.
    assert seen_while_loading == [[person("A"), person("B")]]
    assert elapsed < 10.0  # polled Slow until the holder stored it, not `wait`
    assert_no_locks(backend, ["A", "Slow", "B"])


def test_a_key_whose_holder_stays_busy_is_loaded_after_wait() -> None:
    backend = co.MemoryBackend()
    people = co.Repo(PERSON, backend=backend)
    backend.add(lock_of("Stuck"), b"a caller that crashed", 30)
    log = Log()
    started = time.monotonic()
    got = co.get_many_or_load(people, ["A", "Stuck"], loader_of(log), wait=0.3)
    assert got == [person("A"), person("Stuck")]
    assert log.calls == [["A"], ["Stuck"]]  # its own keys at once, the held one after `wait`
    assert 0.3 <= time.monotonic() - started < 3.0
    assert co.get(people, "Stuck") == person("Stuck")
    assert backend.get(lock_of("Stuck")) == b"a caller that crashed"  # not ours to release


def test_a_key_whose_holder_gives_up_is_locked_and_loaded_at_once() -> None:
    backend = co.MemoryBackend()
    people = co.Repo(PERSON, backend=backend)
    backend.add(lock_of("B"), b"another caller", 30)
    threading.Timer(0.2, lambda: backend.delete(lock_of("B"))).start()  # its loader failed
    log = Log()
    started = time.monotonic()
    assert co.get_many_or_load(people, ["A", "B"], loader_of(log), wait=20.0) == [
        person("A"),
        person("B"),
    ]
    assert time.monotonic() - started < 5.0  # not the 20 s wait
    assert log.calls == [["A"], ["B"]]
    assert_no_locks(backend, ["A", "B"])


class Unreachable(co.MemoryBackend):
    """A store whose every call fails as if its server were down (``only_locks``: the locks)."""

    def __init__(self, only_locks: bool = False) -> None:
        super().__init__()
        self.only_locks = only_locks

    def _fail(self, keys: Sequence[bytes]) -> None:
        if not self.only_locks or any(key.startswith(crud.LOCK_PREFIX) for key in keys):
            raise co.BackendError("server unreachable", server="10.0.0.1:1")

    def batch(self, commands: Sequence[Command]) -> list[object]:
        self._fail([getattr(command, "key", b"") for command in commands])
        return super().batch(commands)

    def get(self, key: bytes) -> bytes | None:
        self._fail([key])
        return super().get(key)

    def add(self, key: bytes, value: bytes, ttl: int | None = None) -> bool:
        self._fail([key])
        return super().add(key, value, ttl)


def test_miss_mode_loads_through_an_outage_and_raise_mode_raises() -> None:
    lenient = co.Repo(PERSON, backend=Unreachable(), on_backend_error="miss")
    log = Log()
    assert co.get_many_or_load(lenient, ["A", "B"], loader_of(log)) == [person("A"), person("B")]
    assert log.calls == [["A", "B"]]  # one call, nothing to store in
    strict = lenient.replace(on_backend_error="raise")
    with pytest.raises(co.BackendError):
        co.get_many_or_load(strict, ["A", "B"], loader_of(log))
    assert len(log.calls) == 1


def test_miss_mode_loads_without_the_locks_when_only_they_fail() -> None:
    backend = Unreachable(only_locks=True)
    lenient = co.Repo(PERSON, backend=backend, on_backend_error="miss")
    log = Log()
    assert co.get_many_or_load(lenient, ["A", "B"], loader_of(log)) == [person("A"), person("B")]
    assert co.get_many(lenient, ["A", "B"]) == [person("A"), person("B")]  # stored
    with pytest.raises(co.BackendError):
        co.get_many_or_load(lenient.replace(on_backend_error="raise"), ["C", "D"], loader_of(log))
    assert co.get_many(lenient, ["C", "D"]) == [None, None]


def test_an_undecodable_payload_counts_as_a_miss_and_is_overwritten() -> None:
    backend = co.MemoryBackend()
    people = co.Repo(PERSON, backend=backend)
    backend.set(PERSON.encode_key("A"), b"\xc1 not msgpack")
    log = Log()
    assert co.get_many_or_load(people, ["A"], loader_of(log)) == [person("A")]
    assert co.get(people, "A") == person("A")


# ------------------------------------------------------------------ remembered absence


def test_a_loader_returning_none_raises_not_found_and_nothing_is_remembered() -> None:
    backend = co.MemoryBackend()
    people = co.Repo(PERSON, backend=backend)
    calls: list[str] = []

    def find_person(name: str) -> Person | None:
        calls.append(name)
        return None

    for _ in range(2):
        with pytest.raises(co.NotFound, match="find_person returned None"):
            co.get_or_load(people, "Ghost", find_person)
    assert calls == ["Ghost", "Ghost"]  # no negative_ttl: asked every time
    assert backend.get(PERSON.encode_key("Ghost")) is None
    assert_no_locks(backend, ["Ghost"])


@every_kind
def test_negative_ttl_remembers_an_absence_until_it_expires(
    backend: co.Backend, backend_kind: str
) -> None:
    people = co.Repo(PERSON, backend=backend)
    # memcached's clock ticks in whole seconds: 1 s there may end at once.
    ttl = 2 if "memcached" in backend_kind else 1
    calls: list[str] = []
    found: dict[str, Person] = {}

    def find_person(name: str) -> Person | None:
        calls.append(name)
        return found.get(name)

    with pytest.raises(co.NotFound):
        co.get_or_load(people, "Ghost", find_person, negative_ttl=ttl)
    remembered = time.monotonic()
    found["Ghost"] = person("Ghost")  # the row appears in the database
    with pytest.raises(co.NotFound, match="absence is remembered"):
        co.get_or_load(people, "Ghost", find_person, negative_ttl=ttl)
    with pytest.raises(co.NotFound):
        co.get_or_load(people, "Ghost", find_person)  # whoever remembered it
    assert calls == ["Ghost"]
    # Never mistaken for a record.
    assert co.get_or_none(people, "Ghost") is None
    with pytest.raises(co.NotFound):
        co.get(people, "Ghost")
    assert co.get_many(people, ["Ghost"]) == [None]
    assert co.exists(people, "Ghost") is False
    with pytest.raises(co.NotFound):
        co.update(people, "Ghost", height=1.0)
    with pytest.raises(co.NotFound):
        co.modify(people, "Ghost", lambda p: p)
    assert co.update_many(people, {"Ghost": {"height": 1.0}}) == [None]
    log = Log()
    assert co.get_many_or_load(people, ["Ghost"], loader_of(log)) == [None]
    assert log.calls == []
    # Once it expires, the loader is asked again.
    while True:
        try:
            assert co.get_or_load(people, "Ghost", find_person) == person("Ghost")
            break
        except co.NotFound:
            assert time.monotonic() - remembered < 6.0, "the absence never expired"
            time.sleep(0.1)
    # ttl seconds, or a little less on memcached, whose clock ticks in whole seconds.
    assert time.monotonic() - remembered >= 0.9
    assert calls == ["Ghost", "Ghost"]
    assert_no_locks(backend, ["Ghost"])


@every_kind
def test_a_write_of_the_key_ends_a_remembered_absence(backend: co.Backend) -> None:
    people = co.Repo(PERSON, backend=backend)

    def forget(name: str) -> None:
        with pytest.raises(co.NotFound):
            co.get_or_load(people, name, lambda _: None, negative_ttl=60)

    def refuse(name: str) -> Person:
        raise AssertionError(f"{name} was stored: the loader must not be asked")

    writes: dict[str, Callable[[Person], object]] = {
        "Ins": lambda p: co.insert(people, p),
        "Many": lambda p: co.insert_many(people, [p]),
        "Add": lambda p: co.add(people, p),
        "Rep": lambda p: co.replace(people, p),
        "Ops": lambda p: co.execute(co.ops.add(people, p), co.ops.get(people, p.name)),
    }
    for name, write in writes.items():
        forget(name)
        write(person(name))
        assert co.get(people, name) == person(name), name
        assert co.exists(people, name) is True
        assert co.get_or_load(people, name, refuse, negative_ttl=60) == person(name)
    assert co.execute(
        co.ops.get_or_none(people, "Late"),
        co.ops.insert(people, person("Late")),
        co.ops.get(people, "Late"),
    ) == [None, person("Late"), person("Late")]
    # A delete ends it too: the next read-through asks the loader.
    forget("Del")
    assert co.delete(people, "Del") is True
    assert co.get_or_load(people, "Del", person) == person("Del")
    # An add over a record, not an absence, still refuses.
    with pytest.raises(co.AlreadyExists):
        co.add(people, Person("Ins", 1.0))
    assert co.get(people, "Ins") == person("Ins")


def test_a_remembered_absence_never_replaces_a_record_stored_meanwhile() -> None:
    people = co.Repo(PERSON)

    def racing(name: str) -> Person | None:
        co.insert(people, person(name))  # another writer stores the record while we load
        return None

    with pytest.raises(co.NotFound):
        co.get_or_load(people, "Race", racing, negative_ttl=60)
    assert co.get(people, "Race") == person("Race")


def test_an_absence_marker_copied_under_another_key_is_refused_as_planted() -> None:
    backend = co.MemoryBackend()
    people = co.Repo(PERSON, backend=backend)
    with pytest.raises(co.NotFound):
        co.get_or_load(people, "Ghost", lambda _: None, negative_ttl=60)
    marker = backend.get(PERSON.encode_key("Ghost"))
    assert marker is not None
    backend.set(PERSON.encode_key("Sam"), marker)
    with pytest.raises(co.DecodeError):
        co.get(people, "Sam")
    # get_or_load treats it as any undecodable payload: a miss, overwritten.
    assert co.get_or_load(people, "Sam", person, negative_ttl=60) == person("Sam")


@every_kind
def test_get_many_or_load_remembers_the_keys_its_loader_leaves_out(backend: co.Backend) -> None:
    people = co.Repo(PERSON, backend=backend)
    log = Log()
    load = loader_of(log, absent=["Gone", "Lost"])
    got = co.get_many_or_load(people, ["A", "Gone", "Lost"], load, negative_ttl=60)
    assert got == [person("A"), None, None]
    assert co.get_many_or_load(people, ["Gone", "B", "Lost"], load, negative_ttl=60) == [
        None,
        person("B"),
        None,
    ]
    assert log.calls == [["A", "Gone", "Lost"], ["B"]]
    with pytest.raises(co.NotFound):
        co.get_or_load(people, "Gone", person)
    co.insert(people, person("Gone"))
    assert co.get_many_or_load(people, ["Gone", "Lost"], load) == [person("Gone"), None]
    assert log.calls[2:] == []
    assert_no_locks(backend, ["A", "B", "Gone", "Lost"])


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "5"])
def test_negative_ttl_must_be_a_positive_int_of_seconds(bad: object) -> None:
    people = co.Repo(PERSON)
    with pytest.raises(co.ValidationError, match="negative_ttl"):
        co.get_or_load(people, "A", person, negative_ttl=bad)  # type: ignore[call-overload]  # runtime check
    with pytest.raises(co.ValidationError, match="negative_ttl"):
        co.get_many_or_load(people, ["A"], loader_of(Log()), negative_ttl=bad)  # type: ignore[call-overload]  # runtime check
    with pytest.raises(co.ValidationError, match="negative_ttl"):
        co.cached(people, negative_ttl=bad)  # type: ignore[arg-type]  # runtime check
    assert co.get_or_none(people, "A") is None


# ------------------------------------------------------------------ co.cached


@every_kind
def test_cached_reads_through_with_the_loaders_signature_and_invalidates(
    backend: co.Backend,
) -> None:
    people = co.Repo(PERSON, backend=backend)
    calls: list[str] = []

    @co.cached(people, negative_ttl=60)
    def find_person(name: str) -> Person | None:
        """Look a person up in the database."""
        calls.append(name)
        return None if name == "Ghost" else person(name)

    assert find_person.__name__ == "find_person"
    assert find_person.__doc__ == "Look a person up in the database."
    assert find_person("Sam") == person("Sam")
    assert find_person(name="Sam") == person("Sam")
    assert co.get(people, "Sam") == person("Sam")
    for _ in range(2):
        with pytest.raises(co.NotFound):
            find_person("Ghost")
    assert calls == ["Sam", "Ghost"]
    assert find_person.invalidate("Sam") is True
    assert find_person.invalidate("Ghost") is True  # the remembered absence
    assert find_person.invalidate("Nobody") is False
    assert find_person("Sam") == person("Sam")
    with pytest.raises(co.NotFound):
        find_person("Ghost")
    assert calls == ["Sam", "Ghost", "Sam", "Ghost"]
    with pytest.raises(TypeError, match="one argument"):
        find_person("Sam", "Bo")  # type: ignore[call-arg]  # runtime check


def test_cached_loads_once_across_threads() -> None:
    people = co.Repo(PERSON)
    calls: list[str] = []

    @co.cached(people, wait=20.0)
    def slow(name: str) -> Person:
        calls.append(name)
        time.sleep(0.3)
        return person(name)

    results: list[Person] = []
    threads = [threading.Thread(target=lambda: results.append(slow("Sam"))) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert calls == ["Sam"]
    assert results == [person("Sam")] * 8


def test_cached_checks_its_options_when_made() -> None:
    people = co.Repo(PERSON)
    with pytest.raises(co.ValidationError, match="lock_ttl"):
        co.cached(people, lock_ttl=0)
    with pytest.raises(co.ValidationError, match="wait"):
        co.cached(people, wait=-1.0)


# ------------------------------------------------------------------ cacheorm.aio


class Loop(NamedTuple):
    """What an aio test runs on: the backend ``aio`` takes, and a loop to run coroutines."""

    backend: co.MemoryBackend | co.AsyncBackend
    run: Callable[[Coroutine[object, object, object]], object]


@pytest.fixture
def loop(backend: co.Backend) -> Iterator[Loop]:
    """The kind's async backend on its facade's loop, or in-process memory on a loop of its own."""
    if isinstance(backend, SyncFacade):
        yield Loop(backend.inner, backend.runner.run)
        return
    assert isinstance(backend, co.MemoryBackend)
    runner = LoopThread()
    try:
        yield Loop(backend, runner.run)
    finally:
        runner.close()


@aio_kinds
def test_aio_get_many_or_load_takes_coroutine_loaders_and_loads_once_across_tasks(
    loop: Loop, backend: co.Backend
) -> None:
    people = co.Repo(PERSON, backend=loop.backend)
    log = Log()

    async def load(names: list[str]) -> dict[str, Person]:
        log.add(names)
        await asyncio.sleep(0.2)
        return {name: person(name) for name in names if name != "Gone"}

    names = ["a", "b", "c", "d", "Gone"]

    async def main() -> list[list[Person | None]]:
        return await asyncio.gather(
            *(
                aio.get_many_or_load(
                    people, [names[(i + j) % 5] for j in range(3)], load, negative_ttl=60
                )
                for i in range(10)
            )
        )

    results = loop.run(main())
    assert results == [
        [None if names[(i + j) % 5] == "Gone" else person(names[(i + j) % 5]) for j in range(3)]
        for i in range(10)
    ]
    assert log.keys == sorted(names)  # each key loaded once across the tasks

    async def then() -> object:
        plain = await aio.get_many_or_load(people, ["e", "Gone"], loader_of(log))
        with pytest.raises(co.NotFound):
            await aio.get_or_load(people, "Gone", person)
        return plain

    assert loop.run(then()) == [person("e"), None]
    assert log.calls[-1] == ["e"]
    assert_no_locks(backend, [*names, "e"])


@aio_kinds
def test_aio_get_or_load_remembers_an_absence(loop: Loop) -> None:
    people = co.Repo(PERSON, backend=loop.backend)
    calls: list[str] = []

    async def find_person(name: str) -> Person | None:
        calls.append(name)
        return None

    async def main() -> None:
        for _ in range(2):
            with pytest.raises(co.NotFound):
                await aio.get_or_load(people, "Ghost", find_person, negative_ttl=60)
        assert await aio.exists(people, "Ghost") is False
        await aio.add(people, person("Ghost"))
        assert await aio.get_or_load(people, "Ghost", find_person) == person("Ghost")

    loop.run(main())
    assert calls == ["Ghost"]


@aio_kinds
def test_aio_cached_decorates_a_coroutine_loader(loop: Loop) -> None:
    people = co.Repo(PERSON, backend=loop.backend)
    calls: list[str] = []

    @aio.cached(people, negative_ttl=60)
    async def find_person(name: str) -> Person | None:
        calls.append(name)
        await asyncio.sleep(0.1)
        return None if name == "Ghost" else person(name)

    async def main() -> None:
        found = await asyncio.gather(*(find_person("Sam") for _ in range(10)))
        assert found == [person("Sam")] * 10
        assert await find_person(name="Sam") == person("Sam")
        for _ in range(2):
            with pytest.raises(co.NotFound):
                await find_person("Ghost")
        assert await find_person.invalidate("Sam") is True
        assert await find_person("Sam") == person("Sam")

    loop.run(main())
    assert calls == ["Sam", "Ghost", "Sam"]
    assert find_person.__name__ == "find_person"


@aio_kinds
def test_a_cancelled_get_many_or_load_leaves_no_lock(loop: Loop, backend: co.Backend) -> None:
    people = co.Repo(PERSON, backend=loop.backend)
    names = ["A", "B", "C"]

    async def main() -> float:
        started = asyncio.Event()

        async def slow(wanted: list[str]) -> dict[str, Person]:
            started.set()
            await asyncio.sleep(30)
            return {}

        task = asyncio.create_task(aio.get_many_or_load(people, names, slow))
        await asyncio.wait_for(started.wait(), 10)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        with pytest.raises(TimeoutError):  # cut by a timeout while loading: the same
            async with asyncio.timeout(0.1):
                await aio.get_many_or_load(people, names, slow)
        begun = time.monotonic()
        got = await aio.get_many_or_load(people, names, loader_of(Log()))
        assert got == [person(name) for name in names]
        return time.monotonic() - begun

    took = loop.run(main())
    assert isinstance(took, float)
    assert took < 2.0  # no lock left to wait for
    assert_no_locks(backend, names)
