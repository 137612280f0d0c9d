"""Schema: record kinds, inference, defaults, evolution, errors and immutability."""

from __future__ import annotations

import dataclasses
import datetime as dt
import enum
import uuid
from collections.abc import Iterator
from decimal import Decimal
from typing import Any, NamedTuple, NotRequired, Required, TypedDict

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import cacheorm as co
from cacheorm.serializers import registry

SERIALIZERS = ("json", "msgpack", "pickle")


class Color(enum.Enum):
    RED = "red"
    GREEN = "green"


class Tag(NamedTuple):
    label: str
    weight: int = 1


class Address(TypedDict):
    city: str
    zip: NotRequired[str]


@dataclasses.dataclass(frozen=True)
class Geo:
    lat: float
    lon: float


class Person(NamedTuple):
    name: str
    height: float
    married: bool = False
    email: str | None = None


class Everything(NamedTuple):
    id: int
    text: str
    number: float
    flag: bool
    blob: bytes
    price: Decimal
    when: dt.datetime
    day: dt.date
    clock: dt.time
    uid: uuid.UUID
    color: Color
    tags: list[Tag]
    scores: dict[str, int]
    home: Address
    geo: Geo | None
    history: list[list[Geo]]
    extra: Any
    maybe: str | None = None


EVERYTHING = co.Schema(Everything, key="id")
PERSON = co.Schema(Person, key="name")

# Whole-second offsets: a sub-second offset is rejected (see test_fields).
OFFSETS = st.timedeltas(min_value=dt.timedelta(hours=-12), max_value=dt.timedelta(hours=12)).map(
    lambda offset: offset - dt.timedelta(microseconds=offset.microseconds)
)
TZ = st.none() | st.just(dt.UTC) | st.builds(dt.timezone, OFFSETS)
FLOATS = st.floats(allow_nan=False, allow_infinity=False)
GEOS = st.builds(Geo, FLOATS, FLOATS)
ADDRESSES = st.fixed_dictionaries({"city": st.text()}, optional={"zip": st.text(max_size=5)})
EVERYTHINGS = st.builds(
    Everything,
    id=st.integers(-(2**63), 2**63 - 1),
    text=st.text(),
    number=FLOATS | st.integers(-(2**53), 2**53),
    flag=st.booleans(),
    blob=st.binary(),
    price=st.decimals(allow_nan=False, allow_infinity=False),
    when=st.datetimes(timezones=TZ),
    day=st.dates(),
    clock=st.times(timezones=TZ),
    uid=st.uuids(),
    color=st.sampled_from(Color),
    tags=st.lists(st.builds(Tag, st.text(max_size=5), st.integers(-5, 5)), max_size=3),
    scores=st.dictionaries(st.text(max_size=5), st.integers(-5, 5), max_size=3),
    home=ADDRESSES,
    geo=st.none() | GEOS,
    history=st.lists(st.lists(GEOS, max_size=2), max_size=2),
    extra=st.none() | st.integers(-5, 5) | st.lists(st.text(max_size=3), max_size=2),
    maybe=st.none() | st.text(),
)


def _through(serializer_name: str, payload: co.Primitive) -> co.Primitive:
    serializer = registry.get_by_name(serializer_name)
    assert serializer is not None
    return serializer.loads(serializer.dumps(payload))


@pytest.mark.parametrize("serializer_name", SERIALIZERS)
@settings(max_examples=60, deadline=None)
@given(record=EVERYTHINGS)
def test_every_record_round_trips_under_every_serializer(
    serializer_name: str, record: Everything
) -> None:
    stored = EVERYTHING.prepare(record)
    loaded = EVERYTHING.load(_through(serializer_name, EVERYTHING.dump(stored)), key=stored.id)
    assert loaded == stored
    assert type(loaded) is Everything
    assert type(loaded.tags[0]) is Tag if loaded.tags else True
    assert type(loaded.geo) is Geo if loaded.geo is not None else True
    assert str(loaded.price) == str(stored.price)
    assert loaded.when.isoformat() == stored.when.isoformat()


def test_prepare_normalises_and_keeps_input_untouched() -> None:
    sam = Person("Sam", 178)
    stored = PERSON.prepare(sam)
    assert stored == Person("Sam", 178.0)
    assert type(stored.height) is float
    assert type(sam.height) is int


def test_person_dump_is_plain_primitives() -> None:
    assert PERSON.dump(PERSON.prepare(Person("Sam", 1.5, email="s@x"))) == {
        "name": "Sam",
        "height": 1.5,
        "married": False,
        "email": "s@x",
    }


def _sample() -> Everything:
    return Everything(
        id=1,
        text="t",
        number=1.0,
        flag=True,
        blob=b"\x00",
        price=Decimal("1.10"),
        when=dt.datetime(2026, 1, 1),
        day=dt.date(2026, 1, 1),
        clock=dt.time(1),
        uid=uuid.UUID(int=1),
        color=Color.GREEN,
        tags=[Tag("a")],
        scores={"a": 1},
        home={"city": "Oslo"},
        geo=Geo(1.0, 2.0),
        history=[[Geo(3.0, 4.0)]],
        extra={"k": [1, "x", None]},
    )


def test_nested_records_come_back_as_their_types() -> None:
    record = _sample()
    payload = EVERYTHING.dump(EVERYTHING.prepare(record))
    assert payload["tags"] == [{"label": "a", "weight": 1}]
    assert payload["geo"] == {"lat": 1.0, "lon": 2.0}
    assert payload["color"] == "green"
    loaded = EVERYTHING.load(payload)
    assert loaded == record
    assert type(loaded.history[0][0]) is Geo


# ------------------------------------------------------------ TypedDict


class Collection(TypedDict):
    collector: str
    note_id: int
    remark: str


class Profile(TypedDict, total=False):
    handle: Required[str]
    bio: str
    age: int


def test_typeddict_defaults_fill_missing_without_mutating_input() -> None:
    schema = co.Schema(Collection, key=("collector", "note_id"), defaults={"remark": ""})
    given_ = {"collector": "Bob", "note_id": 1}
    stored = schema.prepare(given_)  # type: ignore[arg-type]  # the missing key is the point
    assert stored == {"collector": "Bob", "note_id": 1, "remark": ""}
    assert given_ == {"collector": "Bob", "note_id": 1}
    full: Collection = {"collector": "Bob", "note_id": 1, "remark": "x"}
    again = schema.prepare(full)
    assert again == full
    assert again is not full
    assert schema.key_of(again) == ("Bob", 1)


def test_typeddict_missing_required_and_unknown_keys_are_rejected() -> None:
    schema = co.Schema(Collection, key=("collector", "note_id"))
    with pytest.raises(co.ValidationError, match=r"Collection\.remark: required field is missing"):
        schema.prepare({"collector": "Bob", "note_id": 1})  # type: ignore[typeddict-item]  # the point
    with pytest.raises(
        co.ValidationError, match=r"Collection\.colour: Collection has no such field"
    ):
        schema.prepare({"collector": "B", "note_id": 1, "remark": "", "colour": "red"})  # type: ignore[typeddict-unknown-key]  # the point
    with pytest.raises(co.ValidationError, match="expected a Collection dict, got list"):
        schema.prepare([])  # type: ignore[arg-type]  # the point


def test_non_total_typeddict_omits_absent_keys() -> None:
    schema = co.Schema(Profile, key="handle", defaults={"age": 0})
    with pytest.raises(co.SchemaError, match="'bio' is NotRequired"):
        co.Schema(Profile, key="bio")
    stored = schema.prepare({"handle": "sam"})
    assert stored == {"handle": "sam", "age": 0}
    payload = schema.dump(stored)
    assert payload == {"handle": "sam", "age": 0}
    assert "bio" not in schema.load(payload)
    assert schema.load({"handle": "sam"}) == {"handle": "sam", "age": 0}


# ------------------------------------------------------------ dataclasses


@dataclasses.dataclass(frozen=True, kw_only=True)
class Event:
    id: str
    at: dt.datetime
    labels: list[str] = dataclasses.field(default_factory=list)
    derived: int = dataclasses.field(init=False, default=0)

    def __post_init__(self) -> None:
        if not self.id:
            raise ValueError("id must not be empty")
        object.__setattr__(self, "derived", len(self.labels))


def test_frozen_dataclass_records_with_kw_only_and_post_init() -> None:
    schema = co.Schema(Event, key="id")
    assert schema.field_names == ("id", "at", "labels")  # init=False fields are derived
    event = Event(id="e", at=dt.datetime(2026, 1, 1), labels=["x", "y"])
    loaded = schema.load(schema.dump(schema.prepare(event)))
    assert loaded == event
    assert loaded.derived == 2
    assert schema.load({"id": "e", "at": "2026-01-01T00:00:00"}).labels == []
    with pytest.raises(co.DecodeError, match="id must not be empty"):
        schema.load({"id": "", "at": "2026-01-01T00:00:00"})
    with pytest.raises(co.ValidationError, match="id must not be empty"):
        schema.prepare(_bypass_post_init(event))


def _bypass_post_init(event: Event) -> Event:
    broken = object.__new__(Event)
    for name, value in (("id", ""), ("at", event.at), ("labels", []), ("derived", 0)):
        object.__setattr__(broken, name, value)
    return broken


def test_mutable_dataclass_is_rejected() -> None:
    @dataclasses.dataclass
    class Loose:
        id: str

    with pytest.raises(co.SchemaError, match=r"frozen=True"):
        co.Schema(Loose, key="id")


# ------------------------------------------------------------ defaults


class Note(NamedTuple):
    id: int | None
    title: str
    created_at: dt.datetime | None = None
    tags: list[str] | None = None


def test_defaults_value_and_callable_fill_none() -> None:
    moments = iter([dt.datetime(2026, 1, 1), dt.datetime(2026, 1, 2)])
    schema = co.Schema(
        Note,
        key="id",
        fields={"id": co.AutoField()},
        defaults={"created_at": lambda: next(moments), "tags": ["new"]},
    )
    first = schema.prepare(Note(None, "a"))
    second = schema.prepare(Note(None, "b"))
    assert first.created_at == dt.datetime(2026, 1, 1)
    assert second.created_at == dt.datetime(2026, 1, 2)
    assert first.tags == ["new"]
    assert first.tags is not second.tags  # a mutable default is never shared
    kept = schema.prepare(Note(3, "c", dt.datetime(2000, 1, 1), []))
    assert kept.created_at == dt.datetime(2000, 1, 1)
    assert kept.tags == []


def test_auto_key_with_key_and_counter_key() -> None:
    schema = co.Schema(Note, key="id", fields={"id": co.AutoField()})
    assert schema.auto_key
    assert not PERSON.auto_key
    stored = schema.prepare(Note(None, "a"))
    assert schema.key_of(stored) is None
    numbered = schema.with_key(stored, 7)
    assert numbered == Note(7, "a")
    assert stored.id is None
    with pytest.raises(co.ValidationError, match="expected int"):
        schema.with_key(stored, "7")  # type: ignore[arg-type]  # the point
    assert schema.counter_key("app") == b"app/Note#autoid"
    with pytest.raises(co.ValidationError, match="key field 'id'"):
        schema.encode_key(None)  # an AutoField key types as int | None: refused at run time


def test_with_key_on_typeddict_and_dataclass_returns_copies() -> None:
    class Row(TypedDict):
        id: int | None
        text: str

    @dataclasses.dataclass(frozen=True)
    class Item:
        id: int | None
        text: str

    rows = co.Schema(Row, key="id", fields={"id": co.AutoField()})
    row: Row = {"id": None, "text": "x"}
    assert rows.with_key(row, 1) == {"id": 1, "text": "x"}
    assert row["id"] is None
    items = co.Schema(Item, key="id", fields={"id": co.AutoField()})
    assert items.with_key(Item(None, "x"), 2) == Item(2, "x")


# ------------------------------------------------------------ evolution


class PersonV2(NamedTuple):
    name: str
    height: float
    nickname: str = "none"
    age: int | None = None


def test_old_payload_loads_into_new_type_with_defaults() -> None:
    old = PERSON.dump(PERSON.prepare(Person("Sam", 1.8, True, "s@x")))
    v2 = co.Schema(PersonV2, key="name", defaults={"age": 30})
    assert v2.load(old) == PersonV2("Sam", 1.8, "none", 30)


def test_new_payload_loads_into_old_type_ignoring_extras() -> None:
    v2 = co.Schema(PersonV2, key="name")
    new = v2.dump(v2.prepare(PersonV2("Sam", 1.8, "S", 40)))
    assert PERSON.load(new) == Person("Sam", 1.8)


def test_null_in_old_payload_takes_the_default_of_a_now_required_field() -> None:
    class Strict(NamedTuple):
        name: str
        email: str = "unknown"

    schema = co.Schema(Strict, key="name")
    assert schema.load({"name": "Sam", "email": None}) == Strict("Sam", "unknown")


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        ({"height": 1.0}, "name: required field is missing"),
        ({"name": "Sam", "height": "tall"}, "height: expected float, got str"),
        ({"name": "Sam", "height": 1.0, "married": 1}, "married: expected bool, got int"),
        ({"name": "Sam", "height": None}, "height: expected float, got NoneType"),
        (42, "expected a dict of fields, got int"),
        ([1, 2], "expected a dict of fields, got list"),
        (None, "expected a dict of fields, got NoneType"),
    ],
)
def test_unloadable_payload_is_a_decode_error_naming_schema_and_key(
    payload: co.Primitive, message: str
) -> None:
    with pytest.raises(co.DecodeError, match=message) as info:
        PERSON.load(payload, key="Sam")
    assert "Person (key 'Sam')" in str(info.value)


def test_json_42_from_the_wire_is_a_decode_error() -> None:
    raw = _through("json", 42)
    with pytest.raises(co.DecodeError, match="Person"):
        PERSON.load(raw, key="Sam")


def test_nested_decode_error_names_the_path() -> None:
    payload = EVERYTHING.dump(EVERYTHING.prepare(_sample()))
    payload["geo"] = {"lat": "north", "lon": 2.0}
    with pytest.raises(co.DecodeError, match=r"geo\.lat: expected float, got str"):
        EVERYTHING.load(payload, key=1)
    payload["geo"] = None
    payload["color"] = "purple"
    with pytest.raises(co.DecodeError, match="color: 'purple' is not a value of Color"):
        EVERYTHING.load(payload, key=1)


# ------------------------------------------------------------ validation on write


def test_write_errors_name_the_field() -> None:
    with pytest.raises(co.ValidationError, match=r"Person\.height: expected float, got str"):
        PERSON.prepare(Person("Sam", "tall"))  # type: ignore[arg-type]  # the point
    with pytest.raises(co.ValidationError, match=r"Person\.name: expected str, got NoneType"):
        PERSON.prepare(Person(None, 1.0))  # type: ignore[arg-type]  # the point
    with pytest.raises(co.ValidationError, match="expected a Person, got tuple"):
        PERSON.prepare(("Sam", 1.0))  # type: ignore[arg-type]  # the point
    heavy = Tag("a", "heavy")  # type: ignore[arg-type]  # the point
    with pytest.raises(
        co.ValidationError, match=r"Everything\.tags\[0\]\.weight: expected int, got str"
    ):
        EVERYTHING.prepare(_sample()._replace(tags=[heavy]))


# ------------------------------------------------------------ schema errors


class Weird(NamedTuple):
    id: int
    pair: tuple[int, int]


class Either(NamedTuple):
    id: int
    value: int | str


class Tree(NamedTuple):
    id: int
    children: list[Tree]


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: co.Schema(Person, key="nope"), "key field 'nope' is not a field of Person"),  # type: ignore[cacheorm-schema]
        (lambda: co.Schema(Person, key=()), "key must be a field name"),
        (lambda: co.Schema(Person, key=("name", "name")), "repeats"),
        (lambda: co.Schema(Weird, key="id"), r"Weird\.pair: cannot store annotation"),
        (lambda: co.Schema(Either, key="id"), r"Either\.value: .*only as T \| None"),
        (lambda: co.Schema(Tree, key="id"), "recursive record types"),
        (
            lambda: co.Schema(Person, key="name", defaults={"height": "tall"}),
            r"Person\.height: default 'tall'",
        ),
        (
            lambda: co.Schema(Person, key="name", defaults={"weight": 1}),  # type: ignore[cacheorm-schema]
            r"defaults= names \['weight'\]",
        ),
        (
            lambda: co.Schema(Person, key="name", fields={"weight": co.IntegerField()}),  # type: ignore[cacheorm-schema]
            r"fields= names \['weight'\]",
        ),
        (lambda: co.Schema(Person, key="name", fields={"height": int}), "is not a Field"),  # type: ignore[dict-item]
        (
            lambda: co.Schema(Person, key="name", fields={"name": co.AutoField()}),
            "AutoField needs the annotation int | None",
        ),
        (
            lambda: co.Schema(Note, key="title", fields={"id": co.AutoField()}),
            "AutoField is only for the single key field",
        ),
        (lambda: co.Schema(int, key="x"), "not a record type"),
        (lambda: co.Schema(Person, key="name", name=""), "non-empty str"),
        (lambda: co.Schema(Person, key="name", version=1.5), "version must be"),  # type: ignore[arg-type]
        (lambda: co.Schema(Person, key="email"), "cannot be a nullable"),
    ],
)
def test_unsupported_schemas_raise_schema_error(build: Any, message: str) -> None:
    with pytest.raises(co.SchemaError, match=message):
        build()


def test_record_default_of_the_wrong_type_is_a_schema_error() -> None:
    class Bad(NamedTuple):
        id: int
        size: int = "big"  # type: ignore[assignment]  # the point

    with pytest.raises(co.SchemaError, match=r"Bad\.size: the record's default 'big'"):
        co.Schema(Bad, key="id")


# ------------------------------------------------------------ the Schema value


def test_schema_is_immutable_hashable_and_introspectable() -> None:
    with pytest.raises(AttributeError, match="immutable"):
        PERSON.name = "Other"
    with pytest.raises(TypeError):
        PERSON.fields["name"] = co.IntegerField()  # type: ignore[index]  # read-only
    assert {PERSON: 1}[PERSON] == 1
    assert PERSON == PERSON
    assert PERSON.field_names == ("name", "height", "married", "email")
    assert PERSON.key_fields == ("name",)
    assert PERSON.fields["height"] == co.FloatField()
    assert PERSON.record_type is Person
    assert "Schema(Person, key='name'" in repr(PERSON)


def _people(n: int) -> Iterator[Person]:
    for i in range(n):
        yield Person(f"p{i}", float(i), i % 2 == 0, None)


def test_key_of_composite_and_scalar() -> None:
    collections = co.Schema(Collection, key=("collector", "note_id"))
    assert collections.key_of({"collector": "a", "note_id": 2, "remark": ""}) == ("a", 2)
    assert [PERSON.key_of(p) for p in _people(2)] == ["p0", "p1"]
    with pytest.raises(co.ValidationError, match="cannot read key"):
        collections.key_of({"collector": "a"})  # type: ignore[typeddict-item]  # the point


# ------------------------------------------------------------------ audit regressions


class Perm(enum.Flag):
    R = 4
    W = 2
    X = 1


class Perms(NamedTuple):
    name: str
    perm: Perm


def test_combined_and_empty_flags_round_trip() -> None:
    schema = co.Schema(Perms, key="name")
    for perm in (Perm.R | Perm.W, Perm(0), Perm.X):
        record = Perms("f", perm)
        assert schema.load(schema.dump(schema.prepare(record))) == record


def test_a_dataclass_with_an_initvar_is_refused() -> None:
    @dataclasses.dataclass(frozen=True)
    class WithInit:
        k: str
        hint: dataclasses.InitVar[str | None] = None
        v: int = 0

    with pytest.raises(co.SchemaError, match="InitVar"):
        co.Schema(WithInit, key="k")


class EmailV1(NamedTuple):
    k: str
    email: str | None = "default@x"


class EmailV2(NamedTuple):
    k: str
    email: str | None = "default@x"
    age: int = 0


def test_a_stored_null_stays_null_when_an_evolved_schema_reads_it() -> None:
    old = co.Schema(EmailV1, key="k", name="Email")
    new = co.Schema(EmailV2, key="k", name="Email")
    payload = old.dump(old.prepare(EmailV1("a", None)))
    assert new.load(payload) == EmailV2("a", None, 0)


class Badge(NamedTuple):
    name: str
    level: int | None
    colour: str = "grey"


def test_a_stored_null_takes_the_schema_default_whatever_else_the_payload_holds() -> None:
    """A write never stores null where a schema default applies, so a read replaces one
    the same way whether or not another field of the payload is missing."""
    schema = co.Schema(Badge, key="name", defaults={"level": 1})
    assert schema.prepare(Badge("a", None)) == Badge("a", 1)  # the write rule
    complete: dict[str, co.Primitive] = {"name": "a", "level": None, "colour": "red"}
    evolved: dict[str, co.Primitive] = {"name": "a", "level": None}  # colour missing
    assert schema.load(complete) == Badge("a", 1, "red")
    assert schema.load(evolved) == Badge("a", 1, "grey")
    repo = co.Repo(schema, backend=co.MemoryBackend())  # the compiled codec too
    repo.backend.set(schema.encode_key("a"), msgpack.packb(complete))
    assert co.get(repo, "a") == Badge("a", 1, "red")
