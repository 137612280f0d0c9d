"""A small TCP proxy for fault tests: lose a reply, or answer nothing at all.

Put it between a client and a throwaway server::

    with Proxy(server.host, server.port) as proxy:
        backend = RedisBackend(url=f"redis://127.0.0.1:{proxy.port}/0")
        proxy.drop_next_reply(match=b"INCRBY")
        backend.incr(b"n")      # the server counts it; the client never hears back

Modes, switchable at any time from the test thread:

* forward (the default): bytes pass both ways unchanged;
* :meth:`Proxy.drop_next_reply`: the next request containing ``match`` is
  forwarded, and when the server's reply arrives the proxy discards it and
  closes the client's connection. The server *ran* the command; the client only
  sees a dropped connection, exactly the case where resending double-applies;
* :meth:`Proxy.blackhole`: connections are accepted (and existing ones kept
  open), requests are read and discarded, nothing is ever answered, like a host
  that went silent. :meth:`Proxy.forward` ends it and closes those connections;
* :meth:`Proxy.disconnect_all`: close every proxied connection now (a restart
  or a network blip, seen from the client).

One thread runs a ``selectors`` loop; the proxy listens on a free loopback port
(never 6379 or 11211) and leaves no thread or socket behind after ``with``.
"""

from __future__ import annotations

import contextlib
import selectors
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from types import TracebackType

__all__ = ["Proxy"]

_HOST = "127.0.0.1"
_FORBIDDEN_PORTS = frozenset({6379, 11211})
_CHUNK = 65536


@dataclass(eq=False)
class _Pair:
    """One proxied connection: the client's socket and the server's."""

    client: socket.socket
    upstream: socket.socket | None
    doomed: bool = False  # drop the next reply, then close
    silent: bool = False  # blackholed: read and discard, never answer


@dataclass
class _Action:
    run: Callable[[], None]
    done: threading.Event = field(default_factory=threading.Event)


class Proxy:
    """A TCP proxy on a free loopback port in front of ``target_host:target_port``.

    Use it as a context manager; connect clients to :attr:`port`.

    Attributes:
        port: the loopback port the proxy listens on.
        dropped: how many server replies were discarded by :meth:`drop_next_reply`.
        accepted: how many client connections were accepted.
    """

    def __init__(self, target_host: str, target_port: int) -> None:
        self._target = (target_host, target_port)
        self._listener = self._listen()
        self.port: int = self._listener.getsockname()[1]
        self.dropped = 0
        self.accepted = 0
        self._selector = selectors.DefaultSelector()
        self._wake_recv, self._wake_send = socket.socketpair()
        self._lock = threading.Lock()
        self._actions: list[_Action] = []
        self._pairs: list[_Pair] = []
        self._silent = False
        self._drop_match = b""
        self._drop_left = 0
        self._running = True
        self._thread = threading.Thread(target=self._loop, name=f"proxy:{self.port}", daemon=True)

    @staticmethod
    def _listen() -> socket.socket:
        for _ in range(10):
            listener = socket.create_server((_HOST, 0))
            if listener.getsockname()[1] not in _FORBIDDEN_PORTS:
                return listener
            listener.close()
        raise RuntimeError("no free loopback port for the proxy")

    # -- context manager -------------------------------------------------------

    def __enter__(self) -> Proxy:
        self._listener.setblocking(False)
        self._selector.register(self._listener, selectors.EVENT_READ, "listen")
        self._selector.register(self._wake_recv, selectors.EVENT_READ, "wake")
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Stop the loop and close every socket (idempotent)."""
        if not self._running:
            return
        self._running = False
        if self._thread.is_alive():
            self._wake()
            self._thread.join(timeout=5)
        for pair in list(self._pairs):
            self._close_pair(pair)
        self._selector.close()
        for sock in (self._listener, self._wake_recv, self._wake_send):
            sock.close()

    # -- modes -----------------------------------------------------------------

    def drop_next_reply(self, match: bytes = b"", count: int = 1) -> None:
        """Lose the server's reply to the next ``count`` requests containing ``match``.

        Each such request reaches the server; its reply is discarded and that
        client connection closed as soon as the reply arrives.
        """
        with self._lock:
            self._drop_match = match
            self._drop_left = count

    def blackhole(self) -> None:
        """Accept connections but never answer; existing connections go silent too."""

        def silence() -> None:
            self._silent = True
            for pair in self._pairs:
                pair.silent = True

        self._in_loop(silence)

    def forward(self) -> None:
        """Forward again; connections that were silenced are closed (their stream is lost)."""

        def restore() -> None:
            self._silent = False
            for pair in [p for p in self._pairs if p.silent]:
                self._close_pair(pair)

        self._in_loop(restore)

    def disconnect_all(self) -> None:
        """Close every proxied connection now; new connections are still accepted."""

        def close_all() -> None:
            for pair in list(self._pairs):
                self._close_pair(pair)

        self._in_loop(close_all)

    # -- the loop ----------------------------------------------------------------

    def _wake(self) -> None:
        with contextlib.suppress(OSError):
            self._wake_send.send(b"x")

    def _in_loop(self, run: Callable[[], None]) -> None:
        """Run ``run`` on the loop thread (sockets are only touched there) and wait for it."""
        action = _Action(run)
        with self._lock:
            self._actions.append(action)
        self._wake()
        if not action.done.wait(timeout=5):
            raise RuntimeError("proxy loop did not answer within 5 s")

    def _loop(self) -> None:
        while self._running:
            for key, _ in self._selector.select(timeout=0.5):
                role = key.data
                if role == "listen":
                    self._accept()
                elif role == "wake":
                    self._run_actions()
                else:
                    side, pair = role
                    self._pump(pair, from_client=side == "client")

    def _run_actions(self) -> None:
        with contextlib.suppress(OSError):
            self._wake_recv.recv(_CHUNK)
        with self._lock:
            actions, self._actions = self._actions, []
        for action in actions:
            try:
                action.run()
            finally:
                action.done.set()

    def _accept(self) -> None:
        try:
            client, _ = self._listener.accept()
        except OSError:
            return
        self.accepted += 1
        upstream = None
        if not self._silent:
            try:
                upstream = socket.create_connection(self._target, timeout=2)
            except OSError:
                client.close()  # the server is down: so is the proxy, for this client
                return
        pair = _Pair(client, upstream, silent=self._silent)
        self._pairs.append(pair)
        self._selector.register(client, selectors.EVENT_READ, ("client", pair))
        if upstream is not None:
            self._selector.register(upstream, selectors.EVENT_READ, ("upstream", pair))

    def _pump(self, pair: _Pair, *, from_client: bool) -> None:
        source = pair.client if from_client else pair.upstream
        assert source is not None
        try:
            data = source.recv(_CHUNK)
        except OSError:
            data = b""
        if not data:
            self._close_pair(pair)
            return
        if pair.silent:
            return  # blackholed: read, never answer
        try:
            if from_client:
                with self._lock:
                    if self._drop_left and self._drop_match in data:
                        self._drop_left -= 1
                        pair.doomed = True
                assert pair.upstream is not None
                pair.upstream.sendall(data)
            elif pair.doomed:
                self.dropped += 1  # the server answered: lose the answer and the connection
                self._close_pair(pair)
            else:
                pair.client.sendall(data)
        except OSError:
            self._close_pair(pair)

    def _close_pair(self, pair: _Pair) -> None:
        if pair not in self._pairs:
            return
        self._pairs.remove(pair)
        for sock in (pair.client, pair.upstream):
            if sock is None:
                continue
            with contextlib.suppress(KeyError, ValueError):
                self._selector.unregister(sock)
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()
