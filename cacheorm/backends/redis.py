"""The Redis backend, on redis-py: a standalone server or a Redis Cluster.

redis-py is imported only when a :class:`RedisBackend` is built, so
``import cacheorm`` works without it. Compare-and-set and compare-and-delete
are Lua scripts on a single key, so they work on a cluster too; the CAS token
is the SHA-1 of the value read by ``gets`` (Lua's ``redis.sha1hex``).

How commands travel. redis-py resends a command after a dropped connection,
including one the server already ran (its reply lost on the way back): an
``INCRBY`` counted twice, a ``SET NX`` answering "exists" for the record it
had just created. So this backend takes only redis-py's connection pools
(which connect and greet: TLS, ``AUTH``, ``HELLO``, ``SELECT``) and cluster
slot map, and speaks RESP on their sockets itself (:mod:`.resp`, which also
spares redis-py's per-command layers): one pipelined write per server,
replies read in order, several servers written before any is read.
A command is sent again only when that is safe:

* it provably did not run: the connection could not be made (nothing was
  sent), or the server refused it with ``MOVED``, ``ASK``, ``TRYAGAIN`` or
  ``NOSCRIPT``;
* it is ``GET``, ``MGET``, ``EXISTS``, ``PTTL`` or a plain ``SET`` (no
  ``NX``/``XX``), which end the same when run twice, and the connection failed
  (never after a timeout: the server may be hung, and one timeout is enough).

Any other command lost in flight raises :class:`~cacheorm.BackendError`
saying that its outcome is unknown.

How the work is split. Everything but the I/O is sans-I/O and shared with the
asyncio twin, :mod:`cacheorm.backends.aredis`: :class:`RedisCore` turns
commands into Redis commands and replies into results, and each operation is
a *plan*, a generator that yields :data:`Step` values (send these commands,
pause, update the slot map) and receives their answers. :class:`RedisBackend`
runs the plans with blocking sockets, ``AsyncRedisBackend`` with asyncio ones,
so both put the same bytes on the wire and follow the same resend rules.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import logging
import os
import re
import socket
import ssl
import threading
import time
import weakref
from binascii import crc_hqx
from collections.abc import Generator
from typing import (
    TYPE_CHECKING,
    Final,
    NamedTuple,
    Protocol,
    TypeAlias,
    TypeVar,
    assert_never,
    cast,
)
from urllib.parse import urlsplit

from cacheorm.backends import base, resp
from cacheorm.errors import (
    BackendError,
    CacheORMError,
    DecodeError,
    ValidationError,
    ValueTooLarge,
)

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping, Sequence
    from types import ModuleType

    import redis
    from redis.cluster import ClusterNode, NodesManager
    from redis.exceptions import (
        AskError,
        AuthenticationError,
        MovedError,
        NoScriptError,
        RedisClusterException,
        RedisError,
        ResponseError,
        TryAgainError,
    )
    from redis.exceptions import ConnectionError as RedisConnectionError

__all__ = ["RedisBackend"]

logger = logging.getLogger(__name__)

_T = TypeVar("_T")

# ARGV: token (sha1 hex of the expected value), new value, ttl (-1 keep, 0 never, n seconds)
_CAS_LUA: Final = """
local current = redis.call('GET', KEYS[1])
if not current or redis.sha1hex(current) ~= ARGV[1] then
  return 0
end
local ttl = tonumber(ARGV[3])
if ttl == -1 then
  redis.call('SET', KEYS[1], ARGV[2], 'KEEPTTL')
elseif ttl == 0 then
  redis.call('SET', KEYS[1], ARGV[2])
else
  redis.call('SET', KEYS[1], ARGV[2], 'EX', ttl)
end
return 1
"""

_DELETE_IF_LUA: Final = """
local current = redis.call('GET', KEYS[1])
if current and redis.sha1hex(current) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""

# PERSIST answers 0 both for "no such key" and "had no TTL"; touch needs "exists".
_PERSIST_LUA: Final = """
if redis.call('EXISTS', KEYS[1]) == 0 then
  return 0
end
redis.call('PERSIST', KEYS[1])
return 1
"""

_SCRIPTS: Final = {
    hashlib.sha1(source.encode()).hexdigest(): (name, source)
    for name, source in (
        ("cas", _CAS_LUA),
        ("delete_if", _DELETE_IF_LUA),
        ("touch", _PERSIST_LUA),
    )
}
"""SHA-1 -> (operation, Lua source): scripts run as ``EVALSHA``, then ``EVAL`` on ``NOSCRIPT``."""
_SHA: Final = {name: sha for sha, (name, _) in _SCRIPTS.items()}

_TOO_LARGE_MARKERS: Final = ("exceeds maximum allowed size", "invalid bulk length")

_MAX_EXPIRE: Final = 10**15
"""Redis refuses an ``EX`` near 2**63 milliseconds; a TTL this long means "never" anyway."""

_MAX_REDIRECTS: Final = 6
"""Rounds of MOVED/ASK/TRYAGAIN one call follows before giving up (a slot being migrated
needs at most three: ASK, then TRYAGAIN split into single keys, then their ASK)."""

_BACKOFF: Final = (0.01, 0.1)
"""First and longest pause before a resend or after TRYAGAIN, in seconds (doubling)."""


def _seconds(ttl: object, default: int) -> int:
    """``base.resolve_ttl``, with TTLs beyond what Redis can express stored without expiry."""
    seconds = base.resolve_ttl(ttl, default)
    return 0 if seconds > _MAX_EXPIRE else seconds


def _token(value: bytes) -> str:
    return hashlib.sha1(value).hexdigest()


def _value(command: base.Command, reply: object) -> object:
    """A command's result from its (successful) Redis reply."""
    match command:
        case base.Get():
            return reply
        case base.Gets():
            return None if reply is None else (reply, _token(cast("bytes", reply)))
        case base.Set():
            return True
        case base.Incr() | base.Clear():
            return cast("int", reply)
        case (
            base.Add() | base.Replace() | base.Cas() | base.Delete() | base.DeleteIf() | base.Has()
        ):
            return bool(reply)
        case _:
            assert_never(command)


_READS: Final = frozenset({base.Get, base.Gets})
"""Commands a batch of reads only may hold: it is then one ``MGET`` per slot."""


SCAN_COUNT: Final = 1000
"""The ``COUNT`` hint of each ``SCAN`` of :meth:`RedisCore.clear`: keys looked at per round."""


def _raised(outcome: object) -> object:
    """``outcome``, or raise it when it is an error."""
    if isinstance(outcome, CacheORMError):
        raise outcome
    return outcome


def _pause(attempt: int) -> float:
    first, longest = _BACKOFF
    return float(min(longest, first * 2**attempt))


# -- what this module needs from redis-py's internals, typed -------------------------


class _Connection(Protocol):
    """The part of ``redis.connection.Connection`` used here: its handshake and socket.

    redis-py connects and greets (TLS, ``AUTH``, ``HELLO``, ``SELECT``); the
    commands and replies go over its socket in RESP spoken here (:mod:`.resp`).
    """

    _sock: socket.socket | None

    def disconnect(self) -> None: ...


class _Pool(Protocol):
    """The part of ``redis.connection.ConnectionPool`` used here."""

    connection_kwargs: dict[str, object]

    def get_connection(self) -> _Connection: ...
    def release(self, connection: _Connection) -> None: ...


class Named(Protocol):
    """A cluster node, sync or asyncio: routing needs only its ``host:port`` name."""

    @property
    def name(self) -> str: ...


_N = TypeVar("_N", bound=Named)


class Driver(NamedTuple):
    """redis-py's exception classes and slot hash, imported once, on first use."""

    RedisError: type[RedisError]
    ClusterException: type[RedisClusterException]
    ResponseError: type[ResponseError]
    ConnectionError: type[RedisConnectionError]
    AuthenticationError: type[AuthenticationError]
    MovedError: type[MovedError]
    AskError: type[AskError]
    TryAgainError: type[TryAgainError]
    NoScriptError: type[NoScriptError]
    key_slot: Callable[[bytes], int]
    parse_error: resp.ParseError
    """redis-py's error-reply parser: the exception instance its clients would raise."""
    errors: tuple[type[Exception], ...]
    """What a failed call to redis-py may raise (``OSError`` included)."""


@functools.cache
def driver() -> Driver:
    """redis-py's exceptions and slot hash (redis-py is imported on first use only)."""
    from redis import exceptions as e
    from redis._parsers.base import BaseParser
    from redis.crc import key_slot

    return Driver(
        e.RedisError,
        e.RedisClusterException,
        e.ResponseError,
        e.ConnectionError,
        e.AuthenticationError,
        e.MovedError,
        e.AskError,
        e.TryAgainError,
        e.NoScriptError,
        key_slot,
        BaseParser.parse_error,
        (e.RedisError, e.RedisClusterException, OSError),
    )


def hash_slots(keys: Sequence[bytes]) -> list[int]:
    """Each key's Redis Cluster hash slot, as ``redis.crc.key_slot`` computes it.

    Without a hash tag (no ``{`` in any key: one search of them all), a slot
    is the key's CRC16 (``binascii.crc_hqx``, in C) modulo 16384, with no
    Python call per key: half the cost of a 100-key batch's slots.
    """
    if b"{" in b"".join(keys):
        key_slot = driver().key_slot
        return [key_slot(key) for key in keys]
    return [crc_hqx(key, 0) & 16383 for key in keys]


class Lost(NamedTuple):
    """A command whose reply never came: the connection failed or timed out."""

    error: Exception
    sent: bool
    """``False`` when the connection could not be made: nothing reached the server."""


_Kept: TypeAlias = "dict[_Pool, list[tuple[_Connection, float]]]"
"""Per pool, the connections a :class:`RedisBackend` keeps, each with when it was last used."""


def _give_back(kept: _Kept, disconnect: bool = False) -> None:
    """Return kept connections to their pools (at ``close`` or when the backend is collected),
    or, ``disconnect``, close them first (their server left the cluster)."""
    for pool, idle in list(kept.items()):
        while idle:
            connection, _ = idle.pop()
            with contextlib.suppress(Exception):  # a pool already closed, or of a dead fork
                if disconnect:
                    connection.disconnect()
                pool.release(connection)
    kept.clear()


class Wire:
    """One command on the wire, and what became of it."""

    __slots__ = (
        "args",
        "ask",
        "asking",
        "at",
        "key",
        "outcome",
        "parts",
        "safe",
        "slot",
        "too_large",
    )

    def __init__(self, args: tuple[object, ...], key: bytes, safe: bool) -> None:
        self.args = args
        self.key = key  # routes it on a cluster (every key of a command shares one slot)
        self.safe = safe  # ends the same if run twice: may be resent after a connection error
        self.ask: tuple[str, int] | None = None  # an ASK target (host, port), next send only
        self.at: tuple[str, int] | None = None  # the cluster node of a keyless command (SCAN)
        self.slot = -1  # its key's hash slot on a cluster, once known (-1: not yet)
        self.asking = False
        self.outcome: object = None  # the reply, or the CacheORMError for this command
        self.parts: list[Wire] | None = None  # the single-key commands it was split into
        self.too_large = False  # a DEL standing in for a refused oversized write

    def packed(self) -> list[tuple[object, ...]]:
        """The command as sent: after ``ASKING`` when an ``ASK`` redirected it."""
        return [("ASKING",), self.args] if self.asking else [self.args]

    def as_eval(self) -> None:
        """Turn an ``EVALSHA`` into the ``EVAL`` of its script's source."""
        _, source = _SCRIPTS[str(self.args[1])]
        self.args = ("EVAL", source, *self.args[2:])

    def what(self) -> str:
        """The command's name for messages (a script by the operation it implements)."""
        name = str(self.args[0])
        if name in ("EVALSHA", "EVAL"):
            script = str(self.args[1])
            found = _SCRIPTS.get(script) or next(
                (entry for entry in _SCRIPTS.values() if entry[1] == script), None
            )
            return f"{found[0] if found else 'Lua'} script ({name})"
        return name


def describe(error: BaseException) -> str:
    """``TimeoutError: Timeout reading from ...`` (redis-py's repr drops the message)."""
    return f"{type(error).__name__}: {error}"


def _keys(wire: Wire) -> Sequence[bytes]:
    """The keys a wire touches: all of a multi-key ``MGET``/``DEL``, else its routing key."""
    if wire.args[0] in _MULTI_KEY:
        return cast("Sequence[bytes]", wire.args[1:])
    return (wire.key,)


_MULTI_KEY: Final = ("MGET", "DEL", "UNLINK")
"""Commands of several keys (of one slot on a cluster): split per key after ``TRYAGAIN``."""


Reply: TypeAlias = tuple[str, Wire, object]
"""(server, wire, reply): the reply is the server's answer, its error reply, or a Lost."""


def request_of(wires: Sequence[Wire]) -> bytes:
    """The wires' commands as one write (a wire an ``ASK`` redirected after its ``ASKING``)."""
    if any(wire.asking for wire in wires):
        return resp.pack([args for wire in wires for args in wire.packed()])
    return resp.pack([wire.args for wire in wires])


def lost_replies(server: str, wires: Sequence[Wire], err: Exception, *, sent: bool) -> list[Reply]:
    """The replies of commands whose connection failed before their answers: a Lost each."""
    lost = Lost(err, sent=sent)
    return [(server, wire, lost) for wire in wires]


def pair_replies(
    server: str, wires: Sequence[Wire], got: list[object], failed: Exception | None
) -> tuple[list[Reply], bool]:
    """Pair the replies read from one connection with their wires.

    ``got`` holds the replies in order (an ``ASKING``'s own included, and
    dropped here: the command's reply tells); ``failed`` is what ended the
    exchange early, if anything. A reply that is a connection error
    (``LOADING`` ...) ends it there, as redis-py raises it; wires without a
    reply are :class:`Lost`. Returns the replies and whether the connection
    is still in step with its requests (reusable).
    """
    connection_error = driver().ConnectionError
    replies: list[Reply] = []
    index = 0
    for position, wire in enumerate(wires):
        if wire.asking:
            index += 1
        if index >= len(got):
            lost = failed or connection_error(f"no reply from {server}")
            replies.extend(lost_replies(server, wires[position:], lost, sent=True))
            return replies, False
        reply = got[index]
        index += 1
        if isinstance(reply, connection_error):
            replies.extend(lost_replies(server, wires[position:], reply, sent=True))
            return replies, False
        replies.append((server, wire, reply))
    return replies, failed is None


def _closed(server: str) -> bytes:
    raise ConnectionResetError(f"connection closed by server {server}")


def as_redis_error(server: str, err: Exception) -> Exception:
    """A socket failure as the redis-py error the resend rules expect (a timeout is final)."""
    from redis import exceptions

    if isinstance(err, TimeoutError):
        return exceptions.TimeoutError(f"Timeout reading from {server}")
    return exceptions.ConnectionError(f"Error talking to {server}: {describe(err)}")


# -- URLs and clients ---------------------------------------------------------------


def is_cluster_url(url: str) -> bool:
    """Whether ``url`` names a cluster (``redis+cluster://`` or ``rediss+cluster://``)."""
    return url.partition("://")[0].lower() in ("redis+cluster", "rediss+cluster")


def parse_cluster_url(url: str) -> tuple[str, list[tuple[str, int]]]:
    """Split ``redis+cluster://[auth@]h1:p1[,h2:p2...][?query]`` for redis-py.

    Returns the first seed as a ``redis://`` (or ``rediss://``) URL carrying the
    credentials and query, and the other seeds as ``(host, port)``.

    >>> parse_cluster_url("redis+cluster://a:1,b:2?socket_timeout=1")
    ('redis://a:1?socket_timeout=1', [('b', 2)])

    Raises:
        ValueError: a malformed URL, or a database other than 0.
    """
    parts = urlsplit(url)
    scheme = "rediss" if parts.scheme.lower() == "rediss+cluster" else "redis"
    auth, _, hosts = parts.netloc.rpartition("@")
    seeds = [seed for seed in hosts.split(",") if seed]
    if not seeds:
        raise ValueError("no host")
    if parts.path.strip("/") not in ("", "0"):
        raise ValueError("a cluster has only database 0")
    others = []
    for seed in seeds[1:]:
        host, colon, port = seed.rpartition(":")
        others.append((host, int(port)) if colon else (seed, 6379))
    first = f"{scheme}://{auth + '@' if auth else ''}{seeds[0]}"
    if parts.query:
        first += f"?{parts.query}"
    return first, others


def redact_url(url: str) -> str:
    """``url`` with its password and ``ssl_password`` value shown as ``***``.

    >>> redact_url("redis://me:secret@cache:6379/0?ssl_password=pw&x=1")
    'redis://me:***@cache:6379/0?ssl_password=***&x=1'
    """
    url = re.sub(r"(//[^/?#@]*?:)[^/?#@]*@", r"\1***@", url, count=1)
    return re.sub(r"([?&]ssl_password=)[^&#]*", r"\1***", url)


def bad_url(url: str, error: ValueError) -> ValidationError:
    """The error for a URL redis-py (or :func:`parse_cluster_url`) refused."""
    return ValidationError(
        f"not a Redis URL: {redact_url(url)!r} ({error}); use redis://host:port/db (or rediss://, "
        "unix://), or redis+cluster://host:port[,host:port...] for a cluster"
    )


def no_slot_map(url: str, error: Exception) -> BackendError:
    """The error for a cluster whose seeds gave no slot map."""
    return BackendError(
        f"cannot read the cluster's slot map from the seeds of {redact_url(url)!r}: {error}; "
        "check that the nodes are up, reachable and in cluster mode",
        server=urlsplit(url).netloc.rpartition("@")[2],
    )


def decoding_refused(name: str) -> ValidationError:
    """The error for a client created with ``decode_responses=True``."""
    return ValidationError(f"{name} stores bytes: create the client with decode_responses=False")


def _cluster_node(host: str, port: int) -> ClusterNode:
    from redis.cluster import ClusterNode

    return ClusterNode(host, port)  # type: ignore[no-untyped-call]  # redis-py leaves it unannotated


def _cluster_client(
    url: str, redis_module: ModuleType, options: dict[str, object]
) -> redis.RedisCluster:
    """Build a ``redis.RedisCluster`` from a ``redis+cluster://`` URL.

    Raises:
        ValueError: a malformed URL, or a database other than 0.
        redis.exceptions.RedisClusterException: no seed answered with a slot map.
    """
    first, others = parse_cluster_url(url)
    seeds = [_cluster_node(host, port) for host, port in others]
    client: redis.RedisCluster = redis_module.RedisCluster(
        url=first, startup_nodes=seeds, **options
    )
    return client


def standalone_server(connection_kwargs: Mapping[str, object]) -> str:
    """``host:port`` (or the socket path) of a standalone client, for errors."""
    where = connection_kwargs.get("path") or (
        f"{connection_kwargs.get('host')}:{connection_kwargs.get('port')}"
    )
    return str(where)


# -- plans: the sans-I/O half, shared with the asyncio backend ----------------------


class Exchange(NamedTuple):
    """Send these commands (one pipeline per server) and answer with their :data:`Reply` list."""

    wires: list[Wire]


class Pause(NamedTuple):
    """Sleep this many seconds (before a resend, or while a slot migrates); answer ``None``."""

    seconds: float


class Moved(NamedTuple):
    """Record a ``MOVED`` slot in the slot map (re-read the map if unknown); answer ``None``."""

    error: MovedError


class Refresh(NamedTuple):
    """Re-read the slot map soon, without making the call wait; answer ``None``."""

    failed: str
    """The server that failed, asked for the map last; ``""`` after a ``MOVED`` (none failed)."""


class Primaries(NamedTuple):
    """Answer with the ``(host, port)`` of every master of the cluster, from the slot map."""


Step: TypeAlias = Exchange | Pause | Moved | Refresh | Primaries
Plan: TypeAlias = Generator[Step, object, _T]
"""An operation as a generator of steps; its return value is the operation's result."""


def _unknown(replies: list[Reply]) -> set[bytes]:
    """Keys whose state is unknown after these replies.

    A read or ``SET`` of them, resent alone, would run after commands of the
    same batch that may or may not have run.
    """
    return {
        key
        for _, wire, reply in replies
        if isinstance(reply, Lost) and reply.sent and not wire.safe
        for key in _keys(wire)
    }


class _Round:
    """What one exchange decided: what to send again, and why."""

    __slots__ = ("again", "failed", "moved", "redirected", "resent", "waiting")

    def __init__(self) -> None:
        self.again: list[Wire] = []
        self.failed: str | None = None
        self.moved: list[MovedError] = []
        self.resent = self.redirected = self.waiting = False


def route(
    core: RedisCore,
    wires: Sequence[Wire],
    slot_node: Callable[[int], _N],
    ask_node: Callable[[str, int], _N],
) -> list[tuple[_N, list[Wire]]]:
    """Group the wires per cluster node; a wire whose slot has no owner gets its error."""
    key_slot = core.d.key_slot
    groups: dict[str, tuple[_N, list[Wire]]] = {}
    for wire in wires:
        if wire.ask is not None:
            node = ask_node(*wire.ask)
        elif wire.at is not None:
            node = ask_node(*wire.at)
        else:
            try:
                slot = wire.slot
                if slot < 0:
                    slot = wire.slot = key_slot(wire.key)
                node = slot_node(slot)
            except core.d.errors as err:  # the slot map has no owner for this slot
                wire.outcome = error(
                    f"redis {wire.what()}: no cluster node serves the slot of {wire.key!r} "
                    f"({err}); check that every slot is assigned",
                    err,
                    core.server,
                )
                continue
        group = groups.get(node.name)
        if group is None:
            group = groups[node.name] = (node, [])
        group[1].append(wire)
    return list(groups.values())


def error(message: str, cause: BaseException, server: str | None) -> BackendError:
    """A ``BackendError`` chained to ``cause`` (logged at debug level)."""
    logger.debug("%s", message)
    result = BackendError(message, server=server)
    result.__cause__ = cause
    return result


class RedisCore:
    """The sans-I/O half of both Redis backends: commands, replies, errors, resend rules.

    Its plans (``get_many``, ``batch``, ...) yield :data:`Step` values; a
    driver (:class:`RedisBackend`, ``AsyncRedisBackend``) performs them.
    """

    def __init__(
        self,
        *,
        name: str,
        default_ttl: int,
        retries: int,
        max_value_size: int,
    ) -> None:
        """Check the options shared by both backends.

        Raises:
            ValidationError: an illegal ``default_ttl`` or a negative ``retries``.
        """
        self.default_ttl = _seconds(default_ttl, 0)
        if retries < 0:
            raise ValidationError(f"retries must be an int >= 0, got {retries!r}")
        self.name = name
        self.retries = retries
        self.max_value_size = max_value_size
        self.d = driver()
        self.server = "redis"  # set by the driver once it knows its client
        self.cluster = False

    # -- commands ----------------------------------------------------------------------

    def _cas_ttl(self, ttl: int | base.Keep | None) -> int:
        return -1 if ttl is base.KEEP_TTL else _seconds(ttl, self.default_ttl)

    def wire(self, command: base.Command) -> Wire:
        """The command as Redis runs it (the one place a command becomes a Redis command).

        Raises:
            ValidationError: a bad TTL, or a token that is not this backend's.
        """
        # Class patterns without sub-patterns: capturing fields costs some
        # 0.15 µs per command, 15 µs on a batch of 100.
        key = command.key
        match command:
            case base.Get() | base.Gets():
                return Wire(("GET", key), key, True)
            case base.Set():
                return self._store(key, command.value, command.ttl, ())
            case base.Add():
                return self._store(key, command.value, command.ttl, ("NX",))
            case base.Replace():
                return self._store(key, command.value, command.ttl, ("XX",))
            case base.Cas():
                token = base.check_token(command.token, str, "cas")  # SHA-1 hex
                args = (token, command.value, self._cas_ttl(command.ttl))
                if len(command.value) > self.max_value_size:
                    return self._oversized(key)
                return Wire(("EVALSHA", _SHA["cas"], 1, key, *args), key, False)
            case base.DeleteIf():
                token = base.check_token(command.token, str, "delete_if")
                return Wire(("EVALSHA", _SHA["delete_if"], 1, key, token), key, False)
            case base.Delete():
                return Wire(("DEL", key), key, False)
            case base.Has():
                return Wire(("EXISTS", key), key, True)
            case base.Incr():
                return Wire(("INCRBY", key, command.delta), key, False)
            case base.Clear():
                raise ValidationError(  # batch() runs a Clear on its own, never as a wire
                    "a Clear cannot be pipelined: run it with clear_prefix"
                )
            case _:
                assert_never(command)

    def _store(self, key: bytes, value: bytes, ttl: base.TTL, condition: tuple[str, ...]) -> Wire:
        """``SET [NX|XX] [EX]``: unconditional (``condition`` empty) is safe to resend."""
        seconds = _seconds(ttl, self.default_ttl)
        if len(value) > self.max_value_size:
            return self._oversized(key)
        extra: tuple[object, ...] = ("EX", seconds) if seconds else ()
        return Wire(("SET", key, value, *condition, *extra), key, not condition)

    def _oversized(self, key: bytes) -> Wire:
        """Refuse a value over the limit, and make sure the key serves no older value."""
        wire = Wire(("DEL", key), key, False)
        wire.too_large = True
        return wire

    def too_large(self) -> ValueTooLarge:
        """The error for a value over ``max_value_size``."""
        return ValueTooLarge(
            f"value larger than max_value_size={self.max_value_size} bytes "
            "(Redis refuses strings over proto-max-bulk-len, 512 MB by default); store less"
        )

    def result(self, command: base.Command, wire: Wire) -> object:
        """The command's result from its wire's outcome (an error stays an error)."""
        reply = wire.outcome
        if isinstance(reply, CacheORMError):
            return reply
        if wire.too_large:
            return self.too_large()
        return _value(command, reply)

    def per_slot(self, keys: Sequence[bytes]) -> list[list[int]]:
        """Indexes of ``keys`` grouped by hash slot (one group on a standalone server)."""
        return list(self.slot_groups(keys).values())

    def slot_groups(self, keys: Sequence[bytes]) -> dict[int, list[int]]:
        """Indexes of ``keys`` by hash slot (all under slot -1 on a standalone server)."""
        if not self.cluster:
            return {-1: list(range(len(keys)))}
        slots: dict[int, list[int]] = {}
        for index, slot in enumerate(hash_slots(keys)):
            group = slots.get(slot)
            if group is None:
                slots[slot] = [index]
            else:
                group.append(index)
        return slots

    # -- sending: the resend and redirection rules ----------------------------------------

    def run(self, wires: Sequence[Wire]) -> Plan[None]:
        """Send the wires, follow redirections, resend what is safe; set every outcome."""
        pending = list(wires)
        resends = redirects = 0
        while pending:
            replies = cast("list[Reply]", (yield Exchange(pending)))
            done = self._settle(replies, resends, redirects)
            for moved in done.moved:
                yield Moved(moved)
            if done.failed is not None and self.cluster:
                yield Refresh(done.failed)
            elif done.moved:  # slots changed hands: the whole map is re-read in the background,
                yield Refresh("")  # so a master that left it is let go (its connections closed)
            if done.resent:
                yield Pause(_pause(resends))
                resends += 1
            if done.redirected:
                if done.waiting:
                    yield Pause(_pause(redirects))
                redirects += 1
            pending = done.again
        for wire in wires:
            if wire.parts is not None:
                wire.outcome = self._combine(wire)

    def _settle(self, replies: list[Reply], resends: int, redirects: int) -> _Round:
        """Give each wire its outcome, or queue it again when the rules allow."""
        d, done = self.d, _Round()
        unknown: set[bytes] | None = None
        for server, wire, reply in replies:
            if isinstance(reply, Lost):
                done.failed = server
                if unknown is None:
                    unknown = _unknown(replies)
                if resends < self.retries and self._may_resend(wire, reply, unknown):
                    done.again.append(wire)
                    done.resent = True
                else:
                    wire.outcome = self.lost_error(wire, reply, server)
            elif isinstance(reply, d.ResponseError):
                follow = self._follow(wire, reply, done) if redirects < _MAX_REDIRECTS else None
                if follow is None:
                    wire.outcome = self.reply_error(wire, reply, server)
                else:
                    done.again.extend(follow)
                    done.redirected = True
                    # TRYAGAIN on a command that cannot be split: give the migration time.
                    done.waiting = done.waiting or (
                        isinstance(reply, d.TryAgainError) and wire.parts is None
                    )
            else:
                wire.outcome = reply
        return done

    def _may_resend(self, wire: Wire, lost: Lost, unknown: set[bytes]) -> bool:
        """A connection error (never a timeout) before sending, or on a command safe to repeat.

        A safe command is not resent when a command on one of its keys was lost
        too: its reply would then depend on whether that other command ran.
        """
        error = lost.error
        if not isinstance(error, self.d.ConnectionError):
            return False
        if isinstance(error, self.d.AuthenticationError):
            return False
        if not lost.sent:
            return True
        return wire.safe and not any(key in unknown for key in _keys(wire))

    def _follow(self, wire: Wire, error: Exception, done: _Round) -> list[Wire] | None:
        """The wires to send again after an error reply that proves nothing ran, else None."""
        d = self.d
        if isinstance(error, d.NoScriptError) and wire.args[0] == "EVALSHA":
            wire.as_eval()
            return [wire]
        if not self.cluster:
            return None
        wire.ask, wire.asking = None, False
        if isinstance(error, d.MovedError):
            done.moved.append(error)
            return [wire]
        if isinstance(error, d.AskError):
            wire.ask, wire.asking = (error.host, error.port), True
            return [wire]
        if isinstance(error, d.TryAgainError):
            # A multi-key command on a slot being migrated, some keys moved already.
            # Each key alone is served (or ASK-redirected): split it.
            if wire.args[0] in _MULTI_KEY and len(wire.args) > 2:
                single = "GET" if wire.args[0] == "MGET" else str(wire.args[0])
                wire.parts = [
                    Wire((single, key), cast("bytes", key), wire.safe) for key in wire.args[1:]
                ]
                return wire.parts
            return [wire]
        return None

    @staticmethod
    def _combine(wire: Wire) -> object:
        """The outcome of a command split into single-key parts: MGET a list, DEL a count."""
        assert wire.parts is not None
        outcomes = [part.outcome for part in wire.parts]
        if wire.args[0] == "MGET":
            return outcomes
        for outcome in outcomes:
            if isinstance(outcome, CacheORMError):
                return outcome
        return sum(cast("int", outcome) for outcome in outcomes)

    # -- errors -------------------------------------------------------------------

    def lost_error(self, wire: Wire, lost: Lost, server: str) -> BackendError:
        """The error for a command whose reply never came (says whether it may have run)."""
        what, err = wire.what(), describe(lost.error)
        if not lost.sent:
            message = (
                f"redis {what}: cannot reach {server} ({err}); nothing was sent. "
                "Check that the server is up, reachable and answering within the timeouts"
            )
        elif wire.safe:
            message = (
                f"redis {what} on {server} failed: {err}; check that the server is up, "
                "reachable and answering within the socket timeout"
            )
        else:
            message = (
                f"redis {what} on {server}: {err} after the command was sent; its outcome "
                "is unknown (the server may have run it; not resent). Read the key to see "
                "whether it took effect"
            )
        return error(message, lost.error, server)

    def reply_error(self, wire: Wire, error: Exception, server: str) -> CacheORMError:
        """Translate an error reply: wrong type, too large, not a counter, or a server failure."""
        d, what, text = self.d, wire.what(), str(error)
        result: CacheORMError
        if text.startswith("WRONGTYPE"):
            result = DecodeError(
                f"redis {what}: key {wire.key!r} holds a list, hash, set or other "
                "non-string value, not one cacheorm stored; delete the key or use another "
                "namespace"
            )
        elif any(marker in text for marker in _TOO_LARGE_MARKERS):
            result = ValueTooLarge(
                f"redis {what}: value larger than the server accepts "
                "(proto-max-bulk-len, 512 MB by default); store less"
            )
        elif "not an integer" in text or "increment or decrement would overflow" in text:
            result = ValidationError(
                f"redis {what}: the value at {wire.key!r} is not a 64-bit integer counter, "
                f"or the result would overflow ({text})"
            )
        elif isinstance(error, (d.MovedError, d.AskError)) and not self.cluster:
            result = BackendError(
                f"redis {what}: {server} is a Redis Cluster node ({text}); "
                "use a redis+cluster:// URL or a redis.RedisCluster client",
                server=server,
            )
        elif isinstance(error, (d.MovedError, d.AskError, d.TryAgainError)):
            result = BackendError(
                f"redis {what}: the slot of {wire.key!r} kept moving ({type(error).__name__} "
                f"{text}) after {_MAX_REDIRECTS} redirections; try again",
                server=server,
            )
        else:
            result = BackendError(f"redis {what} on {server} failed: {text}", server=server)
        logger.debug("redis %s on %s: %r", what, server, error)
        result.__cause__ = error
        return result

    # -- plans: one per operation, run by either driver -------------------------------

    def one(self, command: base.Command) -> Plan[object]:
        """Run one command; return its result or raise its error."""
        wire = self.wire(command)
        yield from self.run((wire,))
        result = self.result(command, wire)
        if isinstance(result, CacheORMError):
            raise result
        return result

    def call(self, args: tuple[object, ...], key: bytes, safe: bool) -> Plan[object]:
        """Run one raw command; return its reply or raise its error."""
        wire = Wire(args, key, safe)
        yield from self.run((wire,))
        if isinstance(wire.outcome, CacheORMError):
            raise wire.outcome
        return wire.outcome

    def run_all(self, wires: list[Wire]) -> Plan[list[object]]:
        """Run the wires; return their outcomes, raising the first error among them."""
        yield from self.run(wires)
        outcomes = [wire.outcome for wire in wires]
        for outcome in outcomes:
            if isinstance(outcome, CacheORMError):
                raise outcome
        return outcomes

    def mget(self, keys: Sequence[bytes]) -> Plan[list[object]]:
        """One ``MGET`` per slot; each key's value, or the error that kept it from being read."""
        by_slot = self.slot_groups(keys)
        groups = list(by_slot.values())
        wires = []
        for slot, group in by_slot.items():
            first = keys[group[0]]
            # A slot of one key (most, on a cluster): GET, whose reply is the value itself.
            args = ("GET", first) if len(group) == 1 else ("MGET", *[keys[i] for i in group])
            wire = Wire(args, first, True)
            wire.slot = slot  # computed once (-1 on a standalone server: never routed)
            wires.append(wire)
        yield from self.run(wires)
        found: list[object] = [None] * len(keys)
        for group, wire in zip(groups, wires, strict=True):
            outcome = wire.outcome
            if isinstance(outcome, DecodeError):  # a GET's WRONGTYPE: missing, as for MGET
                outcome = None
            if len(group) == 1:  # a GET: its value, None or error
                found[group[0]] = outcome
                continue
            values = outcome if isinstance(outcome, list) else [outcome] * len(group)
            for index, value in zip(group, values, strict=True):
                found[index] = value
        return found

    def get_many(self, keys: Sequence[bytes]) -> Plan[list[bytes | None]]:
        """See :meth:`RedisBackend.get_many`."""
        if not keys:
            return []
        found = yield from self.mget(keys)
        for value in found:
            if isinstance(value, CacheORMError):
                raise value
        return cast("list[bytes | None]", found)

    def get_many_with_ttl(self, keys: Sequence[bytes]) -> Plan[list[tuple[bytes, float] | None]]:
        """See :meth:`RedisBackend.get_many_with_ttl`."""
        wires: list[Wire] = []
        for key in keys:
            wires.append(Wire(("GET", key), key, True))
            wires.append(Wire(("PTTL", key), key, True))
        replies = yield from self.run_all(wires)
        found: list[tuple[bytes, float] | None] = []
        for i in range(0, len(replies), 2):
            value = cast("bytes | None", replies[i])
            pttl = cast("int", replies[i + 1])
            # PTTL: -1 no expiry; -2 gone since the GET; 0 expiring this millisecond
            # (reported as 1 ms: 0.0 would mean never).
            if value is None or pttl == -2:
                found.append(None)
            else:
                found.append((value, 0.0 if pttl == -1 else max(pttl, 1) / 1000))
        return found

    def set_many(self, mapping: Mapping[bytes, bytes], ttl: base.TTL) -> Plan[None]:
        """See :meth:`RedisBackend.set_many`."""
        wires = [self.wire(base.Set(key, value, ttl)) for key, value in mapping.items()]
        oversized = [wire for wire in wires if wire.too_large]
        yield from self.run_all(oversized or wires)
        if oversized:
            raise self.too_large()

    def replace_many(self, mapping: Mapping[bytes, bytes], ttl: base.TTL) -> Plan[list[bool]]:
        """See :meth:`RedisBackend.replace_many`."""
        commands = [base.Replace(key, value, ttl) for key, value in mapping.items()]
        wires = [self.wire(command) for command in commands]
        yield from self.run(wires)
        results = [self.result(c, wire) for c, wire in zip(commands, wires, strict=True)]
        for result in results:
            if isinstance(result, CacheORMError):
                raise result
        return cast("list[bool]", results)

    def delete_many(self, keys: Sequence[bytes]) -> Plan[int]:
        """See :meth:`RedisBackend.delete_many`."""
        if not keys:
            return 0
        wires = [
            Wire(("DEL", *[keys[i] for i in group]), keys[group[0]], False)
            for group in self.per_slot(keys)
        ]
        counts = yield from self.run_all(wires)
        return sum(cast("int", count) for count in counts)

    def touch(self, key: bytes, ttl: base.TTL) -> Plan[bool]:
        """See :meth:`RedisBackend.touch`."""
        seconds = _seconds(ttl, self.default_ttl)
        if seconds:
            found = yield from self.call(("EXPIRE", key, seconds), key, False)
        else:
            found = yield from self.call(("EVALSHA", _SHA["touch"], 1, key), key, False)
        return bool(found)

    def gets(self, key: bytes) -> Plan[tuple[bytes, base.CasToken] | None]:
        """See :meth:`RedisBackend.gets`."""
        value = cast("bytes | None", (yield from self.call(("GET", key), key, True)))
        return None if value is None else (value, _token(value))

    def batch(self, commands: Sequence[base.Command]) -> Plan[list[object]]:
        """See :meth:`RedisBackend.batch`."""
        if len(commands) <= 1:
            alone: list[object] = []
            for command in commands:
                alone.append((yield from self._alone(command)))
            return alone
        kinds = {type(command) for command in commands}
        if base.Clear in kinds:
            return (yield from self._around_clears(commands))
        if kinds <= _READS:
            values = yield from self.mget([command.key for command in commands])
            if kinds == {base.Get}:
                return values  # each a value, or the error that kept its key from being read
            return [
                value if isinstance(value, CacheORMError) else _value(command, value)
                for command, value in zip(commands, values, strict=True)
            ]
        results: list[object] = [None] * len(commands)
        wires: list[Wire] = []
        queued: list[int] = []
        for index, command in enumerate(commands):
            try:
                wire = self.wire(command)
            except ValidationError as err:
                results[index] = err
                continue
            if wire.args[0] == "EVALSHA":
                # Inside a pipeline a NOSCRIPT resend would run after the commands that
                # follow it on the same key: send the source, which needs no loading.
                wire.as_eval()
            wires.append(wire)
            queued.append(index)
        yield from self.run(wires)
        for index, wire in zip(queued, wires, strict=True):
            results[index] = self.result(commands[index], wire)
        return results

    def _alone(self, command: base.Command) -> Plan[object]:
        """Run one command of a batch; return its result or its error."""
        try:
            if isinstance(command, base.Incr):
                base.check_delta(command.delta)
            if isinstance(command, base.Clear):
                return (yield from self.clear(command.prefix, command.shape))
            return (yield from self.one(command))
        except CacheORMError as err:
            return err

    def _around_clears(self, commands: Sequence[base.Command]) -> Plan[list[object]]:
        """A batch holding a :class:`~cacheorm.backends.base.Clear`: the commands before it
        pipelined, then the clear, then the rest, in order."""
        results: list[object] = []
        start = 0
        for index, command in enumerate(commands):
            if isinstance(command, base.Clear):
                results += yield from self.batch(commands[start:index])
                results.append((yield from self._alone(command)))
                start = index + 1
        results += yield from self.batch(commands[start:])
        return results

    def clear(self, prefix: bytes, shape: re.Pattern[bytes] | None) -> Plan[int]:
        """See :meth:`RedisBackend.clear_prefix`: ``SCAN`` every master, ``UNLINK`` what matches.

        Each round sends every master still scanning its next ``SCAN`` and,
        in the same pipelines, the ``UNLINK`` of what the previous round found
        (one per slot on a cluster), so a round is one round trip per master.
        Both are safe to resend: a ``SCAN`` changes nothing, and an ``UNLINK``
        run twice removes nothing more (its second count is ``0``).
        """
        masters: list[tuple[str, int] | None] = [None]
        if self.cluster:
            masters = list(cast("list[tuple[str, int]]", (yield Primaries())))
        pattern = base.glob_escape(prefix) + b"*"
        cursors: dict[tuple[str, int] | None, bytes] = dict.fromkeys(masters, b"0")
        unlinks: list[Wire] = []
        count = 0
        while cursors or unlinks:
            scans: list[Wire] = []
            for master, cursor in cursors.items():
                scan = Wire(("SCAN", cursor, "MATCH", pattern, "COUNT", SCAN_COUNT), b"", True)
                scan.at = master
                scans.append(scan)
            yield from self.run([*scans, *unlinks])
            for wire in unlinks:
                count += cast("int", _raised(wire.outcome))
            found: list[bytes] = []
            for master, scan in zip(list(cursors), scans, strict=True):
                cursor, keys = cast("tuple[bytes, list[bytes]]", _raised(scan.outcome))
                if cursor in (b"0", 0):
                    del cursors[master]
                else:
                    cursors[master] = cursor
                found += [key for key in keys if base.in_scope(key, prefix, shape)]
            unlinks = [
                Wire(("UNLINK", *[found[i] for i in group]), found[group[0]], True)
                for group in (self.per_slot(found) if found else [])
            ]
        return count

    def ping(self) -> Plan[None]:
        """``PING`` (on a cluster, the node of an arbitrary slot)."""
        yield from self.call(("PING",), b"", True)


class RedisSetup:
    """What both Redis backends set up alike: the checked options, the core, the client's owner."""

    default_ttl: int

    def _set_up(
        self,
        name: str,
        client: object,
        url: str | None,
        default_ttl: int,
        retries: int,
        max_value_size: int,
    ) -> RedisCore:
        """Check the options and return the backend's :class:`RedisCore`.

        Raises:
            ValidationError: an illegal ``default_ttl``, a negative ``retries``,
                or neither or both of ``client`` and ``url``.
        """
        core = RedisCore(
            name=name, default_ttl=default_ttl, retries=retries, max_value_size=max_value_size
        )
        self._core = core
        self.default_ttl = core.default_ttl
        self._errors = core.d.errors
        if (client is None) == (url is None):
            raise ValidationError(f"{name} needs exactly one of client= or url=")
        self._owns_client = client is None
        return core


class RedisBackend(RedisSetup):
    """Store bytes in Redis, standalone or cluster.

    Built from ``url``, the client gets explicit limits instead of redis-py
    8.1's defaults (no socket timeout, so a hung server blocks forever; ten
    retries, timeouts included, with up to 1 s of backoff each; on a cluster
    ten more rounds, each after a slot-map refresh): ``socket_timeout`` and
    ``socket_connect_timeout`` seconds, and at most ``retries`` resends, 10 ms
    apart doubling up to 100 ms, only where the module docstring says a resend
    is safe. A timeout is never retried.

    The bound. An attempt waits at most ``socket_connect_timeout`` to connect
    and ``socket_timeout`` for the replies. A timeout is final for the
    commands it hit; only a connection error (refused, reset) leads to a
    resend, at most ``retries`` of them. So a call waits at most
    ``(1 + retries) x (socket_connect_timeout + socket_timeout)``, and a hung
    or unreachable server costs it one timeout. Servers are written before any
    is read, so a hung cluster master costs one timeout per call whatever the
    number of keys; its keys fail with ``BackendError`` while the other
    masters' keys are served (connections are opened one server after
    another, so several masters unreachable at once cost one connect timeout
    each). On a cluster, a failed node also triggers a slot-map refresh
    (``CLUSTER SLOTS``, in a background thread: no call waits for it), and
    redirections are followed at most six rounds, with pauses of 10 to 100 ms
    after a ``TRYAGAIN`` on a command that cannot be split.

    Connections. redis-py opens and greets each connection (TLS, ``AUTH``,
    ``HELLO``, ``SELECT``); the commands go over its socket in RESP spoken
    here. Between calls this backend keeps the connections of a client it
    made itself (redis-py's pool polls every connection it hands out and
    records metrics both ways, ~9 µs of CPU per call); one idle for more than
    20 ms is polled before reuse, so a server that closed it is found out
    before anything is sent. A ``client=`` given in gets its connection back
    after every call.

    Multi-key calls never raise ``CROSSSLOT`` on a cluster: ``get_many`` and a
    :meth:`batch` of reads use one ``MGET`` per hash slot, ``delete_many`` one
    ``DEL`` per slot, other batches one pipeline per node. While a slot is
    being migrated, an ``MGET`` answered ``TRYAGAIN`` is split into single-key
    ``GET`` commands, which the ``ASK`` redirection then serves.

    A multi-key read reports a key holding a list, hash or other non-string
    type as missing (``MGET`` does); a single read raises
    :class:`~cacheorm.DecodeError` naming the key.

    Every ``BackendError`` carries ``server`` (``"host:port"``): the node that
    failed, or on a cluster the seed when no node could be chosen.

    Args:
        client: a ``redis.Redis`` or ``redis.RedisCluster`` created with
            ``decode_responses=False``. Its socket timeouts apply, and its
            retry policy applies only to *opening* connections; commands are
            sent by this backend under the rules above (``retries`` resends),
            never by the client's own retry loop. redis-py's defaults have no
            socket timeout and retry a failed connect ten times, timeouts
            included, so the bound below does not hold for them: prefer
            ``url``, or give the client ``socket_timeout``,
            ``socket_connect_timeout`` and ``retry=Retry(NoBackoff(), 0)``
            (a ``RedisCluster`` takes ``retry`` for itself; its node
            connections never retry). :meth:`close` leaves it open: its owner
            closes it.
        url: used when ``client`` is not given. ``redis://host:port/db``
            (``rediss://``, ``unix://``) for one server;
            ``redis+cluster://host:port`` (or ``rediss+cluster://``) for a
            cluster, with several seeds as ``redis+cluster://h1:p1,h2:p2``.
            redis-py's query parameters (``?socket_timeout=0.5``) override the
            keyword arguments below.
        default_ttl: seconds used when a call passes ``ttl=None``; ``0`` = never.
        socket_timeout: seconds to wait for a reply (``url`` only).
        socket_connect_timeout: seconds to wait for a connection (``url`` only).
        retries: how many times a command may be resent after a connection
            error, when the rules above allow it.
        max_value_size: the largest value accepted, in bytes; set it to the
            server's ``proto-max-bulk-len`` if that was lowered (a server
            refusing a value closes the connection, seen as ``BackendError``).

    Raises:
        ValidationError: neither or both of ``client`` and ``url``, a bad URL,
            a client that decodes responses, an illegal ``default_ttl``, or
            negative ``retries``.
        BackendError: a ``redis+cluster://`` URL whose seeds cannot be reached
            (a cluster client reads the slot map when it is built).
    """

    default_ttl: int

    def __init__(
        self,
        client: redis.Redis | redis.RedisCluster | None = None,
        url: str | None = None,
        *,
        default_ttl: int = 0,
        socket_timeout: float = 2.0,
        socket_connect_timeout: float = 2.0,
        retries: int = 1,
        max_value_size: int = 512 * 1024 * 1024,
    ) -> None:
        import redis as redis_module

        core = self._set_up("RedisBackend", client, url, default_ttl, retries, max_value_size)
        if client is None:
            assert url is not None
            client = self._from_url(redis_module, url, socket_timeout, socket_connect_timeout)
        if client.get_connection_kwargs().get("decode_responses"):
            raise decoding_refused("RedisBackend")
        self._client: redis.Redis | redis.RedisCluster = client
        self._nodes: NodesManager | None = None
        self._new_nodes: dict[str, ClusterNode] = {}  # ASK targets not in the slot map yet
        self._refresh_lock = threading.Lock()
        self._refreshing = 0  # the pid whose slot-map refresh thread is running
        # Connections kept between calls, per pool (see _checkout); this process's only.
        self._kept: _Kept = {}
        self._forks = base.forks()
        weakref.finalize(self, _give_back, self._kept)
        if isinstance(client, redis_module.RedisCluster):
            self._nodes = client.nodes_manager
            seeds = client.startup_nodes  # as given: the node map replaces its own copy
            core.server = seeds[0].name if seeds else "cluster"
            core.cluster = True
        else:
            core.server = standalone_server(client.connection_pool.connection_kwargs)
        self._server = core.server

    def _from_url(
        self,
        redis_module: ModuleType,
        url: str,
        socket_timeout: float,
        socket_connect_timeout: float,
    ) -> redis.Redis | redis.RedisCluster:
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        # redis-py itself retries nothing: this backend decides what may be resent.
        options: dict[str, object] = {
            "socket_timeout": socket_timeout,
            "socket_connect_timeout": socket_connect_timeout,
            "retry": Retry(NoBackoff(), 0),
        }
        try:
            if is_cluster_url(url):
                return _cluster_client(url, redis_module, options)
            client: redis.Redis = redis_module.Redis.from_url(url, **options)
        except ValueError as err:
            raise bad_url(url, err) from err
        except self._errors as err:  # only a cluster connects when built
            raise no_slot_map(url, err) from err
        return client

    # -- driving plans ----------------------------------------------------------------

    def _drive(self, plan: Plan[_T]) -> _T:
        """Run a plan's steps with blocking I/O; return its result."""
        try:
            step = next(plan)
            while True:
                step = plan.send(self._step(step))
        except StopIteration as done:
            return cast("_T", done.value)

    def _step(self, step: Step) -> object:
        match step:
            case Exchange():
                return self._exchange(self._route(step.wires))
            case Pause():
                time.sleep(step.seconds)
            case Moved():
                assert self._nodes is not None
                try:
                    self._nodes.move_slot(step.error)
                except KeyError:  # a slot the map did not know: read the whole map again
                    self._refresh(None)
            case Refresh():
                self._refresh_soon(step.failed)
            case Primaries():
                assert self._nodes is not None
                return [(n.host, n.port) for n in self._nodes.get_nodes_by_server_type("primary")]
            case _:
                assert_never(step)
        return None

    def _route(self, wires: Sequence[Wire]) -> list[tuple[str, redis.Redis, list[Wire]]]:
        """Group the wires per server: one group, or one per cluster node of their slots."""
        if self._nodes is None:
            return [(self._server, cast("redis.Redis", self._client), list(wires))]
        cluster = cast("redis.RedisCluster", self._client)
        groups = route(self._core, wires, self._slot_owner, self._ask_target)
        return [(node.name, cluster.get_redis_connection(node), group) for node, group in groups]

    def _slot_owner(self, slot: int) -> ClusterNode:
        """The master serving ``slot``, read from the slot map without redis-py's lock and
        deprecation wrapper (a fifth of a 100-key ``get_many`` on a cluster); redis-py's
        own lookup raises its error for a slot nobody serves."""
        assert self._nodes is not None
        owners = self._nodes.slots_cache.get(slot)
        if owners:
            return owners[0]
        return self._nodes.get_node_from_slot(slot)

    def _exchange(self, groups: list[tuple[str, redis.Redis, list[Wire]]]) -> list[Reply]:
        """Write every group's commands to its server, then read the replies in order.

        Writing all servers first means their replies are computed in parallel:
        a hung server costs one timeout, not one per server. Each command is
        written once; a failure is reported per command as a :class:`Lost`.
        """
        replies: list[Reply] = []
        opened: list[tuple[str, _Pool, _Connection, list[Wire]]] = []
        unread: set[int] = set()  # connections written to but not read to the end
        try:
            for server, node, wires in groups:
                sent = self._send(server, cast("_Pool", node.connection_pool), wires, replies)
                if sent is not None:
                    opened.append(sent)
                    unread.add(id(sent[2]))
            for server, _, connection, wires in opened:
                if self._read(server, connection, wires, replies):
                    unread.discard(id(connection))
        finally:
            for _, pool, connection, _ in opened:
                if id(connection) in unread:  # interrupted: its stream is out of step
                    connection.disconnect()
                    pool.release(connection)
                else:
                    self._keep(pool, connection)
        return replies

    def _checkout(self, pool: _Pool) -> _Connection:
        """A connection to ``pool``'s server: one this backend kept, else the pool's.

        redis-py's pool polls every connection it hands out and records metrics
        and events both ways: ~9 µs of CPU per call, measured, more than the
        rest of a ``get``. A connection kept here skips that: within
        :data:`~.base.FRESH` seconds of its last sound exchange it is used as
        it is, later it is polled as the pool would (a closed or out-of-step
        one is dropped). Kept connections stay checked out of the pool until
        :meth:`close` (or the backend's collection) gives them back, so only a
        client this backend made keeps any: a ``client=`` given in goes back to
        its owner's pool after every call, as redis-py's own commands do.
        """
        if self._forks != base.forks():  # a fork's child: the kept ones are the parent's
            self._kept.clear()
            self._forks = base.forks()
        idle = self._kept.get(pool)
        while idle:
            try:
                connection, used = idle.pop()  # atomic: threads share the list
            except IndexError:
                break
            sock = connection._sock
            if sock is not None and (time.monotonic() - used <= base.FRESH or not base.stale(sock)):
                return connection
            connection.disconnect()
            pool.release(connection)
        return pool.get_connection()

    def _keep(self, pool: _Pool, connection: _Connection) -> None:
        """Keep a connection in step after its exchange, for :meth:`_checkout` (not TLS:
        its session tickets can make a sound idle connection readable)."""
        if (
            not self._owns_client
            or isinstance(connection._sock, ssl.SSLSocket)
            or self._forks != base.forks()
        ):
            pool.release(connection)
            return
        idle = self._kept.get(pool)
        if idle is None:
            idle = self._kept.setdefault(pool, [])
        idle.append((connection, time.monotonic()))

    def _send(
        self, server: str, pool: _Pool, wires: list[Wire], replies: list[Reply]
    ) -> tuple[str, _Pool, _Connection, list[Wire]] | None:
        """Write the wires on a connection of ``pool``; None (and Lost replies) on failure."""
        try:
            connection = self._checkout(pool)
        except self._errors as err:
            replies.extend(lost_replies(server, wires, err, sent=False))
            return None
        request = request_of(wires)
        try:
            sock = connection._sock
            if sock is None:
                raise ConnectionResetError("not connected")
            sock.sendall(request)
        except OSError as err:  # part of it may have arrived: unknown
            connection.disconnect()
            pool.release(connection)
            replies.extend(lost_replies(server, wires, as_redis_error(server, err), sent=True))
            return None
        return server, pool, connection, wires

    def _read(
        self, server: str, connection: _Connection, wires: list[Wire], replies: list[Reply]
    ) -> bool:
        """Read the replies to ``wires``; return whether the connection is still in step."""
        expected = resp.Replies(sum(2 if w.asking else 1 for w in wires), self._core.d.parse_error)
        failed: Exception | None = None
        try:
            sock = connection._sock
            if sock is None:
                raise ConnectionResetError("not connected")
            while not expected.feed(sock.recv(base.READ_SIZE) or _closed(server)):
                pass
        except (OSError, resp.ProtocolError) as err:
            failed = as_redis_error(server, err)
        got, in_step = pair_replies(server, wires, expected.got, failed)
        replies.extend(got)
        return in_step

    def _ask_target(self, host: str, port: int) -> ClusterNode:
        """The node an ``ASK`` names (a node the slot map does not know yet included)."""
        assert self._nodes is not None
        node = self._nodes.get_node(host=host, port=port)
        if node is None:  # kept, so its connection pool is made once
            name = f"{host}:{port}"
            node = self._new_nodes.setdefault(name, _cluster_node(host, port))
        return node

    def _refresh_soon(self, failed: str) -> None:
        """Re-read the slot map in a background thread, one at a time, so no call waits.

        The map may have changed (a replica promoted in the failed master's
        place); reading it can cost a timeout per unreachable node, which a
        call must not pay.
        """
        pid = os.getpid()
        with self._refresh_lock:
            if self._refreshing == pid:
                return
            self._refreshing = pid  # a pid, so a forked child is not blocked by it

        def refresh() -> None:
            try:
                self._refresh(failed)
            finally:
                with self._refresh_lock:
                    self._refreshing = 0

        threading.Thread(target=refresh, name="cacheorm-redis-slot-map", daemon=True).start()

    def _refresh(self, failed: str | None) -> None:
        """Re-read the cluster's slot map (asking the failed node last); errors are logged."""
        assert self._nodes is not None
        try:
            self._nodes.initialize(last_failed_node_name=failed or None)
        except self._errors as err:
            logger.debug("redis cluster slot map refresh failed: %r", err)
            return
        self._give_back_departed()

    def _give_back_departed(self) -> None:
        """Close and give back the kept connections to servers the slot map no longer names.

        They are checked out of their pools, so without this they would stay
        here (with the departed node's pool) until :meth:`close`, even once
        redis-py (8.2) has disconnected them. A call that holds one now keeps
        it; the next refresh gives it back then.
        """
        assert self._nodes is not None
        nodes = [*self._nodes.nodes_cache.values(), *self._new_nodes.values()]
        live = {
            node.redis_connection.connection_pool
            for node in nodes
            if node.redis_connection is not None
        }
        for pool in [pool for pool in list(self._kept) if pool not in live]:  # list: atomic
            _give_back({pool: self._kept.pop(pool, [])}, disconnect=True)

    # -- the Backend protocol -----------------------------------------------

    def get(self, key: bytes) -> bytes | None:
        """Return the value, or ``None`` when the key is absent or expired."""
        return cast("bytes | None", self._drive(self._core.call(("GET", key), key, True)))

    def set(self, key: bytes, value: bytes, ttl: base.TTL = None) -> None:
        """Store ``value`` unconditionally (``SET``, with ``EX`` unless the TTL is 0)."""
        self._drive(self._core.one(base.Set(key, value, ttl)))

    def add(self, key: bytes, value: bytes, ttl: base.TTL = None) -> bool:
        """Store only if absent, in one ``SET NX [EX]``. Return whether it was stored."""
        return cast("bool", self._drive(self._core.one(base.Add(key, value, ttl))))

    def replace(self, key: bytes, value: bytes, ttl: base.TTL = None) -> bool:
        """Store only if present, in one ``SET XX [EX]``. Return whether it was stored."""
        return cast("bool", self._drive(self._core.one(base.Replace(key, value, ttl))))

    def delete(self, key: bytes) -> bool:
        """Remove the key. Return whether it existed."""
        return bool(self._drive(self._core.call(("DEL", key), key, False)))

    def has(self, key: bytes) -> bool:
        """Return whether the key is present."""
        return bool(self._drive(self._core.call(("EXISTS", key), key, True)))

    def get_many(self, *keys: bytes) -> list[bytes | None]:
        """Return the values in key order: one ``MGET`` (per slot on a cluster)."""
        return self._drive(self._core.get_many(keys))

    def get_with_ttl(self, key: bytes) -> tuple[bytes, float] | None:
        """Return the value and its remaining seconds (``0.0`` = never): ``GET`` + ``PTTL``."""
        return self.get_many_with_ttl(key)[0]

    def get_many_with_ttl(self, *keys: bytes) -> list[tuple[bytes, float] | None]:
        """``GET`` + ``PTTL`` per key in one pipeline per server, in key order.

        Not atomic: a write by another client between a key's ``GET`` and
        ``PTTL`` can pair the value read with the new entry's lifetime. Such a
        value is stale anyway, as after any concurrent write.
        """
        return self._drive(self._core.get_many_with_ttl(keys))

    def set_many(self, mapping: Mapping[bytes, bytes], ttl: base.TTL = None) -> None:
        """Store every pair in one pipeline of ``SET [EX]`` per server.

        An oversized value is refused with ``ValueTooLarge`` before anything is
        sent, and its key deleted.
        """
        self._drive(self._core.set_many(mapping, ttl))

    def replace_many(self, mapping: Mapping[bytes, bytes], ttl: base.TTL = None) -> list[bool]:
        """Replace each present key (``SET XX``, pipelined); return whether each was stored."""
        return self._drive(self._core.replace_many(mapping, ttl))

    def delete_many(self, *keys: bytes) -> int:
        """Remove the keys with ``DEL`` (one per slot on a cluster); return how many existed."""
        return self._drive(self._core.delete_many(keys))

    def incr(self, key: bytes, delta: int = 1) -> int:
        """``INCRBY``: a missing key counts as 0; the result may be negative."""
        return cast("int", self._drive(self._core.one(base.Incr(key, base.check_delta(delta)))))

    def decr(self, key: bytes, delta: int = 1) -> int:
        """``DECRBY``: a missing key counts as 0; the result may be negative."""
        plan = self._core.call(("DECRBY", key, base.check_delta(delta)), key, False)
        return cast("int", self._drive(plan))

    def touch(self, key: bytes, ttl: base.TTL = None) -> bool:
        """Reset the TTL (``EXPIRE``, or ``PERSIST`` for 0). Return whether the key exists."""
        return self._drive(self._core.touch(key, ttl))

    def gets(self, key: bytes) -> tuple[bytes, base.CasToken] | None:
        """Return the value and a token (the value's SHA-1), or ``None`` when absent."""
        return self._drive(self._core.gets(key))

    def cas(
        self,
        key: bytes,
        value: bytes,
        token: base.CasToken,
        ttl: int | base.Keep | None = base.KEEP_TTL,
    ) -> bool:
        """Store ``value`` only if the key still holds the value ``gets`` read (one Lua call)."""
        return cast("bool", self._drive(self._core.one(base.Cas(key, value, token, ttl))))

    def delete_if(self, key: bytes, token: base.CasToken) -> bool:
        """Delete the key only if it still holds the value ``gets`` read (one Lua call)."""
        return cast("bool", self._drive(self._core.one(base.DeleteIf(key, token))))

    def batch(self, commands: Sequence[base.Command]) -> list[object]:
        """Run the commands in one round trip per server; results (or errors) in order.

        A batch of reads only (``get``/``gets``) is one ``MGET`` (per slot on a
        cluster); any other batch one pipeline per server, whose commands keep
        their order (Lua scripts go as ``EVAL``, so that none needs a resend
        after ``NOSCRIPT``, which would run it after the commands that follow).
        On a cluster, a node that fails gives ``BackendError`` only to the
        commands on its slots.
        """
        return self._drive(self._core.batch(commands))

    def ping(self) -> None:
        """Return when the server (on a cluster, one node) answers; else ``BackendError``."""
        self._drive(self._core.ping())

    def server_for(self, key: bytes, reading: bool = False) -> str | None:
        """``"host:port"`` of the server (the master of its slot) that ``key``'s commands go to.

        ``None`` when the slot map has no owner for it. For the engine's
        fail-fast outages (:class:`cacheorm.engine.Outage`).
        """
        if self._nodes is None:
            return self._server
        try:
            return str(self._nodes.get_node_from_slot(self._core.d.key_slot(key)).name)
        except self._errors:
            return None

    def clear_prefix(self, prefix: bytes, shape: re.Pattern[bytes] | None = None) -> int:
        """Remove every key under ``prefix`` (matching ``shape``): ``SCAN`` + ``UNLINK``.

        ``SCAN MATCH <prefix>*`` (the prefix glob-escaped, ``COUNT``
        :data:`SCAN_COUNT`) walks every master of a cluster, and the keys it
        finds are unlinked in the next round, one ``UNLINK`` per slot, in the
        same pipeline as the next ``SCAN``: one round trip per master for
        every thousand keys looked at. It costs O(keys in the database), and,
        as ``SCAN`` promises, a key present throughout is removed while a key
        written during the walk may survive. Returns how many keys were
        removed.
        """
        return self._drive(self._core.clear(prefix, shape))

    def close(self) -> None:
        """Close the client this backend made from ``url``; the backend is unusable after.

        A client passed in as ``client=`` is left open: it may be shared, and its
        owner closes it.
        """
        _give_back(self._kept)
        if not self._owns_client:
            return
        try:
            self._client.close()
        except self._errors as err:
            raise error(f"redis close failed: {describe(err)}", err, self._server) from err
