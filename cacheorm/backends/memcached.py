"""The memcached backend, on pymemcache.

pymemcache is imported only when a :class:`MemcachedBackend` is built, so
``import cacheorm`` works without it. Three memcached quirks are hidden here:

* **Keys.** memcached forbids empty keys, whitespace, control characters,
  non-ASCII bytes and keys over 250 bytes. :func:`memcached_key` maps every
  ``bytes`` key to a legal one, injectively and the same in every process.
* **TTLs.** memcached reads an expiry over 30 days as an absolute unix time; the
  backend converts. Each item also carries its absolute expiry in its 32-bit
  *flags*, so :meth:`MemcachedBackend.cas` can keep the remaining lifetime
  (``KEEP_TTL``), which the classic protocol cannot otherwise tell.
* **Counters.** ``decr`` clamps at zero and a negative number is not numeric to
  memcached, so counters fall back to a ``gets``/``cas`` loop whenever a value
  is or would become negative; a missing counter counts as ``0``, like Redis.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import re
import threading
import time
from typing import TYPE_CHECKING, Final, NamedTuple, ParamSpec, Protocol, TypeVar, cast

from cacheorm.backends.base import (
    INT64_MAX,
    KEEP_TTL,
    TTL,
    CasToken,
    Command,
    Keep,
    apply,
    check_delta,
    counter_sum,
    resolve_ttl,
)
from cacheorm.backends.memory import parse_counter
from cacheorm.errors import (
    BackendError,
    CacheORMError,
    ConflictError,
    ValidationError,
    ValueTooLarge,
)

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping, Sequence

    from pymemcache.client.base import Client
    from pymemcache.client.hash import HashClient

__all__ = ["MemcachedBackend", "memcached_key"]

logger = logging.getLogger(__name__)

_T = TypeVar("_T")
_P = ParamSpec("_P")

MAX_KEY_LENGTH: Final = 250
"""memcached's limit on a key, in bytes."""

_THIRTY_DAYS: Final = 30 * 24 * 3600
"""memcached reads an expiry above this as an absolute unix time."""

# A key passes through unchanged when it is 1-250 printable, non-space ASCII bytes
# and does not start with "~", the marker that every encoded key starts with. That
# keeps pass-through and encoded keys disjoint, which makes the mapping injective.
_PLAIN_KEY = re.compile(rb"[!-}][!-~]{0,249}")
_B64_PREFIX: Final = b"~b"
_HASH_PREFIX: Final = b"~h"
_MAX_B64_SOURCE: Final = (MAX_KEY_LENGTH - len(_B64_PREFIX)) // 4 * 3  # 186 bytes

_MAX_DEADLINE: Final = 2**32 - 1
"""The last unix time an item's 32-bit flags (and memcached's exptime) can hold."""

_CAS_RETRIES: Final = 64

_EXPIRING: Final = 0.001
"""Remaining seconds reported for an item memcached still serves past its deadline."""


def memcached_key(key: bytes) -> bytes:
    """Map any ``bytes`` key to a key memcached accepts, injectively and deterministically.

    * a key of 1 to 250 printable, non-space ASCII bytes that does not start
      with ``~`` is used as is;
    * any other key of up to 186 bytes becomes ``~b`` + its URL-safe base64
      (reversible, so distinct keys stay distinct);
    * a longer key becomes ``~h`` + the URL-safe base64 of its SHA-256.

    Args:
        key: the key as the layers above build it.

    Returns:
        A legal memcached key of at most 250 bytes.

    Examples:
        >>> memcached_key(b"person:Sam")
        b'person:Sam'
        >>> memcached_key(b"a b")
        b'~bYSBi'
        >>> len(memcached_key(b"x" * 1000))
        46
    """
    if _PLAIN_KEY.fullmatch(key) is not None:
        return key
    if len(key) <= _MAX_B64_SOURCE:
        return _B64_PREFIX + base64.urlsafe_b64encode(key)
    return _HASH_PREFIX + base64.urlsafe_b64encode(hashlib.sha256(key).digest())


class _McClient(Protocol):
    """The part of pymemcache's ``Client`` and ``HashClient`` this backend calls."""

    def set(
        self,
        key: bytes,
        value: object,
        expire: int = 0,
        noreply: bool | None = None,
        flags: int | None = None,
    ) -> bool | None: ...
    def set_many(
        self,
        values: dict[bytes | str, object],
        expire: int = 0,
        noreply: bool | None = None,
        flags: int | None = None,
    ) -> list[bytes | str]: ...
    def add(
        self,
        key: bytes,
        value: object,
        expire: int = 0,
        noreply: bool | None = None,
        flags: int | None = None,
    ) -> bool: ...
    def replace(
        self,
        key: bytes,
        value: object,
        expire: int = 0,
        noreply: bool | None = None,
        flags: int | None = None,
    ) -> bool: ...
    def cas(
        self,
        key: bytes,
        value: object,
        cas: bytes,
        expire: int = 0,
        noreply: bool | None = False,
        flags: int | None = None,
    ) -> bool | None: ...
    def get(self, key: bytes) -> object: ...
    def get_many(self, keys: list[bytes]) -> dict[bytes | str, object]: ...
    def gets(self, key: bytes) -> tuple[object, bytes | None]: ...
    def gets_many(self, keys: list[bytes]) -> dict[bytes | str, tuple[object, bytes]]: ...
    def delete(self, key: bytes, noreply: bool | None = None) -> bool: ...
    def incr(self, key: bytes, value: int, noreply: bool | None = False) -> int | None: ...
    def decr(self, key: bytes, value: int, noreply: bool | None = False) -> int | None: ...
    def close(self) -> None: ...


class _McToken(NamedTuple):
    """What :meth:`MemcachedBackend.gets` hands out: the CAS unique and the item flags."""

    cas: bytes
    flags: int


class _FlagsSerde:
    """pymemcache serde that passes bytes through and exposes each item's flags.

    Reads return ``(value, flags)``; writes pass ``flags=`` explicitly.
    """

    def serialize(self, key: bytes, value: object, /) -> tuple[bytes, int]:
        if not isinstance(value, bytes):
            raise ValidationError(f"memcached values must be bytes, got {type(value).__name__}")
        return value, 0

    def deserialize(self, key: bytes, value: bytes, flags: int, /) -> object:
        return (value, flags)


_SERDE: Final = _FlagsSerde()


def _value(item: object) -> bytes:
    """The bytes of an item read through :class:`_FlagsSerde`."""
    return cast("tuple[bytes, int]", item)[0]


def _flags(item: object) -> int:
    return cast("tuple[bytes, int]", item)[1]


def _with_ttl(item: object, now: float) -> tuple[bytes, float] | None:
    """An item read through :class:`_FlagsSerde`, with the lifetime its flags remember.

    Flags hold the absolute deadline written by this backend (``0`` = never;
    small values were not written by us: never, as in ``_kept_expiry``). The
    deadline is rounded down to a whole second, and memcached's clock ticks in
    whole seconds, so an item may still be served a little past it: it is then
    reported as about to expire rather than as a miss, agreeing with ``get``.
    """
    if item is None:
        return None
    value, deadline = cast("tuple[bytes, int]", item)
    if deadline <= _THIRTY_DAYS:
        return value, 0.0
    return value, max(deadline - now, _EXPIRING)


class MemcachedBackend:
    """Store bytes in memcached: one server, or several by consistent (rendezvous) hashing.

    One server uses a pymemcache ``Client``, several a ``HashClient``. Every
    call holds one lock, because neither client is thread-safe (pymemcache
    issue #124); an uncontended lock costs well under a microsecond, next to a
    round trip of tens of microseconds. Every write waits for the server's
    reply (``noreply=False``), so failures are seen. A node that is down or
    times out raises :class:`~cacheorm.BackendError`; it is never silently
    treated as a miss (``ignore_exc=False``) nor dropped from the ring.

    Args:
        servers: ``(host, port)`` pairs (or UNIX socket paths); one or several.
        client: an existing pymemcache ``Client`` or ``HashClient`` to use
            instead of ``servers``. Its serde is replaced by cacheorm's (values
            are bytes; flags carry each item's expiry), and it must not have
            ``ignore_exc=True``.
        default_ttl: seconds used when a call passes ``ttl=None``; ``0`` = never.
        connect_timeout: seconds to wait for a TCP connection.
        timeout: seconds to wait for each send or receive.

    Raises:
        ValidationError: an illegal ``default_ttl`` or a client with ``ignore_exc``.
    """

    default_ttl: int

    def __init__(
        self,
        servers: Sequence[tuple[str, int] | str] = (("127.0.0.1", 11211),),
        client: Client | HashClient | None = None,
        *,
        default_ttl: int = 0,
        connect_timeout: float = 1.0,
        timeout: float = 2.0,
    ) -> None:
        from pymemcache.client.base import Client
        from pymemcache.client.hash import HashClient
        from pymemcache.exceptions import MemcacheClientError, MemcacheError, MemcacheServerError

        self.default_ttl = resolve_ttl(default_ttl, 0)
        self._errors: tuple[type[BaseException], ...] = (MemcacheError, OSError)
        self._server_error: type[BaseException] = MemcacheServerError
        self._client_error: type[BaseException] = MemcacheClientError
        self._lock = threading.Lock()
        self._owns_client = client is None
        if client is None:
            if not servers:
                raise ValidationError("MemcachedBackend needs at least one server")
            if len(servers) == 1:
                client = Client(
                    servers[0],
                    serde=_SERDE,
                    connect_timeout=connect_timeout,
                    timeout=timeout,
                    no_delay=True,
                    default_noreply=False,
                )
            else:
                client = HashClient(
                    list(servers),
                    serde=_SERDE,
                    connect_timeout=connect_timeout,
                    timeout=timeout,
                    no_delay=True,
                    default_noreply=False,
                    ignore_exc=False,
                    # Retry a failed node on every call and never drop it from the
                    # ring: a down node must raise, not silently miss or remap keys.
                    retry_attempts=2**62,
                    retry_timeout=-1.0,
                )
        else:
            if client.ignore_exc:
                raise ValidationError(
                    "pass a client with ignore_exc=False: cacheorm reports a down server "
                    "as BackendError instead of a silent miss"
                )
            if isinstance(client, HashClient):
                client.default_kwargs["serde"] = _SERDE
                for node in client.clients.values():
                    node.serde = _SERDE
                client.retry_attempts, client.retry_timeout = 2**62, -1.0  # as above
            else:
                client.serde = _SERDE
        self._client: _McClient = client

    # -- plumbing -----------------------------------------------------------

    def _call(self, what: str, fn: Callable[_P, _T], *args: _P.args, **kwargs: _P.kwargs) -> _T:
        """Run ``fn(*args, **kwargs)`` under the lock, translating driver errors."""
        try:
            with self._lock:
                return fn(*args, **kwargs)
        except self._errors as err:
            raise self._translate(what, err) from err

    def _translate(self, what: str, err: BaseException) -> CacheORMError:
        if isinstance(err, self._server_error):
            text = str(err)
            if "too large" in text or "out of memory storing" in text:
                return ValueTooLarge(
                    f"memcached {what}: value larger than the server's item size limit "
                    "(memcached -I, 1 MiB by default); store less or raise the limit"
                )
        logger.debug("memcached %s failed: %r", what, err)
        return BackendError(
            f"memcached {what} failed: {err!r}; check that every server is up, reachable "
            "and answering within the timeout"
        )

    def _too_large(self, key: bytes, err: ValueTooLarge) -> ValueTooLarge:
        """Make sure a key whose write was refused as too large no longer serves old data."""
        self._call("delete", self._client.delete, key, noreply=False)
        return err

    @staticmethod
    def _expiry(ttl: int) -> tuple[int, int]:
        """Return ``(exptime, flags)`` for a resolved TTL: what to send, what to remember."""
        if ttl == 0:
            return 0, 0
        deadline = int(time.time()) + ttl
        if deadline > _MAX_DEADLINE:  # beyond 2106, as memcached's 32-bit times go: never
            return 0, 0
        return (ttl if ttl <= _THIRTY_DAYS else deadline), deadline

    @staticmethod
    def _kept_expiry(flags: int) -> int:
        """The exptime that keeps an item's remaining lifetime, from its flags."""
        if flags <= _THIRTY_DAYS:  # 0 = never; small values are not ours: treat as never
            return 0
        remaining = flags - int(time.time())
        # At least one second: 0 would mean "never expires".
        return max(remaining, 1) if remaining <= _THIRTY_DAYS else flags

    def _store(
        self, verb: str, key: bytes, value: bytes, ttl: int, cas: bytes | None = None
    ) -> bool | None:
        exptime, flags = self._expiry(ttl)
        return self._store_raw(verb, key, value, exptime, flags, cas)

    def _store_raw(
        self,
        verb: str,
        key: bytes,
        value: bytes,
        exptime: int,
        flags: int,
        cas: bytes | None = None,
    ) -> bool | None:
        client = self._client
        try:
            if verb == "set":
                return self._call(verb, client.set, key, value, exptime, noreply=False, flags=flags)
            if verb == "add":
                return self._call(verb, client.add, key, value, exptime, noreply=False, flags=flags)
            if verb == "replace":
                return self._call(
                    verb, client.replace, key, value, exptime, noreply=False, flags=flags
                )
            assert cas is not None
            return self._call(
                verb, client.cas, key, value, cas, exptime, noreply=False, flags=flags
            )
        except ValueTooLarge as err:
            raise self._too_large(key, err) from err.__cause__

    # -- the Backend protocol -----------------------------------------------

    def get(self, key: bytes) -> bytes | None:
        """Return the value, or ``None`` when the key is absent or expired."""
        k = memcached_key(key)
        client = self._client
        try:
            with self._lock:
                item = client.get(k)
        except self._errors as err:
            raise self._translate("get", err) from err
        return None if item is None else _value(item)

    def set(self, key: bytes, value: bytes, ttl: TTL = None) -> None:
        """Store ``value`` unconditionally."""
        seconds = self.default_ttl if ttl is None else resolve_ttl(ttl, 0)
        exptime, flags = self._expiry(seconds) if seconds else (0, 0)
        k = memcached_key(key)
        client = self._client
        try:
            with self._lock:
                client.set(k, value, exptime, noreply=False, flags=flags)
        except self._errors as err:
            error = self._translate("set", err)
            if isinstance(error, ValueTooLarge):
                raise self._too_large(k, error) from err
            raise error from err

    def add(self, key: bytes, value: bytes, ttl: TTL = None) -> bool:
        """Store only if absent (memcached ``add`` is atomic). Return whether it was stored."""
        ttl = resolve_ttl(ttl, self.default_ttl)
        return bool(self._store("add", memcached_key(key), value, ttl))

    def replace(self, key: bytes, value: bytes, ttl: TTL = None) -> bool:
        """Store only if present. Return whether it was stored."""
        ttl = resolve_ttl(ttl, self.default_ttl)
        return bool(self._store("replace", memcached_key(key), value, ttl))

    def delete(self, key: bytes) -> bool:
        """Remove the key. Return whether it existed."""
        k = memcached_key(key)
        return self._call("delete", self._client.delete, k, noreply=False)

    def has(self, key: bytes) -> bool:
        """Return whether the key is present (memcached has no EXISTS: this reads the value)."""
        return self.get(key) is not None

    def get_many(self, *keys: bytes) -> list[bytes | None]:
        """Return the values in key order with one ``get`` per server."""
        if not keys:
            return []
        encoded = [memcached_key(key) for key in keys]
        found = self._call("get_many", self._client.get_many, encoded)
        return [None if (item := found.get(k)) is None else _value(item) for k in encoded]

    def get_with_ttl(self, key: bytes) -> tuple[bytes, float] | None:
        """Return the value and its remaining seconds (``0.0`` = never), from its flags."""
        item = self._call("get", self._client.get, memcached_key(key))
        return _with_ttl(item, time.time())

    def get_many_with_ttl(self, *keys: bytes) -> list[tuple[bytes, float] | None]:
        """:meth:`get_with_ttl` for each key, in key order, with one ``get`` per server."""
        if not keys:
            return []
        encoded = [memcached_key(key) for key in keys]
        found = self._call("get_many", self._client.get_many, encoded)
        now = time.time()
        return [_with_ttl(found.get(k), now) for k in encoded]

    def set_many(self, mapping: Mapping[bytes, bytes], ttl: TTL = None) -> None:
        """Store every pair with one pipelined ``set`` per server."""
        exptime, flags = self._expiry(resolve_ttl(ttl, self.default_ttl))
        if not mapping:
            return
        encoded: dict[bytes | str, object] = {memcached_key(k): v for k, v in mapping.items()}
        try:
            failed = self._call(
                "set_many",
                self._client.set_many,
                encoded,
                exptime,
                noreply=False,
                flags=flags,
            )
        except ValueTooLarge as err:
            for key in mapping:  # we cannot tell which one; none may serve stale data
                self._call("delete", self._client.delete, memcached_key(key), noreply=False)
            raise err from err.__cause__
        if failed:
            raise BackendError(f"memcached set_many did not store {len(failed)} key(s)")

    def replace_many(self, mapping: Mapping[bytes, bytes], ttl: TTL = None) -> list[bool]:
        """Replace each present key; return, in mapping order, whether each was stored."""
        ttl = resolve_ttl(ttl, self.default_ttl)
        return [bool(self._store("replace", memcached_key(k), v, ttl)) for k, v in mapping.items()]

    def delete_many(self, *keys: bytes) -> int:
        """Remove the keys; return how many existed (memcached deletes one key at a time)."""
        deleted = 0
        for key in keys:
            deleted += self.delete(key)
        return deleted

    def incr(self, key: bytes, delta: int = 1) -> int:
        """Add ``delta`` atomically and return the new value; a missing key counts as ``0``.

        Native ``incr`` where memcached can do it (non-negative value and delta),
        otherwise a ``gets``/``cas`` loop, so the result may go below zero.
        """
        check_delta(delta)
        k = memcached_key(key)
        client = self._client
        if 0 <= delta < 2**63:
            for _ in range(_CAS_RETRIES):
                try:
                    result = self._call("incr", client.incr, k, delta, noreply=False)
                except BackendError as err:
                    if not isinstance(err.__cause__, self._client_error):
                        raise
                    # "non-numeric value": a negative counter; the cas loop handles it.
                    break
                if result is not None:
                    if result > INT64_MAX:  # memcached counts in unsigned 64 bits; we don't
                        self._call("decr", client.decr, k, delta, noreply=False)
                        counter_sum(result - delta, delta, key)  # raises ValidationError
                    return result
                created = self._call(
                    "add", client.add, k, str(delta).encode(), 0, noreply=False, flags=0
                )
                if created:
                    return delta
        return self._cas_add(k, delta)

    def _cas_add(self, k: bytes, delta: int) -> int:
        """Add ``delta`` with a ``gets``/``cas`` loop (for values memcached cannot incr)."""
        for _ in range(_CAS_RETRIES):
            try:
                # Hold the lock across gets and cas: threads of this process then never
                # race each other; only other processes can make a round fail.
                with self._lock:
                    new = self._cas_add_once(k, delta)
            except self._errors as err:
                raise self._translate("incr", err) from err
            if new is not None:
                return new
        raise ConflictError(f"memcached incr of {k!r} lost {_CAS_RETRIES} races in a row")

    def _cas_add_once(self, k: bytes, delta: int) -> int | None:
        client = self._client
        item, cas = client.gets(k)
        if item is None or cas is None:
            created = client.add(k, str(delta).encode(), 0, noreply=False, flags=0)
            return delta if created else None
        new = counter_sum(parse_counter(_value(item), k), delta, k)
        flags = _flags(item)
        stored = client.cas(
            k, str(new).encode(), cas, self._kept_expiry(flags), noreply=False, flags=flags
        )
        return new if stored else None

    def decr(self, key: bytes, delta: int = 1) -> int:
        """Subtract ``delta`` atomically and return the new value (may go below zero)."""
        check_delta(delta)
        return self.incr(key, -delta)

    def touch(self, key: bytes, ttl: TTL = None) -> bool:
        """Reset the key's TTL. Return whether the key exists.

        Done as ``gets`` + ``cas`` rather than memcached ``touch``, because the
        item's flags must learn the new expiry too (for a later ``KEEP_TTL``).
        """
        exptime, flags = self._expiry(resolve_ttl(ttl, self.default_ttl))
        k = memcached_key(key)
        client = self._client
        for _ in range(_CAS_RETRIES):
            try:
                with self._lock:  # across gets and cas, as in _cas_add
                    item, cas = client.gets(k)
                    if item is None or cas is None:
                        return False
                    stored = client.cas(k, _value(item), cas, exptime, noreply=False, flags=flags)
            except self._errors as err:
                raise self._translate("touch", err) from err
            if stored is None:
                return False
            if stored:
                return True
        raise ConflictError(f"memcached touch of {k!r} lost {_CAS_RETRIES} races in a row")

    def gets(self, key: bytes) -> tuple[bytes, CasToken] | None:
        """Return the value with a token (memcached's CAS unique and the item's flags)."""
        k = memcached_key(key)
        item, cas = self._call("gets", self._client.gets, k)
        if item is None or cas is None:
            return None
        return _value(item), _McToken(cas, _flags(item))

    def cas(
        self, key: bytes, value: bytes, token: CasToken, ttl: int | Keep | None = KEEP_TTL
    ) -> bool:
        """Store ``value`` only if the key is unchanged since ``gets``.

        ``KEEP_TTL`` re-sends the absolute expiry remembered in the item's flags.
        """
        if not isinstance(token, _McToken):
            raise ValidationError("cas needs the token returned by this backend's gets")
        if ttl is KEEP_TTL:
            exptime, flags = self._kept_expiry(token.flags), token.flags
        else:
            exptime, flags = self._expiry(resolve_ttl(ttl, self.default_ttl))
        k = memcached_key(key)
        return bool(self._store_raw("cas", k, value, exptime, flags, token.cas))

    def delete_if(self, key: bytes, token: CasToken) -> bool:
        """Delete the key only if unchanged since ``gets``.

        memcached has no compare-and-delete: a ``cas`` with a negative exptime
        writes an already-expired item, which no later read can see.
        """
        if not isinstance(token, _McToken):
            raise ValidationError("delete_if needs the token returned by this backend's gets")
        k = memcached_key(key)
        client = self._client
        return bool(
            self._call("delete_if", client.cas, k, b"", token.cas, -1, noreply=False, flags=0)
        )

    def batch(self, commands: Sequence[Command]) -> list[object]:
        """Run the commands in order, grouping reads and same-TTL writes per round trip.

        Consecutive ``get``/``gets``/``set`` commands on distinct keys are merged
        into one ``get_many``, one ``gets_many`` and one ``set_many`` per TTL;
        reordering them cannot change a result because their keys differ. Every
        other command runs on its own. A failing command's error is put in its
        slot.
        """
        results: list[object] = [None] * len(commands)
        wave: list[int] = []
        wave_keys: set[bytes] = set()
        for index, command in enumerate(commands):
            groupable = command.op in ("get", "gets", "set")
            if not groupable or command.key in wave_keys:
                self._run_wave(commands, wave, results)
                wave, wave_keys = [], set()
            if groupable:
                wave.append(index)
                wave_keys.add(command.key)
            else:
                results[index] = self._run_one(command)
        self._run_wave(commands, wave, results)
        return results

    def _run_wave(
        self, commands: Sequence[Command], wave: list[int], results: list[object]
    ) -> None:
        if not wave:
            return
        if len(wave) == 1:
            results[wave[0]] = self._run_one(commands[wave[0]])
            return
        gets = [i for i in wave if commands[i].op == "get"]
        getss = [i for i in wave if commands[i].op == "gets"]
        sets: dict[int, list[int]] = {}
        for i in wave:
            command = commands[i]
            if command.op != "set":
                continue
            if isinstance(command.ttl, Keep):
                results[i] = ValidationError("KEEP_TTL is only valid for cas")
                continue
            try:
                ttl = resolve_ttl(command.ttl, self.default_ttl)
            except ValidationError as err:
                results[i] = err
                continue
            sets.setdefault(ttl, []).append(i)
        if gets:
            try:
                values = self.get_many(*(commands[i].key for i in gets))
            except CacheORMError as err:
                for i in gets:
                    results[i] = err
            else:
                for i, value in zip(gets, values, strict=True):
                    results[i] = value
        if getss:
            encoded = {memcached_key(commands[i].key): i for i in getss}
            try:
                found = self._call("gets_many", self._client.gets_many, list(encoded))
            except CacheORMError as err:
                for i in getss:
                    results[i] = err
            else:
                for k, i in encoded.items():
                    hit = found.get(k)
                    results[i] = (
                        None if hit is None else (_value(hit[0]), _McToken(hit[1], _flags(hit[0])))
                    )
        for ttl, indexes in sets.items():
            try:
                self.set_many({commands[i].key: commands[i].value for i in indexes}, ttl)
            except ValueTooLarge:
                # One value was refused: redo them one by one so only that one fails.
                for i in indexes:
                    results[i] = self._run_one(commands[i])
            except CacheORMError as err:
                for i in indexes:
                    results[i] = err
            else:
                for i in indexes:
                    results[i] = True

    def _run_one(self, command: Command) -> object:
        """Run one command through the public methods; return its result or its error."""
        try:
            return apply(self, command)
        except CacheORMError as err:
            return err

    def close(self) -> None:
        """Close the connections this backend opened; the backend is unusable after.

        A client passed in as ``client=`` is left open: its owner closes it.
        """
        if not self._owns_client:
            return
        try:
            with self._lock:
                self._client.close()
        except self._errors as err:
            raise self._translate("close", err) from err
