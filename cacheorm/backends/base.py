"""The storage contract every backend implements, and the TTL rules they share.

A backend moves ``bytes`` values under ``bytes`` keys. It knows nothing of
records or formats. Every method raises :class:`cacheorm.BackendError` (chained
to the driver's exception) when the server cannot be reached, and
:class:`cacheorm.ValidationError` for an illegal TTL; no driver exception
escapes a backend method.

TTL rules, the same on every backend:

* ``None``: the backend's ``default_ttl`` (``0`` unless configured);
* ``0``: never expires;
* a positive ``int``: seconds, any size (memcached values over 30 days are
  converted to an absolute time by the memcached backend);
* anything else (negative, ``float``, ``bool``): :class:`ValidationError`.
"""

from __future__ import annotations

import asyncio
import enum
import os
import re
import select
import socket
import threading
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import (
    Final,
    NamedTuple,
    Protocol,
    TypeAlias,
    TypeGuard,
    TypeVar,
    assert_never,
    runtime_checkable,
)

from cacheorm.errors import CacheORMError, ValidationError

_T = TypeVar("_T")

__all__ = [
    "KEEP_TTL",
    "AsyncBackend",
    "LoopBinding",
    "Backend",
    "CasToken",
    "Add",
    "Cas",
    "Clear",
    "Command",
    "Delete",
    "DeleteIf",
    "Get",
    "Gets",
    "Has",
    "Incr",
    "Replace",
    "Set",
    "Keep",
    "TTL",
    "apply",
    "apply_async",
    "around_clears",
    "around_clears_async",
    "INT64_MAX",
    "INT64_MIN",
    "check_delta",
    "check_token",
    "counter_sum",
    "forks",
    "glob_escape",
    "in_scope",
    "parse_counter",
    "is_int",
    "resolve_ttl",
]


class Keep(enum.Enum):
    """Sentinel type for :data:`KEEP_TTL`."""

    TTL = "keep-ttl"


KEEP_TTL: Final = Keep.TTL
"""Passed as ``ttl`` to :meth:`Backend.cas`: keep the entry's remaining lifetime."""

TTL: TypeAlias = int | None
CasToken: TypeAlias = object
"""Opaque value returned by :meth:`Backend.gets` and passed back to :meth:`Backend.cas`."""


def resolve_ttl(ttl: object, default: int) -> int:
    """Validate a TTL and apply the backend default.

    Args:
        ttl: ``None`` for the default, ``0`` for never, or positive seconds.
        default: the backend's default TTL, used when ``ttl`` is ``None``.

    Returns:
        The TTL in whole seconds, ``0`` meaning never expires.

    Raises:
        ValidationError: ``ttl`` is negative, not an ``int``, or a ``bool``.
    """
    if ttl is None:
        return default
    if not is_int(ttl):
        raise ValidationError(
            f"ttl must be None, 0 (never expires) or a positive int of seconds, got {ttl!r}"
        )
    if ttl < 0:
        raise ValidationError(f"ttl must not be negative, got {ttl}")
    return ttl


# -- the command vocabulary ---------------------------------------------------
#
# Plans (cacheorm.crud) speak to backends in these commands, and a batch is a
# list of them. Each is a NamedTuple (batches build one per key: a tuple is
# four times cheaper than a frozen dataclass) whose fields carry exactly what
# its command needs, typed, so a command is valid by construction: a TTL is a
# repo's TTL (validated when the repo was built) and only ``Cas`` can carry
# ``KEEP_TTL``. Every place that runs commands matches on ``Command`` with
# ``assert_never`` in its last case, so adding a command is a type error until
# every backend handles it. (Match class patterns without sub-patterns in hot
# loops: capturing fields, as in ``case Set(key, value, ttl)``, costs about
# 0.15 µs per command on CPython 3.11.)
#
# What the types cannot promise is checked once, by the one function that owns
# it: a TTL's range by resolve_ttl (which also applies the default, so batches
# call it per command and put a ValidationError in its slot), a CAS token by
# each backend's own unwrapping function. A backend's public methods, which a
# user may call with anything, check ``delta`` with check_delta at the entry.


class Get(NamedTuple):
    """Read a value. Result: ``bytes | None``."""

    key: bytes


class Gets(NamedTuple):
    """Read a value with a compare-and-set token. Result: ``tuple[bytes, CasToken] | None``."""

    key: bytes


class Set(NamedTuple):
    """Store unconditionally. Result: ``True``."""

    key: bytes
    value: bytes
    ttl: TTL = None


class Add(NamedTuple):
    """Store only if absent. Result: ``bool`` (stored)."""

    key: bytes
    value: bytes
    ttl: TTL = None


class Replace(NamedTuple):
    """Store only if present. Result: ``bool`` (stored)."""

    key: bytes
    value: bytes
    ttl: TTL = None


class Cas(NamedTuple):
    """Store only if unchanged since :class:`Gets` gave ``token``. Result: ``bool``."""

    key: bytes
    value: bytes
    token: CasToken
    ttl: int | Keep | None = KEEP_TTL


class Delete(NamedTuple):
    """Remove the key. Result: ``bool`` (it existed)."""

    key: bytes


class DeleteIf(NamedTuple):
    """Remove the key only if unchanged since :class:`Gets` gave ``token``. Result: ``bool``."""

    key: bytes
    token: CasToken


class Has(NamedTuple):
    """Whether the key is present. Result: ``bool``."""

    key: bytes


class Incr(NamedTuple):
    """Add ``delta`` (may be negative) to a counter. Result: ``int``, the new value."""

    key: bytes
    delta: int


class Clear(NamedTuple):
    """Remove every key that starts with ``prefix`` (and, given ``shape``, fully matches it).

    Result: ``int``, how many keys were removed (see :meth:`Backend.clear_prefix`).
    """

    prefix: bytes
    shape: re.Pattern[bytes] | None = None

    @property
    def key(self) -> bytes:
        """The prefix: what the engine groups and reports commands by."""
        return self.prefix


Command: TypeAlias = Get | Gets | Set | Add | Replace | Cas | Delete | DeleteIf | Has | Incr | Clear
"""One storage command of a plan's phase, or of :meth:`Backend.batch`."""


def in_scope(key: bytes, prefix: bytes, shape: re.Pattern[bytes] | None) -> bool:
    """Whether :class:`Clear` ``(prefix, shape)`` covers ``key``: the one statement of that rule.

    >>> in_scope(b"Person:Sam", b"Person:", None), in_scope(b"PersonX:Sam", b"Person:", None)
    (True, False)
    """
    return key.startswith(prefix) and (shape is None or shape.fullmatch(key) is not None)


_GLOB_SPECIAL: Final = re.compile(rb"([*?\[\]\\])")


def glob_escape(text: bytes) -> bytes:
    r"""``text`` as a Redis glob pattern matching exactly itself (``*?[]\`` escaped).

    >>> glob_escape(b"a*b[1]")
    b'a\\*b\\[1\\]'
    """
    return _GLOB_SPECIAL.sub(rb"\\\1", text)


@runtime_checkable
class Backend(Protocol):
    """What cacheorm needs from a store. All five backends implement it.

    ``incr``/``decr`` treat a missing key as ``0`` and may go below zero on every
    backend. A counter's value is stored as ASCII decimal digits.
    """

    # Read-only here: a plain attribute satisfies it, and so does a property
    # (TieredBackend's, which answers with its far tier's).
    @property
    def default_ttl(self) -> int:
        """Seconds a write lives when it passes ``ttl=None``; ``0`` = never expires."""
        ...

    def get(self, key: bytes) -> bytes | None:
        """Return the value, or ``None`` when the key is absent or expired."""
        ...

    def get_with_ttl(self, key: bytes) -> tuple[bytes, float] | None:
        """Return the value with its remaining lifetime, in one round trip.

        Returns:
            ``(value, seconds)``: ``seconds`` is ``0.0`` when the entry never
            expires, otherwise greater than ``0``; ``None`` when the key is
            absent or expired.
        """
        ...

    def get_many_with_ttl(self, *keys: bytes) -> list[tuple[bytes, float] | None]:
        """:meth:`get_with_ttl` for several keys in one round trip, in key order."""
        ...

    def set(self, key: bytes, value: bytes, ttl: TTL = None) -> None:
        """Store ``value`` unconditionally."""
        ...

    def add(self, key: bytes, value: bytes, ttl: TTL = None) -> bool:
        """Store only if absent, atomically. Return whether it was stored."""
        ...

    def replace(self, key: bytes, value: bytes, ttl: TTL = None) -> bool:
        """Store only if present. Return whether it was stored."""
        ...

    def delete(self, key: bytes) -> bool:
        """Remove the key. Return whether it existed."""
        ...

    def has(self, key: bytes) -> bool:
        """Return whether the key is present (and not expired)."""
        ...

    def get_many(self, *keys: bytes) -> list[bytes | None]:
        """Return the values in key order, ``None`` for each missing key."""
        ...

    def set_many(self, mapping: Mapping[bytes, bytes], ttl: TTL = None) -> None:
        """Store every pair unconditionally."""
        ...

    def replace_many(self, mapping: Mapping[bytes, bytes], ttl: TTL = None) -> list[bool]:
        """Replace each present key; return, in mapping order, whether each was stored."""
        ...

    def delete_many(self, *keys: bytes) -> int:
        """Remove the keys; return how many existed."""
        ...

    def incr(self, key: bytes, delta: int = 1) -> int:
        """Add ``delta`` to the counter atomically and return the new value."""
        ...

    def decr(self, key: bytes, delta: int = 1) -> int:
        """Subtract ``delta`` from the counter atomically and return the new value."""
        ...

    def touch(self, key: bytes, ttl: TTL = None) -> bool:
        """Reset the key's TTL. Return whether the key exists."""
        ...

    def gets(self, key: bytes) -> tuple[bytes, CasToken] | None:
        """Return the value with a compare-and-set token, or ``None`` when absent."""
        ...

    def cas(
        self, key: bytes, value: bytes, token: CasToken, ttl: int | Keep | None = KEEP_TTL
    ) -> bool:
        """Store ``value`` only if the key is unchanged since ``gets`` returned ``token``.

        ``ttl=KEEP_TTL`` keeps the entry's remaining lifetime. Returns ``False`` when
        the key changed or disappeared in between (nothing was written).
        """
        ...

    def delete_if(self, key: bytes, token: CasToken) -> bool:
        """Delete the key only if unchanged since ``gets`` returned ``token``."""
        ...

    def clear_prefix(self, prefix: bytes, shape: re.Pattern[bytes] | None = None) -> int:
        """Remove every key that :func:`in_scope` says ``(prefix, shape)`` covers.

        Every other key is left alone. Not atomic: the store is walked in
        batches, so a key written meanwhile may survive (as with Redis
        ``SCAN``). Returns how many keys were removed.
        """
        ...

    def batch(self, commands: Sequence[Command]) -> list[object]:
        """Run the commands in as few round trips as the store allows.

        Results are returned in order; a command that failed on its own has the
        exception (a :class:`cacheorm.CacheORMError`) in its slot instead of
        raising, so one bad command does not hide the others' results.
        """
        ...

    def ping(self) -> None:
        """Return when the store answers; raise :class:`cacheorm.BackendError` when it cannot.

        A health check for start-up and readiness probes: it does one small
        round trip to every server the backend uses (each node of a memcached
        pool, both tiers of a tiered backend), or checks that a cache
        directory can be written, and changes no stored value. The error's
        ``server`` names the server that failed (``"host:port"``) where there
        is one.
        """
        ...

    def close(self) -> None:
        """Release connections and other resources. The backend is unusable after."""
        ...


@runtime_checkable
class AsyncBackend(Protocol):
    """The coroutine twin of :class:`Backend`, for :mod:`cacheorm.aio`.

    Every method has the same semantics, results and errors as its
    :class:`Backend` namesake, and the same bytes on the wire (keys, payloads,
    TTLs, CAS tokens), so a sync and an async process share one cache. A call
    cancelled at any await leaves no broken connection behind: a connection
    whose exchange was interrupted is discarded, never reused.
    """

    @property
    def default_ttl(self) -> int:
        """Seconds a write lives when it passes ``ttl=None``; ``0`` = never expires."""
        ...

    async def get(self, key: bytes) -> bytes | None:
        """See :meth:`Backend.get`."""
        ...

    async def get_with_ttl(self, key: bytes) -> tuple[bytes, float] | None:
        """See :meth:`Backend.get_with_ttl`."""
        ...

    async def get_many_with_ttl(self, *keys: bytes) -> list[tuple[bytes, float] | None]:
        """See :meth:`Backend.get_many_with_ttl`."""
        ...

    async def set(self, key: bytes, value: bytes, ttl: TTL = None) -> None:
        """See :meth:`Backend.set`."""
        ...

    async def add(self, key: bytes, value: bytes, ttl: TTL = None) -> bool:
        """See :meth:`Backend.add`."""
        ...

    async def replace(self, key: bytes, value: bytes, ttl: TTL = None) -> bool:
        """See :meth:`Backend.replace`."""
        ...

    async def delete(self, key: bytes) -> bool:
        """See :meth:`Backend.delete`."""
        ...

    async def has(self, key: bytes) -> bool:
        """See :meth:`Backend.has`."""
        ...

    async def get_many(self, *keys: bytes) -> list[bytes | None]:
        """See :meth:`Backend.get_many`."""
        ...

    async def set_many(self, mapping: Mapping[bytes, bytes], ttl: TTL = None) -> None:
        """See :meth:`Backend.set_many`."""
        ...

    async def replace_many(self, mapping: Mapping[bytes, bytes], ttl: TTL = None) -> list[bool]:
        """See :meth:`Backend.replace_many`."""
        ...

    async def delete_many(self, *keys: bytes) -> int:
        """See :meth:`Backend.delete_many`."""
        ...

    async def incr(self, key: bytes, delta: int = 1) -> int:
        """See :meth:`Backend.incr`."""
        ...

    async def decr(self, key: bytes, delta: int = 1) -> int:
        """See :meth:`Backend.decr`."""
        ...

    async def touch(self, key: bytes, ttl: TTL = None) -> bool:
        """See :meth:`Backend.touch`."""
        ...

    async def gets(self, key: bytes) -> tuple[bytes, CasToken] | None:
        """See :meth:`Backend.gets`."""
        ...

    async def cas(
        self, key: bytes, value: bytes, token: CasToken, ttl: int | Keep | None = KEEP_TTL
    ) -> bool:
        """See :meth:`Backend.cas`."""
        ...

    async def delete_if(self, key: bytes, token: CasToken) -> bool:
        """See :meth:`Backend.delete_if`."""
        ...

    async def clear_prefix(self, prefix: bytes, shape: re.Pattern[bytes] | None = None) -> int:
        """See :meth:`Backend.clear_prefix`."""
        ...

    async def batch(self, commands: Sequence[Command]) -> list[object]:
        """See :meth:`Backend.batch`."""
        ...

    async def ping(self) -> None:
        """Return when the store answers; raise :class:`cacheorm.BackendError` when it cannot."""
        ...

    async def aclose(self) -> None:
        """Release connections and other resources. The backend is unusable after."""
        ...


def apply(backend: Backend, command: Command) -> object:
    """Run one :data:`Command` through ``backend``'s own methods and return its result.

    The engine uses it for a lone command, and a backend without a native
    pipeline may use it for its ``batch``.
    """
    # Class patterns without captures: a capture costs ~0.15 us per command on
    # CPython 3.11, and a lone get is the hottest path there is.
    match command:  # the commonest first: each case is an isinstance check
        case Get():
            return backend.get(command.key)
        case Set():
            backend.set(command.key, command.value, command.ttl)
            return True
        case Delete():
            return backend.delete(command.key)
        case Gets():
            return backend.gets(command.key)
        case Cas():
            return backend.cas(command.key, command.value, command.token, command.ttl)
        case Add():
            return backend.add(command.key, command.value, command.ttl)
        case Replace():
            return backend.replace(command.key, command.value, command.ttl)
        case DeleteIf():
            return backend.delete_if(command.key, command.token)
        case Has():
            return backend.has(command.key)
        case Incr():
            return backend.incr(command.key, command.delta)
        case Clear():
            return backend.clear_prefix(command.prefix, command.shape)
        case _:
            assert_never(command)


def apply_async(backend: AsyncBackend, command: Command) -> Awaitable[object]:
    """:func:`apply` for an :class:`AsyncBackend`: the awaitable result of one command.

    The backend's own coroutine is returned, not wrapped in another (one frame
    less on every call of the async driver).
    """
    match command:  # in apply's order
        case Get():
            return backend.get(command.key)
        case Set():
            return _true_after(backend.set(command.key, command.value, command.ttl))
        case Delete():
            return backend.delete(command.key)
        case Gets():
            return backend.gets(command.key)
        case Cas():
            return backend.cas(command.key, command.value, command.token, command.ttl)
        case Add():
            return backend.add(command.key, command.value, command.ttl)
        case Replace():
            return backend.replace(command.key, command.value, command.ttl)
        case DeleteIf():
            return backend.delete_if(command.key, command.token)
        case Has():
            return backend.has(command.key)
        case Incr():
            return backend.incr(command.key, command.delta)
        case Clear():
            return backend.clear_prefix(command.prefix, command.shape)
        case _:
            assert_never(command)


async def _true_after(stored: Awaitable[None]) -> bool:
    await stored
    return True


def around_clears(
    commands: Sequence[Command],
    batch: Callable[[Sequence[Command]], list[object]],
    clear: Callable[[bytes, re.Pattern[bytes] | None], int],
) -> list[object]:
    """A batch holding :class:`Clear` commands, in order: the commands between them
    through ``batch``, each clear through ``clear`` (its error in its slot).

    For a backend whose batch cannot pipeline a clear (it takes round trips of its own).
    """
    results: list[object] = []
    start = 0
    for index, command in enumerate(commands):
        if isinstance(command, Clear):
            if index > start:
                results += batch(commands[start:index])
            try:
                results.append(clear(command.prefix, command.shape))
            except CacheORMError as err:
                results.append(err)
            start = index + 1
    if start < len(commands):
        results += batch(commands[start:])
    return results


async def around_clears_async(
    commands: Sequence[Command],
    batch: Callable[[Sequence[Command]], Awaitable[list[object]]],
    clear: Callable[[bytes, re.Pattern[bytes] | None], Awaitable[int]],
) -> list[object]:
    """:func:`around_clears` for an :class:`AsyncBackend`."""
    results: list[object] = []
    start = 0
    for index, command in enumerate(commands):
        if isinstance(command, Clear):
            if index > start:
                results += await batch(commands[start:index])
            try:
                results.append(await clear(command.prefix, command.shape))
            except CacheORMError as err:
                results.append(err)
            start = index + 1
    if start < len(commands):
        results += await batch(commands[start:])
    return results


# Signed 64-bit: what Redis counters, msgpack, protobuf int64 and most JSON
# readers carry exactly. The one statement of the bounds: field rules
# (cacheorm.fields) enforce them on stored integers, counters here.
INT64_MIN: Final = -(2**63)
INT64_MAX: Final = 2**63 - 1


def is_int(value: object) -> TypeGuard[int]:
    """Whether ``value`` is an ``int`` and not a ``bool`` (``True`` is no number here).

    The one statement of that rule, for TTLs, deltas, tokens, sizes and fields.

    >>> is_int(3), is_int(True), is_int(3.0)
    (True, False, False)
    """
    return type(value) is int or (isinstance(value, int) and not isinstance(value, bool))


def counter_sum(current: int, delta: int, key: bytes) -> int:
    """``current + delta`` for a counter, which every backend keeps in signed 64 bits.

    Raises:
        ValidationError: the result leaves the signed 64-bit range (as on Redis).
    """
    result = current + delta
    if not INT64_MIN <= result <= INT64_MAX:
        raise ValidationError(
            f"cannot incr/decr {key!r}: {current} + {delta} leaves the signed 64-bit range"
        )
    return result


_COUNTER: Final = re.compile(rb"-?[0-9]+\Z")


def parse_counter(value: bytes, key: bytes) -> int:
    """Read a counter stored as ASCII decimal digits.

    Raises:
        ValidationError: the stored value is not an integer.
    """
    if _COUNTER.match(value) is None:
        raise ValidationError(f"cannot incr/decr {key!r}: its value is not an integer")
    return int(value)


def check_delta(delta: object) -> int:
    """Return ``delta`` if it is an ``int`` (not a ``bool``), else raise ValidationError."""
    if not is_int(delta):
        raise ValidationError(f"delta must be an int, got {delta!r}")
    return delta


def check_token(token: CasToken, kind: type[_T], op: str) -> _T:
    """Return ``token`` as the backend's own token type ``kind`` (what its ``gets`` gives).

    Raises:
        ValidationError: ``token`` came from elsewhere (another backend, or made up).
    """
    if not isinstance(token, kind):
        raise ValidationError(f"{op} needs the token returned by this backend's gets")
    return token


# -- connections bound to a process and an event loop ---------------------------------

_FORKS = [0]


def _count_fork() -> None:
    _FORKS[0] += 1


os.register_at_fork(after_in_child=_count_fork)


def forks() -> int:
    """A number that changes in the child of every ``os.fork()`` (cheaper than a ``getpid``)."""
    return _FORKS[0]


class LoopBinding:
    """The process and event loop an async backend's connections belong to.

    :meth:`moved` is asked before every call: cheap while the loop that ran
    the last call runs this one (no ``getpid`` or ``get_running_loop`` system
    work: a thread runs one event loop at a time, so if the held loop is
    running in this thread, this call runs in it).
    """

    __slots__ = ("forks", "loop", "thread")

    def __init__(self) -> None:
        self.loop: asyncio.AbstractEventLoop | None = None
        self.thread = 0
        self.forks = _FORKS[0]

    def moved(self) -> str | None:
        """``None`` while this call runs where the last one did; else what changed.

        ``"fork"``: this process is a fork's child (the connections are the
        parent's); ``"loop"``: another event loop (or the first call). The
        running loop is held from now on.
        """
        loop = self.loop
        if (
            loop is not None
            and self.forks == _FORKS[0]
            and self.thread == threading.get_ident()
            and loop.is_running()
        ):
            return None
        running = asyncio.get_running_loop()
        forked = self.forks != _FORKS[0]
        if running is loop and not forked:
            self.thread = threading.get_ident()
            return None
        self.loop, self.thread, self.forks = running, threading.get_ident(), _FORKS[0]
        return "fork" if forked else "loop"


# -- connections kept between calls, and reads from their sockets ---------------------

FRESH: Final = 0.02
"""Seconds after a sound exchange during which a kept connection is reused without a
:func:`stale` check (a system call per call saved; a server restarted within them costs a
call a ``BackendError``, or a resend where the backend's rules allow one)."""


def stale(sock: socket.socket) -> bool:
    """Whether an idle connection can be read from: only a closed or broken one can."""
    poller = select.poll()
    poller.register(sock, select.POLLIN)
    return bool(poller.poll(0))


READ_SIZE: Final = 64 * 1024
"""Bytes one read from a server's socket asks for (unless a value known to be larger is
arriving). Kept under glibc's 128 KiB mmap threshold: a Python ``sock.recv(n)`` allocates
an ``n``-byte buffer first, and above the threshold that is an ``mmap`` costing ~20 µs of
CPU per read however few bytes arrive (measured: 256 KiB ~23 µs, 64 KiB ~4 µs)."""


class BufferedReads(asyncio.BufferedProtocol):
    """A protocol whose reads land in a :data:`READ_SIZE` buffer of its own.

    asyncio's plain ``Protocol`` reads with ``sock.recv(256 KiB)`` (the cost
    :data:`READ_SIZE` avoids); this reads into one reused buffer and hands
    each read's bytes to :meth:`data_received`, as a plain protocol gets them.
    When :meth:`awaited` says more is on its way (the rest of a large value),
    the read gets a buffer that size, so a large value takes few reads.
    """

    __slots__ = ("_buffer", "_read_view")

    def __init__(self) -> None:
        self._buffer = memoryview(bytearray(READ_SIZE))
        self._read_view = self._buffer  # where the current read lands

    def awaited(self) -> int:
        """How many more bytes the reply being read needs at least (0: unknown)."""
        return 0

    def get_buffer(self, sizehint: int) -> memoryview:
        awaited = self.awaited()
        view = memoryview(bytearray(awaited)) if awaited > READ_SIZE else self._buffer
        self._read_view = view
        return view

    def buffer_updated(self, nbytes: int) -> None:
        self.data_received(self._read_view[:nbytes].tobytes())

    def data_received(self, data: bytes) -> None:
        raise NotImplementedError
