"""Serializers, wrappers and the registry: round trips, determinism, errors, safety."""

from __future__ import annotations

import copy
import hmac
import json
import math
import pathlib
import pickle
import struct
import threading
import zlib
from collections.abc import Callable, Iterator

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import cacheorm as co

SECRET = b"s" * 32

# ---------------------------------------------------------------- strategies

KEYS = st.text(max_size=8) | st.sampled_from(["$b", "$$b", "$", "$$", "$x", "$$$b", "b"])


def primitives(*, finite: bool) -> st.SearchStrategy[co.Primitive]:
    """Everything fields produce: nested dicts/lists of scalars, bytes included."""
    scalars: st.SearchStrategy[co.Primitive] = st.one_of(
        st.none(),
        st.booleans(),
        st.integers(min_value=-(2**63), max_value=2**64 - 1),
        st.floats(allow_nan=not finite, allow_infinity=not finite),
        st.text(),
        st.binary(),
    )
    return st.recursive(
        scalars,
        lambda inner: st.lists(inner, max_size=4) | st.dictionaries(KEYS, inner, max_size=4),
        max_leaves=12,
    )


def payloads(*, finite: bool) -> st.SearchStrategy[dict[str, co.Primitive]]:
    return st.dictionaries(KEYS, primitives(finite=finite), max_size=6)


def same(a: object, b: object) -> bool:
    """Exact equality: same types all the way down, floats compared bit for bit."""
    if type(a) is not type(b):
        return False
    if isinstance(a, float):
        assert isinstance(b, float)
        return struct.pack(">d", a) == struct.pack(">d", b)
    if isinstance(a, dict):
        assert isinstance(b, dict)
        return list(a) == list(b) or (a.keys() == b.keys() and all(same(a[k], b[k]) for k in a))
    if isinstance(a, list):
        assert isinstance(b, list)
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    return a == b


def is_primitive(value: object) -> bool:
    if isinstance(value, dict):
        return all(type(k) is str and is_primitive(v) for k, v in value.items())
    if isinstance(value, list):
        return all(is_primitive(item) for item in value)
    return type(value) in (str, int, float, bool, bytes, type(None))


# ------------------------------------------------------- serializer matrix

PRESETS: dict[str, Callable[[], co.Serializer]] = {
    "json": co.JSONSerializer,
    "msgpack": co.MsgpackSerializer,
    "pickle": co.PickleSerializer,
}
WRAPS: dict[str, Callable[[co.Serializer], co.Serializer]] = {
    "plain": lambda s: s,
    "compressed": lambda s: co.compressed(s, min_size=64),
    "signed": lambda s: co.signed(s, SECRET),
    "signed+compressed": lambda s: co.signed(co.compressed(s, min_size=64), SECRET),
}
COMBOS = [(p, w) for p in PRESETS for w in WRAPS]


def make(preset: str, wrap: str) -> co.Serializer:
    return WRAPS[wrap](PRESETS[preset]())


@pytest.fixture(params=COMBOS, ids=[f"{p}-{w}" for p, w in COMBOS])
def serializer(request: pytest.FixtureRequest) -> co.Serializer:
    preset, wrap = request.param
    return make(preset, wrap)


@pytest.fixture(params=list(PRESETS))
def preset(request: pytest.FixtureRequest) -> co.Serializer:
    return PRESETS[request.param]()


FUZZ = settings(max_examples=40, suppress_health_check=[HealthCheck.function_scoped_fixture])

# ---------------------------------------------------------------- round trip


@FUZZ
@given(payload=payloads(finite=True))
def test_round_trip_is_exact(serializer: co.Serializer, payload: dict[str, co.Primitive]) -> None:
    """loads(dumps(x)) is x, types included (bytes stay bytes, bools stay bools)."""
    data = serializer.dumps(payload)
    assert isinstance(data, bytes)
    assert same(serializer.loads(data), payload)


@FUZZ
@given(payload=payloads(finite=True))
def test_equal_input_gives_equal_bytes(
    serializer: co.Serializer, payload: dict[str, co.Primitive]
) -> None:
    assert serializer.dumps(payload) == serializer.dumps(copy.deepcopy(payload))


@pytest.mark.parametrize("preset_name", ["msgpack", "pickle"])
@FUZZ
@given(payload=payloads(finite=False))
def test_binary_presets_carry_nan_and_inf_bit_for_bit(
    preset_name: str, payload: dict[str, co.Primitive]
) -> None:
    for wrap in WRAPS:
        serializer = make(preset_name, wrap)
        assert same(serializer.loads(serializer.dumps(payload)), payload)


@pytest.mark.parametrize("preset_name", ["msgpack", "pickle"])
def test_nan_payload_bits_and_signed_zero_survive(preset_name: str) -> None:
    odd_nan = struct.unpack(">d", bytes.fromhex("fff8000000000abc"))[0]
    payload: co.Primitive = {"values": [odd_nan, math.inf, -math.inf, -0.0]}
    assert same(PRESETS[preset_name]().loads(PRESETS[preset_name]().dumps(payload)), payload)


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
@pytest.mark.parametrize("wrap", list(WRAPS))
def test_json_rejects_nan_and_inf(wrap: str, value: float) -> None:
    """JSON has no nan/inf literal: rejected, never written as a non-standard token."""
    serializer = make("json", wrap)
    with pytest.raises(co.ValidationError):
        serializer.dumps({"x": value})
    with pytest.raises(co.ValidationError):
        serializer.dumps({"nested": [{"x": value}]})


def test_json_keeps_negative_zero() -> None:
    assert same(co.JSONSerializer().loads(co.JSONSerializer().dumps({"x": -0.0})), {"x": -0.0})


# ---------------------------------------------------------- JSON bytes marker


@pytest.mark.parametrize(
    "payload",
    [
        {"x": b"hi"},
        {"x": {"$b": "aGk="}},
        {"$b": "aGk="},
        {"$$b": "aGk="},
        {"$b": b"hi"},
        {"x": {"$b": b"", "$$b": [b"\x00"]}},
        {"x": [{"$": 1}, {"$$": 2}, {"$b": 3}]},
    ],
)
def test_json_bytes_marker_is_injective(payload: dict[str, co.Primitive]) -> None:
    """A user dict shaped like the bytes marker still comes back as that dict."""
    serializer = co.JSONSerializer()
    assert same(serializer.loads(serializer.dumps(payload)), payload)


def test_json_bytes_and_lookalike_dict_encode_differently() -> None:
    serializer = co.JSONSerializer()
    assert serializer.dumps({"x": b"hi"}) != serializer.dumps({"x": {"$b": "aGk="}})


def test_json_is_compact_sorted_utf8() -> None:
    data = co.JSONSerializer().dumps({"b": 1, "a": "é", "c": [True, None]})
    assert data == '{"a":"é","b":1,"c":[true,null]}'.encode()
    assert co.JSONSerializer().dumps({"b": 1, "a": 2}) == co.JSONSerializer().dumps(
        {"a": 2, "b": 1}
    )


def test_msgpack_bytes_are_plain_msgpack() -> None:
    """Other msgpack readers can read the stored bytes: no private framing."""
    payload: co.Primitive = {"s": "text", "b": b"\x00\x01", "n": [1, 2.5, None, True]}
    data = co.MsgpackSerializer().dumps(payload)
    assert data == msgpack.packb(payload, use_bin_type=True)
    assert msgpack.unpackb(data, raw=False) == payload


# --------------------------------------------------------- values rejected


@pytest.mark.parametrize(
    "value",
    [object(), {1, 2}, pathlib.Path("x"), 1j],
    ids=["object", "set", "path", "complex"],
)
def test_non_primitives_are_rejected(preset: co.Serializer, value: object) -> None:
    with pytest.raises(co.ValidationError):
        preset.dumps({"x": value})  # type: ignore[dict-item]  # deliberately not a Primitive


@pytest.mark.parametrize("serializer_name", ["json", "pickle"])
def test_non_str_keys_are_rejected(serializer_name: str) -> None:
    """JSON would silently turn 1 into "1"; both refuse instead."""
    with pytest.raises(co.ValidationError):
        PRESETS[serializer_name]().dumps({1: "x"})  # type: ignore[dict-item]  # not a Primitive


@pytest.mark.parametrize("value", [2**64, -(2**63) - 1])
def test_msgpack_rejects_integers_outside_64_bits(value: int) -> None:
    with pytest.raises(co.ValidationError):
        co.MsgpackSerializer().dumps({"x": value})


@pytest.mark.parametrize("serializer_name", ["json", "pickle"])
def test_big_integers_round_trip_where_the_format_allows(serializer_name: str) -> None:
    serializer = PRESETS[serializer_name]()
    assert serializer.loads(serializer.dumps({"x": 2**100})) == {"x": 2**100}


def test_lone_surrogate_round_trips_or_is_rejected(preset: co.Serializer) -> None:
    payload: co.Primitive = {"x": "a\ud800b"}
    try:
        data = preset.dumps(payload)
    except co.ValidationError:
        return
    assert preset.loads(data) == payload


def test_cycles_are_rejected(preset: co.Serializer) -> None:
    looped: list[co.Primitive] = []
    looped.append(looped)
    with pytest.raises(co.ValidationError):
        preset.dumps({"x": looped})


def test_msgpack_packer_survives_a_failed_dumps() -> None:
    """The per-thread Packer is reused: a failure must not leave bytes in its buffer."""
    serializer = co.MsgpackSerializer()
    with pytest.raises(co.ValidationError):
        serializer.dumps({"x": ["ok", object()]})  # type: ignore[list-item]  # not a Primitive
    assert serializer.dumps({"y": 1}) == msgpack.packb({"y": 1})


@pytest.mark.timeout(30)
def test_msgpack_dumps_is_thread_safe() -> None:
    serializer = co.MsgpackSerializer()
    errors: list[str] = []

    def work(n: int) -> None:
        for i in range(2000):
            payload: co.Primitive = {"thread": n, "i": i, "s": "x" * (i % 50)}
            if serializer.loads(serializer.dumps(payload)) != payload:
                errors.append(f"{n}/{i}")

    threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []


# ----------------------------------------------------------- decode errors


@FUZZ
@given(data=st.binary(max_size=64))
def test_garbage_gives_a_primitive_or_decode_error(serializer: co.Serializer, data: bytes) -> None:
    try:
        result = serializer.loads(data)
    except co.DecodeError:
        return
    assert is_primitive(result)


@pytest.mark.parametrize(
    ("preset_name", "data", "cause"),
    [
        ("json", b"{", json.JSONDecodeError),
        ("json", b"\xff", UnicodeDecodeError),
        ("json", b"NaN", ValueError),
        ("json", b'{"$b": "not base64!"}', ValueError),
        ("json", b"[" * 100_000, RecursionError),
        ("msgpack", b"\x91", ValueError),  # truncated array
        ("msgpack", b"\x01\x02", msgpack.ExtraData),
        ("msgpack", b"\xc1", msgpack.FormatError),
        ("msgpack", b"\x91" * 5000 + b"\x00", msgpack.StackError),
        ("msgpack", b"\xd4\x01\x00", ValueError),  # extension type
        ("msgpack", b"\x81\xc4\x01a\x01", TypeError),  # bytes key
        ("msgpack", b"\xa1\xff", UnicodeDecodeError),
        ("pickle", b"", EOFError),
        ("pickle", b"\x80\x05garbage", pickle.UnpicklingError),
        ("pickle", pickle.dumps((1, 2)), TypeError),  # a tuple is not a primitive
        ("pickle", pickle.dumps(42) + b"junk", pickle.UnpicklingError),
        ("pickle", pickle.dumps(pathlib.PurePosixPath("x")), pickle.UnpicklingError),
    ],
)
def test_decode_errors_are_chained(preset_name: str, data: bytes, cause: type[Exception]) -> None:
    with pytest.raises(co.DecodeError) as info:
        PRESETS[preset_name]().loads(data)
    assert isinstance(info.value.__cause__, cause)


@pytest.mark.parametrize(
    ("preset_name", "data", "expected"),
    [
        ("json", b"42", 42),
        ("json", b'"text"', "text"),
        ("json", b"[1,null]", [1, None]),
        ("msgpack", b"\x2a", 42),
        ("msgpack", b"\xa2hi", "hi"),
        ("msgpack", b"\xd6\xff\x00\x00\x00\x01", 1_000_000_000),  # timestamp ext: ns
        ("pickle", pickle.dumps(42, 5), 42),
        ("pickle", pickle.dumps([b"x", {"k": 1.5}], 3), [b"x", {"k": 1.5}]),
    ],
)
def test_foreign_bytes_that_parse_come_back_as_they_are(
    preset_name: str, data: bytes, expected: co.Primitive
) -> None:
    """Not every stored value is a dict: the schema layer, not loads, rejects the shape."""
    assert same(PRESETS[preset_name]().loads(data), expected)


# ---------------------------------------------------------------- pickle safety


class _Exploit:
    """Unpickling this creates a file: the classic ``__reduce__`` payload."""

    def __init__(self, path: pathlib.Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Callable[[pathlib.Path], None], tuple[pathlib.Path]]:
        return (pathlib.Path.touch, (self.path,))


class _UnrestrictedPickle:
    """What a naive pickle serializer looks like: plain ``pickle.loads``."""

    def dumps(self, obj: co.Primitive) -> bytes:
        return pickle.dumps(obj)

    def loads(self, data: bytes) -> co.Primitive:
        result: co.Primitive = pickle.loads(data)
        return result


class _Spy:
    """Records whether anything reached the inner ``loads``."""

    def __init__(self) -> None:
        self.inner = co.PickleSerializer()
        self.loaded: list[bytes] = []

    def dumps(self, obj: co.Primitive) -> bytes:
        return self.inner.dumps(obj)

    def loads(self, data: bytes) -> co.Primitive:
        self.loaded.append(data)
        return self.inner.loads(data)


def test_exploit_payload_is_real(tmp_path: pathlib.Path) -> None:
    """Guards the tests below: unsigned and unrestricted, the payload does run."""
    target = tmp_path / "pwned"
    _UnrestrictedPickle().loads(pickle.dumps(_Exploit(target)))
    assert target.exists()


def test_pickle_preset_refuses_globals(tmp_path: pathlib.Path) -> None:
    target = tmp_path / "pwned"
    with pytest.raises(co.DecodeError):
        co.PickleSerializer().loads(pickle.dumps(_Exploit(target)))
    assert not target.exists()


@pytest.mark.parametrize("inner", [_UnrestrictedPickle, co.PickleSerializer])
def test_signed_never_unpickles_forged_payloads(
    tmp_path: pathlib.Path, inner: Callable[[], co.Serializer]
) -> None:
    target = tmp_path / "pwned"
    serializer = co.signed(inner(), SECRET)
    evil = pickle.dumps(_Exploit(target))
    forged_tag = co.signed(inner(), b"another secret key!").dumps({"x": 1})[:32]
    for data in (evil, b"\x00" * 32 + evil, forged_tag + evil):
        with pytest.raises(co.DecodeError):
            serializer.loads(data)
    assert not target.exists()


def _flip(data: bytes, index: int) -> bytes:
    return data[:index] + bytes([data[index] ^ 1]) + data[index + 1 :]


def test_signed_rejects_tampered_truncated_unsigned_and_foreign() -> None:
    spy = _Spy()
    serializer = co.signed(spy, SECRET)
    good = serializer.dumps({"name": "Sam", "n": 1})
    bad = {
        "payload bit": _flip(good, len(good) - 1),
        "tag bit": _flip(good, 0),
        "truncated": good[:-1],
        "tag only": good[:32],
        "short": good[:10],
        "empty": b"",
        "unsigned": spy.dumps({"name": "Sam", "n": 1}),
        "other secret": co.signed(spy, b"x" * 32).dumps({"name": "Sam", "n": 1}),
        "extended": good + b"\x00",
    }
    for label, data in bad.items():
        with pytest.raises(co.DecodeError):
            serializer.loads(data)
        assert spy.loaded == [], label
    assert serializer.loads(good) == {"name": "Sam", "n": 1}


def test_signed_format_is_standard_hmac_sha256_of_key_and_payload_then_payload() -> None:
    """Documented so another language can verify: HMAC(len(key) as 8 bytes + key + payload)."""
    inner = co.MsgpackSerializer()
    serializer = co.signed(inner, SECRET)
    payload = inner.dumps({"x": 1})
    key = b"app/Person:Sam"
    keyed = serializer.dumps_keyed({"x": 1}, key)
    assert (
        keyed
        == hmac.digest(SECRET, len(key).to_bytes(8, "big") + key + payload, "sha256") + payload
    )
    assert serializer.dumps({"x": 1}) == serializer.dumps_keyed({"x": 1}, b"")
    assert serializer.dumps({"x": 1}) == hmac.digest(SECRET, bytes(8) + payload, "sha256") + payload


@pytest.mark.timeout(30)
def test_signed_is_thread_safe() -> None:
    serializer = co.signed(co.MsgpackSerializer(), SECRET)
    failures: list[int] = []

    def work(n: int) -> None:
        for i in range(500):
            payload: co.Primitive = {"n": n, "i": i}
            try:
                if serializer.loads(serializer.dumps(payload)) != payload:
                    failures.append(n)
            except co.DecodeError:
                failures.append(n)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failures == []


@pytest.mark.parametrize("secret", [b"", b"short", b"x" * 15])
def test_signed_rejects_short_secrets(secret: bytes) -> None:
    with pytest.raises(co.ValidationError, match="at least 16 bytes") as info:
        co.signed(co.MsgpackSerializer(), secret)
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize("secret", ["x" * 32, bytearray(32), None])
def test_signed_rejects_a_secret_that_is_not_bytes(secret: object) -> None:
    """A ValidationError (so a CacheORMError and a ValueError) saying what to pass."""
    with pytest.raises(co.ValidationError, match=r"secret must be bytes.*token_bytes"):
        co.signed(co.MsgpackSerializer(), secret)  # type: ignore[arg-type]  # on purpose


def test_wrappers_take_a_registered_name() -> None:
    wrapped = co.signed(co.compressed("msgpack", min_size=0), SECRET)
    assert wrapped.loads(wrapped.dumps({"a": [1, b"x"]})) == {"a": [1, b"x"]}
    with pytest.raises(co.ValidationError, match="registered"):
        co.compressed("yaml")


def test_signed_repr_hides_the_secret() -> None:
    assert "sss" not in repr(co.signed(co.MsgpackSerializer(), SECRET))


# ------------------------------------------------------------------ compressed


def test_compressed_marks_small_payloads_raw_and_large_ones_compressed() -> None:
    inner = co.MsgpackSerializer()
    serializer = co.compressed(inner, min_size=100)
    small: co.Primitive = {"x": "a"}
    assert serializer.dumps(small) == b"\x00" + inner.dumps(small)
    large: co.Primitive = {"x": "a" * 1000}
    data = serializer.dumps(large)
    assert data[0] == 1
    assert len(data) < len(inner.dumps(large)) / 10
    assert zlib.decompress(data[1:]) == inner.dumps(large)
    assert serializer.loads(data) == large


def test_compressed_threshold_is_inclusive() -> None:
    inner = co.MsgpackSerializer()
    payload: co.Primitive = "a" * 200
    size = len(inner.dumps(payload))
    assert co.compressed(inner, min_size=size).dumps(payload)[0] == 1
    assert co.compressed(inner, min_size=size + 1).dumps(payload)[0] == 0


def test_compressed_stores_incompressible_payloads_raw() -> None:
    noise = bytes(range(256)) * 2
    payload: co.Primitive = zlib.compress(noise)[:400]
    serializer = co.compressed(co.MsgpackSerializer(), min_size=10)
    data = serializer.dumps(payload)
    assert data[0] == 0
    assert serializer.loads(data) == payload


def test_compressed_decode_errors() -> None:
    serializer = co.compressed(co.MsgpackSerializer(), min_size=0)
    good = serializer.dumps({"x": "a" * 500})
    for data in (b"", b"\x07" + good[1:], good[:-3], good + b"tail"):
        with pytest.raises(co.DecodeError):
            serializer.loads(data)
    with pytest.raises(co.DecodeError) as info:
        serializer.loads(b"\x01not zlib")
    assert isinstance(info.value.__cause__, zlib.error)


def test_compressed_refuses_decompression_bombs() -> None:
    bomb = b"\x01" + zlib.compress(msgpack.packb("a" * 10_000_000), 9)
    assert len(bomb) < 20_000
    with pytest.raises(co.DecodeError, match="max_size"):
        co.compressed(co.MsgpackSerializer(), max_size=1_000_000).loads(bomb)


@pytest.mark.parametrize(
    "kwargs", [{"min_size": -1}, {"level": 10}, {"max_size": 0}, {"max_ratio": 0}]
)
def test_compressed_validates_its_options(kwargs: dict[str, int]) -> None:
    with pytest.raises(ValueError):  # noqa: PT011  # the message varies per option
        co.compressed(co.MsgpackSerializer(), **kwargs)


# -------------------------------------------------------------------- values


def test_serializers_are_hashable_values() -> None:
    """A Repo is a frozen, hashable value, so its serializer must be one too."""
    assert co.JSONSerializer() == co.JSONSerializer()
    assert co.compressed(co.JSONSerializer()) == co.compressed(co.JSONSerializer())
    assert co.signed(co.JSONSerializer(), SECRET) != co.signed(co.JSONSerializer(), b"t" * 32)
    assert len({co.MsgpackSerializer(), co.MsgpackSerializer(), co.PickleSerializer()}) == 2
    for preset_name, wrap in COMBOS:
        serializer = make(preset_name, wrap)
        assert isinstance(serializer, co.Serializer)
        hash(serializer)


# -------------------------------------------------------------------- registry


@pytest.fixture
def scratch_names() -> Iterator[list[str]]:
    """Names a test registers; unregistered afterwards so tests stay independent."""
    names: list[str] = []
    yield names
    for name in names:
        if co.registry.get_by_name(name) is not None:
            co.registry.unregister(name)


def test_presets_are_registered() -> None:
    assert isinstance(co.registry.get_by_name("json"), co.JSONSerializer)
    assert isinstance(co.registry.get_by_name("msgpack"), co.MsgpackSerializer)
    assert isinstance(co.registry.get_by_name("pickle"), co.PickleSerializer)
    assert co.registry.get_by_name("no-such-serializer") is None


def test_register_get_unregister(scratch_names: list[str]) -> None:
    scratch_names.append("test.signed")
    serializer = co.signed(co.MsgpackSerializer(), SECRET)
    co.registry.register("test.signed", serializer)
    assert co.registry.get_by_name("test.signed") is serializer
    assert co.registry.resolve("test.signed") is serializer
    with pytest.raises(ValueError, match="already registered"):
        co.registry.register("test.signed", co.JSONSerializer())
    with pytest.raises(ValueError, match="already registered"):
        co.registry.register("msgpack", co.JSONSerializer())
    co.registry.unregister("test.signed")
    assert co.registry.get_by_name("test.signed") is None
    with pytest.raises(KeyError):
        co.registry.unregister("test.signed")


def test_register_rejects_non_serializers_and_empty_names() -> None:
    with pytest.raises(TypeError):
        co.registry.register("test.bad", object())  # type: ignore[arg-type]  # on purpose
    with pytest.raises(ValueError):  # noqa: PT011
        co.registry.register("", co.JSONSerializer())


def test_resolve() -> None:
    serializer = co.compressed(co.JSONSerializer())
    assert co.registry.resolve(serializer) is serializer
    assert isinstance(co.registry.resolve("msgpack"), co.MsgpackSerializer)
    with pytest.raises(co.ValidationError, match="'json', 'msgpack', 'pickle'"):
        co.registry.resolve("yaml")
    with pytest.raises(co.ValidationError):
        co.registry.resolve(42)  # type: ignore[arg-type]  # on purpose


@pytest.mark.timeout(30)
def test_registry_is_thread_safe(scratch_names: list[str]) -> None:
    """Of many threads registering one name at once, exactly one wins."""
    scratch_names.extend(["test.contested", *(f"test.own.{n}" for n in range(16))])
    barrier = threading.Barrier(16)
    wins: list[int] = []

    def work(n: int) -> None:
        barrier.wait()
        co.registry.register(f"test.own.{n}", co.JSONSerializer())
        try:
            co.registry.register("test.contested", co.JSONSerializer())
        except ValueError:
            return
        wins.append(n)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(wins) == 1
    assert all(co.registry.get_by_name(f"test.own.{n}") is not None for n in range(16))


# -------------------------------------------------------------------- hot path


def test_msgpack_loads_refuses_bytes_keys_that_strict_map_key_allows() -> None:
    """msgpack's own strict_map_key admits bytes keys; a Primitive dict has only str keys."""
    with pytest.raises(co.DecodeError):
        co.MsgpackSerializer().loads(msgpack.packb({b"k": 1}, use_bin_type=True))
