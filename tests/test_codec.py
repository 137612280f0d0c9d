"""The compiled msgpack codec (cacheorm.codec) against the generic path it shortcuts.

Each test runs the same call through a repo with its codec and through the
same repo with the codec turned off (the generic path: the serializer, the
namespace mark, ``Schema.load``/``dump``), and requires the same bytes, the
same record, or the same error: the codec is a faster path, never a second
set of rules.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import enum
import uuid
import zoneinfo
from collections.abc import Callable, Mapping
from decimal import Decimal
from typing import Any, NamedTuple, Required, TypedDict, cast

import msgpack
import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import cacheorm as co
from cacheorm import crud
from cacheorm.backends.base import INT64_MAX, INT64_MIN
from cacheorm.codec import RecordCodec, _isoformat
from cacheorm.repo import NAMESPACE_FIELD

SECRET = b"codec-test-secret-0123456789abcd"
# msgpack's extension values, which the generic path refuses (its stubs omit them).
EXT: Callable[[int, bytes], object] = msgpack.ExtType  # type: ignore[attr-defined]  # not stubbed
TIMESTAMP: Callable[..., object] = msgpack.Timestamp  # type: ignore[attr-defined]  # not stubbed

# -- schemas: one per record kind, and one field of every rule ---------------------------


class Row(NamedTuple):
    """The bench record."""

    id: int
    name: str
    score: float
    active: bool
    city: str
    seen: dt.datetime


class Mood(enum.Enum):
    HAPPY = "happy"
    SAD = "sad"
    GLAD = "happy"  # an alias: read back as HAPPY


class Level(enum.IntEnum):
    LOW = 1
    HIGH = 2


class Perm(enum.Flag):
    READ = 1
    WRITE = 2


class Odd(enum.Enum):  # values msgspec cannot state: the field travels opaque
    YES = True
    HALF = 0.5


class Point(NamedTuple):
    x: int
    y: float = 0.0


class Wide(NamedTuple):
    id: int
    blob: bytes
    day: dt.date
    clock: dt.time
    uid: uuid.UUID
    price: Decimal
    mood: Mood
    level: Level
    perm: Perm
    odd: Odd
    ints: list[int]
    whens: list[dt.datetime]
    days: list[dt.date]
    scores: dict[str, float]
    maybe: int | None
    seen: dt.datetime | None
    extra: Any
    where: Point
    stamp: dt.datetime
    pair: complex
    note: str = "none"


@dataclasses.dataclass(frozen=True)
class Event:
    id: str
    at: dt.datetime
    count: int | None = 0
    tags: list[str] = dataclasses.field(default_factory=list)

    def __post_init__(self) -> None:
        if self.count is not None and self.count < -100:
            raise ValueError("count below -100")


class Doc(TypedDict, total=False):
    key: Required[str]
    body: str
    rank: int | None
    when: dt.datetime


def _pair(value: complex) -> co.Primitive:
    return [value.real, value.imag]


def _complex(data: co.Primitive) -> complex:
    real, imag = cast("list[float]", data)
    return complex(real, imag)


PAIR: co.StructField[complex] = co.StructField(dump=_pair, load=_complex)
ROW = co.Schema(Row, key="id")
WIDE = co.Schema(
    Wide,
    key="id",
    fields={
        "price": co.DecimalField(2),
        "stamp": co.TimestampField(1000, utc=True),
        "pair": PAIR,
    },
)
EVENT = co.Schema(Event, key="id", defaults={"count": 5})
DOC = co.Schema(Doc, key="key", defaults={"rank": 0})

# -- values ---------------------------------------------------------------------------------

ZONES = st.one_of(
    st.none(),
    st.just(dt.UTC),
    st.integers(-86399, 86399).map(lambda s: dt.timezone(dt.timedelta(seconds=s))),
    st.integers(-24 * 60 + 1, 24 * 60 - 1).map(lambda m: dt.timezone(dt.timedelta(minutes=m))),
    st.sampled_from(["Europe/Lisbon", "America/St_Johns", "Asia/Kolkata"]).map(zoneinfo.ZoneInfo),
)
DATETIMES = st.datetimes(timezones=ZONES)
INTS = st.integers(INT64_MIN, INT64_MAX)
FLOATS = st.floats(allow_nan=False, allow_infinity=False)
JSON = st.recursive(
    st.none() | st.booleans() | INTS | FLOATS | st.text(),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(), inner, max_size=3),
    max_leaves=8,
)

RECORDS: dict[str, st.SearchStrategy[object]] = {
    "Row": st.builds(Row, INTS, st.text(), FLOATS, st.booleans(), st.text(), DATETIMES),
    "Wide": st.builds(
        Wide,
        INTS,
        st.binary(),
        st.dates(),
        st.times(timezones=st.none() | st.just(dt.UTC)),
        st.uuids(),
        st.decimals(places=2, allow_nan=False, allow_infinity=False),
        st.sampled_from(Mood),
        st.sampled_from(Level),
        st.sampled_from([Perm.READ, Perm.WRITE, Perm.READ | Perm.WRITE, Perm(0)]),
        st.sampled_from(Odd),
        st.lists(INTS, max_size=3),
        st.lists(DATETIMES, max_size=2),
        st.lists(st.dates(), max_size=2),
        st.dictionaries(st.text(max_size=3), FLOATS, max_size=2),
        st.none() | INTS,
        st.none() | DATETIMES,
        JSON,
        st.builds(Point, INTS, FLOATS),
        st.datetimes(timezones=st.just(dt.UTC)),
        st.complex_numbers(allow_nan=False, allow_infinity=False),
        st.text(max_size=5),
    ),
    "Event": st.builds(
        Event,
        st.text(),
        DATETIMES,
        st.none() | st.integers(-100, INT64_MAX),
        st.lists(st.text(max_size=3), max_size=3),
    ),
    "Doc": st.fixed_dictionaries(
        {"key": st.text()},
        optional={"body": st.text(), "rank": st.none() | INTS, "when": DATETIMES},
    ),
}
SCHEMAS: dict[str, co.Schema[Any, Any]] = {"Row": ROW, "Wide": WIDE, "Event": EVENT, "Doc": DOC}

SERIALIZERS: dict[str, Callable[[], co.Serializer]] = {
    "msgpack": co.MsgpackSerializer,
    "signed": lambda: co.signed("msgpack", SECRET),
    "signed-compressed": lambda: co.signed(co.compressed("msgpack", min_size=40), SECRET),
    "compressed-signed": lambda: co.compressed(co.signed("msgpack", SECRET), min_size=0),
}


def repos(
    schema: co.Schema[Any, Any], serializer: co.Serializer, namespace: str
) -> tuple[co.Repo[Any, Any], co.Repo[Any, Any]]:
    """A repo with its codec, and the same repo on the generic path."""
    fast = co.Repo(schema, serializer=serializer, namespace=namespace)
    generic = co.Repo(schema, serializer=serializer, namespace=namespace)
    vars(generic)["codec"] = None  # the cached_property's slot: the codec turned off
    assert fast.codec is not None
    return fast, generic


def decoded(repo: co.Repo[Any, Any], raw: bytes, key: object, bkey: bytes) -> str:
    """What a read of ``raw`` gives: the record's repr (types, offsets, order) or the error."""
    try:
        return "record " + repr(crud._decode(repo, raw, key, bkey))
    except co.DecodeError as err:
        return f"DecodeError {err}"


# -- the same bytes, both ways ------------------------------------------------------------


@pytest.mark.parametrize("serializer", list(SERIALIZERS))
@pytest.mark.parametrize("name", list(SCHEMAS))
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), namespace=st.sampled_from(["", "app", "ns-" + "x" * 40]))
def test_the_codec_writes_the_generic_bytes_and_each_path_reads_the_other(
    name: str, serializer: str, data: st.DataObject, namespace: str
) -> None:
    schema = SCHEMAS[name]
    fast, generic = repos(schema, SERIALIZERS[serializer](), namespace)
    record = schema.prepare(data.draw(RECORDS[name]))
    key = schema.key_of(record)
    bkey = schema.encode_key(key, namespace)
    written = crud._encode(fast, record, bkey)
    assert written == crud._encode(generic, record, bkey)
    assert fast.codec is not None
    assert fast.codec.encode(record, bkey) == written
    # The codec reads it itself (no fallback), to the record the generic path reads.
    assert repr(fast.codec.decode(written, bkey)) == repr(crud._decode(generic, written, key, bkey))
    assert crud._decode(generic, written, key, bkey) == record  # (fold is not stored)
    if serializer == "msgpack":  # any msgpack reader sees the schema's dump
        mark = {NAMESPACE_FIELD: namespace} if namespace else {}
        assert msgpack.unpackb(written) == {**schema.dump(record), **mark}


@settings(max_examples=300, deadline=None)
@given(DATETIMES)
def test_isoformat_shortcut_writes_exactly_isoformat(value: dt.datetime) -> None:
    assert _isoformat(value) == value.isoformat()


PRIMITIVES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(INT64_MIN, 2**64 - 1)
    | st.floats()
    | st.text()
    | st.binary(max_size=300)
    | st.sampled_from([2**16, 2**32, -(2**31) - 1, -33, -32, 255, 256, "x" * 32, "x" * 256]),
    lambda inner: st.lists(inner, max_size=20) | st.dictionaries(st.text(), inner, max_size=20),
    max_leaves=40,
)


@settings(max_examples=500, deadline=None)
@given(PRIMITIVES)
def test_msgspec_packs_primitives_as_the_preset_does(value: object) -> None:
    """What the codec's byte-for-byte promise rests on."""
    assert msgspec.msgpack.encode(value) == co.MsgpackSerializer().dumps(value)  # type: ignore[arg-type]  # hypothesis draws Primitive values


# -- never accepting what the generic path refuses ------------------------------------------

ISO_TEXT = st.builds(
    lambda date, sep, time, fraction, offset: f"{date}{sep}{time}{fraction}{offset}",
    st.sampled_from(["2024-05-17", "20240517", "2024-W20-5", "2024-5-17", "0000-01-01"]),
    st.sampled_from(["T", "t", " ", "x", ""]),
    st.sampled_from(["12:34:56", "12:34", "12", "23:59:60", "24:00:00", "123456"]),
    st.sampled_from(["", ".1", ".123456", ".1234567", ".9999995", ",5"]),
    st.sampled_from(
        ["", "Z", "z", "+01:00", "-00:00", "+0100", "+01", "+01:00:30", "+01:00:00.5", "+25:00"]
    ),
)
EDGES: list[object] = [
    None,
    True,
    0,
    1,
    2,
    3,
    -1,
    0.5,
    -0.0,
    float("nan"),
    float("inf"),
    float("-inf"),
    INT64_MAX,
    INT64_MAX + 1,
    2**64 - 1,
    INT64_MIN,
    "",
    "happy",
    "HAPPY",
    "1.005",
    "1.00",
    "NaN",
    "Infinity",
    " 1.5 ",
    "1_000",
    "1e3",
    str(uuid.UUID(int=7)),
    uuid.UUID(int=7).hex,
    str(uuid.UUID(int=7)).upper(),
    "{" + str(uuid.UUID(int=7)) + "}",
    "urn:uuid:" + str(uuid.UUID(int=7)),
    uuid.UUID(int=7).bytes,
    b"",
    b"bytes",
    "2024-05-17",
    "20240517",
    "2024-W20-5",
    "12:34:56",
    "12:34:56.1234567",
    "12:34:56+01:00:30",
    "2024-05-17T12:34:56.123456+01:00",
    "2024-05-17T12:34:56.123456+01:00:00.5",
    "2024-05-17t12:34:56z",
    "2024-05-17T12:34:56.9999995",
    "2024-05-17T12:34:56Z",
    [],
    [1, 2],
    [1.5, 2.5],
    ["2024-05-17", "x"],
    ["2024-05-17T12:34:56+01:00"],
    [None],
    {},
    {"x": 1},
    {"x": 1.5, "y": 2},
    {"x": 1, "y": 2.5, "z": 3},
    {"x": None},
    {1: "int key"},
    {"x": EXT(5, b"ext")},
    [TIMESTAMP(0)],
    EXT(5, b"ext"),
    TIMESTAMP(1_700_000_000),
    TIMESTAMP(1_700_000_000, 5),
]
"""Values next to the edge of some field rule: each one, in each field, in the grid test."""

NASTY = st.one_of(PRIMITIVES, ISO_TEXT, st.sampled_from(EDGES))


@st.composite
def mutated(draw: st.DrawFn, name: str, namespace: str) -> tuple[bytes, object]:
    """A payload near a valid one: fields changed, dropped, added, marks, any order."""
    schema = SCHEMAS[name]
    record = schema.prepare(draw(RECORDS[name]))
    payload: dict[Any, object] = dict(schema.dump(record))
    if namespace:
        payload[NAMESPACE_FIELD] = namespace
    others = [schema.dump(schema.prepare(draw(RECORDS[name]))) for _ in range(2)]
    for _ in range(draw(st.integers(0, 3))):
        field = draw(st.sampled_from([*schema.field_names, NAMESPACE_FIELD, "extra", 7]))
        action = draw(st.sampled_from(["nasty", "other", "drop", "null"]))
        if action == "drop":
            payload.pop(field, None)
        elif action == "null":
            payload[field] = None
        elif action == "other" and (found := draw(st.sampled_from(others))).get(str(field)):
            payload[field] = found[str(field)]
        else:
            payload[field] = draw(NASTY | st.sampled_from(["", "app", "other"]))
    items = list(payload.items())
    if draw(st.booleans()):
        items = draw(st.permutations(items))
    return msgpack.packb(dict(items), use_bin_type=True), schema.key_of(record)


@pytest.mark.parametrize("name", list(SCHEMAS))
@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), namespace=st.sampled_from(["", "app"]))
def test_the_codec_reads_any_payload_as_the_generic_path_does(
    name: str, data: st.DataObject, namespace: str
) -> None:
    """Same record or same error (field and key named); the codec never accepts more."""
    schema = SCHEMAS[name]
    fast, generic = repos(schema, co.MsgpackSerializer(), namespace)
    raw, key = data.draw(mutated(name, namespace))
    bkey = schema.encode_key(key, namespace)
    assert decoded(fast, raw, key, bkey) == decoded(generic, raw, key, bkey)


@settings(max_examples=600, deadline=None)
@given(seen=ISO_TEXT | st.text(max_size=40), namespace=st.sampled_from(["", "app"]))
def test_datetime_text_is_read_as_fromisoformat_reads_it(seen: str, namespace: str) -> None:
    fast, generic = repos(ROW, co.MsgpackSerializer(), namespace)
    payload = {"id": 1, "name": "a", "score": 1.0, "active": True, "city": "c", "seen": seen}
    raw = msgpack.packb({**payload, **({NAMESPACE_FIELD: namespace} if namespace else {})})
    bkey = ROW.encode_key(1, namespace)
    assert decoded(fast, raw, 1, bkey) == decoded(generic, raw, 1, bkey)


BASES: dict[str, object] = {
    "Row": Row(1, "a", 1.5, True, "c", dt.datetime(2024, 5, 17, 12, 0, tzinfo=dt.UTC)),
    "Wide": Wide(
        1,
        b"b",
        dt.date(2024, 5, 17),
        dt.time(12, 34, 56, 7),
        uuid.UUID(int=9),
        Decimal("1.25"),
        Mood.SAD,
        Level.HIGH,
        Perm.READ | Perm.WRITE,
        Odd.HALF,
        [1, 2],
        [dt.datetime(2024, 5, 17, 12, 0)],
        [dt.date(2024, 5, 17)],
        {"a": 1.5},
        None,
        dt.datetime(2024, 5, 17, 12, 0, tzinfo=dt.timezone(dt.timedelta(hours=-3))),
        {"json": [1, "two", None]},
        Point(3, 4.5),
        dt.datetime(2024, 5, 17, 12, 0, 0, 123000, tzinfo=dt.UTC),
        1 + 2j,
    ),
    "Event": Event("e", dt.datetime(2024, 5, 17), 3, ["t"]),
    "Doc": {"key": "k", "body": "b", "when": dt.datetime(2024, 5, 17)},
}


@pytest.mark.parametrize("namespace", ["", "app"])
@pytest.mark.parametrize("name", list(SCHEMAS))
def test_every_field_reads_each_edge_value_as_the_generic_path_does(
    name: str, namespace: str
) -> None:
    """Each edge value in each field, as an extra field and as the mark; each one dropped."""
    schema = SCHEMAS[name]
    fast, generic = repos(schema, co.MsgpackSerializer(), namespace)
    record = schema.prepare(BASES[name])
    key = schema.key_of(record)
    bkey = schema.encode_key(key, namespace)
    accepted = 0
    for field in [*schema.field_names, "extra", NAMESPACE_FIELD]:
        for value in [*EDGES, DROP]:
            payload: dict[str, object] = dict(schema.dump(record))
            if value is DROP:
                payload.pop(field, None)
            else:
                payload[field] = value
            if namespace and field != NAMESPACE_FIELD:
                payload[NAMESPACE_FIELD] = namespace  # last, where the generic path puts it
            raw = msgpack.packb(payload, use_bin_type=True)
            result = decoded(fast, raw, key, bkey)
            assert result == decoded(generic, raw, key, bkey), (field, value)
            accepted += result.startswith("record")
    assert accepted > len(schema.field_names)  # the grid is not all refusals


# -- namespaces, keys, wrappers, evolution: through the public functions --------------------

SEEN = dt.datetime(2026, 11, 27, 9, 30, 0, 123456, tzinfo=dt.timezone(dt.timedelta(hours=1)))
ROW_1 = Row(1, "user-1", 1.5, False, "Lisbon", SEEN)
DROP = object()


def planted(payload: Mapping[str, object], namespace: str = "") -> co.Repo[Row, int]:
    """A repo whose record 1 is ``payload``, packed by plain msgpack."""
    repo = co.Repo(ROW, namespace=namespace)
    repo.sync_backend.set(ROW.encode_key(1, namespace), msgpack.packb(payload), None)
    return repo


def test_the_bench_record_round_trips_through_the_codec_on_memory() -> None:
    repo = co.Repo(ROW)
    assert isinstance(repo.codec, RecordCodec)
    co.insert(repo, ROW_1)
    stored = repo.sync_backend.get(ROW.encode_key(1))
    assert stored is not None
    assert repo.codec.decode(stored, ROW.encode_key(1)) == ROW_1
    assert co.get(repo, 1) == ROW_1
    assert co.get_many(repo, [1, 2]) == [ROW_1, None]


def test_an_older_payload_takes_the_defaults_and_ignores_extra_fields() -> None:
    class Row2(NamedTuple):
        id: int
        name: str
        score: float = 9.5

    schema = co.Schema(Row2, key="id", name="Row")
    repo = co.Repo(schema)
    old = {"id": 1, "name": "a", "retired": [1, 2]}
    repo.sync_backend.set(schema.encode_key(1), msgpack.packb(old), None)
    assert repo.codec is not None
    assert co.get(repo, 1) == Row2(1, "a", 9.5)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"score": "tall"}, "cannot load Row (key 1): score: expected float, got str"),
        ({"score": float("nan")}, "cannot load Row (key 1): score: nan is not finite"),
        ({"id": INT64_MAX + 1}, "cannot load Row (key 1): id: integer 9223372036854775808 is"),
        ({"seen": "2024-05-17t12:00:00z"}, "cannot load Row (key 1): seen: Invalid isoformat"),
        ({"seen": TIMESTAMP(0)}, "(key 1): seen: expected an ISO datetime string, got int"),
        ({"city": None}, "cannot load Row (key 1): city: expected str, got NoneType"),
        ({"city": DROP}, "cannot load Row (key 1): city: required field is missing or null"),
    ],
)
def test_a_bad_payload_raises_the_generic_error_naming_field_and_key(
    change: dict[str, object], message: str
) -> None:
    payload = {**ROW.dump(ROW_1), **change}
    repo = planted({name: value for name, value in payload.items() if value is not DROP})
    with pytest.raises(co.DecodeError) as caught:
        co.get(repo, 1)
    assert message in str(caught.value)


def test_a_payload_of_another_namespace_or_none_is_refused() -> None:
    other = co.Repo(ROW, namespace="other")
    co.insert(other, ROW_1)
    raw = other.sync_backend.get(ROW.encode_key(1, "other"))
    assert raw is not None
    repo = co.Repo(ROW, backend=other.backend, namespace="app")
    repo.sync_backend.set(ROW.encode_key(1, "app"), raw, None)
    with pytest.raises(co.DecodeError, match="written under namespace 'other', not 'app'"):
        co.get(repo, 1)
    unmarked = planted(ROW.dump(ROW_1), namespace="app")
    with pytest.raises(co.DecodeError, match="written under namespace '', not 'app'"):
        co.get(unmarked, 1)


def test_the_mark_is_matched_as_the_last_entry_only() -> None:
    """Bytes that end like the mark inside another value are not the mark."""
    mark = msgpack.packb(NAMESPACE_FIELD) + msgpack.packb("app")
    tail = mark.decode("latin-1")
    for payload in [
        {**ROW.dump(ROW_1), "x": "pad" + tail},  # inside an extra field's text
        {**ROW.dump(ROW_1), "city": "Lisbon" + tail},  # inside a field's own text
        {NAMESPACE_FIELD: "other", **ROW.dump(ROW_1), "y": "app"},  # wrong mark, then "app"
    ]:
        raw = msgpack.packb(payload)
        fast, generic = repos(ROW, co.MsgpackSerializer(), "app")
        bkey = ROW.encode_key(1, "app")
        assert decoded(fast, raw, 1, bkey) == decoded(generic, raw, 1, bkey)
    # The mark twice, another first: msgpack keeps the last, as the generic path does.
    body = msgpack.packb({NAMESPACE_FIELD: "other", **ROW.dump(ROW_1)})[1:]
    twice = bytes([0x80 + 8]) + body + mark
    fast, generic = repos(ROW, co.MsgpackSerializer(), "app")
    bkey = ROW.encode_key(1, "app")
    assert decoded(fast, twice, 1, bkey) == decoded(generic, twice, 1, bkey) == f"record {ROW_1!r}"


def test_a_record_of_another_key_is_refused_after_a_fast_decode() -> None:
    repo = planted({**ROW.dump(ROW_1), "id": 2})
    assert repo.codec is not None
    with pytest.raises(co.DecodeError, match="holds the record of key 2"):
        co.get(repo, 1)


def test_a_signed_payload_under_another_key_fails_its_signature() -> None:
    repo = co.Repo(ROW, serializer=co.signed(co.compressed("msgpack", min_size=0), SECRET))
    assert repo.codec is not None
    co.insert(repo, ROW_1)
    raw = repo.sync_backend.get(ROW.encode_key(1))
    assert raw is not None
    repo.sync_backend.set(ROW.encode_key(2), raw, None)
    with pytest.raises(co.DecodeError, match="signature mismatch"):
        co.get(repo, 2)
    assert co.get(repo, 1) == ROW_1


@pytest.mark.parametrize(
    "serializer",
    [
        "json",
        "pickle",
        co.signed("json", SECRET),
        co.compressed("pickle"),
    ],
)
def test_other_serializers_keep_the_generic_path(serializer: str | co.Serializer) -> None:
    repo = co.Repo(ROW, serializer=serializer)
    assert repo.codec is None
    co.insert(repo, ROW_1)
    assert co.get(repo, 1) == ROW_1


def test_a_custom_msgpack_serializer_keeps_the_generic_path() -> None:
    class Custom(co.MsgpackSerializer):  # its own loads/dumps may differ from the preset's
        __slots__ = ()

    assert co.Repo(ROW, serializer=Custom()).codec is None
    assert co.Repo(ROW, serializer="msgpack").codec is not None


def test_a_field_name_msgspec_cannot_hold_keeps_the_generic_path() -> None:
    odd = TypedDict("odd", {"key": str, "a\x01b": int})
    schema = co.Schema(odd, key="key")
    repo = co.Repo(schema)
    assert repo.codec is None
    co.insert(repo, {"key": "k", "a\x01b": 1})
    assert co.get(repo, "k") == {"key": "k", "a\x01b": 1}


def test_a_notrequired_key_stays_absent_and_defaults_fill_it() -> None:
    repo = co.Repo(DOC)
    co.insert(repo, {"key": "k", "body": "b"})
    assert co.get(repo, "k") == {"key": "k", "body": "b", "rank": 0}
    raw = repo.sync_backend.get(DOC.encode_key("k"))
    assert raw is not None
    assert repo.codec is not None
    assert repo.codec.decode(raw, DOC.encode_key("k")) == {"key": "k", "body": "b", "rank": 0}


def test_a_dataclass_rejecting_the_values_is_a_decode_error() -> None:
    repo = co.Repo(EVENT)
    payload = {"id": "e", "at": SEEN.isoformat(), "count": -101, "tags": []}
    repo.sync_backend.set(EVENT.encode_key("e"), msgpack.packb(payload), None)
    with pytest.raises(co.DecodeError, match=r"Event\(\.\.\.\) rejected: count below -100"):
        co.get(repo, "e")
