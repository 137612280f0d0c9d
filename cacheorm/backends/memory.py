"""The in-process backend: a bounded, thread-safe LRU dict with TTLs.

Entries live in one :class:`collections.OrderedDict` guarded by one lock, so
every method (and a whole :meth:`MemoryBackend.batch`) is atomic with respect
to other threads. Nothing is shared between processes.
"""

from __future__ import annotations

import itertools
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from typing import Final, NamedTuple

from cacheorm.backends.base import (
    KEEP_TTL,
    TTL,
    CasToken,
    Command,
    Keep,
    apply_local,
    check_delta,
    counter_sum,
    resolve_ttl,
)
from cacheorm.errors import CacheORMError, ValidationError

__all__ = ["MemoryBackend", "SimpleBackend"]

_COUNTER: Final = re.compile(rb"-?[0-9]+\Z")


class _Entry(NamedTuple):
    value: bytes
    expires: float  # absolute clock reading; 0.0 = never
    version: int  # the CAS token: a fresh number on every change of value


def parse_counter(value: bytes, key: bytes) -> int:
    """Read a counter stored as ASCII decimal digits.

    Raises:
        ValidationError: the stored value is not an integer.
    """
    if _COUNTER.match(value) is None:
        raise ValidationError(f"cannot incr/decr {key!r}: its value is not an integer")
    return int(value)


def check_max_items(max_items: object) -> int | None:
    """Validate a ``max_items`` bound: ``None`` (unbounded) or a positive ``int``."""
    if max_items is None:
        return None
    if isinstance(max_items, bool) or not isinstance(max_items, int) or max_items < 1:
        raise ValidationError(f"max_items must be None or a positive int, got {max_items!r}")
    return max_items


class MemoryBackend:
    """Store bytes in this process, evicting the least recently used entry when full.

    Args:
        max_items: the most entries kept; the least recently used one is dropped
            when a write would exceed it. ``None`` = unbounded.
        default_ttl: seconds used when a call passes ``ttl=None``; ``0`` = never.
        clock: the time source for expiry, in seconds. Tests pass a fake clock to
            advance time without sleeping.

    Raises:
        ValidationError: an illegal ``max_items`` or ``default_ttl``.

    Example:
        >>> backend = MemoryBackend(max_items=2)
        >>> backend.set(b"a", b"1"); backend.set(b"b", b"2"); backend.set(b"c", b"3")
        >>> backend.get(b"a") is None, backend.get(b"c")
        (True, b'3')
    """

    default_ttl: int

    def __init__(
        self,
        max_items: int | None = 10_000,
        default_ttl: int = 0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.default_ttl = resolve_ttl(default_ttl, 0)
        self.max_items = check_max_items(max_items)
        self._clock = clock
        self._data: OrderedDict[bytes, _Entry] = OrderedDict()
        self._lock = threading.Lock()
        self._versions = itertools.count(1)

    def __repr__(self) -> str:
        return f"MemoryBackend(max_items={self.max_items}, default_ttl={self.default_ttl})"

    def __len__(self) -> int:
        """How many entries are held, expired ones not yet dropped included."""
        return len(self._data)

    # -- unlocked primitives: callers hold self._lock -------------------------

    def _live(self, key: bytes) -> _Entry | None:
        entry = self._data.get(key)
        if entry is None:
            return None
        if entry.expires and entry.expires <= self._clock():
            del self._data[key]
            return None
        return entry

    def _expiry(self, seconds: int) -> float:
        return self._clock() + seconds if seconds else 0.0

    def _store(self, key: bytes, value: bytes, expires: float) -> None:
        data = self._data
        data[key] = _Entry(value, expires, next(self._versions))
        data.move_to_end(key)
        if self.max_items is not None:
            while len(data) > self.max_items:
                data.popitem(last=False)

    def _set(self, key: bytes, value: bytes, seconds: int) -> None:
        self._store(key, value, self._expiry(seconds))

    def _has(self, key: bytes) -> bool:
        return self._live(key) is not None

    def _get(self, key: bytes) -> bytes | None:
        entry = self._live(key)
        if entry is None:
            return None
        self._data.move_to_end(key)
        return entry.value

    def _get_with_ttl(self, key: bytes, now: float) -> tuple[bytes, float] | None:
        entry = self._live(key)
        # _live read the clock after ``now``, so expires > now unless the clock
        # stepped back in between (a clock passed by the caller may): then a miss.
        if entry is None or (entry.expires and entry.expires <= now):
            return None
        self._data.move_to_end(key)
        return entry.value, (entry.expires - now if entry.expires else 0.0)

    def _add(self, key: bytes, value: bytes, seconds: int) -> bool:
        if self._live(key) is not None:
            return False
        self._store(key, value, self._expiry(seconds))
        return True

    def _replace(self, key: bytes, value: bytes, seconds: int) -> bool:
        if self._live(key) is None:
            return False
        self._store(key, value, self._expiry(seconds))
        return True

    def _delete(self, key: bytes) -> bool:
        return self._live(key) is not None and self._data.pop(key, None) is not None

    def _incr(self, key: bytes, delta: int) -> int:
        entry = self._live(key)
        # A new counter never expires, like Redis' INCRBY on a missing key.
        current, expires = (
            (0, 0.0) if entry is None else (parse_counter(entry.value, key), entry.expires)
        )
        result = counter_sum(current, delta, key)
        self._store(key, str(result).encode("ascii"), expires)
        return result

    def _touch(self, key: bytes, seconds: int) -> bool:
        entry = self._live(key)
        if entry is None:
            return False
        # The value is unchanged, so the CAS token stays valid.
        self._data[key] = entry._replace(expires=self._expiry(seconds))
        self._data.move_to_end(key)
        return True

    def _gets(self, key: bytes) -> tuple[bytes, CasToken] | None:
        entry = self._live(key)
        if entry is None:
            return None
        self._data.move_to_end(key)
        return entry.value, entry.version

    def _matches(self, key: bytes, token: CasToken, what: str) -> _Entry | None:
        if isinstance(token, bool) or not isinstance(token, int):
            raise ValidationError(f"{what} needs the token returned by this backend's gets")
        entry = self._live(key)
        return entry if entry is not None and entry.version == token else None

    def _cas(self, key: bytes, value: bytes, token: CasToken, ttl: int | Keep | None) -> bool:
        seconds = None if ttl is KEEP_TTL else resolve_ttl(ttl, self.default_ttl)
        entry = self._matches(key, token, "cas")
        if entry is None:
            return False
        self._store(key, value, entry.expires if seconds is None else self._expiry(seconds))
        return True

    def _delete_if(self, key: bytes, token: CasToken) -> bool:
        if self._matches(key, token, "delete_if") is None:
            return False
        del self._data[key]
        return True

    # -- the Backend protocol -----------------------------------------------

    def get(self, key: bytes) -> bytes | None:
        """Return the value, or ``None`` when the key is absent or expired."""
        with self._lock:
            # Inlined _get: this is the hot path of a tiered cache.
            entry = self._data.get(key)
            if entry is None:
                return None
            if entry.expires and entry.expires <= self._clock():
                del self._data[key]
                return None
            self._data.move_to_end(key)
            return entry.value

    def get_with_ttl(self, key: bytes) -> tuple[bytes, float] | None:
        """Return the value and its remaining seconds (``0.0`` = never), or ``None``."""
        with self._lock:
            return self._get_with_ttl(key, self._clock())

    def get_many_with_ttl(self, *keys: bytes) -> list[tuple[bytes, float] | None]:
        """:meth:`get_with_ttl` for each key, in key order."""
        with self._lock:
            now = self._clock()
            return [self._get_with_ttl(key, now) for key in keys]

    def set(self, key: bytes, value: bytes, ttl: TTL = None) -> None:
        """Store ``value`` unconditionally."""
        seconds = resolve_ttl(ttl, self.default_ttl)
        with self._lock:
            self._store(key, value, self._expiry(seconds))

    def add(self, key: bytes, value: bytes, ttl: TTL = None) -> bool:
        """Store only if absent. Return whether it was stored."""
        seconds = resolve_ttl(ttl, self.default_ttl)
        with self._lock:
            return self._add(key, value, seconds)

    def replace(self, key: bytes, value: bytes, ttl: TTL = None) -> bool:
        """Store only if present. Return whether it was stored."""
        seconds = resolve_ttl(ttl, self.default_ttl)
        with self._lock:
            return self._replace(key, value, seconds)

    def delete(self, key: bytes) -> bool:
        """Remove the key. Return whether it existed."""
        with self._lock:
            return self._delete(key)

    def has(self, key: bytes) -> bool:
        """Return whether the key is present and not expired."""
        with self._lock:
            return self._live(key) is not None

    def get_many(self, *keys: bytes) -> list[bytes | None]:
        """Return the values in key order, ``None`` for each missing key."""
        with self._lock:
            return [self._get(key) for key in keys]

    def set_many(self, mapping: Mapping[bytes, bytes], ttl: TTL = None) -> None:
        """Store every pair unconditionally."""
        seconds = resolve_ttl(ttl, self.default_ttl)
        with self._lock:
            expires = self._expiry(seconds)
            for key, value in mapping.items():
                self._store(key, value, expires)

    def replace_many(self, mapping: Mapping[bytes, bytes], ttl: TTL = None) -> list[bool]:
        """Replace each present key; return, in mapping order, whether each was stored."""
        seconds = resolve_ttl(ttl, self.default_ttl)
        with self._lock:
            return [self._replace(key, value, seconds) for key, value in mapping.items()]

    def delete_many(self, *keys: bytes) -> int:
        """Remove the keys; return how many existed."""
        with self._lock:
            return sum(self._delete(key) for key in keys)

    def incr(self, key: bytes, delta: int = 1) -> int:
        """Add ``delta`` and return the new value; a missing key counts as ``0``.

        Raises:
            ValidationError: the stored value is not an integer, or ``delta`` is
                not an ``int``.
        """
        delta = check_delta(delta)
        with self._lock:
            return self._incr(key, delta)

    def decr(self, key: bytes, delta: int = 1) -> int:
        """Subtract ``delta`` and return the new value (may go below zero)."""
        delta = check_delta(delta)
        with self._lock:
            return self._incr(key, -delta)

    def touch(self, key: bytes, ttl: TTL = None) -> bool:
        """Reset the key's TTL. Return whether the key exists."""
        seconds = resolve_ttl(ttl, self.default_ttl)
        with self._lock:
            return self._touch(key, seconds)

    def gets(self, key: bytes) -> tuple[bytes, CasToken] | None:
        """Return the value and its version number as the CAS token, or ``None``."""
        with self._lock:
            return self._gets(key)

    def cas(
        self, key: bytes, value: bytes, token: CasToken, ttl: int | Keep | None = KEEP_TTL
    ) -> bool:
        """Store ``value`` only if the entry's version is still ``token``.

        Raises:
            ValidationError: ``token`` did not come from this backend, or an illegal TTL.
        """
        with self._lock:
            return self._cas(key, value, token, ttl)

    def delete_if(self, key: bytes, token: CasToken) -> bool:
        """Delete the key only if its version is still ``token``."""
        with self._lock:
            return self._delete_if(key, token)

    def batch(self, commands: Sequence[Command]) -> list[object]:
        """Run the commands in order, atomically: no other thread runs in between.

        A command that fails on its own (an illegal TTL, a non-integer counter)
        has its :class:`~cacheorm.CacheORMError` in its result slot.
        """
        results: list[object] = []
        append = results.append
        # The engine sends every phase of two or more commands here: all-get and
        # all-set phases skip the general dispatcher, and a set's expiry is
        # computed once per TTL, as in get_many/set_many.
        expiries: dict[int | None, float] = {}
        with self._lock:
            for command in commands:
                op, ttl = command.op, command.ttl
                try:
                    if op == "get":
                        append(self._get(command.key))
                    elif op == "set" and (ttl is None or type(ttl) is int):
                        expires = expiries.get(ttl)
                        if expires is None:
                            expires = self._expiry(resolve_ttl(ttl, self.default_ttl))
                            expiries[ttl] = expires
                        self._store(command.key, command.value, expires)
                        append(True)
                    else:
                        append(apply_local(self, command))
                except CacheORMError as err:
                    append(err)
        return results

    def close(self) -> None:
        """Drop every entry. The backend holds no other resources."""
        with self._lock:
            self._data.clear()


SimpleBackend = MemoryBackend
"""The name cachelib users know for an in-process cache."""
