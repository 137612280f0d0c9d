"""Two backends in front of each other: a fast ``near`` cache over a shared ``far`` one.

``far`` (e.g. Redis) is the source of truth; ``near`` (e.g. a small
:class:`~cacheorm.MemoryBackend`) only ever holds copies. Reads try ``near``
first and fill it from ``far``; writes and deletes go to ``far`` first, then
``near``; conditional operations (``add``, ``replace``, ``cas``,
``delete_if``, ``incr``...) are decided by ``far`` alone, then ``near`` is
updated or invalidated to match.

A ``near`` copy never outlives the ``far`` entry it copies. A write through
the tier gives the copy the write's TTL; a *read* that fills ``near`` asks
``far`` for the entry's remaining lifetime (:meth:`Backend.get_with_ttl`, in
the same round trip) and gives the copy that many whole seconds, or nothing
when under one second is left. ``near_ttl`` (:data:`FILL_TTL` seconds when
it is not set) additionally caps every copy, which bounds how stale a copy can
get when *other* processes write ``far``: they are seen through ``near`` after
at most that long. Within the process, a read racing a write never copies the
older value into ``near`` after the write (the write bumps an epoch under the
tier's lock; the read copies only if the epoch did not move).
"""

from __future__ import annotations

import contextlib
import logging
import math
import re
import threading
from collections.abc import Iterator, Mapping, Sequence
from typing import Final, Protocol, assert_never, cast

from cacheorm.backends import base
from cacheorm.backends.base import KEEP_TTL, TTL, Backend, CasToken, Command, Keep, resolve_ttl
from cacheorm.errors import CacheORMError

__all__ = ["FILL_TTL", "TieredBackend"]

logger = logging.getLogger(__name__)

FILL_TTL: Final = 60
"""The longest a copy stays in ``near`` when ``near_ttl`` is not set.

Shorter when the far entry expires sooner.
"""


def _near_candidates(commands: Sequence[Command]) -> tuple[list[int], list[int]]:
    """Split a batch's command indexes: the ``get``s ``near`` may answer, and the rest.

    ``near`` may answer a ``get`` when no earlier command of the batch writes its key.
    """
    written: set[bytes] = set()
    candidates: list[int] = []
    remote: list[int] = []
    for i, command in enumerate(commands):
        if type(command) is base.Get:  # the common case, at half the cost of the match
            (remote if command.key in written else candidates).append(i)
            continue
        remote.append(i)
        match command:
            case base.Get() | base.Gets() | base.Has():
                pass
            case (
                base.Set()
                | base.Add()
                | base.Replace()
                | base.Cas()
                | base.Delete()
                | base.DeleteIf()
                | base.Incr()
            ):
                written.add(command.key)
            case base.Clear():
                written = _EVERY_KEY  # keys it cannot name: every later get goes to far
            case _:
                assert_never(command)
    return candidates, remote


class _EveryKey(set[bytes]):
    """A set holding every key (``written`` after a :class:`~cacheorm.backends.base.Clear`)."""

    def __contains__(self, key: object) -> bool:
        return True

    def add(self, key: bytes) -> None:
        return None


_EVERY_KEY: Final = _EveryKey()


def _serve_near(
    commands: Sequence[Command],
    candidates: Sequence[int],
    near_values: Sequence[bytes | None],
    results: list[object],
) -> dict[bytes, list[int]]:
    """Put near's hits into ``results``; return the missed keys with their command indexes."""
    missed: dict[bytes, list[int]] = {}
    for i, value in zip(candidates, near_values, strict=True):
        if value is None:
            missed.setdefault(commands[i].key, []).append(i)
        else:
            results[i] = value
    return missed


def _spread(
    missed: Mapping[bytes, list[int]],
    fetched: Sequence[tuple[bytes, float] | None] | CacheORMError,
    results: list[object],
) -> None:
    """Put far's answers for the near misses into ``results`` (an error in each slot)."""
    for n, indexes in enumerate(missed.values()):
        answer: object
        if isinstance(fetched, CacheORMError):
            answer = fetched  # in each slot, like a failed far command
        else:
            hit = fetched[n]
            answer = None if hit is None else hit[0]
        for i in indexes:
            results[i] = answer


def _shorter(a: int, b: int) -> int:
    """The shorter of two TTLs, where ``0`` means never expires."""
    if a == 0:
        return b
    if b == 0:
        return a
    return min(a, b)


def _far_server(far: object, key: bytes) -> str | None:
    """``far.server_for(key)`` when ``far`` can place keys (see ``cacheorm.engine.Placed``)."""
    place = getattr(far, "server_for", None)
    return None if place is None else cast("str | None", place(key))


class _HasDefaultTTL(Protocol):
    """What the shared tier rules need of ``far``: sync or async, its default TTL."""

    @property
    def default_ttl(self) -> int: ...


class NearCopies:
    """The tier rules both tiers share: what ``near`` copies, and for how long.

    :class:`TieredBackend` and :class:`~cacheorm.AsyncTieredBackend` inherit
    these decisions and make the (sync or async) calls themselves.
    """

    near: object
    far: _HasDefaultTTL
    near_ttl: int | None
    _fill_ttl: int

    def _set_near_ttl(self, near_ttl: int | None) -> None:
        self.near_ttl = None if near_ttl is None else resolve_ttl(near_ttl, 0)
        self._fill_ttl = FILL_TTL if self.near_ttl is None else self.near_ttl

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(near={self.near!r}, far={self.far!r}, near_ttl={self.near_ttl})"
        )

    @property
    def default_ttl(self) -> int:
        """``far``'s default TTL: the one that decides how long values live."""
        return self.far.default_ttl

    @default_ttl.setter
    def default_ttl(self, value: int) -> None:
        # Backend only promises to read default_ttl; every cacheorm backend's is settable.
        self.far.default_ttl = value  # type: ignore[misc]  # see above

    def _near_ttl(self, ttl: int | None) -> int:
        """The TTL of a near copy written alongside a far write with ``ttl``."""
        seconds = resolve_ttl(ttl, self.far.default_ttl)
        # Bounded by near_ttl (FILL_TTL when unset) like a read's copy: a copy of a
        # never-expiring record must still give way to other processes' writes.
        return _shorter(self._fill_ttl, seconds)

    def _fill_ttl_for(self, remaining: float) -> int | None:
        """The TTL of a near copy of a far entry with ``remaining`` seconds (0.0 = never).

        Whole seconds rounded down, so the copy expires no later than the far
        entry; ``None`` (do not copy) when less than a second is left, as a
        TTL of ``0`` would mean never.
        """
        if remaining == 0.0:
            return self._fill_ttl
        seconds = math.floor(remaining)
        return None if seconds < 1 else _shorter(self._fill_ttl, seconds)

    def _fills(
        self, keys: Sequence[bytes], found: Sequence[tuple[bytes, float] | None]
    ) -> dict[int, dict[bytes, bytes]]:
        """What to copy into ``near`` from far's answer: one mapping per near TTL."""
        by_ttl: dict[int, dict[bytes, bytes]] = {}
        for key, hit in zip(keys, found, strict=True):
            if hit is not None and (ttl := self._fill_ttl_for(hit[1])) is not None:
                by_ttl.setdefault(ttl, {})[key] = hit[0]
        return by_ttl

    def _follows(
        self, commands: Sequence[Command], answers: Sequence[object]
    ) -> tuple[list[base.Clear], dict[int, dict[bytes, bytes]], list[bytes], list[bytes]]:
        """How ``near`` follows far's batch results: clears (first), copies per TTL, drops,
        and every key touched."""
        clears: list[base.Clear] = []
        final = self._latest(commands, answers, clears)
        copies: dict[int, dict[bytes, bytes]] = {}
        drops: list[bytes] = []
        for key, copy in final.items():
            if copy is None:
                drops.append(key)
            else:
                copies.setdefault(copy[1], {})[key] = copy[0]
        return clears, copies, drops, list(final)

    def _latest(
        self, commands: Sequence[Command], answers: Sequence[object], clears: list[base.Clear]
    ) -> dict[bytes, tuple[bytes, int] | None]:
        """Each key's near copy (value, TTL) after far's batch results, or ``None`` to drop.

        A stored value is copied (unless its TTL was kept: its lifetime is
        unknown); anything else that touched a key (deletes, counters, ``gets``,
        failures) drops the near copy. The last command on a key decides. A
        :class:`~cacheorm.backends.base.Clear` is put in ``clears`` (to run on
        ``near`` before the copies) and drops the copies of earlier commands it covers.
        """
        final: dict[bytes, tuple[bytes, int] | None] = {}
        near_ttls: dict[int | None, int] = {}  # far TTL -> near TTL, computed once per batch
        for command, answer in zip(commands, answers, strict=True):
            match command:  # the common case first: each case tried costs about 0.05 µs
                case base.Set() | base.Add() | base.Replace() | base.Cas() if (
                    answer is True and not isinstance(command.ttl, Keep)
                ):
                    ttl = command.ttl
                    near_ttl = near_ttls.get(ttl)
                    if near_ttl is None:
                        near_ttl = near_ttls[ttl] = self._near_ttl(ttl)
                    final[command.key] = (command.value, near_ttl)
                case base.Get() | base.Has():
                    # Reads change nothing. (A get reaches far.batch only after a write
                    # of its key, whose own follow-up already copies or drops it.)
                    continue
                case (
                    base.Set()
                    | base.Add()
                    | base.Replace()
                    | base.Cas()
                    | base.Gets()
                    | base.Delete()
                    | base.DeleteIf()
                    | base.Incr()
                ):
                    final[command.key] = None  # failed, kept its TTL, or not a value: drop
                case base.Clear():
                    clears.append(command)
                    for key in final:
                        if base.in_scope(key, command.prefix, command.shape):
                            final[key] = None
                case _:
                    assert_never(command)
        return final


class TieredBackend(NearCopies):
    """Read through ``near`` to ``far``; write to both.

    Args:
        near: the fast, local cache (typically a ``MemoryBackend``).
        far: the shared cache and source of truth.
        near_ttl: the longest a value stays in ``near``, in seconds, bounding
            how stale a copy can get when other processes write ``far``. A
            copy never outlives the far entry, whatever this is. ``None``:
            :data:`FILL_TTL`. ``0``: no bound at all (only safe when no one
            else writes ``far``).

    Raises:
        ValidationError: an illegal ``near_ttl``.

    :meth:`close` closes both backends.
    """

    near: Backend
    far: Backend

    def __init__(self, near: Backend, far: Backend, near_ttl: int | None = None) -> None:
        self.near = near
        self.far = far
        self._set_near_ttl(near_ttl)
        # Writes through the tier bump the epoch while holding the lock; a read
        # copies far's answer into near only if no write happened since it asked.
        self._lock = threading.Lock()
        self._epoch = 0

    @contextlib.contextmanager
    def _changing(self) -> Iterator[None]:
        """Hold the tier lock around a write's near update and mark it in the epoch."""
        with self._lock:
            self._epoch += 1
            yield

    def _fill(
        self, keys: Sequence[bytes], found: Sequence[tuple[bytes, float] | None], seen: int
    ) -> None:
        """Copy what ``far`` answered into ``near``: one ``set_many`` per TTL.

        ``seen`` is the epoch read before asking ``far``. If a write through this
        tier changed ``near`` since, the answer may predate that write: copying
        it would bring back a deleted or older value, so nothing is copied.
        """
        by_ttl = self._fills(keys, found)
        if not by_ttl:
            return
        with self._lock:
            if self._epoch != seen:
                return
            for ttl, mapping in by_ttl.items():
                self.near.set_many(mapping, ttl)

    def _drop(self, *keys: bytes) -> None:
        """Invalidate near copies after a far failure, without hiding the far error."""
        try:
            with self._changing():
                self.near.delete_many(*keys)
        except CacheORMError:
            logger.warning(
                "could not invalidate near cache for %d key(s)", len(keys), exc_info=True
            )

    # -- reads ----------------------------------------------------------------

    def get(self, key: bytes) -> bytes | None:
        """``near``, else ``far`` (copying the value into ``near`` for as long as it lives)."""
        value = self.near.get(key)
        if value is not None:
            return value
        seen = self._epoch
        hit = self.far.get_with_ttl(key)
        if hit is None:
            return None
        self._fill((key,), (hit,), seen)
        return hit[0]

    def get_many(self, *keys: bytes) -> list[bytes | None]:
        """``near`` for every key, then one ``far.get_many_with_ttl`` for the misses."""
        found = self.near.get_many(*keys)
        missing = [i for i, value in enumerate(found) if value is None]
        if not missing:
            return found
        for i, hit in zip(missing, self._fetch([keys[i] for i in missing]), strict=True):
            found[i] = None if hit is None else hit[0]
        return found

    def _fetch(self, keys: Sequence[bytes]) -> list[tuple[bytes, float] | None]:
        """Read ``keys`` from ``far`` with their lifetimes and copy the hits into ``near``."""
        seen = self._epoch
        fetched = self.far.get_many_with_ttl(*keys)
        self._fill(keys, fetched, seen)
        return fetched

    def get_with_ttl(self, key: bytes) -> tuple[bytes, float] | None:
        """``far``'s value and remaining lifetime (a near copy's may be shorter); fills ``near``."""
        return self._fetch([key])[0]

    def get_many_with_ttl(self, *keys: bytes) -> list[tuple[bytes, float] | None]:
        """``far``'s values and lifetimes, in key order; fills ``near``."""
        return self._fetch(keys) if keys else []

    def has(self, key: bytes) -> bool:
        """Whether ``near`` or ``far`` holds the key."""
        return self.near.has(key) or self.far.has(key)

    def gets(self, key: bytes) -> tuple[bytes, CasToken] | None:
        """``far``'s value and token (a near copy has no token).

        The near copy is dropped: ``far.gets`` does not tell the entry's
        lifetime, so a refreshed copy could outlive it. The next read refills.
        """
        try:
            return self.far.gets(key)
        finally:
            self._drop(key)

    # -- writes ---------------------------------------------------------------

    def set(self, key: bytes, value: bytes, ttl: TTL = None) -> None:
        """Store in ``far``, then ``near``; a failed far write drops the near copy."""
        near_ttl = self._near_ttl(ttl)
        try:
            self.far.set(key, value, ttl)
        except CacheORMError:
            self._drop(key)
            raise
        with self._changing():
            self.near.set(key, value, near_ttl)

    def _conditional(self, stored: bool, key: bytes, value: bytes, ttl: int | Keep | None) -> bool:
        # After a KEEP_TTL cas the far entry's remaining lifetime is unknown: a
        # near copy could outlive it, so drop it and let the next read refill.
        with self._changing():
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
        with self._changing():
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
        with self._changing():
            self.near.set_many(
                {k: v for (k, v), ok in zip(pairs, stored, strict=True) if ok}, near_ttl
            )
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

    def server_for(self, key: bytes, reading: bool = False) -> str | None:
        """``far``'s server for ``key``, if ``far`` can tell (for the engine's fail-fast outages).

        ``None`` for a read (``reading``) that ``near`` holds a copy of: while
        ``far``'s server is down, miss-mode calls skip the tier for the other
        keys, and near copies are still served.
        """
        if reading and self.near.has(key):
            return None
        return _far_server(self.far, key)

    def clear_prefix(self, prefix: bytes, shape: re.Pattern[bytes] | None = None) -> int:
        """Clear ``far``, then ``near`` (even if ``far`` failed); return how many ``far`` held.

        Other processes' near tiers keep their copies until they expire (at most
        ``near_ttl`` seconds, :data:`FILL_TTL` when unset).
        """
        try:
            return self.far.clear_prefix(prefix, shape)
        finally:
            self._clear_near([base.Clear(prefix, shape)])

    def _clear_near(self, clears: Sequence[base.Clear]) -> None:
        """Run ``clears`` on ``near`` (marked in the epoch), without hiding a far error."""
        try:
            with self._changing():
                for clear in clears:
                    self.near.clear_prefix(clear.prefix, clear.shape)
        except CacheORMError:
            logger.warning("could not clear the near cache", exc_info=True)

    # -- batch ------------------------------------------------------------------

    def batch(self, commands: Sequence[Command]) -> list[object]:
        """Serve plain ``get``s through ``near`` where possible; send the rest to ``far``.

        A ``get`` is answered like :meth:`get_many` (``near``, then one
        ``far.get_many_with_ttl`` for the misses, copied into ``near``) only
        when no earlier command of the batch writes its key; it then reads
        the value from before the batch, as it would in order. Everything else
        goes to ``far`` in one ``far.batch``, in order; ``near`` is then
        updated command by command: stored values copied, anything else
        (deletes, counters, ``gets``, failures) dropped.
        """
        results: list[object] = [None] * len(commands)
        candidates, remote = _near_candidates(commands)
        near_values = (
            self.near.get_many(*[commands[i].key for i in candidates]) if candidates else []
        )
        missed = _serve_near(commands, candidates, near_values, results)
        if missed:
            try:
                _spread(missed, self._fetch(list(missed)), results)
            except CacheORMError as err:
                _spread(missed, err, results)
        if not remote:
            return results
        try:
            answers = self.far.batch([commands[i] for i in remote])
        except CacheORMError:
            self._drop(*{commands[i].key for i in remote})
            raise
        for i, answer in zip(remote, answers, strict=True):
            results[i] = answer
        self._follow([commands[i] for i in remote], answers)
        return results

    def _follow(self, commands: Sequence[Command], answers: Sequence[object]) -> None:
        """Bring ``near`` in line with far's results (see :meth:`NearCopies._latest`)."""
        clears, copies, drops, keys = self._follows(commands, answers)
        if clears:
            self._clear_near(clears)
        if not keys:
            return
        try:
            with self._changing():
                for ttl, mapping in copies.items():
                    self.near.set_many(mapping, ttl)
                if drops:
                    self.near.delete_many(*drops)
        except CacheORMError:
            self._drop(*keys)

    def ping(self) -> None:
        """Return when both tiers answer: ``near``, then ``far``; else ``BackendError``."""
        self.near.ping()
        self.far.ping()

    def close(self) -> None:
        """Close ``far``, then ``near`` (both, even if the first fails)."""
        try:
            self.far.close()
        finally:
            self.near.close()
