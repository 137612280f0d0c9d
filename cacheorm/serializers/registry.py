"""The serializer registry: names a ``Repo`` can use instead of objects.

The presets ``"json"``, ``"msgpack"`` (the default) and ``"pickle"`` are
registered at import. All functions are thread-safe.

Example:
    >>> import cacheorm as co
    >>> co.registry.register("json.compressed", co.compressed(co.JSONSerializer()))
    >>> co.registry.get_by_name("json.compressed") is not None
    True
    >>> co.registry.unregister("json.compressed")
"""

from __future__ import annotations

import threading
from typing import Final

from cacheorm.errors import ValidationError
from cacheorm.serializers.base import Serializer
from cacheorm.serializers.presets import JSONSerializer, MsgpackSerializer, PickleSerializer

__all__ = ["get_by_name", "names", "register", "resolve", "unregister"]

_LOCK: Final = threading.Lock()
_SERIALIZERS: Final[dict[str, Serializer]] = {
    "json": JSONSerializer(),
    "msgpack": MsgpackSerializer(),
    "pickle": PickleSerializer(),
}


def register(name: str, serializer: Serializer) -> None:
    """Register ``serializer`` under ``name``.

    Args:
        name: A non-empty name, e.g. ``"protobuf.person"``.
        serializer: Any object with ``dumps(obj) -> bytes`` and ``loads(bytes) -> obj``.

    Raises:
        ValueError: ``name`` is empty or already taken (unregister it first).
        TypeError: ``serializer`` has no ``dumps``/``loads``.
    """
    if not name:
        raise ValueError(f"a serializer name must be a non-empty str, not {name!r}")
    if not isinstance(serializer, Serializer):
        raise TypeError(
            f"{serializer!r} is not a serializer: it needs dumps(obj) -> bytes "
            "and loads(bytes) -> obj"
        )
    with _LOCK:
        if name in _SERIALIZERS:
            raise ValueError(
                f"a serializer is already registered as {name!r}; "
                "unregister it first or pick another name"
            )
        _SERIALIZERS[name] = serializer


def get_by_name(name: str) -> Serializer | None:
    """Return the serializer registered as ``name``, or ``None``."""
    with _LOCK:
        return _SERIALIZERS.get(name)


def unregister(name: str) -> None:
    """Remove the serializer registered as ``name``.

    Raises:
        KeyError: nothing is registered as ``name``.
    """
    with _LOCK:
        try:
            del _SERIALIZERS[name]
        except KeyError:
            raise KeyError(f"no serializer is registered as {name!r}") from None


def names() -> list[str]:
    """Return the registered names, sorted."""
    with _LOCK:
        return sorted(_SERIALIZERS)


def resolve(serializer: str | Serializer) -> Serializer:
    """Return ``serializer`` itself, or the one registered under that name.

    Raises:
        ValidationError: an unknown name (the message lists the registered
            ones) or an object that is not a serializer.
    """
    if isinstance(serializer, str):
        found = get_by_name(serializer)
        if found is None:
            known = ", ".join(repr(name) for name in names())
            raise ValidationError(
                f"no serializer is registered as {serializer!r}; registered: {known}. "
                "Register one with cacheorm.registry.register(name, serializer)."
            )
        return found
    if not isinstance(serializer, Serializer):
        raise ValidationError(
            f"{serializer!r} is not a serializer name or an object with dumps() and loads()"
        )
    return serializer
