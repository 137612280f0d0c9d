from collections.abc import Iterable, Sequence
from ssl import SSLContext
from types import ModuleType
from typing import Protocol, type_check_only

from pymemcache.client.base import Client, KeepaliveOpts, Key, PooledClient, ServerSpec
from pymemcache.serde import Serde

@type_check_only
class _Hasher(Protocol):
    """What ``hasher=`` must provide (RendezvousHash by default; built with no argument)."""

    def __init__(self) -> None: ...
    def add_node(self, node: str) -> None: ...
    def get_node(self, key: Key) -> str | None: ...

class HashClient:
    clients: dict[str, Client | PooledClient]
    hasher: _Hasher
    default_kwargs: dict[str, object]
    ignore_exc: bool
    retry_attempts: int
    retry_timeout: float
    dead_timeout: float
    def __init__(
        self,
        servers: Sequence[ServerSpec],
        hasher: type = ...,
        serde: Serde | None = None,
        serializer: None = None,
        deserializer: None = None,
        connect_timeout: float | None = None,
        timeout: float | None = None,
        no_delay: bool = False,
        socket_module: ModuleType = ...,
        socket_keepalive: KeepaliveOpts | None = None,
        key_prefix: bytes = b"",
        max_pool_size: int | None = None,
        pool_idle_timeout: int = 0,
        lock_generator: object = None,
        retry_attempts: int = 2,
        retry_timeout: float = 1,
        dead_timeout: float = 60,
        use_pooling: bool = False,
        ignore_exc: bool = False,
        allow_unicode_keys: bool = False,
        default_noreply: bool = True,
        encoding: str = "ascii",
        tls_context: SSLContext | None = None,
    ) -> None: ...
    def close(self) -> None: ...
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
    def get_many(self, keys: Iterable[Key], gets: bool = False) -> dict[Key, object]: ...
    def gets(self, key: Key) -> tuple[object, bytes | None]: ...
    def gets_many(self, keys: Iterable[Key]) -> dict[Key, tuple[object, bytes]]: ...
    def delete(self, key: Key, noreply: bool | None = None) -> bool: ...
    def delete_many(self, keys: Iterable[Key], noreply: bool | None = None) -> bool: ...
    def incr(self, key: Key, value: int, noreply: bool | None = False) -> int | None: ...
    def decr(self, key: Key, value: int, noreply: bool | None = False) -> int | None: ...
    def touch(self, key: Key, expire: int = 0, noreply: bool | None = None) -> bool: ...
    def flush_all(self, delay: int = 0, noreply: bool | None = None) -> None: ...
    def quit(self) -> None: ...
