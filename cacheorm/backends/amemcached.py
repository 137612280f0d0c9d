"""The asyncio memcached backend: the sync backend's protocol code on asyncio connections.

**Why cacheorm speaks the protocol itself here.** The asyncio memcached
clients were evaluated against what :class:`AsyncMemcachedBackend` must do:

* *aiomcache* (aio-libs) talks to one server only: no pool of nodes, so no
  placement at all, let alone pymemcache's. Its connection pool hands a
  connection back after a cancelled call with the reply still on its way
  (aio-libs/aiomcache#489, open), so the next call reads the previous
  call's answer: exactly what a cancelled task must never cause here.
* *emcache* has several nodes, ``gets``/``cas`` and pools, but places keys by
  its own rendezvous hash (murmur3 of ``host`` + ``port``, compiled in
  Cython), not by pymemcache's ``HashClient`` (murmur3 of ``"host:port-key"``):
  on two nodes a record written by the sync :class:`~cacheorm.MemcachedBackend`
  would be looked for on the wrong node. It is also a compiled extension,
  which cacheorm's pure-Python extras avoid.
* *aiomemcached* is an unmaintained fork of aiomcache (last release 2022).
  *memcachio* (a 0.x release) and *meta-memcache* (the meta protocol,
  sync-first) were only looked at briefly: either would still need
  cacheorm's flags deadlines, tokens and ``HashClient``-compatible placement
  on top.

None gives the same bytes on the wire (flags deadlines, CAS tokens with the
flags), the same key placement and the same "never resend what may have run"
rules as the sync backend, and each would need an adapter as large as the
client below. So this module is a small client on asyncio's protocol
API (:class:`~.base.BufferedReads`) that reuses
:mod:`cacheorm.backends.memcached`'s sans-I/O core unchanged:
the same commands as generators of requests (``_incr_steps``, ``_touch_steps``
...), the same request framing and reply parsing (``_Exchange``), the same
rounds (one pipeline per server per round, one key's commands in order), the
same placement (``HashClient``'s rendezvous hashing over the same server
names) and the same errors. Only the transport differs: per server a bounded
pool of connections, the servers of a call served concurrently. It needs
pymemcache (the ``memcached`` extra) for that placement and its exception
classes, never for its sockets.

**Many tasks share round trips.** A call made while another call of the
backend is out does not take a connection of its own: it joins the calls
made in the same turn of the event loop, and they run as one call (one
pipeline per server, up to :data:`MERGE_LIMIT` jobs; the jobs in the order
the calls came, as a batch's). With 50 tasks reading, each write and read
of a socket serves many of them, which is where an asyncio client spends
most of its time (``make bench``: more reads per second than a plain
asyncio-streams client taking a connection per call). A call alone, or a
batch (``get_many``), goes out at once.

**Cancellation.** A call cancelled at any ``await`` (``task.cancel()``,
``asyncio.timeout``) while its requests are out first waits for their
replies (each wait for progress bounded by the timeout), then the
cancellation goes on: the server runs a request that has left whatever the
caller does, and a clean-up that follows (``get_or_load`` releasing the
lock its ``add`` took) must run after it, not race it on another
connection; the connection stays in step and goes back to its pool. A
connection whose exchange failed, or that is cancelled again while
finishing, is closed: only connections whose replies were read in full are
reused, so no later call can read an earlier call's reply.

**Processes and loops.** Connections belong to the process and the event loop
that opened them: after ``os.fork()`` or under another event loop the backend
forgets them and opens new ones (the parent's are left to the parent).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import re
import socket
import ssl
from typing import TYPE_CHECKING, Final, TypeAlias, TypeVar, cast

from cacheorm.backends import base
from cacheorm.backends.base import (
    KEEP_TTL,
    TTL,
    BufferedReads,
    CasToken,
    Command,
    Get,
    Keep,
    Set,
    resolve_ttl,
)
from cacheorm.backends.memcached import (
    MAX_KEY_LENGTH,
    PING_KEY,
    _cas_job,
    _clear_steps,
    _Closed,
    _delete_if_job,
    _delete_job,
    _Desync,
    _end_round,
    _enqueue,
    _Exchange,
    _failure,
    _finder,
    _get_job,
    _gets_job,
    _has_job,
    _incr_steps,
    _Job,
    _jobs,
    _Lone,
    _lone_result,
    _new_client,
    _Placed,
    _placed_queues,
    _Placer,
    _server_name,
    _start_round,
    _Task,
    _touch_steps,
    _ttl_job,
    _Unbatched,
    _write_expiry,
    _write_job,
    distinct_sets,
    fetches,
    fill_stores,
    memcached_key,
    stores,
)
from cacheorm.errors import BackendError, CacheORMError, ValidationError

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

__all__ = ["AsyncMemcachedBackend"]

logger = logging.getLogger(__name__)

_T = TypeVar("_T")


class _Conn(BufferedReads):
    """One connection to a server: runs one exchange at a time, fed by the event loop.

    Replies are parsed as they arrive (no reader task); the awaiting call is
    woken once with ``None`` (every reply is in) or the error that ended the
    exchange. A connection that saw bytes nobody asked for, lost its stream,
    or was interrupted is ``broken`` and never reused.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__()
        self.loop = loop
        self.transport: asyncio.Transport | None = None
        self.exchange: _Exchange[_Pool] | None = None
        self.waiter: asyncio.Future[Exception | None] | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.broken = False
        self.last = 0.0

    # -- asyncio.Protocol ----------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast("asyncio.Transport", transport)

    def awaited(self) -> int:
        exchange = self.exchange
        return 0 if exchange is None else exchange.need

    def data_received(self, data: bytes) -> None:
        exchange = self.exchange
        if exchange is None:  # unasked-for bytes: the stream is out of step
            self.close()
            return
        exchange.buf += data
        self.last = self.loop.time()
        try:
            exchange.parse()
        except _Desync as err:
            self._wake(err)
            return
        if exchange.done:
            if exchange.buf:
                self.close()  # more than was asked for: answers are in, the stream is not sound
            self._wake(None)

    def connection_lost(self, exc: Exception | None) -> None:
        self.broken = True
        if isinstance(exc, OSError):
            self._wake(exc)
        else:
            from pymemcache.exceptions import MemcacheUnexpectedCloseError

            closed = _Closed()
            closed.__cause__ = MemcacheUnexpectedCloseError()
            self._wake(closed)

    # -- one exchange --------------------------------------------------------

    async def converse(self, exchange: _Exchange[_Pool], timeout: float) -> Exception | None:
        """Send the exchange and read its replies; the error that ended it, if any.

        ``timeout`` bounds each wait for progress, as the sync backend's socket
        timeout does. Cancelled, it still waits for the replies (:meth:`_finish`).
        """
        transport = self.transport
        assert transport is not None
        waiter: asyncio.Future[Exception | None] = self.loop.create_future()
        self.exchange, self.waiter = exchange, waiter
        self.last = self.loop.time()
        if self.timer is None:  # else the pending one re-arms itself from self.last
            self.timer = self.loop.call_at(self.last + timeout, self._check, timeout)
        cancelled: asyncio.CancelledError | None = None
        answered = False
        try:
            transport.write(exchange.out)
            try:
                outcome = await waiter
            except asyncio.CancelledError as err:
                cancelled = err
                outcome = await self._finish(exchange)
            answered = outcome is None
        except BaseException:
            self.close()  # interrupted mid-exchange: its replies must never reach another call
            raise
        finally:
            if answered:  # every reply came: the server had it all
                exchange.sent = len(exchange.out)
            else:  # what the server may have received: all but what is still buffered here
                unsent = 0 if transport.is_closing() else transport.get_write_buffer_size()
                exchange.sent = len(exchange.out) - unsent
            self.exchange = self.waiter = None
        if outcome is not None:
            self.close()
        if cancelled is not None:
            raise cancelled
        return outcome

    async def _finish(self, exchange: _Exchange[_Pool]) -> Exception | None:
        """After a cancellation: wait for the exchange's last reply, then let it go on.

        The request has left: the server runs it whatever this call does now. So
        the cancelled call waits for its replies (each wait for progress bounded by
        the timeout, as before) before its caller's clean-up runs, which then sees
        what the request did (a ``get_or_load`` releases the lock its ``add``
        took, which on another connection could otherwise run before that add),
        and the connection stays in step. A second cancellation closes it.
        """
        if exchange.done and self.exchange is None:
            return None  # the replies all came as the cancellation did
        if self.exchange is not exchange or self.broken:
            raise asyncio.CancelledError  # it already failed: closed by the caller
        waiter: asyncio.Future[Exception | None] = self.loop.create_future()
        self.waiter = waiter
        return await waiter

    def _check(self, timeout: float) -> None:
        """The timer: fail the exchange after ``timeout`` seconds without a byte read.

        One timer per connection, not per exchange: it outlives a quick exchange
        and, when it fires, waits on for the current one (or ends, if idle).
        """
        self.timer = None
        if self.exchange is None:
            return
        due = self.last + timeout
        if self.loop.time() >= due:
            self._wake(TimeoutError("timed out"))
        else:
            self.timer = self.loop.call_at(due, self._check, timeout)

    def _wake(self, outcome: Exception | None) -> None:
        self.exchange = None  # whatever arrives from now on was not asked for
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(outcome)

    def shut_down(self) -> None:
        """End the connection from outside its event loop (a thread-safe socket shutdown)."""
        self.broken = True
        sock = None if self.transport is None else self.transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        """Close the connection at once (nothing buffered is sent); it is never reused."""
        self.broken = True
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if self.transport is not None and not self.loop.is_closed():
            self.transport.abort()


class _Pool:
    """One memcached server: its name, and a bounded pool of connections to it."""

    __slots__ = (
        "address",
        "closed",
        "connect_timeout",
        "epoch",
        "idle",
        "name",
        "open",
        "prefix",
        "size",
        "ssl",
        "timeout",
        "waiting",
    )

    def __init__(
        self,
        name: str,
        address: tuple[str, int] | str,
        *,
        size: int,
        timeout: float,
        connect_timeout: float,
        ssl_context: ssl.SSLContext | None,
    ) -> None:
        self.name = name
        self.address = address
        self.prefix = b""
        self.size = size
        self.timeout = timeout
        self.connect_timeout = connect_timeout
        self.ssl = ssl_context
        self.idle: list[_Conn] = []
        self.open = 0  # connections open or being opened, idle or in use
        self.waiting: collections.deque[asyncio.Future[None]] = collections.deque()
        self.epoch = 0  # changes when the connections are forgotten
        self.closed = False

    def forget(self, forked: bool) -> None:
        """Drop every connection: they belong to another process or event loop.

        After a fork they are the parent's and are left alone. Those of another
        loop of this process are shut down, so their servers see them end now
        (that loop, often closed, cannot close them; their file descriptors
        close when they are collected).
        """
        if not forked:
            for conn in self.idle:
                conn.shut_down()
        self.idle = []
        self.open = 0
        self.waiting = collections.deque()
        self.epoch += 1

    async def run(self, exchange: _Exchange[_Pool]) -> None:
        """Run one exchange on a connection of this pool; a failure is put in the exchange."""
        epoch = self.epoch
        conn = self._idle()
        if conn is None:
            try:
                conn = await self._acquire()
            except OSError as err:  # TimeoutError included
                logger.debug("memcached %s cannot be connected: %r", self.name, err)
                exchange.fail("cannot be connected", err)
                return
        try:
            outcome = await conn.converse(exchange, self.timeout)
        finally:
            self._release(conn, epoch)
        if outcome is not None:
            logger.debug("memcached %s failed: %r", self.name, outcome)
            exchange.fail(*_failure(outcome, self.timeout))

    def _idle(self, first: bool = True) -> _Conn | None:
        """An idle connection, if one is left (and, ``first``, no call waits before us)."""
        idle = self.idle
        while idle and (not first or not self.waiting):
            conn = idle.pop()
            if not conn.broken:  # closed by the server while idle (a restart): skip it
                return conn
            conn.close()
            self.open -= 1
        return None

    async def _acquire(self) -> _Conn:
        """A connection: an idle one, a new one if the pool has room, else the next released."""
        first = True
        while True:
            if self.open < self.size and (not first or not self.waiting):
                self.open += 1
                try:
                    return await self._connect()
                except BaseException:
                    self.open -= 1
                    self._wake()
                    raise
            waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self.waiting.append(waiter)
            try:
                await waiter
            except asyncio.CancelledError:
                if waiter.done() and not waiter.cancelled():
                    self._wake()  # our turn came with the cancellation: pass it on
                raise
            finally:
                with contextlib.suppress(ValueError):
                    self.waiting.remove(waiter)
            first = False
            conn = self._idle(first)
            if conn is not None:
                return conn

    def _release(self, conn: _Conn, epoch: int) -> None:
        """Take a connection back after an exchange (closing it if it is not sound)."""
        if epoch != self.epoch:  # a connection of another process or event loop
            conn.close()
            return
        if conn.broken or self.closed:
            conn.close()
            self.open -= 1
        else:
            self.idle.append(conn)
        self._wake()

    def _wake(self) -> None:
        """Let the first call waiting for a connection go on."""
        for waiter in self.waiting:
            if not waiter.done():
                waiter.set_result(None)
                return

    async def _connect(self) -> _Conn:
        loop = asyncio.get_running_loop()
        address = self.address
        async with asyncio.timeout(self.connect_timeout):
            if isinstance(address, str):
                _, conn = await loop.create_unix_connection(
                    lambda: _Conn(loop), address, ssl=self.ssl
                )
            else:
                _, conn = await loop.create_connection(
                    lambda: _Conn(loop), address[0], address[1], ssl=self.ssl
                )
        return conn

    def close(self) -> None:
        self.closed = True
        for conn in self.idle:
            conn.close()
        self.idle = []


MERGE_LIMIT: Final = 256
"""The most jobs one merged call gathers; more make another, sent at once, so that
the server works on one while this process reads the replies of another."""

_Jobs: TypeAlias = "Sequence[_Job[object] | CacheORMError]"


class _Merged:
    """Calls gathered in one turn of the event loop, to run as one call."""

    __slots__ = ("calls", "size", "task")

    def __init__(self) -> None:
        self.size = 0  # jobs of the calls
        self.calls: list[tuple[_Jobs, asyncio.Future[list[object]]]] = []
        self.task: asyncio.Task[None] | None = None  # once sent


def _pools(
    servers: Sequence[tuple[str, int] | str],
    *,
    size: int,
    timeout: float,
    connect_timeout: float,
    ssl_context: ssl.SSLContext | None,
) -> tuple[list[_Pool], _Placer[_Pool]]:
    """A pool per server, named and placed exactly as the sync backend names and places them.

    Raises:
        ValidationError: no server.
    """
    from pymemcache.client.hash import HashClient

    # The pymemcache client is built only for its server names and hasher: it never connects.
    client = _new_client(servers, connect_timeout, timeout)
    named = (
        {name: node.server for name, node in client.clients.items()}
        if isinstance(client, HashClient)
        else {_server_name(client.server): client.server}
    )
    pools = [
        _Pool(
            name,
            address,
            size=size,
            timeout=timeout,
            connect_timeout=connect_timeout,
            ssl_context=ssl_context,
        )
        for name, address in named.items()
    ]
    return pools, _Placer(pools, _finder(client))


class AsyncMemcachedBackend:
    """Store bytes in memcached from asyncio: the twin of :class:`~cacheorm.MemcachedBackend`.

    The same keys, values, flags, TTLs, CAS tokens and key placement as the
    sync backend over the same ``servers`` list, so sync and async processes
    share one cache. Each server has a pool of up to ``max_connections``
    connections; a call runs, per round, one pipeline per server on one
    connection, the servers concurrently.

    **Faults**, as in the sync backend: a server that does not answer costs
    one ``timeout`` per call whatever the number of keys (``timeout`` bounds
    each wait for progress), one that cannot be reached one
    ``connect_timeout``; its commands raise (in :meth:`batch`, hold)
    :class:`~cacheorm.BackendError` with ``.server`` naming it, the keys of
    the other servers are served, and nothing is ever sent twice: a write
    whose connection failed after it was sent raises a ``BackendError``
    saying its outcome is unknown.

    Args:
        servers: ``(host, port)`` pairs (or UNIX socket paths); one or several.
        default_ttl: seconds used when a call passes ``ttl=None``; ``0`` = never.
        connect_timeout: seconds to wait for a connection.
        timeout: seconds to wait, without progress, for a server's replies.
        max_connections: the most connections open to one server at a time;
            calls beyond it wait for a connection.
        ssl_context: TLS for every connection, if given.

    Raises:
        ValidationError: an illegal ``default_ttl`` or ``max_connections``, or
            no server.
    """

    default_ttl: int

    def __init__(
        self,
        servers: Sequence[tuple[str, int] | str] = (("127.0.0.1", 11211),),
        *,
        default_ttl: int = 0,
        connect_timeout: float = 1.0,
        timeout: float = 2.0,
        max_connections: int = 16,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.default_ttl = resolve_ttl(default_ttl, 0)
        if not base.is_int(max_connections) or max_connections < 1:
            raise ValidationError(f"max_connections must be an int >= 1, got {max_connections!r}")
        self._pools, self._place = _pools(
            servers,
            size=max_connections,
            timeout=timeout,
            connect_timeout=connect_timeout,
            ssl_context=ssl_context,
        )
        self._room = MAX_KEY_LENGTH
        self._bound = base.LoopBinding()
        self._running = 0  # calls out now
        self._gathering: _Merged | None = None  # calls to send at the loop's next turn

    def __repr__(self) -> str:
        return f"AsyncMemcachedBackend({[pool.name for pool in self._pools]!r})"

    # -- plumbing -----------------------------------------------------------

    def _own_connections(self) -> None:
        """Forget connections of another process (a fork) or event loop before using any."""
        moved = self._bound.moved()
        if moved is not None:
            for pool in self._pools:
                pool.forget(moved == "fork")
            self._running, self._gathering = 0, None

    async def _converse(self, exchanges: list[_Exchange[_Pool]]) -> None:
        if len(exchanges) == 1:  # the common case, without the cost of tasks
            exchange = exchanges[0]
            await exchange.node.run(exchange)
        else:
            await asyncio.gather(*(exchange.node.run(exchange) for exchange in exchanges))

    async def _execute(
        self, jobs: Sequence[_Job[object] | CacheORMError], placed: _Placed[_Pool] | None = None
    ) -> list[object]:
        """Run the jobs in rounds, as the sync backend does; each result or error, in order.

        While another call of this backend is out, the jobs join the calls
        made in the same turn of the event loop, and run with them as one call
        (:meth:`_join`). ``placed`` (instead of ``jobs``): one-request jobs on
        the servers named, run at once.
        """
        self._own_connections()
        if self._running and placed is None:
            return await self._join(jobs)
        self._running += 1
        try:
            return await self._rounds(jobs, placed)
        finally:
            self._running -= 1

    async def _rounds(
        self, jobs: Sequence[_Job[object] | CacheORMError], placed: _Placed[_Pool] | None
    ) -> list[object]:
        results: list[object] = [None] * len(placed if placed is not None else jobs)
        if placed is not None:
            queues = _placed_queues(placed)
        else:
            queues = _enqueue(jobs, results, self._room, self._place)
        await self._run_queues(queues, results)
        return results

    async def _run_queues(self, queues: dict[_Pool, list[_Task]], results: list[object]) -> None:
        failed: dict[_Pool, BackendError] = {}
        while queues:
            exchanges, later = _start_round(queues, failed, results)
            await self._converse(exchanges)
            queues = _end_round(exchanges, failed, results, later)

    async def _join(self, jobs: Sequence[_Job[object] | CacheORMError]) -> list[object]:
        """Run the jobs with the other calls made in this turn of the event loop.

        Calls made while the backend is busy are gathered until the loop's
        next turn, then run together (:meth:`_run_merged`): one pipeline per
        server for all of them, so many tasks share each write and read (the
        jobs run in the order the calls came, as a batch's do). Cancelled
        before they are sent, the jobs are dropped; after, the call waits for
        the merged call to end (bounded by the timeouts), as a call of its own
        waits for its replies, and a second cancellation stops the wait.
        """
        loop = self._bound.loop
        assert loop is not None  # set by _own_connections
        merged = self._gathering
        if merged is not None and merged.size + len(jobs) > MERGE_LIMIT:
            self._flush(merged)  # full: sent now, so the server works while we read
            merged = None
        if merged is None:
            merged = self._gathering = _Merged()
            loop.call_soon(self._flush, merged)
        done: asyncio.Future[list[object]] = loop.create_future()
        call = (jobs, done)
        merged.calls.append(call)
        merged.size += len(jobs)
        try:
            return await done
        except asyncio.CancelledError:
            if merged.task is None:  # not sent: nothing ran
                merged.calls.remove(call)
                merged.size -= len(jobs)
                raise
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.wait((merged.task,))
            raise

    def _flush(self, merged: _Merged) -> None:
        """Send the calls gathered in the last turn of the event loop, as one call."""
        if self._gathering is merged:
            self._gathering = None
        if merged.calls and merged.task is None:
            merged.task = asyncio.get_running_loop().create_task(self._run_merged(merged))

    async def _run_merged(self, merged: _Merged) -> None:
        calls = merged.calls
        jobs = calls[0][0] if len(calls) == 1 else [job for each, _ in calls for job in each]
        self._running += 1
        try:
            results = await self._rounds(jobs, None)
        except BaseException as err:  # cancelled with the event loop, or a bug: each call gets it
            for _, done in calls:
                if not done.done():
                    done.set_exception(err) if isinstance(err, Exception) else done.cancel()
            if not isinstance(err, Exception):
                raise
            logger.exception("memcached: a merged call failed")
            return
        finally:
            self._running -= 1
        start = 0
        for each, done in calls:
            stop = start + len(each)
            if not done.done():
                done.set_result(results[start:stop])
            start = stop

    async def _one(self, job: _Job[_T]) -> _T:
        """Run one command; return its result or raise its error.

        A command of one request while the backend is idle (the common case)
        is one exchange, without the rounds' bookkeeping of :meth:`_rounds`.
        """
        self._own_connections()
        if self._running or job.steps is not None or len(job.key) > self._room:
            result = (await self._execute((job,)))[0]
        else:
            exchange = _Lone(self._place(job.key), job)
            self._running += 1
            try:
                await exchange.node.run(exchange)
                result, queues = _lone_result(job, exchange)
                if queues:  # it sends another request: the rounds take it on
                    results = cast("list[object]", result)
                    await self._run_queues(queues, results)
                    result = results[0]
            finally:
                self._running -= 1
        if isinstance(result, CacheORMError):
            raise result
        return cast("_T", result)

    async def _many(self, jobs: Sequence[_Job[object]]) -> list[object]:
        """Run the jobs; raise the first error (the others' effects stand)."""
        results = await self._execute(jobs)
        for result in results:
            if isinstance(result, CacheORMError):
                raise result
        return results

    # -- the AsyncBackend protocol ------------------------------------------

    async def get(self, key: bytes) -> bytes | None:
        """Return the value, or ``None`` when the key is absent or expired."""
        return await self._one(_get_job(memcached_key(key)))

    async def set(self, key: bytes, value: bytes, ttl: TTL = None) -> None:
        """Store ``value`` unconditionally."""
        expiry = _write_expiry(ttl, self.default_ttl)
        await self._one(_write_job(b"set", memcached_key(key), value, expiry))

    async def add(self, key: bytes, value: bytes, ttl: TTL = None) -> bool:
        """Store only if absent (memcached ``add`` is atomic). Return whether it was stored."""
        expiry = _write_expiry(ttl, self.default_ttl)
        return await self._one(_write_job(b"add", memcached_key(key), value, expiry))

    async def replace(self, key: bytes, value: bytes, ttl: TTL = None) -> bool:
        """Store only if present. Return whether it was stored."""
        expiry = _write_expiry(ttl, self.default_ttl)
        return await self._one(_write_job(b"replace", memcached_key(key), value, expiry))

    async def delete(self, key: bytes) -> bool:
        """Remove the key. Return whether it existed."""
        return await self._one(_delete_job(memcached_key(key)))

    async def has(self, key: bytes) -> bool:
        """Return whether the key is present (this reads the value: memcached has no EXISTS)."""
        return await self._one(_has_job(memcached_key(key)))

    async def get_many(self, *keys: bytes) -> list[bytes | None]:
        """Return the values in key order with one ``get`` per server."""
        results = await self._fetch(keys)
        for result in results:
            if isinstance(result, CacheORMError):
                raise result
        return cast("list[bytes | None]", results)

    async def _fetch(self, keys: Sequence[bytes]) -> list[object]:
        """Read the keys (one ``get`` per server); each value, ``None`` or error, in order.

        Run at once, not merged with other calls (it is a batch already).
        """
        self._own_connections()
        exchanges, results = fetches(keys, self._room, self._place)
        self._running += 1
        try:
            await self._converse(cast("list[_Exchange[_Pool]]", exchanges))
        finally:
            self._running -= 1
        for exchange in exchanges:
            exchange.fill(results)
        return results

    async def get_with_ttl(self, key: bytes) -> tuple[bytes, float] | None:
        """Return the value and its remaining seconds (``0.0`` = never), from its flags."""
        return await self._one(_ttl_job(memcached_key(key)))

    async def get_many_with_ttl(self, *keys: bytes) -> list[tuple[bytes, float] | None]:
        """:meth:`get_with_ttl` for each key, in key order, with one ``get`` per server."""
        jobs = [_ttl_job(memcached_key(key)) for key in keys]
        return cast("list[tuple[bytes, float] | None]", await self._many(jobs))

    async def _store(self, commands: Sequence[Set]) -> list[object]:
        """Run ``Set`` s on distinct keys (one run of ``set`` s per server); each result or
        error, as :meth:`cacheorm.MemcachedBackend._store` does.

        Run at once, not merged with other calls (it is a batch already).
        """
        self._own_connections()
        exchanges, results = stores(commands, self.default_ttl, self._room, self._place)
        self._running += 1
        try:
            await self._converse(cast("list[_Exchange[_Pool]]", exchanges))
        finally:
            self._running -= 1
        slots, jobs = fill_stores(exchanges, results)
        if jobs:
            for slot, result in zip(slots, await self._execute(jobs), strict=True):
                results[slot] = result
        return results

    async def set_many(self, mapping: Mapping[bytes, bytes], ttl: TTL = None) -> None:
        """Store every pair with one pipeline per server."""
        results = await self._store([Set(key, value, ttl) for key, value in mapping.items()])
        for result in results:
            if isinstance(result, CacheORMError):
                raise result

    async def replace_many(self, mapping: Mapping[bytes, bytes], ttl: TTL = None) -> list[bool]:
        """Replace each present key; return, in mapping order, whether each was stored."""
        expiry = _write_expiry(ttl, self.default_ttl)
        jobs = [_write_job(b"replace", memcached_key(k), v, expiry) for k, v in mapping.items()]
        return cast("list[bool]", await self._many(jobs))

    async def delete_many(self, *keys: bytes) -> int:
        """Remove the keys, pipelined per server; return how many existed."""
        jobs = [_delete_job(memcached_key(key)) for key in keys]
        return sum(cast("list[bool]", await self._many(jobs)))

    async def incr(self, key: bytes, delta: int = 1) -> int:
        """Add ``delta`` atomically and return the new value; a missing key counts as ``0``."""
        k = memcached_key(key)
        return await self._one(_Job(k, False, _incr_steps(k, base.check_delta(delta))))

    async def decr(self, key: bytes, delta: int = 1) -> int:
        """Subtract ``delta`` atomically and return the new value (may go below zero)."""
        k = memcached_key(key)
        return await self._one(_Job(k, False, _incr_steps(k, -base.check_delta(delta))))

    async def touch(self, key: bytes, ttl: TTL = None) -> bool:
        """Reset the key's TTL (``gets`` + ``cas``, so the flags learn it). Whether it exists."""
        k = memcached_key(key)
        return await self._one(_Job(k, False, _touch_steps(k, ttl, self.default_ttl)))

    async def gets(self, key: bytes) -> tuple[bytes, CasToken] | None:
        """Return the value with a token (memcached's CAS unique and the item's flags)."""
        return await self._one(_gets_job(memcached_key(key)))

    async def cas(
        self, key: bytes, value: bytes, token: CasToken, ttl: int | Keep | None = KEEP_TTL
    ) -> bool:
        """Store ``value`` only if the key is unchanged since ``gets``."""
        k = memcached_key(key)
        return await self._one(_cas_job(k, value, token, ttl, self.default_ttl))

    async def delete_if(self, key: bytes, token: CasToken) -> bool:
        """Delete the key only if unchanged since ``gets``."""
        k = memcached_key(key)
        return await self._one(_delete_if_job(k, token))

    async def batch(self, commands: Sequence[Command]) -> list[object]:
        """Run the commands with one pipeline per server; results (or errors) in command order."""
        if all(type(command) is Get for command in commands):
            return await self._fetch([command.key for command in commands])
        if distinct_sets(commands):
            return await self._store(cast("Sequence[Set]", commands))
        try:
            jobs = _jobs(commands, self.default_ttl)
        except _Unbatched:
            return await base.around_clears_async(commands, self.batch, self.clear_prefix)
        return await self._execute(jobs)

    def server_for(self, key: bytes, reading: bool = False) -> str:
        """``"host:port"`` of the server ``key`` lives on (for the engine's fail-fast outages)."""
        return self._place(memcached_key(key)).name

    async def clear_prefix(self, prefix: bytes, shape: re.Pattern[bytes] | None = None) -> int:
        """See :meth:`cacheorm.MemcachedBackend.clear_prefix`: the same crawl and deletes."""
        steps = _clear_steps(self._pools, prefix, shape)
        try:
            step = next(steps)
            while True:
                if isinstance(step, float):
                    await asyncio.sleep(step)
                    step = steps.send([])
                else:
                    step = steps.send(await self._execute((), step))
        except StopIteration as done:
            return cast("int", done.value)

    async def ping(self) -> None:
        """Return when every server answers a read.

        Raises:
            BackendError: a server that cannot be reached or does not answer
                within the timeouts (``.server`` names it).
        """
        self._own_connections()
        exchanges = [_Exchange(pool, [_Task(0, _get_job(PING_KEY))]) for pool in self._pools]
        await self._converse(exchanges)
        for exchange in exchanges:
            if exchange.error is not None:
                raise exchange.error

    async def aclose(self) -> None:
        """Close every connection; the backend is unusable after.

        Connections in use by running calls are closed when those calls end.
        """
        for pool in self._pools:
            pool.close()
