"""Worker functions for the multi-process tests (importable by ``spawn`` children)."""

from __future__ import annotations

import os
import select
import signal
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import cacheorm as co
from tests.records import COUNTER

if TYPE_CHECKING:
    import pytest

    from tests.servers import MemcachedServer, RedisServer


def shared_spec(kind: str, request: pytest.FixtureRequest, tmp_path: Path) -> tuple[str, str]:
    """A freshly emptied store of ``kind`` (``redis``, ``memcached``, ``filesystem``) that
    processes share, as the ``(kind, address)`` that :func:`backend_from_spec` rebuilds."""
    if kind == "redis":
        server: RedisServer = request.getfixturevalue("redis_server")
        server.flush()
        return ("redis", server.url)
    if kind == "memcached":
        node: MemcachedServer = request.getfixturevalue("memcached_servers")[0]
        node.flush()
        return ("memcached", f"{node.host}:{node.port}")
    return ("filesystem", str(tmp_path / "shared"))


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


class Forked:
    """A child made by ``os.fork()`` that runs ``work`` once and reports its bytes.

    The child never returns into pytest: it writes ``work()`` to a pipe and
    exits. The parent may do its own work meanwhile, then reads the report.
    """

    def __init__(self, work: Callable[[], bytes]) -> None:
        read_end, write_end = os.pipe()
        self.pid = os.fork()
        if self.pid == 0:
            status = 1
            try:
                os.close(read_end)
                os.write(write_end, work())
                status = 0
            finally:
                os._exit(status)
        os.close(write_end)
        self._read_end: int | None = read_end

    def report(self, timeout: float = 20) -> bytes:
        """The child's bytes, waited for at most ``timeout`` seconds; then :meth:`reap`."""
        assert self._read_end is not None, "report() once"
        try:
            ready, _, _ = select.select([self._read_end], [], [], timeout)
            assert ready, "the child did not report (stalled on a shared socket or lock?)"
            return os.read(self._read_end, 4096)
        finally:
            self.reap()

    def reap(self) -> None:
        """Close the pipe and wait for the child, killing it if it is still running."""
        if self._read_end is None:
            return
        os.close(self._read_end)
        self._read_end = None
        if os.waitpid(self.pid, os.WNOHANG) == (0, 0):
            os.kill(self.pid, signal.SIGKILL)
            os.waitpid(self.pid, 0)
