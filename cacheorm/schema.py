"""Schema: a record type compiled into per-field converters, a key and defaults.

``Schema(Person, key="name")`` reads the record's annotations once, picks a
field rule for each (``fields=`` overrides one), checks ``defaults=`` and the
key, and compiles everything the hot path needs into tuples of bound methods:
no ``get_type_hints``, ``inspect`` or ``isinstance`` chains per call.

Record types: ``typing.NamedTuple``, ``typing.TypedDict`` (total or not) and
``@dataclass(frozen=True)``; nested records of any of these kinds, lists and
``dict[str, T]`` of them, and ``T | None``.

>>> from typing import NamedTuple
>>> class Person(NamedTuple):
...     name: str
...     height: float
>>> PERSON = Schema(Person, key="name")
>>> PERSON.dump(PERSON.prepare(Person("Sam", 178)))
{'name': 'Sam', 'height': 178.0}
>>> PERSON.load({"name": "Sam", "height": 178.0, "retired": "ignored"})
Person(name='Sam', height=178.0)
>>> PERSON.encode_key("Sam", namespace="app")
b'app/Person:Sam'
"""

from __future__ import annotations

import dataclasses
import enum
import re
import types
import typing
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from operator import attrgetter, itemgetter
from typing import Final, Generic, NamedTuple, NoReturn, TypeVar, cast, get_args, get_origin

from typing_extensions import TypeVar as DefaultTypeVar

from cacheorm.backends.base import is_int
from cacheorm.errors import (
    DecodeError,
    FieldLoadError,
    FieldValidationError,
    SchemaError,
    ValidationError,
)
from cacheorm.fields import (
    SIMPLE_FIELDS,
    AutoField,
    DictField,
    EnumField,
    Field,
    ListField,
    NullableField,
    kept_as_is,
)
from cacheorm.keys import KeyCodec, KeyFormat

if typing.TYPE_CHECKING:
    from _typeshed import DataclassInstance

    from cacheorm.serializers.base import Payload, Primitive

__all__ = ["RecordField", "Schema"]

R = TypeVar("R")
K = DefaultTypeVar("K", default=Hashable)


class _Missing(enum.Enum):
    MISSING = "missing"


_MISSING = _Missing.MISSING


class _Kind(enum.Enum):
    NAMEDTUPLE = "NamedTuple"
    TYPEDDICT = "TypedDict"
    DATACLASS = "dataclass"


def _kind_of(tp: object) -> _Kind | None:
    if isinstance(tp, type):
        if issubclass(tp, tuple) and hasattr(tp, "_fields"):
            return _Kind.NAMEDTUPLE
        if typing.is_typeddict(tp):
            return _Kind.TYPEDDICT
        if dataclasses.is_dataclass(tp):
            return _Kind.DATACLASS
    return None


Default = Callable[[], object]
Hints = dict[str, object]


def _constant(value: object) -> Default:
    return lambda: value


# -- record kinds: what a record type declares, one function per kind --------


class _Shape(NamedTuple):
    """What a record type declares, whatever its kind."""

    kind: _Kind
    names: tuple[str, ...]
    required: frozenset[str]
    defaults: dict[str, Default]
    """The record type's own defaults (constants and factories)."""
    constants: dict[str, object]
    """Those defaults that are constants: they must be storable."""


def _namedtuple_shape(record_type: type[object], hints: Hints, label: str) -> _Shape:
    names = tuple(cast("tuple[str, ...]", record_type._fields))  # type: ignore[attr-defined]  # NamedTuple
    constants = dict(record_type._field_defaults)  # type: ignore[attr-defined]  # NamedTuple
    defaults = {name: _constant(value) for name, value in constants.items()}
    return _Shape(_Kind.NAMEDTUPLE, names, frozenset(names), defaults, constants)


def _typeddict_shape(record_type: type[object], hints: Hints, label: str) -> _Shape:
    required = _typeddict_required(record_type, label)
    return _Shape(_Kind.TYPEDDICT, tuple(hints), required, {}, {})


def _dataclass_shape(record_type: type[object], hints: Hints, label: str) -> _Shape:
    if not record_type.__dataclass_params__.frozen:  # type: ignore[attr-defined]  # dataclass
        raise SchemaError(
            f"{label}: dataclass {record_type.__name__} is mutable; "
            "declare it @dataclass(frozen=True)"
        )
    init_vars = sorted(n for n, h in hints.items() if isinstance(h, dataclasses.InitVar))
    if init_vars:
        raise SchemaError(
            f"{label}: {record_type.__name__} has InitVar field(s) {init_vars}, which "
            "are not stored and would shift the others when the record is rebuilt; "
            "make them fields or compute them in a property"
        )
    dc_fields = [
        f for f in dataclasses.fields(cast("type[DataclassInstance]", record_type)) if f.init
    ]
    names = tuple(f.name for f in dc_fields)
    constants = {f.name: f.default for f in dc_fields if f.default is not dataclasses.MISSING}
    defaults = {name: _constant(value) for name, value in constants.items()}
    for f in dc_fields:
        if f.default_factory is not dataclasses.MISSING:
            defaults[f.name] = f.default_factory
    return _Shape(_Kind.DATACLASS, names, frozenset(names), defaults, constants)


_SHAPE_OF: Mapping[_Kind, Callable[[type[object], Hints, str], _Shape]] = {
    _Kind.NAMEDTUPLE: _namedtuple_shape,
    _Kind.TYPEDDICT: _typeddict_shape,
    _Kind.DATACLASS: _dataclass_shape,
}


def _shape(record_type: type[object], label: str) -> tuple[_Shape, Hints]:
    """The record type's shape and resolved annotations, or :class:`SchemaError`."""
    kind = _kind_of(record_type)
    if kind is None:
        raise SchemaError(
            f"{label}: {record_type!r} is not a record type; use a NamedTuple, "
            "a TypedDict or a @dataclass(frozen=True)"
        )
    try:
        hints: Hints = typing.get_type_hints(record_type)
    except Exception as err:
        raise SchemaError(
            f"{label}: cannot resolve the annotations of {record_type.__name__}: {err}"
        ) from err
    return _SHAPE_OF[kind](record_type, hints, label), hints


def _typeddict_required(record_type: type[object], label: str) -> frozenset[str]:
    """The required keys of a TypedDict, honouring ``Required``/``NotRequired``.

    Under ``from __future__ import annotations`` Python 3.11 cannot see the
    markers when it builds ``__required_keys__``, so read them from the hints.
    """
    required = set(record_type.__required_keys__)  # type: ignore[attr-defined]  # TypedDict
    try:
        hints = typing.get_type_hints(record_type, include_extras=True)
    except Exception as err:  # pragma: no cover - resolved once already
        raise SchemaError(f"{label}: cannot resolve annotations: {err}") from err
    for field_name, hint in hints.items():
        origin = get_origin(hint)
        while origin is typing.Annotated:
            hint = get_args(hint)[0]
            origin = get_origin(hint)
        if origin is typing.NotRequired:
            required.discard(field_name)
        elif origin is typing.Required:
            required.add(field_name)
    return frozenset(required)


# -- field rules and defaults -------------------------------------------------


_PLAIN_KEYS: Final = (str, int)
"""Key types whose equal values are stored alike (not so a float, a Decimal, a tuple...)."""


def _refuse_unknown(
    record_type: type[object],
    names: tuple[str, ...],
    given: Mapping[str, object],
    what: str,
    label: str,
) -> None:
    """Refuse ``fields=`` or ``defaults=`` entries naming no field of the record."""
    unknown = sorted(set(given) - set(names))
    if unknown:
        raise SchemaError(
            f"{label}: {what}= names {unknown}, which {record_type.__name__} does not "
            f"have; its fields are {', '.join(names)}"
        )


def _field_rules(
    shape: _Shape,
    hints: Hints,
    overrides: Mapping[str, Field[object]],
    label: str,
    building: frozenset[type[object]],
) -> dict[str, Field[object]]:
    """The rule of every field: the ``fields=`` override, else inferred."""
    rules: dict[str, Field[object]] = {}
    for field_name in shape.names:
        where = f"{label}.{field_name}"
        override = overrides.get(field_name)
        if override is None:
            rules[field_name] = _infer(hints[field_name], where, building)
        else:
            rules[field_name] = _overridden(override, hints[field_name], where)
    return rules


def _overridden(override: object, annotation: object, where: str) -> Field[object]:
    """A ``fields=`` override, made nullable where the annotation is ``T | None``."""
    if not isinstance(override, Field):
        raise SchemaError(f"{where}: fields= value {override!r} is not a Field")
    if _is_optional(annotation) and not isinstance(override, NullableField):
        return NullableField(override)
    return cast("Field[object]", override)


def _check_default(rule: Field[object], value: object, where: str, whose: str, fix: str) -> None:
    """Refuse a constant default its field cannot store, at schema construction."""
    try:
        rule.prepare(value)
    except ValidationError as err:
        raise SchemaError(f"{where}: {whose} {value!r} cannot be stored: {err}; {fix}") from err


def _schema_defaults(
    rules: Mapping[str, Field[object]], defaults: Mapping[str, object], label: str
) -> dict[str, Default]:
    """``Schema(defaults=...)`` as zero-argument callables, constants checked storable."""
    out: dict[str, Default] = {}
    for field_name, value in defaults.items():
        if callable(value):
            out[field_name] = value
            continue
        _check_default(
            rules[field_name],
            value,
            f"{label}.{field_name}",
            "default",
            "pass a value of the field's type or a zero-argument callable",
        )
        out[field_name] = _constant(value)
    return out


def _check_record_constants(
    rules: Mapping[str, Field[object]],
    shape: _Shape,
    schema_defaults: Mapping[str, Default],
    label: str,
) -> None:
    """Refuse a record type's own constant default its field cannot store."""
    for field_name, value in shape.constants.items():
        # A record default of None is a common "not set yet" marker that a
        # schema default fills; any other constant must be storable.
        if field_name in schema_defaults or value is None:
            continue
        _check_default(
            rules[field_name],
            value,
            f"{label}.{field_name}",
            "the record's default",
            "fix the annotation or the default",
        )


def _is_optional(annotation: object) -> bool:
    return get_origin(annotation) in (typing.Union, types.UnionType) and type(None) in get_args(
        annotation
    )


def _infer(annotation: object, where: str, building: frozenset[type[object]]) -> Field[object]:
    """Pick the field rule for an annotation, or raise :class:`SchemaError`."""
    origin = get_origin(annotation)
    args = get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        others = [a for a in args if a is not type(None)]
        if len(others) != 1 or len(others) == len(args):
            _unsupported(where, annotation, "a union is supported only as T | None")
        return NullableField(_infer(others[0], where, building))
    try:
        simple = SIMPLE_FIELDS.get(annotation)
    except TypeError:  # an unhashable annotation object: not a simple type
        simple = None
    if simple is not None:
        return simple()
    if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        return cast("Field[object]", EnumField(annotation))
    if origin is list:
        if len(args) != 1:
            _unsupported(where, annotation, "write list[T]")
        return cast("Field[object]", ListField(_infer(args[0], f"{where}[]", building)))
    if origin is dict:
        if len(args) != 2 or args[0] is not str:
            _unsupported(where, annotation, "write dict[str, T]: keys must be str")
        return cast("Field[object]", DictField(_infer(args[1], f"{where}[]", building)))
    if _kind_of(annotation) is not None:
        return _nested(cast("type[object]", annotation), where, building)
    _unsupported(
        where,
        annotation,
        "supported: str int float bool bytes Decimal datetime date time UUID Enum "
        "list[T] dict[str, T] T | None and nested records; or pass fields={...: SomeField()}",
    )


def _nested(
    record_type: type[object], where: str, building: frozenset[type[object]]
) -> RecordField:
    if record_type in building:
        _unsupported(where, record_type, "recursive record types cannot be stored")
    return RecordField(
        _RecordCodec(record_type, overrides={}, defaults={}, building=building, label=where)
    )


def _unsupported(where: str, annotation: object, hint: str) -> NoReturn:
    raise SchemaError(f"{where}: cannot store annotation {annotation!r}; {hint}")


# -- the codec ----------------------------------------------------------------


class _RecordCodec:
    """The compiled conversion of one record type (top level or nested).

    ``prepare`` and ``dump`` are bound at construction to the variant of the
    record's kind (a dict or an object), so the hot path tests no kind.
    """

    __slots__ = (
        "build",
        "dump",
        "fields",
        "fills_none",
        "hints",
        "index",
        "kept",
        "kind",
        "load_defaults",
        "name_set",
        "names",
        "plan",
        "prepare",
        "record_type",
        "required",
        "to_convert",
        "to_load",
        "values_of",
    )

    prepare: Callable[[object], object]
    """Validate, apply defaults and normalise; returns a new record."""
    dump: Callable[[object], Payload]
    """Prepared record -> ``{field: primitive}``."""

    def __init__(
        self,
        record_type: type[object],
        *,
        overrides: Mapping[str, Field[object]],
        defaults: Mapping[str, object],
        building: frozenset[type[object]],
        label: str,
    ) -> None:
        shape, self.hints = _shape(record_type, label)
        self.kind, self.record_type, self.names = shape.kind, record_type, shape.names
        self.name_set, self.required = frozenset(shape.names), shape.required
        _refuse_unknown(record_type, shape.names, overrides, "fields", label)
        _refuse_unknown(record_type, shape.names, defaults, "defaults", label)
        rules = _field_rules(shape, self.hints, overrides, label, building | {record_type})
        self.fields: Mapping[str, Field[object]] = types.MappingProxyType(rules)
        schema_defaults = _schema_defaults(rules, defaults, label)
        _check_record_constants(rules, shape, schema_defaults, label)
        self._compile_write(schema_defaults)
        self._compile_read(shape.defaults, schema_defaults)
        self.values_of = self._compile_values_of()
        self.build = self._compile_build()
        self.index = {name: i for i, name in enumerate(self.names)}
        self.kept = self._compile_kept(schema_defaults)
        dict_kind = shape.kind is _Kind.TYPEDDICT
        self.prepare = self._prepare_dict if dict_kind else self._prepare_object
        self.dump = self._dump_dict if dict_kind else self._dump_object

    def _compile_write(self, schema_defaults: Mapping[str, Default]) -> None:
        rules, required = self.fields, self.required
        # (name, prepare, default-or-None, required) per field.
        self.plan = tuple(
            (n, rules[n].prepare, schema_defaults.get(n), n in required) for n in self.names
        )
        self.to_convert = tuple(
            (n, rules[n].dump) for n in self.names if not rules[n].dump_is_identity
        )

    def _compile_kept(self, schema_defaults: Mapping[str, Default]) -> Callable[[object], bool]:
        """A compiled test that a record of exactly the record type is stored as it is.

        True only when every value passes its field's rule unchanged (see
        :func:`cacheorm.fields.kept_as_is`): ``prepare`` then returns the record
        without its field-by-field loop. False, or an exception, means nothing:
        the loop decides (and names the field at fault).
        """
        if self.kind is _Kind.TYPEDDICT:
            return lambda record: False  # a dict is always copied
        env: dict[str, object] = {"_values_of": self.values_of}
        values = "record" if self.kind is _Kind.NAMEDTUPLE else "_values_of(record)"  # no copy
        names = [f"v{i}" for i in range(len(self.names))]
        tests = [
            kept_as_is(self.fields[name], var, env, name not in schema_defaults)
            for name, var in zip(self.names, names, strict=True)
        ]
        source = (
            "def kept(record):\n"
            f"    {', '.join(names)}, = {values}\n"
            f"    return {' and '.join(tests) or 'True'}\n"
        )
        exec(
            compile(source, f"<cacheorm.schema kept {self.record_type.__name__}>", "exec"), env
        )  # source built above from field types only
        return cast("Callable[[object], bool]", env["kept"])

    def _compile_read(
        self, record_defaults: Mapping[str, Default], schema_defaults: Mapping[str, Default]
    ) -> None:
        self.to_load = tuple((n, self.fields[n].load) for n in self.names)
        # Schema defaults first, then the record type's own defaults.
        self.load_defaults = {**record_defaults, **schema_defaults}
        # On write only schema defaults replace None, so only they may on read:
        # a stored None in a field with a record-type default is a real None.
        self.fills_none = frozenset(schema_defaults)

    def _compile_values_of(self) -> Callable[[object], Sequence[object]]:
        if self.kind is _Kind.NAMEDTUPLE:
            return cast("Callable[[object], Sequence[object]]", tuple)
        if len(self.names) == 1:
            (only,) = self.names
            return lambda record: (getattr(record, only),)
        return cast("Callable[[object], Sequence[object]]", attrgetter(*self.names))

    def _compile_build(self) -> Callable[[Sequence[object]], object]:
        cls = self.record_type
        names = self.names
        if self.kind is _Kind.NAMEDTUPLE:
            return lambda values: tuple.__new__(cls, values)  # type: ignore[type-var]  # NamedTuple
        if self.kind is _Kind.TYPEDDICT:
            return lambda values: {
                n: v for n, v in zip(names, values, strict=True) if v is not _MISSING
            }
        dc_fields = dataclasses.fields(cast("type[DataclassInstance]", cls))
        keyword_only = any(f.kw_only for f in dc_fields if f.init)
        if keyword_only:
            return lambda values: cls(**dict(zip(names, values, strict=True)))
        return lambda values: cls(*values)

    def _refuse(self, record: object) -> NoReturn:
        """The one "this is not an R" error of both write paths and ``evolve``."""
        what = self.record_type.__name__ + (" dict" if self.kind is _Kind.TYPEDDICT else "")
        raise ValidationError(f"expected a {what}, got {type(record).__name__}")

    def as_mapping(self, record: object) -> Mapping[str, object]:
        """``record``'s fields by name (a TypedDict as it is), or :class:`ValidationError`."""
        if self.kind is _Kind.TYPEDDICT:
            if isinstance(record, dict):
                return cast("Mapping[str, object]", record)
        elif isinstance(record, self.record_type):
            return dict(zip(self.names, self.values_of(record), strict=True))
        self._refuse(record)

    # -- write side ---------------------------------------------------------

    def _prepare_dict(self, record: object) -> object:
        if not isinstance(record, dict):
            self._refuse(record)
        extra = record.keys() - self.name_set
        if extra:
            raise FieldValidationError(
                (str(sorted(extra, key=str)[0]),),
                f"{self.record_type.__name__} has no such field; "
                f"its fields are {', '.join(self.names)}",
            )
        out: dict[str, object] = {}
        for name, prepare, default, required in self.plan:
            value = record.get(name, _MISSING)
            if value is None or value is _MISSING:
                if default is not None:
                    value = default()
                elif value is _MISSING:
                    if required:
                        raise FieldValidationError((name,), "required field is missing")
                    continue
            try:
                out[name] = prepare(value)
            except ValidationError as err:
                raise FieldValidationError.at(name, err) from err
        return out

    def _prepare_object(self, record: object) -> object:
        if type(record) is self.record_type:
            try:
                if self.kept(record):
                    return record  # already as it will be stored (records are immutable)
            except Exception:  # the loop below gives the error
                pass
        if not isinstance(record, self.record_type):
            self._refuse(record)
        values = list(self.values_of(record))
        same = type(record) is self.record_type  # else built anew, as the record type
        for index, (name, prepare, default, _) in enumerate(self.plan):
            value = values[index]
            if value is None and default is not None:
                value = default()
            try:
                prepared = prepare(value)
            except ValidationError as err:
                raise FieldValidationError.at(name, err) from err
            if prepared is not values[index]:
                values[index] = prepared
                same = False
        if same:
            return record  # already as it will be stored (records are immutable)
        try:
            return self.build(values)
        except Exception as err:  # a dataclass __post_init__ may reject the values
            raise ValidationError(
                f"{self.record_type.__name__}(...) rejected the values: {err}"
            ) from err

    def _dump_dict(self, record: object) -> Payload:
        source = cast("dict[str, Primitive]", record)
        payload: Payload = {n: source[n] for n in self.names if n in source}
        for name, dump in self.to_convert:
            if name in payload:
                payload[name] = dump(payload[name])
        return payload

    def _dump_object(self, record: object) -> Payload:
        payload: Payload = dict(
            zip(self.names, cast("Sequence[Primitive]", self.values_of(record)), strict=True)
        )
        for name, dump in self.to_convert:
            payload[name] = dump(payload[name])
        return payload

    # -- read side ----------------------------------------------------------

    def load(self, data: Primitive) -> object:
        """Primitives -> record; raises :class:`FieldLoadError` naming the field."""
        if type(data) is not dict:
            raise FieldLoadError((), f"expected a dict of fields, got {type(data).__name__}")
        try:
            values: list[object] = [load(data[name]) for name, load in self.to_load]
        except Exception:
            # Rare path (evolved payload or bad data): redo field by field to
            # apply defaults and name the culprit.
            values = [self._load_field(name, load, data) for name, load in self.to_load]
        else:
            if self.fills_none:  # a stored null a schema default replaces, as on write
                for index, (name, load) in enumerate(self.to_load):
                    if data[name] is None and name in self.fills_none:
                        values[index] = self._load_field(name, load, data)
        try:
            return self.build(values)
        except Exception as err:
            raise FieldLoadError((), f"{self.record_type.__name__}(...) rejected: {err}") from err

    def _load_field(
        self, name: str, load: Callable[[Primitive], object], data: dict[str, Primitive]
    ) -> object:
        """One field of a payload, its default where it is missing (or a null it cannot hold)."""
        default = self.load_defaults.get(name)
        raw = data.get(name, _MISSING)
        if raw is not _MISSING and not (raw is None and name in self.fills_none):
            try:
                return load(raw)
            except Exception as err:
                if raw is not None or default is None:
                    raise FieldLoadError.at(name, err) from err
            # A null the field cannot hold (it was nullable in an older
            # record type): take the default below.
        if default is not None:
            try:
                return self.fields[name].prepare(default())
            except ValidationError as err:
                raise FieldLoadError((name,), f"default cannot be stored: {err}") from err
        if name not in self.required:
            return _MISSING
        raise FieldLoadError(
            (name,),
            "required field is missing or null; give it a default in "
            "Schema(defaults=...) or in the record type to read older payloads",
        )


@dataclasses.dataclass(frozen=True, slots=True, eq=False)
class RecordField(Field[object]):
    """A nested record (NamedTuple, TypedDict or frozen dataclass), stored as a dict."""

    codec: _RecordCodec

    def prepare(self, value: object) -> object:
        return self.codec.prepare(value)

    def dump(self, value: object) -> Primitive:
        return self.codec.dump(value)

    def load(self, data: Primitive) -> object:
        return self.codec.load(data)


# -- the schema's key ---------------------------------------------------------


def _schema_label(record_type: object, name: object, version: object) -> str:
    """The schema's name (``name=`` or the record type's); ``name`` and ``version`` checked."""
    label = name if name is not None else getattr(record_type, "__name__", repr(record_type))
    # Checked at run time: callers may be untyped.
    if name is not None and (not isinstance(name, str) or not name):
        raise SchemaError(f"Schema name must be a non-empty str, got {name!r}")
    if version is not None and not (isinstance(version, str) or is_int(version)):
        raise SchemaError(f"{label}: version must be a str or an int, got {version!r}")
    return cast("str", label)


def _key_fields(key: str | Sequence[str], codec: _RecordCodec, label: str) -> tuple[str, ...]:
    """``key=`` as a tuple of field names, each a field that every record has."""
    key_fields = (key,) if isinstance(key, str) else tuple(key)
    if not key_fields or not all(isinstance(k, str) for k in key_fields):
        raise SchemaError(f"{label}: key must be a field name or a tuple of field names")
    if len(set(key_fields)) != len(key_fields):
        raise SchemaError(f"{label}: key {key_fields} repeats a field")
    for key_field in key_fields:
        if key_field not in codec.name_set:
            raise SchemaError(
                f"{label}: key field {key_field!r} is not a field of "
                f"{codec.record_type.__name__}; its fields are {', '.join(codec.names)}"
            )
        if codec.kind is _Kind.TYPEDDICT and key_field not in codec.required:
            raise SchemaError(
                f"{label}: key field {key_field!r} is NotRequired; a key must be present"
            )
    return key_fields


def _auto_key(codec: _RecordCodec, key_fields: tuple[str, ...], label: str) -> bool:
    """Whether the key is an :class:`AutoField`, which must be the single ``int | None`` key."""
    auto_key = False
    for field_name, rule in codec.fields.items():
        inner = rule.inner if isinstance(rule, NullableField) else rule
        if not isinstance(inner, AutoField):
            continue
        if key_fields != (field_name,):
            raise SchemaError(
                f"{label}.{field_name}: AutoField is only for the single key field; "
                f"use IntegerField here or make {field_name!r} the key"
            )
        hint = codec.hints[field_name]
        if not (_is_optional(hint) and set(get_args(hint)) == {int, type(None)}):
            raise SchemaError(
                f"{label}.{field_name}: AutoField needs the annotation int | None "
                "(None until the id is assigned on insert)"
            )
        auto_key = True
    return auto_key


def _key_rules(
    codec: _RecordCodec, key_fields: tuple[str, ...], auto_key: bool
) -> tuple[Field[object], ...]:
    """The rule validating each key value; an AutoField key is never None as a key."""
    rules = [codec.fields[key_field] for key_field in key_fields]
    if auto_key:
        rules = [rule.inner if isinstance(rule, NullableField) else rule for rule in rules]
    return tuple(rules)


def _key_getter(codec: _RecordCodec, key_fields: tuple[str, ...]) -> Callable[[object], object]:
    if codec.kind is _Kind.TYPEDDICT:
        return cast("Callable[[object], object]", itemgetter(*key_fields))
    if codec.kind is _Kind.NAMEDTUPLE:
        indexes = (codec.names.index(k) for k in key_fields)
        return cast("Callable[[object], object]", itemgetter(*indexes))
    return attrgetter(*key_fields)


class Schema(Generic[R, K]):
    """A record type with its key, field rules, defaults and version.

    Args:
        record_type: a ``NamedTuple``, ``TypedDict`` or ``@dataclass(frozen=True)``.
        key: the key field's name, or a tuple of names for a composite key
            (key values are then tuples in that order).
        name: the schema's name in keys (default: the record type's name).
        key_format: a printf string (``"collection.%s.%d"``), a ``str.format``
            string naming key fields (``"{collector}/{note_id}"``) or a callable
            taking the key values; default: ``Name:key`` (see :mod:`cacheorm.keys`).
        fields: per-field overrides of the inferred rules, e.g.
            ``{"price": DecimalField(2)}``; ``AutoField()`` on an ``int | None`` key.
        defaults: a value or zero-argument callable per field, used when a
            written value is missing or ``None`` and when an older payload lacks it.
        version: part of every key, so a changed schema never reads old payloads.

    Raises:
        SchemaError: the record type, a field, a default or the key cannot be
            honoured; the message names the field and what to do.

    A schema is immutable and hashable (by identity).
    """

    __slots__ = (
        "_codec",
        "_dump",
        "_key_getter",
        "_key_index",
        "_keys",
        "_load",
        "_prepare",
        "auto_key",
        "field_names",
        "fields",
        "key_fields",
        "name",
        "record_type",
        "version",
    )

    record_type: type[R]
    name: str
    version: str | None
    key_fields: tuple[str, ...]
    field_names: tuple[str, ...]
    auto_key: bool
    fields: Mapping[str, Field[object]]
    _codec: _RecordCodec
    # The codec's hot-path methods, bound once and typed on R.
    _prepare: Callable[[R], R]
    _dump: Callable[[R], Payload]
    _load: Callable[[Primitive], R]
    _keys: KeyCodec
    _key_getter: Callable[[R], K]  # set from _key_getter(), whose getter reads the key fields
    _key_index: tuple[int, ...]

    def __init__(
        self,
        record_type: type[R],
        key: str | Sequence[str],
        *,
        name: str | None = None,
        key_format: KeyFormat | None = None,
        fields: Mapping[str, Field[object]] | None = None,
        defaults: Mapping[str, object] | None = None,
        version: str | int | None = None,
    ) -> None:
        label = _schema_label(record_type, name, version)
        codec = _RecordCodec(
            cast("type[object]", record_type),
            overrides=dict(fields or {}),
            defaults=dict(defaults or {}),
            building=frozenset(),
            label=label,
        )
        key_fields = _key_fields(key, codec, label)
        auto_key = _auto_key(codec, key_fields, label)
        text_version = None if version is None else str(version)
        keys = KeyCodec(
            name=label,
            version=text_version,
            key_fields=key_fields,
            key_rules=_key_rules(codec, key_fields, auto_key),
            key_format=key_format,
        )
        setattr_ = object.__setattr__
        setattr_(self, "record_type", record_type)
        setattr_(self, "name", label)
        setattr_(self, "version", text_version)
        setattr_(self, "key_fields", key_fields)
        setattr_(self, "field_names", codec.names)
        setattr_(self, "auto_key", auto_key)
        setattr_(self, "fields", codec.fields)
        setattr_(self, "_codec", codec)
        setattr_(self, "_prepare", codec.prepare)
        setattr_(self, "_dump", codec.dump)
        setattr_(self, "_load", codec.load)
        setattr_(self, "_keys", keys)
        setattr_(self, "_key_index", tuple(codec.names.index(k) for k in key_fields))
        setattr_(self, "_key_getter", _key_getter(codec, key_fields))

    def __setattr__(self, name: str, value: object) -> NoReturn:
        raise AttributeError(f"Schema is immutable; cannot set {name!r}")

    def __delattr__(self, name: str) -> NoReturn:
        raise AttributeError(f"Schema is immutable; cannot delete {name!r}")

    def __repr__(self) -> str:
        if not hasattr(self, "_keys"):  # construction failed part way
            return "Schema(<incomplete>)"
        version = "" if self.version is None else f", version={self.version!r}"
        key = self.key_fields[0] if len(self.key_fields) == 1 else self.key_fields
        return f"Schema({self.record_type.__name__}, key={key!r}, name={self.name!r}{version})"

    # -- records ------------------------------------------------------------

    def key_of(self, record: R) -> K:
        """The record's key: the key field's value, or a tuple for a composite key.

        Raises:
            ValidationError: the record lacks a key field.
        """
        try:
            return self._key_getter(record)
        except (KeyError, AttributeError, IndexError, TypeError) as err:
            raise ValidationError(
                f"{self.name}: cannot read key {self.key_fields} from {type(record).__name__}"
            ) from err

    def prepare(self, record: R) -> R:
        """The record as it will be stored: validated, defaults applied, normalised.

        Never mutates ``record`` (a TypedDict comes back as a new dict).

        Raises:
            ValidationError: ``record`` is not an R, or a value cannot be stored;
                the message names the field (``Person.height: expected float, got str``).
        """
        try:
            return self._prepare(record)
        except FieldValidationError as err:
            raise FieldValidationError.at(self.name, err) from err
        except ValidationError as err:
            raise ValidationError(f"{self.name}: {err}") from err

    def dump(self, record: R) -> Payload:
        """A prepared record as ``{field: primitive}``.

        Raises:
            ValidationError: only from a :class:`StructField` whose ``dump`` failed.
        """
        return self._dump(record)

    def load(self, payload: Primitive, key: object = None) -> R:
        """Rebuild a record from a payload written by this or an older schema.

        Missing fields take the schema's defaults, then the record type's own;
        extra fields are ignored.

        Raises:
            DecodeError: the payload cannot become the record (not a dict, a
                required field missing, a wrong type); names the schema and key.
        """
        try:
            return self._load(payload)
        except FieldLoadError as err:
            raise DecodeError(
                f"cannot load {self.name} (key {key!r}): {err.where}: {err.reason}"
            ) from err

    def check_changes(self, changes: Mapping[str, object]) -> None:
        """Refuse ``changes`` that :meth:`evolve` would refuse whatever the record.

        Call it before touching any record, e.g. to validate every change of a
        batch before the first write. :meth:`evolve` calls it too, so the two
        cannot disagree. ``changes`` is refused when it:

        * names a field the record type does not have;
        * names a key field, whatever the value (even the current one);
        * gives ``None`` to a field that cannot hold it (not ``T | None``,
          not a :class:`JSONField`, ...) unless a schema default fills it
          (``Schema(defaults=...)``; a record type's own default does not,
          as on insert). A callable default is not called here;
        * gives any other value its field's ``prepare`` or ``dump`` refuses
          (wrong type, out of range, not finite, a failing ``StructField``).

        What it cannot see, :meth:`evolve` still refuses with the record in
        hand: a frozen dataclass whose ``__post_init__`` rejects the merged
        values, or a callable default returning a value its field refuses.

        >>> from typing import NamedTuple
        >>> class Point(NamedTuple):
        ...     name: str
        ...     x: int
        >>> Schema(Point, key="name").check_changes({"x": None})  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        cacheorm.errors.ValidationError: Point.x cannot be None: ... Schema(defaults=...)

        Raises:
            ValidationError: naming the schema and the field; a value's error is
                a :class:`~cacheorm.errors.FieldValidationError` with its path.
        """
        names = self._codec.name_set
        unknown = [] if changes.keys() <= names else sorted(set(changes) - names, key=repr)
        if unknown:
            raise ValidationError(
                f"{self.name} has no field(s) {', '.join(map(repr, unknown))}; "
                f"its fields are {', '.join(self.field_names)}: use one of those"
            )
        for name, value in changes.items():
            self._check_change(name, value)

    def _check_change(self, name: str, value: object) -> None:
        """One change of :meth:`check_changes`, its field known."""
        if name in self.key_fields:
            raise ValidationError(
                f"{self.name}.{name} is part of the key and cannot be changed; "
                "insert a record under the new key and delete the old one"
            )
        if value is None and name in self._codec.fills_none:
            return  # as on insert, the schema default replaces None
        rule = self._codec.fields[name]
        try:
            rule.dump(rule.prepare(value))
        except ValidationError as err:
            if value is None:
                raise ValidationError(
                    f"{self.name}.{name} cannot be None: the field is not nullable and "
                    "has no schema default; pass a value, declare the field T | None, "
                    "or give it a default in Schema(defaults=...)"
                ) from err
            raise FieldValidationError.at(self.name, FieldValidationError.at(name, err)) from err

    def check_same_key(self, key: K, record: R, *, by: str = "an update") -> None:
        """Refuse ``record`` unless it belongs under ``key``: a write never moves a record.

        Keys compare as stored (as :meth:`encode_key` writes them), so a key
        given as ``1`` and a float key ``1.0`` are the same key. Pair it with
        :meth:`check_changes`, which refuses a change of a key field before
        any record is read.

        >>> from typing import NamedTuple
        >>> class Point(NamedTuple):
        ...     name: str
        ...     x: int
        >>> Schema(Point, key="name").check_same_key("a", Point("b", 1))  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        cacheorm.errors.ValidationError: Point 'a': an update cannot change the key (got 'b'); ...

        Args:
            key: the key the record is (to be) stored under.
            record: the record about to be written there.
            by: what changed the record, for the message (``"a before_update hook"``).

        Raises:
            ValidationError: ``record``'s key is not ``key``.
        """
        new = self.key_of(record)
        if new == key and type(new) is type(key) and type(key) in _PLAIN_KEYS:
            return  # equal str or int keys are stored alike: no need to encode them
        if self._keys.encode(new) != self._keys.encode(key):
            raise ValidationError(
                f"{self.name} {key!r}: {by} cannot change the key (got {new!r}); "
                "insert a new record and delete the old one"
            )

    def evolve(
        self,
        record: R,
        changes: Mapping[str, object],
        *,
        checked: bool = False,
        prepared: bool = False,
    ) -> R:
        """A prepared copy of ``record`` with ``changes`` applied.

        ``checked=True``: the caller already passed ``changes`` through
        :meth:`check_changes` (an update checks them once, before its first
        read, not again on every compare-and-set attempt). With ``prepared=True``
        too (``record`` is as :meth:`prepare` or a read returns it), only the
        changed values of a NamedTuple are prepared again.

        Raises:
            ValidationError: ``record`` is not an R, or :meth:`check_changes`
                refuses ``changes`` (an unknown or key field, a value that
                cannot be stored), or the merged record cannot be stored.
        """
        if not checked:
            self.check_changes(changes)
        codec = self._codec
        if prepared and checked and codec.kind is _Kind.NAMEDTUPLE and None not in changes.values():
            return self._changed(record, changes)
        if codec.kind is _Kind.TYPEDDICT:
            try:
                merged = {**codec.as_mapping(record), **changes}
            except ValidationError as err:
                raise ValidationError(f"{self.name}: {err}") from err
            return self.prepare(cast("R", merged))
        if not isinstance(record, codec.record_type):
            try:
                codec._refuse(record)
            except ValidationError as err:
                raise ValidationError(f"{self.name}: {err}") from err
        # A NamedTuple's values without values_of's copy (a tuple, then this list).
        named = codec.kind is _Kind.NAMEDTUPLE
        values = list(cast("Sequence[object]", record) if named else codec.values_of(record))
        index = codec.index
        for name, value in changes.items():  # names known: check_changes passed them
            values[index[name]] = value
        try:
            candidate = codec.build(values)
        except Exception as err:
            raise ValidationError(f"{self.name}: the changes were rejected: {err}") from err
        return self.prepare(cast("R", candidate))

    def _changed(self, record: R, changes: Mapping[str, object]) -> R:
        """:meth:`evolve` of a prepared NamedTuple record by checked changes, none ``None``.

        Each field of a NamedTuple is prepared on its own (``None`` aside, which
        a schema default may fill): the record's own are, and check_changes
        prepared these values once already, so preparing them cannot fail.
        """
        codec = self._codec
        values = list(cast("Sequence[object]", record))
        index, fields = codec.index, codec.fields
        for name, value in changes.items():
            values[index[name]] = fields[name].prepare(value)
        return cast("R", codec.build(values))

    def with_key(self, record: R, key: int) -> R:
        """A copy of ``record`` with its (AutoField) key set to ``key``.

        Raises:
            ValidationError: the schema has a composite key, or ``key`` is not an int.
        """
        if len(self.key_fields) != 1:
            raise ValidationError(f"{self.name} has a composite key; with_key sets a single key")
        (key_field,) = self.key_fields
        codec = self._codec
        try:
            value = codec.fields[key_field].prepare(key)
        except ValidationError as err:
            raise ValidationError(f"{self.name}.{key_field}: {err}") from err
        if codec.kind is _Kind.TYPEDDICT:
            return cast("R", {**cast("dict[str, object]", record), key_field: value})
        values = list(codec.values_of(record))
        values[self._key_index[0]] = value
        return cast("R", codec.build(values))

    # -- keys ---------------------------------------------------------------

    def encode_key(self, key: K, namespace: str = "") -> bytes:
        """The backend key (UTF-8 bytes) for ``key`` in ``namespace``.

        Raises:
            ValidationError: ``key`` has the wrong shape (a composite key needs
                a tuple) or a value its key field cannot hold.
        """
        return self._keys.encode(key, namespace)

    def encode_keys(self, keys: Iterable[K], namespace: str = "") -> list[bytes]:
        """:meth:`encode_key` of each key, in order (a batch's keys in one call).

        Raises:
            ValidationError: as :meth:`encode_key`, for the first key refused.
        """
        return self._keys.encode_many(keys, namespace)

    def counter_key(self, namespace: str = "") -> bytes:
        """The backend key of the AutoField id counter, disjoint from record keys."""
        return self._keys.counter_key(namespace)

    def key_scope(self, namespace: str = "") -> tuple[bytes, re.Pattern[bytes] | None]:
        """Which stored keys hold this schema's records in ``namespace`` (see
        :meth:`cacheorm.keys.KeyCodec.scope`): ``(prefix, shape)``.

        Raises:
            ValidationError: a ``key_format`` that cannot tell its keys from others.
        """
        return self._keys.scope(namespace)
