"""Backends from URLs: one setting (an environment variable, a line of config) names the cache.

>>> backend_from_url("memory://?max_items=1000&default_ttl=60")
MemoryBackend(max_items=1000, default_ttl=60)

============================================  ==================================================
URL                                           sync backend / async backend
============================================  ==================================================
``memory://``                                 ``MemoryBackend`` / the same, awaitable
``file:///abs/dir``                           ``FileSystemBackend`` / ``AsyncFileSystemBackend``
``redis://[user:pw@]host[:port][/db]``        ``RedisBackend`` / ``AsyncRedisBackend``
``redis+cluster://host:port[,host:port...]``  the same, on a Redis Cluster (seed nodes)
``memcached://host:port[,host:port...]``      ``MemcachedBackend`` / ``AsyncMemcachedBackend``
============================================  ==================================================

``rediss://`` and ``rediss+cluster://`` are the Redis forms over TLS. Ports
default to 6379 (Redis) and 11211 (memcached). A directory is percent-encoded
as in any URL (``pathlib.Path("/var/cache/my app").as_uri()`` writes it).

Query parameters set the backend's options; each scheme takes only its own,
and anything else (an unknown or misspelt name, a name given twice, a value of
the wrong kind) is refused with :class:`~cacheorm.ValidationError` rather than
ignored:

* every scheme: ``default_ttl`` (seconds, ``0`` = never expires);
* ``memory``: ``max_items`` (a positive int or ``none``);
* ``file``: ``max_items``, ``durable`` (``true``/``false``);
* Redis: cacheorm's ``retries`` and ``max_value_size``, and redis-py's own URL
  parameters ``socket_timeout``, ``socket_connect_timeout`` (seconds),
  ``socket_keepalive``, ``max_connections`` and ``client_name``; over TLS also
  ``ssl_cert_reqs`` (``none``/``optional``/``required``), ``ssl_ca_certs``,
  ``ssl_certfile``, ``ssl_keyfile``, ``ssl_check_hostname`` and, on one server,
  ``ssl_ca_path`` and ``ssl_password``. redis-py's parameters reach redis-py
  itself (the URL is handed to ``RedisBackend(url=...)``); only the names it
  honours on both its sync and asyncio clients are let through, and its
  ``retry_on_timeout``/``retry_on_error`` are refused: cacheorm decides what
  may be resent (``retries``);
* ``memcached``: ``connect_timeout``, ``timeout`` (seconds), and for
  :func:`async_backend_from_url` ``max_connections`` (per server).

A password never appears in an error message (it is shown as ``***``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Final, NamedTuple, TypeVar
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit

from cacheorm.backends.afilesystem import AsyncFileSystemBackend
from cacheorm.backends.amemcached import AsyncMemcachedBackend
from cacheorm.backends.aredis import AsyncRedisBackend
from cacheorm.backends.atiered import InProcessAsync
from cacheorm.backends.base import AsyncBackend, Backend
from cacheorm.backends.filesystem import FileSystemBackend
from cacheorm.backends.memcached import MemcachedBackend
from cacheorm.backends.memory import MemoryBackend
from cacheorm.backends.redis import RedisBackend, redact_url
from cacheorm.errors import ValidationError

__all__ = ["SCHEMES", "async_backend_from_url", "backend_from_url", "redact_url"]

_T = TypeVar("_T")

SCHEMES: Final = (
    "memory://",
    "file:///abs/dir",
    "redis://host:port/db",
    "rediss://host:port/db",
    "redis+cluster://host:port[,host:port...]",
    "rediss+cluster://host:port[,host:port...]",
    "memcached://host:port[,host:port...]",
)
"""The supported URL forms, as error messages list them."""

_REDIS_PORT: Final = 6379
_MEMCACHED_PORT: Final = 11211
_TRUE: Final = frozenset({"true", "1", "yes", "on"})
_FALSE: Final = frozenset({"false", "0", "no", "off"})

_ASYNC_ONLY: Final = {
    "max_connections": "memcached's max_connections sizes async_backend_from_url's "
    "connection pools; the sync backend keeps one connection per server",
}
_RESEND_HINT: Final = (
    "cacheorm decides what may be resent after a connection error (see RedisBackend); "
    "set retries=N instead"
)
_REFUSED_REDIS: Final = {"retry_on_timeout": _RESEND_HINT, "retry_on_error": _RESEND_HINT}
_TLS_ONLY: Final = "only for TLS: use rediss:// (or rediss+cluster://)"
_NOT_CLUSTER: Final = "redis-py's asyncio cluster client does not take it"


def _unsupported(url: str, why: str) -> ValidationError:
    return ValidationError(
        f"cannot configure a backend from {redact_url(url)!r}: {why}; supported: "
        + ", ".join(SCHEMES)
    )


class _Query:
    """A URL's query parameters, each taken (parsed and checked) once by the backend's builder.

    What is left when the builder is done is refused by :meth:`finish`, naming
    the parameters that the scheme does take.
    """

    def __init__(self, url: str, scheme: str, query: str) -> None:
        self._url = url
        self._scheme = scheme
        self._values: dict[str, str] = {}
        self._known: list[str] = []
        for name, value in parse_qsl(query, keep_blank_values=True):
            if name in self._values:
                raise self.error(f"query parameter {name} is given twice")
            self._values[name] = value

    def error(self, why: str) -> ValidationError:
        return ValidationError(f"bad {self._scheme}:// URL {redact_url(self._url)!r}: {why}")

    def take(self, name: str, parse: Callable[[str], _T], expected: str) -> _T | None:
        """The parameter ``name`` parsed, or ``None`` when absent."""
        self._known.append(name)
        raw = self._values.pop(name, None)
        if raw is None:
            return None
        try:
            return parse(raw)
        except ValueError:
            shown = "***" if "password" in name else repr(raw)
            raise self.error(f"{name}={shown}: expected {expected}") from None

    def seconds(self, name: str, default: float) -> float:
        """A duration in seconds: a finite number above 0."""
        value = self.take(name, _positive_float, "seconds, a number above 0")
        return default if value is None else value

    def count(self, name: str, default: int, minimum: int) -> int:
        """A whole number of at least ``minimum``."""
        value = self.take(name, _int_at_least(minimum), f"a whole number >= {minimum}")
        return default if value is None else value

    def limit(self, name: str, default: int | None) -> int | None:
        """A positive whole number, or ``none`` for no limit."""
        value = self.take(name, _limit, "a whole number >= 1, or none (no limit)")
        return default if value is None else value.bound

    def flag(self, name: str, default: bool) -> bool:
        """``true``/``false`` (also ``1``/``0``, ``yes``/``no``, ``on``/``off``)."""
        value = self.take(name, _flag, "true or false")
        return default if value is None else value

    def text(self, name: str) -> str | None:
        """Any non-empty text."""
        return self.take(name, _non_empty, "a value")

    def choice(self, name: str, choices: tuple[str, ...]) -> str | None:
        """One of ``choices``."""
        return self.take(name, _one_of(choices), " or ".join(choices))

    def finish(self, hints: Mapping[str, str] | None = None) -> None:
        """Refuse every parameter no builder took.

        Raises:
            ValidationError: naming the unknown parameters (with ``hints`` for
                names known elsewhere) and the ones this scheme takes.
        """
        if not self._values:
            return
        hints = hints or {}
        unknown = sorted(self._values)
        named = ", ".join(f"{name} ({hints[name]})" if name in hints else name for name in unknown)
        supported = ", ".join(sorted(set(self._known))) or "none"
        raise self.error(
            f"unknown query parameter{'s' if len(unknown) > 1 else ''} {named}; "
            f"{self._scheme}:// takes: {supported}"
        )


class _Limit(NamedTuple):
    bound: int | None


def _positive_float(raw: str) -> float:
    value = float(raw)
    if not math.isfinite(value) or value <= 0:
        raise ValueError(raw)
    return value


def _int_at_least(minimum: int) -> Callable[[str], int]:
    def parse(raw: str) -> int:
        if not raw.isascii() or not raw.isdigit():
            raise ValueError(raw)
        value = int(raw)
        if value < minimum:
            raise ValueError(raw)
        return value

    return parse


def _limit(raw: str) -> _Limit:
    return _Limit(None if raw.lower() == "none" else _int_at_least(1)(raw))


def _flag(raw: str) -> bool:
    if raw.lower() in _TRUE:
        return True
    if raw.lower() in _FALSE:
        return False
    raise ValueError(raw)


def _non_empty(raw: str) -> str:
    if not raw:
        raise ValueError(raw)
    return raw


def _one_of(choices: tuple[str, ...]) -> Callable[[str], str]:
    def parse(raw: str) -> str:
        if raw.lower() not in choices:
            raise ValueError(raw)
        return raw.lower()

    return parse


# -- the URL's parts --------------------------------------------------------------


class _Parts(NamedTuple):
    url: str
    scheme: str
    userinfo: str
    hosts: str
    path: str
    query: _Query


def _split(url: object) -> _Parts:
    """The URL's scheme, credentials, host list, path and query.

    Raises:
        ValidationError: not a str, an unsupported scheme, a fragment.
    """
    if not isinstance(url, str):
        raise ValidationError(f"a backend URL is a str, got {type(url).__name__}")
    try:
        parts = urlsplit(url)
    except ValueError as err:  # e.g. an unclosed "[" of an IPv6 address
        raise _unsupported(url, str(err)) from None
    scheme = parts.scheme.lower()
    if scheme not in ("memory", "file", "memcached", *_REDIS_SCHEMES):
        why = f"unknown scheme {parts.scheme!r}" if scheme else "no scheme"
        raise _unsupported(url, why)
    if parts.fragment:
        raise _unsupported(url, "a backend URL has no #fragment")
    userinfo, _, hosts = parts.netloc.rpartition("@")
    return _Parts(url, scheme, userinfo, hosts, parts.path, _Query(url, scheme, parts.query))


def _address(parts: _Parts, text: str, default_port: int) -> tuple[str, int]:
    """``(host, port)`` from ``host``, ``host:port`` or ``[ipv6]:port``.

    Raises:
        ValidationError: no host, or a port that is not a number from 1 to 65535.
    """
    if text.startswith("["):
        host, bracket, rest = text[1:].partition("]")
        if not bracket or (rest and not rest.startswith(":")):
            raise parts.query.error(f"{text!r} is not host:port ([ipv6]:port)")
        colon, port = bool(rest), rest[1:]
    else:
        host, sep, port = text.rpartition(":")
        colon = bool(sep)
        if not colon:
            host = text
    if not host:
        raise parts.query.error(f"no host in {text!r}; write host:port")
    if not colon:
        return host, default_port
    if not (port.isascii() and port.isdigit()) or not 1 <= int(port) <= 65535:
        raise parts.query.error(f"port {port!r} of {host} is not a number from 1 to 65535")
    return host, int(port)


def _addresses(parts: _Parts, default_port: int) -> list[tuple[str, int]]:
    """Every ``host:port`` of a comma-separated list, each once."""
    addresses = [_address(parts, seed, default_port) for seed in parts.hosts.split(",")]
    for index, address in enumerate(addresses):
        if address in addresses[:index]:
            raise parts.query.error(f"{address[0]}:{address[1]} is listed twice")
    return addresses


# -- in-process stores --------------------------------------------------------------


class _Local(NamedTuple):
    directory: Path | None
    max_items: int | None
    default_ttl: int
    durable: bool


def _local(parts: _Parts) -> _Local:
    """The options of ``memory://`` or ``file:///abs/dir``.

    Raises:
        ValidationError: a host or path on ``memory://``; a relative, remote or
            missing directory on ``file://``; a bad parameter.
    """
    query = parts.query
    if parts.scheme == "memory":
        if parts.userinfo or parts.hosts or parts.path not in ("", "/"):
            raise query.error("memory:// names no host or path (write memory://)")
        directory = None
    else:
        if parts.userinfo or parts.hosts not in ("", "localhost"):
            raise query.error(
                f"{parts.hosts!r} would be a host: write an absolute directory with three "
                "slashes, file:///abs/dir"
            )
        path = unquote(parts.path)
        if not path.startswith("/") or path == "/":
            raise query.error(
                "the directory must be absolute and not the root, e.g. file:///var/cache/myapp"
            )
        directory = Path(path)
    max_items = query.limit("max_items", 10_000)
    default_ttl = query.count("default_ttl", 0, 0)
    durable = query.flag("durable", False) if directory is not None else False
    query.finish()
    return _Local(directory, max_items, default_ttl, durable)


# -- Redis ---------------------------------------------------------------------------

_REDIS_SCHEMES: Final = ("redis", "rediss", "redis+cluster", "rediss+cluster")


class _Redis(NamedTuple):
    url: str
    """The URL handed to redis-py: credentials, hosts, database and its own parameters."""
    default_ttl: int
    retries: int
    max_value_size: int


def _redis(parts: _Parts) -> _Redis:
    """The URL for redis-py (its parameters checked and normalised) and cacheorm's options.

    Raises:
        ValidationError: several hosts on a standalone URL, a bad port or
            database, a bad or unknown parameter.
    """
    query = parts.query
    cluster = parts.scheme.endswith("+cluster")
    tls = parts.scheme.startswith("rediss")
    if not cluster and "," in parts.hosts:
        raise query.error("one server only; for a cluster write redis+cluster://h1:p1,h2:p2")
    for seed in parts.hosts.split(","):
        _address(parts, seed, _REDIS_PORT)
    database = _database(parts, cluster)
    options: dict[str, str] = {}
    for name in ("socket_timeout", "socket_connect_timeout"):
        seconds = query.take(name, _positive_float, "seconds, a number above 0")
        if seconds is not None:
            options[name] = repr(seconds)
    keepalive = query.take("socket_keepalive", _flag, "true or false")
    if keepalive is not None:
        options["socket_keepalive"] = str(keepalive).lower()
    connections = query.take("max_connections", _int_at_least(1), "a whole number >= 1")
    if connections is not None:
        options["max_connections"] = str(connections)
    for name in ("client_name", *_tls_texts(tls, cluster)):
        text = query.text(name)
        if text is not None:
            options[name] = text
    if tls:
        reqs = query.choice("ssl_cert_reqs", ("none", "optional", "required"))
        if reqs is not None:
            options["ssl_cert_reqs"] = reqs
        check = query.take("ssl_check_hostname", _flag, "true or false")
        if check is not None:
            options["ssl_check_hostname"] = str(check).lower()
    default_ttl = query.count("default_ttl", 0, 0)
    retries = query.count("retries", 1, 0)
    max_value_size = query.count("max_value_size", 512 * 1024 * 1024, 1)
    hints = dict(_REFUSED_REDIS)
    if not tls:
        hints.update(dict.fromkeys(_tls_names(cluster), _TLS_ONLY))
    if cluster:
        hints["db"] = "a cluster has only database 0"
        hints.update(dict.fromkeys(("ssl_ca_path", "ssl_password"), _NOT_CLUSTER))
    query.finish(hints)
    netloc = f"{parts.userinfo}@{parts.hosts}" if parts.userinfo else parts.hosts
    url = f"{parts.scheme}://{netloc}{database}"
    if options:
        url += "?" + urlencode(options)
    return _Redis(url, default_ttl, retries, max_value_size)


def _tls_texts(tls: bool, cluster: bool) -> tuple[str, ...]:
    """redis-py's free-text TLS parameters that both its clients take for this kind of URL."""
    if not tls:
        return ()
    common = ("ssl_ca_certs", "ssl_certfile", "ssl_keyfile")
    # redis.asyncio.RedisCluster takes neither (it would fail on them).
    return common if cluster else (*common, "ssl_ca_path", "ssl_password")


def _tls_names(cluster: bool) -> tuple[str, ...]:
    return (*_tls_texts(True, cluster), "ssl_cert_reqs", "ssl_check_hostname")


def _database(parts: _Parts, cluster: bool) -> str:
    """``/n`` for redis-py: the database of the path or of ``?db=``, checked; ``""`` for none.

    Raises:
        ValidationError: a path that is no database number, a database on a
            cluster, or two databases.
    """
    path = parts.path.strip("/")
    if path and not (path.isascii() and path.isdigit()):
        raise parts.query.error(f"the path /{path} is not a database number, as in /0")
    if cluster:
        if path not in ("", "0"):
            raise parts.query.error("a cluster has only database 0")
        return ""
    db = parts.query.take("db", _int_at_least(0), "a database number >= 0")
    if db is not None and path and int(path) != db:
        raise parts.query.error(f"two databases: /{path} and db={db}")
    chosen = path or ("" if db is None else str(db))
    return f"/{int(chosen)}" if chosen else ""


# -- memcached -----------------------------------------------------------------------


class _Memcached(NamedTuple):
    servers: list[tuple[str, int]]
    default_ttl: int
    connect_timeout: float
    timeout: float
    max_connections: int


def _memcached(parts: _Parts, pooled: bool) -> _Memcached:
    """The servers and options of ``memcached://h1:p1[,h2:p2...]``.

    Raises:
        ValidationError: credentials or a path, a bad host or port, a bad or
            unknown parameter.
    """
    query = parts.query
    if parts.userinfo:
        raise query.error("memcached:// takes no user or password")
    if parts.path not in ("", "/"):
        raise query.error(f"memcached:// has no path ({parts.path!r}); list host:port pairs")
    servers = _addresses(parts, _MEMCACHED_PORT)
    default_ttl = query.count("default_ttl", 0, 0)
    connect_timeout = query.seconds("connect_timeout", 1.0)
    timeout = query.seconds("timeout", 2.0)
    max_connections = query.count("max_connections", 16, 1) if pooled else 1
    query.finish(None if pooled else _ASYNC_ONLY)
    return _Memcached(servers, default_ttl, connect_timeout, timeout, max_connections)


# -- the two entry points ------------------------------------------------------------


def backend_from_url(url: str) -> Backend:
    """Build the backend a URL names, for the ``co`` functions.

    Args:
        url: ``memory://``, ``file:///abs/dir``, ``redis://host:port/db``
            (``rediss://`` over TLS), ``redis+cluster://host:port[,host:port...]``
            or ``memcached://host:port[,host:port...]``, with the query
            parameters the module documentation lists, e.g.
            ``redis://cache:6379/0?socket_timeout=0.5&default_ttl=3600``.

    Returns:
        A new :class:`~cacheorm.MemoryBackend`, :class:`~cacheorm.FileSystemBackend`,
        :class:`~cacheorm.RedisBackend` or :class:`~cacheorm.MemcachedBackend`.
        Nothing is connected yet (except a cluster, whose client reads the slot
        map when built): call its ``ping()`` to check the store answers.

    Raises:
        ValidationError: an unsupported scheme (the message lists the supported
            ones), a relative directory, a bad host, port or database, or a query
            parameter that is unknown, repeated or of the wrong kind (the
            message names it).
        BackendError: a ``file://`` directory that cannot be created, or a
            ``redis+cluster://`` URL whose seeds cannot be reached.

    Example:
        >>> import tempfile
        >>> with tempfile.TemporaryDirectory() as directory:
        ...     files = backend_from_url(f"file://{directory}?durable=true&max_items=none")
        ...     files.ping()
        ...     (files.durable, files.max_items)
        (True, None)
        >>> backend_from_url("memcache://127.0.0.1:11211")
        Traceback (most recent call last):
        ...
        cacheorm.errors.ValidationError: cannot configure a backend from 'memcache://127.0.0.1:11211': unknown scheme 'memcache'; supported: memory://, file:///abs/dir, redis://host:port/db, rediss://host:port/db, redis+cluster://host:port[,host:port...], rediss+cluster://host:port[,host:port...], memcached://host:port[,host:port...]
    """  # noqa: E501  # the doctest's expected line
    parts = _split(url)
    if parts.scheme in ("memory", "file"):
        local = _local(parts)
        if local.directory is None:
            return MemoryBackend(local.max_items, local.default_ttl)
        return FileSystemBackend(
            local.directory, local.max_items, local.default_ttl, durable=local.durable
        )
    if parts.scheme == "memcached":
        mc = _memcached(parts, pooled=False)
        return MemcachedBackend(
            servers=mc.servers,
            default_ttl=mc.default_ttl,
            connect_timeout=mc.connect_timeout,
            timeout=mc.timeout,
        )
    redis = _redis(parts)
    return RedisBackend(
        url=redis.url,
        default_ttl=redis.default_ttl,
        retries=redis.retries,
        max_value_size=redis.max_value_size,
    )


def async_backend_from_url(url: str) -> AsyncBackend:
    """Build the async backend a URL names, for :mod:`cacheorm.aio`.

    The same URLs and parameters as :func:`backend_from_url` (plus
    ``max_connections`` per memcached server), giving
    :class:`~cacheorm.AsyncFileSystemBackend`, :class:`~cacheorm.AsyncRedisBackend`
    or :class:`~cacheorm.AsyncMemcachedBackend`. ``memory://`` gives a
    :class:`~cacheorm.MemoryBackend` behind an awaitable wrapper
    (:class:`~cacheorm.backends.atiered.InProcessAsync`, the store in its
    ``.backend``), so that every URL gives an :class:`~cacheorm.AsyncBackend`
    with ``await backend.ping()`` and ``await backend.aclose()``. Nothing is
    connected until the first call.

    Raises:
        ValidationError: as :func:`backend_from_url`.
        BackendError: a ``file://`` directory that cannot be created.

    Example:
        >>> import asyncio
        >>> async def check() -> None:
        ...     backend = async_backend_from_url("memory://?default_ttl=30")
        ...     await backend.ping()
        ...     await backend.aclose()
        >>> asyncio.run(check())
    """
    parts = _split(url)
    if parts.scheme in ("memory", "file"):
        local = _local(parts)
        if local.directory is None:
            return InProcessAsync(MemoryBackend(local.max_items, local.default_ttl))
        return AsyncFileSystemBackend(
            local.directory, local.max_items, local.default_ttl, durable=local.durable
        )
    if parts.scheme == "memcached":
        mc = _memcached(parts, pooled=True)
        return AsyncMemcachedBackend(
            servers=mc.servers,
            default_ttl=mc.default_ttl,
            connect_timeout=mc.connect_timeout,
            timeout=mc.timeout,
            max_connections=mc.max_connections,
        )
    redis = _redis(parts)
    return AsyncRedisBackend(
        url=redis.url,
        default_ttl=redis.default_ttl,
        retries=redis.retries,
        max_value_size=redis.max_value_size,
    )
