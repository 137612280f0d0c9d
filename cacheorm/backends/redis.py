"""The Redis backend, on redis-py: a standalone server or a Redis Cluster.

redis-py is imported only when a :class:`RedisBackend` is built, so
``import cacheorm`` works without it. Compare-and-set and compare-and-delete
are Lua scripts on a single key, so they work on a cluster too; the CAS token
is the SHA-1 of the value read by ``gets`` (Lua's ``redis.sha1hex``).
"""

from __future__ import annotations

import hashlib
import logging
from typing import TYPE_CHECKING, Any, Final

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
from cacheorm.errors import BackendError, CacheORMError, ValidationError, ValueTooLarge

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping, Sequence

    import redis
    from redis.commands.core import Script

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

_TOO_LARGE_MARKERS: Final = ("exceeds maximum allowed size", "invalid bulk length")


_MAX_EXPIRE: Final = 10**15
"""Redis refuses an ``EX`` near 2**63 milliseconds; a TTL this long means "never" anyway."""


def _seconds(ttl: object, default: int) -> int:
    """:func:`resolve_ttl`, with TTLs beyond what Redis can express stored without expiry."""
    seconds = resolve_ttl(ttl, default)
    return 0 if seconds > _MAX_EXPIRE else seconds


def _token(value: bytes) -> str:
    return hashlib.sha1(value).hexdigest()


class RedisBackend:
    """Store bytes in Redis, standalone or cluster.

    Built from ``url``, the client gets explicit limits instead of redis-py
    8.1's defaults (no socket timeout, three retries with up to 10 s of
    jittered backoff, retrying timeouts): ``socket_timeout`` and
    ``socket_connect_timeout`` seconds, and ``retries`` retries with an
    exponential backoff of 10 ms doubling up to 100 ms, *on connection errors
    only*. A timed-out command is never resent, because the server may have
    run it: an ``INCR`` would count twice.

    Multi-key calls never raise ``CROSSSLOT`` on a cluster: ``get_many`` uses
    ``MGET`` per slot (``mget_nonatomic``), ``set_many`` and ``batch`` a
    non-transactional pipeline, ``delete_many`` one ``DEL`` per slot.

    Args:
        client: a ``redis.Redis`` or ``redis.RedisCluster`` created with
            ``decode_responses=False``. :meth:`close` leaves it open: its owner
            closes it.
        url: a ``redis://`` URL, used when ``client`` is not given.
        default_ttl: seconds used when a call passes ``ttl=None``; ``0`` = never.
        socket_timeout: seconds to wait for a reply (``url`` only).
        socket_connect_timeout: seconds to wait for a connection (``url`` only).
        retries: how many times a command is retried after a connection
            error (``url`` only).
        max_value_size: the largest value accepted, in bytes; set it to the
            server's ``proto-max-bulk-len`` if that was lowered (a server
            refusing a value closes the connection, seen as ``BackendError``).

    Raises:
        ValidationError: neither or both of ``client`` and ``url``, a client
            that decodes responses, or an illegal ``default_ttl``.
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
        from redis.backoff import ExponentialBackoff
        from redis.retry import Retry

        self.default_ttl = _seconds(default_ttl, 0)
        self._max_value_size = max_value_size
        if (client is None) == (url is None):
            raise ValidationError("RedisBackend needs exactly one of client= or url=")
        self._owns_client = client is None
        if client is None:
            assert url is not None
            retry = Retry(
                ExponentialBackoff(cap=0.1, base=0.01),
                retries,
                supported_errors=(redis_module.ConnectionError,),
            )
            try:
                client = redis_module.Redis.from_url(
                    url,
                    socket_timeout=socket_timeout,
                    socket_connect_timeout=socket_connect_timeout,
                    retry=retry,
                    retry_on_timeout=False,
                )
            except ValueError as err:
                raise ValidationError(
                    f"not a Redis URL: {url!r}; use redis://host:port/db (or rediss://, unix://)"
                ) from err
        if client.get_connection_kwargs().get("decode_responses"):
            raise ValidationError(
                "RedisBackend stores bytes: create the client with decode_responses=False"
            )
        self._client: redis.Redis | redis.RedisCluster = client
        # Bound once to skip an attribute lookup per call. redis-py leaves execute_command
        # untyped; each call site assigns the reply to a typed local.
        self._exec: Callable[..., Any] = client.execute_command
        self._cluster = isinstance(client, redis_module.RedisCluster)
        self._errors: tuple[type[BaseException], ...] = (redis_module.RedisError, OSError)
        self._cas_script: Script = client.register_script(_CAS_LUA)
        self._delete_if_script: Script = client.register_script(_DELETE_IF_LUA)
        self._persist_script: Script = client.register_script(_PERSIST_LUA)

    def _translate(self, what: str, err: BaseException) -> CacheORMError:
        text = str(err)
        if any(marker in text for marker in _TOO_LARGE_MARKERS):
            return ValueTooLarge(
                f"redis {what}: value larger than the server accepts "
                "(proto-max-bulk-len, 512 MB by default); store less"
            )
        if "not an integer" in text or "increment or decrement would overflow" in text:
            return ValidationError(
                f"redis {what}: the stored value is not a 64-bit integer counter, or the "
                f"result would overflow ({text})"
            )
        logger.debug("redis %s failed: %r", what, err)
        return BackendError(
            f"redis {what} failed: {err!r}; check that the server is up, reachable "
            "and answering within the socket timeout"
        )

    def _too_large(self, key: bytes) -> ValueTooLarge:
        """Refuse a value over the limit, and make sure the key serves no older value."""
        self.delete(key)
        return ValueTooLarge(
            f"value larger than max_value_size={self._max_value_size} bytes "
            "(Redis refuses strings over proto-max-bulk-len, 512 MB by default); store less"
        )

    # -- the Backend protocol -----------------------------------------------

    def get(self, key: bytes) -> bytes | None:
        """Return the value, or ``None`` when the key is absent or expired."""
        try:
            value: bytes | None = self._exec("GET", key)
        except self._errors as err:
            raise self._translate("GET", err) from err
        return value

    def set(self, key: bytes, value: bytes, ttl: TTL = None) -> None:
        """Store ``value`` unconditionally (``SET``, with ``EX`` unless the TTL is 0)."""
        seconds = self.default_ttl if ttl is None else _seconds(ttl, 0)
        if len(value) > self._max_value_size:
            raise self._too_large(key)
        try:
            if seconds:
                self._exec("SET", key, value, "EX", seconds)
            else:
                self._exec("SET", key, value)
        except self._errors as err:
            raise self._translate("SET", err) from err

    def _set_if(self, condition: str, key: bytes, value: bytes, ttl: TTL) -> bool:
        seconds = _seconds(ttl, self.default_ttl)
        if len(value) > self._max_value_size:
            raise self._too_large(key)
        args: tuple[object, ...] = ("EX", seconds) if seconds else ()
        try:
            return bool(self._exec("SET", key, value, condition, *args))
        except self._errors as err:
            raise self._translate(f"SET {condition}", err) from err

    def add(self, key: bytes, value: bytes, ttl: TTL = None) -> bool:
        """Store only if absent, in one ``SET NX [EX]``. Return whether it was stored."""
        return self._set_if("NX", key, value, ttl)

    def replace(self, key: bytes, value: bytes, ttl: TTL = None) -> bool:
        """Store only if present, in one ``SET XX [EX]``. Return whether it was stored."""
        return self._set_if("XX", key, value, ttl)

    def delete(self, key: bytes) -> bool:
        """Remove the key. Return whether it existed."""
        try:
            return bool(self._exec("DEL", key))
        except self._errors as err:
            raise self._translate("DEL", err) from err

    def has(self, key: bytes) -> bool:
        """Return whether the key is present."""
        try:
            return bool(self._exec("EXISTS", key))
        except self._errors as err:
            raise self._translate("EXISTS", err) from err

    def get_many(self, *keys: bytes) -> list[bytes | None]:
        """Return the values in key order: one ``MGET`` (per slot on a cluster)."""
        if not keys:
            return []
        try:
            if self._cluster:
                found: list[bytes | None] = self._client.mget_nonatomic(list(keys))  # type: ignore[union-attr]  # cluster only
            else:
                found = self._exec("MGET", *keys)
        except self._errors as err:
            raise self._translate("MGET", err) from err
        return found

    def get_with_ttl(self, key: bytes) -> tuple[bytes, float] | None:
        """Return the value and its remaining seconds (``0.0`` = never): ``GET`` + ``PTTL``."""
        return self.get_many_with_ttl(key)[0]

    def get_many_with_ttl(self, *keys: bytes) -> list[tuple[bytes, float] | None]:
        """``GET`` + ``PTTL`` per key in one non-transactional pipeline, in key order.

        Not atomic: a write by another client between a key's ``GET`` and
        ``PTTL`` can pair the value read with the new entry's lifetime. Such a
        value is stale anyway, as after any concurrent write.
        """
        if not keys:
            return []
        try:
            pipe = self._client.pipeline(transaction=False)
            queue: Callable[..., Any] = pipe.execute_command
            for key in keys:
                queue("GET", key)
                queue("PTTL", key)
            replies: list[Any] = pipe.execute()
        except self._errors as err:
            raise self._translate("GET + PTTL (pipeline)", err) from err
        found: list[tuple[bytes, float] | None] = []
        for i in range(0, len(replies), 2):
            value: bytes | None = replies[i]
            pttl = int(replies[i + 1])
            # PTTL: -1 no expiry; -2 gone since the GET; 0 expiring this millisecond
            # (reported as 1 ms: 0.0 would mean never).
            if value is None or pttl == -2:
                found.append(None)
            else:
                found.append((value, 0.0 if pttl == -1 else max(pttl, 1) / 1000))
        return found

    def set_many(self, mapping: Mapping[bytes, bytes], ttl: TTL = None) -> None:
        """Store every pair in one non-transactional pipeline of ``SET [EX]``."""
        seconds = _seconds(ttl, self.default_ttl)
        if not mapping:
            return
        for key, value in mapping.items():
            if len(value) > self._max_value_size:
                raise self._too_large(key)
        args: tuple[object, ...] = ("EX", seconds) if seconds else ()
        try:
            pipe = self._client.pipeline(transaction=False)
            queue: Callable[..., Any] = pipe.execute_command
            for key, value in mapping.items():
                queue("SET", key, value, *args)
            pipe.execute()
        except self._errors as err:
            raise self._translate("SET (pipeline)", err) from err

    def replace_many(self, mapping: Mapping[bytes, bytes], ttl: TTL = None) -> list[bool]:
        """Replace each present key (``SET XX``, pipelined); return whether each was stored."""
        seconds = _seconds(ttl, self.default_ttl)
        if not mapping:
            return []
        args: tuple[object, ...] = ("EX", seconds) if seconds else ()
        try:
            pipe = self._client.pipeline(transaction=False)
            queue: Callable[..., Any] = pipe.execute_command
            for key, value in mapping.items():
                queue("SET", key, value, "XX", *args)
            replies = pipe.execute()
        except self._errors as err:
            raise self._translate("SET XX (pipeline)", err) from err
        return [bool(reply) for reply in replies]

    def delete_many(self, *keys: bytes) -> int:
        """Remove the keys with ``DEL`` (one per slot on a cluster); return how many existed."""
        if not keys:
            return 0
        try:
            return int(self._client.delete(*keys))
        except self._errors as err:
            raise self._translate("DEL", err) from err

    def incr(self, key: bytes, delta: int = 1) -> int:
        """``INCRBY``: a missing key counts as 0; the result may be negative."""
        check_delta(delta)
        try:
            return int(self._exec("INCRBY", key, delta))
        except self._errors as err:
            raise self._translate("INCRBY", err) from err

    def decr(self, key: bytes, delta: int = 1) -> int:
        """``DECRBY``: a missing key counts as 0; the result may be negative."""
        check_delta(delta)
        try:
            return int(self._exec("DECRBY", key, delta))
        except self._errors as err:
            raise self._translate("DECRBY", err) from err

    def touch(self, key: bytes, ttl: TTL = None) -> bool:
        """Reset the TTL (``EXPIRE``, or ``PERSIST`` for 0). Return whether the key exists."""
        seconds = _seconds(ttl, self.default_ttl)
        try:
            if seconds:
                return bool(self._exec("EXPIRE", key, seconds))
            return bool(self._persist_script(keys=[key]))
        except self._errors as err:
            raise self._translate("EXPIRE", err) from err

    def gets(self, key: bytes) -> tuple[bytes, CasToken] | None:
        """Return the value and a token (the value's SHA-1), or ``None`` when absent."""
        value = self.get(key)
        return None if value is None else (value, _token(value))

    def _cas_ttl(self, ttl: int | Keep | None) -> int:
        return -1 if ttl is KEEP_TTL else _seconds(ttl, self.default_ttl)

    def cas(
        self, key: bytes, value: bytes, token: CasToken, ttl: int | Keep | None = KEEP_TTL
    ) -> bool:
        """Store ``value`` only if the key still holds the value ``gets`` read (one Lua call)."""
        if not isinstance(token, str):
            raise ValidationError("cas needs the token returned by this backend's gets")
        seconds = self._cas_ttl(ttl)
        if len(value) > self._max_value_size:
            raise self._too_large(key)
        try:
            return bool(self._cas_script(keys=[key], args=[token, value, seconds]))
        except self._errors as err:
            raise self._translate("cas (EVALSHA)", err) from err

    def delete_if(self, key: bytes, token: CasToken) -> bool:
        """Delete the key only if it still holds the value ``gets`` read (one Lua call)."""
        if not isinstance(token, str):
            raise ValidationError("delete_if needs the token returned by this backend's gets")
        try:
            return bool(self._delete_if_script(keys=[key], args=[token]))
        except self._errors as err:
            raise self._translate("delete_if (EVALSHA)", err) from err

    def batch(self, commands: Sequence[Command]) -> list[object]:
        """Run the commands in one non-transactional pipeline (a single one directly).

        On a cluster this is redis-py's cluster pipeline, one round trip per
        node. Lua commands are sent as ``EVAL`` inside a pipeline, which needs
        no script pre-loading on any node.
        """
        if len(commands) == 1:
            return [self._run_one(commands[0])]
        results: list[object] = [None] * len(commands)
        queued: list[int] = []
        try:
            pipe = self._client.pipeline(transaction=False)
            queue: Callable[..., Any] = pipe.execute_command
            for index, command in enumerate(commands):
                try:
                    self._queue(queue, command)
                except ValidationError as err:
                    results[index] = err
                else:
                    queued.append(index)
            replies = pipe.execute(raise_on_error=False) if queued else []
        except self._errors as err:
            error = self._translate("pipeline", err)
            error.__cause__ = err
            return [error if result is None else result for result in results]
        for index, reply in zip(queued, replies, strict=True):
            results[index] = self._reply(commands[index], reply)
        return results

    def _queue(
        self,
        queue: Callable[..., Any],
        command: Command,
    ) -> None:
        op, key, ttl = command.op, command.key, command.ttl
        if op == "cas":
            if not isinstance(command.token, str):
                raise ValidationError("cas needs the token returned by this backend's gets")
            queue("EVAL", _CAS_LUA, 1, key, command.token, command.value, self._cas_ttl(ttl))
            return
        if op == "delete_if":
            if not isinstance(command.token, str):
                raise ValidationError("delete_if needs the token returned by this backend's gets")
            queue("EVAL", _DELETE_IF_LUA, 1, key, command.token)
            return
        if isinstance(ttl, Keep):
            raise ValidationError("KEEP_TTL is only valid for cas")
        if op in ("get", "gets"):
            queue("GET", key)
        elif op in ("set", "add", "replace"):
            if len(command.value) > self._max_value_size:
                raise self._too_large(key)
            seconds = _seconds(ttl, self.default_ttl)
            extra: tuple[object, ...] = ("EX", seconds) if seconds else ()
            condition = {"set": (), "add": ("NX",), "replace": ("XX",)}[op]
            queue("SET", key, command.value, *condition, *extra)
        elif op == "delete":
            queue("DEL", key)
        elif op == "has":
            queue("EXISTS", key)
        elif op == "touch":
            seconds = _seconds(ttl, self.default_ttl)
            if seconds:
                queue("EXPIRE", key, seconds)
            else:
                queue("EVAL", _PERSIST_LUA, 1, key)
        elif op == "incr":
            if isinstance(command.delta, bool) or not isinstance(command.delta, int):
                raise ValidationError(f"delta must be an int, got {command.delta!r}")
            queue("INCRBY", key, command.delta)
        else:
            raise ValidationError(f"unknown batch command {op!r}")

    def _reply(self, command: Command, reply: object) -> object:
        if isinstance(reply, BaseException):
            error = self._translate(command.op, reply)
            error.__cause__ = reply
            return error
        op = command.op
        if op == "get":
            return reply
        if op == "gets":
            return None if reply is None else (reply, _token(reply))  # type: ignore[arg-type]  # GET replies bytes
        if op == "set":
            return True
        if op == "incr":
            return int(reply)  # type: ignore[call-overload]  # INCRBY replies an int
        return bool(reply)

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
            raise self._translate("close", err) from err
