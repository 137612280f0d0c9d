"""Async forms of the in-process stores: a sync backend's calls moved off the event loop.

:class:`ThreadedBackend` runs each call of a sync :class:`~cacheorm.Backend`
in one of its own worker threads (:data:`THREADS`), so the event loop keeps
running while the call blocks on file I/O. :class:`AsyncFileSystemBackend` is
that over a :class:`~cacheorm.FileSystemBackend`: the same directory layout,
files, TTLs and CAS tokens, so sync and async processes share one directory.

A call cancelled while its thread runs waits for the thread to finish the
call, then raises ``CancelledError``: a write lands whole or not at all (every
write is one :func:`os.replace`), and it has landed before the caller's cleanup
runs (a ``get_or_load`` lock taken by a cancelled call is released, not taken
after its release).
"""

from __future__ import annotations

import asyncio
import os
import re
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import TypeVar

from cacheorm.backends.base import KEEP_TTL, TTL, Backend, CasToken, Command, Keep
from cacheorm.backends.filesystem import FileSystemBackend

__all__ = ["AsyncFileSystemBackend", "ThreadedBackend"]

T = TypeVar("T")

THREADS = 2
"""Worker threads per backend. Few on purpose: the calls hold the GIL for their
Python part, and every extra thread contending for it lengthens the event
loop's waits (6 threads let a 5 ms ticker stall 50+ ms under 1,000 calls); the
file operations serialise on the directory lock anyway."""


class SyncWrapper:
    """The part every async wrapper of a sync ``backend`` shares: its repr and default TTL.

    Subclasses (:class:`ThreadedBackend`,
    :class:`~cacheorm.backends.atiered.InProcessAsync`) add the async calls.
    """

    def __init__(self, backend: Backend) -> None:
        self.backend = backend

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.backend!r})"

    @property
    def default_ttl(self) -> int:
        """The wrapped backend's default TTL."""
        return self.backend.default_ttl

    @default_ttl.setter
    def default_ttl(self, value: int) -> None:
        # Backend only promises to read default_ttl; every cacheorm backend's is settable.
        self.backend.default_ttl = value  # type: ignore[misc]  # see above


class ThreadedBackend(SyncWrapper):
    """An :class:`~cacheorm.AsyncBackend` running a sync backend's calls in worker threads.

    Args:
        backend: the sync backend; it must be thread-safe (every cacheorm
            backend is). Each call takes a thread of the loop's default executor.

    :meth:`aclose` closes ``backend``.
    """

    def __init__(self, backend: Backend, *, threads: int = THREADS) -> None:
        super().__init__(backend)
        self._threads = threads
        self._pool: ThreadPoolExecutor | None = None

    async def _finished(self, fn: Callable[..., T], /, *args: object) -> T:
        """``fn(*args)`` in a worker thread, finished before a cancellation goes on."""
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self._threads, thread_name_prefix="cacheorm")
        call = asyncio.get_running_loop().run_in_executor(self._pool, partial(fn, *args))
        try:
            return await asyncio.shield(call)
        except asyncio.CancelledError:
            await asyncio.wait([call])
            raise

    async def get(self, key: bytes) -> bytes | None:
        """See :meth:`cacheorm.Backend.get`."""
        return await self._finished(self.backend.get, key)

    async def get_with_ttl(self, key: bytes) -> tuple[bytes, float] | None:
        """See :meth:`cacheorm.Backend.get_with_ttl`."""
        return await self._finished(self.backend.get_with_ttl, key)

    async def get_many_with_ttl(self, *keys: bytes) -> list[tuple[bytes, float] | None]:
        """See :meth:`cacheorm.Backend.get_many_with_ttl`."""
        return await self._finished(self.backend.get_many_with_ttl, *keys)

    async def set(self, key: bytes, value: bytes, ttl: TTL = None) -> None:
        """See :meth:`cacheorm.Backend.set`."""
        await self._finished(self.backend.set, key, value, ttl)

    async def add(self, key: bytes, value: bytes, ttl: TTL = None) -> bool:
        """See :meth:`cacheorm.Backend.add`."""
        return await self._finished(self.backend.add, key, value, ttl)

    async def replace(self, key: bytes, value: bytes, ttl: TTL = None) -> bool:
        """See :meth:`cacheorm.Backend.replace`."""
        return await self._finished(self.backend.replace, key, value, ttl)

    async def delete(self, key: bytes) -> bool:
        """See :meth:`cacheorm.Backend.delete`."""
        return await self._finished(self.backend.delete, key)

    async def has(self, key: bytes) -> bool:
        """See :meth:`cacheorm.Backend.has`."""
        return await self._finished(self.backend.has, key)

    async def get_many(self, *keys: bytes) -> list[bytes | None]:
        """See :meth:`cacheorm.Backend.get_many`."""
        return await self._finished(self.backend.get_many, *keys)

    async def set_many(self, mapping: Mapping[bytes, bytes], ttl: TTL = None) -> None:
        """See :meth:`cacheorm.Backend.set_many`."""
        await self._finished(self.backend.set_many, mapping, ttl)

    async def replace_many(self, mapping: Mapping[bytes, bytes], ttl: TTL = None) -> list[bool]:
        """See :meth:`cacheorm.Backend.replace_many`."""
        return await self._finished(self.backend.replace_many, mapping, ttl)

    async def delete_many(self, *keys: bytes) -> int:
        """See :meth:`cacheorm.Backend.delete_many`."""
        return await self._finished(self.backend.delete_many, *keys)

    async def incr(self, key: bytes, delta: int = 1) -> int:
        """See :meth:`cacheorm.Backend.incr`."""
        return await self._finished(self.backend.incr, key, delta)

    async def decr(self, key: bytes, delta: int = 1) -> int:
        """See :meth:`cacheorm.Backend.decr`."""
        return await self._finished(self.backend.decr, key, delta)

    async def touch(self, key: bytes, ttl: TTL = None) -> bool:
        """See :meth:`cacheorm.Backend.touch`."""
        return await self._finished(self.backend.touch, key, ttl)

    async def gets(self, key: bytes) -> tuple[bytes, CasToken] | None:
        """See :meth:`cacheorm.Backend.gets`."""
        return await self._finished(self.backend.gets, key)

    async def cas(
        self, key: bytes, value: bytes, token: CasToken, ttl: int | Keep | None = KEEP_TTL
    ) -> bool:
        """See :meth:`cacheorm.Backend.cas`."""
        return await self._finished(self.backend.cas, key, value, token, ttl)

    async def delete_if(self, key: bytes, token: CasToken) -> bool:
        """See :meth:`cacheorm.Backend.delete_if`."""
        return await self._finished(self.backend.delete_if, key, token)

    async def clear_prefix(self, prefix: bytes, shape: re.Pattern[bytes] | None = None) -> int:
        """See :meth:`cacheorm.Backend.clear_prefix`: the whole walk in one thread hop."""
        return await self._finished(self.backend.clear_prefix, prefix, shape)

    async def batch(self, commands: Sequence[Command]) -> list[object]:
        """See :meth:`cacheorm.Backend.batch`: the whole batch in one thread hop."""
        return await self._finished(self.backend.batch, commands)

    async def ping(self) -> None:
        """See :meth:`cacheorm.Backend.ping`: the wrapped backend's check, in a worker thread."""
        await self._finished(self.backend.ping)

    async def aclose(self) -> None:
        """Close the wrapped backend and stop the worker threads."""
        await self._finished(self.backend.close)
        if self._pool is not None:
            self._pool.shutdown(wait=False)


class AsyncFileSystemBackend(ThreadedBackend):
    """:class:`~cacheorm.FileSystemBackend` for :mod:`cacheorm.aio`: file I/O in worker threads.

    Takes the parameters of :class:`~cacheorm.FileSystemBackend` and shares its
    directory format, so sync and async processes can use one directory.

    Example:
        >>> import asyncio, tempfile
        >>> async def demo(directory: str) -> bytes | None:
        ...     backend = AsyncFileSystemBackend(directory)
        ...     await backend.set(b"k", b"v")
        ...     return await backend.get(b"k")
        >>> with tempfile.TemporaryDirectory() as directory:
        ...     asyncio.run(demo(directory))
        b'v'
    """

    backend: FileSystemBackend

    def __init__(
        self,
        directory: str | os.PathLike[str],
        max_items: int | None = 10_000,
        default_ttl: int = 0,
        clock: Callable[[], float] = time.time,
        *,
        durable: bool = False,
    ) -> None:
        super().__init__(
            FileSystemBackend(directory, max_items, default_ttl, clock, durable=durable)
        )
