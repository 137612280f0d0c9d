"""The record functions, on every backend (the ``backend`` fixture) and serializer."""

from __future__ import annotations

import dataclasses
import datetime as dt
import threading
import uuid
from collections.abc import Iterator
from decimal import Decimal
from typing import NamedTuple

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import cacheorm as co
from tests.async_facade import AioDriver, LoopThread, SyncFacade
from tests.records import (
    COLLECTION,
    COUNTER,
    EVERYTHING,
    NOTE,
    PERSON,
    Collection,
    Color,
    Counter,
    Everything,
    Note,
    Person,
    Tag,
)

SERIALIZERS = ("msgpack", "json", "pickle")


@pytest.fixture(autouse=True)
def _through_driver(
    driver: str, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> Iterator[None]:
    """With ``driver="aio"``, this module's ``co.insert``... run ``aio``'s twins instead.

    Autouse, so it runs before the repo fixtures: ``co.Repo`` given a facade
    over an async backend then builds the repo over that backend itself.
    """
    if driver != "aio":
        yield
        return
    backend = request.getfixturevalue("backend")
    runner = backend.runner if isinstance(backend, SyncFacade) else LoopThread()
    monkeypatch.setitem(globals(), "co", AioDriver(runner))
    try:
        yield
    finally:
        if runner is not getattr(backend, "runner", None):
            runner.close()


@pytest.fixture
def people(backend: co.Backend) -> co.Repo[Person, str]:
    return co.Repo(PERSON, backend=backend, ttl=600)


@pytest.fixture
def collections(backend: co.Backend) -> co.Repo[Collection, tuple[str, int]]:
    return co.Repo(COLLECTION, backend=backend, serializer="json")


def everything(i: int = 1) -> Everything:
    return Everything(
        id=i,
        text="héllo \x00 wörld",
        number=-0.1,
        flag=True,
        blob=bytes(range(256)),
        price=Decimal("12.30"),
        when=dt.datetime(
            2026, 11, 27, 9, 30, 1, 123456, tzinfo=dt.timezone(dt.timedelta(hours=5, minutes=30))
        ),
        day=dt.date(1999, 12, 31),
        clock=dt.time(23, 59, 59, 999999),
        uid=uuid.UUID(int=12345),
        color=Color.GREEN,
        tags=[Tag("a", 1), Tag("b", 2)],
        scores={"x": 1, "y": -2},
        maybe=None,
    )


# ------------------------------------------------------------------ basic CRUD


def test_insert_get_roundtrip(people: co.Repo[Person, str]) -> None:
    sam = Person("Sam", 178.8, email="sam@example.com")
    assert co.insert(people, sam) == sam
    got = co.get(people, "Sam")
    assert got == sam
    assert type(got) is Person


def test_get_missing_raises_not_found_a_lookup_error(people: co.Repo[Person, str]) -> None:
    with pytest.raises(co.NotFound) as info:
        co.get(people, "Nobody")
    assert isinstance(info.value, LookupError)
    assert co.get_or_none(people, "Nobody") is None
    assert co.exists(people, "Nobody") is False


def test_insert_is_an_upsert(people: co.Repo[Person, str]) -> None:
    co.insert(people, Person("Sam", 1.0))
    co.insert(people, Person("Sam", 2.0))
    assert co.get(people, "Sam").height == 2.0


def test_add_refuses_an_existing_key(people: co.Repo[Person, str]) -> None:
    assert co.add(people, Person("Sam", 1.0)) == Person("Sam", 1.0)
    with pytest.raises(co.AlreadyExists):
        co.add(people, Person("Sam", 2.0))
    assert co.get(people, "Sam").height == 1.0


def test_replace_needs_an_existing_record(people: co.Repo[Person, str]) -> None:
    with pytest.raises(co.NotFound):
        co.replace(people, Person("Sam", 1.0))
    assert not co.exists(people, "Sam")
    co.insert(people, Person("Sam", 1.0))
    assert co.replace(people, Person("Sam", 3.0)) == Person("Sam", 3.0)
    assert co.get(people, "Sam").height == 3.0


def test_update_changes_only_named_fields(people: co.Repo[Person, str]) -> None:
    co.insert(people, Person("Sam", 178.8, email="sam@example.com"))
    new = co.update(people, "Sam", height=180.0)
    assert new == Person("Sam", 180.0, email="sam@example.com")
    assert co.get(people, "Sam") == new


def test_update_never_creates(people: co.Repo[Person, str]) -> None:
    with pytest.raises(co.NotFound):
        co.update(people, "Ghost", height=1.0)
    assert not co.exists(people, "Ghost")


def test_update_validates_before_writing(people: co.Repo[Person, str]) -> None:
    co.insert(people, Person("Sam", 1.0))
    with pytest.raises(co.ValidationError, match="heigth"):
        co.update(people, "Sam", heigth=2.0)  # type: ignore[call-arg]  # the runtime check
    with pytest.raises(co.ValidationError):
        co.update(people, "Sam", height="tall")  # type: ignore[arg-type]  # the runtime check
    with pytest.raises(co.ValidationError):
        co.update(people, "Sam", name="Samuel")  # the key cannot change
    assert co.get(people, "Sam") == Person("Sam", 1.0)


def test_modify_applies_function(people: co.Repo[Person, str]) -> None:
    co.insert(people, Person("Sam", 1.0))
    assert co.modify(people, "Sam", lambda p: p._replace(married=True)).married is True
    with pytest.raises(co.NotFound):
        co.modify(people, "Ghost", lambda p: p)


def test_delete_and_delete_many(people: co.Repo[Person, str]) -> None:
    co.insert_many(people, [Person("A", 1.0), Person("B", 2.0), Person("C", 3.0)])
    assert co.delete(people, "A") is True
    assert co.delete(people, "A") is False
    assert co.delete_many(people, ["B", "C", "Z"]) == 2
    assert co.delete_many(people, []) == 0
    assert co.get_many(people, ["A", "B", "C"]) == [None, None, None]


def test_batches_keep_key_order_with_missing(people: co.Repo[Person, str]) -> None:
    stored = co.insert_many(people, [Person(f"p{i}", float(i)) for i in range(30)])
    assert len(stored) == 30
    keys = ["p3", "missing", "p0", "p29", "p3"]
    assert co.get_many(people, keys) == [
        Person("p3", 3.0),
        None,
        Person("p0", 0.0),
        Person("p29", 29.0),
        Person("p3", 3.0),
    ]
    assert co.get_many(people, []) == []
    assert co.insert_many(people, []) == []


def test_a_lone_string_is_not_a_list_of_keys(people: co.Repo[Person, str]) -> None:
    co.insert_many(people, [Person("a", 1.0), Person("b", 2.0)])
    with pytest.raises(co.ValidationError, match="list of keys"):
        co.get_many(people, "ab")
    with pytest.raises(co.ValidationError, match="list of keys"):
        co.delete_many(people, "ab")
    assert co.get_many(people, ("a", "b")) == [Person("a", 1.0), Person("b", 2.0)]


def test_update_many(people: co.Repo[Person, str]) -> None:
    co.insert_many(people, [Person("A", 1.0), Person("B", 2.0)])
    out = co.update_many(
        people, {"A": {"height": 10.0}, "Zed": {"height": 0.0}, "B": {"married": True}}
    )
    assert out == [Person("A", 10.0), None, Person("B", 2.0, married=True)]
    assert not co.exists(people, "Zed")
    with pytest.raises(co.ValidationError):
        co.update_many(people, {"A": {"nope": 1}})  # type: ignore[misc]  # the runtime check


def test_composite_key_typed_dict(collections: co.Repo[Collection, tuple[str, int]]) -> None:
    rec: Collection = {"collector": "Bob", "note_id": 1, "remark": "nice"}
    assert co.insert(collections, rec) == rec
    assert co.get(collections, ("Bob", 1)) == rec
    assert co.get_or_none(collections, ("Bob", 2)) is None
    assert co.update(collections, ("Bob", 1), remark="great")["remark"] == "great"


def test_key_format_is_the_stored_key(backend: co.Backend) -> None:
    repo = co.Repo(COLLECTION, backend=backend, serializer="json")
    co.insert(repo, {"collector": "Bob", "note_id": 7, "remark": ""})
    assert backend.has(b"collection.Bob.7")


def test_typed_dict_input_is_never_mutated(
    collections: co.Repo[Collection, tuple[str, int]],
) -> None:
    partial = {"collector": "Bob", "note_id": 3}
    before = dict(partial)
    stored = co.insert(collections, partial)  # type: ignore[arg-type]  # remark filled by defaults=
    assert partial == before
    assert stored == {"collector": "Bob", "note_id": 3, "remark": ""}
    changes = {"remark": "x"}
    co.update(collections, ("Bob", 3), **changes)
    assert changes == {"remark": "x"}


def test_wrong_record_type_is_rejected_before_writing(people: co.Repo[Person, str]) -> None:
    with pytest.raises(co.ValidationError):
        co.insert(people, ("Sam", 1.0))  # type: ignore[arg-type]  # the runtime check under test
    with pytest.raises(co.ValidationError):
        co.insert(people, Person("Sam", "tall"))  # type: ignore[arg-type]  # ditto
    assert not co.exists(people, "Sam")


def test_everything_roundtrips(backend: co.Backend) -> None:
    for name in SERIALIZERS:
        repo = co.Repo(EVERYTHING, backend=backend, serializer=name, namespace=name)
        rec = everything()
        assert co.insert(repo, rec) == rec
        got = co.get(repo, 1)
        assert got == rec
        assert got.when.utcoffset() == dt.timedelta(hours=5, minutes=30)
        assert type(got.tags[0]) is Tag
        assert got.color is Color.GREEN


def test_auto_key_and_callable_default(backend: co.Backend) -> None:
    notes = co.Repo(NOTE, backend=backend)
    first = co.insert(notes, Note(None, "first"))
    second = co.insert(notes, Note(None, "second"))
    assert first.id is not None
    assert second.id is not None
    assert second.id == first.id + 1
    assert first.created_at == dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    many = co.insert_many(notes, [Note(None, "x"), Note(100, "explicit"), Note(None, "y")])
    assert [n.id for n in many] == [second.id + 1, 100, second.id + 2]
    assert co.get(notes, 100).title == "explicit"


def test_namespaces_and_versions_never_share_keys(backend: co.Backend) -> None:
    a = co.Repo(PERSON, backend=backend, namespace="a")
    b = co.Repo(PERSON, backend=backend, namespace="b")
    v2 = co.Repo(co.Schema(Person, key="name", version=2), backend=backend, namespace="a")
    co.insert(a, Person("Sam", 1.0))
    assert co.get_or_none(b, "Sam") is None
    assert co.get_or_none(v2, "Sam") is None


def test_foreign_bytes_raise_decode_error(backend: co.Backend) -> None:
    for name in SERIALIZERS:
        repo = co.Repo(PERSON, backend=backend, serializer=name)
        co.insert(repo, Person("Sam", 1.0))
        key = PERSON.encode_key("Sam")
        for junk in (b"42", b"\x00\xff garbage", b"", b'{"name": 1}'):
            backend.set(key, junk)
            with pytest.raises(co.DecodeError, match="Person"):
                co.get(repo, "Sam")


def test_ttl_rules(people: co.Repo[Person, str]) -> None:
    with pytest.raises(co.ValidationError):
        people.replace(ttl=-1)
    with pytest.raises(co.ValidationError):
        co.Repo(PERSON, ttl=1.5)  # type: ignore[arg-type]  # the runtime check under test


def test_update_keeps_remaining_ttl(backend: co.Backend) -> None:
    """An update keeps the record's remaining lifetime, whatever the repo's own TTL.

    Read off the backend (``get_with_ttl``) rather than waited for: that a kept
    lifetime really ends on the clock is the conformance suite's
    ``test_expiry_with_real_time`` (``cas`` with ``KEEP_TTL``).
    """
    short = co.Repo(PERSON, backend=backend, ttl=50)
    co.insert(short, Person("Sam", 1.0))
    co.update(short.replace(ttl=0), "Sam", height=2.0)  # ttl=0 would be "never expires"
    stored = backend.get_with_ttl(PERSON.encode_key("Sam"))
    assert stored is not None
    assert 0 < stored[1] <= 50
    assert co.get(short, "Sam").height == 2.0


def test_threaded_updates_lose_nothing(backend: co.Backend) -> None:
    counters = co.Repo(COUNTER, backend=backend)
    co.insert(counters, Counter("hits", 0))

    def work() -> None:
        for _ in range(25):
            co.modify(counters, "hits", lambda c: c._replace(value=c.value + 1))

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert co.get(counters, "hits").value == 100


# ------------------------------------------------------------------ the Repo value


def test_repo_is_a_frozen_hashable_value() -> None:
    backend = co.MemoryBackend()
    repo = co.Repo(PERSON, backend=backend)
    assert repo == co.Repo(PERSON, backend=backend)
    assert hash(repo) == hash(co.Repo(PERSON, backend=backend))
    with pytest.raises(dataclasses.FrozenInstanceError):
        repo.ttl = 5  # type: ignore[misc]  # the runtime check under test
    assert repo.replace(ttl=60).ttl == 60
    assert dataclasses.replace(repo, ttl=60) == repo.replace(ttl=60)
    assert repo.ttl is None
    assert isinstance(co.Repo(PERSON).backend, co.MemoryBackend)


def test_unknown_serializer_name_is_a_clear_error() -> None:
    with pytest.raises(co.ValidationError, match="msgpack"):
        co.Repo(PERSON, serializer="yaml")


# ----------------------------------------------------- property: every field x serializer x backend

text = st.text(max_size=20)
records = st.builds(
    Everything,
    id=st.integers(min_value=0, max_value=2**62),
    text=text,
    number=st.floats(allow_nan=False, allow_infinity=False),
    flag=st.booleans(),
    blob=st.binary(max_size=32),
    price=st.decimals(places=2, min_value=-(10**9), max_value=10**9, allow_nan=False),
    when=st.datetimes(
        timezones=st.sampled_from([None, dt.UTC, dt.timezone(dt.timedelta(hours=-3))])
    ),
    day=st.dates(),
    clock=st.times(),
    uid=st.uuids(),
    color=st.sampled_from(Color),
    tags=st.lists(st.builds(Tag, label=text, weight=st.integers(-(2**31), 2**31)), max_size=3),
    scores=st.dictionaries(text, st.integers(-(2**31), 2**31), max_size=3),
    maybe=st.none() | text,
)


@pytest.mark.parametrize("serializer", SERIALIZERS)
@settings(
    max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(rec=records)
def test_property_get_insert_roundtrip(
    backend: co.Backend, serializer: str, rec: Everything
) -> None:
    repo = co.Repo(EVERYTHING, backend=backend, serializer=serializer)
    stored = co.insert(repo, rec)
    assert co.get(repo, rec.id) == stored == rec


# ------------------------------------------------------------------ evolution, protobuf


class PersonV1(NamedTuple):
    name: str
    height: float
    nickname: str = ""


class PersonV2(NamedTuple):
    name: str
    height: float
    married: bool = False


def test_payload_of_an_older_record_type_reads_into_the_new(backend: co.Backend) -> None:
    old = co.Repo(co.Schema(PersonV1, key="name", name="Person"), backend=backend)
    new = co.Repo(co.Schema(PersonV2, key="name", name="Person"), backend=backend)
    co.insert(old, PersonV1("Sam", 1.5, nickname="S"))
    assert co.get(new, "Sam") == PersonV2("Sam", 1.5, married=False)  # extra ignored, default used
    co.insert(new, PersonV2("Ann", 1.6, married=True))
    assert co.get(old, "Ann") == PersonV1("Ann", 1.6)


class NoHeight(NamedTuple):
    name: str


def test_payload_missing_a_required_field_is_a_decode_error(backend: co.Backend) -> None:
    old = co.Repo(co.Schema(NoHeight, key="name", name="Person"), backend=backend)
    co.insert(old, NoHeight("Sam"))
    new = co.Repo(PERSON, backend=backend)
    with pytest.raises(co.DecodeError, match="height") as info:
        co.get(new, "Sam")
    assert "Sam" in str(info.value)


class ProtoPerson(NamedTuple):
    name: str
    height: float
    married: bool = False
    email: str | None = None
    age: int = 0


def test_protobuf_repo_stores_the_wire_format(backend: co.Backend) -> None:
    from tests.proto_gen import person_pb2

    repo = co.Repo(
        co.Schema(ProtoPerson, key="name"),
        backend=backend,
        serializer=co.ProtobufSerializer(person_pb2.Person),
    )
    sam = ProtoPerson("Sam", 178.8)  # married=False, age=0: proto3 does not store them
    assert co.insert(repo, sam) == sam
    assert co.get(repo, "Sam") == sam
    raw = backend.get(repo.schema.encode_key("Sam"))
    assert raw is not None
    message = person_pb2.Person.FromString(raw)
    assert (message.name, message.height, message.HasField("email")) == ("Sam", 178.8, False)
    assert co.update(repo, "Sam", email="sam@example.com", age=40).age == 40
    assert co.get(repo, "Sam") == ProtoPerson("Sam", 178.8, email="sam@example.com", age=40)


class Broken:
    """A user serializer that fails both ways with its own exceptions."""

    def dumps(self, obj: co.Primitive) -> bytes:
        raise TypeError("cannot serialize")

    def loads(self, data: bytes) -> co.Primitive:
        raise KeyError("cannot deserialize")


def test_a_user_serializers_own_errors_are_wrapped() -> None:
    backend = co.MemoryBackend()
    repo = co.Repo(PERSON, backend=backend, serializer=Broken())
    with pytest.raises(co.ValidationError, match="cannot encode") as info:
        co.insert(repo, Person("Sam", 1.0))
    assert isinstance(info.value.__cause__, TypeError)
    backend.set(PERSON.encode_key("Sam"), b"anything")
    with pytest.raises(co.DecodeError, match="Sam") as decode_info:
        co.get(repo, "Sam")
    assert isinstance(decode_info.value.__cause__, KeyError)


# ------------------------------------------------------------------ audit regressions


def test_update_many_validates_everything_before_writing_anything() -> None:
    people = co.Repo(PERSON)
    co.insert_many(people, [Person("a", 1.0), Person("b", 1.0)])
    for bad in (
        {"a": {"height": 2.0}, "b": {"height": "tall"}},
        {"a": {"height": 2.0}, 5: {"height": 1.0}},
        {"a": {"height": 2.0}, "b": {"hieght": 1.0}},
        {"a": {"height": 2.0}, "b": {"name": "c"}},
    ):
        with pytest.raises(co.ValidationError):
            co.update_many(people, bad)  # type: ignore[arg-type]  # runtime check
        assert co.get(people, "a").height == 1.0


class Tick(NamedTuple):
    at: dt.datetime
    n: int


def test_update_by_a_key_that_its_field_normalises() -> None:
    ticks = co.Repo(co.Schema(Tick, key="at", fields={"at": co.TimestampField(resolution=1000)}))
    precise = dt.datetime(2024, 1, 1, 12, 0, 0, 123456)
    co.insert(ticks, Tick(precise, 0))
    assert co.update(ticks, precise, n=1).n == 1
    assert co.modify(ticks, precise, lambda t: t._replace(n=t.n + 1)).n == 2


def test_auto_ids_skip_ids_taken_by_explicit_inserts(backend: co.Backend) -> None:
    notes = co.Repo(NOTE, backend=backend)
    co.insert(notes, Note(1, "explicit one"))
    co.insert(notes, Note(3, "explicit three"))
    first = co.insert(notes, Note(None, "auto"))
    many = co.insert_many(notes, [Note(None, "x"), Note(None, "y")])
    ids = [first.id, *(n.id for n in many)]
    assert 1 not in ids
    assert 3 not in ids
    assert len(set(ids)) == 3
    assert co.get(notes, 1).title == "explicit one"
    assert co.get(notes, 3).title == "explicit three"


def test_a_hook_cannot_move_a_replace_to_another_key() -> None:
    people = co.Repo(PERSON)
    co.insert_many(people, [Person("n", 1.0), Person("other", 1.0)])

    def rename(repo: co.Repo[Person, str], record: object) -> object:
        assert isinstance(record, Person)
        return record._replace(name="other")

    hooked = co.on(people, "before_update", rename)
    with pytest.raises(co.ValidationError, match="cannot change the key"):
        co.replace(hooked, Person("n", 6.0))
    assert co.get(people, "other") == Person("other", 1.0)
