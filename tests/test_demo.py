"""``make demo`` walks the API; the same walk runs on real servers with flags."""

from __future__ import annotations

import pytest

from cacheorm import demo
from tests.servers import MemcachedServer, RedisServer


def check_walk(out: str) -> None:
    assert "co.get(people, 'Nobody') raises    -> NotFound" in out
    assert "height=181.0, married=True" in out  # update then modify
    assert "a misspelt field raises" in out
    assert "loader calls for two get_or_load   -> ['Cleo']" in out
    assert "exists right after insert          -> True" in out
    assert "exists 2.1 s later                 -> False" in out
    assert "co.delete_many(people, ['Ann', 'Cleo', 'Zed']) -> 2" in out


def test_demo_runs_with_no_server(capsys: pytest.CaptureFixture[str]) -> None:
    demo.main([])
    out = capsys.readouterr().out
    assert "in-process MemoryBackend" in out
    check_walk(out)


def test_demo_runs_on_redis(capsys: pytest.CaptureFixture[str], redis_server: RedisServer) -> None:
    demo.main(["--redis", redis_server.url])
    check_walk(capsys.readouterr().out)


def test_demo_runs_on_memcached(
    capsys: pytest.CaptureFixture[str], memcached_servers: list[MemcachedServer]
) -> None:
    node = memcached_servers[0]
    demo.main(["--memcached", f"{node.host}:{node.port}"])
    check_walk(capsys.readouterr().out)
