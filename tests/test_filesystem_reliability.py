"""The filesystem backend after crashes: dead writers' temp files, and durable writes.

A writer killed between writing its temp file and renaming it leaves the temp
file behind; these tests plant such files (old and fresh) and check that only
the dead ones are removed, bounded or not. A power loss cannot be tested: for
``durable=True`` they check the round trip and that every write is fsynced.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

import cacheorm as co
from cacheorm.backends.base import Delete, Set
from cacheorm.backends.filesystem import FileSystemBackend


class FakeClock:
    """A clock that only moves when told to."""

    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


def _plant_temp_file(directory: Path, name: str, age: float) -> Path:
    """A temp file as a writer killed ``age`` seconds ago leaves it."""
    path = directory / name
    path.write_bytes(b"CORM1\x00 half a value")
    then = time.time() - age
    os.utime(path, (then, then))
    return path


def _temp_files(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.startswith(".tmp-"))


@pytest.mark.parametrize("max_items", [None, 1000])
def test_dead_writers_temp_files_are_removed_at_open(tmp_path: Path, max_items: int | None) -> None:
    _plant_temp_file(tmp_path, ".tmp-4242-1", age=3600)
    _plant_temp_file(tmp_path, ".tmp-4243-1", age=120)
    live = _plant_temp_file(tmp_path, ".tmp-4244-1", age=1)  # a writer may be at work
    backend = FileSystemBackend(tmp_path, max_items=max_items)
    assert _temp_files(tmp_path) == [live.name]
    backend.set(b"k", b"v")
    assert backend.get(b"k") == b"v"
    backend.close()


def test_an_unbounded_backend_sweeps_temp_files_while_it_runs(tmp_path: Path) -> None:
    clock = FakeClock()
    backend = FileSystemBackend(tmp_path, max_items=None, clock=clock)
    backend.set(b"k", b"v")
    dead = _plant_temp_file(tmp_path, ".tmp-4242-1", age=3600)
    for i in range(50):
        backend.set(b"k%d" % i, b"v")
    assert _temp_files(tmp_path) == [dead.name]  # no scan of a big directory on every write
    clock.now += 601  # the sweep interval: ten minutes of writing
    backend.set(b"k", b"w")
    assert _temp_files(tmp_path) == []
    assert backend.get(b"k") == b"w"
    backend.close()


def test_a_bounded_backend_sweeps_temp_files_when_it_evicts(tmp_path: Path) -> None:
    backend = FileSystemBackend(tmp_path, max_items=20)
    _plant_temp_file(tmp_path, ".tmp-4242-1", age=3600)
    for i in range(5):  # eviction scans every max_items // 10 = 2 writes
        backend.set(b"k%d" % i, b"v")
    assert _temp_files(tmp_path) == []
    backend.close()


def _every_write(backend: FileSystemBackend) -> None:
    """One of each writing call, checking each result."""
    backend.set(b"a", b"1", ttl=100)
    assert backend.add(b"b", b"2") is True
    assert backend.replace(b"a", b"3") is True
    assert backend.incr(b"n", 5) == 5
    assert backend.touch(b"a", ttl=200) is True
    got = backend.gets(b"b")
    assert got is not None
    assert backend.cas(b"b", b"4", got[1]) is True
    backend.set_many({b"c": b"5", b"d": b"6"})
    assert backend.delete(b"d") is True
    assert backend.batch([Set(b"e", b"7"), Delete(b"c")]) == [True, True]


def test_durable_writes_round_trip_and_survive_reopening(tmp_path: Path) -> None:
    backend = FileSystemBackend(tmp_path, durable=True)
    _every_write(backend)
    expected = [b"3", b"4", None, None, b"7", b"5"]
    assert backend.get_many(b"a", b"b", b"c", b"d", b"e", b"n") == expected
    backend.close()
    reopened = FileSystemBackend(tmp_path, durable=True)
    assert reopened.get_many(b"a", b"b", b"c", b"d", b"e", b"n") == expected
    ttl = reopened.get_with_ttl(b"a")
    assert ttl is not None
    assert 190 < ttl[1] <= 200
    assert _temp_files(tmp_path) == []
    reopened.close()


@pytest.mark.parametrize("durable", [False, True])
def test_durable_fsyncs_each_file_and_the_directory_once_per_call(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, durable: bool
) -> None:
    backend = FileSystemBackend(tmp_path, durable=durable)
    synced: list[str] = []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        synced.append("directory" if os.path.isdir(f"/proc/self/fd/{fd}") else "file")
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    backend.set_many({b"k%d" % i: b"v" for i in range(3)})
    set_many = list(synced)
    synced.clear()
    backend.delete(b"k0")
    delete = list(synced)
    synced.clear()
    backend.get(b"k1")
    assert backend.delete(b"missing") is False
    nothing = list(synced)
    if durable:
        assert set_many == ["file"] * 3 + ["directory"]
        assert delete == ["directory"]
    else:
        assert set_many == delete == []
    assert nothing == []  # reads and no-op deletes change nothing on disk
    backend.close()


def test_durable_write_failures_are_backend_errors(tmp_path: Path) -> None:
    backend = FileSystemBackend(tmp_path, durable=True)
    (tmp_path / backend._files.path(b"k").name).mkdir()  # a directory where the value file goes
    with pytest.raises(co.BackendError) as caught:
        backend.set(b"k", b"v")
    assert isinstance(caught.value.__cause__, OSError)
    assert _temp_files(tmp_path) == []
    backend.close()
