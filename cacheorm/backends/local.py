"""The command logic of the in-process stores, written once over a small storage interface.

:class:`~cacheorm.MemoryBackend` and :class:`~cacheorm.FileSystemBackend`
differ only in where an entry lives: a dict entry in least-recently-used order,
or a file with a header shared by several processes. What a command does with
entries is the same for both and lives here, in :class:`LocalBackend`: TTL
resolution and expiry, locking, compare-and-set versions, counters, and
running a whole :meth:`~LocalBackend.batch` atomically under the store's lock.
A store plugs in as a :class:`Storage`.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from typing import NamedTuple, Protocol, TypeAlias, assert_never

from cacheorm.backends import base
from cacheorm.backends.base import (
    KEEP_TTL,
    TTL,
    CasToken,
    Command,
    Keep,
    check_delta,
    counter_sum,
    is_int,
    parse_counter,
    resolve_ttl,
)
from cacheorm.errors import CacheORMError, ValidationError

__all__ = ["Entry", "LocalBackend", "Storage", "check_max_items"]


def check_max_items(max_items: object) -> int | None:
    """Validate a ``max_items`` bound: ``None`` (unbounded) or a positive ``int``."""
    if max_items is None:
        return None
    if not is_int(max_items) or max_items < 1:
        raise ValidationError(f"max_items must be None or a positive int, got {max_items!r}")
    return max_items


class Entry(NamedTuple):
    """One stored value, as a :class:`Storage` keeps it."""

    value: bytes
    expires: float
    """Absolute reading of the store's clock; ``0.0`` = never."""
    version: int
    """The CAS token: a fresh number on every change of value (``touch`` keeps it)."""


class Storage(Protocol):
    """Where the local stores differ: how an :class:`Entry` is kept.

    ``peek``, ``fetch``, ``put`` and ``remove`` are called with the right lock
    held (``read_lock`` for reads outside a write, ``write_lock`` otherwise).
    """

    @property
    def clock(self) -> Callable[[], float]:
        """The time source of ``Entry.expires``."""
        ...

    @property
    def read_lock(self) -> AbstractContextManager[object]:
        """Held around a call that only reads."""
        ...

    @property
    def write_lock(self) -> AbstractContextManager[object]:
        """Held around a call that writes: exclusive, so read-modify-write is atomic."""
        ...

    @property
    def new_version(self) -> Callable[[], int]:
        """Makes the version of a new value, unequal to every version still stored."""
        ...

    def peek(self, key: bytes) -> Entry | None:
        """The live entry, or ``None`` (absent or expired; an expired one may be dropped)."""
        ...

    def fetch(self, key: bytes) -> Entry | None:
        """:meth:`peek` for a read that serves the value: it may count as a use (LRU)."""
        ...

    def put(self, key: bytes, entry: Entry) -> None:
        """Store ``entry`` under ``key``, replacing any other."""
        ...

    def remove(self, key: bytes) -> bool:
        """Drop ``key``'s entry, expired or not. Return whether there was one."""
        ...

    def stored_keys(self) -> list[bytes]:
        """Every key with an entry, expired or not (for :meth:`LocalBackend.clear_prefix`)."""
        ...

    def close(self) -> None:
        """Release what the storage holds."""
        ...


_Other: TypeAlias = (
    base.Gets
    | base.Cas
    | base.Add
    | base.Replace
    | base.Delete
    | base.DeleteIf
    | base.Has
    | base.Incr
    | base.Clear
)
"""The commands a batch runs through ``LocalBackend._run``: all but ``Get`` and ``Set``."""


class LocalBackend:
    """The :class:`~cacheorm.Backend` methods of an in-process store, over its ``storage``.

    Every method that writes holds ``storage.write_lock``, so ``add``,
    ``replace``, ``incr``, ``cas`` and ``delete_if`` are atomic, and so is a
    whole :meth:`batch`.

    Args:
        storage: where the entries live.
        default_ttl: seconds used when a call passes ``ttl=None``; ``0`` = never.

    Raises:
        ValidationError: an illegal ``default_ttl``.
    """

    default_ttl: int

    def __init__(self, storage: Storage, default_ttl: int) -> None:
        self.default_ttl = resolve_ttl(default_ttl, 0)
        self._storage = storage

    # -- reads ------------------------------------------------------------------

    def get(self, key: bytes) -> bytes | None:
        """Return the value, or ``None`` when the key is absent or expired."""
        storage = self._storage
        with storage.read_lock:
            entry = storage.fetch(key)
        return None if entry is None else entry.value

    def get_many(self, *keys: bytes) -> list[bytes | None]:
        """Return the values in key order, ``None`` for each missing key."""
        storage = self._storage
        with storage.read_lock:
            entries = [storage.fetch(key) for key in keys]
        return [None if entry is None else entry.value for entry in entries]

    def get_with_ttl(self, key: bytes) -> tuple[bytes, float] | None:
        """Return the value and its remaining seconds (``0.0`` = never), or ``None``."""
        storage = self._storage
        with storage.read_lock:
            return self._with_ttl(key, storage.clock())

    def get_many_with_ttl(self, *keys: bytes) -> list[tuple[bytes, float] | None]:
        """:meth:`get_with_ttl` for each key, in key order."""
        storage = self._storage
        with storage.read_lock:
            now = storage.clock()
            return [self._with_ttl(key, now) for key in keys]

    def has(self, key: bytes) -> bool:
        """Return whether the key is present and not expired."""
        with self._storage.read_lock:
            return self._storage.peek(key) is not None

    def gets(self, key: bytes) -> tuple[bytes, CasToken] | None:
        """Return the value and its version as the CAS token, or ``None``."""
        with self._storage.read_lock:
            return self._gets(key)

    # -- writes -----------------------------------------------------------------

    def set(self, key: bytes, value: bytes, ttl: TTL = None) -> None:
        """Store ``value`` unconditionally."""
        seconds = resolve_ttl(ttl, self.default_ttl)
        with self._storage.write_lock:
            self._write(key, value, self._expiry(seconds))

    def set_many(self, mapping: Mapping[bytes, bytes], ttl: TTL = None) -> None:
        """Store every pair unconditionally, under one lock."""
        seconds = resolve_ttl(ttl, self.default_ttl)
        with self._storage.write_lock:
            expires = self._expiry(seconds)
            for key, value in mapping.items():
                self._write(key, value, expires)

    def add(self, key: bytes, value: bytes, ttl: TTL = None) -> bool:
        """Store only if absent, atomically. Return whether it was stored."""
        seconds = resolve_ttl(ttl, self.default_ttl)
        with self._storage.write_lock:
            return self._add(key, value, self._expiry(seconds))

    def replace(self, key: bytes, value: bytes, ttl: TTL = None) -> bool:
        """Store only if present. Return whether it was stored."""
        seconds = resolve_ttl(ttl, self.default_ttl)
        with self._storage.write_lock:
            return self._replace(key, value, self._expiry(seconds))

    def replace_many(self, mapping: Mapping[bytes, bytes], ttl: TTL = None) -> list[bool]:
        """Replace each present key; return, in mapping order, whether each was stored."""
        seconds = resolve_ttl(ttl, self.default_ttl)
        with self._storage.write_lock:
            expires = self._expiry(seconds)
            return [self._replace(key, value, expires) for key, value in mapping.items()]

    def delete(self, key: bytes) -> bool:
        """Remove the key. Return whether a live value existed."""
        with self._storage.write_lock:
            return self._delete(key)

    def delete_many(self, *keys: bytes) -> int:
        """Remove the keys; return how many existed."""
        with self._storage.write_lock:
            return sum(self._delete(key) for key in keys)

    def incr(self, key: bytes, delta: int = 1) -> int:
        """Add ``delta`` atomically and return the new value; a missing key counts as ``0``.

        Raises:
            ValidationError: the stored value is not an integer, ``delta`` is not
                an ``int``, or the result leaves the signed 64-bit range.
        """
        delta = check_delta(delta)
        with self._storage.write_lock:
            return self._incr(key, delta)

    def decr(self, key: bytes, delta: int = 1) -> int:
        """Subtract ``delta`` atomically and return the new value (may go below zero)."""
        delta = check_delta(delta)
        with self._storage.write_lock:
            return self._incr(key, -delta)

    def touch(self, key: bytes, ttl: TTL = None) -> bool:
        """Reset the key's TTL. Return whether the key exists."""
        seconds = resolve_ttl(ttl, self.default_ttl)
        with self._storage.write_lock:
            entry = self._storage.peek(key)
            if entry is None:
                return False
            # The value is unchanged, so the version (CAS token) is kept.
            self._storage.put(key, entry._replace(expires=self._expiry(seconds)))
            return True

    def cas(
        self, key: bytes, value: bytes, token: CasToken, ttl: int | Keep | None = KEEP_TTL
    ) -> bool:
        """Store ``value`` only if the entry's version is still ``token``.

        Raises:
            ValidationError: ``token`` did not come from this backend, or an illegal TTL.
        """
        with self._storage.write_lock:
            return self._cas(key, value, token, ttl)

    def delete_if(self, key: bytes, token: CasToken) -> bool:
        """Delete the key only if its version is still ``token``."""
        with self._storage.write_lock:
            return self._delete_if(key, token)

    def clear_prefix(self, prefix: bytes, shape: re.Pattern[bytes] | None = None) -> int:
        """Remove every key that ``(prefix, shape)`` covers (see :func:`base.in_scope`).

        Atomic, under the write lock: it looks at every key of the store once
        (a filesystem store reads each file's header). Returns how many live
        entries were removed (expired ones go too, uncounted).
        """
        with self._storage.write_lock:
            return self._clear(prefix, shape)

    def batch(self, commands: Sequence[Command]) -> list[object]:
        """Run the commands in order, atomically: under the write lock throughout.

        A command that fails on its own (an illegal TTL, a non-integer counter)
        has its :class:`~cacheorm.CacheORMError` in its result slot.
        """
        results: list[object] = []
        append = results.append
        storage = self._storage
        fetch, put, new_version = storage.fetch, storage.put, storage.new_version
        expiries: dict[TTL, float] = {}  # the batch is one atomic step: one expiry per TTL
        with storage.write_lock:
            for command in commands:
                try:
                    # The engine's read and write phases are all gets or all sets:
                    # they skip _run, whose class patterns would double their cost.
                    if isinstance(command, base.Get):
                        entry = fetch(command.key)
                        append(None if entry is None else entry.value)
                    elif isinstance(command, base.Set):
                        ttl = command.ttl
                        # Only an exact int may be looked up: True == 1.0 == 1 as keys.
                        expires = expiries.get(ttl) if ttl is None or type(ttl) is int else None
                        if expires is None:
                            expires = expiries[ttl] = self._expires(ttl)
                        put(command.key, Entry(command.value, expires, new_version()))
                        append(True)
                    else:
                        append(self._run(command))
                except CacheORMError as err:
                    append(err)
        return results

    def close(self) -> None:
        """Release the store's resources. The backend is unusable after."""
        self._storage.close()

    # -- the commands, with the lock held ---------------------------------------

    def _run(self, command: _Other) -> object:
        """Run one command of a batch (other than a get or a set) with the lock held."""
        match command:
            case base.Gets():
                return self._gets(command.key)
            case base.Cas():
                return self._cas(command.key, command.value, command.token, command.ttl)
            case base.Add():
                return self._add(command.key, command.value, self._expires(command.ttl))
            case base.Replace():
                return self._replace(command.key, command.value, self._expires(command.ttl))
            case base.Delete():
                return self._delete(command.key)
            case base.DeleteIf():
                return self._delete_if(command.key, command.token)
            case base.Has():
                return self._storage.peek(command.key) is not None
            case base.Incr():
                return self._incr(command.key, check_delta(command.delta))
            case base.Clear():
                return self._clear(command.prefix, command.shape)
            case _:
                assert_never(command)

    def _clear(self, prefix: bytes, shape: re.Pattern[bytes] | None) -> int:
        keys = self._storage.stored_keys()
        return sum(self._delete(key) for key in keys if base.in_scope(key, prefix, shape))

    def _expiry(self, seconds: int) -> float:
        return self._storage.clock() + seconds if seconds else 0.0

    def _expires(self, ttl: TTL) -> float:
        """The expiry of a write now with ``ttl``, validated."""
        return self._expiry(resolve_ttl(ttl, self.default_ttl))

    def _write(self, key: bytes, value: bytes, expires: float) -> None:
        storage = self._storage
        storage.put(key, Entry(value, expires, storage.new_version()))

    def _with_ttl(self, key: bytes, now: float) -> tuple[bytes, float] | None:
        """The live value and its lifetime left at ``now``, a clock reading taken before."""
        entry = self._storage.fetch(key)
        if entry is None:
            return None
        if not entry.expires:
            return entry.value, 0.0
        # fetch checked the expiry against a later clock reading, so this is > 0
        # unless the clock stepped back in between: then it is a miss.
        remaining = entry.expires - now
        return (entry.value, remaining) if remaining > 0 else None

    def _gets(self, key: bytes) -> tuple[bytes, CasToken] | None:
        entry = self._storage.fetch(key)
        return None if entry is None else (entry.value, entry.version)

    def _add(self, key: bytes, value: bytes, expires: float) -> bool:
        if self._storage.peek(key) is not None:
            return False
        self._write(key, value, expires)
        return True

    def _replace(self, key: bytes, value: bytes, expires: float) -> bool:
        if self._storage.peek(key) is None:
            return False
        self._write(key, value, expires)
        return True

    def _delete(self, key: bytes) -> bool:
        # An expired entry is removed too, but reported as absent.
        live = self._storage.peek(key) is not None
        return self._storage.remove(key) and live

    def _incr(self, key: bytes, delta: int) -> int:
        entry = self._storage.peek(key)
        # A new counter never expires, like Redis' INCRBY on a missing key.
        current, expires = (
            (0, 0.0) if entry is None else (parse_counter(entry.value, key), entry.expires)
        )
        result = counter_sum(current, delta, key)
        self._write(key, str(result).encode("ascii"), expires)
        return result

    def _matches(self, key: bytes, token: CasToken, what: str) -> Entry | None:
        """The live entry if its version is ``token``, else ``None``."""
        if not is_int(token):
            raise ValidationError(f"{what} needs the token returned by this backend's gets")
        entry = self._storage.peek(key)
        return entry if entry is not None and entry.version == token else None

    def _cas(self, key: bytes, value: bytes, token: CasToken, ttl: int | Keep | None) -> bool:
        seconds = None if ttl is KEEP_TTL else resolve_ttl(ttl, self.default_ttl)
        entry = self._matches(key, token, "cas")
        if entry is None:
            return False
        self._write(key, value, entry.expires if seconds is None else self._expiry(seconds))
        return True

    def _delete_if(self, key: bytes, token: CasToken) -> bool:
        return self._matches(key, token, "delete_if") is not None and self._storage.remove(key)
