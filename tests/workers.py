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


def load_once(spec: tuple[str, str], log: str, start_at: float) -> None:
    """``get_or_load`` a person whose slow loader appends a line to ``log``."""
    import time

    from tests.records import PERSON, Person

    backend = backend_from_spec(spec)
    people = co.Repo(PERSON, backend=backend)

    def loader(name: str) -> Person:
        with open(log, "a", encoding="utf-8") as out:
            out.write(f"{name}\n")
        time.sleep(0.5)
        return Person(name, 1.0)

    time.sleep(max(0.0, start_at - time.time()))  # all processes ask at the same moment
    try:
        assert co.get_or_load(people, "Sam", loader) == Person("Sam", 1.0)
    finally:
        backend.close()
