"""Worker functions for the multi-process tests (importable by ``spawn`` children)."""

from __future__ import annotations

from pathlib import Path

import cacheorm as co
from tests.records import COUNTER


def backend_from_spec(spec: tuple[str, str]) -> co.Backend:
    """Rebuild a backend in a child process from ``(kind, address)``."""
    kind, where = spec
    if kind == "redis":
        return co.RedisBackend(url=where)
    if kind == "memcached":
        host, port = where.rsplit(":", 1)
        return co.MemcachedBackend(servers=[(host, int(port))])
    if kind == "filesystem":
        return co.FileSystemBackend(Path(where))
    raise ValueError(kind)


def increment(spec: tuple[str, str], times: int) -> None:
    """``modify`` the shared counter ``times`` times."""
    backend = backend_from_spec(spec)
    counters = co.Repo(COUNTER, backend=backend)
    try:
        for _ in range(times):
            co.modify(counters, "hits", lambda c: c._replace(value=c.value + 1))
    finally:
        backend.close()
