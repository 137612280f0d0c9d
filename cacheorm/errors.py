"""The error tree: one root, a few leaves, builtin bases where they fit.

Every exception raised through the public API is a :class:`CacheORMError`.
Errors caused by a driver (redis-py, pymemcache, protobuf, ...) are chained to
the original exception with ``raise ... from err`` so nothing is lost.

The tree::

    CacheORMError
    ├── SchemaError (TypeError)
    ├── ValidationError (ValueError)
    │   ├── FieldValidationError   .path: where in the record
    │   └── ValueTooLarge
    ├── NotFound (LookupError)
    ├── AlreadyExists
    ├── DecodeError (ValueError)
    │   └── FieldLoadError         .path: where in the stored value
    ├── ConflictError
    └── BackendError               .server: which server failed

>>> err = FieldValidationError.at("items", FieldValidationError(("[1]", "weight"), "nan"))
>>> err.path, str(err)
(('items', '[1]', 'weight'), 'items[1].weight: nan')
"""

from __future__ import annotations

from typing import Self

__all__ = [
    "AlreadyExists",
    "BackendError",
    "CacheORMError",
    "ConflictError",
    "DecodeError",
    "FieldLoadError",
    "FieldValidationError",
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


class _AtPath(Exception):
    """What both field errors share: the path to the value at fault, and why.

    Attributes:
        path: field names and ``[index]`` steps down to the value.
        reason: what is wrong with the value.
    """

    def __init__(self, path: tuple[str, ...], reason: str) -> None:
        self.path = path
        self.reason = reason
        super().__init__(f"{self.where}: {reason}" if path else reason)

    def __reduce__(self) -> tuple[type[Self], tuple[tuple[str, ...], str]]:
        # Rebuilt from (path, reason), not from the message, so it pickles.
        return type(self), (self.path, self.reason)

    @property
    def where(self) -> str:
        """The path as written in code (``tags[2].label``), or ``"payload"`` if empty.

        >>> FieldLoadError(("Note", "tags", "[2]", "label"), "not a str").where
        'Note.tags[2].label'
        """
        steps = self.path
        if not steps:
            return "payload"
        return "".join(s if s.startswith("[") or not i else "." + s for i, s in enumerate(steps))

    @classmethod
    def at(cls, step: str, err: Exception) -> Self:
        """``err``, raised by the value at ``step``, as seen from one level up."""
        if isinstance(err, cls):
            return cls((step, *err.path), err.reason)
        return cls((step,), str(err) or type(err).__name__)


class FieldValidationError(_AtPath, ValidationError):
    """Raised like :class:`ValidationError` when the value at fault is inside a record.

    Its message starts with the path (``Person.height: expected float, got str``).

    Attributes:
        path: field names and ``[index]`` steps from the record to the value.
        reason: what is wrong with the value.
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


class FieldLoadError(_AtPath, DecodeError):
    """Raised by a :class:`cacheorm.Field`'s ``load`` when a value inside it cannot be read.

    Containers and nested records raise it so that the :class:`DecodeError` a
    read raises names the culprit (``Note.tags[2]``), not only the field; a
    schema's ``load`` reports it as a :class:`DecodeError` naming the schema
    and key.

    Attributes:
        path: field names and ``[index]`` steps from the field to the value.
        reason: what is wrong with the value.
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
