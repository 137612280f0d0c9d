"""The filesystem backend: one file per key in a directory, safe across processes.

Layout: ``<directory>/<sha256(key) hex>``, plus ``.lock`` (the cross-process
lock) and short-lived ``.tmp-*`` files. A value file is a header followed by
the key and the value::

    magic b"CORM1\\0" | version u64 | expires f64 (epoch seconds, 0 = never) | key length u32
    key bytes | value bytes

Every write goes to a temp file in the same directory and is moved into place
with :func:`os.replace`, so a reader sees either the old or the new file, never
a half-written one. Writes take an exclusive :func:`fcntl.flock` on ``.lock``
(and a thread lock), so read-modify-write operations (``add``, ``replace``,
``incr``, ``cas``, ``delete_if``) are atomic across threads *and* processes.
Reads take no lock. A garbage or foreign file (another key whose name hashed
the same, a stray file) or one cut short inside its header reads as a miss.
The CAS token is the random ``version`` written with each new value.

A writer killed in the middle of a write leaves its temp file behind: temp
files older than a minute are removed when a backend opens the directory and
every ten minutes while it writes (bounded or not). With ``durable=True`` each
write is flushed to disk before it returns; see :class:`FileSystemBackend` for
what survives a power loss in each mode.

The command logic is :class:`~cacheorm.backends.local.LocalBackend`'s; this
module keeps the files.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import os
import struct
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Final

from cacheorm.backends.local import Entry, LocalBackend, check_max_items
from cacheorm.errors import BackendError

__all__ = ["FileSystemBackend"]

logger = logging.getLogger(__name__)

_MAGIC: Final = b"CORM1\x00"
_HEADER: Final = struct.Struct(f">{len(_MAGIC)}sQdI")
_LOCK_NAME: Final = ".lock"
_TMP_PREFIX: Final = ".tmp-"
_STALE_TMP_SECONDS: Final = 60.0
"""A temp file this old is a dead writer's: every write holds the lock for far less."""
_SWEEP_SECONDS: Final = 600.0
"""How often a writing backend looks for stale temp files when nothing else scans."""
_NAME_LENGTH: Final = 64  # hex sha256


def _filename(key: bytes) -> str:
    return hashlib.sha256(key).hexdigest()


def _decode(data: bytes, key: bytes) -> Entry | None:
    """Parse a value file; anything malformed or written for another key is ``None``."""
    if len(data) < _HEADER.size:
        return None
    magic, version, expires, key_length = _HEADER.unpack_from(data)
    end = _HEADER.size + key_length
    if magic != _MAGIC or len(data) < end or data[_HEADER.size : end] != key:
        return None
    return Entry(data[end:], expires, version)


def _key_in(path: Path) -> bytes | None:
    """The key a value file's header names; ``None`` for a file gone or not of ours.

    Raises:
        OSError: the file cannot be read.
    """
    try:
        with open(path, "rb") as file:
            head = file.read(_HEADER.size + 256)
            if len(head) < _HEADER.size:
                return None
            magic, _, _, key_length = _HEADER.unpack_from(head)
            if magic != _MAGIC:
                return None
            end = _HEADER.size + key_length
            if len(head) < end:
                head += file.read(end - len(head))
    except (FileNotFoundError, IsADirectoryError):
        return None
    return head[_HEADER.size : end] if len(head) >= end else None


def _encode(key: bytes, entry: Entry) -> bytes:
    header = _HEADER.pack(_MAGIC, entry.version, entry.expires, len(key))
    return b"".join((header, key, entry.value))


def _new_version() -> int:
    # Random, not a counter: several processes write the same directory.
    return int.from_bytes(os.urandom(8), "big")


def _sync_directory(directory: Path) -> None:
    """fsync the directory, so that renames and deletes survive a power loss."""
    try:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError as err:
        raise BackendError(f"cannot sync cache directory {directory}: {err}") from err


class _DirectoryLock:
    """The thread lock and an exclusive :func:`fcntl.flock` on ``<directory>/.lock``.

    One object serves every thread (the thread lock is taken first). ``flock``
    belongs to the open file description, which a forked child shares with its
    parent; a child therefore opens its own descriptor. On release, the
    directory is fsynced if a durable write or delete set ``unsynced``: one
    directory fsync per call, not per file.
    """

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.unsynced = False
        self._thread_lock = threading.Lock()
        self._fd = -1
        self._pid = -1

    def __enter__(self) -> None:
        self._thread_lock.acquire()
        try:
            if self._pid != os.getpid():
                path = self.directory / _LOCK_NAME
                self._fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
                self._pid = os.getpid()
            fcntl.flock(self._fd, fcntl.LOCK_EX)
        except BaseException as err:
            self._thread_lock.release()
            if isinstance(err, OSError):
                raise BackendError(f"cannot lock cache directory {self.directory}: {err}") from err
            raise

    def __exit__(self, *exc_info: object) -> None:
        try:
            if self.unsynced:
                self.unsynced = False
                _sync_directory(self.directory)
        finally:
            try:
                fcntl.flock(self._fd, fcntl.LOCK_UN)
            finally:
                self._thread_lock.release()

    def close(self) -> None:
        """Close the lock file (this process's descriptor only)."""
        with self._thread_lock:
            if self._fd >= 0 and self._pid == os.getpid():
                with contextlib.suppress(OSError):
                    os.close(self._fd)
            self._fd = -1
            self._pid = -1


class _Files:
    """The :class:`~cacheorm.backends.local.Storage` of a filesystem backend: a file per key.

    Reads take no lock: a value file is only ever replaced whole. Writes hold a
    :class:`_DirectoryLock`. Files keep no read recency: eviction removes the
    least recently *written* ones.
    """

    def __init__(
        self, directory: Path, max_items: int | None, clock: Callable[[], float], durable: bool
    ) -> None:
        self.directory = directory
        self.max_items = max_items
        self.clock = clock
        self.durable = durable
        self.read_lock = contextlib.nullcontext()
        self.write_lock = _DirectoryLock(directory)
        self.new_version = _new_version
        self._prune_every = 0 if max_items is None else max(1, min(100, max_items // 10))
        self._writes = 0
        self._next_sweep = 0.0

    def open(self) -> None:
        """Create the directory, fail early if it is unusable, clear dead writers' files."""
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise BackendError(f"cannot create cache directory {self.directory}: {err}") from err
        with self.write_lock:
            self._scan(evict=False)

    def path(self, key: bytes) -> Path:
        """Where ``key``'s value file lives."""
        return self.directory / _filename(key)

    def peek(self, key: bytes) -> Entry | None:
        try:
            with open(self.path(key), "rb") as file:
                data = file.read()
        except (FileNotFoundError, IsADirectoryError):
            return None
        except OSError as err:
            raise BackendError(f"cannot read cache file for {key!r}: {err}") from err
        entry = _decode(data, key)
        if entry is None or (entry.expires and entry.expires <= self.clock()):
            return None
        return entry

    fetch = peek

    def put(self, key: bytes, entry: Entry) -> None:
        """Write atomically: a temp file in the same directory, then ``os.replace``."""
        evict = bool(self._prune_every) and self._writes % self._prune_every == 0
        if evict or self.clock() >= self._next_sweep:
            self._scan(evict)
        self._writes += 1
        tmp = self.directory / f"{_TMP_PREFIX}{os.getpid()}-{threading.get_ident()}"
        try:
            with open(tmp, "wb") as file:
                file.write(_encode(key, entry))
                if self.durable:  # the data on disk before the name points at it
                    file.flush()
                    os.fsync(file.fileno())
            os.replace(tmp, self.path(key))
        except OSError as err:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise BackendError(f"cannot write cache file for {key!r}: {err}") from err
        self.write_lock.unsynced = self.durable

    def remove(self, key: bytes) -> bool:
        try:
            self.path(key).unlink()
        except FileNotFoundError:
            return False
        except OSError as err:
            raise BackendError(f"cannot delete cache file for {key!r}: {err}") from err
        self.write_lock.unsynced = self.durable
        return True

    def probe(self) -> None:
        """Create and remove a file in the directory: what every write needs to work.

        Raises:
            BackendError: the directory is missing, not a directory, or not writable.
        """
        # A temp-file name: if the process dies in between, the sweep removes it.
        probe = self.directory / f"{_TMP_PREFIX}ping-{os.getpid()}-{threading.get_ident()}"
        try:
            with open(probe, "wb"):
                pass
            probe.unlink()
        except OSError as err:
            raise BackendError(
                f"cache directory {self.directory} cannot be written: {err}; check that it "
                "exists and that this process may create files in it"
            ) from err

    def close(self) -> None:
        self.write_lock.close()

    def stored_keys(self) -> list[bytes]:
        """The key of every value file (read from its header; foreign files are skipped)."""
        try:
            with os.scandir(self.directory) as entries:
                names = [
                    item.name
                    for item in entries
                    if len(item.name) == _NAME_LENGTH and not item.name.startswith(".")
                ]
            found = [_key_in(self.directory / name) for name in names]
        except OSError as err:
            raise BackendError(f"cannot list cache directory {self.directory}: {err}") from err
        return [
            key for key, name in zip(found, names, strict=True) if key and _filename(key) == name
        ]

    def _scan(self, evict: bool) -> None:
        """Remove dead writers' temp files; with ``evict``, make room under ``max_items``.

        Eviction keeps room for the next ``_prune_every`` writes by removing the
        least recently written value files; it runs every ``_prune_every``
        writes. Temp files older than ``_STALE_TMP_SECONDS`` are removed on
        every scan, which happens at least every ``_SWEEP_SECONDS`` of writing.
        Runs under the lock.
        """
        self._next_sweep = self.clock() + _SWEEP_SECONDS
        try:
            files = self._sweep(evict)
            if self.max_items is None or not evict:
                return
            keep = max(0, self.max_items - self._prune_every)
            if len(files) <= keep:
                return
            files.sort()
            for _, name in files[: len(files) - keep]:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self.directory / name)
        except OSError as err:
            raise BackendError(f"cannot clean cache directory {self.directory}: {err}") from err
        logger.debug("evicted %d files from %s", len(files) - keep, self.directory)

    def _sweep(self, listing: bool) -> list[tuple[int, str]]:
        """Remove stale temp files; with ``listing``, return the value files by write time."""
        now = time.time()  # file times are real wall-clock times
        files: list[tuple[int, str]] = []
        stale = 0
        with os.scandir(self.directory) as entries:
            for item in entries:
                name = item.name
                if listing and len(name) == _NAME_LENGTH and not name.startswith("."):
                    with contextlib.suppress(FileNotFoundError):
                        files.append((item.stat().st_mtime_ns, name))
                elif name.startswith(_TMP_PREFIX):
                    with contextlib.suppress(FileNotFoundError):
                        if now - item.stat().st_mtime > _STALE_TMP_SECONDS:
                            os.unlink(item.path)
                            stale += 1
        if stale:
            logger.debug("removed %d stale temp files from %s", stale, self.directory)
        return files


class FileSystemBackend(LocalBackend):
    """Store bytes as files in ``directory``, shareable by several processes.

    **What survives a crash.** A process killed at any point leaves every key
    with its old or its new value (and at most a temp file, removed later),
    in both modes. A power loss or operating-system crash is another matter:

    * ``durable=False`` (the default): a write is in the operating system's
      page cache when it returns, and reaches the disk a little later (within
      about 30 s on Linux). After a power loss, the writes of those last
      seconds may be lost: a key may read as its previous value or as a miss,
      and a deleted key may come back. Depending on the filesystem a file may
      even come back cut short or zero-filled: a damaged header reads as a
      miss, but a value cut short is served as is, for the serializer to
      reject (``co.signed(...)`` detects any damage).
    * ``durable=True``: each written file is fsynced before it replaces the
      old one, and the directory after each call that wrote or deleted, so
      every write or delete that returned survives a power loss (if the disk
      honours flushes). This costs one fsync per written file and one per
      call: milliseconds on most disks, so use it for data that must not go
      back in time.

    Args:
        directory: where the files live; created if missing. Use a directory
            of its own: files cacheorm did not write are read as misses, but
            may be evicted.
        max_items: about how many files to keep. Checked every few writes
            (a tenth of ``max_items``, at most 100); each check removes the
            least recently written files so that the count stays at or below
            ``max_items`` for writes from this process. ``None`` = unbounded.
        default_ttl: seconds used when a call passes ``ttl=None``; ``0`` = never.
        clock: wall-clock time in seconds. Expiry times are absolute and
            shared with other processes, so this must be a real clock
            (``time.time``) outside tests.
        durable: fsync every write before returning (see above).

    Raises:
        ValidationError: an illegal ``max_items`` or ``default_ttl``.
        BackendError: the directory cannot be created or the lock file opened.
    """

    def __init__(
        self,
        directory: str | os.PathLike[str],
        max_items: int | None = 10_000,
        default_ttl: int = 0,
        clock: Callable[[], float] = time.time,
        *,
        durable: bool = False,
    ) -> None:
        self._files = _Files(Path(directory), check_max_items(max_items), clock, durable)
        super().__init__(self._files, default_ttl)
        self._files.open()

    def __repr__(self) -> str:
        return (
            f"FileSystemBackend({str(self.directory)!r}, max_items={self.max_items}, "
            f"durable={self.durable})"
        )

    @property
    def directory(self) -> Path:
        """Where the files live."""
        return self._files.directory

    @property
    def max_items(self) -> int | None:
        """About how many files are kept (``None`` = unbounded)."""
        return self._files.max_items

    @property
    def durable(self) -> bool:
        """Whether every write is fsynced before it returns."""
        return self._files.durable

    def ping(self) -> None:
        """Return when the directory can be written (a probe file is created and removed).

        Raises:
            BackendError: the directory was removed, replaced or made read-only.
        """
        self._files.probe()

    def close(self) -> None:
        """Close the lock file. The files stay: they are the cache."""
        self._files.close()
