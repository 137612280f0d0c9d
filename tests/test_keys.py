"""Keys: readable, injective, separated by namespace/name/version, stable, key_format."""

from __future__ import annotations

import datetime as dt
import enum
import os
import subprocess
import sys
import uuid
from dataclasses import dataclass
from decimal import Decimal
from typing import NamedTuple, TypedDict

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import cacheorm as co
from cacheorm.keys import KeyCodec, escape_part


class Person(NamedTuple):
    name: str
    height: float


class Collection(TypedDict):
    collector: str
    note_id: int
    remark: str


class Color(enum.Enum):
    RED = "red"
    ONE = 1


class Thing(NamedTuple):
    id: int
    uid: uuid.UUID
    day: dt.date
    color: Color
    blob: bytes
    price: Decimal
    flag: bool
    ratio: float


PERSON = co.Schema(Person, key="name")
COLLECTION = co.Schema(Collection, key=("collector", "note_id"))


def test_default_keys_are_readable() -> None:
    assert PERSON.encode_key("Sam") == b"Person:Sam"
    assert PERSON.encode_key("Sam", "app") == b"app/Person:Sam"
    versioned = co.Schema(Person, key="name", version=2)
    assert versioned.encode_key("Sam", "app") == b"app/Person@2:Sam"
    assert COLLECTION.encode_key(("Bob", 1)) == b"Collection:Bob:1"
    named = co.Schema(Person, key="name", name="people")
    assert named.encode_key("Sam") == b"people:Sam"
    assert PERSON.encode_key("Zoë ☃") == "Person:Zoë ☃".encode()


def test_separators_in_key_parts_are_escaped() -> None:
    assert COLLECTION.encode_key(("a:b", 1)) != co.Schema(
        Collection, key=("collector", "note_id")
    ).encode_key(("a", 1))
    pairs = co.Schema(Collection, key=("collector", "remark"))
    assert pairs.encode_key(("a:b", "c")) == b"Collection:a%3Ab:c"
    assert pairs.encode_key(("a", "b:c")) == b"Collection:a:b%3Ac"
    assert pairs.encode_key(("a%3Ab", "c")) == b"Collection:a%253Ab:c"
    assert co.Schema(Person, key="name").encode_key("x", "a/b:c") == b"a%2Fb%3Ac/Person:x"


def test_namespaces_names_and_versions_never_share_keys() -> None:
    keys = {
        co.Schema(Person, key="name", name=name, version=version).encode_key("Sam", ns)
        for ns in ("", "app", "Person")
        for name in ("Person", "Sam", "app")
        for version in (None, "1", "2")
    }
    assert len(keys) == 3 * 3 * 3


SEPARATORS = st.text(alphabet="ab:%/@#2", max_size=4)
HEADER = st.tuples(
    SEPARATORS,  # namespace
    SEPARATORS.filter(bool),  # schema name
    st.none() | SEPARATORS.filter(bool),  # version
)
PARTS = st.lists(SEPARATORS, min_size=1, max_size=3).map(tuple)


def _codec(name: str, version: str | None, arity: int) -> KeyCodec:
    return KeyCodec(
        name=name,
        version=version,
        key_fields=tuple(f"f{i}" for i in range(arity)),
        key_rules=tuple(co.StringField() for _ in range(arity)),
        key_format=None,
    )


def _encode(header: tuple[str, str, str | None], parts: tuple[str, ...]) -> bytes:
    namespace, name, version = header
    codec = _codec(name, version, len(parts))
    return codec.encode(parts if len(parts) > 1 else parts[0], namespace)


@settings(max_examples=400, deadline=None)
@given(a=st.tuples(HEADER, PARTS), b=st.tuples(HEADER, PARTS))
def test_default_keys_are_injective(
    a: tuple[tuple[str, str, str | None], tuple[str, ...]],
    b: tuple[tuple[str, str, str | None], tuple[str, ...]],
) -> None:
    # Any two different (namespace, name, version, key) give different keys,
    # even across schemas of different arity.
    assert (_encode(*a) == _encode(*b)) == (a == b)


@settings(max_examples=200, deadline=None)
@given(a=HEADER, b=st.tuples(HEADER, PARTS))
def test_counter_keys_never_collide_with_record_keys(
    a: tuple[str, str, str | None], b: tuple[tuple[str, str, str | None], tuple[str, ...]]
) -> None:
    namespace, name, version = a
    counter = _codec(name, version, 1).counter_key(namespace)
    assert counter != _encode(*b)


def test_key_types_render_injectively() -> None:
    schema = co.Schema(Thing, key=tuple(Thing._fields))
    key = (
        -5,
        uuid.UUID(int=1),
        dt.date(2026, 1, 2),
        Color.ONE,
        b"\x00:",
        Decimal("1.50"),
        True,
        0.5,
    )
    assert schema.encode_key(key) == (
        b"Thing:-5:00000000-0000-0000-0000-000000000001:2026-01-02:1:003a:1.50:True:0.5"
    )
    assert schema.encode_key((-5, *key[1:3], Color.RED, *key[4:])).split(b":")[4] == b"red"


@dataclass(frozen=True, slots=True)
class _Int(co.IntegerField):
    """IntegerField under another type: its keys take the general path."""


@dataclass(frozen=True, slots=True)
class _Str(co.StringField):
    """StringField under another type: its keys take the general path."""


def _codecs(rule: co.Field[object], general: co.Field[object]) -> tuple[KeyCodec, KeyCodec]:
    def make(r: co.Field[object]) -> KeyCodec:
        return KeyCodec(name="T", version="2", key_fields=("k",), key_rules=(r,), key_format=None)

    return make(rule), make(general)


@given(
    key=st.one_of(
        st.integers(min_value=-(2**70), max_value=2**70),
        st.booleans(),
        st.floats(allow_nan=False),
        st.text(),
        st.sampled_from(["a:b", "50%", "x%3Ay", "café", "\ud800"]),
    ),
    namespace=st.sampled_from(["", "ns", "a/b:c"]),
)
def test_int_and_text_keys_encode_as_the_general_path_does(key: object, namespace: str) -> None:
    # The direct path for plain int and ASCII text keys: same bytes, same errors.
    for fast, general in (
        _codecs(co.IntegerField(), _Int()),
        _codecs(co.AutoField(), _Int()),
        _codecs(co.StringField(), _Str()),
    ):
        try:
            expected: bytes | str = general.encode(key, namespace)
        except co.ValidationError as err:
            expected = str(err)
        try:
            got: bytes | str = fast.encode(key, namespace)
        except co.ValidationError as err:
            got = str(err)
        assert got == expected
        try:  # a batch's keys, in one call: each as alone
            batch: list[bytes] | str = fast.encode_many([key, key], namespace)
        except co.ValidationError as err:
            batch = str(err)
        assert batch == ([expected] * 2 if isinstance(expected, bytes) else expected)


def test_wrong_key_shape_or_type_is_a_validation_error() -> None:
    with pytest.raises(co.ValidationError, match="tuple of 2 values"):
        COLLECTION.encode_key("Bob")  # type: ignore[arg-type]  # the point
    with pytest.raises(co.ValidationError, match="tuple of 2 values"):
        COLLECTION.encode_key(("Bob", 1, 2))  # type: ignore[arg-type]  # the point
    with pytest.raises(co.ValidationError, match="key field 'note_id': expected int, got bool"):
        COLLECTION.encode_key(("Bob", True))
    with pytest.raises(co.ValidationError, match="key field 'name': expected str, got int"):
        PERSON.encode_key(5)  # type: ignore[arg-type]  # the point
    with pytest.raises(co.ValidationError, match="namespace must be a str"):
        PERSON.encode_key("Sam", b"ns")  # type: ignore[arg-type]  # the point


# ------------------------------------------------------------ key_format


def test_printf_key_format_is_exact_without_namespace_and_version() -> None:
    schema = co.Schema(Collection, key=("collector", "note_id"), key_format="collection.%s.%d")
    assert schema.encode_key(("Bob", 1)) == b"collection.Bob.1"
    assert schema.encode_key(("Bob", 1), "ns") == b"ns/collection.Bob.1"
    versioned = co.Schema(
        Collection, key=("collector", "note_id"), key_format="collection.%s.%d", version="3"
    )
    assert versioned.encode_key(("Bob", 1)) == b"@3:collection.Bob.1"
    with pytest.raises(co.ValidationError, match="does not fit"):
        co.Schema(Person, key="name", key_format="p.%d").encode_key("Sam")
    assert co.Schema(Person, key="name", key_format="100%%.%s").encode_key("x") == b"100%.x"


def test_str_format_key_format_named_and_positional() -> None:
    named = co.Schema(Collection, key=("collector", "note_id"), key_format="{collector}/{note_id}")
    assert named.encode_key(("Bob", 7)) == b"Bob/7"
    padded = co.Schema(
        Collection, key=("collector", "note_id"), key_format="{note_id:04d}-{collector}"
    )
    assert padded.encode_key(("Bob", 7)) == b"0007-Bob"
    positional = co.Schema(Collection, key=("collector", "note_id"), key_format="{}|{}")
    assert positional.encode_key(("Bob", 7)) == b"Bob|7"
    assert co.Schema(Person, key="name", key_format="π/{name}").encode_key("é") == "π/é".encode()


def test_callable_key_format() -> None:
    schema = co.Schema(
        Collection,
        key=("collector", "note_id"),
        key_format=lambda collector, note_id: f"c:{collector.lower()}:{note_id}",
    )
    assert schema.encode_key(("BOB", 2)) == b"c:bob:2"
    as_bytes = co.Schema(Person, key="name", key_format=lambda name: b"p-" + name.encode())
    assert as_bytes.encode_key("Sam") == b"p-Sam"
    failing = co.Schema(Person, key="name", key_format=lambda name: 1 / 0)  # type: ignore[arg-type, return-value]
    with pytest.raises(co.ValidationError, match="key_format callable failed"):
        failing.encode_key("Sam")
    wrong = co.Schema(Person, key="name", key_format=lambda name: 5)  # type: ignore[arg-type, return-value]
    with pytest.raises(co.ValidationError, match="must return str or bytes"):
        wrong.encode_key("Sam")


@pytest.mark.parametrize(
    ("key_format", "message"),
    [
        ("collection.%s", "exactly 2 positional printf"),
        ("collection", "exactly 2 positional printf"),
        ("%(collector)s.%(note_id)d", "exactly 2 positional printf"),
        ("{collector}", "does not use key field"),
        ("{collector}/{remark}/{note_id}", "not key fields"),
        ("{}", "exactly by position"),
        ("{collector", "malformed"),
        ("", "non-empty"),
        (42, "non-empty"),
    ],
)
def test_bad_key_format_is_a_schema_error(key_format: object, message: str) -> None:
    with pytest.raises(co.SchemaError, match=message):
        co.Schema(Collection, key=("collector", "note_id"), key_format=key_format)  # type: ignore[arg-type]


def test_composite_parts_do_not_run_together_under_default_layout() -> None:
    assert escape_part("a:b") == "a%3Ab"
    assert escape_part("50%") == "50%25"
    assert escape_part("plain") == "plain"


def test_keys_are_stable_across_processes() -> None:
    # Golden values: no hash(), no process state. A fresh interpreter with a
    # different hash seed must build the very same bytes.
    script = (
        "import cacheorm as co\n"
        "from tests.test_keys import COLLECTION, PERSON\n"
        "print(PERSON.encode_key('Sam', 'ns').hex(), COLLECTION.encode_key(('a:b', 1)).hex())\n"
    )
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    out = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        check=True,
        env=env,
        timeout=60,
    ).stdout.split()
    assert bytes.fromhex(out[0]) == PERSON.encode_key("Sam", "ns") == b"ns/Person:Sam"
    assert bytes.fromhex(out[1]) == COLLECTION.encode_key(("a:b", 1)) == b"Collection:a%3Ab:1"
