"""Field rules: one Python value <-> format-neutral primitives, exactly.

A field has three jobs, each a plain method so a schema can compile them into
a tuple of bound methods once and call them on the hot path without lookups:

* :meth:`Field.prepare` validates a value about to be written and normalises
  it (``int`` -> ``float`` for a float field, Decimal rounding, ...). It raises
  :class:`cacheorm.ValidationError`; its result is the value "as stored".
* :meth:`Field.dump` turns a prepared value into a :data:`Primitive`.
* :meth:`Field.load` turns a primitive back into the value. It enforces the
  rules :meth:`Field.prepare` enforces, by calling the same checks (a stored
  ``inf``, an integer past 64 bits or ``Decimal("NaN")`` is refused on read,
  not served and then refused by every update). It raises ``TypeError`` /
  ``ValueError`` for data it cannot accept (:class:`cacheorm.errors.FieldLoadError`,
  a :class:`cacheorm.DecodeError`, when the culprit is deeper inside the
  value); the schema wraps them in :class:`cacheorm.DecodeError` naming the
  schema, key and field.

Fields know nothing of JSON, msgpack or Redis: ``load(dump(prepare(v)))`` is
the same value under every serializer. Fields are frozen dataclasses, so they
compare and hash by value.

>>> DecimalField(decimal_places=2, auto_round=True).prepare(Decimal("1.005"))
Decimal('1.00')
"""

from __future__ import annotations

import datetime as dt
import enum
import math
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from decimal import ROUND_HALF_EVEN, Decimal, InvalidOperation
from typing import Any, Generic, TypeVar, cast

from cacheorm.backends.base import INT64_MAX, INT64_MIN, is_int
from cacheorm.errors import FieldLoadError, FieldValidationError, SchemaError, ValidationError
from cacheorm.serializers.base import Primitive

__all__ = [
    "AutoField",
    "BinaryField",
    "BooleanField",
    "DateField",
    "DateTimeField",
    "DecimalField",
    "DictField",
    "EnumField",
    "Field",
    # The field errors live in cacheorm.errors; still importable from here,
    # where they were first defined.
    "FieldLoadError",
    "FieldValidationError",
    "FloatField",
    "IntegerField",
    "JSONField",
    "ListField",
    "NullableField",
    "StringField",
    "StructField",
    "TimeField",
    "TimestampField",
    "UUIDField",
    "kept_as_is",
]

T_co = TypeVar("T_co", covariant=True)
E = TypeVar("E", bound=enum.Enum)
S = TypeVar("S")


def _tname(value: object) -> str:
    return type(value).__name__


def _check_int64(value: int) -> int:
    """The signed 64-bit rule of every integer a field stores.

    Enforced so that a value one serializer stores is storable by all.
    """
    if INT64_MIN <= value <= INT64_MAX:
        return value
    # A huge int cannot even be printed (int max str digits): give its size.
    shown = value if value.bit_length() <= 128 else f"of {value.bit_length()} bits"
    raise ValidationError(f"integer {shown} is outside the signed 64-bit range")


def _check_finite(value: float) -> float:
    """The rule of every float a field stores: JSON cannot carry NaN or infinity."""
    if math.isfinite(value):
        return value
    raise ValidationError(f"{value} is not finite; NaN and infinity cannot be stored")


def _check_text(value: str) -> str:
    # Lone surrogates cannot be UTF-8 encoded: msgpack would fail where JSON
    # succeeds. Reject them up front so every serializer behaves the same.
    if not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as err:
            raise ValidationError(
                "string is not valid Unicode text (lone surrogate); store it as bytes"
            ) from err
    # Normalise str subclasses (e.g. StrEnum members) to plain str.
    return value if type(value) is str else str.__str__(value)


@dataclass(frozen=True, slots=True)
class Field(Generic[T_co]):
    """Base of every field rule: converts one value to primitives and back.

    Subclasses override :meth:`prepare`, :meth:`dump` and :meth:`load`.
    ``dump_is_identity`` tells the schema it may skip :meth:`dump` for speed.
    """

    @property
    def dump_is_identity(self) -> bool:
        """True if :meth:`dump` returns its (prepared) input unchanged."""
        return False

    def prepare(self, value: object) -> T_co:
        """Validate ``value`` for writing and return it normalised.

        Raises:
            ValidationError: the field cannot store ``value``.
        """
        raise NotImplementedError

    def dump(self, value: object) -> Primitive:
        """Turn a prepared value into primitives."""
        raise NotImplementedError

    def load(self, data: Primitive) -> T_co:
        """Turn primitives produced by :meth:`dump` back into the value.

        Refuses what :meth:`prepare` refuses, by calling the same checks: a
        value read back can always be written again unchanged.

        Raises:
            TypeError: ``data`` has the wrong primitive type.
            ValueError: ``data`` has the right type but a value a write would
                refuse (:class:`FieldLoadError` names where inside it).
        """
        raise NotImplementedError


@dataclass(frozen=True, slots=True)
class StringField(Field[str]):
    """A ``str``; subclasses (``StrEnum`` members) are stored as plain ``str``."""

    @property
    def dump_is_identity(self) -> bool:
        return True

    def prepare(self, value: object) -> str:
        if isinstance(value, str):
            return _check_text(value)
        raise ValidationError(f"expected str, got {_tname(value)}")

    def dump(self, value: object) -> Primitive:
        return cast("str", value)

    def load(self, data: Primitive) -> str:
        if type(data) is str:
            return _check_text(data)
        raise TypeError(f"expected str, got {_tname(data)}")


@dataclass(frozen=True, slots=True)
class IntegerField(Field[int]):
    """A signed 64-bit ``int``. A ``bool`` is rejected: it is not a number here."""

    @property
    def dump_is_identity(self) -> bool:
        return True

    def prepare(self, value: object) -> int:
        if type(value) is int:  # the common case, without a call
            return _check_int64(value)
        if is_int(value):
            return _check_int64(int(value))
        raise ValidationError(f"expected int, got {_tname(value)}")

    def dump(self, value: object) -> Primitive:
        return cast("int", value)

    def load(self, data: Primitive) -> int:
        if type(data) is int:
            return _check_int64(data)
        raise TypeError(f"expected int, got {_tname(data)}")


@dataclass(frozen=True, slots=True)
class AutoField(IntegerField):
    """An ``int | None`` key whose ``None`` is replaced by the next id on insert.

    The id comes from an atomic counter in the backend (``schema.counter_key``).
    """


@dataclass(frozen=True, slots=True)
class FloatField(Field[float]):
    """A finite ``float``; an ``int`` is accepted and stored as ``float``.

    NaN and infinities are rejected with :class:`ValidationError`: JSON cannot
    carry them and ``nan != nan`` would break "read back what you wrote".
    """

    @property
    def dump_is_identity(self) -> bool:
        return True

    def prepare(self, value: object) -> float:
        if isinstance(value, float):
            return _check_finite(float(value))
        if is_int(value):
            return _int_to_float(value)
        raise ValidationError(f"expected float, got {_tname(value)}")

    def dump(self, value: object) -> Primitive:
        return cast("float", value)

    def load(self, data: Primitive) -> float:
        if type(data) is float:
            return _check_finite(data)
        if type(data) is int:
            return _int_to_float(data)
        raise TypeError(f"expected float, got {_tname(data)}")


def _int_to_float(value: int) -> float:
    try:
        return float(value)
    except OverflowError as err:
        raise ValidationError(
            f"an integer of {value.bit_length()} bits is too large for a float"
        ) from err


@dataclass(frozen=True, slots=True)
class BooleanField(Field[bool]):
    """A ``bool`` (``0``/``1`` are not accepted)."""

    @property
    def dump_is_identity(self) -> bool:
        return True

    def prepare(self, value: object) -> bool:
        if type(value) is bool:
            return value
        raise ValidationError(f"expected bool, got {_tname(value)}")

    def dump(self, value: object) -> Primitive:
        return cast("bool", value)

    def load(self, data: Primitive) -> bool:
        if type(data) is bool:
            return data
        raise TypeError(f"expected bool, got {_tname(data)}")


@dataclass(frozen=True, slots=True)
class BinaryField(Field[bytes]):
    """``bytes``; ``bytearray`` and ``memoryview`` are stored as ``bytes``."""

    @property
    def dump_is_identity(self) -> bool:
        return True

    def prepare(self, value: object) -> bytes:
        if type(value) is bytes:
            return value
        if isinstance(value, bytes | bytearray | memoryview):
            return bytes(value)
        raise ValidationError(f"expected bytes, got {_tname(value)}")

    def dump(self, value: object) -> Primitive:
        return cast("bytes", value)

    def load(self, data: Primitive) -> bytes:
        if type(data) is bytes:
            return data
        raise TypeError(f"expected bytes, got {_tname(data)}")


@dataclass(frozen=True, slots=True)
class DecimalField(Field[Decimal]):
    """A finite ``Decimal`` stored as its exact string, digits preserved.

    Args:
        decimal_places: the most digits allowed after the point (``None``: any).
        auto_round: round (half-even) a value with too many places instead of
            rejecting it with :class:`ValidationError`.

    An ``int`` is accepted; a ``float`` is rejected (it is not exact: write
    ``Decimal("0.1")``).
    """

    decimal_places: int | None = None
    auto_round: bool = False
    _quantum: Decimal | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        places = self.decimal_places
        if places is not None:
            if type(places) is not int or places < 0:
                raise SchemaError(
                    f"DecimalField(decimal_places={places!r}): use a non-negative int or None"
                )
            object.__setattr__(self, "_quantum", Decimal(1).scaleb(-places))

    def prepare(self, value: object) -> Decimal:
        if isinstance(value, Decimal):
            result = value
        elif is_int(value):
            result = Decimal(value)
        else:
            hint = " (floats are inexact: pass Decimal(str(x)))" if isinstance(value, float) else ""
            raise ValidationError(f"expected Decimal, got {_tname(value)}{hint}")
        return self._check(result)

    def _check(self, value: Decimal) -> Decimal:
        """The rules of a stored decimal: finite, and rounded to ``decimal_places``."""
        if not value.is_finite():
            raise ValidationError(f"{value} is not finite; NaN and infinity cannot be stored")
        quantum = self._quantum
        if quantum is not None:
            exponent = value.as_tuple().exponent
            assert isinstance(exponent, int)  # finite decimals have int exponents
            if -exponent > cast("int", self.decimal_places):
                if not self.auto_round:
                    raise ValidationError(
                        f"{value} has more than {self.decimal_places} decimal places; "
                        "round it or use DecimalField(auto_round=True)"
                    )
                try:
                    return value.quantize(quantum, rounding=ROUND_HALF_EVEN)
                except InvalidOperation as err:
                    raise ValidationError(f"{value} cannot be rounded: too many digits") from err
        return value

    def dump(self, value: object) -> Primitive:
        return str(value)

    def load(self, data: Primitive) -> Decimal:
        if type(data) is not str:
            raise TypeError(f"expected a decimal string, got {_tname(data)}")
        try:
            value = Decimal(data)
        except InvalidOperation as err:
            raise ValueError(f"{data!r} is not a decimal") from err
        return self._check(value)


def _check_offset(offset: dt.timedelta | None) -> None:
    # ISO 8601 as read by fromisoformat keeps whole-second offsets only.
    if offset is not None and offset.microseconds:
        raise ValidationError(
            f"UTC offset {offset} has a fraction of a second, which cannot be stored; "
            "round the offset to whole seconds"
        )


@dataclass(frozen=True, slots=True)
class DateTimeField(Field[dt.datetime]):
    """A ``datetime`` stored as an ISO 8601 string.

    Aware values keep their UTC offset and microseconds (a ``ZoneInfo`` comes
    back as the fixed offset it had, which compares equal); naive values stay
    naive.
    """

    def prepare(self, value: object) -> dt.datetime:
        if isinstance(value, dt.datetime):
            if value.tzinfo is not None:
                _check_offset(value.utcoffset())
            return value
        raise ValidationError(f"expected datetime, got {_tname(value)}")

    def dump(self, value: object) -> Primitive:
        return cast("dt.datetime", value).isoformat()

    def load(self, data: Primitive) -> dt.datetime:
        if type(data) is not str:
            raise TypeError(f"expected an ISO datetime string, got {_tname(data)}")
        return self.prepare(dt.datetime.fromisoformat(data))


@dataclass(frozen=True, slots=True)
class DateField(Field[dt.date]):
    """A ``date`` (not a ``datetime``) stored as ``YYYY-MM-DD``."""

    def prepare(self, value: object) -> dt.date:
        if isinstance(value, dt.date) and not isinstance(value, dt.datetime):
            return value
        raise ValidationError(f"expected date, got {_tname(value)}")

    def dump(self, value: object) -> Primitive:
        return cast("dt.date", value).isoformat()

    def load(self, data: Primitive) -> dt.date:
        if type(data) is not str:
            raise TypeError(f"expected an ISO date string, got {_tname(data)}")
        return dt.date.fromisoformat(data)


@dataclass(frozen=True, slots=True)
class TimeField(Field[dt.time]):
    """A ``time`` stored as an ISO string; an offset and microseconds are kept."""

    def prepare(self, value: object) -> dt.time:
        if isinstance(value, dt.time):
            if value.tzinfo is not None:
                _check_offset(value.utcoffset())
            return value
        raise ValidationError(f"expected time, got {_tname(value)}")

    def dump(self, value: object) -> Primitive:
        return cast("dt.time", value).isoformat()

    def load(self, data: Primitive) -> dt.time:
        if type(data) is not str:
            raise TypeError(f"expected an ISO time string, got {_tname(data)}")
        return self.prepare(dt.time.fromisoformat(data))


_EPOCH_NAIVE = dt.datetime(1970, 1, 1)
_VALID_RESOLUTIONS = tuple(10**i for i in range(7))


@dataclass(frozen=True, slots=True)
class TimestampField(Field[dt.datetime]):
    """A ``datetime`` stored as an integer count of ``1/resolution`` seconds since 1970.

    Args:
        resolution: units per second: ``1`` (seconds), ``1000`` (ms) ... ``10**6``
            (µs); ``2`` to ``6`` mean ``10**n`` as in peewee. A written value is
            truncated to this resolution, so it reads back equal.
        utc: ``True``: values are aware datetimes, read back in UTC (a naive
            value is rejected). ``False``: values are naive datetimes read as
            UTC wall time (an aware value is converted to UTC, then made naive).
    """

    resolution: int = 1
    utc: bool = False
    _step: int = field(default=1_000_000, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        res = self.resolution
        if type(res) is int and 2 <= res <= 6:
            res = 10**res
        if type(res) is not int or res not in _VALID_RESOLUTIONS:
            raise SchemaError(
                f"TimestampField(resolution={self.resolution!r}): use 1, 1000, 10**6 "
                "or another power of ten up to 10**6"
            )
        object.__setattr__(self, "resolution", res)
        object.__setattr__(self, "_step", 1_000_000 // res)

    def _micros(self, value: dt.datetime) -> int:
        delta = value - _EPOCH_NAIVE
        return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds

    def prepare(self, value: object) -> dt.datetime:
        if not isinstance(value, dt.datetime):
            raise ValidationError(f"expected datetime, got {_tname(value)}")
        aware = value.utcoffset() is not None
        if self.utc and not aware:
            raise ValidationError("naive datetime for TimestampField(utc=True): attach a timezone")
        naive = value.astimezone(dt.UTC).replace(tzinfo=None) if aware else value
        excess = self._micros(naive) % self._step
        if excess:
            naive = naive - dt.timedelta(microseconds=excess)
        return naive.replace(tzinfo=dt.UTC) if self.utc else naive

    def dump(self, value: object) -> Primitive:
        naive = cast("dt.datetime", value).replace(tzinfo=None)
        return self._micros(naive) // self._step

    def load(self, data: Primitive) -> dt.datetime:
        if type(data) is not int:
            raise TypeError(f"expected an integer timestamp, got {_tname(data)}")
        try:
            naive = _EPOCH_NAIVE + dt.timedelta(microseconds=data * self._step)
        except OverflowError as err:
            raise ValueError(f"timestamp {data} is outside the datetime range") from err
        return naive.replace(tzinfo=dt.UTC) if self.utc else naive


@dataclass(frozen=True, slots=True)
class UUIDField(Field[uuid.UUID]):
    """A ``uuid.UUID`` stored as its canonical 36-character string."""

    def prepare(self, value: object) -> uuid.UUID:
        if isinstance(value, uuid.UUID):
            return value
        raise ValidationError(f"expected UUID, got {_tname(value)}")

    def dump(self, value: object) -> Primitive:
        return str(value)

    def load(self, data: Primitive) -> uuid.UUID:
        if type(data) is not str:
            raise TypeError(f"expected a UUID string, got {_tname(data)}")
        return uuid.UUID(data)


@dataclass(frozen=True, slots=True)
class EnumField(Field[E]):
    """A member of ``enum_type``, stored as its ``value`` (str, int, float or bool).

    Args:
        enum_type: the ``Enum`` class; every member's value must be a str, int,
            float or bool, otherwise :class:`SchemaError`.
    """

    enum_type: type[E]
    _by_value: Mapping[object, E] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )

    def __post_init__(self) -> None:
        enum_type: object = self.enum_type  # checked at run time: callers may be untyped
        if not (isinstance(enum_type, type) and issubclass(enum_type, enum.Enum)):
            raise SchemaError(f"EnumField({self.enum_type!r}): pass an Enum class")
        by_value: dict[object, E] = {}
        for member in self.enum_type:
            if type(member.value) not in (str, int, float, bool):
                raise SchemaError(
                    f"EnumField({self.enum_type.__name__}): member {member.name} has a "
                    f"{_tname(member.value)} value; use str or int values or a StructField"
                )
            # Keyed by (type, value) so True and 1 do not alias.
            by_value[(type(member.value), member.value)] = member
        object.__setattr__(self, "_by_value", by_value)

    def prepare(self, value: object) -> E:
        if isinstance(value, self.enum_type):
            return value
        raise ValidationError(f"expected {self.enum_type.__name__}, got {_tname(value)}")

    def dump(self, value: object) -> Primitive:
        return cast("Primitive", cast("enum.Enum", value).value)

    def load(self, data: Primitive) -> E:
        try:
            return self._by_value[(type(data), data)]
        except (KeyError, TypeError):
            pass
        if issubclass(self.enum_type, enum.Flag) and type(data) is int:
            # Combined and empty flags are values but not listed members.
            try:
                return self.enum_type(data)
            except ValueError:
                pass
        raise ValueError(f"{data!r} is not a value of {self.enum_type.__name__}")


@dataclass(frozen=True, slots=True)
class ListField(Field[list[S]]):
    """A list of values of ``item``; a ``tuple`` is accepted and stored as a list.

    Args:
        item: the field rule of every element (default: any JSON value).
    """

    item: Field[S] = field(default_factory=lambda: cast("Field[S]", JSONField()))

    def prepare(self, value: object) -> list[S]:
        if not isinstance(value, list | tuple):
            raise ValidationError(f"expected list, got {_tname(value)}")
        prepare = self.item.prepare
        out: list[S] = []
        for index, element in enumerate(value):
            try:
                out.append(prepare(element))
            except ValidationError as err:
                raise FieldValidationError.at(f"[{index}]", err) from err
        return out

    def dump(self, value: object) -> Primitive:
        if self.item.dump_is_identity:
            return list(cast("list[Primitive]", value))
        dump = self.item.dump
        return [dump(element) for element in cast("list[object]", value)]

    def load(self, data: Primitive) -> list[S]:
        if type(data) is not list:
            raise TypeError(f"expected list, got {_tname(data)}")
        load = self.item.load
        try:
            return [load(element) for element in data]
        except Exception:
            # Rare path: find the element to name it.
            for index, element in enumerate(data):
                try:
                    load(element)
                except Exception as err:
                    raise FieldLoadError.at(f"[{index}]", err) from err
            raise


@dataclass(frozen=True, slots=True)
class DictField(Field[dict[str, S]]):
    """A ``dict[str, T]``: string keys, values by the ``value`` field rule."""

    value: Field[S] = field(default_factory=lambda: cast("Field[S]", JSONField()))

    def prepare(self, value: object) -> dict[str, S]:
        if not isinstance(value, Mapping):
            raise ValidationError(f"expected dict, got {_tname(value)}")
        prepare = self.value.prepare
        out: dict[str, S] = {}
        for key, element in value.items():
            if not isinstance(key, str):
                raise ValidationError(f"dict keys must be str, got {_tname(key)}")
            try:
                out[_check_text(key)] = prepare(element)
            except ValidationError as err:
                raise FieldValidationError.at(f"[{key!r}]", err) from err
        return out

    def dump(self, value: object) -> Primitive:
        items = cast("dict[str, object]", value)
        if self.value.dump_is_identity:
            return dict(cast("dict[str, Primitive]", items))
        dump = self.value.dump
        return {key: dump(element) for key, element in items.items()}

    def load(self, data: Primitive) -> dict[str, S]:
        if type(data) is not dict:
            raise TypeError(f"expected dict, got {_tname(data)}")
        load = self.value.load
        try:
            return {_check_text(key): load(element) for key, element in data.items()}
        except Exception:
            # Rare path: find the entry to name it.
            for key, element in data.items():
                try:
                    _check_text(key)
                    load(element)
                except Exception as err:
                    raise FieldLoadError.at(f"[{key!r}]", err) from err
            raise


def _check_json(value: object, depth: int = 0) -> Primitive:
    # Returns a fresh copy so the stored value never aliases the caller's.
    if depth > 100:
        raise ValidationError("JSON value nested more than 100 levels deep")
    if value is None or type(value) is bool:
        return value
    if type(value) is str:
        return _check_text(value)
    if type(value) is int:
        return _check_int64(value)
    if type(value) is float:
        return _check_finite(value)
    if isinstance(value, list | tuple):
        return [_check_json(element, depth + 1) for element in value]
    if isinstance(value, dict):
        out: dict[str, Primitive] = {}
        for key, element in value.items():
            if type(key) is not str:
                raise ValidationError(f"JSON object keys must be str, got {_tname(key)}")
            out[_check_text(key)] = _check_json(element, depth + 1)
        return out
    raise ValidationError(f"{_tname(value)} is not a JSON value")


@dataclass(frozen=True, slots=True)
class JSONField(Field[Primitive]):
    """Any JSON value: None, bool, int, float, str, lists and str-keyed dicts.

    Tuples are stored as lists; NaN, infinity, integers outside 64 bits and
    bytes are rejected, on write and on read.
    """

    def prepare(self, value: object) -> Primitive:
        return _check_json(value)

    def dump(self, value: object) -> Primitive:
        return cast("Primitive", value)

    def load(self, data: Primitive) -> Primitive:
        return _check_json(data)


@dataclass(frozen=True, slots=True, init=False)
class StructField(Field[S]):
    """A custom type converted by your own functions.

    Args:
        dump: value -> primitives (any :data:`Primitive`); an exception it
            raises becomes :class:`ValidationError` before anything is written.
        load: primitives -> value; an exception it raises becomes
            :class:`cacheorm.DecodeError`.

    >>> f = StructField(dump=lambda c: [c.real, c.imag], load=lambda p: complex(*p))
    >>> f.load(f.dump(f.prepare(1 + 2j)))
    (1+2j)
    """

    to_primitive: Callable[[S], Primitive]
    from_primitive: Callable[[Primitive], S]

    def __init__(self, dump: Callable[[S], Primitive], load: Callable[[Primitive], S]) -> None:
        functions: tuple[object, object] = (dump, load)  # checked: callers may be untyped
        if not all(callable(function) for function in functions):
            raise SchemaError("StructField(dump, load): both must be callables")
        object.__setattr__(self, "to_primitive", dump)
        object.__setattr__(self, "from_primitive", load)

    def prepare(self, value: object) -> S:
        return cast("S", value)

    def dump(self, value: object) -> Primitive:
        try:
            return self.to_primitive(cast("S", value))
        except Exception as err:
            raise ValidationError(f"StructField dump failed: {err}") from err

    def load(self, data: Primitive) -> S:
        try:
            return self.from_primitive(data)
        except (ValueError, TypeError):
            raise
        except Exception as err:
            raise ValueError(f"StructField load failed: {err}") from err


@dataclass(frozen=True, slots=True)
class NullableField(Field[S | None]):
    """``T | None``: ``None`` is stored as ``None``, anything else by ``inner``."""

    inner: Field[S]

    @property
    def dump_is_identity(self) -> bool:
        return self.inner.dump_is_identity

    def prepare(self, value: object) -> S | None:
        return None if value is None else self.inner.prepare(value)

    def dump(self, value: object) -> Primitive:
        return None if value is None else self.inner.dump(value)

    def load(self, data: Primitive) -> S | None:
        return None if data is None else self.inner.load(data)


def kept_as_is(field: Field[object], var: str, env: dict[str, object], nullable: bool) -> str:
    """Python source of a test that ``field.prepare(var)`` would return ``var`` itself.

    For a schema's compiled fast check (see ``Schema.prepare``): true only when
    the value is valid and stored as it is; false (or an exception) sends the
    record down the field-by-field path, which gives the error. The common
    field types are tested inline; any other asks its own ``prepare``.
    ``nullable``: ``None`` may pass (the field has no default to put in its
    place). ``env`` receives the names the source uses.
    """
    kind = type(field)
    if kind is StringField:  # non-ASCII text takes the path that checks it
        return f"(type({var}) is str and {var}.isascii())"
    if kind is IntegerField or kind is AutoField:
        return f"(type({var}) is int and {INT64_MIN} <= {var} <= {INT64_MAX})"
    if kind is FloatField:
        env["_isfinite"] = math.isfinite
        return f"(type({var}) is float and _isfinite({var}))"
    if kind is BooleanField:
        return f"(type({var}) is bool)"
    if kind is BinaryField:
        return f"(type({var}) is bytes)"
    if kind is DateTimeField:
        env["_datetime"] = dt.datetime
        offset_ok = f"({var}.tzinfo is None or not {var}.utcoffset().microseconds)"
        return f"(type({var}) is _datetime and {offset_ok})"
    if kind is NullableField and nullable:
        inner = cast("NullableField[object]", field).inner
        return f"({var} is None or {kept_as_is(inner, var, env, False)})"
    name = f"_prepare_{len(env)}"
    env[name] = field.prepare
    test = f"{name}({var}) is {var}"
    return f"({test})" if nullable else f"({var} is not None and {test})"


SIMPLE_FIELDS: Mapping[object, Callable[[], Field[object]]] = {
    str: StringField,
    int: IntegerField,
    float: FloatField,
    bool: BooleanField,
    bytes: BinaryField,
    Decimal: DecimalField,
    dt.datetime: DateTimeField,
    dt.date: DateField,
    dt.time: TimeField,
    uuid.UUID: UUIDField,
    Any: JSONField,
}
"""The field rule of each plain annotation (``Schema`` infers fields from it)."""
