"""Sync facades over the async path, so the existing suites run over it unchanged.

* :class:`LoopThread`: a private event loop in a daemon thread; ``run(coro)``
  runs a coroutine on it and waits for the result (from any thread).
* :class:`SyncFacade`: a sync :class:`cacheorm.Backend` whose every method runs
  the wrapped :class:`cacheorm.AsyncBackend`'s coroutine on its loop thread: the
  backend conformance suite runs over every async backend through it.
* :class:`AioDriver`: stands in for the ``cacheorm`` module in a test module,
  its record functions (``co.get``...) running ``cacheorm.aio``'s twins on the
  loop thread, and ``co.Repo`` given a facade unwrapping it to the async
  backend: the record suite runs over the async driver through it.
"""

from __future__ import annotations

import asyncio
import re
import threading
from collections.abc import Callable, Coroutine, Mapping, Sequence
from typing import TypeVar

import cacheorm as co
from cacheorm import aio
from cacheorm.backends.base import KEEP_TTL, TTL, AsyncBackend, CasToken, Command, Keep

T = TypeVar("T")

RESULT_TIMEOUT = 60.0
"""Seconds a facade call waits for its coroutine: a hung call fails the test, never hangs it."""


class LoopThread:
    """A private event loop running in its own daemon thread."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(
            target=self.loop.run_forever, name="cacheorm-test-loop", daemon=True
        )
        self.thread.start()

    def run(self, coro: Coroutine[object, object, T]) -> T:
        """Run ``coro`` on the loop and return its result (or raise its error)."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(RESULT_TIMEOUT)

    def close(self) -> None:
        """Stop the loop, join its thread and close it."""
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


async def _build(make: Callable[[], T]) -> T:
    return make()  # on the loop: a client may bind to the running loop when made


class SyncFacade:
    """A sync :class:`cacheorm.Backend` running an async backend on a :class:`LoopThread`.

    Args:
        make: builds the async backend; called on the loop thread.
    """

    def __init__(self, make: Callable[[], AsyncBackend]) -> None:
        self.runner = LoopThread()
        try:
            self.inner = self.runner.run(_build(make))
        except BaseException:
            self.runner.close()
            raise

    def __repr__(self) -> str:
        return f"SyncFacade({self.inner!r})"

    @property
    def default_ttl(self) -> int:
        return self.inner.default_ttl

    @default_ttl.setter
    def default_ttl(self, value: int) -> None:
        self.inner.default_ttl = value  # type: ignore[misc]  # every async backend's is settable

    def get(self, key: bytes) -> bytes | None:
        return self.runner.run(self.inner.get(key))

    def get_with_ttl(self, key: bytes) -> tuple[bytes, float] | None:
        return self.runner.run(self.inner.get_with_ttl(key))

    def get_many_with_ttl(self, *keys: bytes) -> list[tuple[bytes, float] | None]:
        return self.runner.run(self.inner.get_many_with_ttl(*keys))

    def set(self, key: bytes, value: bytes, ttl: TTL = None) -> None:
        self.runner.run(self.inner.set(key, value, ttl))

    def add(self, key: bytes, value: bytes, ttl: TTL = None) -> bool:
        return self.runner.run(self.inner.add(key, value, ttl))

    def replace(self, key: bytes, value: bytes, ttl: TTL = None) -> bool:
        return self.runner.run(self.inner.replace(key, value, ttl))

    def delete(self, key: bytes) -> bool:
        return self.runner.run(self.inner.delete(key))

    def has(self, key: bytes) -> bool:
        return self.runner.run(self.inner.has(key))

    def get_many(self, *keys: bytes) -> list[bytes | None]:
        return self.runner.run(self.inner.get_many(*keys))

    def set_many(self, mapping: Mapping[bytes, bytes], ttl: TTL = None) -> None:
        self.runner.run(self.inner.set_many(mapping, ttl))

    def replace_many(self, mapping: Mapping[bytes, bytes], ttl: TTL = None) -> list[bool]:
        return self.runner.run(self.inner.replace_many(mapping, ttl))

    def delete_many(self, *keys: bytes) -> int:
        return self.runner.run(self.inner.delete_many(*keys))

    def incr(self, key: bytes, delta: int = 1) -> int:
        return self.runner.run(self.inner.incr(key, delta))

    def decr(self, key: bytes, delta: int = 1) -> int:
        return self.runner.run(self.inner.decr(key, delta))

    def touch(self, key: bytes, ttl: TTL = None) -> bool:
        return self.runner.run(self.inner.touch(key, ttl))

    def gets(self, key: bytes) -> tuple[bytes, CasToken] | None:
        return self.runner.run(self.inner.gets(key))

    def cas(
        self, key: bytes, value: bytes, token: CasToken, ttl: int | Keep | None = KEEP_TTL
    ) -> bool:
        return self.runner.run(self.inner.cas(key, value, token, ttl))

    def delete_if(self, key: bytes, token: CasToken) -> bool:
        return self.runner.run(self.inner.delete_if(key, token))

    def clear_prefix(self, prefix: bytes, shape: re.Pattern[bytes] | None = None) -> int:
        return self.runner.run(self.inner.clear_prefix(prefix, shape))

    def batch(self, commands: Sequence[Command]) -> list[object]:
        return self.runner.run(self.inner.batch(commands))

    def ping(self) -> None:
        self.runner.run(self.inner.ping())

    def close(self) -> None:
        try:
            self.runner.run(self.inner.aclose())
        finally:
            self.runner.close()


class AioDriver:
    """A stand-in for the ``cacheorm`` module whose record functions go through ``aio``.

    ``co.insert(repo, ...)`` runs ``await aio.insert(repo, ...)`` on ``runner``;
    ``co.execute`` runs ``aio.execute``. ``co.Repo(schema, backend=facade)``
    builds the repo over the facade's async backend. Everything else is
    ``cacheorm``'s own.
    """

    def __init__(self, runner: LoopThread) -> None:
        self._runner = runner

    def __getattr__(self, name: str) -> object:
        if name in aio.__all__:
            twin = getattr(aio, name)

            def run(*args: object, **kwargs: object) -> object:
                return self._runner.run(twin(*args, **kwargs))

            return run
        return getattr(co, name)

    def Repo(
        self, schema: object, backend: object = None, *args: object, **kwargs: object
    ) -> object:  # stands in for co.Repo
        if isinstance(backend, SyncFacade):
            backend = backend.inner
        return co.Repo(schema, backend, *args, **kwargs)  # type: ignore[arg-type]  # passed through
