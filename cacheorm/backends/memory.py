"""The in-process backend: a bounded, thread-safe LRU dict with TTLs.

Entries live in one :class:`collections.OrderedDict` guarded by one lock, so
every method (and a whole :meth:`MemoryBackend.batch`) is atomic with respect
to other threads. Nothing is shared between processes. The command logic is
:class:`~cacheorm.backends.local.LocalBackend`'s; this module keeps the dict.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections import OrderedDict
from collections.abc import Callable

from cacheorm.backends.local import Entry, LocalBackend, check_max_items

__all__ = ["MemoryBackend", "SimpleBackend"]


class _Entries:
    """The :class:`~cacheorm.backends.local.Storage` of a memory backend.

    One lock serves reads and writes: a read moves its entry to the
    most-recently-used end, and an expired entry is dropped when met.
    """

    def __init__(self, max_items: int | None, clock: Callable[[], float]) -> None:
        self.max_items = max_items
        self.clock = clock
        self.data: OrderedDict[bytes, Entry] = OrderedDict()
        self.read_lock = self.write_lock = threading.Lock()
        self.new_version = itertools.count(1).__next__

    def peek(self, key: bytes) -> Entry | None:
        entry = self.data.get(key)
        if entry is not None and entry.expires and entry.expires <= self.clock():
            del self.data[key]
            return None
        return entry

    def fetch(self, key: bytes) -> Entry | None:
        # peek inlined: this is the hot path of a tiered cache.
        entry = self.data.get(key)
        if entry is None:
            return None
        if entry.expires and entry.expires <= self.clock():
            del self.data[key]
            return None
        self.data.move_to_end(key)
        return entry

    def put(self, key: bytes, entry: Entry) -> None:
        data = self.data
        data[key] = entry
        data.move_to_end(key)
        if self.max_items is not None:
            while len(data) > self.max_items:
                data.popitem(last=False)

    def remove(self, key: bytes) -> bool:
        return self.data.pop(key, None) is not None

    def stored_keys(self) -> list[bytes]:
        return list(self.data)

    def close(self) -> None:
        with self.write_lock:
            self.data.clear()


class MemoryBackend(LocalBackend):
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

    def __init__(
        self,
        max_items: int | None = 10_000,
        default_ttl: int = 0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._entries = _Entries(check_max_items(max_items), clock)
        super().__init__(self._entries, default_ttl)

    def __repr__(self) -> str:
        return f"MemoryBackend(max_items={self.max_items}, default_ttl={self.default_ttl})"

    def __len__(self) -> int:
        """How many entries are held, expired ones not yet dropped included."""
        return len(self._entries.data)

    @property
    def max_items(self) -> int | None:
        """The most entries kept (``None`` = unbounded)."""
        return self._entries.max_items

    def ping(self) -> None:
        """Return at once: the store is this process's memory, so it always answers."""

    def close(self) -> None:
        """Drop every entry. The backend holds no other resources."""
        self._entries.close()


SimpleBackend = MemoryBackend
"""The name cachelib users know for an in-process cache."""
