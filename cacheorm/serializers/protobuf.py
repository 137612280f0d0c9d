"""``ProtobufSerializer``: primitives <-> a protobuf message's wire format.

``protobuf`` is an optional dependency (``pip install cacheorm[protobuf]``).
This module never imports it: a message class handed to
:class:`ProtobufSerializer` brings its runtime along.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Generic, NoReturn, TypeVar

from cacheorm.backends.base import is_int
from cacheorm.errors import DecodeError, SchemaError, ValidationError

if TYPE_CHECKING:
    from typing import TypeAlias

    from google._upb import _message as _upb
    from google.protobuf import descriptor as _py
    from google.protobuf.message import Message

    from cacheorm.serializers.base import Primitive

    # The stubs type a message's DESCRIPTOR as either implementation's class.
    Descriptor: TypeAlias = _py.Descriptor | _upb.Descriptor
    FieldDescriptor: TypeAlias = _py.FieldDescriptor | _upb.FieldDescriptor

__all__ = ["ProtobufSerializer"]

M = TypeVar("M", bound="Message")


@dataclass(frozen=True, slots=True)
class ProtobufSerializer(Generic[M]):
    """Map a record's primitives onto a protobuf message, field by field.

    The stored bytes are exactly the message's deterministic wire format
    (``SerializeToString(deterministic=True)``), so any protobuf reader can
    parse them with the same ``.proto``.

    Mapping, both ways:

    * scalars to scalars of the matching kind (``int`` for every integer
      width, ``float`` (or ``int``) for ``double``/``float``, ``bool``,
      ``str`` for ``string``, ``bytes`` for ``bytes``);
    * nested messages to nested dicts, ``repeated`` fields to lists, ``map``
      fields to dicts;
    * enums to their int numbers: an ``EnumField`` over an ``IntEnum`` (or an
      ``Enum`` with int values) stores the member's value, so give the proto
      enum the same numbers;
    * ``None`` to "not set" for fields with presence (proto3 ``optional``,
      message fields, ``oneof`` members) and back.

    ``loads`` returns every field of the message, defaults included: proto3
    does not store ``0``, ``""``, ``False`` or empty lists, but they come
    back. A ``float`` (32-bit) field rounds to single precision: use
    ``double`` for values that must round-trip exactly (``nan``/``inf``
    included).

    **Missing fields, and the key.** The wire format leaves defaults out, so
    an empty payload, or one cut at a field boundary, parses as a message of
    defaults: this serializer cannot tell it from a record whose fields are
    all defaults, so it returns it. Give the key field presence (proto3
    ``optional``) and a payload without it decodes the key as ``None``,
    which the schema refuses for a key that is not ``T | None``
    (:class:`~cacheorm.DecodeError` naming the field). Without presence the
    key decodes as ``""`` or ``0``; every read also checks that the decoded
    record's key is the key asked for, so such a payload is refused under
    any other key.

    Example:
        >>> from tests.proto_gen import person_pb2
        >>> s = ProtobufSerializer(person_pb2.Person)
        >>> s.loads(s.dumps({"name": "Sam", "height": 178.8}))["married"]
        False

    Args:
        message_class: The generated message class, e.g. ``person_pb2.Person``.
    """

    message_class: type[M]

    def __post_init__(self) -> None:
        _check_descriptor(self.message_class.DESCRIPTOR, set())

    def dumps(self, obj: Primitive) -> bytes:
        """Fill a new message from ``obj`` and return its wire format.

        Raises:
            ValidationError: ``obj`` is not a dict, names a field the message
                lacks, holds a value of the wrong type or out of range, ``None``
                for a field without presence, or two members of one ``oneof``.
        """
        message = self.message_class()
        try:
            _fill(message, obj, self.message_class.__name__)
            return message.SerializeToString(deterministic=True)
        except ValidationError:
            raise
        except (TypeError, ValueError, OverflowError) as err:
            raise ValidationError(
                f"{self.message_class.__name__} cannot hold this value: {err}"
            ) from err

    def loads(self, data: bytes) -> Primitive:
        """Parse ``data`` as the message and return all its fields as primitives.

        Raises:
            DecodeError: ``data`` is not a valid encoding of the message
                (chained to protobuf's ``DecodeError``).
        """
        try:
            message = self.message_class.FromString(data)
            return _to_primitive(message)
        except Exception as err:  # the contract: only DecodeError leaves loads
            raise DecodeError(
                f"could not decode the stored bytes as {self.message_class.__name__}: {err!r}"
            ) from err

    def to_message(self, obj: Primitive) -> M:
        """Return a new message filled from ``obj`` (what :meth:`dumps` serialises).

        Raises:
            ValidationError: as :meth:`dumps`.
        """
        return self.message_class.FromString(self.dumps(obj))


def _check_descriptor(descriptor: Descriptor, seen: set[str]) -> None:
    """Reject messages whose maps have non-string keys: primitives' dicts are str-keyed."""
    if descriptor.full_name in seen:  # recursive messages
        return
    seen.add(descriptor.full_name)
    for field in descriptor.fields:
        if _is_map(field):
            key_field, value_field = _entry_fields(field)
            if key_field.cpp_type != key_field.CPPTYPE_STRING:
                raise SchemaError(
                    f"{descriptor.full_name}.{field.name} is a map with non-string keys; "
                    "primitives only carry str-keyed dicts: use map<string, ...>"
                )
            if value_field.message_type is not None:
                _check_descriptor(value_field.message_type, seen)
        elif field.message_type is not None:
            _check_descriptor(field.message_type, seen)


def _wrong(path: str, expected: str, value: object) -> NoReturn:
    raise ValidationError(f"{path} must be {expected}, not {type(value).__name__} {value!r}")


def _check_scalar(field: FieldDescriptor, value: object, path: str) -> None:
    """Reject values protobuf would coerce (``True`` into an int, ``b"x"`` into a str)."""
    kind = field.cpp_type
    if kind in (
        field.CPPTYPE_INT32,
        field.CPPTYPE_INT64,
        field.CPPTYPE_UINT32,
        field.CPPTYPE_UINT64,
        field.CPPTYPE_ENUM,
    ):
        if not is_int(value):
            _wrong(path, "an int", value)
    elif kind in (field.CPPTYPE_DOUBLE, field.CPPTYPE_FLOAT):
        if not (is_int(value) or isinstance(value, float)):
            _wrong(path, "a float", value)
    elif kind == field.CPPTYPE_BOOL:
        if not isinstance(value, bool):
            _wrong(path, "a bool", value)
    elif kind == field.CPPTYPE_STRING:
        if field.type == field.TYPE_BYTES:
            if not isinstance(value, bytes):
                _wrong(path, "bytes", value)
        elif not isinstance(value, str):
            _wrong(path, "a str", value)


def _is_map(field: FieldDescriptor) -> bool:
    entry = field.message_type
    return entry is not None and entry.GetOptions().map_entry


def _entry_fields(field: FieldDescriptor) -> tuple[FieldDescriptor, FieldDescriptor]:
    entry: Descriptor | None = field.message_type
    assert entry is not None  # only called for map fields
    return entry.fields_by_name["key"], entry.fields_by_name["value"]


def _fill(message: Message, obj: object, path: str) -> None:
    """Copy the primitives of ``obj`` into the empty ``message``."""
    if not isinstance(obj, dict):
        _wrong(path, "a dict", obj)
    descriptor = message.DESCRIPTOR
    oneofs_set: dict[str, str] = {}
    for name, value in obj.items():
        field = descriptor.fields_by_name.get(name) if isinstance(name, str) else None
        where = f"{path}.{name}"
        if field is None:
            known = ", ".join(f.name for f in descriptor.fields)
            raise ValidationError(
                f"{descriptor.full_name} has no field {name!r}; its fields are: {known}"
            )
        if value is None:
            if field.is_repeated or not field.has_presence:
                raise ValidationError(
                    f"{where} cannot be None: the field has no presence in the .proto "
                    "(declare it `optional`, or store a value)"
                )
            continue  # not set
        oneof = field.containing_oneof
        if oneof is not None:
            # Setting a second member of a oneof silently clears the first.
            if oneof.name in oneofs_set:
                raise ValidationError(
                    f"{where} and {path}.{oneofs_set[oneof.name]} are both set, "
                    f"but belong to the same oneof {oneof.name!r}"
                )
            oneofs_set[oneof.name] = name
        if _is_map(field):
            _fill_map(message, field, value, where)
        elif field.is_repeated:
            if not isinstance(value, list):
                _wrong(where, "a list", value)
            container = getattr(message, name)
            if field.cpp_type == field.CPPTYPE_MESSAGE:
                for index, item in enumerate(value):
                    _fill(container.add(), item, f"{where}[{index}]")
            else:
                for index, item in enumerate(value):
                    _check_scalar(field, item, f"{where}[{index}]")
                container.extend(value)
        elif field.cpp_type == field.CPPTYPE_MESSAGE:
            sub = getattr(message, name)
            sub.SetInParent()  # an all-default nested dict still reads back as a dict
            _fill(sub, value, where)
        else:
            _check_scalar(field, value, where)
            setattr(message, name, value)


def _fill_map(message: Message, field: FieldDescriptor, value: object, where: str) -> None:
    if not isinstance(value, dict):
        _wrong(where, "a dict", value)
    key_field, value_field = _entry_fields(field)
    container = getattr(message, field.name)
    for key, item in value.items():
        _check_scalar(key_field, key, f"{where} key")
        if value_field.cpp_type == value_field.CPPTYPE_MESSAGE:
            _fill(container[key], item, f"{where}[{key!r}]")
        else:
            _check_scalar(value_field, item, f"{where}[{key!r}]")
            container[key] = item


def _to_primitive(message: Message) -> dict[str, Primitive]:
    """Every field of ``message`` as primitives, defaults included."""
    out: dict[str, Primitive] = {}
    for field in message.DESCRIPTOR.fields:
        name = field.name
        value = getattr(message, name)
        if _is_map(field):
            _, value_field = _entry_fields(field)
            if value_field.cpp_type == value_field.CPPTYPE_MESSAGE:
                out[name] = {key: _to_primitive(item) for key, item in value.items()}
            else:
                out[name] = dict(value)
        elif field.is_repeated:
            if field.cpp_type == field.CPPTYPE_MESSAGE:
                out[name] = [_to_primitive(item) for item in value]
            else:
                out[name] = list(value)
        elif field.has_presence and not message.HasField(name):
            out[name] = None
        elif field.cpp_type == field.CPPTYPE_MESSAGE:
            out[name] = _to_primitive(value)
        else:
            out[name] = value
    return out
