"""The async form of :class:`~cacheorm.TieredBackend`: a ``near`` cache over an async ``far``.

Same semantics as the sync tier (read its module docs): reads try ``near``
first and fill it from ``far`` with the far entry's remaining lifetime (capped
by ``near_ttl``), writes go to ``far`` first and then ``near``, conditional
operations are decided by ``far`` alone; the decisions are the sync tier's own
code (:class:`~cacheorm.backends.tiered.NearCopies`). ``near`` is a
:class:`~cacheorm.MemoryBackend` (called directly: it does no I/O) or any
:class:`~cacheorm.AsyncBackend`; ``far`` is an :class:`~cacheorm.AsyncBackend`.

A read racing a write never copies the older value into ``near`` after the
write: writes bump an epoch and a fill copies only if the epoch did not move.
With an async ``near``, the epoch check and the ``near`` update it guards are
held together by an :class:`asyncio.Lock`; a direct ``near`` needs none, as
nothing awaits between them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import cast

from cacheorm.backends.afilesystem import SyncWrapper
from cacheorm.backends.base import (
    KEEP_TTL,
    TTL,
    AsyncBackend,
    Backend,
    CasToken,
    Clear,
    Command,
    Keep,
)
from cacheorm.backends.tiered import (
    NearCopies,
    _far_server,
    _near_candidates,
    _serve_near,
    _spread,
)
from cacheorm.errors import CacheORMError
from cacheorm.repo import backend_driver

__all__ = ["AsyncTieredBackend", "InProcessAsync"]

logger = logging.getLogger(__name__)


class InProcessAsync(SyncWrapper):
    """An in-process sync store (a :class:`~cacheorm.MemoryBackend`) as an AsyncBackend.

    Each coroutine calls the store's own method directly: it does no I/O, so
    it never blocks the loop for long and needs no thread.
    """

    async def get(self, key: bytes) -> bytes | None:
        """See :meth:`cacheorm.Backend.get`."""
        return self.backend.get(key)

    async def get_with_ttl(self, key: bytes) -> tuple[bytes, float] | None:
        """See :meth:`cacheorm.Backend.get_with_ttl`."""
        return self.backend.get_with_ttl(key)

    async def get_many_with_ttl(self, *keys: bytes) -> list[tuple[bytes, float] | None]:
        """See :meth:`cacheorm.Backend.get_many_with_ttl`."""
        return self.backend.get_many_with_ttl(*keys)

    async def set(self, key: bytes, value: bytes, ttl: TTL = None) -> None:
        """See :meth:`cacheorm.Backend.set`."""
        self.backend.set(key, value, ttl)

    async def add(self, key: bytes, value: bytes, ttl: TTL = None) -> bool:
        """See :meth:`cacheorm.Backend.add`."""
        return self.backend.add(key, value, ttl)

    async def replace(self, key: bytes, value: bytes, ttl: TTL = None) -> bool:
        """See :meth:`cacheorm.Backend.replace`."""
        return self.backend.replace(key, value, ttl)

    async def delete(self, key: bytes) -> bool:
        """See :meth:`cacheorm.Backend.delete`."""
        return self.backend.delete(key)

    async def has(self, key: bytes) -> bool:
        """See :meth:`cacheorm.Backend.has`."""
        return self.backend.has(key)

    async def get_many(self, *keys: bytes) -> list[bytes | None]:
        """See :meth:`cacheorm.Backend.get_many`."""
        return self.backend.get_many(*keys)

    async def set_many(self, mapping: Mapping[bytes, bytes], ttl: TTL = None) -> None:
        """See :meth:`cacheorm.Backend.set_many`."""
        self.backend.set_many(mapping, ttl)

    async def replace_many(self, mapping: Mapping[bytes, bytes], ttl: TTL = None) -> list[bool]:
        """See :meth:`cacheorm.Backend.replace_many`."""
        return self.backend.replace_many(mapping, ttl)

    async def delete_many(self, *keys: bytes) -> int:
        """See :meth:`cacheorm.Backend.delete_many`."""
        return self.backend.delete_many(*keys)

    async def incr(self, key: bytes, delta: int = 1) -> int:
        """See :meth:`cacheorm.Backend.incr`."""
        return self.backend.incr(key, delta)

    async def decr(self, key: bytes, delta: int = 1) -> int:
        """See :meth:`cacheorm.Backend.decr`."""
        return self.backend.decr(key, delta)

    async def touch(self, key: bytes, ttl: TTL = None) -> bool:
        """See :meth:`cacheorm.Backend.touch`."""
        return self.backend.touch(key, ttl)

    async def gets(self, key: bytes) -> tuple[bytes, CasToken] | None:
        """See :meth:`cacheorm.Backend.gets`."""
        return self.backend.gets(key)

    async def cas(
        self, key: bytes, value: bytes, token: CasToken, ttl: int | Keep | None = KEEP_TTL
    ) -> bool:
        """See :meth:`cacheorm.Backend.cas`."""
        return self.backend.cas(key, value, token, ttl)

    async def delete_if(self, key: bytes, token: CasToken) -> bool:
        """See :meth:`cacheorm.Backend.delete_if`."""
        return self.backend.delete_if(key, token)

    async def clear_prefix(self, prefix: bytes, shape: re.Pattern[bytes] | None = None) -> int:
        """See :meth:`cacheorm.Backend.clear_prefix`."""
        return self.backend.clear_prefix(prefix, shape)

    async def batch(self, commands: Sequence[Command]) -> list[object]:
        """See :meth:`cacheorm.Backend.batch`."""
        return self.backend.batch(commands)

    async def ping(self) -> None:
        """See :meth:`cacheorm.Backend.ping`: the wrapped store's own check."""
        self.backend.ping()

    async def aclose(self) -> None:
        """Close the store."""
        self.backend.close()


class AsyncTieredBackend(NearCopies):
    """Read through ``near`` to ``far``; write to both (see :class:`~cacheorm.TieredBackend`).

    Args:
        near: the fast, local cache: a ``MemoryBackend`` or an async backend.
        far: the shared cache and source of truth, an async backend.
        near_ttl: as for :class:`~cacheorm.TieredBackend`.

    Raises:
        ValidationError: an illegal ``near_ttl``.
        TypeError: ``far`` is not async, or ``near`` blocks on I/O.

    :meth:`aclose` closes both backends.
    """

    near: Backend | AsyncBackend
    far: AsyncBackend

    def __init__(
        self, near: Backend | AsyncBackend, far: AsyncBackend, near_ttl: int | None = None
    ) -> None:
        if backend_driver(far) != "async":
            raise TypeError(f"far must be an async backend, got {type(far).__name__}")
        near_driver = backend_driver(near)
        if near_driver == "sync":
            raise TypeError(
                f"near must be a MemoryBackend or an async backend, got {type(near).__name__}"
            )
        self.near = near
        self.far = far
        self._near: AsyncBackend = (
            InProcessAsync(near) if near_driver == "both" else near  # type: ignore[arg-type,assignment]  # by its driver
        )
        # A lock only where near is awaited between the epoch check and the update.
        self._lock: asyncio.Lock | None = None if near_driver == "both" else asyncio.Lock()
        self._set_near_ttl(near_ttl)
        self._epoch = 0

    @contextlib.asynccontextmanager
    async def _guard(self) -> AsyncIterator[None]:
        """Hold the epoch check (or bump) and the near update it guards together."""
        if self._lock is None:
            yield
            return
        async with self._lock:
            yield

    @contextlib.asynccontextmanager
    async def _changing(self) -> AsyncIterator[None]:
        """Around a write's near update: mark it in the epoch."""
        async with self._guard():
            self._epoch += 1
            yield

    async def _fill(
        self, keys: Sequence[bytes], found: Sequence[tuple[bytes, float] | None], seen: int
    ) -> None:
        """Copy what ``far`` answered into ``near`` unless a write came in between."""
        by_ttl = self._fills(keys, found)
        if not by_ttl:
            return
        async with self._guard():
            if self._epoch != seen:
                return
            for ttl, mapping in by_ttl.items():
                await self._near.set_many(mapping, ttl)

    async def _drop(self, *keys: bytes) -> None:
        """Invalidate near copies after a far failure, without hiding the far error."""
        try:
            async with self._changing():
                await self._near.delete_many(*keys)
        except CacheORMError:
            logger.warning(
                "could not invalidate near cache for %d key(s)", len(keys), exc_info=True
            )

    # -- reads ----------------------------------------------------------------

    async def get(self, key: bytes) -> bytes | None:
        """``near``, else ``far`` (copying the value into ``near`` for as long as it lives)."""
        value = await self._near.get(key)
        if value is not None:
            return value
        hit = (await self._fetch([key]))[0]
        return None if hit is None else hit[0]

    async def get_many(self, *keys: bytes) -> list[bytes | None]:
        """``near`` for every key, then one ``far.get_many_with_ttl`` for the misses."""
        found = await self._near.get_many(*keys)
        missing = [i for i, value in enumerate(found) if value is None]
        if not missing:
            return found
        fetched = await self._fetch([keys[i] for i in missing])
        for i, hit in zip(missing, fetched, strict=True):
            found[i] = None if hit is None else hit[0]
        return found

    async def _fetch(self, keys: Sequence[bytes]) -> list[tuple[bytes, float] | None]:
        """Read ``keys`` from ``far`` with their lifetimes and copy the hits into ``near``."""
        seen = self._epoch
        fetched = await self.far.get_many_with_ttl(*keys)
        await self._fill(keys, fetched, seen)
        return fetched

    async def get_with_ttl(self, key: bytes) -> tuple[bytes, float] | None:
        """``far``'s value and remaining lifetime; fills ``near``."""
        return (await self._fetch([key]))[0]

    async def get_many_with_ttl(self, *keys: bytes) -> list[tuple[bytes, float] | None]:
        """``far``'s values and lifetimes, in key order; fills ``near``."""
        return await self._fetch(keys) if keys else []

    async def has(self, key: bytes) -> bool:
        """Whether ``near`` or ``far`` holds the key."""
        return await self._near.has(key) or await self.far.has(key)

    async def gets(self, key: bytes) -> tuple[bytes, CasToken] | None:
        """``far``'s value and token; the near copy is dropped (see TieredBackend.gets)."""
        try:
            return await self.far.gets(key)
        finally:
            await self._drop(key)

    # -- writes ---------------------------------------------------------------

    async def set(self, key: bytes, value: bytes, ttl: TTL = None) -> None:
        """Store in ``far``, then ``near``; a failed far write drops the near copy."""
        near_ttl = self._near_ttl(ttl)
        try:
            await self.far.set(key, value, ttl)
        except CacheORMError:
            await self._drop(key)
            raise
        async with self._changing():
            await self._near.set(key, value, near_ttl)

    async def _conditional(
        self, stored: bool, key: bytes, value: bytes, ttl: int | Keep | None
    ) -> bool:
        async with self._changing():
            if stored and not isinstance(ttl, Keep):
                await self._near.set(key, value, self._near_ttl(ttl))
            else:
                await self._near.delete(key)
        return stored

    async def add(self, key: bytes, value: bytes, ttl: TTL = None) -> bool:
        """``far.add`` decides; ``near`` then copies the value or forgets the key."""
        try:
            stored = await self.far.add(key, value, ttl)
        except CacheORMError:
            await self._drop(key)
            raise
        return await self._conditional(stored, key, value, ttl)

    async def replace(self, key: bytes, value: bytes, ttl: TTL = None) -> bool:
        """``far.replace`` decides; ``near`` then copies the value or forgets the key."""
        try:
            stored = await self.far.replace(key, value, ttl)
        except CacheORMError:
            await self._drop(key)
            raise
        return await self._conditional(stored, key, value, ttl)

    async def cas(
        self, key: bytes, value: bytes, token: CasToken, ttl: int | Keep | None = KEEP_TTL
    ) -> bool:
        """``far.cas`` decides; ``near`` then copies the value or forgets the key."""
        try:
            stored = await self.far.cas(key, value, token, ttl)
        except CacheORMError:
            await self._drop(key)
            raise
        return await self._conditional(stored, key, value, ttl)

    async def set_many(self, mapping: Mapping[bytes, bytes], ttl: TTL = None) -> None:
        """Store every pair in ``far``, then ``near``."""
        near_ttl = self._near_ttl(ttl)
        try:
            await self.far.set_many(mapping, ttl)
        except CacheORMError:
            await self._drop(*mapping)
            raise
        async with self._changing():
            await self._near.set_many(mapping, near_ttl)

    async def replace_many(self, mapping: Mapping[bytes, bytes], ttl: TTL = None) -> list[bool]:
        """``far`` decides each key; ``near`` copies the stored ones and forgets the rest."""
        near_ttl = self._near_ttl(ttl)
        try:
            stored = await self.far.replace_many(mapping, ttl)
        except CacheORMError:
            await self._drop(*mapping)
            raise
        pairs = list(mapping.items())
        async with self._changing():
            await self._near.set_many(
                {k: v for (k, v), ok in zip(pairs, stored, strict=True) if ok}, near_ttl
            )
            await self._near.delete_many(
                *[k for (k, _), ok in zip(pairs, stored, strict=True) if not ok]
            )
        return stored

    # -- invalidating operations ----------------------------------------------

    async def delete(self, key: bytes) -> bool:
        """Delete from ``far`` and ``near``; return whether ``far`` held the key."""
        try:
            return await self.far.delete(key)
        finally:
            await self._drop(key)

    async def delete_many(self, *keys: bytes) -> int:
        """Delete from ``far`` and ``near``; return how many ``far`` held."""
        try:
            return await self.far.delete_many(*keys)
        finally:
            await self._drop(*keys)

    async def delete_if(self, key: bytes, token: CasToken) -> bool:
        """``far.delete_if`` decides; the near copy is dropped either way."""
        try:
            return await self.far.delete_if(key, token)
        finally:
            await self._drop(key)

    async def incr(self, key: bytes, delta: int = 1) -> int:
        """``far.incr``; the near copy is dropped (the next read refills it)."""
        try:
            return await self.far.incr(key, delta)
        finally:
            await self._drop(key)

    async def decr(self, key: bytes, delta: int = 1) -> int:
        """``far.decr``; the near copy is dropped (the next read refills it)."""
        try:
            return await self.far.decr(key, delta)
        finally:
            await self._drop(key)

    async def touch(self, key: bytes, ttl: TTL = None) -> bool:
        """``far.touch``; the near copy is dropped, as it may now outlive ``far``."""
        try:
            return await self.far.touch(key, ttl)
        finally:
            await self._drop(key)

    def server_for(self, key: bytes, reading: bool = False) -> str | None:
        """As :meth:`cacheorm.TieredBackend.server_for` (an async ``near`` is not asked)."""
        if reading and self._lock is None and cast("Backend", self.near).has(key):
            return None  # an in-process near holds a copy: served even while far is down
        return _far_server(self.far, key)

    async def clear_prefix(self, prefix: bytes, shape: re.Pattern[bytes] | None = None) -> int:
        """As :meth:`cacheorm.TieredBackend.clear_prefix`: ``far``, then ``near``."""
        try:
            return await self.far.clear_prefix(prefix, shape)
        finally:
            await self._clear_near([Clear(prefix, shape)])

    async def _clear_near(self, clears: Sequence[Clear]) -> None:
        """Run ``clears`` on ``near`` (marked in the epoch), without hiding a far error."""
        try:
            async with self._changing():
                for clear in clears:
                    await self._near.clear_prefix(clear.prefix, clear.shape)
        except CacheORMError:
            logger.warning("could not clear the near cache", exc_info=True)

    # -- batch ------------------------------------------------------------------

    async def batch(self, commands: Sequence[Command]) -> list[object]:
        """As :meth:`cacheorm.TieredBackend.batch`: plain ``get``s through ``near``, the rest
        to ``far`` in one ``far.batch``, then ``near`` brought in line."""
        results: list[object] = [None] * len(commands)
        candidates, remote = _near_candidates(commands)
        near_values = (
            await self._near.get_many(*[commands[i].key for i in candidates]) if candidates else []
        )
        missed = _serve_near(commands, candidates, near_values, results)
        if missed:
            try:
                _spread(missed, await self._fetch(list(missed)), results)
            except CacheORMError as err:
                _spread(missed, err, results)
        if not remote:
            return results
        try:
            answers = await self.far.batch([commands[i] for i in remote])
        except CacheORMError:
            await self._drop(*{commands[i].key for i in remote})
            raise
        for i, answer in zip(remote, answers, strict=True):
            results[i] = answer
        await self._follow([commands[i] for i in remote], answers)
        return results

    async def _follow(self, commands: Sequence[Command], answers: Sequence[object]) -> None:
        """Bring ``near`` in line with far's results (see :meth:`NearCopies._latest`)."""
        clears, copies, drops, keys = self._follows(commands, answers)
        if clears:
            await self._clear_near(clears)
        if not keys:
            return
        try:
            async with self._changing():
                for ttl, mapping in copies.items():
                    await self._near.set_many(mapping, ttl)
                if drops:
                    await self._near.delete_many(*drops)
        except CacheORMError:
            await self._drop(*keys)

    async def ping(self) -> None:
        """Return when both tiers answer: ``near``, then ``far``; else ``BackendError``."""
        await self._near.ping()
        await self.far.ping()

    async def aclose(self) -> None:
        """Close ``far``, then ``near`` (both, even if the first fails)."""
        try:
            await self.far.aclose()
        finally:
            await self._near.aclose()
