"""The one command core of the local stores (cacheorm.backends.local), on both storages.

What the conformance suite does not pin down: the TTLs of a batch, which a
batch computes once per TTL value, the CAS token a ``touch`` keeps, and which
reads count as a use for the memory store's LRU order.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

import cacheorm as co
from cacheorm.backends.base import Add, Get, Gets, Has, Replace, Set
from cacheorm.backends.filesystem import FileSystemBackend
from cacheorm.backends.local import LocalBackend
from cacheorm.backends.memory import MemoryBackend


class FakeClock:
    """A clock that only moves when told to."""

    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(params=["memory", "filesystem"])
def local(
    request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[tuple[LocalBackend, FakeClock]]:
    clock = FakeClock()
    backend: LocalBackend = (
        MemoryBackend(default_ttl=30, clock=clock)
        if request.param == "memory"
        else FileSystemBackend(tmp_path, default_ttl=30, clock=clock)
    )
    yield backend, clock
    backend.close()


def test_a_batch_refuses_a_bool_or_float_ttl_after_the_equal_int(
    local: tuple[LocalBackend, FakeClock],
) -> None:
    backend, _ = local
    bad_ttls: list[object] = [True, 1.0]
    results = backend.batch(
        [Set(b"int", b"v", ttl=1)]
        + [Set(b"bad", b"v", ttl=ttl) for ttl in bad_ttls]  # type: ignore[arg-type]  # the point
        + [Add(b"bad", b"v", ttl=True), Replace(b"int", b"w", ttl=True), Get(b"bad")]
    )
    assert results[0] is True
    assert all(isinstance(result, co.ValidationError) for result in results[1:5])
    assert results[5] is None
    assert backend.get(b"int") == b"v"


def test_batch_writes_expire_like_single_writes(local: tuple[LocalBackend, FakeClock]) -> None:
    backend, clock = local
    backend.set(b"present", b"v", ttl=0)
    results = backend.batch(
        [
            Set(b"ten", b"v", ttl=10),
            Set(b"default", b"v"),
            Set(b"never", b"v", ttl=0),
            Set(b"ten-too", b"v", ttl=10),
            Add(b"added", b"v", ttl=5),
            Replace(b"present", b"w", ttl=20),
        ]
    )
    assert results == [True] * 6
    clock.now += 5
    assert backend.get_many(b"added", b"ten") == [None, b"v"]
    clock.now += 5
    assert backend.get_many(b"ten", b"ten-too", b"present", b"default") == [None, None, b"w", b"v"]
    clock.now += 20
    assert backend.get_many(b"present", b"default", b"never") == [None, None, b"v"]


def test_touch_keeps_the_cas_token_and_a_write_changes_it(
    local: tuple[LocalBackend, FakeClock],
) -> None:
    backend, _ = local
    backend.set(b"k", b"v", ttl=10)
    first = backend.gets(b"k")
    assert first is not None
    assert backend.touch(b"k", 100) is True
    assert backend.batch([Gets(b"k")]) == [first]
    hit = backend.get_with_ttl(b"k")
    assert hit is not None
    assert hit[1] == 100
    backend.set(b"k", b"v", ttl=100)  # the same value, but a new write
    assert backend.cas(b"k", b"w", first[1]) is False
    assert backend.get(b"k") == b"v"


def test_memory_reads_that_serve_a_value_refresh_it_but_has_does_not() -> None:
    backend = MemoryBackend(max_items=3)
    backend.set_many({b"a": b"1", b"b": b"2", b"c": b"3"})
    assert backend.has(b"a") is True  # no use: a stays the least recently used
    assert backend.batch([Has(b"b"), Get(b"c")]) == [True, b"3"]
    backend.set(b"d", b"4")
    assert backend.get_many(b"a", b"b", b"c", b"d") == [None, b"2", b"3", b"4"]
    assert backend.gets(b"b") is not None  # b is used now, c is the oldest
    backend.set(b"e", b"5")
    assert backend.get_many(b"b", b"c", b"d", b"e") == [b"2", None, b"4", b"5"]
