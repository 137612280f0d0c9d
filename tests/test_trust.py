"""No trust in what the cache hands back (issue 9, items 6, 7, 8, 11 and 12).

Bytes read from a cache may have been planted or moved by anyone who can
write to it. These tests plant them and check that a read raises
``DecodeError`` (never serves the wrong record, never a value a write would
refuse) at a cost bounded by the planted payload's own size; and that
``Schema.check_changes`` refuses exactly the changes ``evolve`` refuses
whatever the record.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import enum
import functools
import math
import struct
import time
import tracemalloc
import zlib
from collections.abc import Callable
from decimal import Decimal
from typing import Any, NamedTuple

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import cacheorm as co
from cacheorm.fields import Field, FieldValidationError
from cacheorm.serializers.base import KeyedSerializer
from cacheorm.serializers.wrappers import DEFAULT_MAX_RATIO, INFLATE_FLOOR
from tests.proto_gen import note_pb2, person_pb2
from tests.records import COUNTER, PERSON, Person

SECRET = b"s" * 32
MiB = 1024 * 1024

# ----------------------------------------------------------- signed binds the key


def _serializers() -> dict[str, co.Serializer]:
    return {
        "signed": co.signed("msgpack", SECRET),
        "signed(compressed)": co.signed(co.compressed("msgpack", min_size=0), SECRET),
        "compressed(signed)": co.compressed(co.signed("msgpack", SECRET), min_size=0),
        "compressed(signed(json))": co.compressed(co.signed("json", SECRET), min_size=0),
    }


@pytest.mark.parametrize("name", list(_serializers()))
@pytest.mark.parametrize("size", [10, 5000])
def test_signed_payloads_are_valid_only_under_their_key(name: str, size: int) -> None:
    serializer = _serializers()[name]
    keyed = _keyed(serializer)
    obj: co.Primitive = {"name": "Sam", "text": "a" * size}
    data = keyed.dumps_keyed(obj, b"Person:Sam")
    assert keyed.loads_keyed(data, b"Person:Sam") == obj
    for other in (b"Person:Bob", b"app/Person:Sam", b"", b"Person:Sam\x00"):
        with pytest.raises(co.DecodeError):
            keyed.loads_keyed(data, other)
    with pytest.raises(co.DecodeError):
        serializer.loads(data)  # plain loads is the empty key


def _keyed(serializer: co.Serializer) -> KeyedSerializer:
    assert isinstance(serializer, KeyedSerializer)
    return serializer


def test_plain_dumps_signs_for_the_empty_key() -> None:
    for serializer in _serializers().values():
        keyed = _keyed(serializer)
        data = serializer.dumps({"x": 1})
        assert serializer.loads(data) == {"x": 1}
        assert keyed.loads_keyed(data, b"") == {"x": 1}
        with pytest.raises(co.DecodeError):
            keyed.loads_keyed(data, b"Person:Sam")


def test_the_key_length_is_signed_so_bytes_cannot_move_between_key_and_payload() -> None:
    """Unprefixed, key ``k + p[:3]`` with payload ``p[3:]`` would have the same MAC input."""
    keyed = _keyed(co.signed(_RawBytes(), SECRET))
    data = keyed.dumps_keyed(b"Sam-payload", b"Person:")
    tag, payload = data[:32], data[32:]
    assert keyed.loads_keyed(data, b"Person:") == b"Sam-payload"
    with pytest.raises(co.DecodeError):
        keyed.loads_keyed(tag + payload[3:], b"Person:" + payload[:3])


class _RawBytes:
    """A serializer of bytes as themselves: the payload is fully under test control."""

    def dumps(self, obj: co.Primitive) -> bytes:
        assert isinstance(obj, bytes)
        return obj

    def loads(self, data: bytes) -> co.Primitive:
        return data


def test_compressed_passes_the_key_to_plain_inner_serializers_unchanged() -> None:
    keyed = _keyed(co.compressed("msgpack", min_size=0))
    data = keyed.dumps_keyed({"x": "a" * 100}, b"any")
    assert data == co.compressed("msgpack", min_size=0).dumps({"x": "a" * 100})
    assert keyed.loads_keyed(data, b"another") == {"x": "a" * 100}


@pytest.mark.timeout(60)
@pytest.mark.parametrize("name", ["signed(compressed)", "compressed(signed)"])
def test_a_signed_payload_copied_under_another_key_is_refused_on_every_backend(
    backend: co.Backend, name: str
) -> None:
    people = co.Repo(PERSON, backend=backend, serializer=_serializers()[name])
    co.insert(people, Person("Sam", 178.8))
    co.insert(people, Person("Bob", 170.0))
    planted = backend.get(PERSON.encode_key("Sam"))
    assert planted is not None
    backend.set(PERSON.encode_key("Bob"), planted)
    backend.set(PERSON.encode_key("Sam", namespace="other"), planted)
    start = time.monotonic()
    with pytest.raises(co.DecodeError):
        co.get(people, "Bob")
    with pytest.raises(co.DecodeError):
        co.get(people.replace(namespace="other"), "Sam")
    assert co.get(people, "Sam") == Person("Sam", 178.8)
    assert time.monotonic() - start < 5


# ---------------------------------------------------------- decompression bombs


def _empty_maps(count: int, marker: int = 1) -> bytes:
    """A msgpack array of ``count`` empty maps, zlib-compressed without holding it inflated."""
    deflate = zlib.compressobj(9)
    parts = [bytes([marker]), deflate.compress(b"\xdd" + struct.pack(">I", count))]
    chunk = b"\x80" * MiB
    left = count
    while left:
        parts.append(deflate.compress(chunk[: min(left, MiB)]))
        left -= min(left, MiB)
    parts.append(deflate.flush())
    return b"".join(parts)


def _limit(stored: int) -> int:
    return INFLATE_FLOOR + DEFAULT_MAX_RATIO * stored


def _fitting_bomb(count: int) -> bytes:
    """The worst a planted payload can do: padded until the bound admits its inflation."""
    data = _empty_maps(count, marker=2)
    inflated = count + 5
    needed = -(-(inflated - INFLATE_FLOOR) // DEFAULT_MAX_RATIO)
    data += bytes(max(0, needed - len(data)))
    assert _limit(len(data)) >= inflated
    return data


def _measure(call: Callable[[], object]) -> tuple[type[BaseException] | None, float, int]:
    """(exception type raised, seconds without tracing, peak traced bytes)."""
    start = time.perf_counter()
    raised: type[BaseException] | None = None
    try:
        call()
    except Exception as err:
        raised = type(err)
    elapsed = time.perf_counter() - start
    tracemalloc.start()
    try:
        with contextlib.suppress(Exception):
            call()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return raised, elapsed, peak


BOMB_SERIALIZERS: dict[str, Callable[[], co.Serializer]] = {
    "compressed(msgpack)": lambda: co.compressed("msgpack"),
    "compressed(signed(msgpack))": lambda: co.compressed(co.signed("msgpack", SECRET)),
    "compressed(json)": lambda: co.compressed("json"),
}


@pytest.mark.timeout(60)
@pytest.mark.parametrize("count", [16_000_000, 64_000_000])
def test_a_bomb_that_inflates_past_the_bound_is_refused_at_once(count: int) -> None:
    """Before the bound: 15.5 KB inflating to 16 MB of empty maps took 1.2 GB and 4 s."""
    bomb = _empty_maps(count)
    assert len(bomb) < count / 900
    for make in BOMB_SERIALIZERS.values():
        raised, elapsed, peak = _measure(functools.partial(make().loads, bomb))
        assert raised is co.DecodeError
        assert elapsed < 0.5
        # The inflated bytes, at most the bound, and nothing decoded.
        assert peak < 2 * _limit(len(bomb)) + MiB


@pytest.mark.timeout(60)
@pytest.mark.parametrize("count", [300_000, 1_000_000])
def test_the_worst_bomb_the_bound_admits_costs_memory_proportional_to_its_size(
    count: int,
) -> None:
    bomb = _fitting_bomb(count)
    people = co.Repo(PERSON, serializer=co.compressed("msgpack"))
    assert people.backend is not None
    people.backend.set(PERSON.encode_key("Sam"), bomb)
    raised, elapsed, peak = _measure(lambda: co.get(people, "Sam"))
    assert raised is co.DecodeError
    assert elapsed < 2
    # An empty map is 64 bytes plus its 8-byte slot in the list: ~72 per inflated byte.
    assert peak < 80 * _limit(len(bomb)) + MiB
    assert peak < 1500 * len(bomb) + 6 * MiB


@pytest.mark.timeout(60)
def test_a_planted_bomb_is_a_decode_error_on_every_backend(backend: co.Backend) -> None:
    bomb = _empty_maps(16_000_000)
    for make in BOMB_SERIALIZERS.values():
        people = co.Repo(PERSON, backend=backend, serializer=make())
        backend.set(PERSON.encode_key("Sam"), bomb)
        start = time.monotonic()
        with pytest.raises(co.DecodeError, match="inflates past"):
            co.get(people, "Sam")
        assert time.monotonic() - start < 2


def _big(record_text: str) -> Person:
    return Person("Sam", 1.0, email=record_text)


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    "make",
    [
        lambda: co.compressed("msgpack"),
        lambda: co.signed(co.compressed("msgpack"), SECRET),
        lambda: co.compressed(co.signed("msgpack", SECRET)),
        lambda: co.compressed("json"),
    ],
)
def test_large_highly_compressible_records_still_round_trip(
    make: Callable[[], co.Serializer],
) -> None:
    """5 MB of one character compresses ~230x; it is padded to 1/16, never refused."""
    people = co.Repo(PERSON, serializer=make())
    record = _big("a" * 5_000_000)
    assert co.insert(people, record) == record
    assert co.get(people, "Sam") == record
    assert people.backend is not None
    stored = people.sync_backend.get(PERSON.encode_key("Sam"))
    assert stored is not None
    assert 5_000_000 / DEFAULT_MAX_RATIO - INFLATE_FLOOR < len(stored) < 5_000_000 / 10


@pytest.mark.parametrize(
    "size",
    [
        INFLATE_FLOOR - 1,
        INFLATE_FLOOR,
        INFLATE_FLOOR + 1,
        INFLATE_FLOOR + 17,
        3 * INFLATE_FLOOR + 5,
        MiB,
    ],
)
@pytest.mark.parametrize("ratio", [1, 2, DEFAULT_MAX_RATIO])
def test_the_writer_respects_the_bound_of_its_reader_at_every_size(size: int, ratio: int) -> None:
    serializer = co.compressed(_RawBytes(), min_size=0, max_ratio=ratio)
    for payload in (bytes(size), b"ab" * (size // 2) + b"c" * (size % 2)):
        data = serializer.dumps(payload)
        assert data[0] in (1, 2)
        assert len(payload) <= min(MiB * 64, INFLATE_FLOOR + ratio * len(data))
        assert serializer.loads(data) == payload


def test_padding_is_checked_and_a_payload_over_max_size_is_stored_raw() -> None:
    serializer = co.compressed(_RawBytes(), min_size=0, max_size=1000)
    assert serializer.dumps(bytes(1001))[0] == 0
    assert serializer.loads(serializer.dumps(bytes(1001))) == bytes(1001)
    padded = co.compressed(_RawBytes(), min_size=0).dumps(bytes(MiB))
    assert padded[0] == 2
    for bad in (padded[:-1] + b"\x01", b"\x01" + padded[1:]):
        with pytest.raises(co.DecodeError, match="after the zlib payload"):
            co.compressed(_RawBytes(), min_size=0).loads(bad)
    with pytest.raises(co.DecodeError, match="inflates past"):
        co.compressed(_RawBytes(), min_size=0, max_ratio=8).loads(padded)


# ---------------------------------------------------- reads refuse what writes refuse


class Shade(enum.Enum):
    DARK = "dark"


class Item(NamedTuple):
    label: str
    weight: float


class Thing(NamedTuple):
    name: str
    ratio: float
    total: int
    price: Decimal
    rounded: Decimal
    when: dt.datetime
    shade: Shade
    items: list[Item]
    scores: dict[str, float]
    extra: Any


THING = co.Schema(
    Thing,
    key="name",
    fields={
        "price": co.DecimalField(decimal_places=2),
        "rounded": co.DecimalField(decimal_places=2, auto_round=True),
    },
)
GOOD = Thing(
    "t",
    1.5,
    7,
    Decimal("1.25"),
    Decimal("2.50"),
    dt.datetime(2026, 1, 2, tzinfo=dt.UTC),
    Shade.DARK,
    [Item("a", 1.0), Item("b", 2.0)],
    {"x": 1.0},
    {"deep": [1, 2.5, "s"]},
)


def _planted(**changes: co.Primitive) -> dict[str, co.Primitive]:
    payload = THING.dump(THING.prepare(GOOD))
    payload.update(changes)
    return payload


# (field path in the error, primitive payload changes) that a write would refuse.
REFUSED: dict[str, tuple[str, dict[str, co.Primitive]]] = {
    "nan float": ("ratio", {"ratio": math.nan}),
    "inf float": ("ratio", {"ratio": math.inf}),
    "int too large for a float": ("ratio", {"ratio": 10**400}),
    "int64 overflow": ("total", {"total": 2**63}),
    "int64 underflow": ("total", {"total": -(2**63) - 1}),
    "decimal NaN": ("price", {"price": "NaN"}),
    "decimal infinity": ("price", {"price": "-Infinity"}),
    "decimal places": ("price", {"price": "1.005"}),
    "fractional offset": ("when", {"when": "2026-01-02T00:00:00+05:00:00.500000"}),
    "enum value": ("shade", {"shade": "light"}),
    "lone surrogate": ("name", {"name": "\ud800"}),
    "nested nan": (
        "items[1].weight",
        {"items": [{"label": "a", "weight": 1.0}, {"label": "b", "weight": math.nan}]},
    ),
    "dict value inf": ("scores['x']", {"scores": {"x": -math.inf}}),
    "dict key surrogate": ("scores['\\ud800']", {"scores": {"\ud800": 1.0}}),
    "json nan": ("extra", {"extra": {"deep": [math.nan]}}),
    "json int64": ("extra", {"extra": [2**64]}),
    "json bytes": ("extra", {"extra": [b"raw"]}),
}


@pytest.mark.parametrize("case", list(REFUSED))
def test_a_read_refuses_what_a_write_refuses_naming_schema_key_and_field(case: str) -> None:
    where, changes = REFUSED[case]
    payload = _planted(**changes)
    with pytest.raises(co.DecodeError) as info:
        THING.load(payload, "t")
    assert f"cannot load Thing (key 't'): {where}:" in str(info.value)


def test_what_a_read_accepts_a_write_accepts_unchanged() -> None:
    """Rounding on read is the write's rounding: the loaded record is the one stored."""
    record = THING.load(_planted(rounded="2.505"), "t")
    assert record.rounded == Decimal("2.50")
    assert THING.prepare(record) == record
    assert THING.load(_planted(ratio=3), "t").ratio == 3.0


MSGPACK_REFUSED = {
    "nan": msgpack.packb({"name": "Sam", "height": math.nan}),
    "inf": msgpack.packb({"name": "Sam", "height": -math.inf}),
}
JSON_REFUSED = {
    "1e400": b'{"name":"Sam","height":1e400}',
    "-1e400": b'{"name":"Sam","height":-1e400}',
    "NaN": b'{"name":"Sam","height":NaN}',
    "lone surrogate": b'{"name":"Sam","height":1.0,"email":"\\ud800"}',
}


@pytest.mark.timeout(60)
def test_planted_values_a_write_refuses_are_decode_errors_on_every_backend(
    backend: co.Backend,
) -> None:
    planted = [("msgpack", data) for data in MSGPACK_REFUSED.values()]
    planted += [("json", data) for data in JSON_REFUSED.values()]
    fresh = Person("Sam", 1.0)
    for serializer, data in planted:
        people = co.Repo(PERSON, backend=backend, serializer=serializer)
        backend.set(PERSON.encode_key("Sam"), data)
        with pytest.raises(co.DecodeError, match="Person"):
            co.get(people, "Sam")
        # get_or_load treats it as a miss and overwrites it.
        assert co.get_or_load(people, "Sam", lambda _: fresh) == fresh
        assert co.update(people, "Sam", height=2.0) == Person("Sam", 2.0)
    counters = co.Repo(COUNTER, backend=backend)
    backend.set(COUNTER.encode_key("hits"), msgpack.packb({"name": "hits", "value": 2**63}))
    with pytest.raises(co.DecodeError, match=r"Counter \(key 'hits'\): value: integer"):
        co.get(counters, "hits")


def test_json_loads_refuses_numbers_that_overflow_a_float() -> None:
    for data in (b"1e400", b"[-1e400]", b'{"a":1E+999}'):
        with pytest.raises(co.DecodeError, match="out of the float range"):
            co.JSONSerializer().loads(data)
    assert co.JSONSerializer().loads(b"[1e308, -0.0, 5e-324]") == [1e308, -0.0, 5e-324]


# Values at the edge of what some field stores, each likely to be drawn.
EDGES: list[co.Primitive] = [
    math.nan,
    math.inf,
    -math.inf,
    2**63 - 1,
    2**63,
    -(2**63) - 1,
    10**400,
    "NaN",
    "-Infinity",
    "1.005",
    "1.5",
    "1e999999",
    "\ud800",
    "2026-01-02T03:04:05+05:00:00.500000",
    "2026-01-02T03:04:05.123456+01:00",
    "12:00:00+01:00",
    "2026-01-02",
    "12345678-1234-5678-1234-567812345678",
    "red",
    1,
    b"x",
    [1.0, math.nan],
    [2**64],
    {"\ud800": 1},
    {"a": [b"x"]},
]


def _primitives() -> st.SearchStrategy[co.Primitive]:
    scalars = (
        st.sampled_from(EDGES)
        | st.none()
        | st.booleans()
        | st.integers(-(2**70), 2**70)
        | st.floats()
        | st.text(alphabet=st.characters(codec=None), max_size=5)
        | st.binary(max_size=5)
    )
    return st.sampled_from(EDGES) | st.recursive(
        scalars,
        lambda inner: (
            st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner, max_size=3)
        ),
        max_leaves=8,
    )


class Color(enum.Enum):
    RED = "red"
    ONE = 1


FIELDS: list[Field[object]] = [
    co.StringField(),
    co.IntegerField(),
    co.FloatField(),
    co.BooleanField(),
    co.BinaryField(),
    co.DecimalField(),
    co.DecimalField(decimal_places=2),
    co.DecimalField(decimal_places=1, auto_round=True),
    co.DateTimeField(),
    co.DateField(),
    co.TimeField(),
    co.TimestampField(resolution=1000),
    co.TimestampField(utc=True),
    co.UUIDField(),
    co.EnumField(Color),
    co.ListField(co.FloatField()),
    co.ListField(),
    co.JSONField(),
]


@settings(max_examples=300, deadline=None)
@given(data=_primitives())
def test_every_value_a_field_loads_it_would_also_store_unchanged(data: co.Primitive) -> None:
    for field in FIELDS:
        try:
            value = field.load(data)
        except (TypeError, ValueError, OverflowError):
            continue
        assert field.prepare(value) == value, (field, data)
        assert field.load(field.dump(field.prepare(value))) == value, (field, data)


# ------------------------------------------------------------------- protobuf


class Prioritised(NamedTuple):
    priority: int
    title: str


def test_a_protobuf_payload_lacking_an_optional_key_field_is_a_decode_error() -> None:
    """proto3 ``optional`` gives the key presence: absent, it loads as None, which is refused."""
    schema = co.Schema(Prioritised, key="priority")
    serializer = co.ProtobufSerializer(note_pb2.Note)
    assert schema.load(serializer.loads(serializer.dumps({"priority": 0, "title": ""})), 0) == (
        Prioritised(0, "")
    )
    for data in (b"", note_pb2.Note(title="x").SerializeToString()):
        with pytest.raises(co.DecodeError, match="priority"):
            schema.load(serializer.loads(data), 3)


def test_an_empty_protobuf_payload_is_refused_under_any_key_but_the_default() -> None:
    """Without presence the key decodes as its default: the read's key check refuses it."""
    people = co.Repo(PERSON, serializer=co.ProtobufSerializer(person_pb2.Person))
    assert people.backend is not None
    for data in (b"", person_pb2.Person(height=1.0).SerializeToString()):
        people.backend.set(PERSON.encode_key("Sam"), data)
        with pytest.raises(co.DecodeError):
            co.get(people, "Sam")


# -------------------------------------------------------------- check_changes


class Row(NamedTuple):
    key: str
    n: int
    ratio: float
    note: str | None
    filled: int
    items: list[Item]


ROW = co.Schema(Row, key="key", defaults={"filled": 0})
ROW_RECORD = Row("a", 1, 0.5, None, 3, [Item("x", 1.0)])


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"nope": 1}, r"Row has no field\(s\) 'nope'; its fields are key, n, .*: use one"),
        ({"key": "a"}, r"Row\.key is part of the key .*delete the old one"),
        ({"key": "b"}, r"Row\.key is part of the key"),
        ({"n": None}, r"Row\.n cannot be None: .*Schema\(defaults=\.\.\.\)"),
        ({"n": "1"}, r"Row\.n: expected int, got str"),
        ({"n": 2**63}, r"Row\.n: integer .* outside the signed 64-bit range"),
        ({"ratio": math.inf}, r"Row\.ratio: inf is not finite"),
        ({"items": [Item("x", 1.0), Item("y", math.nan)]}, r"Row\.items\[1\]\.weight: nan"),
    ],
)
def test_check_changes_refuses_what_evolve_refuses_for_any_record(
    changes: dict[str, object], match: str
) -> None:
    with pytest.raises(co.ValidationError, match=match):
        ROW.check_changes(changes)
    with pytest.raises(co.ValidationError, match=match):
        ROW.evolve(ROW_RECORD, changes)


def test_check_changes_accepts_none_where_the_field_or_a_schema_default_takes_it() -> None:
    ROW.check_changes({"note": None, "filled": None, "n": 5, "items": []})
    assert ROW.evolve(ROW_RECORD, {"note": None, "filled": None}) == ROW_RECORD._replace(filled=0)


def test_check_changes_reports_the_path_of_a_nested_value() -> None:
    with pytest.raises(FieldValidationError) as info:
        ROW.check_changes({"items": [Item("x", 1.0), Item("y", math.nan)]})
    assert info.value.path == ("Row", "items", "[1]", "weight")


def test_check_changes_refuses_a_struct_value_its_dump_refuses() -> None:
    class Box(NamedTuple):
        key: str
        blob: object

    def dump(value: object) -> co.Primitive:
        raise RuntimeError("cannot")

    schema = co.Schema(Box, key="key", fields={"blob": co.StructField(dump=dump, load=lambda p: p)})
    with pytest.raises(co.ValidationError, match=r"Box\.blob: StructField dump failed"):
        schema.check_changes({"blob": 1})


CHANGE_VALUES = st.one_of(
    st.none(),
    st.integers(-(2**64), 2**64),
    st.floats(),
    st.text(max_size=3),
    st.lists(st.builds(Item, st.text(max_size=2), st.floats()), max_size=2),
)


@settings(max_examples=300, deadline=None)
@given(
    changes=st.dictionaries(
        st.sampled_from(["key", "n", "ratio", "note", "filled", "items", "bogus"]),
        CHANGE_VALUES,
        max_size=3,
    )
)
def test_check_changes_raises_exactly_when_evolve_does(changes: dict[str, object]) -> None:
    """For a record type whose constructor accepts anything, evolve adds no rule of its own."""
    refused: str | None = None
    try:
        ROW.check_changes(changes)
    except co.ValidationError as err:
        refused = str(err)
    if refused is None:
        evolved = ROW.evolve(ROW_RECORD, changes)
        # An update's shortcut for a record read back: the same record, the same types.
        read = ROW.prepare(ROW_RECORD)
        shortcut = ROW.evolve(read, changes, checked=True, prepared=True)
        assert shortcut == evolved
        assert list(map(type, shortcut)) == list(map(type, evolved))
    else:
        with pytest.raises(co.ValidationError) as info:
            ROW.evolve(ROW_RECORD, changes)
        assert str(info.value) == refused


def test_update_many_with_one_none_for_a_required_field_writes_nothing() -> None:
    """Issue 9, item 12: ``a`` used to be written before ``b``'s None was refused."""
    rows = co.Repo(ROW)
    co.insert_many(rows, [ROW_RECORD, ROW_RECORD._replace(key="b")])
    with pytest.raises(co.ValidationError, match=r"Row\.n cannot be None"):
        co.update_many(rows, {"a": {"n": 10}, "b": {"n": None}})  # type: ignore[typeddict-item]  # on purpose
    assert co.get_many(rows, ["a", "b"]) == [ROW_RECORD, ROW_RECORD._replace(key="b")]
