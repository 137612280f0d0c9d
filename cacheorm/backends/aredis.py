"""The asyncio Redis backend, on ``redis.asyncio``: a standalone server or a Redis Cluster.

The twin of :class:`cacheorm.backends.redis.RedisBackend`, running the very
same plans (:class:`~cacheorm.backends.redis.RedisCore`): the same commands,
keys, values, TTLs, Lua compare-and-set (token = SHA-1 hex of the value) and
the same rules for what may be sent again, so a sync and an async process
share one cache. Only the I/O differs: one pipeline per server, and on a
cluster the nodes are asked concurrently (``asyncio.gather``), so a hung
node costs one timeout.

The wire. ``redis.asyncio`` opens each connection (TCP or TLS, ``AUTH``,
``HELLO``, ``SELECT``, client name: whatever the client or URL configures),
then cacheorm speaks RESP on its transport itself (:mod:`.resp`, an
asyncio protocol, :class:`~.base.BufferedReads`, that parses replies as
they arrive and wakes the call once). ``redis.asyncio``'s own per-command
layers (a pool lock, packing, ``wait_for`` per write and per read, events
and metrics hooks, a coroutine per reply) cost more CPU than a whole
cacheorm call: measured at 50 tasks, a ``get`` of a 6-field record took
68 µs of CPU through them against 53 µs for raw ``redis.asyncio`` alone,
and 45 µs through this module. Connections are kept per server, at most
``max_connections`` in use per backend.

Cancellation. A call cancelled at any ``await`` (``task.cancel()``,
``asyncio.timeout``) while its commands are out first waits for their
replies (within the socket timeout), then the cancellation goes on: the
server runs a command that has left whatever the caller does, and a clean-up
that follows (``get_or_load`` releasing the lock its ``SET NX`` took) must
run after it. A connection whose exchange failed, or that is cancelled again
while finishing, is discarded: a later call never reads a stale reply. A
connection is returned to its pool only when its exchange is complete.

Processes and loops. ``redis.asyncio`` pools do not check the process id,
and their connections belong to the event loop that opened them. Each call
compares the pid and the running loop with the last call's; after an
``os.fork()`` (or under another event loop) the pools forget their
connections (without touching the sockets, which the parent still uses) and
open new ones.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
from typing import TYPE_CHECKING, Protocol, TypeVar, cast
from urllib.parse import urlsplit

from cacheorm.backends import base, resp
from cacheorm.backends.base import (
    KEEP_TTL,
    TTL,
    BufferedReads,
    CasToken,
    Command,
    Keep,
    check_delta,
)
from cacheorm.backends.redis import (
    Exchange,
    Moved,
    Pause,
    Plan,
    Primaries,
    RedisSetup,
    Refresh,
    Reply,
    Step,
    Wire,
    as_redis_error,
    bad_url,
    decoding_refused,
    describe,
    error,
    is_cluster_url,
    lost_replies,
    no_slot_map,
    pair_replies,
    parse_cluster_url,
    request_of,
    route,
    standalone_server,
)

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    from redis.asyncio import Redis, RedisCluster
    from redis.asyncio.cluster import ClusterNode

__all__ = ["AsyncRedisBackend"]

logger = logging.getLogger(__name__)

_T = TypeVar("_T")


class _Connection(Protocol):
    """The part of ``redis.asyncio.connection.Connection`` used here: its handshake."""

    _writer: asyncio.StreamWriter | None
    _reader: asyncio.StreamReader | None
    socket_timeout: float | None

    async def connect(self) -> None: ...
    async def disconnect(self, nowait: bool = False) -> None: ...


class _Pool(Protocol):
    """The part of ``redis.asyncio.ConnectionPool`` used here."""

    max_connections: int

    @property
    def connection_kwargs(self) -> dict[str, object]: ...

    def make_connection(self) -> object: ...
    def reset(self) -> None: ...


class _Link(BufferedReads):
    """One Redis connection after redis-py's handshake: RESP spoken here (see :mod:`.resp`).

    :meth:`exchange` writes a request and waits for its replies; the replies
    are parsed as they arrive (``data_received``) and the waiting call is
    woken once, when the last one is in. A link that failed, timed out or was
    cancelled mid-exchange is out of step with its requests and is closed,
    never reused.
    """

    __slots__ = (
        "_replies",
        "_waiter",
        "broken",
        "parse_error",
        "server",
        "timeout",
        "transport",
        "writer",
    )

    def __init__(self, server: str, parse_error: resp.ParseError) -> None:
        super().__init__()
        self.server = server
        self.parse_error = parse_error
        self.transport: asyncio.Transport | None = None
        self.timeout: float | None = None  # seconds to wait for an exchange's replies
        # The stream writer redis-py connected with: kept, as collecting it closes the transport.
        self.writer: asyncio.StreamWriter | None = None
        self.broken: Exception | None = None
        self._replies = resp.Replies(0, parse_error)
        self._waiter: asyncio.Future[list[object]] | None = None

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(exc or ConnectionResetError(f"connection closed by server {self.server}"))

    def _fail(self, error: Exception) -> None:
        if self.broken is None:
            self.broken = error
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_exception(error)

    def awaited(self) -> int:
        return self._replies.awaited()

    def data_received(self, data: bytes) -> None:
        waiter = self._waiter
        try:
            if waiter is None:  # nothing was asked: out of step
                raise resp.ProtocolError("bytes nobody asked for")
            if self._replies.feed(data) and not waiter.done():
                waiter.set_result(self._replies.got)
        except resp.ProtocolError as err:
            self._fail(resp.ProtocolError(f"{self.server}: {err}"))
            self.close()

    async def exchange(
        self, loop: asyncio.AbstractEventLoop, request: bytes, count: int, timeout: float | None
    ) -> list[object]:
        """Write ``request`` and return its ``count`` replies.

        Raises:
            TimeoutError: no complete answer within ``timeout`` seconds.
            OSError, resp.ProtocolError: the connection failed (:attr:`partial` holds
                the replies that came).
        """
        transport = self.transport
        assert transport is not None
        waiter: asyncio.Future[list[object]] = loop.create_future()
        self._waiter, self._replies = waiter, resp.Replies(count, self.parse_error)
        transport.write(request)
        timer = None if timeout is None else loop.call_later(timeout, self._expire)
        try:
            return await waiter
        except asyncio.CancelledError:
            # The commands have left: the server runs them whatever this call does.
            # Wait for their replies (within the timeout) before the cancellation goes
            # on, so the caller's clean-up runs after them; a second one ends it.
            if self.broken is None and not self.settled:
                self._waiter = loop.create_future()
                await self._waiter
            raise
        finally:
            if timer is not None:
                timer.cancel()
            self._waiter = None

    @property
    def settled(self) -> bool:
        """Every reply of the last exchange is in (and the link is sound)."""
        replies = self._replies
        return self.broken is None and len(replies.got) == replies.want

    def _expire(self) -> None:
        """The exchange's timer: fail it (its waiter, or the one finishing it after a cancel)."""
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_exception(TimeoutError(f"Timeout reading from {self.server}"))

    @property
    def partial(self) -> list[object]:
        """The replies that came before an exchange failed."""
        return self._replies.got

    @property
    def usable(self) -> bool:
        transport = self.transport
        return self.broken is None and transport is not None and not transport.is_closing()

    def close(self) -> None:
        if self.transport is not None:
            self.transport.abort()


class AsyncRedisBackend(RedisSetup):
    """Store bytes in Redis from asyncio code, standalone or cluster.

    Everything :class:`~cacheorm.backends.redis.RedisBackend` documents holds
    here too: the explicit limits (``socket_timeout`` and
    ``socket_connect_timeout``, 2 s each by default; at most ``retries``
    resends, only where safe; a timeout is never retried), the bound on a
    call's duration, one ``MGET`` per slot and one pipeline per node (never
    ``CROSSSLOT``), ``MOVED``/``ASK``/``TRYAGAIN`` handling, ``WRONGTYPE`` as
    :class:`~cacheorm.DecodeError`, and ``BackendError.server``. On a cluster,
    the nodes of one call are asked concurrently, and a slot-map refresh
    after a failed node runs as a background task.

    Args:
        client: a ``redis.asyncio.Redis`` or ``redis.asyncio.RedisCluster``
            created with ``decode_responses=False`` (give it
            ``socket_timeout``, ``socket_connect_timeout`` and
            ``retry=Retry(NoBackoff(), 0)``, as for ``RedisBackend``).
            :meth:`aclose` leaves it open: its owner closes it.
        url: used when ``client`` is not given: ``redis://host:port/db``
            (``rediss://``, ``unix://``), or ``redis+cluster://h1:p1[,h2:p2]``
            (``rediss+cluster://``); redis-py's query parameters override the
            keyword arguments. A cluster's slot map is read on the first call.
        default_ttl: seconds used when a call passes ``ttl=None``; ``0`` = never.
        socket_timeout: seconds to wait for a reply (``url`` only).
        socket_connect_timeout: seconds to wait for a connection (``url`` only).
        retries: how many times a command may be resent after a connection
            error, when the rules allow it.
        max_value_size: the largest value accepted, in bytes.
        max_connections: connections per server (``url`` only; a client's own
            limit applies otherwise). redis.asyncio refuses a connection over
            the limit; here a call beyond it waits for one to be free.

    Raises:
        ValidationError: neither or both of ``client`` and ``url``, a bad URL,
            a client that decodes responses, an illegal ``default_ttl``, or
            negative ``retries``.
    """

    default_ttl: int

    def __init__(
        self,
        client: Redis | RedisCluster | None = None,
        url: str | None = None,
        *,
        default_ttl: int = 0,
        socket_timeout: float = 2.0,
        socket_connect_timeout: float = 2.0,
        retries: int = 1,
        max_value_size: int = 512 * 1024 * 1024,
        max_connections: int = 100,
    ) -> None:
        self._set_up("AsyncRedisBackend", client, url, default_ttl, retries, max_value_size)
        self._url = url
        if client is None:
            assert url is not None
            client = self._from_url(
                url,
                socket_timeout=socket_timeout,
                socket_connect_timeout=socket_connect_timeout,
                max_connections=max_connections,
            )
        self._adopt_client(client)
        self._new_nodes: dict[str, ClusterNode] = {}  # ASK targets not in the slot map yet
        self._refreshing: asyncio.Task[None] | None = None
        self._pid = os.getpid()
        self._loop: asyncio.AbstractEventLoop | None = None  # set by the first call
        self._slots: asyncio.Semaphore | None = None
        self._idle: dict[str, list[_Link]] = {}  # per server, connections free for a call

    def _adopt_client(self, client: Redis | RedisCluster) -> None:
        """Check the client; note its kind, its server and its connection limit."""
        from redis.asyncio import RedisCluster

        if client.get_connection_kwargs().get("decode_responses"):
            raise decoding_refused("AsyncRedisBackend")
        self._client: Redis | RedisCluster = client
        self._cluster = client if isinstance(client, RedisCluster) else None
        self._ready = self._cluster is None  # a cluster reads its slot map on first use
        # redis.asyncio refuses a connection over its pool's limit (MaxConnectionsError):
        # calls beyond it wait for a free slot instead.
        if self._cluster is None:
            limit: object = self._pool().max_connections
            self._core.server = self._standalone()
        else:
            limit = client.get_connection_kwargs().get("max_connections")
            self._core.server = self._seed_name(self._url)
            self._core.cluster = True
        self._max_connections = limit if isinstance(limit, int) and limit > 0 else 100

    def _from_url(
        self,
        url: str,
        *,
        socket_timeout: float,
        socket_connect_timeout: float,
        max_connections: int,
    ) -> Redis | RedisCluster:
        from redis.asyncio import Redis, RedisCluster
        from redis.asyncio.cluster import ClusterNode
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff

        # redis-py itself retries nothing: the plans decide what may be resent.
        try:
            if is_cluster_url(url):
                first, others = parse_cluster_url(url)
                seeds = [ClusterNode(host, port) for host, port in others]
                return RedisCluster.from_url(
                    first,
                    startup_nodes=seeds,
                    socket_timeout=socket_timeout,
                    socket_connect_timeout=socket_connect_timeout,
                    retry=Retry(NoBackoff(), 0),
                    max_connections=max_connections,
                )
            return Redis.from_url(
                url,
                socket_timeout=socket_timeout,
                socket_connect_timeout=socket_connect_timeout,
                retry=Retry(NoBackoff(), 0),
                max_connections=max_connections,
            )
        except ValueError as err:
            raise bad_url(url, err) from err

    def _standalone(self) -> str:
        return standalone_server(self._pool().connection_kwargs)

    def _seed_name(self, url: str | None) -> str:
        assert self._cluster is not None
        if url is not None:
            return urlsplit(parse_cluster_url(url)[0]).netloc.rpartition("@")[2]
        seeds = self._cluster.startup_nodes
        return seeds[0].name if seeds else "cluster"

    def _pool(self) -> _Pool:
        return cast("_Pool", cast("Redis", self._client).connection_pool)

    # -- driving plans ----------------------------------------------------------------

    async def _drive(self, plan: Plan[_T]) -> _T:
        """Run a plan's steps with asyncio I/O; return its result."""
        if self._loop is not asyncio.get_running_loop() or self._pid != os.getpid():
            self._adopt()
        if not self._ready:
            await self._start()
        task = asyncio.current_task()
        cancels = task.cancelling() if task is not None else 0
        try:
            step = next(plan)
            while True:
                if type(step) is Exchange:  # nearly always: no extra coroutine
                    step = plan.send(await self._exchange(step.wires))
                else:
                    step = plan.send(await self._step(step))
        except StopIteration as done:
            result = cast("_T", done.value)
        if task is not None and task.cancelling() > cancels:
            # On Python 3.11, redis.asyncio's write (asyncio.wait_for) can swallow a
            # cancellation arriving as the write completes: deliver it now that the
            # exchange is complete and its connection back in the pool.
            raise asyncio.CancelledError
        return result

    async def _step(self, step: Step) -> object:
        if isinstance(step, Exchange):
            return await self._exchange(step.wires)
        if isinstance(step, Pause):
            await asyncio.sleep(step.seconds)
        elif isinstance(step, Moved):
            assert self._cluster is not None
            try:
                await self._cluster.nodes_manager.move_slot(step.error)
            except KeyError:  # a slot the map did not know: read the whole map again
                await self._refresh(None)
        elif isinstance(step, Refresh):
            self._refresh_soon(step.failed)
        elif isinstance(step, Primaries):
            assert self._cluster is not None
            masters = self._cluster.nodes_manager.get_nodes_by_server_type("primary")
            return [(node.host, node.port) for node in masters]
        return None

    async def _start(self) -> None:
        """Read a cluster's slot map (once; concurrent first calls share the read)."""
        assert self._cluster is not None
        try:
            await self._cluster.initialize()
        except self._errors as err:
            raise no_slot_map(self._url or self._core.server, err) from err
        self._ready = True

    def _adopt(self) -> None:
        """Forget connections opened by another process or event loop (never reuse them)."""
        if self._loop is not None:  # not the first call: something changed
            logger.debug("redis: new process or event loop, opening new connections")
            if self._cluster is None:
                self._pool().reset()
            else:
                manager = self._cluster.nodes_manager
                nodes = [*manager.nodes_cache.values(), *manager.startup_nodes.values()]
                for node in [*nodes, *self._new_nodes.values()]:
                    # redis.asyncio offers no public way to drop a node's connections
                    # without closing sockets the parent process still uses.
                    node._connections.clear()
                    node._free.clear()
            self._refreshing = None
            self._idle = {}  # another loop's (or process's) transports: dropped, not closed
        self._slots = asyncio.Semaphore(self._max_connections)  # bound to this loop
        self._pid, self._loop = os.getpid(), asyncio.get_running_loop()

    async def _exchange(self, wires: list[Wire]) -> list[Reply]:
        """Send each server its commands (nodes concurrently); return every reply."""
        if self._cluster is None:
            return await self._talk(self._core.server, None, wires)
        groups = route(
            self._core,
            wires,
            self._cluster.nodes_manager.get_node_from_slot,
            self._ask_target,
        )
        if len(groups) == 1:
            node, group = groups[0]
            return await self._talk(node.name, node, group)
        # return_exceptions: a cancelled call returns only once every node's exchange
        # has finished (its connection disconnected or back in its pool).
        answers = await asyncio.gather(
            *(self._talk(n.name, n, g) for n, g in groups), return_exceptions=True
        )
        replies: list[Reply] = []
        for answer in answers:
            if isinstance(answer, BaseException):
                raise answer
            replies.extend(answer)
        return replies

    async def _talk(self, server: str, node: ClusterNode | None, wires: list[Wire]) -> list[Reply]:
        """Write every command on one connection, then read every reply.

        Waits for a free connection slot first. The connection goes back to its
        server's idle list only after a complete exchange; one interrupted (an
        error, a timeout, a cancellation) is closed.
        """
        assert self._slots is not None
        async with self._slots:
            try:
                link = await self._link(server, node)
            except self._errors as err:
                return lost_replies(server, wires, err, sent=False)
            asked = sum(2 if wire.asking else 1 for wire in wires)
            request = request_of(wires)
            complete = False
            try:
                try:
                    got = await link.exchange(self._loop_now(), request, asked, link.timeout)
                except asyncio.CancelledError:
                    complete = link.settled  # finished before the cancellation went on
                    raise
                complete = True
            except (OSError, resp.ProtocolError) as err:
                return self._replies(server, wires, link.partial, as_redis_error(server, err))
            finally:
                if complete:
                    self._idle.setdefault(server, []).append(link)
                else:  # its stream is out of step with its requests
                    link.close()
            return self._replies(server, wires, got, None)

    def _loop_now(self) -> asyncio.AbstractEventLoop:
        assert self._loop is not None
        return self._loop

    def _replies(
        self, server: str, wires: list[Wire], got: list[object], failed: Exception | None
    ) -> list[Reply]:
        replies, in_step = pair_replies(server, wires, got, failed)
        if not in_step and failed is None:  # a connection error as a reply: the server's state
            self._drop(server)
        return replies

    async def _link(self, server: str, node: ClusterNode | None) -> _Link:
        """An idle connection to ``server``, or a new one (redis-py connects and greets)."""
        idle = self._idle.get(server)
        while idle:
            link = idle.pop()
            if link.usable:
                return link
            link.close()
        if node is None:
            pool = self._pool()
            connection = cast("_Connection", pool.make_connection())
        else:
            connection = cast("_Connection", node.connection_class(**node.connection_kwargs))
        try:
            await connection.connect()
            writer = connection._writer
            assert writer is not None
            link = _Link(server, self._core.d.parse_error)
            link.timeout = connection.socket_timeout
            transport = cast("asyncio.Transport", writer.transport)
            link.transport, link.writer = transport, writer
            transport.set_protocol(link)
            # The connection object must not close the transport when it is collected.
            connection._writer = connection._reader = None
        except BaseException:
            await connection.disconnect(nowait=True)
            raise
        return link

    def _drop(self, server: str) -> None:
        """Close the idle connections to ``server`` (it answered with a connection error)."""
        for link in self._idle.pop(server, []):
            link.close()

    def _ask_target(self, host: str, port: int) -> ClusterNode:
        """The node an ``ASK`` names (a node the slot map does not know yet included)."""
        from redis.asyncio.cluster import ClusterNode

        assert self._cluster is not None
        manager = self._cluster.nodes_manager
        node = manager.get_node(host=host, port=port)
        if node is None:  # kept, so its connections are made once
            name = f"{host}:{port}"
            node = self._new_nodes.get(name)
            if node is None:
                node = ClusterNode(host, port, **manager.connection_kwargs)
                self._new_nodes[name] = node
        return node

    def _refresh_soon(self, failed: str) -> None:
        """Re-read the slot map in a background task, one at a time, so no call waits."""
        if self._refreshing is None or self._refreshing.done():
            self._refreshing = asyncio.get_running_loop().create_task(self._refresh(failed))

    async def _refresh(self, failed: str | None) -> None:
        """Re-read the cluster's slot map (asking the failed node last); errors are logged."""
        assert self._cluster is not None
        manager = self._cluster.nodes_manager
        try:
            await manager.initialize(last_failed_node_name=failed or None)
        except self._errors as err:
            logger.debug("redis cluster slot map refresh failed: %r", err)
            return
        # Idle connections to servers the new map no longer names: closed now, not at aclose.
        known = manager.nodes_cache.keys() | self._new_nodes.keys()
        for server in [name for name in self._idle if name not in known]:
            self._drop(server)

    # -- the AsyncBackend protocol -----------------------------------------------

    async def get(self, key: bytes) -> bytes | None:
        """See :meth:`RedisBackend.get <cacheorm.backends.redis.RedisBackend.get>`."""
        return cast("bytes | None", await self._drive(self._core.call(("GET", key), key, True)))

    async def set(self, key: bytes, value: bytes, ttl: TTL = None) -> None:
        """``SET [EX]``, as ``RedisBackend.set``."""
        await self._drive(self._core.one(base.Set(key, value, ttl)))

    async def add(self, key: bytes, value: bytes, ttl: TTL = None) -> bool:
        """``SET NX [EX]``, as ``RedisBackend.add``."""
        return cast("bool", await self._drive(self._core.one(base.Add(key, value, ttl))))

    async def replace(self, key: bytes, value: bytes, ttl: TTL = None) -> bool:
        """``SET XX [EX]``, as ``RedisBackend.replace``."""
        return cast("bool", await self._drive(self._core.one(base.Replace(key, value, ttl))))

    async def delete(self, key: bytes) -> bool:
        """``DEL``, as ``RedisBackend.delete``."""
        return bool(await self._drive(self._core.call(("DEL", key), key, False)))

    async def has(self, key: bytes) -> bool:
        """``EXISTS``, as ``RedisBackend.has``."""
        return bool(await self._drive(self._core.call(("EXISTS", key), key, True)))

    async def get_many(self, *keys: bytes) -> list[bytes | None]:
        """One ``MGET`` per slot, as ``RedisBackend.get_many``."""
        return await self._drive(self._core.get_many(keys))

    async def get_with_ttl(self, key: bytes) -> tuple[bytes, float] | None:
        """``GET`` + ``PTTL``, as ``RedisBackend.get_with_ttl``."""
        return (await self.get_many_with_ttl(key))[0]

    async def get_many_with_ttl(self, *keys: bytes) -> list[tuple[bytes, float] | None]:
        """``GET`` + ``PTTL`` per key, as ``RedisBackend.get_many_with_ttl``."""
        return await self._drive(self._core.get_many_with_ttl(keys))

    async def set_many(self, mapping: Mapping[bytes, bytes], ttl: TTL = None) -> None:
        """One pipeline of ``SET [EX]`` per server, as ``RedisBackend.set_many``."""
        await self._drive(self._core.set_many(mapping, ttl))

    async def replace_many(self, mapping: Mapping[bytes, bytes], ttl: TTL = None) -> list[bool]:
        """``SET XX`` per key, pipelined, as ``RedisBackend.replace_many``."""
        return await self._drive(self._core.replace_many(mapping, ttl))

    async def delete_many(self, *keys: bytes) -> int:
        """One ``DEL`` per slot, as ``RedisBackend.delete_many``."""
        return await self._drive(self._core.delete_many(keys))

    async def incr(self, key: bytes, delta: int = 1) -> int:
        """``INCRBY``, as ``RedisBackend.incr``."""
        plan = self._core.one(base.Incr(key, check_delta(delta)))
        return cast("int", await self._drive(plan))

    async def decr(self, key: bytes, delta: int = 1) -> int:
        """``DECRBY``, as ``RedisBackend.decr``."""
        plan = self._core.call(("DECRBY", key, check_delta(delta)), key, False)
        return cast("int", await self._drive(plan))

    async def touch(self, key: bytes, ttl: TTL = None) -> bool:
        """``EXPIRE`` (or ``PERSIST`` for 0), as ``RedisBackend.touch``."""
        return await self._drive(self._core.touch(key, ttl))

    async def gets(self, key: bytes) -> tuple[bytes, CasToken] | None:
        """The value and its SHA-1 hex token, as ``RedisBackend.gets``."""
        return await self._drive(self._core.gets(key))

    async def cas(
        self, key: bytes, value: bytes, token: CasToken, ttl: int | Keep | None = KEEP_TTL
    ) -> bool:
        """The compare-and-set Lua script, as ``RedisBackend.cas``."""
        plan = self._core.one(base.Cas(key, value, token, ttl))
        return cast("bool", await self._drive(plan))

    async def delete_if(self, key: bytes, token: CasToken) -> bool:
        """The compare-and-delete Lua script, as ``RedisBackend.delete_if``."""
        return cast("bool", await self._drive(self._core.one(base.DeleteIf(key, token))))

    async def batch(self, commands: Sequence[Command]) -> list[object]:
        """One round trip per server (nodes concurrently), as ``RedisBackend.batch``."""
        return await self._drive(self._core.batch(commands))

    async def ping(self) -> None:
        """Return when the server (on a cluster, one node) answers; else ``BackendError``."""
        await self._drive(self._core.ping())

    def server_for(self, key: bytes, reading: bool = False) -> str | None:
        """See :meth:`cacheorm.RedisBackend.server_for` (``None`` before the slot map is read)."""
        if self._cluster is None:
            return self._core.server
        try:
            node = self._cluster.nodes_manager.get_node_from_slot(self._core.d.key_slot(key))
        except KeyError:  # no slot map read yet
            return None
        except self._errors:  # the slot has no owner
            return None
        return str(node.name)

    async def clear_prefix(self, prefix: bytes, shape: re.Pattern[bytes] | None = None) -> int:
        """See :meth:`cacheorm.RedisBackend.clear_prefix`: ``SCAN`` + ``UNLINK``, alike."""
        return await self._drive(self._core.clear(prefix, shape))

    async def aclose(self) -> None:
        """Close what this backend opened; a client passed in as ``client=`` stays open.

        The backend is unusable after.
        """
        if self._loop is not asyncio.get_running_loop() or self._pid != os.getpid():
            self._adopt()  # connections of another process or loop are not ours to close
        if self._refreshing is not None:
            self._refreshing.cancel()
            with contextlib.suppress(asyncio.CancelledError, *self._errors):
                await self._refreshing
            self._refreshing = None
        for links in self._idle.values():
            for link in links:
                link.close()
        self._idle.clear()
        try:
            for node in self._new_nodes.values():
                await node.disconnect()
            self._new_nodes.clear()
            if self._owns_client:
                await self._client.aclose()
        except self._errors as err:
            message = f"redis close failed: {describe(err)}"
            raise error(message, err, self._core.server) from err
