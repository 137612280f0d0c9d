"""The memcached backend under faults: one timeout per call, per-server results, forks.

Real memcached servers from ``server_factory`` are frozen (SIGSTOP), killed,
or put behind a small TCP proxy that loses replies; a listener with a full
accept queue stands for an unreachable host. Every fault test bounds the time
a call takes as well as its outcome.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

import pytest
from pymemcache.client.base import Client
from pymemcache.client.hash import HashClient

import cacheorm as co
from cacheorm.backends.base import (
    Add,
    Cas,
    Command,
    Delete,
    Get,
    Gets,
    Has,
    Incr,
    Replace,
    Set,
)
from cacheorm.backends.memcached import MemcachedBackend, memcached_key
from tests.servers import frozen
from tests.workers import Forked

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

    from tests.servers import MemcachedServer, ServerFactory

TIMEOUT = 0.5
"""The backends' connect and read timeout in these tests, in seconds."""
ONE_TIMEOUT = TIMEOUT + 0.7
"""What a call that meets one timeout may take, with room for a busy machine."""


def _name(server: MemcachedServer) -> str:
    return f"{server.host}:{server.port}"


def _backend(*servers: tuple[str, int]) -> MemcachedBackend:
    return MemcachedBackend(servers=list(servers), timeout=TIMEOUT, connect_timeout=TIMEOUT)


def _timed(call: Callable[[], object]) -> tuple[object, float]:
    """``call()``'s result, or the CacheORMError it raised, and the seconds it took."""
    started = time.monotonic()
    try:
        result = call()
    except co.CacheORMError as err:
        result = err
    return result, time.monotonic() - started


@contextlib.contextmanager
def _unreachable() -> Iterator[tuple[str, int]]:
    """An address whose connection attempts time out, like a host that is down.

    A listener with a backlog of 0 and a full accept queue: the kernel drops
    further SYNs, so ``connect`` waits for its whole timeout.
    """
    listener = socket.socket()
    filler = socket.socket()
    try:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        address: tuple[str, int] = listener.getsockname()
        filler.connect(address)
        yield address
    finally:
        filler.close()
        listener.close()


class _FakeServer:
    """A one-thread TCP server; ``handle(connection, request)`` answers each request."""

    def __init__(self, handle: Callable[[socket.socket, bytes], None]) -> None:
        self._handle = handle
        self._listener = socket.socket()
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(8)
        self._listener.settimeout(0.05)
        self.address: tuple[str, int] = self._listener.getsockname()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                connection, _ = self._listener.accept()
            except TimeoutError:
                continue
            with connection:
                connection.settimeout(2)
                time.sleep(0.05)  # let the whole pipeline arrive: one recv then reads it all
                with contextlib.suppress(OSError):
                    self._handle(connection, connection.recv(1 << 20))

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self._listener.close()


def _reply_dropper(upstream: tuple[str, int]) -> _FakeServer:
    """A proxy that delivers the requests to memcached, which runs them, but loses the replies."""

    def handle(connection: socket.socket, request: bytes) -> None:
        with socket.create_connection(upstream, timeout=2) as server:
            server.sendall(request)
            server.recv(1 << 20)  # memcached has run the commands and answered...
        # ...and the connection to the client closes without the answer.

    return _FakeServer(handle)


# -- one timeout per call --------------------------------------------------------


@pytest.mark.timeout(60)
def test_a_hung_server_costs_one_timeout_per_call_whatever_the_keys(
    server_factory: ServerFactory,
) -> None:
    server = server_factory.memcached()
    backend = _backend(server.address)
    keys = [b"key-%d" % i for i in range(10)]
    backend.set_many(dict.fromkeys(keys, b"v"))
    calls: dict[str, Callable[[], object]] = {
        "delete_many": lambda: backend.delete_many(*keys),
        "get_many": lambda: backend.get_many(*keys),
        "set_many": lambda: backend.set_many(dict.fromkeys(keys, b"w")),
        "replace_many": lambda: backend.replace_many(dict.fromkeys(keys, b"w")),
        "get_many_with_ttl": lambda: backend.get_many_with_ttl(*keys),
        "batch": lambda: backend.batch([Delete(key) for key in keys]),
    }
    for call, run in calls.items():
        with frozen(server.pid):
            result, elapsed = _timed(run)
        assert elapsed < ONE_TIMEOUT, f"{call} of 10 keys took {elapsed:.2f} s"
        errors = result if isinstance(result, list) else [result]
        assert len(errors) == (10 if call == "batch" else 1), call
        for error in errors:
            assert isinstance(error, co.BackendError), call
            assert error.server == _name(server)
        # Recovered after SIGCONT (the server then runs what it had received).
        assert backend.get_many(*keys[:1]) in ([b"v"], [b"w"], [None])
        backend.set_many(dict.fromkeys(keys, b"v"))
    backend.close()


@pytest.mark.timeout(30)
def test_a_batch_of_every_kind_of_command_meets_one_timeout(server_factory: ServerFactory) -> None:
    server = server_factory.memcached()
    backend = _backend(server.address)
    backend.set_many({b"a": b"1", b"b": b"2", b"n": b"5"})
    token = backend.gets(b"a")
    assert token is not None
    commands: list[Command] = [
        Delete(b"a"),
        Add(b"new", b"x"),
        Has(b"b"),
        Get(b"b"),
        Set(b"c", b"3"),
        Incr(b"n", delta=-2),  # gets + cas: two round trips when it works
        Cas(b"a", b"9", token=token[1]),
        Replace(b"n", b"7"),
    ]
    with frozen(server.pid):
        results, elapsed = _timed(lambda: backend.batch(commands))
    assert elapsed < ONE_TIMEOUT, f"the batch took {elapsed:.2f} s"
    assert isinstance(results, list)
    for command, result in zip(commands, results, strict=True):
        assert isinstance(result, co.BackendError), command
        assert result.server == _name(server)
    # Sent but unanswered: the server may have run them, which the error must say.
    for index in (0, 1, 4, 6):
        assert "outcome unknown" in str(results[index])
    # The replace waited for the incr of its key, and the call ended first: never sent.
    assert "outcome unknown" not in str(results[7])
    # Once resumed, the server runs what it had received, once: the delete, add, set
    # and cas (which finds "a" deleted), and the first step of incr; the replace and
    # incr's second step were never sent.
    deadline = time.monotonic() + 5
    while backend.get(b"a") is not None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert backend.get_many(b"a", b"b", b"c", b"new", b"n") == [None, b"2", b"3", b"x", b"5"]
    backend.close()


@pytest.mark.timeout(30)
def test_a_batch_of_sets_on_a_hung_server_meets_one_timeout_and_says_it_was_sent(
    server_factory: ServerFactory,
) -> None:
    server = server_factory.memcached()
    backend = _backend(server.address)
    keys = [b"key-%d" % i for i in range(20)]
    with frozen(server.pid):
        results, elapsed = _timed(lambda: backend.batch([Set(key, b"v") for key in keys]))
    assert elapsed < ONE_TIMEOUT, f"20 sets took {elapsed:.2f} s"
    assert isinstance(results, list)
    for result in results:
        assert isinstance(result, co.BackendError)
        assert result.server == _name(server)
        assert "outcome unknown" in str(result)  # sent in full: the server may run them
    deadline = time.monotonic() + 5  # resumed, it runs what it received, once
    while backend.get(keys[-1]) is None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert backend.get_many(*keys) == [b"v"] * 20
    backend.close()


@pytest.mark.timeout(30)
def test_an_unreachable_server_costs_one_connect_timeout_per_call() -> None:
    with _unreachable() as address:
        backend = _backend(address)
        keys = [b"key-%d" % i for i in range(12)]
        results, elapsed = _timed(lambda: backend.batch([Delete(k) for k in keys]))
        assert elapsed < ONE_TIMEOUT, f"12 deletes took {elapsed:.2f} s"
        assert isinstance(results, list)
        assert all(isinstance(r, co.BackendError) for r in results)
        error = results[0]
        assert isinstance(error, co.BackendError)
        assert error.server == f"{address[0]}:{address[1]}"
        assert isinstance(error.__cause__, OSError)
        assert "outcome unknown" not in str(error)  # never sent: certainly not run
        backend.close()


@pytest.mark.timeout(20)
def test_a_refused_connection_names_the_server_and_fails_at_once() -> None:
    with socket.socket() as probe:  # a port that was free a moment ago: nobody listens
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    backend = _backend(("127.0.0.1", port))
    with pytest.raises(co.BackendError) as caught:
        backend.get(b"k")
    assert caught.value.server == f"127.0.0.1:{port}"
    assert isinstance(caught.value.__cause__, ConnectionRefusedError)
    backend.close()


# -- a pool with a dead node ---------------------------------------------------------


@pytest.fixture
def pool(server_factory: ServerFactory) -> tuple[list[MemcachedServer], dict[bytes, int]]:
    """Two nodes holding 20 keys, written by a plain pymemcache HashClient.

    Returns the nodes and, for each key, the index of the node that holds it.
    """
    nodes = [server_factory.memcached(), server_factory.memcached()]
    plain = HashClient([node.address for node in nodes], timeout=2)
    keys = [b"key-%d" % i for i in range(20)]
    for key in keys:
        plain.set(memcached_key(key), b"v-" + key, noreply=False)
    plain.close()
    by_encoded = {memcached_key(key): key for key in keys}
    holder: dict[bytes, int] = {}
    for index, node in enumerate(nodes):
        raw = node.client()
        try:
            for found in raw.get_many(list(by_encoded)):
                assert isinstance(found, bytes)
                holder[by_encoded[found]] = index
        finally:
            raw.close()
    assert sorted(holder) == sorted(keys)
    assert set(holder.values()) == {0, 1}, "both nodes hold keys"
    return nodes, holder


def test_keys_live_where_a_plain_hashclient_puts_them(
    pool: tuple[list[MemcachedServer], dict[bytes, int]],
) -> None:
    nodes, holder = pool
    backend = _backend(*(node.address for node in nodes))
    keys = list(holder)
    assert backend.get_many(*keys) == [b"v-" + key for key in keys]
    assert backend.batch([Get(key) for key in keys]) == [b"v-" + key for key in keys]
    backend.set_many({key: b"new" for key in keys})  # and written back to the same node
    for index, node in enumerate(nodes):
        raw = node.client()
        try:
            mine = [key for key in keys if holder[key] == index]
            assert raw.get_many([memcached_key(key) for key in mine]) == {
                memcached_key(key): b"new" for key in mine
            }
        finally:
            raw.close()
    backend.close()


@pytest.mark.timeout(30)
@pytest.mark.parametrize("fault", ["killed", "frozen"])
def test_a_dead_node_fails_only_its_own_keys(
    pool: tuple[list[MemcachedServer], dict[bytes, int]], fault: str
) -> None:
    nodes, holder = pool
    backend = _backend(*(node.address for node in nodes))
    keys = list(holder)
    assert backend.get_many(*keys) == [b"v-" + key for key in keys]  # connections are open
    dead = nodes[1]
    if fault == "killed":
        dead.stop()
    with frozen(dead.pid) if fault == "frozen" else contextlib.nullcontext():
        reads, read_time = _timed(lambda: backend.batch([Get(k) for k in keys]))
        writes, write_time = _timed(lambda: backend.batch([Set(k, b"w") for k in keys]))
        many, many_time = _timed(lambda: backend.get_many(*keys))
    for elapsed in (read_time, write_time, many_time):
        assert elapsed < ONE_TIMEOUT, f"a call took {elapsed:.2f} s"
    assert isinstance(reads, list)
    assert isinstance(writes, list)
    for key, read, write in zip(keys, reads, writes, strict=True):
        if holder[key] == 0:
            assert read == b"v-" + key
            assert write is True
        else:
            assert isinstance(read, co.BackendError)
            assert isinstance(write, co.BackendError)
            assert read.server == write.server == _name(dead)
    assert isinstance(many, co.BackendError)  # get_many cannot return a partial list
    assert many.server == _name(dead)
    backend.close()


@pytest.mark.timeout(30)
def test_a_call_stuck_on_a_hung_node_holds_up_no_other_threads_call(
    pool: tuple[list[MemcachedServer], dict[bytes, int]],
) -> None:
    nodes, holder = pool
    slow = 2.0
    backend = MemcachedBackend(
        servers=[node.address for node in nodes], timeout=slow, connect_timeout=TIMEOUT
    )
    keys = list(holder)
    assert backend.get_many(*keys) == [b"v-" + key for key in keys]  # connections are open
    dead_key = next(key for key in keys if holder[key] == 1)
    live_key = next(key for key in keys if holder[key] == 0)
    stuck: list[tuple[object, float, float]] = []

    def wait_on_the_hung_node() -> None:
        started = time.monotonic()
        result, elapsed = _timed(lambda: backend.get(dead_key))
        stuck.append((result, started, started + elapsed))

    with frozen(nodes[1].pid):
        thread = threading.Thread(target=wait_on_the_hung_node)
        thread.start()
        time.sleep(0.3)  # the other thread is waiting for the hung node's reply
        started = time.monotonic()
        value, elapsed = _timed(lambda: backend.get(live_key))
        thread.join()
    assert value == b"v-" + live_key
    ((result, stuck_start, stuck_end),) = stuck
    assert isinstance(result, co.BackendError)
    assert result.server == _name(nodes[1])
    assert stuck_start < started < stuck_end, "the two calls overlapped"
    assert elapsed < TIMEOUT, f"the healthy node's call waited {elapsed:.2f} s"
    backend.close()


@pytest.mark.timeout(60)
@pytest.mark.parametrize("given", [False, True], ids=["servers", "client"])
def test_threads_sharing_a_backend_count_exactly_on_their_own_connections(
    server_factory: ServerFactory, given: bool
) -> None:
    server = server_factory.memcached()
    raw = Client(server.address, timeout=2)
    own = Client(server.address, timeout=2)
    backend = MemcachedBackend(client=own) if given else MemcachedBackend(servers=[server.address])
    backend.set(b"n", b"0")
    before = raw.stats()[b"total_connections"]
    assert isinstance(before, int)
    threads, per_thread = 8, 150

    def work() -> None:
        for i in range(per_thread):
            backend.incr(b"n")
            assert backend.get_many(b"n", b"absent")[1] is None
            if i % 50 == 0:
                backend.set(b"t", b"x" * 1000)

    with ThreadPoolExecutor(threads) as executor:
        for done in [executor.submit(work) for _ in range(threads)]:
            done.result()  # a worker's failed assertion fails the test
    assert backend.get(b"n") == b"%d" % (threads * per_thread)
    opened = raw.stats()[b"total_connections"]
    assert isinstance(opened, int)
    if given:  # the client's one socket, the calls taking turns on it
        assert opened - before == 0
    else:  # one per call running at once, kept between calls
        assert opened - before <= threads - 1  # the first set was open already
    backend.close()
    own.close()
    raw.close()


def test_an_adopted_pooled_hashclient_keeps_its_key_prefix(
    memcached_servers: list[MemcachedServer],
) -> None:
    node = memcached_servers[0]
    pooled = HashClient([node.address], use_pooling=True, key_prefix=b"app:", timeout=2)
    backend = MemcachedBackend(client=pooled)
    backend.set_many({b"reliability-k": b"v", b"a b": b"w"})
    assert backend.batch([Get(b"reliability-k"), Gets(b"a b")])[0] == b"v"
    raw = node.client()
    try:
        assert raw.get(b"app:reliability-k") == b"v"
    finally:
        raw.close()
    with pytest.raises(co.ValidationError, match="key_prefix"):
        backend.get(b"x" * 248)  # fits memcached alone, not behind the prefix
    backend.close()
    pooled.close()


# -- never twice ------------------------------------------------------------------


@pytest.mark.timeout(30)
def test_a_write_whose_reply_is_lost_is_not_sent_again(server_factory: ServerFactory) -> None:
    server = server_factory.memcached()
    direct = _backend(server.address)
    direct.set_many({b"n": b"10", b"gone": b"x"})
    got = direct.gets(b"n")
    assert got is not None
    proxy = _reply_dropper(server.address)
    try:
        backend = _backend(proxy.address)
        for attempt in (1, 2):
            results, elapsed = _timed(
                lambda: backend.batch(
                    [
                        Incr(b"n", delta=1),
                        Add(b"added", b"a"),
                        Delete(b"gone"),
                    ]
                )
            )
            assert elapsed < ONE_TIMEOUT
            assert isinstance(results, list)
            for result in results:
                assert isinstance(result, co.BackendError)
                assert "outcome unknown" in str(result)
                assert result.server == f"{proxy.address[0]}:{proxy.address[1]}"
            # Each call ran each command once: none was sent again.
            assert direct.get(b"n") == b"%d" % (10 + attempt)
        with pytest.raises(co.BackendError, match="outcome unknown"):
            backend.cas(b"n", b"99", got[1])
        backend.close()
    finally:
        proxy.close()
    assert direct.get_many(b"added", b"gone") == [b"a", None]
    direct.close()


@pytest.mark.timeout(20)
def test_a_reply_out_of_step_fails_the_server_not_the_process() -> None:
    def handle(connection: socket.socket, request: bytes) -> None:
        connection.sendall(b"VALUE someone-else 0 1\r\nx\r\nEND\r\n")  # not what was asked

    fake = _FakeServer(handle)
    try:
        backend = _backend(fake.address)
        with pytest.raises(co.BackendError, match="out of step") as caught:
            backend.get(b"mine")
        assert caught.value.server == f"{fake.address[0]}:{fake.address[1]}"
        backend.close()
    finally:
        fake.close()


@pytest.mark.timeout(20)
def test_a_connection_the_server_closed_while_idle_is_replaced_before_use() -> None:
    def handle(connection: socket.socket, request: bytes) -> None:
        connection.sendall(b"STORED\r\n")  # then closes, as a restarted server would

    fake = _FakeServer(handle)
    try:
        backend = _backend(fake.address)
        assert backend.add(b"k", b"1") is True
        time.sleep(0.1)  # the server has closed the connection by now
        # Nothing was sent on the dead connection, so a fresh one is safe to use.
        assert backend.add(b"k", b"2") is True
        backend.close()
    finally:
        fake.close()


# -- pipelines ---------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_a_long_pipeline_of_large_values_neither_deadlocks_nor_mixes_replies(
    server_factory: ServerFactory,
) -> None:
    server = server_factory.memcached()
    backend = MemcachedBackend(servers=[server.address], timeout=5)
    big = {b"big-%d" % i: bytes([i]) * 400_000 for i in range(24)}  # ~10 MB each way
    assert backend.batch([Set(k, v) for k, v in big.items()]) == [True] * 24
    # Large replies and large requests interleaved in one pipeline: reading while
    # sending keeps both directions moving.
    commands: list[Command] = []
    for key in big:
        commands += [Get(key), Set(key + b"-copy", big[key])]
    results = backend.batch(commands)
    assert results[0::2] == list(big.values())
    assert results[1::2] == [True] * 24
    assert backend.get_many(*(key + b"-copy" for key in big)) == list(big.values())
    backend.close()


def test_a_batch_keeps_each_keys_order_around_multi_step_commands(
    server_factory: ServerFactory,
) -> None:
    server = server_factory.memcached()
    backend = _backend(server.address)
    backend.set(b"old", b"before")
    results = backend.batch(
        [
            Incr(b"n", delta=-3),  # gets + add/cas: two round trips
            Get(b"n"),
            Set(b"old", b"x" * (2 * 1024 * 1024)),  # too large: refused, then deleted
            Get(b"old"),
            Incr(b"n", delta=5),
            Get(b"n"),
            Get(b"other"),
        ]
    )
    assert results[:2] == [-3, b"-3"]
    assert isinstance(results[2], co.ValueTooLarge)
    assert results[3:] == [None, 2, b"2", None]
    backend.close()


# -- fork ---------------------------------------------------------------------------


def _child_work(backend: MemcachedBackend, shared: dict[bytes, bytes]) -> str:
    """What the forked child does with the parent's backend; ``"ok"`` or what went wrong."""
    try:
        for i in range(200):
            key = b"child-%d" % i
            backend.set(key, b"c%d" % i)
            if backend.get(key) != b"c%d" % i:
                return f"child read a wrong value for {key!r}"
            if backend.get_many(*shared) != list(shared.values()):
                return "child read wrong shared values"
    except BaseException as err:  # the child must report, never die silently
        return f"child raised {err!r}"
    return "ok"


@pytest.mark.timeout(60)
@pytest.mark.parametrize("servers", [1, 2])
def test_a_backend_used_across_fork_works_in_both_processes(
    server_factory: ServerFactory, servers: int
) -> None:
    nodes = [server_factory.memcached() for _ in range(servers)]
    backend = MemcachedBackend(servers=[node.address for node in nodes], timeout=2)
    shared = {b"shared-%d" % i: b"s%d" % i for i in range(30)}
    backend.set_many(shared)
    assert backend.get_many(*shared) == list(shared.values())  # sockets open before the fork
    # Another thread keeps using the backend, so its lock is often held at the fork.
    stop = threading.Event()
    thread_errors: list[BaseException] = []

    def busy() -> None:
        while not stop.is_set():
            try:
                assert backend.get_many(*shared) == list(shared.values())
            except BaseException as err:
                thread_errors.append(err)
                return

    thread = threading.Thread(target=busy)
    thread.start()
    started = time.monotonic()
    child = Forked(lambda: _child_work(backend, shared).encode())
    try:
        for i in range(200):
            key = b"parent-%d" % i
            backend.set(key, b"p%d" % i)
            assert backend.get(key) == b"p%d" % i
        report = child.report().decode()
    finally:
        stop.set()
        thread.join(10)
        child.reap()
    assert report == "ok"
    assert not thread_errors
    assert time.monotonic() - started < 20
    assert backend.get_many(b"child-199", b"parent-199") == [b"c199", b"p199"]
    backend.close()


def test_the_child_never_touches_the_parents_sockets(server_factory: ServerFactory) -> None:
    server = server_factory.memcached()
    backend = MemcachedBackend(servers=[server.address], timeout=2)
    backend.set(b"k", b"v")
    raw = Client(server.address, timeout=2)

    def connections() -> object:
        return raw.stats()[b"total_connections"]

    before = connections()
    assert isinstance(before, int)
    child = Forked(lambda: repr(backend.get(b"k")).encode())
    assert child.report() == b"b'v'"
    # The child opened a connection of its own; the parent's still works.
    assert connections() == before + 1
    assert backend.get(b"k") == b"v"
    raw.close()
    backend.close()
