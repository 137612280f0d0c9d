"""Shared fixtures: every backend, fresh and empty, on throwaway servers.

The servers themselves (started on free loopback ports, stopped by PID) live in
``tests/servers.py``. Tests ask for ``backend`` to run once per backend kind.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

import cacheorm as co

if TYPE_CHECKING:
    from tests.servers import MemcachedServer, RedisCluster, RedisServer

pytest_plugins = ["tests.servers"]

BACKEND_KINDS = (
    "memory",
    "filesystem",
    "redis",
    "redis_cluster",
    "memcached",
    "memcached_multi",
    "tiered",
)

ASYNC_BACKEND_KINDS = (
    "amemory",
    "afilesystem",
    *(("atiered", "aredis", "aredis_cluster") if hasattr(co, "AsyncRedisBackend") else ()),
    *(("amemcached", "amemcached_multi") if hasattr(co, "AsyncMemcachedBackend") else ()),
)
"""Async backends, run by the sync suites through tests.async_facade.SyncFacade."""

ASYNC_SUITES = ("test_backend_conformance",)
"""Test modules whose ``backend`` also runs over ``ASYNC_BACKEND_KINDS``."""


AIO_DRIVER_KINDS = (
    "memory",
    *(("aredis",) if hasattr(co, "AsyncRedisBackend") else ()),
    *(("amemcached",) if hasattr(co, "AsyncMemcachedBackend") else ()),
)
"""The kinds a suite asking for ``driver`` runs through ``cacheorm.aio`` (a representative
subset: in-process, Redis, memcached), besides every kind through the sync functions."""


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Parametrise ``backend_kind``: every kind, and the async kinds too in ``ASYNC_SUITES``.

    A test that also asks for ``driver`` runs through ``co`` on every kind and
    through ``aio`` on ``AIO_DRIVER_KINDS``.
    """
    if "backend_kind" not in metafunc.fixturenames:
        return
    if "driver" in metafunc.fixturenames:
        pairs = [("co", kind) for kind in BACKEND_KINDS]
        pairs += [("aio", kind) for kind in AIO_DRIVER_KINDS]
        metafunc.parametrize(("driver", "backend_kind"), pairs, ids=[f"{d}-{k}" for d, k in pairs])
        return
    if any(
        m.name == "parametrize" and "backend_kind" in str(m.args[0])
        for m in metafunc.definition.iter_markers()
    ):
        return  # the test chose its kinds itself
    suite = metafunc.module.__name__.rpartition(".")[2]
    kinds = BACKEND_KINDS + ASYNC_BACKEND_KINDS if suite in ASYNC_SUITES else BACKEND_KINDS
    metafunc.parametrize("backend_kind", kinds)


def make_async_backend(kind: str, request: pytest.FixtureRequest, tmp_path: Path) -> co.Backend:
    """An empty async backend of ``kind`` behind a sync facade (its own event-loop thread).

    The backend is built on the facade's loop (a client may bind to the running loop).
    """
    from cacheorm.backends.atiered import InProcessAsync
    from tests.async_facade import SyncFacade

    def make() -> co.AsyncBackend:
        if kind == "amemory":
            return InProcessAsync(co.MemoryBackend())
        if kind == "afilesystem":
            return co.AsyncFileSystemBackend(tmp_path / "afs-cache")
        if kind == "aredis":
            return co.AsyncRedisBackend(url=redis_url)
        if kind == "atiered":
            return co.AsyncTieredBackend(co.MemoryBackend(), co.AsyncRedisBackend(url=redis_url))
        if kind == "aredis_cluster":
            return co.AsyncRedisBackend(url=f"redis+cluster://{cluster.host}:{cluster.ports[0]}")
        if kind in ("amemcached", "amemcached_multi"):
            return co.AsyncMemcachedBackend(servers=memcached)  # type: ignore[attr-defined,no-any-return,unused-ignore]  # helper C's, when present
        raise AssertionError(f"unknown backend kind {kind!r}")

    if kind in ("aredis", "atiered"):
        server: RedisServer = request.getfixturevalue("redis_server")
        server.flush()
        redis_url = server.url
    elif kind == "aredis_cluster":
        cluster: RedisCluster = request.getfixturevalue("redis_cluster")
        cluster.flush()
    elif kind in ("amemcached", "amemcached_multi"):
        nodes: list[MemcachedServer] = request.getfixturevalue("memcached_servers")
        chosen = nodes[:1] if kind == "amemcached" else nodes[1:3]
        for node in chosen:
            node.flush()
        memcached = [node.address for node in chosen]
    return SyncFacade(make)


def make_backend(kind: str, request: pytest.FixtureRequest, tmp_path: Path) -> co.Backend:
    """Build an empty backend of ``kind``; servers are flushed first (we started them)."""
    if kind.startswith("a"):
        return make_async_backend(kind, request, tmp_path)
    if kind == "memory":
        return co.MemoryBackend()
    if kind == "filesystem":
        return co.FileSystemBackend(tmp_path / "fs-cache")
    if kind in ("redis", "tiered"):
        server: RedisServer = request.getfixturevalue("redis_server")
        server.flush()
        far = co.RedisBackend(url=server.url)
        return far if kind == "redis" else co.TieredBackend(co.MemoryBackend(), far)
    if kind == "redis_cluster":
        cluster: RedisCluster = request.getfixturevalue("redis_cluster")
        cluster.flush()
        client = cluster.client()
        request.addfinalizer(client.close)  # a passed-in client is its owner's to close
        return co.RedisBackend(client=client)
    if kind in ("memcached", "memcached_multi"):
        nodes: list[MemcachedServer] = request.getfixturevalue("memcached_servers")
        chosen = nodes[:1] if kind == "memcached" else nodes[1:3]
        for node in chosen:
            node.flush()
        return co.MemcachedBackend(servers=[node.address for node in chosen])
    raise AssertionError(f"unknown backend kind {kind!r}")


@pytest.fixture(autouse=True)
def _no_outage_carried_over(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test starts with no cache server known to be down.

    ``cacheorm.engine.Outage`` is process-wide, and a throwaway server's port may
    be reused by a later test's server, which miss-mode calls would then skip.
    """
    monkeypatch.setattr(co.engine.Outage, "_down", {})
    monkeypatch.setattr(co.engine.Outage, "_whole", {})


@pytest.fixture
def driver(request: pytest.FixtureRequest) -> str:
    """``"co"`` or ``"aio"``: the functions a suite's calls go through (pytest_generate_tests)."""
    kind: str = getattr(request, "param", "co")
    return kind


@pytest.fixture
def backend_kind(request: pytest.FixtureRequest) -> str:
    """The kind of the ``backend`` fixture (parametrised by pytest_generate_tests)."""
    kind: str = request.param
    return kind


@pytest.fixture
def backend(
    backend_kind: str, request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[co.Backend]:
    """A fresh, empty backend; parametrised over every kind in ``BACKEND_KINDS``."""
    made = make_backend(backend_kind, request, tmp_path)
    try:
        yield made
    finally:
        made.close()
