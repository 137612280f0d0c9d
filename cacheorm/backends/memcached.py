"""The memcached backend: memcached's text protocol, pipelined per server.

pymemcache is imported only when a :class:`MemcachedBackend` is built, so
``import cacheorm`` works without it. cacheorm takes from pymemcache its
clients' settings and sockets (addresses, timeouts, socket options, TLS, key
prefix) and the rendezvous hashing that places keys on a pool, but speaks the
protocol itself. Five memcached matters are handled here:

* **Keys.** memcached forbids empty keys, whitespace, control characters,
  non-ASCII bytes and keys over 250 bytes. :func:`memcached_key` maps every
  ``bytes`` key to a legal one, injectively and the same in every process.
* **TTLs.** memcached reads an expiry over 30 days as an absolute unix time; the
  backend converts. Each item also carries its absolute expiry in its 32-bit
  *flags*, so :meth:`MemcachedBackend.cas` can keep the remaining lifetime
  (``KEEP_TTL``), which the classic protocol cannot otherwise tell.
* **Counters.** ``decr`` clamps at zero and a negative number is not numeric to
  memcached, so counters fall back to a ``gets``/``cas`` loop whenever a value
  is or would become negative; a missing counter counts as ``0``, like Redis.
* **Faults.** Every call, of one key or of a batch, sends all of a server's
  commands at once and then reads the replies, which memcached sends back in
  order; the servers of a pool are served at the same time. A server that is
  down or hung therefore costs one connect or read timeout per call, whatever
  the number of keys: once it failed, the rest of that call's commands for it
  fail at once with the same :class:`~cacheorm.BackendError`, whose ``server``
  names it, while the keys of the other servers are served. No command is ever
  sent twice: a write whose connection failed after it was sent raises a
  ``BackendError`` saying that its outcome is unknown.
* **Processes.** A forked child never uses its parent's sockets: it opens its
  own on first use (the parent's stay the parent's).

The protocol is written without I/O, so that :mod:`cacheorm.backends.amemcached`
runs the very same code on asyncio: each command is a generator of requests
(``_Steps``), ``_Exchange`` frames a server's requests and parses its replies,
``_enqueue``/``_start_round``/``_end_round`` make the rounds of a call and
``_Placer`` places keys. Only the transport (``_converse`` here) is per driver.
"""

from __future__ import annotations

import base64
import hashlib
import itertools
import logging
import math
import os
import re
import select
import socket
import ssl
import threading
import time
import weakref
from collections.abc import Callable, Container, Generator
from typing import (
    TYPE_CHECKING,
    Final,
    Generic,
    NamedTuple,
    NoReturn,
    Protocol,
    TypeAlias,
    TypeVar,
    assert_never,
    cast,
)
from urllib.parse import unquote_to_bytes

from cacheorm.backends import base
from cacheorm.backends.base import (
    FRESH,
    KEEP_TTL,
    READ_SIZE,
    TTL,
    CasToken,
    Command,
    Keep,
    resolve_ttl,
    stale,
)
from cacheorm.errors import (
    BackendError,
    CacheORMError,
    ConflictError,
    ValidationError,
    ValueTooLarge,
)

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    from pymemcache.client.base import Client
    from pymemcache.client.hash import HashClient

__all__ = ["MemcachedBackend", "memcached_key"]

logger = logging.getLogger(__name__)

_T = TypeVar("_T")
_T_co = TypeVar("_T_co", covariant=True)

MAX_KEY_LENGTH: Final = 250
"""memcached's limit on a key, in bytes."""

_THIRTY_DAYS: Final = 30 * 24 * 3600
"""memcached reads an expiry above this as an absolute unix time."""

# A key passes through unchanged when it is 1-250 printable, non-space ASCII bytes
# and does not start with "~", the marker that every encoded key starts with. That
# keeps pass-through and encoded keys disjoint, which makes the mapping injective.
_PLAIN_KEY = re.compile(rb"[!-}][!-~]{0,249}")
_PLAIN_KEYS = re.compile(rb"[!-}][!-~]{0,249}(?: [!-}][!-~]{0,249})*")
"""Keys joined by spaces, each a :data:`_PLAIN_KEY` (a space is in none: they stay apart)."""
_B64_PREFIX: Final = b"~b"
_HASH_PREFIX: Final = b"~h"
_MAX_B64_SOURCE: Final = (MAX_KEY_LENGTH - len(_B64_PREFIX)) // 4 * 3  # 186 bytes

_MAX_DEADLINE: Final = 2**32 - 1
"""The last unix time an item's 32-bit flags (and memcached's exptime) can hold."""

_CAS_RETRIES: Final = 64

PING_KEY: Final = b"~ping"
"""The key ``ping`` reads on every server: :func:`memcached_key` never makes a key like it."""

_EXPIRING: Final = 0.001
"""Remaining seconds reported for an item memcached still serves past its deadline."""

_PLACEMENT_CACHE: Final = 4096
"""How many key -> server placements a pool remembers (rendezvous hashing is slow in Python)."""

_STORE_REPLIES: Final = frozenset({b"STORED", b"NOT_STORED"})
_CAS_REPLIES: Final = frozenset({b"STORED", b"EXISTS", b"NOT_FOUND"})
_DELETE_REPLIES: Final = frozenset({b"DELETED", b"NOT_FOUND"})
_COUNTER_REPLIES: Final = frozenset({b"NOT_FOUND"})  # or the new value


def memcached_key(key: bytes) -> bytes:
    """Map any ``bytes`` key to a key memcached accepts, injectively and deterministically.

    * a key of 1 to 250 printable, non-space ASCII bytes that does not start
      with ``~`` is used as is;
    * any other key of up to 186 bytes becomes ``~b`` + its URL-safe base64
      (reversible, so distinct keys stay distinct);
    * a longer key becomes ``~h`` + the URL-safe base64 of its SHA-256.

    Args:
        key: the key as the layers above build it.

    Returns:
        A legal memcached key of at most 250 bytes.

    Examples:
        >>> memcached_key(b"person:Sam")
        b'person:Sam'
        >>> memcached_key(b"a b")
        b'~bYSBi'
        >>> len(memcached_key(b"x" * 1000))
        46
    """
    if _PLAIN_KEY.fullmatch(key) is not None:
        return key
    if len(key) <= _MAX_B64_SOURCE:
        return _B64_PREFIX + base64.urlsafe_b64encode(key)
    return _HASH_PREFIX + base64.urlsafe_b64encode(hashlib.sha256(key).digest())


def original_key(key: bytes) -> bytes | None:
    """The key that :func:`memcached_key` mapped to ``key``: its inverse.

    ``None`` for a hashed key (``~h``: a key over 186 bytes that memcached
    could not take as it is; its original cannot be recovered) and for a key
    :func:`memcached_key` never makes.

    >>> original_key(memcached_key(b"a b")), original_key(b"person:Sam")
    (b'a b', b'person:Sam')
    """
    if key.startswith(_B64_PREFIX):
        try:
            original = base64.b64decode(key[len(_B64_PREFIX) :], altchars=b"-_", validate=True)
        except ValueError:  # binascii.Error included
            return None
        return original if memcached_key(original) == key else None
    return key if _PLAIN_KEY.fullmatch(key) is not None else None


def _server_name(server: tuple[str, int] | str) -> str:
    """``"host:port"`` for a TCP server, the path for a UNIX socket (as HashClient names them)."""
    return server if isinstance(server, str) else f"{server[0]}:{server[1]}"


def _expiry(ttl: int) -> tuple[int, int]:
    """Return ``(exptime, flags)`` for a resolved TTL: what to send, what to remember."""
    if ttl == 0:
        return 0, 0
    deadline = int(time.time()) + ttl
    if deadline > _MAX_DEADLINE:  # beyond 2106, as memcached's 32-bit times go: never
        return 0, 0
    return (ttl if ttl <= _THIRTY_DAYS else deadline), deadline


def _kept_expiry(flags: int) -> int:
    """The exptime that keeps an item's remaining lifetime, from its flags."""
    if flags <= _THIRTY_DAYS:  # 0 = never; small values are not ours: treat as never
        return 0
    remaining = flags - int(time.time())
    # At least one second: 0 would mean "never expires".
    return max(remaining, 1) if remaining <= _THIRTY_DAYS else flags


# -- the protocol: requests, replies, and the steps of each command ------------------

_Item: TypeAlias = tuple[bytes, int, bytes]
"""A fetched item: its value, its flags, and its CAS unique (``b""`` from a plain ``get``)."""


class _Fetch(NamedTuple):
    """Read one key; consecutive fetches for one server share one ``get``/``gets`` line."""

    key: bytes
    cas: bool


class _Line(NamedTuple):
    """A command memcached answers with one line: a store, ``delete``, ``incr`` or ``decr``."""

    verb: bytes
    key: bytes
    tail: bytes
    """What follows the key: the arguments, the line end and any data block."""
    replies: frozenset[bytes]
    """The answers that are not errors (for counters, a number as well)."""

    def framed(self, prefix: bytes) -> bytes:
        """The command as sent, its key under a client's key ``prefix``."""
        return self.verb + b" " + prefix + self.key + self.tail

    def answered_by(self, line: bytes) -> bool:
        """Whether ``line`` answers the command (else it is an error reply)."""
        replies = self.replies
        return line in replies or (replies is _COUNTER_REPLIES and line.isdigit())


class _Listing(NamedTuple):
    """A command answered with lines and ``END`` (``stats``, ``lru_crawler metadump all``).

    Sent alone: memcached refuses a metadump pipelined behind other commands.
    Each line (its line end removed) goes through ``pick``, and what it
    returns (``None``: nothing) is kept, so memory follows what is picked, not
    the size of the store: a metadump streams one line per item.
    """

    command: bytes
    pick: Callable[[bytes], bytes | None]


_METADUMP: Final = b"lru_crawler metadump all"
_LISTING_ERRORS: Final = (b"ERROR", b"CLIENT_ERROR", b"SERVER_ERROR", b"BUSY")


class _Busy(BackendError):
    """A server's LRU crawler is busy (another client's metadump): ask again a little later."""


_Reply: TypeAlias = "_Item | bytes | list[bytes] | None"
"""A request's reply: the item or ``None`` for a :class:`_Fetch`, the line for a
:class:`_Line`, the picked lines for a :class:`_Listing`."""

_Steps: TypeAlias = Generator["_Fetch | _Line", _Reply, _T]
"""A command as a generator: it yields requests, is sent their replies, returns its result.

A reply that is an error (``SERVER_ERROR`` ...) is thrown into the generator instead.
"""


class _Job(NamedTuple, Generic[_T_co]):
    """A command ready to run, with its memcached key.

    A command of one request gives ``request`` and ``finish``, which makes its
    result of the reply; any other gives ``steps``. ``final``: it never sends a
    second request (a store may: it deletes the old value when refused as too
    large), so later commands on its key need not wait for its reply.
    """

    key: bytes
    final: bool
    steps: _Steps[_T_co] | None = None
    request: _Fetch | _Line | _Listing | None = None
    finish: Callable[[_Reply], _T_co] | None = None


def _fetch(key: bytes, cas: bool = False) -> _Steps[_Item | None]:
    return cast("_Item | None", (yield _Fetch(key, cas)))


def _send(verb: bytes, key: bytes, tail: bytes, replies: frozenset[bytes]) -> _Steps[bytes]:
    return cast("bytes", (yield _Line(verb, key, tail, replies)))


def _storage(
    verb: bytes, key: bytes, value: bytes, exptime: int, flags: int, unique: bytes = b""
) -> _Line:
    """A storage command (``cas`` when ``unique`` is given)."""
    if unique:
        tail = b" %d %d %d %b\r\n%b\r\n" % (flags, exptime, len(value), unique, value)
        return _Line(verb, key, tail, _CAS_REPLIES)
    return _Line(
        verb, key, b" %d %d %d\r\n%b\r\n" % (flags, exptime, len(value), value), _STORE_REPLIES
    )


def _refused(key: bytes, error: ValueTooLarge) -> _Steps[NoReturn]:
    """After a write refused as too large: delete the old value, then report the refusal.

    The old value must not be served in place of the value that replaced it.
    """
    yield _Line(b"delete", key, b"\r\n", _DELETE_REPLIES)
    raise error


def _store(request: _Line) -> _Steps[bytes]:
    """Send a storage command; return its reply line."""
    try:
        return cast("bytes", (yield request))
    except ValueTooLarge as err:
        return (yield from _refused(request.key, err))


def _counter(verb: bytes, key: bytes, delta: int) -> _Steps[int | None]:
    line = yield from _send(verb, key, b" %d\r\n" % delta, _COUNTER_REPLIES)
    return None if line == b"NOT_FOUND" else int(line)


def _value_of(reply: _Reply) -> bytes | None:
    return reply[0] if type(reply) is tuple else None  # an item, or None: a miss


def _present(reply: _Reply) -> bool:
    return reply is not None


def _token_of(reply: _Reply) -> tuple[bytes, CasToken] | None:
    if reply is None:
        return None
    value, flags, unique = cast("_Item", reply)
    return value, _McToken(unique, flags)


def _lifetime_of(reply: _Reply) -> tuple[bytes, float] | None:
    return _with_ttl(cast("_Item | None", reply), time.time())


def _deleted(reply: _Reply) -> bool:
    return reply == b"DELETED"


def _stored(reply: _Reply) -> bool:
    return reply == b"STORED"


def _set(reply: _Reply) -> bool:
    if reply != b"STORED":  # memcached answers a set with STORED or an error
        raise BackendError(f"memcached did not store the value: {reply!r}")
    return True


def _get_job(key: bytes) -> _Job[bytes | None]:
    return _Job(key, True, None, _Fetch(key, False), _value_of)  # positional: the hot path


def _has_job(key: bytes) -> _Job[bool]:
    return _Job(key, True, None, _Fetch(key, False), _present)  # positional: cheaper


def _gets_job(key: bytes) -> _Job[tuple[bytes, CasToken] | None]:
    return _Job(key, True, None, _Fetch(key, True), _token_of)


def _ttl_job(key: bytes) -> _Job[tuple[bytes, float] | None]:
    return _Job(key, True, None, _Fetch(key, False), _lifetime_of)


def _keys_of(reply: _Reply) -> list[bytes]:
    return cast("list[bytes]", reply)


def _listing_job(request: _Listing) -> _Job[list[bytes]]:
    return _Job(b"", True, request=request, finish=_keys_of)


def _delete_job(key: bytes) -> _Job[bool]:
    return _Job(key, True, None, _Line(b"delete", key, b"\r\n", _DELETE_REPLIES), _deleted)


def _write_job(verb: bytes, key: bytes, value: bytes, expiry: tuple[int, int]) -> _Job[bool]:
    """``set``/``add``/``replace`` with a resolved ``(exptime, flags)``: whether it stored."""
    request = _storage(verb, key, value, *expiry)
    return _Job(key, False, None, request, _set if verb == b"set" else _stored)  # positional: hot


def _write_expiry(ttl: TTL, default: int) -> tuple[int, int]:
    """``(exptime, flags)`` of a ``set``/``add``/``replace``/``touch`` TTL.

    Raises:
        ValidationError: an illegal TTL.
    """
    return _expiry(resolve_ttl(ttl, default))


def _cas_job(
    key: bytes, value: bytes, token: CasToken, ttl: int | Keep | None, default: int
) -> _Job[bool]:
    """A ``cas``: whether it stored (a store refused as too large deletes the old value).

    Raises:
        ValidationError: a token that is not this backend's, or an illegal TTL.
    """
    token = base.check_token(token, _McToken, "cas")
    if ttl is KEEP_TTL:  # re-send the absolute expiry remembered in the item's flags
        exptime, flags = _kept_expiry(token.flags), token.flags
    else:
        exptime, flags = _expiry(resolve_ttl(ttl, default))
    return _Job(
        key, False, request=_storage(b"cas", key, value, exptime, flags, token.cas), finish=_stored
    )


def _delete_if_job(key: bytes, token: CasToken) -> _Job[bool]:
    """Delete if unchanged: memcached has no compare-and-delete, so a ``cas`` with a
    negative exptime writes an already-expired item, which no later read can see.

    Raises:
        ValidationError: a token that is not this backend's.
    """
    token = base.check_token(token, _McToken, "delete_if")
    return _Job(key, True, None, _storage(b"cas", key, b"", -1, 0, token.cas), _stored)


def _touch_steps(key: bytes, ttl: TTL, default: int) -> _Steps[bool]:
    """``gets`` + ``cas`` rather than memcached ``touch``: the flags must learn the new expiry."""
    exptime, flags = _write_expiry(ttl, default)
    for _ in range(_CAS_RETRIES):
        item = yield from _fetch(key, cas=True)
        if item is None:
            return False
        reply = yield from _store(_storage(b"cas", key, item[0], exptime, flags, item[2]))
        if reply != b"EXISTS":
            return reply == b"STORED"
    raise ConflictError(f"memcached touch of {key!r} lost {_CAS_RETRIES} races in a row")


def _incr_steps(key: bytes, delta: int) -> _Steps[int]:
    """Native ``incr`` where memcached can do it (non-negative value and delta), else a cas loop."""
    if 0 <= delta <= base.INT64_MAX:
        for _ in range(_CAS_RETRIES):
            try:
                result = yield from _counter(b"incr", key, delta)
            except BackendError as err:
                from pymemcache.exceptions import MemcacheClientError

                if not isinstance(err.__cause__, MemcacheClientError):
                    raise
                break  # "non-numeric value": a negative counter; the cas loop handles it
            if result is not None:
                if result > base.INT64_MAX:  # memcached counts in unsigned 64 bits; we don't
                    yield from _undo_incr_steps(key, delta)
                    base.counter_sum(result - delta, delta, key)  # raises ValidationError
                return result
            if (yield from _store(_storage(b"add", key, b"%d" % delta, 0, 0))) == b"STORED":
                return delta
    return (yield from _cas_add_steps(key, delta))


def _undo_incr_steps(key: bytes, delta: int) -> _Steps[None]:
    """Take back a native ``incr`` of ``delta`` that left the signed 64-bit range.

    A native ``decr`` does it in one request, but memcached may refuse it as
    "non-numeric": for a number of 2**63 or more its ``safe_strtoull`` looks
    for a minus sign with ``strchr``, which runs past the end of the value
    (items are not NUL-terminated) into whatever an earlier item left in the
    slab, so a stray ``-`` there fails the ``decr`` (memcached 1.6.18; it
    depends on the memory's history, hence seldom). Then a ``gets``/``cas``
    loop subtracts ``delta`` instead (spaces ignored: memcached pads a number
    it shortened in place); a value that is no number any more, or gone, has
    nothing of ours left to undo.
    """
    try:
        yield from _counter(b"decr", key, delta)
        return
    except BackendError as err:
        from pymemcache.exceptions import MemcacheClientError

        if not isinstance(err.__cause__, MemcacheClientError):
            raise
    for _ in range(_CAS_RETRIES):
        item = yield from _fetch(key, cas=True)
        digits = b"" if item is None else item[0].strip(b" ")
        if not digits.isdigit():
            return  # gone, or overwritten by a non-number: nothing of ours is left
        _, flags, unique = cast("_Item", item)
        new = b"%d" % max(int(digits) - delta, 0)
        reply = yield from _store(_storage(b"cas", key, new, _kept_expiry(flags), flags, unique))
        if reply != b"EXISTS":
            return
    raise ConflictError(f"memcached incr of {key!r} lost {_CAS_RETRIES} races in a row")


def _cas_add_steps(key: bytes, delta: int) -> _Steps[int]:
    """Add ``delta`` with a ``gets``/``cas`` loop (for values memcached cannot incr)."""
    for _ in range(_CAS_RETRIES):
        item = yield from _fetch(key, cas=True)
        if item is None:
            if (yield from _store(_storage(b"add", key, b"%d" % delta, 0, 0))) == b"STORED":
                return delta
            continue
        value, flags, unique = item
        new = base.counter_sum(base.parse_counter(value, key), delta, key)
        reply = yield from _store(
            _storage(b"cas", key, b"%d" % new, _kept_expiry(flags), flags, unique)
        )
        if reply == b"STORED":
            return new
    raise ConflictError(f"memcached incr of {key!r} lost {_CAS_RETRIES} races in a row")


class _McToken(NamedTuple):
    """What :meth:`MemcachedBackend.gets` hands out: the CAS unique and the item flags."""

    cas: bytes
    flags: int


def _with_ttl(item: _Item | None, now: float) -> tuple[bytes, float] | None:
    """An item with the lifetime its flags remember.

    Flags hold the absolute deadline written by this backend (``0`` = never;
    small values were not written by us: never, as in ``_kept_expiry``). The
    deadline is rounded down to a whole second, and memcached's clock ticks in
    whole seconds, so an item may still be served a little past it: it is then
    reported as about to expire rather than as a miss, agreeing with ``get``.
    """
    if item is None:
        return None
    value, deadline, _ = item
    if deadline <= _THIRTY_DAYS:
        return value, 0.0
    return value, max(deadline - now, _EXPIRING)


# -- the transport: one pipelined exchange per server and round ---------------------


class _Node:
    """One memcached server: the pymemcache ``Client`` that holds its socket, and its name."""

    __slots__ = ("client", "name", "owned", "prefix", "timeout", "used")

    def __init__(self, client: Client, name: str, owned: bool) -> None:
        self.client = client
        self.name = name
        self.owned = owned
        self.used = 0.0  # time.monotonic() when its last exchange ended well
        self.prefix = client.key_prefix
        self.timeout = math.inf if client.timeout is None else client.timeout


_NO_REQUEST: Final = _Fetch(b"", False)
_LISTING: Final = frozenset({b"listing"})
"""The ``wanted`` of a :class:`_Listing`'s group in an :class:`_Exchange` (told by identity)."""


class _Task:
    """A command in flight inside one call: its next request, and how it goes on."""

    __slots__ = ("final", "finish", "key", "request", "slot", "steps")

    def __init__(self, slot: int, job: _Job[object]) -> None:
        self.slot = slot
        self.key = job.key
        self.final = job.final
        self.steps = job.steps
        self.finish = job.finish
        self.request: _Fetch | _Line | _Listing = job.request or _NO_REQUEST


class _Desync(Exception):
    """A reply that cannot answer the command it should: the stream is out of step."""


def _backend_error(message: str, server: str, cause: BaseException) -> BackendError:
    error = BackendError(message, server=server)
    error.__cause__ = cause
    return error


def _reply_error(line: bytes, server: str) -> CacheORMError:
    """The error an ``ERROR``/``CLIENT_ERROR``/``SERVER_ERROR`` reply stands for.

    Raises:
        _Desync: ``line`` is no error reply either.
    """
    from pymemcache.exceptions import (
        MemcacheClientError,
        MemcacheServerError,
        MemcacheUnknownCommandError,
    )

    text = line.decode("ascii", "replace")
    cause: BaseException
    if line == b"ERROR":
        cause = MemcacheUnknownCommandError(text)
    elif line.startswith(b"CLIENT_ERROR "):
        cause = MemcacheClientError(text[13:])
    elif line.startswith(b"SERVER_ERROR "):
        cause = MemcacheServerError(text[13:])
        if "too large" in text or "out of memory storing" in text:
            error = ValueTooLarge(
                f"memcached {server}: value larger than the server's item size limit "
                "(memcached -I, 1 MiB by default); store less or raise the limit"
            )
            error.__cause__ = cause
            return error
    else:
        raise _Desync(line)
    return _backend_error(f"memcached {server} refused the command: {text}", server, cause)


class _Server(Protocol):
    """What the protocol needs to know of a server: its name and its clients' key prefix."""

    @property
    def name(self) -> str: ...

    @property
    def prefix(self) -> bytes: ...


_N = TypeVar("_N", bound=_Server)
_M = TypeVar("_M", bound=_Server)


class _Exchange(Generic[_N]):
    """One server's share of a round: the commands to send, and the replies read so far.

    Replies come back in the order of the commands, so the answered commands are
    always a prefix of ``tasks``. It does no I/O: a transport (the sync one
    below, or :mod:`cacheorm.backends.amemcached`'s) writes :attr:`out`, adds
    what it reads to :attr:`buf`, calls :meth:`parse`, and sets :attr:`sent`.
    """

    __slots__ = (
        "buf",
        "deadline",
        "ends",
        "error",
        "found",
        "group",
        "groups",
        "kept",
        "need",
        "node",
        "out",
        "reason",
        "replies",
        "sent",
        "tasks",
    )

    def __init__(self, node: _N, tasks: list[_Task]) -> None:
        self._begin(node, tasks)
        # groups: the tasks [start, stop) one command line serves, and for a
        # fetch the keys it asked for; ends: where each task's command ends in out.
        self.groups: list[tuple[int, int, frozenset[bytes] | None]]
        self.ends: list[int]
        prefix = node.prefix
        if len(tasks) == 1:  # the common case, without the loop
            request = tasks[0].request
            if type(request) is _Fetch:
                key = prefix + request.key
                self.out = (b"gets " if request.cas else b"get ") + key + b"\r\n"
                self.groups = [(0, 1, frozenset((key,)))]
                self.ends = [len(self.out)]
                return
            if type(request) is _Line:
                self.out = request.framed(prefix)
                self.groups = [(0, 1, None)]
                self.ends = [len(self.out)]
                return
        self.groups = []
        self.ends = []
        parts: list[bytes] = []
        size = 0
        index, count = 0, len(tasks)
        while index < count:
            request = tasks[index].request
            if isinstance(request, _Line):
                part = request.framed(prefix)
                stop, wanted = index + 1, None
            elif isinstance(request, _Listing):
                part, stop, wanted = request.command + b"\r\n", index + 1, _LISTING
            else:
                stop, cas, keys = index, False, []
                while stop < count:
                    fetch = tasks[stop].request
                    if not isinstance(fetch, _Fetch):
                        break
                    keys.append(prefix + fetch.key)
                    cas = cas or fetch.cas
                    stop += 1
                part = (b"gets " if cas else b"get ") + b" ".join(keys) + b"\r\n"
                wanted = frozenset(keys)
            parts.append(part)
            size += len(part)
            self.ends += [size] * (stop - index)
            self.groups.append((index, stop, wanted))
            index = stop
        self.out = b"".join(parts)

    def _begin(self, node: _N, tasks: list[_Task]) -> None:
        """The state of an exchange not yet sent: nothing sent, read or failed."""
        self.node = node
        self.tasks = tasks
        self.sent = 0
        self.buf = bytearray()
        self.need = 0
        self.group = 0
        self.found: dict[bytes, _Item] = {}
        self.kept: list[bytes] = []  # what a listing picked so far
        self.replies: list[_Item | bytes | list[bytes] | CacheORMError | None] = []
        self.error: BackendError | None = None
        self.reason = ""
        self.deadline = math.inf

    @property
    def done(self) -> bool:
        return self.group == len(self.groups)

    def parse(self) -> None:
        """Take every complete reply off the buffer, in order.

        Raises:
            _Desync: a reply that does not answer the command it should.
        """
        buf, pos, groups = self.buf, 0, self.groups
        data = bytes(buf)  # one copy: slices of bytes are made in one step, not two
        self.need = 0
        try:
            while self.group < len(groups):
                start, stop, wanted = groups[self.group]
                if wanted is _LISTING:
                    group = self.group
                    pos = self._listed(data, pos, cast("_Listing", self.tasks[start].request))
                    if self.group == group:
                        return  # the rest of the dump is still on its way
                    continue
                eol = data.find(b"\r\n", pos)
                if eol < 0:
                    return
                if wanted is not None and data.startswith(b"VALUE ", pos):
                    if stop - start == 1 and not self.found:
                        end = self._one_item(data, pos, eol, wanted)
                        if end != pos:
                            if end < 0:
                                return
                            pos = end
                            self.group += 1
                            continue
                    end = self._values(data, pos, wanted)
                    if end == pos:
                        return
                    pos = end
                    continue
                line = data[pos:eol]
                pos = eol + 2
                if wanted is None and line in cast("_Line", self.tasks[start].request).replies:
                    self.replies.append(line)  # the common reply of a store or delete, inlined
                else:
                    self._reply(line, start, stop, wanted)
                self.group += 1
        finally:
            del buf[:pos]

    def _listed(self, data: bytes, pos: int, request: _Listing) -> int:
        """Take the complete lines of a listing at ``pos``; return where they end.

        What ``request.pick`` keeps is gathered in :attr:`kept`; the reply (that,
        or the error the server gave) is added at ``END``. (A metadump ends its
        lines with ``\\n`` alone, everything else with ``\\r\\n``.)
        """
        pick, kept = request.pick, self.kept
        while True:
            eol = data.find(b"\n", pos)
            if eol < 0:
                return pos
            line = data[pos : eol - 1 if data[eol - 1] == 13 else eol]  # 13: "\\r"
            pos = eol + 1
            if line == b"END" or line.startswith(_LISTING_ERRORS):
                self.replies.append(kept if line == b"END" else self._listing_error(line, request))
                self.kept = []
                self.group += 1
                return pos
            picked = pick(line)
            if picked is not None:
                kept.append(picked)

    def _listing_error(self, line: bytes, request: _Listing) -> BackendError:
        """The error of a listing the server refused (``BUSY``: another client's crawl runs)."""
        name, text = self.node.name, line.decode("ascii", "replace")
        if line.startswith(b"BUSY"):
            return _Busy(f"memcached {name}: {text}", server=name)
        return BackendError(
            f"memcached {name} refused `{request.command.decode()}`: {text}; clear needs "
            "memcached 1.4.31 or later with its LRU crawler enabled (not -X, not no_lru_crawler)",
            server=name,
        )

    def _one_item(self, data: bytes, pos: int, eol: int, wanted: Container[bytes]) -> int:
        """The reply to a one-key fetch, a ``VALUE`` line at ``pos``, taken whole with its END.

        Returns where the reply ends (its reply added), ``-1`` when more is
        needed, or ``pos`` when it is not a plain item (:meth:`_values` reads it).
        """
        head = data[pos + 6 : eol].split()  # VALUE <key> <flags> <bytes> [<cas>]
        if len(head) < 3 or head[0] not in wanted or not head[2].isdigit():
            return pos
        begin = eol + 2
        end = begin + int(head[2])
        if len(data) < end + 7:
            self.need = end + 7 - len(data)
            return -1
        if data[end : end + 7] != b"\r\nEND\r\n" or not head[1].isdigit():
            return pos
        self.replies.append((data[begin:end], int(head[1]), head[3] if len(head) > 3 else b""))
        return end + 7

    def _values(self, data: bytes, pos: int, wanted: frozenset[bytes]) -> int:
        """Take the complete items from the ``VALUE`` line at ``pos`` on; return where they end.

        Raises:
            _Desync: a malformed item, or one of a key not asked for.
        """
        found, find = self.found, data.find
        while data.startswith(b"VALUE ", pos):
            eol = find(b"\r\n", pos)
            if eol < 0:
                return pos
            head = data[pos + 6 : eol].split()  # <key> <flags> <bytes> [<cas>]
            try:
                key, flags, size = head[0], int(head[1]), int(head[2])
            except (IndexError, ValueError) as err:
                raise _Desync(data[pos:eol]) from err
            begin = eol + 2
            end = begin + size
            if len(data) < end + 2:
                self.need = end + 2 - len(data)
                return pos
            if data[end : end + 2] != b"\r\n" or key not in wanted:
                raise _Desync(data[pos:eol])
            found[key] = (data[begin:end], flags, head[3] if len(head) > 3 else b"")
            pos = end + 2
        return pos

    def _reply(self, line: bytes, start: int, stop: int, wanted: frozenset[bytes] | None) -> None:
        """Take the reply line that ends the command serving tasks ``[start, stop)``.

        Raises:
            _Desync: ``line`` answers no command of that kind.
        """
        if wanted is None:
            if cast("_Line", self.tasks[start].request).answered_by(line):
                self.replies.append(line)
            else:
                self.replies.append(_reply_error(line, self.node.name))
        elif line == b"END":
            found, prefix = self.found, self.node.prefix
            for index in range(start, stop):
                fetch = cast("_Fetch", self.tasks[index].request)
                self.replies.append(found.get(prefix + fetch.key))
            self.found = {}
        else:
            self.replies += [_reply_error(line, self.node.name)] * (stop - start)
            self.found = {}

    def fail(self, reason: str, cause: BaseException) -> None:
        """End this exchange: the server failed (the transport closes its connection)."""
        name = self.node.name
        logger.debug("memcached %s %s: %r", name, reason, cause)
        self.reason = reason
        self.error = _backend_error(
            f"memcached {name} {reason}; check that every server is up, reachable and "
            "answering within the timeout",
            name,
            cause,
        )

    def error_for(self, index: int) -> BackendError:
        """The error of unanswered task ``index`` after :meth:`fail`."""
        error = self.error
        assert error is not None
        request = self.tasks[index].request
        if isinstance(request, _Fetch | _Listing) or self.sent < self.ends[index]:
            return error  # a read, or a write the server never received in full
        return self._unknown(request.verb, request.key)

    def _unknown(self, verb: bytes, key: bytes) -> BackendError:
        """The error of a write sent in full before the server failed: its outcome is unknown."""
        error = self.error
        assert error is not None
        return _backend_error(
            f"memcached {self.node.name} {self.reason} after `{verb.decode()} "
            f"{key!r}` was sent: the server may or may not have run it (outcome "
            "unknown), and it was not sent again; read the key before retrying",
            self.node.name,
            error.__cause__ or error,
        )


class _Fetches(_Exchange[_N]):
    """One server's share of a read of many keys: one ``get`` line, no per-key tasks.

    The common batch (a phase of ``Get`` s, ``get_many``) costs a few calls
    less per key this way than as commands (see :func:`fetches`); it is sent,
    read and failed as any exchange is.
    """

    __slots__ = ("keys", "slots", "wanted")

    def __init__(
        self, node: _N, keys: list[bytes], slots: list[int], joined: bytes | None = None
    ) -> None:
        """``joined``: ``b" ".join(keys)``, if the caller has it."""
        # Not super().__init__: no tasks to frame.
        self._begin(node, [])
        self.keys = keys
        self.slots = slots
        self.groups = [(0, len(keys), None)]  # one reply: done once it is in
        self.ends = []
        prefix = node.prefix
        asked = [prefix + key for key in keys] if prefix else keys
        self.wanted = frozenset(asked)
        if joined is None or prefix:
            joined = b" ".join(asked)
        self.out = b"get " + joined + b"\r\n"

    def parse(self) -> None:
        """Take the items and the closing ``END`` (or an error line) off the buffer.

        Raises:
            _Desync: a reply that does not answer a ``get`` of these keys.
        """
        buf, pos = self.buf, 0
        data = bytes(buf)
        self.need = 0
        try:
            while self.group == 0:
                eol = data.find(b"\r\n", pos)
                if eol < 0:
                    return
                if data.startswith(b"VALUE ", pos):
                    end = self._values(data, pos, self.wanted)
                    if end == pos:
                        return
                    pos = end
                    continue
                line = data[pos:eol]
                pos = eol + 2
                if line != b"END":
                    self.replies.append(_reply_error(line, self.node.name))
                self.group = 1
        finally:
            del buf[:pos]

    def fill(self, results: list[object]) -> None:
        """Put each key's value (``None``: a miss), or the exchange's error, in its slot."""
        error = self.error if self.error is not None else (self.replies or [None])[0]
        if error is not None:
            for slot in self.slots:
                results[slot] = error
            return
        found, prefix = self.found, self.node.prefix
        for slot, key in zip(self.slots, self.keys, strict=True):
            item = found.get(prefix + key)
            results[slot] = None if item is None else item[0]


def fetches(
    keys: Sequence[bytes], room: int, place: _Placer[_N]
) -> tuple[list[_Fetches[_N]], list[object]]:
    """The exchanges that read ``keys`` (one per server), and the results list they fill.

    A key too long for the server's key prefix has its ``ValidationError`` in
    its slot at once.
    """
    results: list[object] = [None] * len(keys)
    single = place.single
    if single is not None and keys:  # one server: every key checked in one pass, if plain
        joined = b" ".join(keys)
        if (
            joined.count(b" ") == len(keys) - 1  # no key holds a space of its own
            and _PLAIN_KEYS.fullmatch(joined) is not None
            and (room >= MAX_KEY_LENGTH or max(map(len, keys)) <= room)
        ):
            return [_Fetches(single, list(keys), list(range(len(keys))), joined)], results
    by_node: dict[_N, tuple[list[bytes], list[int]]] = {}
    last: _N | None = None
    asked: list[bytes] = []
    slots: list[int] = []
    for slot, key in enumerate(keys):
        if _PLAIN_KEY.fullmatch(key) is None:
            key = memcached_key(key)
        if len(key) > room:
            results[slot] = _too_long(key, room)
            continue
        node = place(key)
        if node is not last:
            asked, slots = by_node.setdefault(node, ([], []))
            last = node
        asked.append(key)
        slots.append(slot)
    return [_Fetches(node, *pair) for node, pair in by_node.items()], results


class _Stores(_Exchange[_N]):
    """One server's share of a write of many distinct keys: pipelined ``set`` s, no per-key tasks.

    The common write batch (a phase of ``Set`` s, ``insert_many``) costs a few
    calls less per key this way than as commands (see :func:`stores`); it is
    sent, read and failed as any exchange is. A value refused as too large is
    left to the caller to follow up (see :meth:`refused`).
    """

    __slots__ = ("keys", "slots")

    def __init__(self, node: _N, keys: list[bytes], slots: list[int], parts: list[bytes]) -> None:
        # Not super().__init__: no tasks to frame.
        self._begin(node, [])
        self.keys = keys
        self.slots = slots
        self.groups = [(0, len(keys), None)]  # done once every reply is in
        self.ends = list(itertools.accumulate(map(len, parts)))
        self.out = b"".join(parts)

    def parse(self) -> None:
        """Take the complete reply lines off the buffer: ``STORED``, or the error of another.

        Raises:
            _Desync: a line that answers no ``set``.
        """
        buf, pos, replies, count = self.buf, 0, self.replies, len(self.keys)
        data = bytes(buf)
        try:
            if not replies and len(data) == 8 * count and data.count(b"STORED\r\n") == count:
                replies += [b"STORED"] * count  # the common reply, in one step
                pos = len(data)
            while len(replies) < count:
                eol = data.find(b"\r\n", pos)
                if eol < 0:
                    return
                line = data[pos:eol]
                pos = eol + 2
                replies.append(line if line == b"STORED" else self._refusal(line))
            self.group = 1
        finally:
            del buf[:pos]

    def _refusal(self, line: bytes) -> CacheORMError:
        """The error of a ``set`` answered with ``line`` rather than ``STORED`` (as :func:`_set`).

        Raises:
            _Desync: ``line`` is no reply to a store.
        """
        if line == b"NOT_STORED":
            name = self.node.name
            return BackendError(f"memcached did not store the value: {line!r}", server=name)
        return _reply_error(line, self.node.name)

    def fill(self, results: list[object]) -> None:
        """Put each key's result (``True``) or error in its slot.

        A key left unanswered by a failed server gets its error: the plain one
        when its command was not sent in full, else one saying the outcome is unknown.
        """
        replies = self.replies
        for index, slot in enumerate(self.slots):
            if index < len(replies):
                reply = replies[index]
                results[slot] = True if type(reply) is bytes else reply  # bytes: b"STORED"
            else:
                error = self.error
                assert error is not None  # unanswered: the server failed
                unsent = self.sent < self.ends[index]
                results[slot] = error if unsent else self._unknown(b"set", self.keys[index])

    def refused(self) -> list[tuple[int, bytes, ValueTooLarge]]:
        """``(slot, key, error)`` of each value refused as too large: its old value must go."""
        return [
            (self.slots[index], self.keys[index], reply)
            for index, reply in enumerate(self.replies)
            if type(reply) is ValueTooLarge
        ]


def stores(
    commands: Sequence[base.Set], default: int, room: int, place: Callable[[bytes], _N]
) -> tuple[list[_Stores[_N]], list[object]]:
    """The exchanges that run ``commands`` (``Set`` s on distinct keys; one per server),
    and the results list they fill.

    A key too long for the server's key prefix, or an illegal TTL, has its
    ``ValidationError`` in its slot at once.
    """
    results: list[object] = [None] * len(commands)
    by_node: dict[_N, tuple[list[bytes], list[int], list[bytes]]] = {}
    expiries: dict[TTL, tuple[int, int] | CacheORMError] = {}  # resolved once per TTL
    last: _N | None = None
    keys: list[bytes] = []
    slots: list[int] = []
    parts: list[bytes] = []
    for slot, command in enumerate(commands):
        key, value, ttl = command
        if _PLAIN_KEY.fullmatch(key) is None:
            key = memcached_key(key)
        expiry = expiries.get(ttl)
        if expiry is None:
            try:
                expiry = expiries[ttl] = _write_expiry(ttl, default)
            except CacheORMError as err:
                expiry = expiries[ttl] = err
        if type(expiry) is not tuple:
            results[slot] = expiry
            continue
        if len(key) > room:
            results[slot] = _too_long(key, room)
            continue
        node = place(key)
        if node is not last:
            keys, slots, parts = by_node.setdefault(node, ([], [], []))
            last = node
        exptime, flags = expiry
        keys.append(key)
        slots.append(slot)
        parts.append(
            b"set %b%b %d %d %d\r\n%b\r\n" % (node.prefix, key, flags, exptime, len(value), value)
        )
    return [_Stores(node, *lists) for node, lists in by_node.items()], results


def fill_stores(
    exchanges: Sequence[_Stores[_N]], results: list[object]
) -> tuple[list[int], list[_Job[object]]]:
    """Fill ``results`` from run :func:`stores` exchanges; return the slots of the values
    refused as too large and the jobs to run next, which delete their keys' old values
    (as a lone ``set`` does) and give each its error."""
    slots: list[int] = []
    jobs: list[_Job[object]] = []
    for exchange in exchanges:
        exchange.fill(results)
        for slot, key, error in exchange.refused():
            slots.append(slot)
            jobs.append(_Job(key, False, _refused(key, error)))
    return slots, jobs


def distinct_sets(commands: Sequence[Command]) -> bool:
    """Whether the batch is ``Set`` s on distinct keys (see :func:`stores`)."""
    return all(type(command) is base.Set for command in commands) and len(
        {command.key for command in commands}
    ) == len(commands)


_READABLE: Final = select.POLLIN | select.POLLERR | select.POLLHUP | select.POLLNVAL
"""poll() events after which ``recv`` does not wait: data, end of stream or an error."""
_SMALL: Final = 16 * 1024
"""A request this small is sent at once: the socket buffers always hold it."""


def _fail(exchange: _Exchange[_Node], reason: str, cause: BaseException) -> None:
    """Fail the exchange and close its socket: never reused mid-reply."""
    exchange.fail(reason, cause)
    exchange.node.client.close()


def _converse(exchanges: Sequence[_Exchange[_Node]]) -> None:
    """Run the exchanges: every server's commands sent and its replies read, concurrently.

    A server fails when it cannot be connected, closes the connection, sends
    what does not answer the commands, or makes no progress for its timeout;
    the others go on. Sending and reading interleave, so a long pipeline never
    deadlocks on full socket buffers.
    """
    if len(exchanges) == 1 and len(exchanges[0].out) <= _SMALL:
        _converse_one(exchanges[0])
        return
    poller = select.poll()
    live: dict[int, _Exchange[_Node]] = {}
    for exchange in exchanges:
        sock = _connected(exchange)
        if sock is not None:
            fd = sock.fileno()
            exchange.deadline = time.monotonic() + exchange.node.timeout
            live[fd] = exchange
            poller.register(fd, select.POLLIN | select.POLLOUT)
    while live:
        wait = min(exchange.deadline for exchange in live.values()) - time.monotonic()
        events = poller.poll(None if wait == math.inf else max(wait, 0.0) * 1000.0)
        now = time.monotonic()
        for fd, mask in events:
            exchange = live[fd]
            if _serve(exchange, mask, poller):
                poller.unregister(fd)
                del live[fd]
                if exchange.error is None:
                    exchange.node.used = now
            else:
                exchange.deadline = now + exchange.node.timeout
        for fd, exchange in list(live.items()):
            if exchange.deadline <= now:
                poller.unregister(fd)
                del live[fd]
                _fail(exchange, *_failure(TimeoutError("timed out"), exchange.node.timeout))


def _serve(exchange: _Exchange[_Node], mask: int, poller: select.poll) -> bool:
    """Send and read what the poll ``mask`` allows; return whether the exchange ended."""
    sock = exchange.node.client.sock
    assert sock is not None
    try:
        if mask & select.POLLOUT and exchange.sent < len(exchange.out):
            exchange.sent += sock.send(memoryview(exchange.out)[exchange.sent :])
            if exchange.sent == len(exchange.out):
                poller.modify(sock, select.POLLIN)
        if mask & _READABLE:
            _receive(exchange, sock)
    except (OSError, _Desync) as err:
        _fail(exchange, *_failure(err, exchange.node.timeout))
        return True
    return exchange.done


def _converse_one(exchange: _Exchange[_Node]) -> None:
    """:func:`_converse` for one small request: blocking calls, each bounded by the timeout."""
    sock = _connected(exchange)
    if sock is None:
        return
    try:
        try:
            sock.sendall(exchange.out)
        finally:
            exchange.sent = len(exchange.out)  # if it failed, some may have left
        while not exchange.done:
            _receive(exchange, sock)
        exchange.node.used = time.monotonic()
    except (OSError, _Desync) as err:
        _fail(exchange, *_failure(err, exchange.node.timeout))


def _connected(exchange: _Exchange[_Node]) -> socket.socket | None:
    """The server's socket, connected if need be; ``None`` (the exchange failed) if it cannot be."""
    node = exchange.node
    client = node.client
    sock = client.sock
    # Not a connection that answered in full a moment ago (a poll costs a system
    # call per call), nor TLS (its session tickets can make a sound idle one readable).
    if (
        sock is not None
        and time.monotonic() - node.used > FRESH
        and not isinstance(sock, ssl.SSLSocket)
        and stale(sock)
    ):
        # Closed by the server while idle (a restart, an idle timeout), or holding
        # bytes nobody asked for: start afresh; nothing was sent on it yet.
        logger.debug("memcached %s: reconnecting a stale connection", exchange.node.name)
        client.close()
    if client.sock is None:
        try:
            client._connect()
        except OSError as err:
            _fail(exchange, "cannot be connected", err)
            return None
    return client.sock


def _receive(exchange: _Exchange[_Node], sock: socket.socket) -> None:
    """Read what the server sent and parse it (waits up to the socket's timeout)."""
    chunk = sock.recv(max(READ_SIZE, exchange.need))
    if not chunk:
        from pymemcache.exceptions import MemcacheUnexpectedCloseError

        raise _Closed from MemcacheUnexpectedCloseError()
    exchange.buf += chunk
    # TLS may hold decrypted bytes that poll() cannot see.
    while isinstance(sock, ssl.SSLSocket) and sock.pending():
        exchange.buf += sock.recv(sock.pending())
    exchange.parse()


class _Closed(ConnectionError):
    """The server closed the connection."""


def _failure(err: Exception, timeout: float = math.inf) -> tuple[str, BaseException]:
    """What to say of a server that failed with ``err``, and the cause to chain."""
    if isinstance(err, TimeoutError):
        return f"did not answer within {timeout:g} s", err
    if isinstance(err, _Closed):
        return "closed the connection", err.__cause__ or err
    if isinstance(err, _Desync):
        from pymemcache.exceptions import MemcacheUnknownError

        return "sent a reply out of step with the commands", MemcacheUnknownError(err.args[0])
    return "failed", err


# -- servers and placement ---------------------------------------------------------


def _new_client(
    servers: Sequence[tuple[str, int] | str], connect_timeout: float, timeout: float
) -> Client | HashClient:
    """The pymemcache client whose settings and sockets a backend of ``servers`` uses.

    Raises:
        ValidationError: no server.
    """
    from pymemcache.client.base import Client
    from pymemcache.client.hash import HashClient

    if not servers:
        raise ValidationError("a memcached backend needs at least one server")
    if len(servers) == 1:
        return Client(servers[0], connect_timeout=connect_timeout, timeout=timeout, no_delay=True)
    return HashClient(
        list(servers), connect_timeout=connect_timeout, timeout=timeout, no_delay=True
    )


def _nodes_of(client: Client | HashClient, owned: bool) -> list[_Node]:
    """One node per server of ``client``, in its order.

    Raises:
        ValidationError: a ``HashClient`` without servers.
    """
    from pymemcache.client.base import PooledClient
    from pymemcache.client.hash import HashClient

    if not isinstance(client, HashClient):
        return [_Node(client, _server_name(client.server), owned=owned)]
    if not client.clients:
        raise ValidationError("a memcached backend needs at least one server")
    return [
        _Node(node._create_client(), name, owned=True)
        if isinstance(node, PooledClient)
        else _Node(node, name, owned=owned)
        for name, node in client.clients.items()
    ]


def _finder(client: Client | HashClient) -> Callable[[bytes], str | None] | None:
    """HashClient's placement: the name of the server of a key (``None``: one server).

    A fresh hasher over every server, in the order given, places keys as a new
    ``HashClient`` does, even if this one has since dropped a failing server.
    """
    from pymemcache.client.hash import HashClient

    if not isinstance(client, HashClient):
        return None
    hasher = type(client.hasher)()
    for name in client.clients:
        hasher.add_node(name)
    return hasher.get_node


def _spawners(client: Client | HashClient, owned: bool) -> list[Callable[[], Client]] | None:
    """How to open another connection to each server of ``client``, in its order, with
    its settings; ``None`` when the backend must use the client's own sockets (a
    ``Client`` or an unpooled ``HashClient`` given in, which its owner may also use)."""
    from pymemcache.client.base import Client, PooledClient
    from pymemcache.client.hash import HashClient

    nodes = list(client.clients.values()) if isinstance(client, HashClient) else [client]
    if all(isinstance(node, PooledClient) for node in nodes):
        return [node._create_client for node in cast("list[PooledClient]", nodes)]
    if not owned:
        return None

    def spawner(node: Client) -> Callable[[], Client]:
        # Built by _new_client or by its HashClient from these settings alone.
        return lambda: Client(
            node.server,
            connect_timeout=node.connect_timeout,
            timeout=node.timeout,
            no_delay=node.no_delay,
            key_prefix=node.key_prefix,
        )

    return [spawner(cast("Client", node)) for node in nodes]


class _Conns:
    """One connection to each server, and where keys live among them: what one call uses.

    A call checks a set out of its backend and gives it back when it ends, so
    threads sharing a backend run their calls at once, each on its own sockets.
    """

    __slots__ = ("forks", "nodes", "place")

    def __init__(self, nodes: list[_Node], place: _Placer[_Node]) -> None:
        self.nodes = nodes
        self.place = place
        self.forks = base.forks()
        """The process's fork count when the set was made: a child's sets are its own."""

    def close(self, owned_only: bool = False) -> None:
        """Close the sockets (they reopen on next use); a child closes only its copies.

        ``owned_only``: leave the sockets of a client given in to its owner.
        """
        for node in self.nodes:
            if node.owned or not owned_only:
                node.client.close()


class _Placer(Generic[_N]):
    """Where a key lives: one of ``nodes``, as :func:`_finder` says, remembered.

    Rendezvous hashing is slow in Python, so the last placements are cached,
    as positions in ``nodes``: :meth:`over` makes a placer of another set of
    nodes for the same servers that shares the cache (dict operations are
    atomic, so threads may share it).
    """

    __slots__ = ("_find", "_index", "_nodes", "_placed", "single")

    def __init__(
        self,
        nodes: Sequence[_N],
        find: Callable[[bytes], str | None] | None,
        placed: dict[bytes, int] | None = None,
    ) -> None:
        self._nodes = list(nodes)
        self._index = {node.name: index for index, node in enumerate(nodes)}
        self.single = nodes[0] if find is None else None
        """The one node every key lives on, or ``None`` with several servers."""
        self._find = find
        self._placed: dict[bytes, int] = {} if placed is None else placed

    def over(self, nodes: Sequence[_M]) -> _Placer[_M]:
        """A placer of ``nodes`` (one per server, in the same order), sharing this one's cache."""
        return _Placer(nodes, self._find, self._placed)

    def __call__(self, key: bytes) -> _N:
        single = self.single
        if single is not None:
            return single
        index = self._placed.get(key)
        if index is None:
            if len(self._placed) >= _PLACEMENT_CACHE:
                self._placed.clear()
            assert self._find is not None  # set whenever there is more than one server
            index = self._placed[key] = self._index[cast("str", self._find(key))]
        return self._nodes[index]


# -- fork safety ----------------------------------------------------------------

_LIVE: Final[weakref.WeakSet[MemcachedBackend]] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    # Another thread of the parent may have held a backend's lock at the fork: the
    # child's copy would stay locked forever. The child runs one thread here.
    for backend in list(_LIVE):
        backend._after_fork_in_child()


os.register_at_fork(after_in_child=_after_fork_in_child)


class MemcachedBackend:
    """Store bytes in memcached: one server, or several by rendezvous hashing.

    Keys are placed exactly as pymemcache's ``HashClient`` places them (the same
    rendezvous hashing over the same server list), so data written by a plain
    ``HashClient`` or an older cacheorm is found. Every write waits for the
    server's reply, so failures are seen.

    **Threads.** A backend may be shared by threads, and their calls run at
    once: each call takes a set of connections (one per server) that no other
    call uses until it ends, and a backend keeps the sets its calls gave back,
    so it opens as many per server as calls ran at once. A ``client=`` given
    in without pooling lends its own sockets, which are not thread-safe: its
    calls take turns. (A ``HashClient`` with ``use_pooling=True`` makes more.)

    **Faults.** A call sends each server's commands in one pipeline and reads
    the servers' replies concurrently, so a server that does not answer costs
    one ``timeout`` per call whatever the number of keys (hung servers time
    out together; a server that keeps answering slowly is given ``timeout``
    per reply chunk), and one that cannot be reached one ``connect_timeout``.
    Its commands raise (or, in :meth:`batch`, put in their slots)
    :class:`~cacheorm.BackendError` with ``.server`` naming it; it is never
    treated as a miss nor dropped from the ring, and the keys of the other
    servers are served. No command is sent twice: a write whose connection
    failed after it was sent raises a ``BackendError`` saying that its
    outcome is unknown, since the server may have run it. A connection the
    server closed while idle (a restart) is replaced before it is used.

    **Processes.** A backend built before ``os.fork()`` can be used in both
    processes: the child opens its own connections on first use.

    Args:
        servers: ``(host, port)`` pairs (or UNIX socket paths); one or several.
        client: an existing pymemcache ``Client`` or ``HashClient`` whose
            servers, timeouts, socket options, TLS context and key prefix to
            use instead of ``servers``. cacheorm speaks the protocol itself on
            its connections, so the client's serde is neither used nor changed;
            it must not have ``ignore_exc=True``. For a ``HashClient`` with
            ``use_pooling=True``, cacheorm opens one connection per server of
            its own, with the pool's settings.
        default_ttl: seconds used when a call passes ``ttl=None``; ``0`` = never.
        connect_timeout: seconds to wait for a TCP connection.
        timeout: seconds to wait, without progress, for a server's replies.

    Raises:
        ValidationError: an illegal ``default_ttl``, no server, or a client
            with ``ignore_exc``.
    """

    default_ttl: int

    def __init__(
        self,
        servers: Sequence[tuple[str, int] | str] = (("127.0.0.1", 11211),),
        client: Client | HashClient | None = None,
        *,
        default_ttl: int = 0,
        connect_timeout: float = 1.0,
        timeout: float = 2.0,
    ) -> None:
        self.default_ttl = resolve_ttl(default_ttl, 0)
        self._forks = base.forks()
        self._owns_client = client is None
        if client is None:
            client = _new_client(servers, connect_timeout, timeout)
        elif client.ignore_exc:
            raise ValidationError(
                "pass a client with ignore_exc=False: cacheorm reports a down server "
                "as BackendError instead of a silent miss"
            )
        nodes = _nodes_of(client, self._owns_client)
        self._first = _Conns(nodes, _Placer(nodes, _finder(client)))
        self._spawners = _spawners(client, self._owns_client)
        self._idle = [self._first]
        """Connection sets no call is using (see :meth:`_checkout`)."""
        self._turn = threading.Lock() if self._spawners is None else None
        """With the client's own sockets (one set): calls take turns under this lock."""
        self._closed = False
        # memcached_key() stays within 250 bytes; a client's key_prefix eats into that.
        self._room = MAX_KEY_LENGTH - max(len(node.prefix) for node in nodes)
        _LIVE.add(self)

    def __repr__(self) -> str:
        return f"MemcachedBackend({[node.name for node in self._first.nodes]!r})"

    # -- plumbing -----------------------------------------------------------

    def _after_fork_in_child(self) -> None:
        """Drop the parent's connections: the child opens its own on first use.

        Sets that other threads of the parent had checked out are the parent's
        alone; the first set stays (its sockets closed: the child's copies).
        """
        if self._turn is not None:
            self._turn = threading.Lock()  # the parent's may have been held at the fork
        self._first.close()
        self._first.forks = base.forks()
        self._idle = [self._first]
        self._forks = base.forks()

    def _checkout(self) -> _Conns:
        """A set of connections for one call, to give back with :meth:`_checkin`."""
        if self._forks != base.forks():  # forked without the at-fork hook running
            self._after_fork_in_child()
        if self._turn is not None:
            self._turn.acquire()
        try:
            return self._idle.pop()  # atomic: threads share the list
        except IndexError:
            pass
        try:
            assert self._spawners is not None  # else the one set was idle: it is ours
            nodes = [
                _Node(spawn(), node.name, owned=True)
                for spawn, node in zip(self._spawners, self._first.nodes, strict=True)
            ]
            return _Conns(nodes, self._first.place.over(nodes))
        except BaseException:
            if self._turn is not None:
                self._turn.release()
            raise

    def _checkin(self, conns: _Conns, sound: bool = True) -> None:
        """Take a set back after a call; ``sound=False``: it was interrupted mid-exchange,
        so replies still on their way would answer the next call: its sockets close."""
        if not sound or self._closed:
            conns.close(owned_only=sound)
        if conns.forks == base.forks():  # else it belongs to the parent
            self._idle.append(conns)
        if self._turn is not None:
            self._turn.release()

    def _execute(
        self,
        jobs: Sequence[_Job[object] | CacheORMError],
        placed: _Placed[_Node] | None = None,
        given: _Conns | None = None,
    ) -> list[object]:
        """Run the jobs, pipelined per server; return each result or error, in order.

        Each round sends every server the next request of each of its commands,
        except a command whose key is held back by an earlier command on that key
        that may still send another request (so one key's commands run in order);
        servers are independent, so their commands may run in any relative order.
        A server that failed fails the rest of the call's commands for it at once.
        ``placed`` (instead of ``jobs``): one-request jobs on the nodes named,
        which are ``given``'s; ``given``: the call's set of connections, else one
        is checked out for the jobs.
        """
        results: list[object] = [None] * len(placed if placed is not None else jobs)
        conns = self._checkout() if given is None else given
        sound = False
        try:
            if placed is not None:
                queues = _placed_queues(placed)
            else:
                queues = _enqueue(jobs, results, self._room, conns.place)
            failed: dict[_Node, BackendError] = {}
            while queues:
                queues = _round(queues, failed, results)
            # Else interrupted inside an exchange (KeyboardInterrupt, a bug): replies
            # still on their way would answer the next call's commands.
            sound = True
        finally:
            if given is None:
                self._checkin(conns, sound)
            elif not sound:
                given.close()
        return results

    def _one(self, job: _Job[_T]) -> _T:
        """Run one command; return its result or raise its error.

        A command of one request (the common case) is one exchange, without the
        rounds' bookkeeping of :meth:`_execute`.
        """
        if job.steps is not None or len(job.key) > self._room:
            result = self._execute((job,))[0]
        else:
            conns = self._checkout()
            sound = False
            try:
                exchange = _Lone(conns.place(job.key), job)
                _converse([exchange])
                result, queues = _lone_result(job, exchange)
                if queues:  # it sends another request: the rounds take it on
                    results = cast("list[object]", result)
                    failed: dict[_Node, BackendError] = {}
                    while queues:
                        queues = _round(queues, failed, results)
                    result = results[0]
                sound = True
            finally:
                self._checkin(conns, sound)  # as in _execute
        if isinstance(result, CacheORMError):
            raise result
        return cast("_T", result)

    def _many(self, jobs: Sequence[_Job[object]]) -> list[object]:
        """Run the jobs; raise the first error (the others' effects stand)."""
        results = self._execute(jobs)
        for result in results:
            if isinstance(result, CacheORMError):
                raise result
        return results

    # -- the Backend protocol -----------------------------------------------

    def get(self, key: bytes) -> bytes | None:
        """Return the value, or ``None`` when the key is absent or expired."""
        return self._one(_get_job(memcached_key(key)))

    def set(self, key: bytes, value: bytes, ttl: TTL = None) -> None:
        """Store ``value`` unconditionally."""
        expiry = _write_expiry(ttl, self.default_ttl)
        self._one(_write_job(b"set", memcached_key(key), value, expiry))

    def add(self, key: bytes, value: bytes, ttl: TTL = None) -> bool:
        """Store only if absent (memcached ``add`` is atomic). Return whether it was stored."""
        expiry = _write_expiry(ttl, self.default_ttl)
        return self._one(_write_job(b"add", memcached_key(key), value, expiry))

    def replace(self, key: bytes, value: bytes, ttl: TTL = None) -> bool:
        """Store only if present. Return whether it was stored."""
        expiry = _write_expiry(ttl, self.default_ttl)
        return self._one(_write_job(b"replace", memcached_key(key), value, expiry))

    def delete(self, key: bytes) -> bool:
        """Remove the key. Return whether it existed."""
        return self._one(_delete_job(memcached_key(key)))

    def has(self, key: bytes) -> bool:
        """Return whether the key is present (memcached has no EXISTS: this reads the value)."""
        return self._one(_has_job(memcached_key(key)))

    def get_many(self, *keys: bytes) -> list[bytes | None]:
        """Return the values in key order with one ``get`` per server.

        Raises:
            BackendError: a server holding one of the keys failed (the first
                such error; :meth:`batch` reports each key on its own).
        """
        results = self._fetch(keys)
        for result in results:
            if isinstance(result, CacheORMError):
                raise result
        return cast("list[bytes | None]", results)

    def _fetch(self, keys: Sequence[bytes]) -> list[object]:
        """Read the keys (one ``get`` per server); each value, ``None`` or error, in order."""
        conns = self._checkout()
        sound = False
        try:
            exchanges, results = fetches(keys, self._room, conns.place)
            _converse(exchanges)
            sound = True
        finally:
            self._checkin(conns, sound)  # as in _execute
        for exchange in exchanges:
            exchange.fill(results)
        return results

    def _store(self, commands: Sequence[base.Set]) -> list[object]:
        """Run ``Set`` s on distinct keys (one pipeline per server); each result or error.

        A key whose value was refused as too large has its old value deleted
        next, as :meth:`_execute` does, before its error is reported.
        """
        conns = self._checkout()
        sound = False
        try:
            exchanges, results = stores(commands, self.default_ttl, self._room, conns.place)
            _converse(exchanges)
            slots, jobs = fill_stores(exchanges, results)
            if jobs:
                for slot, result in zip(slots, self._execute(jobs, given=conns), strict=True):
                    results[slot] = result
            sound = True
        finally:
            self._checkin(conns, sound)  # as in _execute
        return results

    def get_with_ttl(self, key: bytes) -> tuple[bytes, float] | None:
        """Return the value and its remaining seconds (``0.0`` = never), from its flags."""
        return self._one(_ttl_job(memcached_key(key)))

    def get_many_with_ttl(self, *keys: bytes) -> list[tuple[bytes, float] | None]:
        """:meth:`get_with_ttl` for each key, in key order, with one ``get`` per server."""
        jobs = [_ttl_job(memcached_key(key)) for key in keys]
        return cast("list[tuple[bytes, float] | None]", self._many(jobs))

    def set_many(self, mapping: Mapping[bytes, bytes], ttl: TTL = None) -> None:
        """Store every pair with one pipeline per server.

        Raises:
            ValueTooLarge: a value over the server's item limit (that key no
                longer serves its old value; the other pairs are stored).
            BackendError: a server failed (pairs on the others are stored).
        """
        commands = [base.Set(key, value, ttl) for key, value in mapping.items()]
        for result in self._store(commands):
            if isinstance(result, CacheORMError):
                raise result

    def replace_many(self, mapping: Mapping[bytes, bytes], ttl: TTL = None) -> list[bool]:
        """Replace each present key; return, in mapping order, whether each was stored."""
        expiry = _write_expiry(ttl, self.default_ttl)
        jobs = [_write_job(b"replace", memcached_key(k), v, expiry) for k, v in mapping.items()]
        return cast("list[bool]", self._many(jobs))

    def delete_many(self, *keys: bytes) -> int:
        """Remove the keys, pipelined per server; return how many existed."""
        jobs = [_delete_job(memcached_key(key)) for key in keys]
        return sum(cast("list[bool]", self._many(jobs)))

    def incr(self, key: bytes, delta: int = 1) -> int:
        """Add ``delta`` atomically and return the new value; a missing key counts as ``0``.

        Native ``incr`` where memcached can do it (non-negative value and delta),
        otherwise a ``gets``/``cas`` loop, so the result may go below zero.
        """
        k = memcached_key(key)
        return self._one(_Job(k, False, _incr_steps(k, base.check_delta(delta))))

    def decr(self, key: bytes, delta: int = 1) -> int:
        """Subtract ``delta`` atomically and return the new value (may go below zero)."""
        k = memcached_key(key)
        return self._one(_Job(k, False, _incr_steps(k, -base.check_delta(delta))))

    def touch(self, key: bytes, ttl: TTL = None) -> bool:
        """Reset the key's TTL. Return whether the key exists.

        Done as ``gets`` + ``cas`` rather than memcached ``touch``, because the
        item's flags must learn the new expiry too (for a later ``KEEP_TTL``).
        """
        k = memcached_key(key)
        return self._one(_Job(k, False, _touch_steps(k, ttl, self.default_ttl)))

    def gets(self, key: bytes) -> tuple[bytes, CasToken] | None:
        """Return the value with a token (memcached's CAS unique and the item's flags)."""
        return self._one(_gets_job(memcached_key(key)))

    def cas(
        self, key: bytes, value: bytes, token: CasToken, ttl: int | Keep | None = KEEP_TTL
    ) -> bool:
        """Store ``value`` only if the key is unchanged since ``gets``.

        ``KEEP_TTL`` re-sends the absolute expiry remembered in the item's flags.
        """
        k = memcached_key(key)
        return self._one(_cas_job(k, value, token, ttl, self.default_ttl))

    def delete_if(self, key: bytes, token: CasToken) -> bool:
        """Delete the key only if unchanged since ``gets``.

        memcached has no compare-and-delete: a ``cas`` with a negative exptime
        writes an already-expired item, which no later read can see.
        """
        k = memcached_key(key)
        return self._one(_delete_if_job(k, token))

    def batch(self, commands: Sequence[Command]) -> list[object]:
        """Run the commands with one pipeline per server; results in command order.

        All the commands for one server are sent at once and their replies read
        in order, and the servers of a pool are served concurrently: a phase of
        gets costs one ``get`` line per server, a phase of sets one pipelined
        write per server. Commands on one key run in the order given. A failing
        command has its error in its slot: a dead server's keys get its
        :class:`~cacheorm.BackendError` (``.server`` names it) after one timeout,
        while the keys of the other servers are served.
        """
        if all(type(command) is base.Get for command in commands):
            return self._fetch([command.key for command in commands])
        if distinct_sets(commands):
            return self._store(cast("Sequence[base.Set]", commands))
        try:
            jobs = _jobs(commands, self.default_ttl)
        except _Unbatched:
            return base.around_clears(commands, self.batch, self.clear_prefix)
        return self._execute(jobs)

    def server_for(self, key: bytes, reading: bool = False) -> str:
        """``"host:port"`` of the server ``key`` lives on (for the engine's fail-fast outages)."""
        return self._first.place(memcached_key(key)).name

    def clear_prefix(self, prefix: bytes, shape: re.Pattern[bytes] | None = None) -> int:
        """Remove every key under ``prefix`` (matching ``shape``) from every server.

        memcached cannot list keys with ``get``; since 1.4.31 its LRU crawler
        can: ``lru_crawler metadump all`` streams every key a server holds.
        Every server is crawled at once, and the keys in scope (told apart by
        decoding :func:`memcached_key`'s encoding) are deleted where they were
        found, pipelined in rounds of :data:`CLEAR_BATCH`. A crawl costs
        O(items on the server) (the crawler walks memory in the server's own
        threads and streams the keys: one line of about 70 bytes per item); a
        key written while it runs may survive, as with Redis ``SCAN``. It adds
        nothing to any other operation. Only one crawl runs per server at a
        time: a server busy with another client's waits up to about 6 s.

        Keys that :func:`memcached_key` had to hash (over 186 bytes and not
        printable ASCII) cannot be told apart and are left to expire.

        Raises:
            BackendError: a server could not be crawled (an older memcached,
                ``-o no_lru_crawler``) or failed; the other servers are cleared.
        """
        conns = self._checkout()
        sound = False
        try:
            steps = _clear_steps(conns.nodes, prefix, shape)
            step = next(steps)
            while True:
                if isinstance(step, float):
                    time.sleep(step)
                    step = steps.send([])
                else:
                    step = steps.send(self._execute((), step, conns))
        except StopIteration as done:
            sound = True
            return cast("int", done.value)
        finally:
            self._checkin(conns, sound)

    def ping(self) -> None:
        """Return when every server answers a read (of a key no record uses), all at once.

        Raises:
            BackendError: a server cannot be reached or does not answer within
                the timeouts (``.server`` names the first such server).
        """
        conns = self._checkout()
        sound = False
        try:
            exchanges = [_Exchange(node, [_Task(0, _get_job(PING_KEY))]) for node in conns.nodes]
            _converse(exchanges)
            sound = True
        finally:
            self._checkin(conns, sound)
        for exchange in exchanges:
            if exchange.error is not None:
                raise exchange.error

    def close(self) -> None:
        """Close the connections this backend opened; the backend is unusable after.

        A client passed in as ``client=`` is left open: its owner closes it.
        """
        self._closed = True  # sets in use are closed as their calls give them back
        if self._turn is not None:
            return  # the client's own sockets (see Threads): nothing of ours is open
        idle: list[_Conns] = []
        while True:
            try:
                idle.append(self._idle.pop())
            except IndexError:
                break
        for conns in idle:
            conns.close(owned_only=True)
        self._idle.extend(idle)


def _jobs(commands: Sequence[Command], default: int) -> list[_Job[object] | CacheORMError]:
    """The jobs of a batch, in command order; a command that cannot run gets its error."""
    jobs: list[_Job[object] | CacheORMError] = []
    add = jobs.append
    expiries: dict[TTL, tuple[int, int]] = {}  # a batch's sets share their TTL: resolved once
    for command in commands:
        kind = type(command)
        if kind is base.Get or kind is base.Set:  # the common cases, inlined
            key = command.key
            if _PLAIN_KEY.fullmatch(key) is None:
                key = memcached_key(key)
            if kind is base.Get:
                add(_Job(key, True, None, _Fetch(key, False), _value_of))
                continue
            store = cast("base.Set", command)
            expiry = expiries.get(store.ttl)
            if expiry is None:
                try:
                    expiry = expiries[store.ttl] = _write_expiry(store.ttl, default)
                except CacheORMError as err:
                    add(err)
                    continue
            add(_write_job(b"set", key, store.value, expiry))
            continue
        try:
            add(_job(command, default))
        except CacheORMError as err:
            add(err)
    return jobs


def _job(command: Command, default: int) -> _Job[object]:
    """One batch command as a job.

    Raises:
        ValidationError: an illegal TTL, or a token that is not this backend's.
    """
    k = memcached_key(command.key)
    if type(command) is base.Get:  # the common case, ahead of the match (which costs 0.1 µs)
        return _get_job(k)
    # Class patterns without sub-patterns: capturing fields costs some
    # 0.15 µs per command, 15 µs on a batch of 100.
    match command:
        case base.Get():
            return _get_job(k)
        case base.Set():
            return _write_job(b"set", k, command.value, _write_expiry(command.ttl, default))
        case base.Add():
            return _write_job(b"add", k, command.value, _write_expiry(command.ttl, default))
        case base.Replace():
            return _write_job(b"replace", k, command.value, _write_expiry(command.ttl, default))
        case base.Gets():
            return _gets_job(k)
        case base.Has():
            return _has_job(k)
        case base.Delete():
            return _delete_job(k)
        case base.Cas():
            return _cas_job(k, command.value, command.token, command.ttl, default)
        case base.DeleteIf():
            return _delete_if_job(k, command.token)
        case base.Incr():
            return _Job(k, False, _incr_steps(k, command.delta))
        case base.Clear():
            raise _Unbatched  # the batch runs it on its own (see base.around_clears)
        case _:
            assert_never(command)


def _advance(
    task: _Task,
    reply: _Item | bytes | list[bytes] | CacheORMError | None,
    results: list[object],
    server: str | None,
) -> bool:
    """Give a task its reply; return whether it sent another request (else its result is in)."""
    finish = task.finish
    if finish is not None:  # a command of one request, unless refused as too large
        if isinstance(reply, ValueTooLarge) and isinstance(task.request, _Line):
            task.finish, task.steps = None, _refused(task.request.key, reply)
            task.request = next(task.steps)
            return True
        results[task.slot] = (
            reply if isinstance(reply, CacheORMError) else _finished(finish, reply, server)
        )
        return False
    assert task.steps is not None
    try:
        if isinstance(reply, CacheORMError):
            task.request = task.steps.throw(reply)
        else:
            task.request = task.steps.send(reply)
    except StopIteration as stop:
        results[task.slot] = stop.value
        return False
    except CacheORMError as err:
        if isinstance(err, BackendError) and err.server is None:
            err.server = server
        results[task.slot] = err
        return False
    return True


def _finished(finish: Callable[[_Reply], object], reply: _Reply, server: str | None) -> object:
    """A command's result of its one reply: ``finish(reply)``, or the error it raised
    (a ``set`` answered ``NOT_STORED``), naming the server."""
    try:
        return finish(reply)
    except CacheORMError as err:
        if isinstance(err, BackendError) and err.server is None:
            err.server = server
        return err


def _round(
    queues: dict[_Node, list[_Task]], failed: dict[_Node, BackendError], results: list[object]
) -> dict[_Node, list[_Task]]:
    """Send each server its ready requests, read the replies; return what is left to run."""
    exchanges, later = _start_round(queues, failed, results)
    _converse(exchanges)
    return _end_round(exchanges, failed, results, later)


CLEAR_BATCH: Final = 2000
"""Deletes sent per round by :func:`_clear_steps` (spread over the servers, pipelined)."""

_BUSY_PAUSES: Final = (0.05, 0.1, 0.2, 0.4, 0.8, 1.6, 3.2)
"""Pauses before asking again a server whose LRU crawler is busy (about 6 s in all)."""

_Placed: TypeAlias = "list[tuple[_N, _Job[object]]]"
"""Jobs each on the server named: what a step of :func:`_clear_steps` asks to run."""


def _clear_picker(
    node_prefix: bytes, prefix: bytes, shape: re.Pattern[bytes] | None
) -> Callable[[bytes], bytes | None]:
    """What keeps a metadump line's key: the stored key (the node's prefix off) when its
    original key (see :func:`original_key`) is in ``clear``'s scope, else ``None``."""

    def pick(line: bytes) -> bytes | None:
        if not line.startswith(b"key="):
            return None
        end = line.find(b" ")
        key = unquote_to_bytes(line[4:] if end < 0 else line[4:end])
        if not key.startswith(node_prefix):
            return None
        key = key[len(node_prefix) :]
        original = original_key(key)
        return key if original is not None and base.in_scope(original, prefix, shape) else None

    return pick


def _keys_in_scope(
    nodes: Sequence[_N], prefix: bytes, shape: re.Pattern[bytes] | None
) -> Generator[
    _Placed[_N] | float, list[object], tuple[list[tuple[_N, bytes]], CacheORMError | None]
]:
    """Every server's keys in scope (see :func:`_clear_steps`), and the first failure."""
    failure: CacheORMError | None = None
    found: list[tuple[_N, bytes]] = []
    asking = list(nodes)
    for pause in (*_BUSY_PAUSES, None):
        busy: list[_N] = []
        idle: list[_N] = []
        states = yield [(node, _listing_job(_CRAWLER_STATE)) for node in asking]
        for node, state in zip(asking, states, strict=True):
            if isinstance(state, CacheORMError):
                failure = failure or state
            elif _CRAWLING in cast("list[bytes]", state):
                busy.append(node)
            else:
                idle.append(node)
        dumps: list[object] = []
        if idle:
            dumps = yield [
                (node, _listing_job(_Listing(_METADUMP, _clear_picker(node.prefix, prefix, shape))))
                for node in idle
            ]
        for node, result in zip(idle, dumps, strict=True):
            if isinstance(result, _Busy):
                busy.append(node)
            elif isinstance(result, CacheORMError):
                failure = failure or result
            else:
                found += [(node, key) for key in cast("list[bytes]", result)]
        if not busy:
            break
        if pause is None:
            failure = failure or _Busy(
                f"memcached {busy[0].name}: its LRU crawler stayed busy (another client's "
                "`lru_crawler metadump`?); clear again later",
                server=busy[0].name,
            )
            break
        asking = busy
        yield pause
    return found, failure


def _clear_steps(
    nodes: Sequence[_N], prefix: bytes, shape: re.Pattern[bytes] | None
) -> Generator[_Placed[_N] | float, list[object], int]:
    """``clear_prefix`` without I/O: yields jobs to run (answered with their results) or pauses.

    First every server lists its keys at once (``lru_crawler metadump all``),
    keeping those whose original key (see :func:`original_key`) is in scope.
    A server's crawler serves one metadump at a time, and memcached 1.6 may
    hold a second request (and the worker thread serving its connection)
    until the first is read to its end, which takes as long as its client
    does: so ``stats`` is asked first, and a server whose crawler is running
    (``lru_crawler_running 1``) is asked again after a pause, as is one that
    answers ``BUSY``. Then the kept keys are deleted on the server that
    listed them, in pipelined rounds of :data:`CLEAR_BATCH`. A server that
    failed keeps its keys; the others are cleared, then its error is raised.

    Returns:
        How many keys were deleted.

    Raises:
        BackendError: a server could not list or delete its keys, or its
            crawler stayed busy (about 6 s).
    """

    found, failure = yield from _keys_in_scope(nodes, prefix, shape)
    count = 0
    for start in range(0, len(found), CLEAR_BATCH):
        chunk = found[start : start + CLEAR_BATCH]
        results = yield [(node, _delete_job(key)) for node, key in chunk]
        for result in results:
            if isinstance(result, CacheORMError):
                failure = failure or result
            elif result:
                count += 1
    if failure is not None:
        raise failure
    return count


_CRAWLER_STATE: Final = _Listing(
    b"stats", lambda line: line if line.startswith(b"STAT lru_crawler_running ") else None
)
_CRAWLING: Final = b"STAT lru_crawler_running 1"


def _placed_queues(placed: _Placed[_N]) -> dict[_N, list[_Task]]:
    """The queues of jobs already placed (one request each, on the server named)."""
    queues: dict[_N, list[_Task]] = {}
    for slot, (node, job) in enumerate(placed):
        queues.setdefault(node, []).append(_Task(slot, job))
    return queues


class _Unbatched(Exception):
    """A :class:`~cacheorm.backends.base.Clear` met in a batch: it runs on its own."""


def _enqueue(
    jobs: Sequence[_Job[object] | CacheORMError],
    results: list[object],
    room: int,
    place: Callable[[bytes], _N],
) -> dict[_N, list[_Task]]:
    """Start the jobs: each job's first request queued on its server, in job order.

    A job that is an error, or whose key is too long, has its error put in
    ``results`` instead; a job that finished without a request, its result.
    """
    queues: dict[_N, list[_Task]] = {}
    last: _N | None = None
    queue: list[_Task] = []
    for slot, job in enumerate(jobs):
        if type(job) is _Job and job.steps is None and len(job.key) <= room:
            # The common case (a command of one request), inlined.
            node = place(job.key)
            if node is not last:
                queue = queues.setdefault(node, [])
                last = node
            queue.append(_Task(slot, job))
            continue
        if isinstance(job, CacheORMError):
            results[slot] = job
            continue
        if len(job.key) > room:
            results[slot] = _too_long(job.key, room)
            continue
        task = _Task(slot, job)
        if job.steps is None or _advance(task, None, results, None):
            queues.setdefault(place(job.key), []).append(task)
    return queues


_ONE_REPLY: Final[list[tuple[int, int, frozenset[bytes] | None]]] = [(0, 1, None)]
"""The groups of a :class:`_Lone` exchange: one reply, so it is done once ``group`` is 1."""


class _Lone(_Exchange[_N]):
    """The exchange of a command of one request run alone (most calls): an
    :class:`_Exchange` to the transports, without a round's bookkeeping.

    For a job whose ``steps`` is ``None`` and whose key fits. Its one reply (a
    line, or a fetch's item or ``None``) goes in :attr:`replies`; see
    :func:`_lone_result`.
    """

    __slots__ = ("request", "wanted")

    def __init__(self, node: _N, job: _Job[object]) -> None:
        self._begin(node, [])  # no tasks: the job's request is framed here
        self.groups = _ONE_REPLY
        request = cast("_Fetch | _Line", job.request)
        self.request = request
        if type(request) is _Fetch:
            key = node.prefix + request.key
            self.wanted: tuple[bytes] | None = (key,)  # the key of the one item it may get
            self.out = (b"gets " if request.cas else b"get ") + key + b"\r\n"
        else:
            self.wanted = None
            self.out = cast("_Line", request).framed(node.prefix)

    def parse(self) -> None:
        """Take the reply off the buffer once it is complete.

        Raises:
            _Desync: a reply that does not answer the command.
        """
        buf = self.buf
        eol = buf.find(b"\r\n")
        if eol < 0:
            return
        wanted = self.wanted
        if wanted is not None and buf.startswith(b"VALUE "):
            data = bytes(buf)
            end = self._one_item(data, 0, eol, wanted)
            if end < 0:
                return  # self.need says how much more
            if end == 0:  # not one plain item and END
                raise _Desync(data[:eol])
        else:
            line = bytes(buf[:eol])
            end = eol + 2
            if wanted is not None:  # a fetch's miss, or an error
                self.replies.append(None if line == b"END" else _reply_error(line, self.node.name))
            elif cast("_Line", self.request).answered_by(line):
                self.replies.append(line)
            else:
                self.replies.append(_reply_error(line, self.node.name))
        self.need = 0
        self.group = 1
        del buf[:end]


def _lone_result(job: _Job[object], exchange: _Lone[_N]) -> tuple[object, dict[_N, list[_Task]]]:
    """The result (or error) of a :class:`_Lone` exchange once run, and what is left to run.

    Something is left when the command sends another request (a store refused
    as too large deletes the old value): its queue then runs as rounds do.
    """
    if exchange.error is not None:
        request = exchange.request
        if type(request) is _Line and exchange.sent == len(exchange.out):
            return exchange._unknown(request.verb, request.key), {}  # a write sent in full
        return exchange.error, {}
    reply = exchange.replies[0]
    if not isinstance(reply, CacheORMError):
        assert job.finish is not None
        return _finished(job.finish, reply, exchange.node.name), {}
    # An error reply: a store refused as too large sends another request.
    task, results = _Task(0, job), cast("list[object]", [None])
    if _advance(task, reply, results, exchange.node.name):
        return results, {exchange.node: [task]}
    return results[0], {}


def _too_long(key: bytes, room: int) -> ValidationError:
    return ValidationError(
        f"memcached key {key!r} is too long once the client's "
        f"{MAX_KEY_LENGTH - room}-byte key_prefix is added (memcached "
        f"allows {MAX_KEY_LENGTH} bytes): use a shorter key or key_prefix"
    )


def _start_round(
    queues: dict[_N, list[_Task]], failed: dict[_N, BackendError], results: list[object]
) -> tuple[list[_Exchange[_N]], dict[_N, list[_Task]]]:
    """A round's exchanges (each server's ready requests) and the commands held back.

    A command waits while an earlier command on its key may still send another
    request; the commands of a server that failed earlier in the call fail now.
    """
    exchanges: list[_Exchange[_N]] = []
    later: dict[_N, list[_Task]] = {}
    for node, queue in queues.items():
        error = failed.get(node)
        if error is not None:
            for task in queue:
                results[task.slot] = error
            continue
        ready: list[_Task] = []
        held: list[_Task] = []
        busy: set[bytes] = set()  # keys whose command may send another request
        for task in queue:
            if busy and task.key in busy:
                held.append(task)
                continue
            ready.append(task)
            if not task.final:
                busy.add(task.key)
        exchanges.append(_Exchange(node, ready))
        if held:
            later[node] = held
    return exchanges, later


def _end_round(
    exchanges: list[_Exchange[_N]],
    failed: dict[_N, BackendError],
    results: list[object],
    later: dict[_N, list[_Task]],
) -> dict[_N, list[_Task]]:
    """Hand the round's replies to their commands; return what is left to run."""
    for exchange in exchanges:
        node = exchange.node
        if exchange.error is not None:
            failed[node] = exchange.error
        going: list[_Task] = []
        replies = exchange.replies
        answered = len(replies)
        for index, task in enumerate(exchange.tasks):
            if index >= answered:
                results[task.slot] = exchange.error_for(index)
                continue
            reply = replies[index]
            finish = task.finish
            if finish is not None and (reply is None or type(reply) is tuple):
                # The common case, inlined: a fetch's item or miss, whose finish cannot fail.
                results[task.slot] = finish(reply)
            elif _advance(task, reply, results, node.name):
                going.append(task)
        if going:
            # Before the held commands: they wait for these on their keys.
            later[node] = going + later.get(node, [])
    return later
