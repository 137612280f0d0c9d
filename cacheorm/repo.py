"""The ``Repo`` value: a schema bound to a backend, a serializer, a TTL and a namespace.

A repo is a frozen, hashable value. Derive variants with ``repo.replace(ttl=60)``
or ``dataclasses.replace(repo, ttl=60)``, and attach hooks with :func:`on`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING, Generic, Literal, TypeAlias, TypeVar, get_args

from typing_extensions import TypeVar as TypeVarWithDefault

from cacheorm.backends.base import Backend, resolve_ttl
from cacheorm.errors import ValidationError
from cacheorm.serializers.base import Serializer
from cacheorm.serializers.registry import resolve as resolve_serializer

if TYPE_CHECKING:
    from cacheorm.schema import Schema

__all__ = ["EVENTS", "Event", "Hook", "OnBackendError", "Repo", "on"]

R = TypeVar("R")
K = TypeVarWithDefault("K", default=Hashable)

Event: TypeAlias = Literal[
    "before_insert",
    "after_insert",
    "before_update",
    "after_update",
    "before_delete",
    "after_delete",
]
EVENTS: tuple[Event, ...] = get_args(Event)

Hook: TypeAlias = Callable[["Repo[R, K]", object], object]
"""``handler(repo, record_or_key)``; a ``before_*`` hook may return a replacement or veto."""

OnBackendError: TypeAlias = Literal["raise", "miss"]


def _default_backend() -> Backend:
    from cacheorm.backends.memory import MemoryBackend

    return MemoryBackend()


@dataclass(frozen=True, eq=True)
class Repo(Generic[R, K]):
    """Where and how records of one schema are stored.

    Args:
        schema: the record type, its key and field rules.
        backend: where bytes go; ``None`` means a new in-process ``MemoryBackend``.
        serializer: a registered name (``"msgpack"``, ``"json"``, ``"pickle"``, or
            one you registered) or any object with ``dumps``/``loads``.
        ttl: seconds a written record lives; ``None`` = the backend's default,
            ``0`` = never expires.
        namespace: prefix for every key, so two applications can share a server.
        hooks: ``(event, handler)`` pairs; add them with :func:`on`.
        on_backend_error: ``"raise"`` (default) raises :class:`BackendError` when the
            server is unreachable; ``"miss"`` treats an outage as a cache miss: reads
            miss, writes are skipped, and each outage is logged once and counted.
        refresh_ttl_on_update: ``False`` (default) keeps a record's remaining
            lifetime on ``update``/``modify``; ``True`` restarts it with ``ttl``.

    Example:
        >>> from typing import NamedTuple
        >>> import cacheorm as co
        >>> class Person(NamedTuple):
        ...     name: str
        ...     height: float
        >>> people = co.Repo(co.Schema(Person, key="name"), ttl=60)
        >>> people.replace(ttl=0).ttl
        0
    """

    # Declared without defaults: the explicit __init__ below supplies them (and
    # resolves a serializer name), and dataclasses.replace() passes every field.
    schema: Schema[R, K]
    backend: Backend
    serializer: Serializer
    ttl: int | None
    namespace: str
    hooks: tuple[tuple[Event, Hook[R, K]], ...]
    on_backend_error: OnBackendError
    refresh_ttl_on_update: bool

    def __init__(
        self,
        schema: Schema[R, K],
        backend: Backend | None = None,
        serializer: str | Serializer = "msgpack",
        ttl: int | None = None,
        namespace: str = "",
        *,
        hooks: tuple[tuple[Event, Hook[R, K]], ...] = (),
        on_backend_error: OnBackendError = "raise",
        refresh_ttl_on_update: bool = False,
    ) -> None:
        from cacheorm.schema import Schema

        if not isinstance(schema, Schema):
            raise ValidationError(f"Repo needs a co.Schema, got {schema!r}")
        resolve_ttl(ttl, 0)  # validates: ValidationError for a negative or non-int TTL
        if not isinstance(namespace, str):
            raise ValidationError(f"namespace must be a str, got {namespace!r}")
        if on_backend_error not in ("raise", "miss"):
            raise ValidationError(
                f"on_backend_error must be 'raise' or 'miss', got {on_backend_error!r}"
            )
        for event, _ in hooks:
            if event not in EVENTS:
                raise ValidationError(f"unknown hook event {event!r}; use one of {EVENTS}")
        setattr_ = object.__setattr__
        setattr_(self, "schema", schema)
        setattr_(self, "backend", _default_backend() if backend is None else backend)
        setattr_(self, "serializer", resolve_serializer(serializer))
        setattr_(self, "ttl", ttl)
        setattr_(self, "namespace", namespace)
        setattr_(self, "hooks", tuple(hooks))
        setattr_(self, "on_backend_error", on_backend_error)
        setattr_(self, "refresh_ttl_on_update", refresh_ttl_on_update)

    def __hash__(self) -> int:
        # Coarser than __eq__ (serializers and hooks compare by value), which is allowed.
        return hash((self.schema, id(self.backend), self.ttl, self.namespace))

    def replace(
        self,
        *,
        backend: Backend | None = None,
        serializer: str | Serializer | None = None,
        ttl: int | Literal["keep"] | None = "keep",
        namespace: str | None = None,
        on_backend_error: OnBackendError | None = None,
        refresh_ttl_on_update: bool | None = None,
    ) -> Repo[R, K]:
        """Return a copy with the given settings changed (``ttl=None``: the backend default)."""
        return Repo(
            self.schema,
            self.backend if backend is None else backend,
            self.serializer if serializer is None else serializer,
            self.ttl if ttl == "keep" else ttl,
            self.namespace if namespace is None else namespace,
            hooks=self.hooks,
            on_backend_error=self.on_backend_error
            if on_backend_error is None
            else on_backend_error,
            refresh_ttl_on_update=(
                self.refresh_ttl_on_update
                if refresh_ttl_on_update is None
                else refresh_ttl_on_update
            ),
        )

    # Derived, cached per repo value: the hot path reads these instead of recomputing.
    @cached_property
    def handlers(self) -> dict[Event, tuple[Hook[R, K], ...]]:
        """Hooks by event, in the order they were added."""
        return {ev: tuple(h for e, h in self.hooks if e == ev) for ev in EVENTS}

    def __repr__(self) -> str:
        return (
            f"Repo({self.schema!r}, backend={type(self.backend).__name__}, "
            f"serializer={self.serializer!r}, ttl={self.ttl!r}, namespace={self.namespace!r})"
        )


def on(repo: Repo[R, K], event: Event, handler: Hook[R, K], /) -> Repo[R, K]:
    """Return a new repo that also calls ``handler`` on ``event``.

    ``handler(repo, subject)`` receives the record (``*_insert``, ``*_update``) or the
    key (``*_delete``). A ``before_*`` handler may return a replacement record (or
    ``None`` to keep it) and may raise to veto the write: nothing is written and the
    exception reaches the caller. Hooks run for direct calls and pipelined ops alike,
    once per record in batch calls.
    """
    if event not in EVENTS:
        raise ValidationError(f"unknown hook event {event!r}; use one of {EVENTS}")
    return dataclasses.replace(repo, hooks=(*repo.hooks, (event, handler)))
