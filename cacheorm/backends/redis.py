"""The Redis backend, on redis-py: a standalone server or a Redis Cluster.

redis-py is imported only when a :class:`RedisBackend` is built, so
``import cacheorm`` works without it. Compare-and-set and compare-and-delete
are Lua scripts on a single key, so they work on a cluster too; the CAS token
is the SHA-1 of the value read by ``gets`` (Lua's ``redis.sha1hex``).

How commands travel. redis-py resends a command after a dropped connection,
including one the server already ran (its reply lost on the way back): an
``INCRBY`` counted twice, a ``SET NX`` answering "exists" for the record it
had just created. So this backend takes only redis-py's connection pools,
parsers and cluster slot map, and sends commands itself: one pipelined write
per server, replies read in order, several servers written before any is read.
A command is sent again only when that is safe:

* it provably did not run: the connection could not be made (nothing was
  sent), or the server refused it with ``MOVED``, ``ASK``, ``TRYAGAIN`` or
  ``NOSCRIPT``;
* it is ``GET``, ``MGET``, ``EXISTS``, ``PTTL`` or a plain ``SET`` (no
  ``NX``/``XX``), which end the same when run twice, and the connection failed
  (never after a timeout: the server may be hung, and one timeout is enough).

Any other command lost in flight raises :class:`~cacheorm.BackendError`
saying that its outcome is unknown.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import logging
import os
import threading
import time
from typing import TYPE_CHECKING, Final, NamedTuple, Protocol, assert_never, cast
from urllib.parse import urlsplit

from cacheorm.backends import base
from cacheorm.backends.base import (
    KEEP_TTL,
    TTL,
    CasToken,
    Command,
    Keep,
    apply,
    check_delta,
    resolve_ttl,
)
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
    """:func:`resolve_ttl`, with TTLs beyond what Redis can express stored without expiry."""
    seconds = resolve_ttl(ttl, default)
    return 0 if seconds > _MAX_EXPIRE else seconds


def _token(value: bytes) -> str:
    return hashlib.sha1(value).hexdigest()


def _value(command: Command, reply: object) -> object:
    """A command's result from its (successful) Redis reply."""
    match command:
        case base.Get():
            return reply
        case base.Gets():
            return None if reply is None else (reply, _token(cast("bytes", reply)))
        case base.Set():
            return True
        case base.Incr():
            return cast("int", reply)
        case (
            base.Add() | base.Replace() | base.Cas() | base.Delete() | base.DeleteIf() | base.Has()
        ):
            return bool(reply)
        case _:
            assert_never(command)


_READS: Final = frozenset({base.Get, base.Gets})
"""Commands a batch of reads only may hold: it is then one ``MGET`` per slot."""


def _pause(attempt: int) -> float:
    first, longest = _BACKOFF
    return float(min(longest, first * 2**attempt))


# -- what this module needs from redis-py's internals, typed -------------------------


class _Connection(Protocol):
    """The part of ``redis.connection.Connection`` used here."""

    def pack_commands(self, commands: list[tuple[object, ...]]) -> list[bytes]: ...
    def send_packed_command(self, command: list[bytes], check_health: bool = True) -> None: ...
    def read_response(self) -> object: ...
    def disconnect(self) -> None: ...


class _Pool(Protocol):
    """The part of ``redis.connection.ConnectionPool`` used here."""

    connection_kwargs: dict[str, object]

    def get_connection(self) -> _Connection: ...
    def release(self, connection: _Connection) -> None: ...


class _Driver(NamedTuple):
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


@functools.cache
def _driver() -> _Driver:
    from redis import exceptions as e
    from redis.crc import key_slot

    return _Driver(
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
    )


class _Lost(NamedTuple):
    """A command whose reply never came: the connection failed or timed out."""

    error: Exception
    sent: bool
    """``False`` when the connection could not be made: nothing reached the server."""


class _Wire:
    """One command on the wire, and what became of it."""

    __slots__ = ("args", "asking", "key", "node", "outcome", "parts", "safe", "too_large")

    def __init__(self, args: tuple[object, ...], key: bytes, safe: bool) -> None:
        self.args = args
        self.key = key  # routes it on a cluster (every key of a command shares one slot)
        self.safe = safe  # ends the same if run twice: may be resent after a connection error
        self.node: ClusterNode | None = None  # an ASK target, for the next send only
        self.asking = False
        self.outcome: object = None  # the reply, or the CacheORMError for this command
        self.parts: list[_Wire] | None = None  # the single-key commands it was split into
        self.too_large = False  # a DEL standing in for a refused oversized write

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


def _cluster_node(host: str, port: int) -> ClusterNode:
    from redis.cluster import ClusterNode

    return ClusterNode(host, port)  # type: ignore[no-untyped-call]  # redis-py leaves it unannotated


def _describe(error: BaseException) -> str:
    """``TimeoutError: Timeout reading from ...`` (redis-py's repr drops the message)."""
    return f"{type(error).__name__}: {error}"


def _keys(wire: _Wire) -> Sequence[bytes]:
    """The keys a wire touches: all of a multi-key ``MGET``/``DEL``, else its routing key."""
    if wire.args[0] in ("MGET", "DEL"):
        return cast("Sequence[bytes]", wire.args[1:])
    return (wire.key,)


_Reply = tuple[str, _Wire, object]
"""(server, wire, reply): the reply is the server's answer, its error reply, or a _Lost."""


def _cluster_client(
    url: str, redis_module: ModuleType, options: dict[str, object]
) -> redis.RedisCluster:
    """Build a ``redis.RedisCluster`` from ``redis+cluster://[auth@]h1:p1[,h2:p2...][?query]``.

    Raises:
        ValueError: a malformed URL, or a database other than 0.
        redis.exceptions.RedisClusterException: no seed answered with a slot map.
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
        others.append(_cluster_node(host, int(port)) if colon else _cluster_node(seed, 6379))
    first = f"{scheme}://{auth + '@' if auth else ''}{seeds[0]}"
    if parts.query:
        first += f"?{parts.query}"
    client: redis.RedisCluster = redis_module.RedisCluster(
        url=first, startup_nodes=others, **options
    )
    return client


class RedisBackend:
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

        self.default_ttl = _seconds(default_ttl, 0)
        self._max_value_size = max_value_size
        if retries < 0:
            raise ValidationError(f"retries must be an int >= 0, got {retries!r}")
        self._retries = retries
        self._d = _driver()
        self._errors: tuple[type[Exception], ...] = (
            self._d.RedisError,
            self._d.ClusterException,
            OSError,
        )
        if (client is None) == (url is None):
            raise ValidationError("RedisBackend needs exactly one of client= or url=")
        self._owns_client = client is None
        if client is None:
            assert url is not None
            client = self._from_url(redis_module, url, socket_timeout, socket_connect_timeout)
        if client.get_connection_kwargs().get("decode_responses"):
            raise ValidationError(
                "RedisBackend stores bytes: create the client with decode_responses=False"
            )
        self._client: redis.Redis | redis.RedisCluster = client
        self._nodes: NodesManager | None = None
        self._new_nodes: dict[str, ClusterNode] = {}  # ASK targets not in the slot map yet
        self._refresh_lock = threading.Lock()
        self._refreshing = 0  # the pid whose slot-map refresh thread is running
        if isinstance(client, redis_module.RedisCluster):
            self._nodes = client.nodes_manager
            seeds = client.startup_nodes  # as given: the node map replaces its own copy
            self._server = seeds[0].name if seeds else "cluster"
        else:
            kwargs = client.connection_pool.connection_kwargs
            where = kwargs.get("path") or f"{kwargs.get('host')}:{kwargs.get('port')}"
            self._server = str(where)

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
        cluster = url.partition("://")[0].lower() in ("redis+cluster", "rediss+cluster")
        try:
            if cluster:
                return _cluster_client(url, redis_module, options)
            client: redis.Redis = redis_module.Redis.from_url(url, **options)
        except ValueError as err:
            raise ValidationError(
                f"not a Redis URL: {url!r} ({err}); use redis://host:port/db (or rediss://, "
                "unix://), or redis+cluster://host:port[,host:port...] for a cluster"
            ) from err
        except self._errors as err:  # only a cluster connects when built
            raise BackendError(
                f"cannot read the cluster's slot map from the seeds of {url!r}: {err}; "
                "check that the nodes are up, reachable and in cluster mode",
                server=urlsplit(url).netloc.rpartition("@")[2],
            ) from err
        return client

    # -- sending ----------------------------------------------------------------

    def _route(self, wires: Sequence[_Wire]) -> list[tuple[str, redis.Redis, list[_Wire]]]:
        """Group the wires per server: one group, or one per cluster node of their slots."""
        if self._nodes is None:
            return [(self._server, cast("redis.Redis", self._client), list(wires))]
        cluster = cast("redis.RedisCluster", self._client)
        key_slot = self._d.key_slot
        groups: dict[str, tuple[str, redis.Redis, list[_Wire]]] = {}
        for wire in wires:
            node = wire.node
            if node is None:
                try:
                    node = self._nodes.get_node_from_slot(key_slot(wire.key))
                except self._errors as err:  # the slot map has no owner for this slot
                    wire.outcome = self._error(
                        f"redis {wire.what()}: no cluster node serves the slot of {wire.key!r} "
                        f"({err}); check that every slot is assigned",
                        err,
                        self._server,
                    )
                    continue
            group = groups.get(node.name)
            if group is None:
                connection = cluster.get_redis_connection(node)
                group = groups[node.name] = (node.name, connection, [])
            group[2].append(wire)
        return list(groups.values())

    def _exchange(self, groups: list[tuple[str, redis.Redis, list[_Wire]]]) -> list[_Reply]:
        """Write every group's commands to its server, then read the replies in order.

        Writing all servers first means their replies are computed in parallel:
        a hung server costs one timeout, not one per server. Each command is
        written once; a failure is reported per command as a :class:`_Lost`.
        """
        replies: list[_Reply] = []
        opened: list[tuple[str, _Pool, _Connection, list[_Wire]]] = []
        unread: set[int] = set()  # connections written to but not read to the end
        try:
            for server, node, wires in groups:
                pool = cast("_Pool", node.connection_pool)
                try:
                    connection = pool.get_connection()
                except self._errors as err:
                    lost = _Lost(err, sent=False)
                    replies.extend((server, wire, lost) for wire in wires)
                    continue
                packed: list[tuple[object, ...]] = []
                for wire in wires:
                    if wire.asking:
                        packed.append(("ASKING",))
                    packed.append(wire.args)
                try:
                    connection.send_packed_command(connection.pack_commands(packed))
                except self._errors as err:  # part of it may have arrived: unknown
                    connection.disconnect()
                    pool.release(connection)
                    lost = _Lost(err, sent=True)
                    replies.extend((server, wire, lost) for wire in wires)
                    continue
                opened.append((server, pool, connection, wires))
                unread.add(id(connection))
            for server, _, connection, wires in opened:
                self._read(server, connection, wires, replies)
                unread.discard(id(connection))
        finally:
            for _, pool, connection, _ in opened:
                if id(connection) in unread:  # interrupted: its stream is out of step
                    connection.disconnect()
                pool.release(connection)
        return replies

    def _read(
        self, server: str, connection: _Connection, wires: list[_Wire], replies: list[_Reply]
    ) -> None:
        response_error = self._d.ResponseError
        for index, wire in enumerate(wires):
            try:
                if wire.asking:
                    with contextlib.suppress(response_error):  # the command's reply tells
                        connection.read_response()
                reply = connection.read_response()
            except response_error as err:
                reply = err
            except self._errors as err:  # redis-py has closed the connection
                lost = _Lost(err, sent=True)
                replies.extend((server, rest, lost) for rest in wires[index:])
                return
            replies.append((server, wire, reply))

    def _run(self, wires: Sequence[_Wire]) -> None:
        """Send the wires, follow redirections, resend what is safe; set every outcome."""
        d = self._d
        pending = list(wires)
        resends = redirects = 0
        while pending:
            again: list[_Wire] = []
            failed: str | None = None
            resent = redirected = waiting = False
            replies = self._exchange(self._route(pending))
            # Keys whose state is unknown: a read or SET of them, resent alone, would run
            # after commands of the same batch that may or may not have run.
            unknown = {
                key
                for _, wire, reply in replies
                if isinstance(reply, _Lost) and reply.sent and not wire.safe
                for key in _keys(wire)
            }
            for server, wire, reply in replies:
                if isinstance(reply, _Lost):
                    failed = server
                    if resends < self._retries and self._may_resend(wire, reply, unknown):
                        again.append(wire)
                        resent = True
                    else:
                        wire.outcome = self._lost_error(wire, reply, server)
                elif isinstance(reply, d.ResponseError):
                    follow = self._follow(wire, reply) if redirects < _MAX_REDIRECTS else None
                    if follow is None:
                        wire.outcome = self._reply_error(wire, reply, server)
                    else:
                        again.extend(follow)
                        redirected = True
                        # TRYAGAIN on a command that cannot be split: give the migration time.
                        waiting = waiting or (
                            isinstance(reply, d.TryAgainError) and wire.parts is None
                        )
                else:
                    wire.outcome = reply
            if failed is not None and self._nodes is not None:
                self._refresh_soon(failed)
            if resent:
                time.sleep(_pause(resends))
                resends += 1
            if redirected:
                if waiting:
                    time.sleep(_pause(redirects))
                redirects += 1
            pending = again
        for wire in wires:
            if wire.parts is not None:
                wire.outcome = self._combine(wire)

    def _may_resend(self, wire: _Wire, lost: _Lost, unknown: set[bytes]) -> bool:
        """A connection error (never a timeout) before sending, or on a command safe to repeat.

        A safe command is not resent when a command on one of its keys was lost
        too: its reply would then depend on whether that other command ran.
        """
        error = lost.error
        if not isinstance(error, self._d.ConnectionError):
            return False
        if isinstance(error, self._d.AuthenticationError):
            return False
        if not lost.sent:
            return True
        return wire.safe and not any(key in unknown for key in _keys(wire))

    def _follow(self, wire: _Wire, error: Exception) -> list[_Wire] | None:
        """The wires to send again after an error reply that proves nothing ran, else None."""
        d = self._d
        if isinstance(error, d.NoScriptError) and wire.args[0] == "EVALSHA":
            wire.as_eval()
            return [wire]
        if self._nodes is None:
            return None
        wire.node, wire.asking = None, False
        if isinstance(error, d.MovedError):
            try:
                self._nodes.move_slot(error)
            except KeyError:  # a slot the map did not know: read the whole map again
                self._refresh(None)
            return [wire]
        if isinstance(error, d.AskError):
            wire.node, wire.asking = self._ask_target(error), True
            return [wire]
        if isinstance(error, d.TryAgainError):
            # A multi-key command on a slot being migrated, some keys moved already.
            # Each key alone is served (or ASK-redirected): split it.
            if wire.args[0] in ("MGET", "DEL") and len(wire.args) > 2:
                single = "GET" if wire.args[0] == "MGET" else "DEL"
                wire.parts = [
                    _Wire((single, key), cast("bytes", key), wire.safe) for key in wire.args[1:]
                ]
                return wire.parts
            return [wire]
        return None

    def _ask_target(self, error: AskError) -> ClusterNode:
        """The node an ``ASK`` names (a node the slot map does not know yet included)."""
        assert self._nodes is not None
        node = self._nodes.get_node(host=error.host, port=error.port)
        if node is None:  # kept, so its connection pool is made once
            name = f"{error.host}:{error.port}"
            node = self._new_nodes.setdefault(name, _cluster_node(error.host, error.port))
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
            self._nodes.initialize(last_failed_node_name=failed)
        except self._errors as err:
            logger.debug("redis cluster slot map refresh failed: %r", err)

    @staticmethod
    def _combine(wire: _Wire) -> object:
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

    @staticmethod
    def _error(message: str, cause: BaseException, server: str | None) -> BackendError:
        logger.debug("%s", message)
        error = BackendError(message, server=server)
        error.__cause__ = cause
        return error

    def _lost_error(self, wire: _Wire, lost: _Lost, server: str) -> BackendError:
        what, err = wire.what(), _describe(lost.error)
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
        return self._error(message, lost.error, server)

    def _reply_error(self, wire: _Wire, error: Exception, server: str) -> CacheORMError:
        """Translate an error reply: wrong type, too large, not a counter, or a server failure."""
        d, what, text = self._d, wire.what(), str(error)
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
        elif isinstance(error, (d.MovedError, d.AskError)) and self._nodes is None:
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

    def _too_large(self) -> ValueTooLarge:
        return ValueTooLarge(
            f"value larger than max_value_size={self._max_value_size} bytes "
            "(Redis refuses strings over proto-max-bulk-len, 512 MB by default); store less"
        )

    # -- commands ----------------------------------------------------------------------

    def _cas_ttl(self, ttl: int | Keep | None) -> int:
        return -1 if ttl is KEEP_TTL else _seconds(ttl, self.default_ttl)

    def _wire(self, command: Command) -> _Wire:
        """The command as Redis runs it (the one place a command becomes a Redis command).

        Raises:
            ValidationError: a bad TTL, or a token that is not this backend's.
        """
        # Class patterns without sub-patterns: capturing fields costs some
        # 0.15 µs per command, 15 µs on a batch of 100.
        key = command.key
        match command:
            case base.Get() | base.Gets():
                return _Wire(("GET", key), key, True)
            case base.Set():
                return self._store(key, command.value, command.ttl, ())
            case base.Add():
                return self._store(key, command.value, command.ttl, ("NX",))
            case base.Replace():
                return self._store(key, command.value, command.ttl, ("XX",))
            case base.Cas():
                token = base.check_token(command.token, str, "cas")  # SHA-1 hex
                args = (token, command.value, self._cas_ttl(command.ttl))
                if len(command.value) > self._max_value_size:
                    return self._oversized(key)
                return _Wire(("EVALSHA", _SHA["cas"], 1, key, *args), key, False)
            case base.DeleteIf():
                token = base.check_token(command.token, str, "delete_if")
                return _Wire(("EVALSHA", _SHA["delete_if"], 1, key, token), key, False)
            case base.Delete():
                return _Wire(("DEL", key), key, False)
            case base.Has():
                return _Wire(("EXISTS", key), key, True)
            case base.Incr():
                return _Wire(("INCRBY", key, command.delta), key, False)
            case _:
                assert_never(command)

    def _store(self, key: bytes, value: bytes, ttl: TTL, condition: tuple[str, ...]) -> _Wire:
        """``SET [NX|XX] [EX]``: unconditional (``condition`` empty) is safe to resend."""
        seconds = _seconds(ttl, self.default_ttl)
        if len(value) > self._max_value_size:
            return self._oversized(key)
        extra: tuple[object, ...] = ("EX", seconds) if seconds else ()
        return _Wire(("SET", key, value, *condition, *extra), key, not condition)

    def _oversized(self, key: bytes) -> _Wire:
        """Refuse a value over the limit, and make sure the key serves no older value."""
        wire = _Wire(("DEL", key), key, False)
        wire.too_large = True
        return wire

    def _result(self, command: Command, wire: _Wire) -> object:
        """The command's result from its wire's outcome (an error stays an error)."""
        reply = wire.outcome
        if isinstance(reply, CacheORMError):
            return reply
        if wire.too_large:
            return self._too_large()
        return _value(command, reply)

    def _one(self, command: Command) -> object:
        """Run one command; return its result or raise its error."""
        wire = self._wire(command)
        self._run((wire,))
        result = self._result(command, wire)
        if isinstance(result, CacheORMError):
            raise result
        return result

    def _call(self, args: tuple[object, ...], key: bytes, safe: bool) -> object:
        """Run one raw command; return its reply or raise its error."""
        wire = _Wire(args, key, safe)
        self._run((wire,))
        if isinstance(wire.outcome, CacheORMError):
            raise wire.outcome
        return wire.outcome

    def _run_all(self, wires: list[_Wire]) -> list[object]:
        """Run the wires; return their outcomes, raising the first error among them."""
        self._run(wires)
        outcomes = [wire.outcome for wire in wires]
        for outcome in outcomes:
            if isinstance(outcome, CacheORMError):
                raise outcome
        return outcomes

    def _per_slot(self, keys: Sequence[bytes]) -> list[list[int]]:
        """Indexes of ``keys`` grouped by hash slot (one group on a standalone server)."""
        if self._nodes is None:
            return [list(range(len(keys)))]
        key_slot = self._d.key_slot
        slots: dict[int, list[int]] = {}
        for index, key in enumerate(keys):
            slots.setdefault(key_slot(key), []).append(index)
        return list(slots.values())

    def _mget(self, keys: Sequence[bytes]) -> list[object]:
        """One ``MGET`` per slot; each key's value, or the error that kept it from being read."""
        groups = self._per_slot(keys)
        wires = [
            _Wire(("MGET", *[keys[i] for i in group]), keys[group[0]], True) for group in groups
        ]
        self._run(wires)
        found: list[object] = [None] * len(keys)
        for group, wire in zip(groups, wires, strict=True):
            outcome = wire.outcome
            values = outcome if isinstance(outcome, list) else [outcome] * len(group)
            for index, value in zip(group, values, strict=True):
                found[index] = value
        return found

    # -- the Backend protocol -----------------------------------------------

    def get(self, key: bytes) -> bytes | None:
        """Return the value, or ``None`` when the key is absent or expired."""
        return cast("bytes | None", self._call(("GET", key), key, True))

    def set(self, key: bytes, value: bytes, ttl: TTL = None) -> None:
        """Store ``value`` unconditionally (``SET``, with ``EX`` unless the TTL is 0)."""
        self._one(base.Set(key, value, ttl))

    def add(self, key: bytes, value: bytes, ttl: TTL = None) -> bool:
        """Store only if absent, in one ``SET NX [EX]``. Return whether it was stored."""
        return cast("bool", self._one(base.Add(key, value, ttl)))

    def replace(self, key: bytes, value: bytes, ttl: TTL = None) -> bool:
        """Store only if present, in one ``SET XX [EX]``. Return whether it was stored."""
        return cast("bool", self._one(base.Replace(key, value, ttl)))

    def delete(self, key: bytes) -> bool:
        """Remove the key. Return whether it existed."""
        return bool(self._call(("DEL", key), key, False))

    def has(self, key: bytes) -> bool:
        """Return whether the key is present."""
        return bool(self._call(("EXISTS", key), key, True))

    def get_many(self, *keys: bytes) -> list[bytes | None]:
        """Return the values in key order: one ``MGET`` (per slot on a cluster)."""
        if not keys:
            return []
        found = self._mget(keys)
        for value in found:
            if isinstance(value, CacheORMError):
                raise value
        return cast("list[bytes | None]", found)

    def get_with_ttl(self, key: bytes) -> tuple[bytes, float] | None:
        """Return the value and its remaining seconds (``0.0`` = never): ``GET`` + ``PTTL``."""
        return self.get_many_with_ttl(key)[0]

    def get_many_with_ttl(self, *keys: bytes) -> list[tuple[bytes, float] | None]:
        """``GET`` + ``PTTL`` per key in one pipeline per server, in key order.

        Not atomic: a write by another client between a key's ``GET`` and
        ``PTTL`` can pair the value read with the new entry's lifetime. Such a
        value is stale anyway, as after any concurrent write.
        """
        wires: list[_Wire] = []
        for key in keys:
            wires.append(_Wire(("GET", key), key, True))
            wires.append(_Wire(("PTTL", key), key, True))
        replies = self._run_all(wires)
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

    def set_many(self, mapping: Mapping[bytes, bytes], ttl: TTL = None) -> None:
        """Store every pair in one pipeline of ``SET [EX]`` per server.

        An oversized value is refused with ``ValueTooLarge`` before anything is
        sent, and its key deleted.
        """
        wires = [self._wire(base.Set(key, value, ttl)) for key, value in mapping.items()]
        oversized = [wire for wire in wires if wire.too_large]
        self._run_all(oversized or wires)
        if oversized:
            raise self._too_large()

    def replace_many(self, mapping: Mapping[bytes, bytes], ttl: TTL = None) -> list[bool]:
        """Replace each present key (``SET XX``, pipelined); return whether each was stored."""
        commands = [base.Replace(key, value, ttl) for key, value in mapping.items()]
        wires = [self._wire(command) for command in commands]
        self._run(wires)
        results = [self._result(c, wire) for c, wire in zip(commands, wires, strict=True)]
        for result in results:
            if isinstance(result, CacheORMError):
                raise result
        return cast("list[bool]", results)

    def delete_many(self, *keys: bytes) -> int:
        """Remove the keys with ``DEL`` (one per slot on a cluster); return how many existed."""
        if not keys:
            return 0
        wires = [
            _Wire(("DEL", *[keys[i] for i in group]), keys[group[0]], False)
            for group in self._per_slot(keys)
        ]
        return sum(cast("int", count) for count in self._run_all(wires))

    def incr(self, key: bytes, delta: int = 1) -> int:
        """``INCRBY``: a missing key counts as 0; the result may be negative."""
        return cast("int", self._one(base.Incr(key, check_delta(delta))))

    def decr(self, key: bytes, delta: int = 1) -> int:
        """``DECRBY``: a missing key counts as 0; the result may be negative."""
        return cast("int", self._call(("DECRBY", key, check_delta(delta)), key, False))

    def touch(self, key: bytes, ttl: TTL = None) -> bool:
        """Reset the TTL (``EXPIRE``, or ``PERSIST`` for 0). Return whether the key exists."""
        seconds = _seconds(ttl, self.default_ttl)
        if seconds:
            return bool(self._call(("EXPIRE", key, seconds), key, False))
        return bool(self._call(("EVALSHA", _SHA["touch"], 1, key), key, False))

    def gets(self, key: bytes) -> tuple[bytes, CasToken] | None:
        """Return the value and a token (the value's SHA-1), or ``None`` when absent."""
        value = self.get(key)
        return None if value is None else (value, _token(value))

    def cas(
        self, key: bytes, value: bytes, token: CasToken, ttl: int | Keep | None = KEEP_TTL
    ) -> bool:
        """Store ``value`` only if the key still holds the value ``gets`` read (one Lua call)."""
        return cast("bool", self._one(base.Cas(key, value, token, ttl)))

    def delete_if(self, key: bytes, token: CasToken) -> bool:
        """Delete the key only if it still holds the value ``gets`` read (one Lua call)."""
        return cast("bool", self._one(base.DeleteIf(key, token)))

    def batch(self, commands: Sequence[Command]) -> list[object]:
        """Run the commands in one round trip per server; results (or errors) in order.

        A batch of reads only (``get``/``gets``) is one ``MGET`` (per slot on a
        cluster); any other batch one pipeline per server, whose commands keep
        their order (Lua scripts go as ``EVAL``, so that none needs a resend
        after ``NOSCRIPT``, which would run it after the commands that follow).
        On a cluster, a node that fails gives ``BackendError`` only to the
        commands on its slots.
        """
        if len(commands) <= 1:
            return [self._run_one(command) for command in commands]
        kinds = {type(command) for command in commands}
        if kinds <= _READS:
            values = self._mget([command.key for command in commands])
            if kinds == {base.Get}:
                return values  # each a value, or the error that kept its key from being read
            return [
                value if isinstance(value, CacheORMError) else _value(command, value)
                for command, value in zip(commands, values, strict=True)
            ]
        results: list[object] = [None] * len(commands)
        wires: list[_Wire] = []
        queued: list[int] = []
        for index, command in enumerate(commands):
            try:
                wire = self._wire(command)
            except ValidationError as err:
                results[index] = err
                continue
            if wire.args[0] == "EVALSHA":
                # Inside a pipeline a NOSCRIPT resend would run after the commands that
                # follow it on the same key: send the source, which needs no loading.
                wire.as_eval()
            wires.append(wire)
            queued.append(index)
        self._run(wires)
        for index, wire in zip(queued, wires, strict=True):
            results[index] = self._result(commands[index], wire)
        return results

    def _run_one(self, command: Command) -> object:
        """Run one command through the public methods; return its result or its error."""
        try:
            return apply(self, command)
        except CacheORMError as err:
            return err

    def close(self) -> None:
        """Close the client this backend made from ``url``; the backend is unusable after.

        A client passed in as ``client=`` is left open: it may be shared, and its
        owner closes it.
        """
        if not self._owns_client:
            return
        try:
            self._client.close()
        except self._errors as err:
            raise self._error(f"redis close failed: {_describe(err)}", err, self._server) from err
