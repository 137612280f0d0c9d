"""The storage contract every backend implements, and the TTL rules they share.

A backend moves ``bytes`` values under ``bytes`` keys. It knows nothing of
records or formats. Every method raises :class:`cacheorm.BackendError` (chained
to the driver's exception) when the server cannot be reached, and
:class:`cacheorm.ValidationError` for an illegal TTL; no driver exception
escapes a backend method.

TTL rules, the same on every backend:

* ``None``: the backend's ``default_ttl`` (``0`` unless configured);
* ``0``: never expires;
* a positive ``int``: seconds, any size (memcached values over 30 days are
  converted to an absolute time by the memcached backend);
* anything else (negative, ``float``, ``bool``): :class:`ValidationError`.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from typing import Final, Literal, NamedTuple, Protocol, TypeAlias, runtime_checkable

from cacheorm.errors import ValidationError

__all__ = [
    "KEEP_TTL",
    "Backend",
    "CasToken",
    "Command",
    "CommandOp",
    "Keep",
    "TTL",
    "LocalStore",
    "apply",
    "apply_local",
    "INT64_MAX",
    "INT64_MIN",
    "check_delta",
    "counter_sum",
    "resolve_ttl",
]


class Keep(enum.Enum):
    """Sentinel type for :data:`KEEP_TTL`."""

    TTL = "keep-ttl"


KEEP_TTL: Final = Keep.TTL
"""Passed as ``ttl`` to :meth:`Backend.cas`: keep the entry's remaining lifetime."""

TTL: TypeAlias = int | None
CasToken: TypeAlias = object
"""Opaque value returned by :meth:`Backend.gets` and passed back to :meth:`Backend.cas`."""


def resolve_ttl(ttl: object, default: int) -> int:
    """Validate a TTL and apply the backend default.

    Args:
        ttl: ``None`` for the default, ``0`` for never, or positive seconds.
        default: the backend's default TTL, used when ``ttl`` is ``None``.

    Returns:
        The TTL in whole seconds, ``0`` meaning never expires.

    Raises:
        ValidationError: ``ttl`` is negative, not an ``int``, or a ``bool``.
    """
    if ttl is None:
        return default
    if isinstance(ttl, bool) or not isinstance(ttl, int):
        raise ValidationError(
            f"ttl must be None, 0 (never expires) or a positive int of seconds, got {ttl!r}"
        )
    if ttl < 0:
        raise ValidationError(f"ttl must not be negative, got {ttl}")
    return ttl


CommandOp: TypeAlias = Literal[
    "get", "gets", "set", "add", "replace", "cas", "delete", "delete_if", "has", "touch", "incr"
]


class Command(NamedTuple):
    """One storage command inside :meth:`Backend.batch`.

    A ``NamedTuple`` rather than a frozen dataclass: batches build one per key,
    and a tuple is four times cheaper to make.

    Results, by ``op``: ``get`` -> ``bytes | None``; ``gets`` ->
    ``tuple[bytes, CasToken] | None``; ``set`` -> ``True``; ``add``,
    ``replace``, ``cas``, ``delete``, ``delete_if``, ``has``, ``touch`` -> ``bool``; ``incr``
    -> ``int`` (``delta`` may be negative).
    """

    op: CommandOp
    key: bytes
    value: bytes = b""
    ttl: int | Keep | None = None
    token: CasToken = None
    delta: int = 0


@runtime_checkable
class Backend(Protocol):
    """What cacheorm needs from a store. All five backends implement it.

    ``incr``/``decr`` treat a missing key as ``0`` and may go below zero on every
    backend. A counter's value is stored as ASCII decimal digits.
    """

    default_ttl: int

    def get(self, key: bytes) -> bytes | None:
        """Return the value, or ``None`` when the key is absent or expired."""
        ...

    def get_with_ttl(self, key: bytes) -> tuple[bytes, float] | None:
        """Return the value with its remaining lifetime, in one round trip.

        Returns:
            ``(value, seconds)``: ``seconds`` is ``0.0`` when the entry never
            expires, otherwise greater than ``0``; ``None`` when the key is
            absent or expired.
        """
        ...

    def get_many_with_ttl(self, *keys: bytes) -> list[tuple[bytes, float] | None]:
        """:meth:`get_with_ttl` for several keys in one round trip, in key order."""
        ...

    def set(self, key: bytes, value: bytes, ttl: TTL = None) -> None:
        """Store ``value`` unconditionally."""
        ...

    def add(self, key: bytes, value: bytes, ttl: TTL = None) -> bool:
        """Store only if absent, atomically. Return whether it was stored."""
        ...

    def replace(self, key: bytes, value: bytes, ttl: TTL = None) -> bool:
        """Store only if present. Return whether it was stored."""
        ...

    def delete(self, key: bytes) -> bool:
        """Remove the key. Return whether it existed."""
        ...

    def has(self, key: bytes) -> bool:
        """Return whether the key is present (and not expired)."""
        ...

    def get_many(self, *keys: bytes) -> list[bytes | None]:
        """Return the values in key order, ``None`` for each missing key."""
        ...

    def set_many(self, mapping: Mapping[bytes, bytes], ttl: TTL = None) -> None:
        """Store every pair unconditionally."""
        ...

    def replace_many(self, mapping: Mapping[bytes, bytes], ttl: TTL = None) -> list[bool]:
        """Replace each present key; return, in mapping order, whether each was stored."""
        ...

    def delete_many(self, *keys: bytes) -> int:
        """Remove the keys; return how many existed."""
        ...

    def incr(self, key: bytes, delta: int = 1) -> int:
        """Add ``delta`` to the counter atomically and return the new value."""
        ...

    def decr(self, key: bytes, delta: int = 1) -> int:
        """Subtract ``delta`` from the counter atomically and return the new value."""
        ...

    def touch(self, key: bytes, ttl: TTL = None) -> bool:
        """Reset the key's TTL. Return whether the key exists."""
        ...

    def gets(self, key: bytes) -> tuple[bytes, CasToken] | None:
        """Return the value with a compare-and-set token, or ``None`` when absent."""
        ...

    def cas(
        self, key: bytes, value: bytes, token: CasToken, ttl: int | Keep | None = KEEP_TTL
    ) -> bool:
        """Store ``value`` only if the key is unchanged since ``gets`` returned ``token``.

        ``ttl=KEEP_TTL`` keeps the entry's remaining lifetime. Returns ``False`` when
        the key changed or disappeared in between (nothing was written).
        """
        ...

    def delete_if(self, key: bytes, token: CasToken) -> bool:
        """Delete the key only if unchanged since ``gets`` returned ``token``."""
        ...

    def batch(self, commands: Sequence[Command]) -> list[object]:
        """Run the commands in as few round trips as the store allows.

        Results are returned in order; a command that failed on its own has the
        exception (a :class:`cacheorm.CacheORMError`) in its slot instead of
        raising, so one bad command does not hide the others' results.
        """
        ...

    def close(self) -> None:
        """Release connections and other resources. The backend is unusable after."""
        ...


def apply(backend: Backend, command: Command) -> object:
    """Run one :class:`Command` through ``backend``'s own methods and return its result.

    The one place that maps a command to a method call: the engine uses it for
    a lone command, and backends without a native pipeline for their ``batch``.

    Raises:
        ValidationError: an unknown command, or ``KEEP_TTL`` outside ``cas``.
    """
    op, key, ttl = command.op, command.key, command.ttl
    if op == "get":
        return backend.get(key)
    if op == "cas":
        return backend.cas(key, command.value, command.token, ttl)
    if isinstance(ttl, Keep):
        raise ValidationError("KEEP_TTL is only valid for cas")
    if op == "set":
        backend.set(key, command.value, ttl)
        return True
    if op == "gets":
        return backend.gets(key)
    if op == "add":
        return backend.add(key, command.value, ttl)
    if op == "replace":
        return backend.replace(key, command.value, ttl)
    if op == "delete":
        return backend.delete(key)
    if op == "delete_if":
        return backend.delete_if(key, command.token)
    if op == "has":
        return backend.has(key)
    if op == "touch":
        return backend.touch(key, ttl)
    if op == "incr":
        return backend.incr(key, command.delta)
    raise ValidationError(f"unknown batch command {op!r}")


class LocalStore(Protocol):
    """What the in-process stores (memory, filesystem) provide under their own lock.

    Each method assumes the caller holds the store's lock; TTLs arrive resolved
    to whole seconds. :func:`apply_local` maps a :class:`Command` onto them, so
    both stores run ``batch`` atomically through one dispatcher.
    """

    default_ttl: int

    def _get(self, key: bytes) -> bytes | None: ...
    def _gets(self, key: bytes) -> tuple[bytes, CasToken] | None: ...
    def _set(self, key: bytes, value: bytes, seconds: int) -> None: ...
    def _add(self, key: bytes, value: bytes, seconds: int) -> bool: ...
    def _replace(self, key: bytes, value: bytes, seconds: int) -> bool: ...
    def _cas(self, key: bytes, value: bytes, token: CasToken, ttl: int | Keep | None) -> bool: ...
    def _delete(self, key: bytes) -> bool: ...
    def _delete_if(self, key: bytes, token: CasToken) -> bool: ...
    def _has(self, key: bytes) -> bool: ...
    def _touch(self, key: bytes, seconds: int) -> bool: ...
    def _incr(self, key: bytes, delta: int) -> int: ...


INT64_MIN: Final = -(2**63)
INT64_MAX: Final = 2**63 - 1


def counter_sum(current: int, delta: int, key: bytes) -> int:
    """``current + delta`` for a counter, which every backend keeps in signed 64 bits.

    Raises:
        ValidationError: the result leaves the signed 64-bit range (as on Redis).
    """
    result = current + delta
    if not INT64_MIN <= result <= INT64_MAX:
        raise ValidationError(
            f"cannot incr/decr {key!r}: {current} + {delta} leaves the signed 64-bit range"
        )
    return result


def check_delta(delta: object) -> int:
    """Return ``delta`` if it is an ``int`` (not a ``bool``), else raise ValidationError."""
    if isinstance(delta, bool) or not isinstance(delta, int):
        raise ValidationError(f"delta must be an int, got {delta!r}")
    return delta


def apply_local(store: LocalStore, command: Command) -> object:
    """Run one command on an in-process store whose lock the caller holds.

    The commands of whole-batch phases (``get``, ``set``) are tested first:
    ``batch`` is the engine's only path for two or more commands.
    """
    op, key, ttl = command.op, command.key, command.ttl
    if op == "get":
        return store._get(key)
    if op == "cas":
        return store._cas(key, command.value, command.token, ttl)
    if isinstance(ttl, Keep):
        raise ValidationError("KEEP_TTL is only valid for cas")
    if op == "set":
        store._set(key, command.value, resolve_ttl(ttl, store.default_ttl))
        return True
    if op == "gets":
        return store._gets(key)
    if op == "delete":
        return store._delete(key)
    if op == "delete_if":
        return store._delete_if(key, command.token)
    if op == "has":
        return store._has(key)
    if op == "incr":
        return store._incr(key, check_delta(command.delta))
    seconds = resolve_ttl(ttl, store.default_ttl)
    if op == "add":
        return store._add(key, command.value, seconds)
    if op == "replace":
        return store._replace(key, command.value, seconds)
    if op == "touch":
        return store._touch(key, seconds)
    raise ValidationError(f"unknown batch command {op!r}")
