"""The error tree: one root, a few leaves, builtin bases where they fit.

Every exception raised through the public API is a :class:`CacheORMError`.
Errors caused by a driver (redis-py, pymemcache, protobuf, ...) are chained to
the original exception with ``raise ... from err`` so nothing is lost.
"""

from __future__ import annotations

__all__ = [
    "AlreadyExists",
    "BackendError",
    "CacheORMError",
    "ConflictError",
    "DecodeError",
    "NotFound",
    "SchemaError",
    "ValidationError",
    "ValueTooLarge",
]


class CacheORMError(Exception):
    """Base class of every error cacheorm raises."""


class SchemaError(CacheORMError, TypeError):
    """Raised at ``Schema(...)`` construction when a record type cannot be stored.

    For example an unknown key field, an unsupported annotation or a default of
    the wrong type. The message names the field and what to do about it.
    """


class ValidationError(CacheORMError, ValueError):
    """Raised before anything is written when a value cannot be stored.

    A record of the wrong type, an unknown field passed to ``update``, a value
    its field cannot hold, an illegal TTL or key.
    """


class ValueTooLarge(ValidationError):
    """Raised when a payload is larger than the backend's item size limit.

    The write did not happen, and the key no longer serves a previous value.
    """


class NotFound(CacheORMError, LookupError):
    """Raised by ``get``, ``update``, ``modify`` and ``replace`` when the key is absent."""


class AlreadyExists(CacheORMError):
    """Raised by ``add`` when the key is already present."""


class DecodeError(CacheORMError, ValueError):
    """Raised when stored bytes cannot be decoded into the record.

    Foreign bytes, corruption, a tampered signed payload or a payload of the
    wrong shape. Chained to the serializer's own exception where there is one.
    """


class ConflictError(CacheORMError):
    """Raised when an atomic read-modify-write gave up after its retries."""


class BackendError(CacheORMError):
    """Raised when the cache server is unreachable, times out or fails.

    Chained to the client library's own exception. :attr:`server` names the
    server that failed (``"host:port"``) where the backend knows it.
    """

    server: str | None

    def __init__(self, message: str, *, server: str | None = None) -> None:
        super().__init__(message)
        self.server = server
