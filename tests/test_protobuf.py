"""ProtobufSerializer: primitives <-> a message's exact wire format, and back."""

from __future__ import annotations

import enum
import math
import struct
from collections.abc import Iterator
from typing import cast

import pytest
from google.protobuf import message as pb_message
from hypothesis import given, settings
from hypothesis import strategies as st

import cacheorm as co
from tests.proto_gen import note_pb2, person_pb2

PERSON = co.ProtobufSerializer(person_pb2.Person)
NOTE = co.ProtobufSerializer(note_pb2.Note)

INT32 = st.integers(-(2**31), 2**31 - 1)
INT64 = st.integers(-(2**63), 2**63 - 1)
DOUBLE = st.floats(allow_nan=False)
# Values a 32-bit float holds exactly, so a `float` field round-trips them.
FLOAT32 = st.floats(width=32, allow_nan=False)


def _author(name: str, karma: int) -> co.Primitive:
    return {"name": name, "karma": karma}


AUTHOR = st.builds(_author, st.text(), st.integers(0, 2**32 - 1))


def notes() -> st.SearchStrategy[dict[str, co.Primitive]]:
    """Complete Note dicts: what loads returns, so they must round-trip exactly."""
    return st.fixed_dictionaries(
        {
            "note_id": INT64,
            "title": st.text(),
            "author": st.none() | AUTHOR,
            "tags": st.lists(st.text(), max_size=3),
            "editors": st.lists(AUTHOR, max_size=3),
            "visibility": st.sampled_from([0, 1, 2]),
            "priority": st.none() | INT32,
            "attachment": st.binary(),
            "counters": st.dictionaries(st.text(), INT64, max_size=3),
            "reviewers": st.dictionaries(st.text(), AUTHOR, max_size=3),
            "ratio": FLOAT32,
            "delta": INT32,
            "checksum": st.integers(0, 2**64 - 1),
            "editor_of_the_day": st.none() | AUTHOR,
            "samples": st.lists(st.floats(), max_size=3),
        }
    ).map(lambda note: cast("dict[str, co.Primitive]", note))


def same(a: object, b: object) -> bool:
    """Exact equality: types all the way down, floats bit for bit."""
    if type(a) is not type(b):
        return False
    if isinstance(a, float):
        assert isinstance(b, float)
        return struct.pack(">d", a) == struct.pack(">d", b)
    if isinstance(a, dict):
        assert isinstance(b, dict)
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list):
        assert isinstance(b, list)
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    return a == b


@settings(max_examples=80)
@given(note=notes())
def test_complete_dicts_round_trip_exactly(note: dict[str, co.Primitive]) -> None:
    assert same(NOTE.loads(NOTE.dumps(note)), note)


@settings(max_examples=40)
@given(note=notes())
def test_stored_bytes_are_the_deterministic_wire_format(note: dict[str, co.Primitive]) -> None:
    data = NOTE.dumps(note)
    parsed = note_pb2.Note.FromString(data)
    assert data == parsed.SerializeToString(deterministic=True)
    assert NOTE.to_message(note) == parsed


def test_wire_format_matches_a_hand_built_message() -> None:
    data = PERSON.dumps({"name": "Sam", "height": 178.8, "married": True, "email": None})
    expected = person_pb2.Person(name="Sam", height=178.8, married=True)
    assert data == expected.SerializeToString(deterministic=True)


def test_defaults_proto3_does_not_store_come_back() -> None:
    """Zero values are absent on the wire, yet every field is in the loaded dict."""
    data = PERSON.dumps({"name": "", "height": 0.0, "married": False, "age": 0})
    assert data == b""
    assert PERSON.loads(data) == {
        "name": "",
        "height": 0.0,
        "married": False,
        "email": None,
        "age": 0,
    }
    loaded = NOTE.loads(b"")
    assert isinstance(loaded, dict)
    assert loaded["tags"] == []
    assert loaded["counters"] == {}
    assert loaded["attachment"] == b""
    assert loaded["visibility"] == 0


def test_optional_distinguishes_empty_from_none() -> None:
    assert PERSON.loads(PERSON.dumps({"email": ""})) == PERSON.loads(PERSON.dumps({"email": ""}))
    empty = PERSON.loads(PERSON.dumps({"email": ""}))
    unset = PERSON.loads(PERSON.dumps({"email": None}))
    assert isinstance(empty, dict)
    assert isinstance(unset, dict)
    assert empty["email"] == ""
    assert unset["email"] is None


def test_nested_message_of_defaults_is_a_dict_not_none() -> None:
    loaded = NOTE.loads(NOTE.dumps({"author": {"name": "", "karma": 0}}))
    assert isinstance(loaded, dict)
    assert loaded["author"] == {"name": "", "karma": 0}


class Visibility(enum.IntEnum):
    UNSPECIFIED = 0
    PUBLIC = 1
    PRIVATE = 2


def test_enums_travel_as_their_numbers() -> None:
    loaded = NOTE.loads(NOTE.dumps({"visibility": Visibility.PRIVATE}))
    assert isinstance(loaded, dict)
    assert loaded["visibility"] == 2
    assert type(loaded["visibility"]) is int
    assert Visibility(loaded["visibility"]) is Visibility.PRIVATE
    assert note_pb2.Note.FromString(NOTE.dumps({"visibility": 1})).visibility == (
        note_pb2.VISIBILITY_PUBLIC
    )


def test_double_fields_carry_nan_and_inf_exactly() -> None:
    odd_nan = struct.unpack(">d", bytes.fromhex("fff8000000000abc"))[0]
    payload: dict[str, co.Primitive] = {"samples": [odd_nan, math.inf, -math.inf, -0.0]}
    loaded = NOTE.loads(NOTE.dumps(payload))
    assert isinstance(loaded, dict)
    assert same(loaded["samples"], payload["samples"])


def test_oneof_members() -> None:
    contact = co.ProtobufSerializer(note_pb2.Contact)
    assert contact.loads(contact.dumps({"name": "x", "phone": "123"})) == {
        "name": "x",
        "email": None,
        "phone": "123",
    }
    assert contact.loads(contact.dumps({"email": "a@b", "phone": None})) == {
        "name": "",
        "email": "a@b",
        "phone": None,
    }
    with pytest.raises(co.ValidationError, match="same oneof"):
        contact.dumps({"email": "a@b", "phone": "123"})


@pytest.mark.parametrize(
    ("payload", "match"),
    [
        ({"nope": 1}, "has no field 'nope'"),
        ({"author": {"nope": 1}}, "has no field 'nope'"),
        ({"note_id": True}, "note_id must be an int"),
        ({"note_id": 1.5}, "note_id must be an int"),
        ({"note_id": "1"}, "note_id must be an int"),
        ({"title": b"x"}, "title must be a str"),
        ({"attachment": "x"}, "attachment must be bytes"),
        ({"ratio": "1"}, "ratio must be a float"),
        ({"ratio": True}, "ratio must be a float"),
        ({"note_id": None}, "cannot be None"),
        ({"tags": None}, "cannot be None"),
        ({"tags": "abc"}, "tags must be a list"),
        ({"tags": [1]}, r"tags\[0\] must be a str"),
        ({"editors": [{"karma": "x"}]}, r"editors\[0\].karma must be an int"),
        ({"counters": {"a": "b"}}, "must be an int"),
        ({"counters": [1]}, "must be a dict"),
        ({"author": "Sam"}, "author must be a dict"),
        ({"checksum": -1}, "out of range"),
        ({"delta": 2**31}, "out of range"),
        ({"note_id": 2**63}, "out of range"),
    ],
)
def test_wrong_values_are_validation_errors(payload: dict[str, co.Primitive], match: str) -> None:
    with pytest.raises(co.ValidationError, match=match):
        NOTE.dumps(payload)


@pytest.mark.parametrize("payload", [None, 1, "x", [1], b"x"])
def test_non_dict_payload_is_a_validation_error(payload: co.Primitive) -> None:
    with pytest.raises(co.ValidationError, match="must be a dict"):
        NOTE.dumps(payload)


def test_int_keyed_maps_are_refused_at_construction() -> None:
    with pytest.raises(co.SchemaError, match="by_rank"):
        co.ProtobufSerializer(note_pb2.Scoreboard)


@pytest.mark.parametrize("data", [b"\xff\xff", b"\x0a\x05ab", b"\x12\x02\xff\xfe"])
def test_corrupt_bytes_are_decode_errors_chained_to_protobuf(data: bytes) -> None:
    with pytest.raises(co.DecodeError) as info:
        NOTE.loads(data)
    assert isinstance(info.value.__cause__, pb_message.DecodeError)


@settings(max_examples=200)
@given(data=st.binary(max_size=64))
def test_garbage_gives_a_dict_or_decode_error(data: bytes) -> None:
    try:
        result = NOTE.loads(data)
    except co.DecodeError:
        return
    assert isinstance(result, dict)
    assert set(result) == {field.name for field in note_pb2.Note.DESCRIPTOR.fields}


@pytest.fixture
def registered() -> Iterator[str]:
    co.registry.register("protobuf.person", co.ProtobufSerializer(person_pb2.Person))
    yield "protobuf.person"
    co.registry.unregister("protobuf.person")


def test_registers_and_composes_with_wrappers(registered: str) -> None:
    serializer = co.signed(co.compressed(co.registry.resolve(registered), min_size=0), b"k" * 32)
    record: co.Primitive = {
        "name": "Sam",
        "height": 178.8,
        "married": False,
        "email": None,
        "age": 0,
    }
    assert serializer.loads(serializer.dumps(record)) == record


def test_is_a_hashable_value() -> None:
    assert co.ProtobufSerializer(person_pb2.Person) == PERSON
    assert hash(co.ProtobufSerializer(person_pb2.Person)) == hash(PERSON)
    assert isinstance(PERSON, co.Serializer)
