"""What only the memory, filesystem and tiered backends promise.

The shared behaviour is in ``test_backend_conformance.py``; here: LRU bounds,
TTLs on a fake clock, thread and process safety, damaged files, and how the
tiered backend's near copy follows its far backend.
"""

from __future__ import annotations

import multiprocessing
import os
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

import cacheorm as co
from cacheorm.backends.base import Command, Get, Gets, Set
from cacheorm.backends.filesystem import FileSystemBackend
from cacheorm.backends.memory import MemoryBackend
from cacheorm.backends.tiered import FILL_TTL, TieredBackend

if TYPE_CHECKING:
    from tests.servers import RedisServer


class FakeClock:
    """A clock that only moves when told to."""

    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class CountingBackend(MemoryBackend):
    """A memory backend that counts the reads it serves (to see what a tier sends on)."""

    def __init__(self, clock: FakeClock) -> None:
        super().__init__(max_items=None, clock=clock)
        self.reads = 0

    def get(self, key: bytes) -> bytes | None:
        self.reads += 1
        return super().get(key)

    def get_many(self, *keys: bytes) -> list[bytes | None]:
        self.reads += 1
        return super().get_many(*keys)

    def get_with_ttl(self, key: bytes) -> tuple[bytes, float] | None:
        self.reads += 1
        return super().get_with_ttl(key)

    def get_many_with_ttl(self, *keys: bytes) -> list[tuple[bytes, float] | None]:
        self.reads += 1
        return super().get_many_with_ttl(*keys)

    def batch(self, commands: Sequence[Command]) -> list[object]:
        self.reads += 1
        return super().batch(commands)


class FailingBackend(MemoryBackend):
    """A memory backend whose writes fail like an unreachable server."""

    def set(self, key: bytes, value: bytes, ttl: int | None = None) -> None:
        raise co.BackendError("far is down")


def _files(directory: Path) -> list[Path]:
    return [p for p in directory.iterdir() if not p.name.startswith(".")]


# -- memory -----------------------------------------------------------------------


def test_memory_evicts_the_least_recently_used() -> None:
    backend = MemoryBackend(max_items=3)
    backend.set_many({b"a": b"1", b"b": b"2", b"c": b"3"})
    assert backend.get(b"a") == b"1"  # a is now the most recently used
    backend.set(b"d", b"4")
    assert len(backend) == 3
    assert backend.get_many(b"a", b"b", b"c", b"d") == [b"1", None, b"3", b"4"]
    backend.incr(b"e")  # get_many used a, c, d in that order: a goes
    assert backend.get_many(b"a", b"c", b"d", b"e") == [None, b"3", b"4", b"1"]


@pytest.mark.parametrize("bad", [0, -1, 1.5, True])
def test_memory_rejects_an_illegal_bound(bad: object) -> None:
    with pytest.raises(co.ValidationError):
        MemoryBackend(max_items=bad)  # type: ignore[arg-type]  # the point of the test


def test_memory_unbounded() -> None:
    backend = MemoryBackend(max_items=None)
    backend.set_many({b"%d" % i: b"v" for i in range(20_000)})
    assert len(backend) == 20_000


@pytest.mark.parametrize("kind", ["memory", "filesystem"])
def test_ttl_on_a_fake_clock(kind: str, tmp_path: Path) -> None:
    clock = FakeClock()
    backend: co.Backend = (
        MemoryBackend(default_ttl=30, clock=clock)
        if kind == "memory"
        else FileSystemBackend(tmp_path, default_ttl=30, clock=clock)
    )
    backend.set(b"ten", b"v", 10)
    backend.set(b"default", b"v")
    backend.set(b"never", b"v", 0)
    backend.set(b"touched", b"v", 10)
    backend.set(b"cas-keep", b"v", 10)
    backend.set(b"counter", b"1", 10)
    clock.advance(5)
    assert backend.touch(b"touched", 20) is True
    got = backend.gets(b"cas-keep")
    assert got is not None
    assert backend.cas(b"cas-keep", b"v2", got[1]) is True  # KEEP_TTL by default
    assert backend.incr(b"counter") == 2  # incr keeps the expiry too
    clock.advance(4.9)
    assert backend.get_many(b"ten", b"cas-keep", b"counter") == [b"v", b"v2", b"2"]
    clock.advance(0.1)
    assert backend.get_many(b"ten", b"cas-keep", b"counter") == [None, None, None]
    assert backend.has(b"ten") is False
    assert backend.add(b"ten", b"again") is True  # an expired key counts as absent
    assert backend.get(b"touched") == b"v"
    clock.advance(20)
    assert backend.get_many(b"touched", b"default", b"never") == [None, None, b"v"]
    assert backend.incr(b"counter") == 1
    clock.advance(10**9)
    assert backend.get(b"counter") == b"1"  # a new counter never expires
    backend.close()


def test_memory_incr_of_non_integer_is_a_validation_error(tmp_path: Path) -> None:
    for backend in (MemoryBackend(), FileSystemBackend(tmp_path)):
        backend.set(b"k", b"12 ")
        with pytest.raises(co.ValidationError):
            backend.incr(b"k")
        with pytest.raises(co.ValidationError):
            backend.incr(b"n", 1.5)  # type: ignore[arg-type]  # the point of the test
        with pytest.raises(co.ValidationError):
            backend.cas(b"k", b"v", "not a token")
        assert backend.get(b"k") == b"12 "
        backend.close()


@pytest.mark.timeout(60)
def test_memory_is_thread_safe_under_mixed_load() -> None:
    backend = MemoryBackend(max_items=50)
    threads, rounds = 8, 2000

    def work(t: int) -> None:
        for i in range(rounds):
            backend.incr(b"hits")
            backend.set(b"t%d-%d" % (t, i % 100), b"v")
            backend.get(b"t%d-%d" % ((t + 1) % threads, i % 100))
            backend.delete(b"t%d-%d" % (t, (i + 50) % 100))

    workers = [threading.Thread(target=work, args=(t,)) for t in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    assert backend.get(b"hits") == b"%d" % (threads * rounds)
    assert len(backend) <= 50


# -- filesystem ---------------------------------------------------------------------


def test_filesystem_garbage_and_truncated_files_read_as_misses(tmp_path: Path) -> None:
    backend = FileSystemBackend(tmp_path)
    backend.set(b"real", b"value" * 10)
    real = next(iter(_files(tmp_path)))
    whole = real.read_bytes()
    cases = {
        b"garbage": b"\x00\xff not a cache file at all",
        b"empty": b"",
        b"half-header": whole[:10],
        b"no-key": whole[:30],
        b"foreign-key": whole,  # a valid file, but written for another key
    }
    for key, content in cases.items():
        path = tmp_path / backend._files.path(key).name
        path.write_bytes(content)
        assert backend.get(key) is None, key
        assert backend.has(key) is False
        assert backend.gets(key) is None
        assert backend.replace(key, b"x") is False
        assert backend.delete(key) is False
        path.write_bytes(content)
        assert backend.add(key, b"fresh") is True
        assert backend.get(key) == b"fresh"
    real.write_bytes(whole[:-3])  # truncated inside the value: still a value, shorter
    assert backend.get(b"real") == (b"value" * 10)[:-3]
    backend.close()


def test_filesystem_ignores_stray_files_and_survives_reopening(tmp_path: Path) -> None:
    (tmp_path / "README").write_text("not ours")
    first = FileSystemBackend(tmp_path)
    first.set(b"k", b"v")
    first.close()
    second = FileSystemBackend(tmp_path)
    assert second.get(b"k") == b"v"
    assert (tmp_path / "README").read_text() == "not ours"
    second.close()


def test_filesystem_wraps_os_errors(tmp_path: Path) -> None:
    backend = FileSystemBackend(tmp_path)
    (tmp_path / backend._files.path(b"k").name).mkdir()  # a directory where the value file goes
    with pytest.raises(co.BackendError) as caught:
        backend.set(b"k", b"v")
    assert isinstance(caught.value.__cause__, OSError)
    assert backend.get(b"k") is None
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".tmp")] == []
    backend.close()
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(co.BackendError):
        FileSystemBackend(blocker / "sub")


def test_filesystem_bound_holds(tmp_path: Path) -> None:
    backend = FileSystemBackend(tmp_path, max_items=20)
    for i in range(100):
        backend.set(b"k%d" % i, b"v")
        assert len(_files(tmp_path)) <= 20
    assert backend.get(b"k99") == b"v"
    backend.close()


def test_filesystem_leaves_no_temp_files(tmp_path: Path) -> None:
    backend = FileSystemBackend(tmp_path)
    backend.set_many({b"k%d" % i: b"v" for i in range(10)})
    backend.incr(b"n")
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == [".lock"]
    backend.close()


def _incr_worker(directory: str, rounds: int) -> None:
    backend = FileSystemBackend(directory)
    for _ in range(rounds):
        backend.incr(b"plain")
    backend.close()


def _cas_worker(directory: str, rounds: int) -> None:
    backend = FileSystemBackend(directory)
    for _ in range(rounds):
        while True:
            got = backend.gets(b"cas")
            current = 0 if got is None else int(got[0])
            if got is None:
                if backend.add(b"cas", b"1"):
                    break
            elif backend.cas(b"cas", b"%d" % (current + 1), got[1]):
                break
    backend.close()


@pytest.mark.timeout(90)
@pytest.mark.parametrize("worker", [_incr_worker, _cas_worker], ids=["incr", "cas"])
def test_filesystem_is_atomic_across_processes(
    worker: Callable[[str, int], None], tmp_path: Path
) -> None:
    context = multiprocessing.get_context("spawn")
    processes = [context.Process(target=worker, args=(str(tmp_path), 200)) for _ in range(2)]
    for process in processes:
        process.start()
    for process in processes:
        process.join(60)
    assert [p.exitcode for p in processes] == [0, 0]
    backend = FileSystemBackend(tmp_path)
    key = b"plain" if worker is _incr_worker else b"cas"
    assert backend.get(key) == b"400"
    backend.close()


def test_filesystem_lock_is_per_process_after_fork(tmp_path: Path) -> None:
    backend = FileSystemBackend(tmp_path)
    backend.incr(b"n")
    pid = os.fork()
    if pid == 0:  # child: must open its own lock, or flock would not exclude the parent
        code = 0
        try:
            for _ in range(200):
                backend.incr(b"n")
        except BaseException:
            code = 1
        os._exit(code)
    for _ in range(200):
        backend.incr(b"n")
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert backend.get(b"n") == b"401"
    backend.close()


# -- tiered ---------------------------------------------------------------------


def _tier(
    near_ttl: int | None = None,
) -> tuple[TieredBackend, MemoryBackend, CountingBackend, FakeClock]:
    clock = FakeClock()
    near = MemoryBackend(max_items=100, clock=clock)
    far = CountingBackend(clock)
    return TieredBackend(near, far, near_ttl=near_ttl), near, far, clock


def test_tiered_near_serves_repeated_reads() -> None:
    tier, near, far, _ = _tier()
    far.set(b"k", b"v")
    assert [tier.get(b"k") for _ in range(10)] == [b"v"] * 10
    assert far.reads == 1
    assert near.get(b"k") == b"v"
    tier.set(b"w", b"written")
    assert tier.get(b"w") == b"written"
    assert far.reads == 1  # a write through the tier fills near


def test_tiered_get_many_asks_far_once_for_the_misses() -> None:
    tier, near, far, _ = _tier()
    far.set_many({b"a": b"1", b"b": b"2", b"c": b"3"})
    near.set(b"b", b"2")
    assert tier.get_many(b"a", b"b", b"missing", b"c") == [b"1", b"2", None, b"3"]
    assert far.reads == 1
    assert tier.get_many(b"a", b"b", b"c") == [b"1", b"2", b"3"]
    assert far.reads == 1


def test_tiered_batch_reads_near_but_not_past_a_write() -> None:
    tier, _, far, _ = _tier()
    tier.set(b"k", b"old")
    assert tier.batch([Get(b"k"), Get(b"k")]) == [b"old", b"old"]
    assert far.reads == 0
    far.set(b"k", b"changed elsewhere")  # near is stale now, on purpose
    results = tier.batch([Get(b"k"), Set(b"k", b"new"), Get(b"k")])
    assert results == [b"old", True, b"new"]
    assert tier.get(b"k") == b"new"


def test_tiered_write_ttl_bounds_the_near_copy() -> None:
    tier, near, _, clock = _tier(near_ttl=50)
    tier.set(b"short", b"v", 3)
    tier.set(b"long", b"v", 1000)
    clock.advance(3)
    assert tier.get(b"short") is None  # near did not outlive far
    assert near.get(b"long") == b"v"
    clock.advance(47)
    assert near.get(b"long") is None  # near_ttl caps the copy
    assert tier.get(b"long") == b"v"


def test_tiered_fill_uses_near_ttl_then_sees_far_again() -> None:
    tier, _, far, clock = _tier(near_ttl=5)
    far.set(b"k", b"v1")
    assert tier.get(b"k") == b"v1"
    far.set(b"k", b"v2")  # another process writes far directly
    clock.advance(4)
    assert tier.get(b"k") == b"v1"  # stale for at most near_ttl
    clock.advance(1)
    assert tier.get(b"k") == b"v2"


def test_tiered_fill_without_near_ttl_uses_the_default() -> None:
    tier, near, far, clock = _tier()
    far.set(b"k", b"v")
    tier.get(b"k")
    clock.advance(FILL_TTL - 1)
    assert near.get(b"k") == b"v"
    clock.advance(1)
    assert near.get(b"k") is None


def test_tiered_copy_filled_by_a_read_expires_with_far() -> None:
    # near and far share the fake clock, as two processes share real time.
    tier, near, far, clock = _tier()
    far.set(b"get", b"v", 5)  # written to far by "another process"
    far.set(b"many", b"v", 5)
    far.set(b"batch", b"v", 5)
    assert tier.get(b"get") == b"v"
    assert tier.get_many(b"many", b"absent") == [b"v", None]
    assert tier.batch([Get(b"batch")]) == [b"v"]
    assert near.get_many(b"get", b"many", b"batch") == [b"v", b"v", b"v"]  # filled
    reads = far.reads
    clock.advance(4)
    assert tier.get_many(b"get", b"many", b"batch") == [b"v", b"v", b"v"]
    assert far.reads == reads  # served by near
    clock.advance(2)  # far's entries expired 1 s ago
    assert near.get_many(b"get", b"many", b"batch") == [None, None, None]
    assert tier.get(b"get") is None
    assert tier.get_many(b"many") == [None]
    assert tier.batch([Get(b"batch")]) == [None]


def test_tiered_fill_takes_whole_seconds_and_skips_the_last_one() -> None:
    tier, near, far, clock = _tier()
    far.set(b"k", b"v", 10)
    clock.advance(7.5)
    assert tier.get(b"k") == b"v"  # 2.5 s left in far: a 2 s copy
    clock.advance(1.75)
    assert near.get(b"k") == b"v"
    clock.advance(0.25)
    assert near.get(b"k") is None
    assert tier.get(b"k") == b"v"  # 0.5 s left: served, not copied
    assert near.get(b"k") is None
    assert tier.get_with_ttl(b"k") == (b"v", 0.5)  # far's word
    clock.advance(0.5)
    assert tier.get(b"k") is None


def test_tiered_fill_is_capped_by_near_ttl_and_far_lifetime() -> None:
    tier, near, far, clock = _tier(near_ttl=5)
    far.set_many({b"short": b"v"}, 3)
    far.set_many({b"long": b"v"}, 100)
    far.set(b"never", b"v", 0)
    assert tier.get_many(b"short", b"long", b"never") == [b"v", b"v", b"v"]
    clock.advance(3)
    assert near.get_many(b"short", b"long", b"never") == [None, b"v", b"v"]
    clock.advance(2)
    assert near.get_many(b"long", b"never") == [None, None]


def test_tiered_gets_drops_the_near_copy() -> None:
    tier, near, far, _ = _tier()
    tier.set(b"k", b"v", 100)
    far.set(b"k", b"changed", 1)  # another process shortens the entry
    got = tier.gets(b"k")
    assert got is not None
    assert got[0] == b"changed"
    assert near.get(b"k") is None  # no copy of unknown lifetime
    assert tier.batch([Gets(b"k")])[0] is not None
    assert near.get(b"k") is None


@pytest.mark.timeout(30)
def test_tiered_copy_expires_with_a_real_redis_far(redis_server: RedisServer) -> None:
    redis_server.flush()
    raw = redis_server.client()
    near = MemoryBackend()
    tier = TieredBackend(near, co.RedisBackend(url=redis_server.url))
    try:
        raw.set(b"k", b"v", px=1200)  # another process writes far, 1.2 s to live
        assert tier.get(b"k") == b"v"
        assert near.get(b"k") == b"v"  # the read filled near
        time.sleep(1.3)
        assert tier.get(b"k") is None
        raw.set(b"many", b"v", px=1200)
        assert tier.get_many(b"many", b"absent") == [b"v", None]
        assert near.get(b"many") == b"v"
        time.sleep(1.3)
        assert tier.get_many(b"many") == [None]
    finally:
        raw.close()
        tier.close()


def test_tiered_delete_is_visible_at_once() -> None:
    tier, near, far, _ = _tier()
    tier.set(b"k", b"v")
    assert tier.get(b"k") == b"v"
    assert tier.delete(b"k") is True
    assert tier.get(b"k") is None
    assert near.get(b"k") is None
    assert far.get(b"k") is None
    tier.set_many({b"a": b"1", b"b": b"2"})
    assert tier.delete_many(b"a", b"b", b"c") == 2
    assert tier.get_many(b"a", b"b") == [None, None]


def test_tiered_conditional_ops_are_decided_by_far() -> None:
    tier, near, far, _ = _tier()
    far.set(b"k", b"far")  # near knows nothing of it
    assert tier.add(b"k", b"mine") is False
    assert tier.get(b"k") == b"far"
    near.set(b"ghost", b"stale copy")  # far has no such key
    assert tier.replace(b"ghost", b"x") is False
    assert tier.get(b"ghost") is None
    got = tier.gets(b"k")
    assert got is not None
    far.set(b"k", b"far2")
    assert tier.cas(b"k", b"mine", got[1]) is False
    assert tier.get(b"k") == b"far2"
    assert tier.incr(b"n", 2) == 2
    assert tier.get(b"n") == b"2"
    assert tier.decr(b"n", 5) == -3
    assert tier.get(b"n") == b"-3"


def test_tiered_far_failure_drops_the_near_copy() -> None:
    near = MemoryBackend()
    tier = TieredBackend(near, FailingBackend())
    near.set(b"k", b"old")
    with pytest.raises(co.BackendError):
        tier.set(b"k", b"new")
    assert near.get(b"k") is None


def test_tiered_default_ttl_is_far_s() -> None:
    far = MemoryBackend(default_ttl=7)
    tier = TieredBackend(MemoryBackend(), far)
    assert tier.default_ttl == 7
    tier.default_ttl = 9
    assert far.default_ttl == 9
    assert isinstance(tier, co.Backend)


class SlowFar(MemoryBackend):
    """A far tier whose reads answer late, so a write can slip in between."""

    def __init__(self, delay: float) -> None:
        super().__init__()
        self.delay = delay

    def get_with_ttl(self, key: bytes) -> tuple[bytes, float] | None:
        hit = super().get_with_ttl(key)
        time.sleep(self.delay)
        return hit


@pytest.mark.parametrize("write", ["delete", "set"])
def test_tiered_read_racing_a_write_never_restores_the_old_value(write: str) -> None:
    far = SlowFar(delay=0.3)
    tier = TieredBackend(MemoryBackend(), far)
    far.set(b"k", b"old")
    reader = threading.Thread(target=tier.get, args=(b"k",))
    reader.start()
    time.sleep(0.1)  # the reader has asked far and waits for its answer
    if write == "delete":
        tier.delete(b"k")
    else:
        tier.set(b"k", b"new")
    reader.join()
    assert tier.get(b"k") == (None if write == "delete" else b"new")


def test_tiered_copy_of_a_never_expiring_write_is_still_bounded() -> None:
    near = MemoryBackend()
    tier = TieredBackend(near, MemoryBackend())
    tier.set(b"k", b"v", ttl=0)
    hit = near.get_with_ttl(b"k")
    assert hit is not None
    assert 0 < hit[1] <= FILL_TTL  # other processes' writes show after at most FILL_TTL
