"""Throwaway Redis, Redis Cluster and memcached servers for the test suite.

A pytest plugin (loaded by ``tests/conftest.py``). Every server listens on a
free loopback port (never 6379 or 11211), keeps its files in its own temporary
directory, persists nothing, and is stopped by PID at the end of its fixture;
its directory is removed. A missing server binary fails the run loudly with the
command that installs it, because a silently skipped backend is an untested one.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, TypeVar

import pytest
import redis
from pymemcache.client.base import Client as MemcacheClient

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator, Sequence
    from pathlib import Path

_S = TypeVar("_S")

__all__ = [
    "MemcachedServer",
    "RedisCluster",
    "RedisServer",
    "ServerFactory",
    "free_port",
    "free_ports",
]

_HOST = "127.0.0.1"
_FORBIDDEN_PORTS = frozenset({6379, 11211})
_POLL_INTERVAL = 0.02
_START_TIMEOUT = 10.0
_INSTALL_HINT = {
    "redis-server": "apt-get install -y redis-server",
    "redis-cli": "apt-get install -y redis-tools",
    "memcached": "apt-get install -y memcached",
}


def _binary(name: str) -> str:
    """Return the path of a server binary, failing the session loudly when it is missing."""
    path = shutil.which(name)
    if path is None:
        pytest.fail(
            f"{name} is not installed; the Redis/memcached tests need it. "
            f"Install it with `{_INSTALL_HINT[name]}` (or run `make servers`).",
            pytrace=False,
        )
    return path


def free_ports(count: int) -> list[int]:
    """Return ``count`` distinct loopback TCP ports that were free a moment ago.

    All sockets stay bound until every port is chosen, so the ports differ.
    """
    sockets: list[socket.socket] = []
    ports: list[int] = []
    try:
        while len(ports) < count:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sockets.append(sock)
            sock.bind((_HOST, 0))
            port: int = sock.getsockname()[1]
            if port not in _FORBIDDEN_PORTS:
                ports.append(port)
    finally:
        for sock in sockets:
            sock.close()
    return ports


def free_port() -> int:
    """Return a loopback TCP port that was free a moment ago (bind to port 0)."""
    return free_ports(1)[0]


def _retrying(start: Callable[[], _S], attempts: int = 3) -> _S:
    """Start servers again when a port was taken between choosing and binding it."""
    for attempt in range(1, attempts + 1):
        try:
            return start()
        except pytest.fail.Exception:
            if attempt == attempts:
                raise
    raise AssertionError("unreachable")


def _port_answers(port: int, probe: bytes, expect: bytes, contains: bytes = b"") -> bool:
    """Whether the server on ``port`` answers ``probe`` with ``expect...contains...``."""
    try:
        with socket.create_connection((_HOST, port), timeout=0.5) as sock:
            sock.sendall(probe)
            reply = sock.recv(256)
    except OSError:
        return False
    return reply.startswith(expect) and contains in reply


@dataclass
class _Process:
    """A server process we started, with its private directory."""

    name: str
    port: int
    directory: Path
    process: subprocess.Popen[bytes]

    @property
    def pid(self) -> int:
        return self.process.pid

    def log_tail(self) -> str:
        log = self.directory / "server.log"
        try:
            return log.read_text(errors="replace")[-2000:]
        except OSError:
            return "<no log>"

    def stop(self) -> None:
        """Stop by PID (terminate, wait, kill), resume it first if it was SIGSTOPped."""
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.process.pid, signal.SIGCONT)
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)
        shutil.rmtree(self.directory, ignore_errors=True)


def _spawn(name: str, args: Sequence[str], port: int, directory: Path) -> _Process:
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / "server.log", "wb") as log:
        process = subprocess.Popen(
            [_binary(name), *args],
            cwd=directory,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    return _Process(name, port, directory, process)


def _wait_until(
    ready: Callable[[], bool], processes: Sequence[_Process], what: str, timeout: float
) -> None:
    """Poll ``ready`` every 20 ms until true; fail with the server logs on timeout or exit."""
    deadline = time.monotonic() + timeout
    while not ready():
        dead = [p for p in processes if p.process.poll() is not None]
        if dead or time.monotonic() > deadline:
            logs = "\n".join(f"--- {p.name} :{p.port}\n{p.log_tail()}" for p in processes)
            for p in processes:
                p.stop()
            reason = "exited" if dead else f"not ready after {timeout:.0f} s"
            pytest.fail(f"{what} {reason}:\n{logs}", pytrace=False)
        time.sleep(_POLL_INTERVAL)


def _redis_args(port: int, directory: Path, extra: Sequence[str] = ()) -> list[str]:
    return [
        "--port",
        str(port),
        "--bind",
        _HOST,
        "--dir",
        str(directory),
        "--save",
        "",
        "--appendonly",
        "no",
        "--daemonize",
        "no",
        "--enable-debug-command",
        "local",
        *extra,
    ]


def _memcached_args(port: int) -> list[str]:
    # One worker thread: memcached spreads connections over its threads, and on a
    # small VM the thread a connection lands on swings its latency 5x, which would
    # make the benchmark compare thread placement instead of code.
    args = ["-l", _HOST, "-p", str(port), "-U", "0", "-m", "64", "-t", "1"]
    if os.geteuid() == 0:
        args += ["-u", "root"]  # memcached refuses to run as root without it
    return args


def wait_until_stopped(pid: int) -> None:
    """Wait until every thread of ``pid`` is stopped (after ``SIGSTOP``, which takes
    effect asynchronously: a worker thread may still answer a request meanwhile)."""
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        states = set()
        for task in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(OSError), open(f"/proc/{pid}/task/{task}/stat") as stat:
                states.add(stat.read().rpartition(")")[2].split()[0])
        if states <= {"T", "t"}:
            return
        time.sleep(0.005)
    raise AssertionError(f"process {pid} did not stop")


@contextlib.contextmanager
def frozen(pid: int) -> Iterator[None]:
    """The process is SIGSTOPped inside the block: it accepts connections but never answers."""
    os.kill(pid, signal.SIGSTOP)
    try:
        wait_until_stopped(pid)
        yield
    finally:
        os.kill(pid, signal.SIGCONT)


@dataclass
class RedisServer:
    """One standalone redis-server we started."""

    host: str
    port: int
    _proc: _Process = field(repr=False)

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}/0"

    @property
    def pid(self) -> int:
        return self._proc.pid

    def client(self) -> redis.Redis:
        """A new client with short timeouts, for test set-up and assertions."""
        return redis.Redis(self.host, self.port, socket_timeout=5, socket_connect_timeout=2)

    def flush(self) -> None:
        """Empty this server (ours, so flushing it is safe)."""
        with self.client() as client:
            client.flushall()

    def stop(self) -> None:
        self._proc.stop()


def _slot_ranges(node: redis.Redis) -> list[tuple[int, int, int]]:
    """``CLUSTER SLOTS`` as ``node`` sees it: first slot, last slot, the master's port."""
    reply = node.execute_command("CLUSTER SLOTS")  # type: ignore[no-untyped-call]  # redis-py leaves it untyped
    return [(int(start), int(end), int(master[1])) for start, end, master, *_ in reply]


@dataclass
class RedisCluster:
    """A three-master Redis Cluster (no replicas) we started."""

    host: str
    ports: list[int]
    _procs: list[_Process] = field(repr=False)

    def client(self) -> redis.RedisCluster:
        """A new ``redis.RedisCluster`` client for this cluster."""
        return redis.RedisCluster(
            host=self.host, port=self.ports[0], socket_timeout=5, socket_connect_timeout=2
        )

    def node_client(self, port: int) -> redis.Redis:
        """A plain client for one master, to inspect what landed where."""
        return redis.Redis(self.host, port, socket_timeout=5, socket_connect_timeout=2)

    def flush(self) -> None:
        for port in self.ports:
            with self.node_client(port) as client:
                client.flushall()

    def owners(self) -> dict[int, int]:
        """The port of the master serving each slot, as node ``ports[0]`` sees the map."""
        with self.node_client(self.ports[0]) as node:
            ranges = _slot_ranges(node)
        return {slot: owner for start, end, owner in ranges for slot in range(start, end + 1)}

    def retire(self, port: int, into: int) -> None:
        """Hand every slot of master ``port`` (its keys deleted) to master ``into``.

        The node keeps running, an empty master, but the slot map no longer
        names it: what a client sees when a master is scaled in. Returns once
        every node's map agrees.
        """
        slots = [slot for slot, owner in self.owners().items() if owner == port]
        with self.node_client(port) as leaving:
            # Else a master left without slots makes itself a replica of their new owner.
            leaving.config_set("cluster-allow-replica-migration", "no")
            leaving.flushall()
        with self.node_client(into) as taking:
            target = taking.execute_command("CLUSTER MYID")
        for each in [into, port, *(p for p in self.ports if p not in (into, port))]:
            with self.node_client(each) as node:
                pipe = node.pipeline(transaction=False)
                for slot in slots:
                    pipe.execute_command("CLUSTER SETSLOT", slot, "NODE", target)
                pipe.execute()

        def agreed() -> bool:
            for each in self.ports:
                with self.node_client(each) as node:
                    if any(owner == port for _, _, owner in _slot_ranges(node)):
                        return False
            return True

        _wait_until(agreed, self._procs, "redis cluster slot hand-over", _START_TIMEOUT)

    def stop(self) -> None:
        for proc in self._procs:
            proc.stop()


@dataclass
class MemcachedServer:
    """One memcached we started."""

    host: str
    port: int
    _proc: _Process = field(repr=False)

    @property
    def address(self) -> tuple[str, int]:
        return (self.host, self.port)

    @property
    def pid(self) -> int:
        return self._proc.pid

    def client(self) -> MemcacheClient:
        """A raw pymemcache client, for test set-up and assertions."""
        return MemcacheClient(self.address, connect_timeout=2, timeout=5)

    def flush(self) -> None:
        client = self.client()
        try:
            client.flush_all(noreply=False)
        finally:
            client.close()

    def stop(self) -> None:
        self._proc.stop()


def _redis_ready(port: int) -> Callable[[], bool]:
    return lambda: _port_answers(port, b"PING\r\n", b"+PONG")


def _memcached_ready(port: int) -> Callable[[], bool]:
    return lambda: _port_answers(port, b"version\r\n", b"VERSION")


def start_redis(directory: Path, extra: Sequence[str] = ()) -> RedisServer:
    """Start a standalone redis-server in ``directory`` and wait until it answers."""

    def start() -> RedisServer:
        port = free_port()
        proc = _spawn("redis-server", _redis_args(port, directory, extra), port, directory)
        _wait_until(_redis_ready(port), [proc], "redis-server", _START_TIMEOUT)
        return RedisServer(_HOST, port, proc)

    return _retrying(start)


def start_memcached_many(directories: Sequence[Path]) -> list[MemcachedServer]:
    """Start one memcached per directory, in parallel, and wait until all answer."""

    def start() -> list[MemcachedServer]:
        ports = free_ports(len(directories))
        procs = [
            _spawn("memcached", _memcached_args(port), port, directory)
            for port, directory in zip(ports, directories, strict=True)
        ]
        for proc in procs:
            _wait_until(_memcached_ready(proc.port), procs, "memcached", _START_TIMEOUT)
        return [MemcachedServer(_HOST, proc.port, proc) for proc in procs]

    return _retrying(start)


def start_redis_cluster(directories: Sequence[Path]) -> RedisCluster:
    """Start one master per directory, join them into a cluster, wait for ``cluster_state:ok``."""
    return _retrying(lambda: _start_redis_cluster(directories))


def _start_redis_cluster(directories: Sequence[Path]) -> RedisCluster:
    ports = free_ports(2 * len(directories))
    procs = []
    for directory, port, bus_port in zip(directories, ports[::2], ports[1::2], strict=True):
        extra = ["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf"]
        # An explicit bus port: the default (port + 10000) may be taken or above 65535.
        extra += ["--cluster-port", str(bus_port)]
        args = _redis_args(port, directory, extra)
        procs.append(_spawn("redis-server", args, port, directory))
    for proc in procs:
        _wait_until(_redis_ready(proc.port), procs, "redis-server (cluster node)", _START_TIMEOUT)
    nodes = [f"{_HOST}:{proc.port}" for proc in procs]
    create = ["--cluster", "create", *nodes, "--cluster-replicas", "0", "--cluster-yes"]
    created = subprocess.run(
        [_binary("redis-cli"), *create], capture_output=True, timeout=30, check=False
    )
    if created.returncode != 0:
        for proc in procs:
            proc.stop()
        pytest.fail(
            f"redis-cli --cluster create failed:\n{created.stdout.decode(errors='replace')}"
            f"{created.stderr.decode(errors='replace')}",
            pytrace=False,
        )

    def all_ok() -> bool:
        return all(
            _port_answers(proc.port, b"CLUSTER INFO\r\n", b"", contains=b"cluster_state:ok")
            for proc in procs
        )

    _wait_until(all_ok, procs, "redis cluster", _START_TIMEOUT * 2)
    return RedisCluster(_HOST, [proc.port for proc in procs], procs)


class ServerFactory:
    """Starts extra throwaway servers for destructive tests; stops them at teardown."""

    def __init__(self, root: Path) -> None:
        self._root = root
        self._started: list[RedisServer | MemcachedServer] = []

    def redis(self, *extra: str) -> RedisServer:
        server = start_redis(self._root / f"redis-{len(self._started)}", extra)
        self._started.append(server)
        return server

    def memcached(self) -> MemcachedServer:
        (server,) = start_memcached_many([self._root / f"memcached-{len(self._started)}"])
        self._started.append(server)
        return server

    def stop_all(self) -> None:
        for server in self._started:
            server.stop()
        self._started.clear()


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A standalone redis-server shared by the session; tests flush it before use."""
    server = start_redis(tmp_path_factory.mktemp("redis"))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisCluster]:
    """A three-master Redis Cluster shared by the session."""
    root = tmp_path_factory.mktemp("redis-cluster")
    cluster = start_redis_cluster([root / f"node-{i}" for i in range(3)])
    try:
        yield cluster
    finally:
        cluster.stop()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def memcached_servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[MemcachedServer]]:
    """Three memcached nodes: index 0 is used alone, 1 and 2 as a two-node pool."""
    root = tmp_path_factory.mktemp("memcached")
    servers = start_memcached_many([root / f"node-{i}" for i in range(3)])
    try:
        yield servers
    finally:
        for server in servers:
            server.stop()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def server_factory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerFactory]:
    """Start extra servers a test may kill, SIGSTOP or slow down; stopped after the test."""
    root = tmp_path_factory.mktemp("throwaway")
    factory = ServerFactory(root)
    try:
        yield factory
    finally:
        factory.stop_all()
        shutil.rmtree(root, ignore_errors=True)
