"""The serializer contract and the primitive values it carries.

A serializer turns primitives (what a schema's fields produce) into bytes and
back. It knows nothing of records or servers.
"""

from __future__ import annotations

from typing import Protocol, TypeAlias, runtime_checkable

__all__ = ["KeyedSerializer", "Payload", "Primitive", "Serializer"]

Primitive: TypeAlias = (
    str | int | float | bool | bytes | list["Primitive"] | dict[str, "Primitive"] | None
)
"""A format-neutral value: what fields produce and serializers carry."""

Payload: TypeAlias = dict[str, Primitive]
"""One record as primitives: field name to primitive value."""


@runtime_checkable
class Serializer(Protocol):
    """Anything with ``dumps`` and ``loads`` is a serializer.

    ``loads`` raises :class:`cacheorm.DecodeError` (chained to the library's own
    exception) for bytes it cannot decode; it never lets another exception out.
    """

    def dumps(self, obj: Primitive) -> bytes:
        """Encode primitives to bytes. Equal input gives equal output."""
        ...

    def loads(self, data: bytes) -> Primitive:
        """Decode bytes produced by :meth:`dumps`."""
        ...


@runtime_checkable
class KeyedSerializer(Serializer, Protocol):
    """A serializer that binds each payload to the storage key it is written under.

    cacheorm calls :meth:`dumps_keyed`/:meth:`loads_keyed` instead of
    ``dumps``/``loads`` when a serializer has them (``signed(...)`` does: the
    key is part of its MAC), so a payload copied under another key fails to
    decode.
    """

    def dumps_keyed(self, obj: Primitive, key: bytes) -> bytes:
        """Encode ``obj`` to be stored under ``key``."""
        ...

    def loads_keyed(self, data: bytes, key: bytes) -> Primitive:
        """Decode bytes read under ``key``; :class:`cacheorm.DecodeError` if not written for it."""
        ...
