"""Field rules: exact round trips under every serializer, and what each rejects."""

from __future__ import annotations

import datetime as dt
import enum
import math
import uuid
import zoneinfo
from dataclasses import dataclass
from decimal import Decimal
from typing import TYPE_CHECKING, NamedTuple

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import cacheorm as co
from cacheorm.fields import DictField, NullableField
from cacheorm.serializers import registry

if TYPE_CHECKING:
    from cacheorm.serializers.base import Primitive

SERIALIZERS = ("json", "msgpack", "pickle")


class Color(enum.Enum):
    RED = "red"
    BLUE = "blue"


class Level(enum.IntEnum):
    LOW = 1
    HIGH = 2


class Flag(enum.Enum):
    ON = True
    TWO = 2
    HALF = 0.5


# Fixed offsets (not ZoneInfo): an aware value comes back with the offset it
# had, so only fixed offsets can compare equal in folds (PEP 495).
OFFSETS = st.builds(
    dt.timezone,
    st.timedeltas(
        min_value=dt.timedelta(hours=-23, minutes=-59), max_value=dt.timedelta(hours=23, minutes=59)
    ),
)
TZ = st.none() | st.just(dt.UTC) | OFFSETS.filter(lambda z: not z.utcoffset(None).microseconds)

JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner, max_size=4)
    ),
    max_leaves=12,
)


def _complex_dump(value: complex) -> Primitive:
    return [value.real, value.imag]


def _complex_load(data: Primitive) -> complex:
    if not isinstance(data, list) or len(data) != 2:
        raise ValueError(f"expected [real, imag], got {data!r}")
    real, imag = data
    if not isinstance(real, float) or not isinstance(imag, float):
        raise TypeError("expected two floats")
    return complex(real, imag)


COMPLEX = co.StructField(dump=_complex_dump, load=_complex_load)

# (id, field, strategy of values the field must store and read back exactly)
CASES: list[tuple[str, co.Field[object], st.SearchStrategy[object]]] = [
    ("str", co.StringField(), st.text()),
    ("int", co.IntegerField(), st.integers(-(2**63), 2**63 - 1)),
    ("float", co.FloatField(), st.floats(allow_nan=False, allow_infinity=False)),
    ("bool", co.BooleanField(), st.booleans()),
    ("bytes", co.BinaryField(), st.binary()),
    ("decimal", co.DecimalField(), st.decimals(allow_nan=False, allow_infinity=False)),
    (
        "decimal2",
        co.DecimalField(decimal_places=2, auto_round=True),
        st.decimals(
            allow_nan=False, allow_infinity=False, places=4, min_value=-(10**12), max_value=10**12
        ),
    ),
    ("datetime", co.DateTimeField(), st.datetimes(timezones=TZ)),
    ("date", co.DateField(), st.dates()),
    ("time", co.TimeField(), st.times(timezones=TZ)),
    ("timestamp_s", co.TimestampField(), st.datetimes()),
    (
        "timestamp_us_utc",
        co.TimestampField(resolution=10**6, utc=True),
        st.datetimes(timezones=TZ.filter(lambda z: z is not None)),
    ),
    ("timestamp_ms", co.TimestampField(resolution=3), st.datetimes(timezones=TZ)),
    ("uuid", co.UUIDField(), st.uuids()),
    ("enum", co.EnumField(Color), st.sampled_from(Color)),
    ("intenum", co.EnumField(Level), st.sampled_from(Level)),
    ("enum_mixed", co.EnumField(Flag), st.sampled_from(Flag)),
    ("list", co.ListField(co.IntegerField()), st.lists(st.integers(-100, 100))),
    (
        "list_decimal",
        co.ListField(co.DecimalField()),
        st.lists(st.decimals(allow_nan=False, allow_infinity=False), max_size=5),
    ),
    ("dict", DictField(co.DateField()), st.dictionaries(st.text(), st.dates(), max_size=5)),
    ("json", co.JSONField(), JSON_VALUES),
    ("struct", COMPLEX, st.complex_numbers(allow_nan=False, allow_infinity=False)),
    ("nullable", NullableField(co.UUIDField()), st.none() | st.uuids()),
    ("auto", co.AutoField(), st.integers(0, 2**63 - 1)),
]


def _through(serializer_name: str, primitive: Primitive) -> Primitive:
    serializer = registry.get_by_name(serializer_name)
    assert serializer is not None
    payload = serializer.loads(serializer.dumps({"v": primitive}))
    assert isinstance(payload, dict)
    return payload["v"]


@pytest.mark.parametrize("serializer_name", SERIALIZERS)
@pytest.mark.parametrize(("case", "field", "values"), CASES, ids=[c[0] for c in CASES])
@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_every_field_round_trips_exactly_under_every_serializer(
    serializer_name: str,
    case: str,
    field: co.Field[object],
    values: st.SearchStrategy[object],
    data: st.DataObject,
) -> None:
    prepared = field.prepare(data.draw(values))
    assert field.prepare(prepared) == prepared  # "as stored" is a fixed point
    loaded = field.load(_through(serializer_name, field.dump(prepared)))
    assert loaded == prepared
    assert type(loaded) is type(prepared)
    if isinstance(prepared, Decimal | dt.datetime | dt.time):
        # Equal is not enough: digits, offsets and microseconds are kept.
        assert str(loaded) == str(prepared)


# ------------------------------------------------------------ numbers


def test_bool_is_not_an_int_and_int_becomes_float() -> None:
    with pytest.raises(co.ValidationError, match="expected int, got bool"):
        co.IntegerField().prepare(True)
    stored = co.FloatField().prepare(3)
    assert stored == 3.0
    assert type(stored) is float
    with pytest.raises(co.ValidationError, match="expected float, got bool"):
        co.FloatField().prepare(False)


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_nan_and_infinity_are_rejected(value: float) -> None:
    with pytest.raises(co.ValidationError, match="not finite"):
        co.FloatField().prepare(value)
    with pytest.raises(co.ValidationError, match="NaN and infinity"):
        co.JSONField().prepare({"x": [value]})
    with pytest.raises(co.ValidationError, match="not finite"):
        co.DecimalField().prepare(Decimal(value))


def test_integers_beyond_64_bits_are_rejected_everywhere() -> None:
    co.IntegerField().prepare(2**63 - 1)
    with pytest.raises(co.ValidationError, match="64-bit"):
        co.IntegerField().prepare(2**63)
    with pytest.raises(co.ValidationError, match="64-bit"):
        co.JSONField().prepare([-(2**63) - 1])
    with pytest.raises(co.ValidationError, match="too large"):
        co.FloatField().prepare(10**400)


def test_decimal_keeps_digits_and_rounds_only_when_told() -> None:
    field = co.DecimalField(decimal_places=2)
    assert str(field.load(field.dump(field.prepare(Decimal("12.30"))))) == "12.30"
    assert str(field.prepare(Decimal("1.5"))) == "1.5"  # fewer places: untouched
    with pytest.raises(co.ValidationError, match="more than 2 decimal places"):
        field.prepare(Decimal("1.005"))
    rounding = co.DecimalField(decimal_places=2, auto_round=True)
    assert str(rounding.prepare(Decimal("1.005"))) == "1.00"  # half-even
    assert str(rounding.prepare(Decimal("1.015"))) == "1.02"
    assert co.DecimalField().prepare(7) == Decimal(7)
    with pytest.raises(co.ValidationError, match="floats are inexact"):
        co.DecimalField().prepare(0.1)
    with pytest.raises(co.SchemaError, match="decimal_places"):
        co.DecimalField(decimal_places=-1)


# ------------------------------------------------------------ text and bytes


def test_strings_that_cannot_be_utf8_are_rejected_and_str_subclasses_normalised() -> None:
    with pytest.raises(co.ValidationError, match="surrogate"):
        co.StringField().prepare("a\ud800")

    class Mood(enum.StrEnum):
        HAPPY = "happy"

    stored = co.StringField().prepare(Mood.HAPPY)
    assert stored == "happy"
    assert type(stored) is str
    assert co.BinaryField().prepare(bytearray(b"ab")) == b"ab"
    assert type(co.BinaryField().prepare(memoryview(b"ab"))) is bytes
    with pytest.raises(co.ValidationError, match="expected bytes, got str"):
        co.BinaryField().prepare("ab")


# ------------------------------------------------------------ time


def test_datetimes_keep_offset_and_microseconds_and_naive_stays_naive() -> None:
    field = co.DateTimeField()
    india = dt.datetime(
        2026, 1, 2, 3, 4, 5, 678901, tzinfo=dt.timezone(dt.timedelta(hours=5, minutes=30))
    )
    back = field.load(field.dump(india))
    assert back == india
    assert back.utcoffset() == dt.timedelta(hours=5, minutes=30)
    assert back.microsecond == 678901
    naive = dt.datetime(2026, 1, 2, 3, 4, 5)
    assert field.load(field.dump(naive)).tzinfo is None
    paris = dt.datetime(2026, 7, 1, 12, tzinfo=zoneinfo.ZoneInfo("Europe/Paris"))
    back = field.load(field.dump(paris))
    assert back == paris
    assert back.utcoffset() == dt.timedelta(hours=2)


def test_sub_second_utc_offsets_are_rejected() -> None:
    odd = dt.timezone(dt.timedelta(seconds=1, microseconds=5))
    with pytest.raises(co.ValidationError, match="fraction of a second"):
        co.DateTimeField().prepare(dt.datetime(2000, 1, 1, tzinfo=odd))
    with pytest.raises(co.ValidationError, match="fraction of a second"):
        co.TimeField().prepare(dt.time(1, tzinfo=odd))


def test_date_field_rejects_datetime_and_time_field_keeps_offset() -> None:
    with pytest.raises(co.ValidationError, match="expected date, got datetime"):
        co.DateField().prepare(dt.datetime(2020, 1, 1))
    clock = dt.time(1, 2, 3, 4, tzinfo=dt.timezone(dt.timedelta(hours=-3)))
    assert co.TimeField().load(co.TimeField().dump(clock)).utcoffset() == dt.timedelta(hours=-3)


def test_timestamp_resolution_and_utc() -> None:
    seconds = co.TimestampField()
    moment = dt.datetime(2026, 11, 27, 9, 30, 1, 999999)
    assert seconds.prepare(moment) == dt.datetime(2026, 11, 27, 9, 30, 1)
    assert seconds.dump(seconds.prepare(moment)) == 1795771801
    millis = co.TimestampField(resolution=1000)
    assert millis.dump(millis.prepare(moment)) == 1795771801999
    assert co.TimestampField(resolution=3) == millis
    before_epoch = dt.datetime(1969, 12, 31, 23, 59, 59, 500000)
    assert millis.load(millis.dump(millis.prepare(before_epoch))) == before_epoch
    aware = co.TimestampField(utc=True)
    tokyo = dt.datetime(2026, 1, 1, 9, tzinfo=dt.timezone(dt.timedelta(hours=9)))
    stored = aware.prepare(tokyo)
    assert stored == tokyo
    assert stored.tzinfo is dt.UTC
    with pytest.raises(co.ValidationError, match="naive datetime"):
        aware.prepare(dt.datetime(2026, 1, 1))
    # utc=False: aware input is stored as its naive UTC wall time.
    assert seconds.prepare(tokyo) == dt.datetime(2026, 1, 1, 0, 0)
    with pytest.raises(co.SchemaError, match="resolution"):
        co.TimestampField(resolution=7)


# ------------------------------------------------------------ enums, lists, json, struct


def test_enum_members_only_and_values_must_be_primitive() -> None:
    field = co.EnumField(Color)
    with pytest.raises(co.ValidationError, match="expected Color, got str"):
        field.prepare("red")
    with pytest.raises(ValueError, match="not a value of Color"):
        field.load("green")
    mixed = co.EnumField(Flag)
    assert mixed.load(True) is Flag.ON
    assert mixed.load(2) is Flag.TWO
    with pytest.raises(ValueError, match="not a value of Flag"):
        mixed.load(1)  # 1 == True, but a stored bool is never read from an int

    class Point(enum.Enum):
        ORIGIN = (0, 0)

    with pytest.raises(co.SchemaError, match="ORIGIN"):
        co.EnumField(Point)


def test_list_errors_name_the_index_and_tuples_become_lists() -> None:
    field = co.ListField(co.IntegerField())
    assert field.prepare((1, 2)) == [1, 2]
    with pytest.raises(co.ValidationError, match=r"\[1\]: expected int, got str"):
        field.prepare([1, "2"])
    with pytest.raises(TypeError, match="expected list"):
        field.load({"a": 1})


def test_json_field_copies_and_rejects_non_json() -> None:
    original = {"a": [1, {"b": None}]}
    stored = co.JSONField().prepare(original)
    assert stored == original
    assert stored is not original
    with pytest.raises(co.ValidationError, match="keys must be str"):
        co.JSONField().prepare({1: "x"})
    with pytest.raises(co.ValidationError, match="set is not a JSON value"):
        co.JSONField().prepare({1, 2})
    with pytest.raises(co.ValidationError, match="bytes is not a JSON value"):
        co.JSONField().prepare(b"x")


def test_struct_field_errors_are_wrapped() -> None:
    @dataclass(frozen=True)
    class Money:
        cents: int

    field = co.StructField(dump=lambda m: m.cents, load=lambda p: Money(int(p)))  # type: ignore[arg-type]  # p is an int here
    assert field.load(field.dump(field.prepare(Money(5)))) == Money(5)
    with pytest.raises(co.ValidationError, match="StructField dump failed"):
        field.dump("not money")
    with pytest.raises(co.SchemaError, match="callables"):
        co.StructField(dump=1, load=2)  # type: ignore[arg-type]  # the point of the test


def test_load_rejects_wrong_primitive_types() -> None:
    cases: list[tuple[co.Field[object], Primitive]] = [
        (co.StringField(), 1),
        (co.IntegerField(), True),
        (co.IntegerField(), 1.0),
        (co.BooleanField(), 1),
        (co.FloatField(), "1.0"),
        (co.BinaryField(), "ab"),
        (co.UUIDField(), 5),
        (co.DateTimeField(), 0),
        (co.DecimalField(), 1.5),
    ]
    for field, bad in cases:
        with pytest.raises(TypeError, match="expected"):
            field.load(bad)
    with pytest.raises(ValueError, match="not a decimal"):
        co.DecimalField().load("abc")


def test_fields_compare_and_hash_by_value() -> None:
    assert co.DecimalField(2, True) == co.DecimalField(decimal_places=2, auto_round=True)
    assert hash(co.EnumField(Color)) == hash(co.EnumField(Color))
    ints: co.Field[object] = co.ListField(co.IntegerField())
    assert ints != co.ListField(co.StringField())
    with pytest.raises(AttributeError):
        co.DecimalField().decimal_places = 3  # type: ignore[misc]  # frozen on purpose


def test_uuid_and_auto_field() -> None:
    value = uuid.uuid4()
    assert co.UUIDField().dump(value) == str(value)
    assert isinstance(co.AutoField(), co.IntegerField)


# -- the compiled "stored as it is" check of Schema.prepare -------------------------------


class Kept(NamedTuple):
    id: int
    name: str
    score: float
    flag: bool
    blob: bytes
    seen: dt.datetime
    note: str | None = None
    color: Color = Color.RED
    level: int | None = None


KEPT = co.Schema(Kept, key="id", defaults={"level": lambda: 7})

_ANY_VALUE = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**64), max_value=2**64),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(alphabet=st.characters(codec=None), max_size=4),
    st.binary(max_size=4),
    st.sampled_from([Color.RED, Color.BLUE, Level.LOW]),
    st.datetimes(
        timezones=st.one_of(
            st.none(),
            st.timedeltas(min_value=dt.timedelta(hours=-23), max_value=dt.timedelta(hours=23)).map(
                dt.timezone
            ),
        )
    ),
)


def _field_by_field(record: object) -> object:
    """Schema.prepare with its compiled check turned off: the loop over the fields."""
    codec = KEPT._codec
    kept = codec.kept
    codec.kept = lambda record: False
    try:
        return KEPT.prepare(record)  # type: ignore[arg-type]  # any values, on purpose
    except co.ValidationError as err:
        return err
    finally:
        codec.kept = kept


_INT64 = st.integers(min_value=-(2**63), max_value=2**63 - 1)
_ODD_OFFSET = dt.timezone(dt.timedelta(hours=1, microseconds=5))
_EDGES = st.sampled_from(
    [
        math.nan,
        math.inf,
        2**63,
        -(2**63) - 1,
        True,
        1,
        1.0,
        "\ud800",
        "é",
        None,
        bytearray(b"x"),
        dt.datetime(2026, 1, 1, tzinfo=_ODD_OFFSET),
        dt.date(2026, 1, 1),
        Level.LOW,
    ]
)
# A record of valid values (but for NaN and infinities), then at most one field given
# an edge case or anything at all.
_KEPT_VALUES = st.tuples(
    st.tuples(
        _INT64,
        st.text(alphabet=st.characters(max_codepoint=127), max_size=4),
        st.floats(),  # NaN and infinities included
        st.booleans(),
        st.binary(max_size=4),
        st.datetimes(timezones=st.one_of(st.none(), st.just(dt.UTC))),
        st.one_of(st.none(), st.text(max_size=4)),
        st.sampled_from(Color),
        st.integers(min_value=0, max_value=9),
    ),
    st.integers(min_value=0, max_value=9),
    st.one_of(_EDGES, _ANY_VALUE),
).map(lambda made: tuple(made[2] if i == made[1] else v for i, v in enumerate(made[0])))


@settings(max_examples=500, deadline=None)
@given(_KEPT_VALUES)
def test_the_compiled_check_passes_only_records_the_loop_stores_as_they_are(
    values: tuple[object, ...],
) -> None:
    """A record the fast check passes is one the field-by-field rules keep unchanged;
    anything else (a NaN, an int out of range, a lone surrogate, a None that a default
    replaces, a sub-second UTC offset, a wrong type) goes down the loop, which decides."""
    record = Kept(*values)  # type: ignore[arg-type]  # any values, on purpose
    try:
        passed = KEPT._codec.kept(record)
    except Exception:
        passed = False
    slow = _field_by_field(record)
    if passed:
        assert slow is record
    fast = KEPT.prepare(record) if not isinstance(slow, Exception) else slow
    assert fast == slow or (isinstance(slow, Exception) and isinstance(fast, Exception))


def test_the_compiled_check_takes_the_common_record_and_refuses_what_it_must() -> None:
    seen = dt.datetime(2026, 1, 2, 3, 4, 5, 6, tzinfo=dt.timezone(dt.timedelta(hours=1)))
    good = Kept(1, "Sam", 1.5, True, b"x", seen, None, Color.BLUE, 3)
    assert KEPT._codec.kept(good) is True
    assert KEPT.prepare(good) is good
    for bad in (
        good._replace(score=math.nan),
        good._replace(id=2**63),
        good._replace(id=True),
        good._replace(name="\ud800"),
        good._replace(level=None),  # its default replaces it
        good._replace(seen=seen.replace(tzinfo=dt.timezone(dt.timedelta(microseconds=5)))),
    ):
        assert KEPT._codec.kept(bad) is False, bad
    assert KEPT.prepare(good._replace(level=None)).level == 7
    with pytest.raises(co.ValidationError, match="score"):
        KEPT.prepare(good._replace(score=math.inf))
