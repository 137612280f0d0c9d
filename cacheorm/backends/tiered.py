"""Two backends in front of each other: a fast ``near`` cache over a shared ``far`` one.

``far`` (e.g. Redis) is the source of truth; ``near`` (e.g. a small
:class:`~cacheorm.MemoryBackend`) only ever holds copies. Reads try ``near``
first and fill it from ``far``; writes and deletes go to ``far`` first, then
``near``; conditional operations (``add``, ``replace``, ``cas``,
``delete_if``, ``incr``...) are decided by ``far`` alone, then ``near`` is
updated or invalidated to match.

A ``near`` entry never outlives the ``far`` one it copies: it gets the TTL of
the write (capped by ``near_ttl``). When ``near`` is filled by a *read*, the
remaining lifetime in ``far`` is unknown, so the entry gets ``near_ttl``, or
:data:`FILL_TTL` seconds when ``near_ttl`` is not set. Writes made to ``far``
by other processes are seen through ``near`` after at most that long.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Final

from cacheorm.backends.base import KEEP_TTL, TTL, Backend, CasToken, Command, Keep, resolve_ttl
from cacheorm.errors import CacheORMError

__all__ = ["FILL_TTL", "TieredBackend"]

logger = logging.getLogger(__name__)

FILL_TTL: Final = 60
"""Seconds a value read from ``far`` stays in ``near`` when ``near_ttl`` is not set."""


def _shorter(a: int, b: int) -> int:
    """The shorter of two TTLs, where ``0`` means never expires."""
    if a == 0:
        return b
    if b == 0:
        return a
    return min(a, b)


class TieredBackend:
    """Read through ``near`` to ``far``; write to both.

    Args:
        near: the fast, local cache (typically a ``MemoryBackend``).
        far: the shared cache and source of truth.
        near_ttl: the longest a value stays in ``near``, in seconds, bounding
            how stale a copy can get when other processes write ``far``.
            ``None``: the TTL of each write, and :data:`FILL_TTL` for values
            copied from ``far`` on a read. ``0``: no bound (copies read from
            ``far`` never expire; only safe when no one else writes ``far``).

    Raises:
        ValidationError: an illegal ``near_ttl``.

    :meth:`close` closes both backends.
    """

    def __init__(self, near: Backend, far: Backend, near_ttl: int | None = None) -> None:
        self.near = near
        self.far = far
        self.near_ttl = None if near_ttl is None else resolve_ttl(near_ttl, 0)
        self._fill_ttl = FILL_TTL if self.near_ttl is None else self.near_ttl

    def __repr__(self) -> str:
        return f"TieredBackend(near={self.near!r}, far={self.far!r}, near_ttl={self.near_ttl})"

    @property
    def default_ttl(self) -> int:
        """``far``'s default TTL: the one that decides how long values live."""
        return self.far.default_ttl

    @default_ttl.setter
    def default_ttl(self, value: int) -> None:
        self.far.default_ttl = value

    def _near_ttl(self, ttl: int | None) -> int:
        """The TTL of a near copy written alongside a far write with ``ttl``."""
        seconds = resolve_ttl(ttl, self.far.default_ttl)
        return seconds if self.near_ttl is None else _shorter(self.near_ttl, seconds)

    def _drop(self, *keys: bytes) -> None:
        """Invalidate near copies after a far failure, without hiding the far error."""
        try:
            self.near.delete_many(*keys)
        except CacheORMError:
            logger.warning(
                "could not invalidate near cache for %d key(s)", len(keys), exc_info=True
            )

    # -- reads ----------------------------------------------------------------

    def get(self, key: bytes) -> bytes | None:
        """``near``, else ``far`` (copying the value into ``near``)."""
        value = self.near.get(key)
        if value is not None:
            return value
        value = self.far.get(key)
        if value is not None:
            self.near.set(key, value, self._fill_ttl)
        return value

    def get_many(self, *keys: bytes) -> list[bytes | None]:
        """``near`` for every key, then one ``far.get_many`` for the misses."""
        found = self.near.get_many(*keys)
        missing = [i for i, value in enumerate(found) if value is None]
        if not missing:
            return found
        fetched = self.far.get_many(*[keys[i] for i in missing])
        fill: dict[bytes, bytes] = {}
        for i, value in zip(missing, fetched, strict=True):
            found[i] = value
            if value is not None:
                fill[keys[i]] = value
        if fill:
            self.near.set_many(fill, self._fill_ttl)
        return found

    def has(self, key: bytes) -> bool:
        """Whether ``near`` or ``far`` holds the key."""
        return self.near.has(key) or self.far.has(key)

    def gets(self, key: bytes) -> tuple[bytes, CasToken] | None:
        """``far``'s value and token (a near copy has no token); fills ``near``."""
        got = self.far.gets(key)
        if got is None:
            self.near.delete(key)
        else:
            self.near.set(key, got[0], self._fill_ttl)
        return got

    # -- writes ---------------------------------------------------------------

    def set(self, key: bytes, value: bytes, ttl: TTL = None) -> None:
        """Store in ``far``, then ``near``; a failed far write drops the near copy."""
        near_ttl = self._near_ttl(ttl)
        try:
            self.far.set(key, value, ttl)
        except CacheORMError:
            self._drop(key)
            raise
        self.near.set(key, value, near_ttl)

    def _conditional(self, stored: bool, key: bytes, value: bytes, ttl: int | Keep | None) -> bool:
        # After a KEEP_TTL cas the far entry's remaining lifetime is unknown: a
        # near copy could outlive it, so drop it and let the next read refill.
        if stored and not isinstance(ttl, Keep):
            self.near.set(key, value, self._near_ttl(ttl))
        else:
            self.near.delete(key)
        return stored

    def add(self, key: bytes, value: bytes, ttl: TTL = None) -> bool:
        """``far.add`` decides; ``near`` then copies the value or forgets the key."""
        try:
            stored = self.far.add(key, value, ttl)
        except CacheORMError:
            self._drop(key)
            raise
        return self._conditional(stored, key, value, ttl)

    def replace(self, key: bytes, value: bytes, ttl: TTL = None) -> bool:
        """``far.replace`` decides; ``near`` then copies the value or forgets the key."""
        try:
            stored = self.far.replace(key, value, ttl)
        except CacheORMError:
            self._drop(key)
            raise
        return self._conditional(stored, key, value, ttl)

    def cas(
        self, key: bytes, value: bytes, token: CasToken, ttl: int | Keep | None = KEEP_TTL
    ) -> bool:
        """``far.cas`` decides; ``near`` then copies the value or forgets the key."""
        try:
            stored = self.far.cas(key, value, token, ttl)
        except CacheORMError:
            self._drop(key)
            raise
        return self._conditional(stored, key, value, ttl)

    def set_many(self, mapping: Mapping[bytes, bytes], ttl: TTL = None) -> None:
        """Store every pair in ``far``, then ``near``."""
        near_ttl = self._near_ttl(ttl)
        try:
            self.far.set_many(mapping, ttl)
        except CacheORMError:
            self._drop(*mapping)
            raise
        self.near.set_many(mapping, near_ttl)

    def replace_many(self, mapping: Mapping[bytes, bytes], ttl: TTL = None) -> list[bool]:
        """``far`` decides each key; ``near`` copies the stored ones and forgets the rest."""
        near_ttl = self._near_ttl(ttl)
        try:
            stored = self.far.replace_many(mapping, ttl)
        except CacheORMError:
            self._drop(*mapping)
            raise
        pairs = list(mapping.items())
        self.near.set_many({k: v for (k, v), ok in zip(pairs, stored, strict=True) if ok}, near_ttl)
        self.near.delete_many(*[k for (k, _), ok in zip(pairs, stored, strict=True) if not ok])
        return stored

    # -- invalidating operations ----------------------------------------------

    def delete(self, key: bytes) -> bool:
        """Delete from ``far`` and ``near``; return whether ``far`` held the key."""
        try:
            return self.far.delete(key)
        finally:
            self._drop(key)

    def delete_many(self, *keys: bytes) -> int:
        """Delete from ``far`` and ``near``; return how many ``far`` held."""
        try:
            return self.far.delete_many(*keys)
        finally:
            self._drop(*keys)

    def delete_if(self, key: bytes, token: CasToken) -> bool:
        """``far.delete_if`` decides; the near copy is dropped either way."""
        try:
            return self.far.delete_if(key, token)
        finally:
            self._drop(key)

    def incr(self, key: bytes, delta: int = 1) -> int:
        """``far.incr``; the near copy is dropped (the next read refills it)."""
        try:
            return self.far.incr(key, delta)
        finally:
            self._drop(key)

    def decr(self, key: bytes, delta: int = 1) -> int:
        """``far.decr``; the near copy is dropped (the next read refills it)."""
        try:
            return self.far.decr(key, delta)
        finally:
            self._drop(key)

    def touch(self, key: bytes, ttl: TTL = None) -> bool:
        """``far.touch``; the near copy is dropped, as it may now outlive ``far``."""
        try:
            return self.far.touch(key, ttl)
        finally:
            self._drop(key)

    # -- batch ------------------------------------------------------------------

    def batch(self, commands: Sequence[Command]) -> list[object]:
        """Serve plain ``get``s from ``near`` where possible; send the rest to ``far``.

        A ``get`` is answered by ``near`` only when no earlier command of the
        batch writes its key. Everything else goes to ``far`` in one
        ``far.batch``, in order; ``near`` is then updated command by command:
        read values are copied in, stored values copied, anything else
        (deletes, counters, failures) dropped.
        """
        results: list[object] = [None] * len(commands)
        written: set[bytes] = set()
        candidates: list[int] = []
        for i, c in enumerate(commands):
            if c.op == "get":
                if c.key not in written:
                    candidates.append(i)
            elif c.op not in ("gets", "has"):
                written.add(c.key)
        near_values = (
            self.near.get_many(*[commands[i].key for i in candidates]) if candidates else []
        )
        served: set[int] = set()
        for i, value in zip(candidates, near_values, strict=True):
            if value is not None:
                results[i] = value
                served.add(i)
        remote = [i for i in range(len(commands)) if i not in served]
        if not remote:
            return results
        try:
            answers = self.far.batch([commands[i] for i in remote])
        except CacheORMError:
            self._drop(*{commands[i].key for i in remote})
            raise
        for i, answer in zip(remote, answers, strict=True):
            results[i] = answer
            self._follow(commands[i], answer)
        return results

    def _follow(self, command: Command, answer: object) -> None:
        """Bring ``near`` in line with one far command's result."""
        op, key = command.op, command.key
        try:
            if op == "get" or op == "gets":
                copy = answer if op == "get" else answer[0] if isinstance(answer, tuple) else None
                if isinstance(copy, bytes):
                    self.near.set(key, copy, self._fill_ttl)
                elif op == "gets" and answer is None:
                    self.near.delete(key)
            elif (
                op in ("set", "add", "replace", "cas")
                and answer is True
                and not isinstance(command.ttl, Keep)
            ):
                self.near.set(key, command.value, self._near_ttl(command.ttl))
            elif op != "has":
                self.near.delete(key)
        except CacheORMError:
            self._drop(key)

    def close(self) -> None:
        """Close ``far``, then ``near`` (both, even if the first fails)."""
        try:
            self.far.close()
        finally:
            self.near.close()
