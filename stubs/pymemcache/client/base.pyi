import socket
from collections.abc import Iterable
from ssl import SSLContext
from types import ModuleType
from typing import TypeAlias

from pymemcache.serde import Serde

ServerSpec: TypeAlias = tuple[str, int] | str
Key: TypeAlias = bytes | str

class KeepaliveOpts:
    idle: int
    intvl: int
    cnt: int
    def __init__(self, idle: int = 1, intvl: int = 1, cnt: int = 5) -> None: ...

class Client:
    server: ServerSpec
    serde: Serde
    ignore_exc: bool
    sock: socket.socket | None
    connect_timeout: float | None
    timeout: float | None
    no_delay: bool
    key_prefix: bytes
    def __init__(
        self,
        server: ServerSpec,
        serde: Serde | None = None,
        serializer: None = None,
        deserializer: None = None,
        connect_timeout: float | None = None,
        timeout: float | None = None,
        no_delay: bool = False,
        ignore_exc: bool = False,
        socket_module: ModuleType = ...,
        socket_keepalive: KeepaliveOpts | None = None,
        key_prefix: bytes = b"",
        default_noreply: bool = True,
        allow_unicode_keys: bool = False,
        encoding: str = "ascii",
        tls_context: SSLContext | None = None,
    ) -> None: ...
    def _connect(self) -> None: ...
    def close(self) -> None: ...
    def stats(self, *args: str) -> dict[bytes, int | float | bool | bytes]: ...
    def set(
        self,
        key: Key,
        value: object,
        expire: int = 0,
        noreply: bool | None = None,
        flags: int | None = None,
    ) -> bool | None: ...
    def set_many(
        self,
        values: dict[Key, object],
        expire: int = 0,
        noreply: bool | None = None,
        flags: int | None = None,
    ) -> list[Key]: ...
    def add(
        self,
        key: Key,
        value: object,
        expire: int = 0,
        noreply: bool | None = None,
        flags: int | None = None,
    ) -> bool: ...
    def replace(
        self,
        key: Key,
        value: object,
        expire: int = 0,
        noreply: bool | None = None,
        flags: int | None = None,
    ) -> bool: ...
    def cas(
        self,
        key: Key,
        value: object,
        cas: int | str | bytes,
        expire: int = 0,
        noreply: bool | None = False,
        flags: int | None = None,
    ) -> bool | None: ...
    def get(self, key: Key, default: object | None = None) -> object: ...
    def get_many(self, keys: Iterable[Key]) -> dict[Key, object]: ...
    def gets(
        self, key: Key, default: object = None, cas_default: object = None
    ) -> tuple[object, bytes | None]: ...
    def gets_many(self, keys: Iterable[Key]) -> dict[Key, tuple[object, bytes]]: ...
    def delete(self, key: Key, noreply: bool | None = None) -> bool: ...
    def delete_many(self, keys: Iterable[Key], noreply: bool | None = None) -> bool: ...
    def incr(self, key: Key, value: int, noreply: bool | None = False) -> int | None: ...
    def decr(self, key: Key, value: int, noreply: bool | None = False) -> int | None: ...
    def touch(self, key: Key, expire: int = 0, noreply: bool | None = None) -> bool: ...
    def flush_all(self, delay: int = 0, noreply: bool | None = None) -> bool: ...
    def version(self) -> bytes: ...
    def quit(self) -> None: ...

class PooledClient:
    server: ServerSpec
    ignore_exc: bool
    def __init__(
        self,
        server: ServerSpec,
        serde: Serde | None = None,
        serializer: None = None,
        deserializer: None = None,
        connect_timeout: float | None = None,
        timeout: float | None = None,
        no_delay: bool = False,
        ignore_exc: bool = False,
        socket_module: ModuleType = ...,
        socket_keepalive: KeepaliveOpts | None = None,
        key_prefix: bytes = b"",
        max_pool_size: int | None = None,
        pool_idle_timeout: int = 0,
        lock_generator: object = None,
        default_noreply: bool = True,
        allow_unicode_keys: bool = False,
        encoding: str = "ascii",
        tls_context: SSLContext | None = None,
    ) -> None: ...
    def close(self) -> None: ...
    def _create_client(self) -> Client: ...
