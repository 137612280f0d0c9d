"""Key building: the only place a record's key becomes the bytes a backend sees.

Default layout (readable, injective)::

    [namespace/]Name[@version]:part1[:part2...]

    people/Person@2:Sam        Person:Sam        Collection:Bob:1

Every user-supplied piece is percent-escaped so the layout stays unambiguous:
the namespace, name and version escape ``% : / @ #``; key parts escape
``%`` and ``:``. So two namespaces, two schema names, two versions or two
different keys never share a key, and composite parts never run together
(``("a:b", "c")`` -> ``a%3Ab:c``; ``("a", "b:c")`` -> ``a:b%3Ac``).

With ``key_format`` the user owns the layout: the stored key is exactly what
the format produced (UTF-8), preceded only by ``namespace/`` and ``@version:``
when those are set. Keys are built from text only (no ``hash()``), so they are
the same in every process and Python version.

The counter behind :class:`cacheorm.AutoField` lives at
``[namespace/]Name[@version]#autoid``: it has no unescaped ``:``, so it is
never a record key of the default layout.

>>> codec = KeyCodec(name="Person", version="2", key_fields=("name",),
...                  key_rules=(StringField(),), key_format=None)
>>> codec.encode("Sam", "people")
b'people/Person@2:Sam'
>>> KeyCodec(name="Pair", version=None, key_fields=("a", "b"),
...          key_rules=(StringField(), StringField()), key_format=None).encode(("a:b", "c"), "")
b'Pair:a%3Ab:c'
"""

from __future__ import annotations

import re
import string
from collections.abc import Callable, Iterable, Sequence
from typing import TypeAlias

from cacheorm.backends.base import INT64_MAX, INT64_MIN
from cacheorm.errors import SchemaError, ValidationError
from cacheorm.fields import (
    AutoField,
    BinaryField,
    DateField,
    DateTimeField,
    DecimalField,
    DictField,
    Field,
    FloatField,
    IntegerField,
    JSONField,
    ListField,
    NullableField,
    StringField,
    TimeField,
    UUIDField,
)

__all__ = ["KeyCodec", "KeyFormat", "escape_header", "escape_part"]

KeyFormat: TypeAlias = str | Callable[..., str | bytes]
"""A printf string, a ``str.format`` string or a callable taking the key values."""

_HEADER_ESCAPES = str.maketrans({"%": "%25", ":": "%3A", "/": "%2F", "@": "%40", "#": "%23"})

# Printf conversions (``%%`` is a literal percent, not a conversion).
_PRINTF_SPEC = re.compile(
    r"%(?:\((?P<name>[^)]*)\))?[#0\- +]*(?:\*|\d+)?(?:\.(?:\*|\d+))?[hlL]?"
    r"(?P<conv>[diouxXeEfFgGcrsa%])"
)
_MAX_PREFIX_CACHE = 1024


def escape_header(text: str) -> str:
    """Escape a namespace, schema name or version for the key header."""
    return text.translate(_HEADER_ESCAPES)


def escape_part(text: str) -> str:
    """Escape one key part: ``%`` and ``:`` only, so common keys stay as they are."""
    if "%" in text:
        text = text.replace("%", "%25")
    if ":" in text:
        text = text.replace(":", "%3A")
    return text


def _part_text(rule: Field[object], field_name: str) -> Callable[[object], str]:
    """Compile how one prepared key value becomes text (injective per field type)."""
    if isinstance(rule, StringField):
        return lambda value: escape_part(value)  # type: ignore[arg-type]  # prepared str
    if isinstance(rule, IntegerField | AutoField):
        return str
    if isinstance(rule, FloatField):
        return repr
    if isinstance(rule, BinaryField):
        return lambda value: value.hex()  # type: ignore[attr-defined]  # prepared bytes
    if isinstance(rule, NullableField | ListField | DictField | JSONField):
        raise SchemaError(
            f"key field {field_name!r} cannot be a nullable, list, dict or JSON field: "
            "a key must be one scalar value (only an AutoField key may be None before insert)"
        )
    dump = rule.dump

    def via_dump(value: object) -> str:
        primitive = dump(value)
        if type(primitive) is str:
            return escape_part(primitive)
        if type(primitive) in (int, bool, float):
            return repr(primitive)
        if type(primitive) is bytes:
            return primitive.hex()
        raise ValidationError(
            f"key field {field_name!r} dumps to {type(primitive).__name__}; "
            "a key part must be a str, int, float, bool or bytes"
        )

    if isinstance(rule, DateTimeField | DateField | TimeField | UUIDField | DecimalField):
        # These always dump to str: skip the type dispatch.
        return lambda value: escape_part(dump(value))  # type: ignore[arg-type]  # str dump
    return via_dump


class KeyCodec:
    """Turns key values into backend keys for one schema; compiled once.

    Args:
        name: the schema name (part of the default layout).
        version: the schema version, or ``None``.
        key_fields: names of the key fields, in key order.
        key_rules: the field rule of each key field (validates key values).
        key_format: ``None`` for the default layout, or a :data:`KeyFormat`.

    Raises:
        SchemaError: a key field type cannot be part of a key, or ``key_format``
            does not use every key field exactly as the key needs.
    """

    __slots__ = (
        "_body",
        "_counter_suffix",
        "_key_fields",
        "_name",
        "_plain",
        "_prefix_cache",
        "_prefix_tail",
        "_prepares",
        "_shape",
        "_single",
        "_uses_default_layout",
    )

    def __init__(
        self,
        *,
        name: str,
        version: str | None,
        key_fields: tuple[str, ...],
        key_rules: tuple[Field[object], ...],
        key_format: KeyFormat | None,
    ) -> None:
        self._name = name
        self._key_fields = key_fields
        self._prepares = tuple(rule.prepare for rule in key_rules)
        header = escape_header(name) + ("" if version is None else "@" + escape_header(version))
        self._counter_suffix = header + "#autoid"
        self._uses_default_layout = key_format is None
        self._prefix_cache: dict[str, str] = {}
        if key_format is None:
            self._prefix_tail = header + ":"
            texts = tuple(
                _part_text(rule, n) for rule, n in zip(key_rules, key_fields, strict=True)
            )
            self._body = _default_body(texts)
            # The common case (one key field, default layout) gets a direct path.
            self._single = (self._prepares[0], texts[0]) if len(texts) == 1 else None
            # And the commonest keys (a plain int, or ASCII text that needs no
            # escaping) one without calls, for the exact built-in rules only.
            kind = type(key_rules[0]) if len(texts) == 1 else None
            self._plain: type | None = (
                int if kind in (IntegerField, AutoField) else str if kind is StringField else None
            )
            self._shape: tuple[str, str] | str = ("", "")
        else:
            for rule, field_name in zip(key_rules, key_fields, strict=True):
                _part_text(rule, field_name)  # same scalar-only rule for custom formats
            self._prefix_tail = "" if version is None else "@" + escape_header(version) + ":"
            self._body = _format_body(key_format, key_fields, name)
            self._single = None
            self._plain = None
            self._shape = _format_shape(key_format)

    def prefix(self, namespace: str) -> str:
        """The text before the key body for ``namespace`` (memoised)."""
        cached = self._prefix_cache.get(namespace)
        if cached is not None:
            return cached
        if type(namespace) is not str:
            raise ValidationError(f"namespace must be a str, got {type(namespace).__name__}")
        prefix = (escape_header(namespace) + "/" if namespace else "") + self._prefix_tail
        if len(self._prefix_cache) < _MAX_PREFIX_CACHE:
            self._prefix_cache[namespace] = prefix
        return prefix

    def values(self, key: object) -> tuple[object, ...]:
        """Validate ``key`` (a scalar, or a tuple for a composite key) into prepared values.

        Raises:
            ValidationError: wrong shape (not a tuple of the key's length) or a
                value its key field cannot hold.
        """
        prepares = self._prepares
        if len(prepares) == 1:
            parts: tuple[object, ...] = (key,)
        elif type(key) is tuple and len(key) == len(prepares):
            parts = key
        else:
            raise ValidationError(
                f"{self._name} key must be a tuple of {len(prepares)} values "
                f"({', '.join(self._key_fields)}), got {key!r}"
            )
        try:
            return tuple(prepare(part) for prepare, part in zip(prepares, parts, strict=True))
        except ValidationError:
            for field_name, prepare, part in zip(self._key_fields, prepares, parts, strict=True):
                try:
                    prepare(part)
                except ValidationError as err:
                    raise self._field_error(field_name, err) from err
            raise

    def _field_error(self, field_name: str, err: ValidationError) -> ValidationError:
        """A key value its field refused, named: ``Person key field 'name': ...``."""
        return ValidationError(f"{self._name} key field {field_name!r}: {err}")

    def encode(self, key: object, namespace: str = "") -> bytes:
        """The backend key for ``key`` in ``namespace``.

        Raises:
            ValidationError: the key has the wrong shape or type, or a custom
                ``key_format`` failed on it.
        """
        prefix = self._prefix_cache.get(namespace)
        if prefix is None:
            prefix = self.prefix(namespace)
        plain = self._plain
        if plain is int and type(key) is int and INT64_MIN <= key <= INT64_MAX:
            return (prefix + str(key)).encode("utf-8")
        if plain is str and type(key) is str and key.isascii() and not ("%" in key or ":" in key):
            return (prefix + key).encode("utf-8")
        single = self._single
        if single is not None:
            prepare, text = single
            try:
                value = prepare(key)
            except ValidationError as err:
                raise self._field_error(self._key_fields[0], err) from err
            return (prefix + text(value)).encode("utf-8")
        return (prefix + self._body(self.values(key))).encode("utf-8")

    def encode_many(self, keys: Iterable[object], namespace: str = "") -> list[bytes]:
        """:meth:`encode` of each key, in order: a batch's keys in one call.

        Raises:
            ValidationError: as :meth:`encode`, for the first key it refuses.
        """
        prefix = self._prefix_cache.get(namespace)
        if prefix is None:
            prefix = self.prefix(namespace)
        plain, encode = self._plain, self.encode
        encoded: list[bytes] = []
        append = encoded.append
        for key in keys:  # encode's direct paths, inlined
            if plain is int and type(key) is int and INT64_MIN <= key <= INT64_MAX:
                append((prefix + str(key)).encode("utf-8"))
            elif (
                plain is str
                and type(key) is str
                and key.isascii()
                and not ("%" in key or ":" in key)
            ):
                append((prefix + key).encode("utf-8"))
            else:
                append(encode(key, namespace))
        return encoded

    def counter_key(self, namespace: str = "") -> bytes:
        """The key of the AutoField id counter, disjoint from default-layout record keys."""
        prefix = escape_header(namespace) + "/" if namespace else ""
        return (prefix + self._counter_suffix).encode("utf-8")

    def scope(self, namespace: str = "") -> tuple[bytes, re.Pattern[bytes] | None]:
        """Which stored keys are this schema's records in ``namespace``: ``(prefix, shape)``.

        A key is one when it starts with ``prefix`` and, if ``shape`` is given,
        matches it in full. The default layout needs no shape: its prefix
        (``[namespace/]Name[@version]:``, escaped) starts no other schema's,
        namespace's or version's key, nor the ``AutoField`` counter's. A
        ``key_format`` string gives its fixed text before the first field as
        part of the prefix and its whole shape (fields as any text).

        >>> codec = KeyCodec(name="Pair", version=None, key_fields=("a", "b"),
        ...                  key_rules=(StringField(), StringField()), key_format="p.{a}.{b}!")
        >>> prefix, shape = codec.scope("ns")
        >>> prefix, bool(shape.fullmatch(b"ns/p.x.y!")), bool(shape.fullmatch(b"ns/p.x"))
        (b'ns/p.', True, False)

        Raises:
            ValidationError: a callable ``key_format``, or one without fixed
                text: nothing tells its keys from other keys.
        """
        head = self.prefix(namespace)
        if isinstance(self._shape, str):
            raise ValidationError(
                f"{self._name}: cannot tell this schema's keys from other keys, as its "
                f"key_format {self._shape}; give it fixed text (e.g. 'user:{{id}}') or use "
                "the default layout"
            )
        literal, body = self._shape
        if not body:
            return head.encode("utf-8"), None
        whole = (re.escape(head) + body).encode("utf-8")
        return (head + literal).encode("utf-8"), re.compile(whole, re.DOTALL)


Body: TypeAlias = Callable[[Sequence[object]], str]
"""Prepared key values -> the key body (the text after the header)."""


def _default_body(texts: tuple[Callable[[object], str], ...]) -> Body:
    if len(texts) == 1:
        (text,) = texts
        return lambda values: text(values[0])
    return lambda values: ":".join([t(v) for t, v in zip(texts, values, strict=True)])


def _format_body(key_format: KeyFormat, key_fields: tuple[str, ...], name: str) -> Body:
    """The body of a custom ``key_format``, checked to use every key field once."""
    if callable(key_format):
        return _callable_body(key_format, name)
    format_value: object = key_format  # checked at run time: callers may be untyped
    if not isinstance(format_value, str) or not key_format:
        raise SchemaError(
            f"{name}: key_format must be a non-empty printf or str.format string, or a callable"
        )
    try:
        names = [part[1] for part in string.Formatter().parse(key_format) if part[1] is not None]
    except ValueError as err:
        raise SchemaError(f"{name}: key_format {key_format!r} is malformed: {err}") from err
    if names:
        return _str_format_body(key_format, names, key_fields, name)
    return _printf_body(key_format, key_fields, name)


def _format_shape(key_format: KeyFormat) -> tuple[str, str] | str:
    """A string ``key_format``'s fixed text before its first field, and its shape as a regex
    (each field any text); for a format that has none, why not (see :meth:`KeyCodec.scope`)."""
    if callable(key_format):
        return "is a callable"
    pieces: list[tuple[str, bool]] = []  # (literal text, a field follows)
    if any(part[1] is not None for part in string.Formatter().parse(key_format)):
        for literal, name, _, _ in string.Formatter().parse(key_format):
            pieces.append((literal, name is not None))
    else:
        start = 0
        for match in _PRINTF_SPEC.finditer(key_format):
            literal = key_format[start : match.start()]
            if match.group("conv") == "%":
                pieces.append((literal + "%", False))
            else:
                pieces.append((literal, True))
            start = match.end()
        pieces.append((key_format[start:], False))
    if not any(literal for literal, _ in pieces):
        return "has no fixed text"
    head = ""
    for literal, then_field in pieces:
        head += literal
        if then_field:
            break
    body = "".join(re.escape(text) + (".*" if field else "") for text, field in pieces)
    return head, body


def _callable_body(function: Callable[..., str | bytes], name: str) -> Body:
    def call(values: Sequence[object]) -> str:
        try:
            result = function(*values)
        except Exception as err:
            raise ValidationError(f"{name} key_format callable failed: {err}") from err
        if isinstance(result, bytes):
            try:
                return result.decode("utf-8")
            except UnicodeDecodeError as err:
                raise ValidationError(
                    f"{name} key_format callable returned bytes that are not UTF-8"
                ) from err
        if type(result) is str:
            return result
        raise ValidationError(
            f"{name} key_format callable must return str or bytes, got {type(result).__name__}"
        )

    return call


def _printf_body(fmt: str, key_fields: tuple[str, ...], name: str) -> Body:
    arity = len(key_fields)
    specs = [m for m in _PRINTF_SPEC.finditer(fmt) if m.group("conv") != "%"]
    if len(specs) != arity or any(m.group("name") is not None for m in specs):
        raise SchemaError(
            f"{name}: key_format {fmt!r} must have exactly {arity} positional "
            f"printf conversion(s) (%s, %d, ...) or {{field}} placeholders, one per key field "
            f"({', '.join(key_fields)})"
        )

    def printf(values: Sequence[object]) -> str:
        try:
            return fmt % tuple(values)
        except (TypeError, ValueError) as err:
            raise ValidationError(
                f"{name} key {tuple(values)!r} does not fit {fmt!r}: {err}"
            ) from err

    return printf


def _str_format_body(
    key_format: str, names: list[str], key_fields: tuple[str, ...], name: str
) -> Body:
    positional = all(n == "" or n.isdigit() for n in names)
    if positional:
        needed = len(key_fields)
        auto = sum(1 for n in names if n == "")
        used = {int(n) for n in names if n} | set(range(auto))
        if used != set(range(needed)):
            raise SchemaError(
                f"{name}: key_format {key_format!r} must use each of the {needed} key values "
                f"({', '.join(key_fields)}) exactly by position"
            )

        def by_position(values: Sequence[object]) -> str:
            try:
                return key_format.format(*values)
            except (TypeError, ValueError, IndexError) as err:
                raise ValidationError(f"{name} key does not fit {key_format!r}: {err}") from err

        return by_position
    roots = {re.split(r"[.\[]", n, maxsplit=1)[0] for n in names}
    unknown = roots - set(key_fields)
    if unknown:
        raise SchemaError(
            f"{name}: key_format {key_format!r} names {sorted(unknown)}, which are not key "
            f"fields; use only {', '.join(key_fields)}"
        )
    missing = set(key_fields) - roots
    if missing:
        raise SchemaError(
            f"{name}: key_format {key_format!r} does not use key field(s) {sorted(missing)}; "
            "keys would collide. Add a placeholder for each key field"
        )

    def by_name(values: Sequence[object]) -> str:
        try:
            return key_format.format_map(dict(zip(key_fields, values, strict=True)))
        except (TypeError, ValueError, KeyError, AttributeError) as err:
            raise ValidationError(f"{name} key does not fit {key_format!r}: {err}") from err

    return by_name
