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
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Final, NamedTuple

from cacheorm.backends.base import (
    KEEP_TTL,
    TTL,
    CasToken,
    Command,
    Keep,
    apply_local,
    check_delta,
    counter_sum,
    resolve_ttl,
)
from cacheorm.backends.memory import check_max_items, parse_counter
from cacheorm.errors import BackendError, CacheORMError, ValidationError

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


class _Entry(NamedTuple):
    value: bytes
    expires: float
    version: int


def _filename(key: bytes) -> str:
    return hashlib.sha256(key).hexdigest()


def _decode(data: bytes, key: bytes) -> _Entry | None:
    """Parse a value file; anything malformed or written for another key is ``None``."""
    if len(data) < _HEADER.size:
        return None
    magic, version, expires, key_length = _HEADER.unpack_from(data)
    end = _HEADER.size + key_length
    if magic != _MAGIC or len(data) < end or data[_HEADER.size : end] != key:
        return None
    return _Entry(data[end:], expires, version)


def _encode(key: bytes, entry: _Entry) -> bytes:
    header = _HEADER.pack(_MAGIC, entry.version, entry.expires, len(key))
    return b"".join((header, key, entry.value))


def _new_version() -> int:
    # Random, not a counter: several processes write the same directory.
    return int.from_bytes(os.urandom(8), "big")


class FileSystemBackend:
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

    default_ttl: int

    def __init__(
        self,
        directory: str | os.PathLike[str],
        max_items: int | None = 10_000,
        default_ttl: int = 0,
        clock: Callable[[], float] = time.time,
        *,
        durable: bool = False,
    ) -> None:
        self.default_ttl = resolve_ttl(default_ttl, 0)
        self.max_items = check_max_items(max_items)
        self.directory = Path(directory)
        self.durable = durable
        self._clock = clock
        self._thread_lock = threading.Lock()
        self._prune_every = 0 if max_items is None else max(1, min(100, max_items // 10))
        self._writes = 0
        self._next_sweep = 0.0
        self._unsynced = False
        self._lock_fd = -1
        self._lock_pid = -1
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise BackendError(f"cannot create cache directory {self.directory}: {err}") from err
        with self._locked():  # fail early on an unusable directory; clear dead writers' files
            self._scan(evict=False)

    def __repr__(self) -> str:
        return (
            f"FileSystemBackend({str(self.directory)!r}, max_items={self.max_items}, "
            f"durable={self.durable})"
        )

    # -- locking and file primitives -----------------------------------------

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """Hold the thread lock and the exclusive lock on ``.lock``.

        ``flock`` belongs to the open file description, which a forked child
        shares with its parent; a child therefore opens its own descriptor.
        """
        with self._thread_lock:
            try:
                if self._lock_pid != os.getpid():
                    self._lock_fd = os.open(
                        self.directory / _LOCK_NAME, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644
                    )
                    self._lock_pid = os.getpid()
                fcntl.flock(self._lock_fd, fcntl.LOCK_EX)
            except OSError as err:
                raise BackendError(f"cannot lock cache directory {self.directory}: {err}") from err
            try:
                yield
            finally:
                try:
                    if self._unsynced:  # durable: one directory fsync per call, not per file
                        self._unsynced = False
                        self._sync_directory()
                finally:
                    fcntl.flock(self._lock_fd, fcntl.LOCK_UN)

    def _path(self, key: bytes) -> Path:
        return self.directory / _filename(key)

    def _read(self, key: bytes) -> _Entry | None:
        """The live entry for ``key``, or ``None`` (absent, expired, malformed)."""
        try:
            with open(self._path(key), "rb") as file:
                data = file.read()
        except FileNotFoundError:
            return None
        except IsADirectoryError:
            return None
        except OSError as err:
            raise BackendError(f"cannot read cache file for {key!r}: {err}") from err
        entry = _decode(data, key)
        if entry is None or (entry.expires and entry.expires <= self._clock()):
            return None
        return entry

    def _write(self, key: bytes, entry: _Entry) -> None:
        """Write atomically: a temp file in the same directory, then ``os.replace``."""
        evict = bool(self._prune_every) and self._writes % self._prune_every == 0
        if evict or self._clock() >= self._next_sweep:
            self._scan(evict)
        self._writes += 1
        tmp = self.directory / f"{_TMP_PREFIX}{os.getpid()}-{threading.get_ident()}"
        try:
            with open(tmp, "wb") as file:
                file.write(_encode(key, entry))
                if self.durable:  # the data on disk before the name points at it
                    file.flush()
                    os.fsync(file.fileno())
            os.replace(tmp, self._path(key))
        except OSError as err:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise BackendError(f"cannot write cache file for {key!r}: {err}") from err
        self._unsynced = self.durable

    def _unlink(self, key: bytes) -> bool:
        try:
            self._path(key).unlink()
        except FileNotFoundError:
            return False
        except OSError as err:
            raise BackendError(f"cannot delete cache file for {key!r}: {err}") from err
        self._unsynced = self.durable
        return True

    def _sync_directory(self) -> None:
        """fsync the directory, so that renames and deletes survive a power loss."""
        try:
            fd = os.open(self.directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError as err:
            raise BackendError(f"cannot sync cache directory {self.directory}: {err}") from err

    def _scan(self, evict: bool) -> None:
        """Remove dead writers' temp files; with ``evict``, make room under ``max_items``.

        Eviction keeps room for the next ``_prune_every`` writes by removing the
        least recently written value files; it runs every ``_prune_every``
        writes. Temp files older than ``_STALE_TMP_SECONDS`` are removed on
        every scan, which happens at least every ``_SWEEP_SECONDS`` of writing.
        Runs under the lock.
        """
        now = time.time()  # file times are real wall-clock times
        self._next_sweep = self._clock() + _SWEEP_SECONDS
        files: list[tuple[int, str]] = []
        stale = 0
        try:
            with os.scandir(self.directory) as entries:
                for item in entries:
                    name = item.name
                    if evict and len(name) == _NAME_LENGTH and not name.startswith("."):
                        with contextlib.suppress(FileNotFoundError):
                            files.append((item.stat().st_mtime_ns, name))
                    elif name.startswith(_TMP_PREFIX):
                        with contextlib.suppress(FileNotFoundError):
                            if now - item.stat().st_mtime > _STALE_TMP_SECONDS:
                                os.unlink(item.path)
                                stale += 1
            if stale:
                logger.debug("removed %d stale temp files from %s", stale, self.directory)
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

    def _expiry(self, seconds: int) -> float:
        return self._clock() + seconds if seconds else 0.0

    # -- unlocked operations: callers hold self._locked() --------------------

    def _get(self, key: bytes) -> bytes | None:
        entry = self._read(key)
        return None if entry is None else entry.value

    def _has(self, key: bytes) -> bool:
        return self._read(key) is not None

    def _set(self, key: bytes, value: bytes, seconds: int) -> None:
        self._write(key, _Entry(value, self._expiry(seconds), _new_version()))

    def _add(self, key: bytes, value: bytes, seconds: int) -> bool:
        if self._read(key) is not None:
            return False
        self._set(key, value, seconds)
        return True

    def _replace(self, key: bytes, value: bytes, seconds: int) -> bool:
        if self._read(key) is None:
            return False
        self._set(key, value, seconds)
        return True

    def _delete(self, key: bytes) -> bool:
        # An expired file is removed too, but reported as absent.
        live = self._read(key) is not None
        return self._unlink(key) and live

    def _incr(self, key: bytes, delta: int) -> int:
        entry = self._read(key)
        # A new counter never expires, like Redis' INCRBY on a missing key.
        current, expires = (
            (0, 0.0) if entry is None else (parse_counter(entry.value, key), entry.expires)
        )
        result = counter_sum(current, delta, key)
        self._write(key, _Entry(str(result).encode("ascii"), expires, _new_version()))
        return result

    def _touch(self, key: bytes, seconds: int) -> bool:
        entry = self._read(key)
        if entry is None:
            return False
        # The value is unchanged, so the version (CAS token) is kept.
        self._write(key, entry._replace(expires=self._expiry(seconds)))
        return True

    def _matches(self, key: bytes, token: CasToken, what: str) -> _Entry | None:
        if isinstance(token, bool) or not isinstance(token, int):
            raise ValidationError(f"{what} needs the token returned by this backend's gets")
        entry = self._read(key)
        return entry if entry is not None and entry.version == token else None

    def _cas(self, key: bytes, value: bytes, token: CasToken, ttl: int | Keep | None) -> bool:
        seconds = None if ttl is KEEP_TTL else resolve_ttl(ttl, self.default_ttl)
        entry = self._matches(key, token, "cas")
        if entry is None:
            return False
        expires = entry.expires if seconds is None else self._expiry(seconds)
        self._write(key, _Entry(value, expires, _new_version()))
        return True

    def _delete_if(self, key: bytes, token: CasToken) -> bool:
        return self._matches(key, token, "delete_if") is not None and self._unlink(key)

    def _gets(self, key: bytes) -> tuple[bytes, CasToken] | None:
        entry = self._read(key)
        return None if entry is None else (entry.value, entry.version)

    # -- the Backend protocol -----------------------------------------------

    def get(self, key: bytes) -> bytes | None:
        """Return the value, or ``None`` when absent, expired or unreadable as ours."""
        entry = self._read(key)
        return None if entry is None else entry.value

    def get_with_ttl(self, key: bytes) -> tuple[bytes, float] | None:
        """Return the value and its remaining seconds (``0.0`` = never), or ``None``."""
        now = self._clock()
        entry = self._read(key)
        if entry is None:
            return None
        if not entry.expires:
            return entry.value, 0.0
        # _read checked the expiry against a later clock reading, so this is > 0
        # unless the wall clock stepped back in between: then it is a miss.
        remaining = entry.expires - now
        return (entry.value, remaining) if remaining > 0 else None

    def get_many_with_ttl(self, *keys: bytes) -> list[tuple[bytes, float] | None]:
        """:meth:`get_with_ttl` for each key, in key order."""
        return [self.get_with_ttl(key) for key in keys]

    def set(self, key: bytes, value: bytes, ttl: TTL = None) -> None:
        """Store ``value`` unconditionally (atomic file replace)."""
        seconds = resolve_ttl(ttl, self.default_ttl)
        with self._locked():
            self._set(key, value, seconds)

    def add(self, key: bytes, value: bytes, ttl: TTL = None) -> bool:
        """Store only if absent, atomically across processes. Return whether it was stored."""
        seconds = resolve_ttl(ttl, self.default_ttl)
        with self._locked():
            return self._add(key, value, seconds)

    def replace(self, key: bytes, value: bytes, ttl: TTL = None) -> bool:
        """Store only if present. Return whether it was stored."""
        seconds = resolve_ttl(ttl, self.default_ttl)
        with self._locked():
            return self._replace(key, value, seconds)

    def delete(self, key: bytes) -> bool:
        """Remove the key's file. Return whether a live value existed."""
        with self._locked():
            return self._delete(key)

    def has(self, key: bytes) -> bool:
        """Return whether the key is present and not expired."""
        return self._read(key) is not None

    def get_many(self, *keys: bytes) -> list[bytes | None]:
        """Return the values in key order, ``None`` for each missing key."""
        return [self.get(key) for key in keys]

    def set_many(self, mapping: Mapping[bytes, bytes], ttl: TTL = None) -> None:
        """Store every pair unconditionally, under one lock."""
        seconds = resolve_ttl(ttl, self.default_ttl)
        with self._locked():
            for key, value in mapping.items():
                self._set(key, value, seconds)

    def replace_many(self, mapping: Mapping[bytes, bytes], ttl: TTL = None) -> list[bool]:
        """Replace each present key; return, in mapping order, whether each was stored."""
        seconds = resolve_ttl(ttl, self.default_ttl)
        with self._locked():
            return [self._replace(key, value, seconds) for key, value in mapping.items()]

    def delete_many(self, *keys: bytes) -> int:
        """Remove the keys; return how many existed."""
        with self._locked():
            return sum(self._delete(key) for key in keys)

    def incr(self, key: bytes, delta: int = 1) -> int:
        """Add ``delta`` atomically (across processes) and return the new value.

        Raises:
            ValidationError: the stored value is not an integer, or ``delta`` is
                not an ``int``.
        """
        delta = check_delta(delta)
        with self._locked():
            return self._incr(key, delta)

    def decr(self, key: bytes, delta: int = 1) -> int:
        """Subtract ``delta`` atomically and return the new value (may go below zero)."""
        delta = check_delta(delta)
        with self._locked():
            return self._incr(key, -delta)

    def touch(self, key: bytes, ttl: TTL = None) -> bool:
        """Reset the key's TTL. Return whether the key exists."""
        seconds = resolve_ttl(ttl, self.default_ttl)
        with self._locked():
            return self._touch(key, seconds)

    def gets(self, key: bytes) -> tuple[bytes, CasToken] | None:
        """Return the value and its stored version as the CAS token, or ``None``."""
        return self._gets(key)

    def cas(
        self, key: bytes, value: bytes, token: CasToken, ttl: int | Keep | None = KEEP_TTL
    ) -> bool:
        """Store ``value`` only if the file still holds version ``token``.

        Raises:
            ValidationError: ``token`` did not come from this backend, or an illegal TTL.
        """
        with self._locked():
            return self._cas(key, value, token, ttl)

    def delete_if(self, key: bytes, token: CasToken) -> bool:
        """Delete the key only if the file still holds version ``token``."""
        with self._locked():
            return self._delete_if(key, token)

    def batch(self, commands: Sequence[Command]) -> list[object]:
        """Run the commands in order under one lock (atomic across processes).

        A command that fails on its own has its :class:`~cacheorm.CacheORMError`
        in its result slot.
        """
        results: list[object] = []
        with self._locked():
            for command in commands:
                try:
                    results.append(apply_local(self, command))
                except CacheORMError as err:
                    results.append(err)
        return results

    def close(self) -> None:
        """Close the lock file. The files stay: they are the cache."""
        with self._thread_lock:
            if self._lock_fd >= 0 and self._lock_pid == os.getpid():
                with contextlib.suppress(OSError):
                    os.close(self._lock_fd)
            self._lock_fd = -1
            self._lock_pid = -1
