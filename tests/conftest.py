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


def make_backend(kind: str, request: pytest.FixtureRequest, tmp_path: Path) -> co.Backend:
    """Build an empty backend of ``kind``; servers are flushed first (we started them)."""
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


@pytest.fixture(params=BACKEND_KINDS)
def backend_kind(request: pytest.FixtureRequest) -> str:
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
