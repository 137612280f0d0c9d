"""Compiled record codecs: msgpack bytes <-> records in one step, for the msgpack preset.

The generic path turns bytes into primitives (:class:`MsgpackSerializer`),
then primitives into a record (:meth:`Schema.load`), and back the same way.
For a repo whose serializer is the msgpack preset (alone or under
:func:`~cacheorm.signed` / :func:`~cacheorm.compressed`), :attr:`Repo.codec`
compiles, once per schema, a shorter path:

* **decode**: msgspec (in C) decodes the msgpack map straight into a
  generated ``msgspec.Struct`` whose field types state the field rules
  (``int`` within 64 bits, finite ``float``, ``str``, ``bytes``, ``date``,
  lists, ``T | None``...), then generated Python builds the record
  (``tuple.__new__`` for a NamedTuple) and runs the few rules msgspec cannot
  state (an ISO datetime is parsed by :meth:`datetime.fromisoformat`, exactly
  as :class:`DateTimeField` does).
* **encode**: generated Python builds the ``{field: primitive}`` dict the
  schema's ``dump`` builds, and msgspec packs it: byte for byte what the
  msgpack preset writes (a test proves it over random records).

It is a fast path for valid data, never a second set of rules: it returns a
record only where the generic path returns the same record, and ``None``
otherwise, on *any* surprise (a missing or extra field, a ``None`` a schema
default replaces, a wrong type, a value out of range, a foreign namespace
mark, a signature mismatch), so the caller runs the generic path, which gives
the right record or the error it always gave, naming the field and the key.
In detail:

* every struct field is required and unknown fields are refused, so an
  older payload (a missing field, an extra one) takes the generic path with
  its defaults and evolution rules;
* each wire type accepts a subset of what the field's ``load`` accepts and
  yields the same value (msgspec's own datetime, time and UUID parsers
  accept forms ``fromisoformat``/``UUID`` refuse, or the msgpack timestamp,
  so those travel as ``str`` and go through the field's rule);
* a field no wire type states exactly (``JSONField``, ``StructField``, a
  nested record, a custom ``Field``) travels as ``msgspec.Raw`` and is
  decoded by the msgpack preset and the field's own ``load``; on encode, a
  field whose ``dump`` may return more than plain primitives (a
  ``StructField``, a custom ``Field``) is packed by the preset itself;
* the namespace mark (``"\\x00ns"``, which a msgspec field name cannot hold)
  is matched as the payload's last entry, byte for byte, and cut off before
  decoding.

Measured numbers and the choice of msgspec over generated code alone are in
``docs/codecs.md``.

>>> import cacheorm as co
>>> from cacheorm.demo import PERSON
>>> co.Repo(PERSON).codec
<RecordCodec of Person>
>>> co.Repo(PERSON, serializer="json").codec is None
True
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import enum
import functools
import sys
import typing
from collections.abc import Callable
from typing import TYPE_CHECKING, Annotated, Any, Final, Generic, NamedTuple, NoReturn, cast

import msgspec

from cacheorm.backends.base import INT64_MAX, INT64_MIN
from cacheorm.fields import (
    AutoField,
    BinaryField,
    BooleanField,
    DateField,
    DateTimeField,
    DecimalField,
    DictField,
    EnumField,
    Field,
    FloatField,
    IntegerField,
    JSONField,
    ListField,
    NullableField,
    StringField,
    TimeField,
    TimestampField,
    UUIDField,
)
from cacheorm.repo import NAMESPACE_FIELD, K, R, Repo
from cacheorm.schema import RecordField, Schema, _Kind, _RecordCodec
from cacheorm.serializers.presets import MsgpackSerializer
from cacheorm.serializers.wrappers import CompressedSerializer, SignedSerializer

if TYPE_CHECKING:
    from cacheorm.serializers.base import Primitive, Serializer

__all__ = ["RecordCodec", "compile_codec"]

_INT64: Final = Annotated[int, msgspec.Meta(ge=INT64_MIN, le=INT64_MAX)]
# FloatField's rule that a float is finite: NaN fails both bounds, an infinity one.
_FINITE: Final = Annotated[float, msgspec.Meta(ge=-sys.float_info.max, le=sys.float_info.max)]

# The type constructors, applied to types computed at run time (which mypy cannot check).
_TYPING: Final[Any] = typing

_ENCODER: Final = msgspec.msgpack.Encoder()
_PRESET: Final = MsgpackSerializer()


class _Fallback(Exception):
    """A value the generated code does not vouch for: the generic path decides."""


def _fail() -> NoReturn:
    raise _Fallback


# -- wire types: what msgspec checks, and what is left to the field's rule -----


class _Post(enum.Enum):
    """What the generated code does with a decoded wire value."""

    NONE = "the wire value is the field's value"
    LOAD = "the field's own load, on a primitive of the right type"
    DATETIME = "DateTimeField.load inlined: fromisoformat and the offset rule"
    OPAQUE = "msgspec.Raw: the msgpack preset's loads, then the field's load"


@dataclasses.dataclass(frozen=True, slots=True)
class _Wire:
    type: object
    post: _Post


_NATIVE: Final[dict[type[Field[object]], object]] = {
    StringField: str,
    IntegerField: _INT64,
    AutoField: _INT64,
    FloatField: _FINITE,
    BooleanField: bool,
    BinaryField: bytes,
}
"""Rules msgspec states exactly: the decoded value is the field's value."""

_AS_TEXT: Final = (DateTimeField, DateField, TimeField, UUIDField, DecimalField)
"""Rules whose primitive is a ``str`` that only the field's rule may parse."""


def _enum_primitive(rule: EnumField[enum.Enum]) -> type | None:
    """``str`` or ``int`` when every member's value has that exact type, else ``None``."""
    kinds = {type(member.value) for member in rule.enum_type}
    if len(kinds) == 1 and (kind := kinds.pop()) in (str, int):
        return kind
    return None


def _enum_native(rule: EnumField[enum.Enum]) -> bool:
    """Whether msgspec decodes the enum exactly as :meth:`EnumField.load` does.

    Only by value, among plain members: not a ``Flag`` (combined values), not
    an enum with its own ``_missing_`` (which ``EnumField`` never calls).
    """
    enum_type = rule.enum_type
    if issubclass(enum_type, enum.Flag) or _enum_primitive(rule) is None:
        return False
    own_missing = getattr(enum_type._missing_, "__func__", None)
    if own_missing is not enum.Enum._missing_.__func__:  # type: ignore[attr-defined]  # a classmethod
        return False
    try:
        msgspec.msgpack.Decoder(enum_type)
    except (TypeError, ValueError):
        return False
    return True


def _raw_wire(rule: Field[object]) -> object | None:
    """A wire type yielding primitives that ``rule.load`` turns into the generic result.

    ``None``: no such type (the field is opaque). Used inside containers,
    whose own ``load`` then runs on the whole value.
    """
    kind = type(rule)
    native = _NATIVE.get(kind)
    if native is not None:
        return native
    if kind in _AS_TEXT:
        return str
    if kind is TimestampField:
        return int
    if kind is EnumField:
        return _enum_primitive(cast("EnumField[enum.Enum]", rule))
    if kind is NullableField:
        inner = _raw_wire(cast("NullableField[object]", rule).inner)
        return None if inner is None else _TYPING.Optional[inner]
    if kind is ListField:
        item = _raw_wire(cast("ListField[object]", rule).item)
        return None if item is None else _TYPING.List[item]
    if kind is DictField:
        value = _raw_wire(cast("DictField[object]", rule).value)
        return None if value is None else _TYPING.Dict[str, value]
    return None


def _wire(rule: Field[object]) -> _Wire:
    """The wire type of a top-level field, and what the generated code does after msgspec."""
    kind = type(rule)
    native = _NATIVE.get(kind)
    if native is not None:
        return _Wire(native, _Post.NONE)
    if kind is DateField:
        # msgspec reads only YYYY-MM-DD, which date.fromisoformat reads alike.
        return _Wire(dt.date, _Post.NONE)
    if kind is DateTimeField:
        return _Wire(str, _Post.DATETIME)
    if kind is EnumField and _enum_native(cast("EnumField[enum.Enum]", rule)):
        return _Wire(cast("EnumField[enum.Enum]", rule).enum_type, _Post.NONE)
    if kind is NullableField:
        inner = _wire(cast("NullableField[object]", rule).inner)
        if inner.post in (_Post.NONE, _Post.DATETIME):
            return _Wire(_TYPING.Optional[inner.type], inner.post)
    elif kind in (ListField, DictField):
        item_rule = (
            rule.item if isinstance(rule, ListField) else cast("DictField[object]", rule).value
        )
        item = _wire(item_rule)
        if item.post is _Post.NONE:
            container = (
                _TYPING.List[item.type] if kind is ListField else _TYPING.Dict[str, item.type]
            )
            return _Wire(container, _Post.NONE)
    raw = _raw_wire(rule)
    if raw is None:
        return _Wire(msgspec.Raw, _Post.OPAQUE)
    return _Wire(raw, _Post.LOAD)


def _wire_of(rule: Field[object], fills_none: bool) -> tuple[Field[object], _Wire]:
    """The rule the fast path applies to a field, and its wire type.

    A field whose ``None`` a schema default replaces (``fills_none``) is read
    by its non-null rule: a stored null then fails the wire type, and the
    generic path puts the default in.
    """
    if fills_none:
        while isinstance(rule, NullableField):
            rule = rule.inner
    return rule, _wire(rule)


# -- datetimes: isoformat, faster ----------------------------------------------------

_TO_BUILTINS: Final[Callable[[dt.datetime], str]] = msgspec.to_builtins  # a datetime: its text
_WHOLE_MINUTES: Final[dict[dt.timezone, bool]] = {}
"""Fixed offsets met so far: whether each is a whole number of minutes."""


def _isoformat(value: dt.datetime) -> str:
    """Exactly ``value.isoformat()``: about 0.1 µs instead of 0.7 µs for the common values.

    msgspec writes the same text for a naive datetime and for one with a
    fixed offset of whole minutes, except ``Z`` for UTC where ``isoformat``
    writes ``+00:00``; it would drop the seconds of an offset, so any other
    offset (a ``ZoneInfo``, a subclass of datetime) goes to ``isoformat``.
    """
    if type(value) is dt.datetime:
        zone = value.tzinfo
        if zone is None:
            return _TO_BUILTINS(value)
        if type(zone) is dt.timezone:
            whole = _WHOLE_MINUTES.get(zone)
            if whole is None:
                whole = _learn_offset(zone)
            if whole:
                text = _TO_BUILTINS(value)
                return text[:-1] + "+00:00" if text[-1] == "Z" else text
    return value.isoformat()


def _learn_offset(zone: dt.timezone) -> bool:
    offset = zone.utcoffset(None)
    whole = offset.seconds % 60 == 0 and offset.microseconds == 0
    if len(_WHOLE_MINUTES) < 4096:  # offsets are few; a bound all the same
        _WHOLE_MINUTES[zone] = whole
    return whole


# -- code generation ----------------------------------------------------------------


def _load_lines(
    index: int, rule: Field[object], wire: _Wire, fills_none: bool, env: dict[str, object]
) -> tuple[list[str], str]:
    """Statements computing field ``index`` from the struct ``s``, and its value's expression."""
    src = f"s.f{index}"
    if wire.post is _Post.NONE:
        return [], src
    env[f"_load{index}"] = rule.load
    if wire.post is _Post.LOAD:
        return [], f"_load{index}({src})"
    if wire.post is _Post.OPAQUE:
        primitive = f"p{index}"
        lines = [f"{primitive} = _loads({src})"]
        if fills_none:  # a null takes the schema default: the generic path's job
            lines += [f"if {primitive} is None:", "    _fail()"]
        return lines, f"_load{index}({primitive})"
    # DateTimeField.load inlined: fromisoformat, then prepare's rule that an
    # offset has no fraction of a second. A text ending in ":MM" (or ":SS")
    # has no such fraction, which spares utcoffset() on every canonical value.
    text, value = f"t{index}", f"v{index}"
    parse = [
        f"{value} = _fromiso({text})",
        f"if {value}.tzinfo is not None and {text}[-3] != ':' "
        f"and {value}.utcoffset().microseconds:",
        "    _fail()",
    ]
    if isinstance(rule, NullableField):
        return [
            f"{text} = {src}",
            f"if {text} is None:",
            f"    {value} = None",
            "else:",
            *(f"    {line}" for line in parse),
        ], value
    return [f"{text} = {src}", *parse], value


def _element(rule: Field[object]) -> Field[object] | None:
    """The rule of what a nullable, list or dict field holds; ``None`` for other rules."""
    kind = type(rule)
    if kind is NullableField:
        return cast("NullableField[object]", rule).inner
    if kind is ListField:
        return cast("ListField[object]", rule).item
    if kind is DictField:
        return cast("DictField[object]", rule).value
    return None


def _as_is(rule: Field[object]) -> bool:
    """Whether a prepared value is already its own primitive (dump only copies containers)."""
    if type(rule) in _NATIVE:
        return True
    element = _element(rule)
    return element is not None and _as_is(element)


_PRIMITIVE_DUMPS: Final = frozenset(
    {
        *_NATIVE,
        DateTimeField,
        DateField,
        TimeField,
        UUIDField,
        DecimalField,
        TimestampField,
        EnumField,
        JSONField,
    }
)


def _dumps_primitives(rule: Field[object]) -> bool:
    """Whether ``rule.dump`` returns exact builtin primitives, which msgspec packs as msgpack does.

    Not so for a ``StructField`` (its function may return a tuple, a set, a
    datetime: the preset refuses what msgspec would pack), a nested record
    holding one, or a custom rule.
    """
    kind = type(rule)
    if kind in _PRIMITIVE_DUMPS:
        return True
    if kind is RecordField:  # a nested record dumps a dict of its fields' primitives
        return all(map(_dumps_primitives, cast("RecordField", rule).codec.fields.values()))
    element = _element(rule)
    return element is not None and _dumps_primitives(element)


def _dump_expr(rule: Field[object], src: str, index: int, env: dict[str, object]) -> str:
    """The expression of a field's primitive, which msgspec packs exactly as the preset does."""
    if _as_is(rule):
        return src
    kind = type(rule)
    if kind is DateTimeField:
        return f"_iso({src})"
    if kind is NullableField and type(cast("NullableField[object]", rule).inner) is DateTimeField:
        return f"(None if (n{index} := {src}) is None else _iso(n{index}))"
    env[f"_dump{index}"] = rule.dump
    if _dumps_primitives(rule):
        return f"_dump{index}({src})"
    # Packed by the preset itself, and spliced in whole.
    return f"_Raw(_dumps(_dump{index}({src})))"


class _Part(NamedTuple):
    """One field in the generated ``decode``."""

    position: int
    name: str
    optional: bool
    statements: list[str]
    value: str


def _decode_source(codec: _RecordCodec, env: dict[str, object]) -> str | None:
    """The source of ``decode(data) -> record``, or ``None``: a field msgspec cannot name."""
    fields: list[tuple[str, object] | tuple[str, object, object]] = []
    parts: list[_Part] = []
    for i, name in enumerate(codec.names):
        fills_none = name in codec.fills_none
        rule, wire = _wire_of(codec.fields[name], fills_none)
        # Required on the wire, so an older payload lacking the field takes the
        # generic path and its defaults; but a NotRequired TypedDict key without
        # a default may be absent, and stays absent.
        optional = name not in codec.required and name not in codec.load_defaults
        if optional:
            fields.append((f"f{i}", _TYPING.Union[wire.type, msgspec.UnsetType], msgspec.UNSET))
        else:
            fields.append((f"f{i}", wire.type))
        parts.append(_Part(i, name, optional, *_load_lines(i, rule, wire, fills_none, env)))
    try:
        struct = msgspec.defstruct(
            f"{codec.record_type.__name__}Wire",
            fields,
            rename={f"f{i}": name for i, name in enumerate(codec.names)},
            kw_only=True,
            forbid_unknown_fields=True,
            gc=False,
        )
        env["_decode"] = msgspec.msgpack.Decoder(struct).decode
    except (TypeError, ValueError):  # a name msgspec cannot hold (control characters, quotes)
        return None
    body = ["s = _decode(data)", *_build_lines(codec.kind, parts)]
    # Any failure is the generic path's to decide (and name): None, without a wrapper's call.
    return (
        "def decode(data, bkey=b''):\n    try:\n"
        + "".join(f"        {line}\n" for line in body)
        + "    except Exception:\n        return None\n"
    )


def _build_lines(kind: _Kind, parts: list[_Part]) -> list[str]:
    """The statements building the record from the struct ``s``."""
    if any(part.optional for part in parts):  # a TypedDict: key by key
        lines = ["d = {}"]
        for part in parts:
            indent = ""
            if part.optional:
                lines.append(f"if s.f{part.position} is not _UNSET:")
                indent = "    "
            lines += [f"{indent}{line}" for line in part.statements]
            lines.append(f"{indent}d[{part.name!r}] = {part.value}")
        return [*lines, "return d"]
    lines = [line for part in parts for line in part.statements]
    values = ", ".join(part.value for part in parts)
    if kind is _Kind.NAMEDTUPLE:
        return [*lines, f"return _new(_cls, ({values},))"]
    if kind is _Kind.DATACLASS:
        return [*lines, f"return _build([{values}])"]
    items = ", ".join(f"{part.name!r}: {part.value}" for part in parts)
    return [*lines, f"return {{{items}}}"]


def _dump_source(codec: _RecordCodec, env: dict[str, object]) -> str:
    """The source of ``dump(record) -> {field: primitive}``, the schema's ``dump`` unrolled."""
    names, kind = codec.names, codec.kind
    if kind is _Kind.TYPEDDICT:
        lines = ["def dump(r):", "    p = {}"]
        for i, name in enumerate(names):
            expr = _dump_expr(codec.fields[name], f"r[{name!r}]", i, env)
            if name in codec.required:
                lines.append(f"    p[{name!r}] = {expr}")
            else:
                lines += [f"    if {name!r} in r:", f"        p[{name!r}] = {expr}"]
        return "\n".join([*lines, "    return p"]) + "\n"
    items = []
    for i, name in enumerate(names):
        src = f"r[{i}]" if kind is _Kind.NAMEDTUPLE else f"r.{name}"
        items.append(f"{name!r}: {_dump_expr(codec.fields[name], src, i, env)}")
    return f"def dump(r):\n    return {{{', '.join(items)}}}\n"


def _encode_source(codec: _RecordCodec, dump_source: str) -> str:
    """The source of ``encode(record, bkey) -> bytes | None``: the dict ``dump_source``
    builds, packed; ``None`` where the generic path must decide (and raise the right error)."""
    if codec.kind is _Kind.TYPEDDICT:  # dump is several statements: called
        payload = "dump(r)"
    else:  # dump's one expression ("def dump(r):\n    return {...}\n"), inlined: a call less
        payload = dump_source.split("return ", 1)[1].strip()
    return (
        "def encode(r, bkey=b''):\n    try:\n"
        f"        return _pack({payload})\n"
        "    except Exception:\n        return None\n"
    )


def _generate(name: str, source: str, env: dict[str, object]) -> Callable[..., object]:
    code = compile(source, f"<cacheorm.codec {name}>", "exec")
    exec(code, env)  # source built from field indexes and repr()s only
    return cast("Callable[..., object]", env[name])


# -- the compiled schema --------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class _Compiled:
    """What one schema compiles to, shared by every repo of the schema."""

    decode: Callable[[bytes, bytes], object]
    """``(msgpack bytes, backend key)`` -> record, or ``None`` where the generic path
    must decide (the key is not used: the signature is :attr:`RecordCodec.decode`'s)."""
    dump: Callable[[object], dict[str, object]]
    """Prepared record -> the dict the schema's ``dump`` builds, for msgspec to pack."""
    encode: Callable[[object, bytes], bytes | None]
    """``(prepared record, backend key)`` -> the packed ``dump``, or ``None`` where the
    generic path must decide (the key is unused: the signature is ``RecordCodec.encode``'s)."""
    source: str
    """The generated code, for the curious."""
    name: str
    """The schema's name."""


@functools.lru_cache(maxsize=1024)
def _compile(schema: Schema[Any, Any]) -> _Compiled | None:
    """The compiled codec of ``schema``, or ``None`` when it keeps the generic path."""
    codec = schema._codec  # the schema's compiled description, same package
    if NAMESPACE_FIELD in codec.names:
        return None
    env: dict[str, object] = {
        "_new": tuple.__new__,
        "_cls": codec.record_type,
        "_build": codec.build,
        "_fromiso": dt.datetime.fromisoformat,
        "_fail": _fail,
        "_UNSET": msgspec.UNSET,
        "_loads": _PRESET.loads,
        "_dumps": _PRESET.dumps,
        "_Raw": msgspec.Raw,
        "_iso": _isoformat,
        "_pack": _ENCODER.encode,
    }
    decode_source = _decode_source(codec, env)
    if decode_source is None:
        return None
    dump_source = _dump_source(codec, env)
    encode_source = _encode_source(codec, dump_source)
    return _Compiled(
        cast("Callable[[bytes, bytes], object]", _generate("decode", decode_source, env)),
        cast("Callable[[object], dict[str, object]]", _generate("dump", dump_source, env)),
        cast("Callable[[object, bytes], bytes | None]", _generate("encode", encode_source, env)),
        decode_source + dump_source + encode_source,
        schema.name,
    )


# -- the serializer's byte layers -----------------------------------------------------


class _Bytes:
    """A serializer of bytes as themselves: the wrappers' own layers, msgpack taken out."""

    def dumps(self, obj: Primitive) -> bytes:
        return cast("bytes", obj)

    def loads(self, data: bytes) -> Primitive:
        return data


def _byte_layers(serializer: Serializer) -> Serializer | None:
    """``serializer`` with its msgpack preset replaced by :class:`_Bytes`; ``None``: the preset.

    Raises:
        _Fallback: ``serializer`` is not the preset, alone or under the known wrappers.
    """
    kind = type(serializer)
    if kind is MsgpackSerializer:
        return None
    if kind is SignedSerializer or kind is CompressedSerializer:
        wrapped = cast("SignedSerializer | CompressedSerializer", serializer)
        inner = _byte_layers(wrapped.inner)
        return dataclasses.replace(wrapped, inner=_Bytes() if inner is None else inner)
    _fail()


# -- the namespace mark ---------------------------------------------------------------

_FIXMAPS: Final = tuple(bytes([0x80 + n]) for n in range(16))


def _map_header(count: int) -> bytes:
    if count < 16:
        return _FIXMAPS[count]
    if count < 0x10000:
        return b"\xde" + count.to_bytes(2, "big")
    return b"\xdf" + count.to_bytes(4, "big")


def _cut_mark(data: bytes, mark: bytes) -> bytes:
    """``data`` without its last entry, which must be ``mark`` byte for byte.

    Sound because msgpack decodes left to right: if the rest decodes to a
    record (all its keys known, none left over), the original's last entry
    is exactly ``mark``, and its other entries are the rest's.

    Raises:
        _Fallback: ``data`` does not end with ``mark`` or is not a map.
    """
    if not data.endswith(mark):
        _fail()
    head = data[0]
    end = len(data) - len(mark)
    if 0x81 <= head <= 0x8F:
        return _FIXMAPS[head - 0x81] + data[1:end]
    if head == 0xDE:
        size = 3
    elif head == 0xDF:
        size = 5
    else:
        _fail()
    count = int.from_bytes(data[1:size], "big")
    if count == 0:
        _fail()
    return _map_header(count - 1) + data[size:end]


# -- the codec of a repo --------------------------------------------------------------


class RecordCodec(Generic[R]):
    """A repo's compiled codec: :attr:`Repo.codec` (see the module documentation).

    Both functions return ``None`` where the generic path must decide, never
    a different result: ``decode(data, bkey)`` the record stored as ``data``
    under ``bkey``, its namespace mark checked (the caller still checks the
    key); ``encode(record, bkey)`` a prepared record's bytes, equal to what
    the generic path writes.
    """

    __slots__ = ("decode", "encode", "name", "source")

    decode: Callable[[bytes, bytes], R | None]
    encode: Callable[[R, bytes], bytes | None]
    source: str
    """The generated code of the schema's ``decode`` and ``dump`` functions."""
    name: str
    """The schema's name."""

    def __init__(
        self, compiled: _Compiled, layers: Serializer | None, namespace: str | None
    ) -> None:
        build, dump, pack = compiled.decode, compiled.dump, _ENCODER.encode
        # The mark the generic path appends: the payload's last entry, byte for byte.
        mark = None if namespace is None else pack(NAMESPACE_FIELD) + pack(namespace)
        keyed = cast("SignedSerializer | CompressedSerializer | None", layers)

        def decode(data: bytes, bkey: bytes) -> R | None:
            try:
                if keyed is not None:
                    data = cast("bytes", keyed.loads_keyed(data, bkey))
                if mark is not None:
                    data = _cut_mark(data, mark)
            except Exception:  # the generic path decides, and names the culprit
                return None
            return cast("R | None", build(data, bkey))

        def encode(record: R, bkey: bytes) -> bytes | None:
            try:
                payload = dump(record)
                if namespace is not None:
                    payload[NAMESPACE_FIELD] = namespace
                data = pack(payload)
                return data if keyed is None else keyed.dumps_keyed(data, bkey)
            except Exception:  # the generic path raises the right error
                return None

        plain = cast("Callable[[bytes, bytes], R | None]", build)  # builds this schema's R
        self.decode = plain if keyed is None and mark is None else decode
        self.encode = compiled.encode if keyed is None and namespace is None else encode
        self.source, self.name = compiled.source, compiled.name

    def __repr__(self) -> str:
        return f"<RecordCodec of {self.name}>"


def compile_codec(repo: Repo[R, K]) -> RecordCodec[R] | None:
    """The compiled codec of ``repo``, or ``None`` when its records keep the generic path.

    Compiled when the serializer is the msgpack preset, alone or under
    :func:`~cacheorm.signed` and :func:`~cacheorm.compressed` (their own byte
    layers are kept, the preset is replaced); the schema's part is compiled
    once per schema and shared.
    """
    try:
        layers = _byte_layers(repo.serializer)
    except _Fallback:
        return None
    compiled = _compile(repo.schema)
    if compiled is None:
        return None
    namespace = repo.namespace if repo.namespace and repo.marks_namespace else None
    return RecordCodec(compiled, layers, namespace)
