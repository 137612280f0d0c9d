"""The ``Repo`` value: a schema bound to a backend, a serializer, a TTL and a namespace.

A repo is a frozen, hashable value. Derive variants with ``repo.replace(ttl=60)``
or ``dataclasses.replace(repo, ttl=60)``, and attach hooks with :func:`on`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING, Final, Generic, Literal, TypeAlias, TypeVar, get_args

from typing_extensions import TypeVar as TypeVarWithDefault

from cacheorm.backends.base import Backend, resolve_ttl
from cacheorm.errors import ValidationError
from cacheorm.serializers.base import KeyedSerializer, Payload, Serializer
from cacheorm.serializers.registry import resolve as resolve_serializer

if TYPE_CHECKING:
    from cacheorm.schema import Schema

__all__ = ["EVENTS", "NAMESPACE_FIELD", "Event", "Hook", "OnBackendError", "Repo", "on"]

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

NAMESPACE_FIELD: Final = "\x00ns"
"""The payload entry naming the namespace a record was written under.

No record field has this name (NamedTuple and dataclass fields are
identifiers; a TypedDict field of that name turns the mark off), so it cannot
meet a field; :meth:`Schema.load` ignores it as it ignores any extra field.
"""


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
            Payloads also carry it where the serializer allows (see
            :attr:`marks_namespace`), so one copied between namespaces fails to decode.
        hooks: ``(event, handler)`` pairs; add them with :func:`on`.
        on_backend_error: ``"raise"`` (default) raises :class:`BackendError` when the
            server is unreachable. ``"miss"`` lets *reads* degrade during an outage:
            ``get_or_none``, ``get_many`` and ``exists`` miss (``None``/``False``),
            ``get`` raises :class:`NotFound`, and ``get_or_load`` calls its loader
            and returns that record without storing it (when only its lock cannot
            be taken, it loads without the lock). Every *write or delete* that did
            not happen still raises :class:`BackendError`, as in ``"raise"`` mode
            (``insert``, ``add``, ``replace``, ``update``, ``modify``, ``delete``
            and their ``_many`` forms): a write is never reported as stored when
            it was not, and a delete is never silently skipped (which would let
            the old value be served once the server is back). On a pool with one
            node down, keys on the healthy nodes keep working in both modes.
            In :func:`cacheorm.execute`, each op follows its own repo's setting.
            Each server's outage is logged
            once when it starts and once when it ends (see
            :class:`cacheorm.engine.Outage`).
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

    @cached_property
    def keyed_serializer(self) -> KeyedSerializer | None:
        """The serializer when it takes the storage key with each payload, else ``None``.

        Decided once per repo. ``signed(...)`` binds the key (namespace
        included) into its MAC, so a payload copied under another key or
        namespace fails to verify before its contents are looked at;
        ``compressed(...)`` passes the key on to what it wraps.
        """
        serializer = self.serializer
        return serializer if isinstance(serializer, KeyedSerializer) else None

    @cached_property
    def marks_namespace(self) -> bool:
        """Whether payloads carry the repo's namespace in :data:`NAMESPACE_FIELD`.

        A payload written under one namespace then fails to decode under another
        (a read checks the mark: exactly this namespace, or none under ``""``).
        ``False`` when the serializer cannot carry an extra field:
        :class:`~cacheorm.ProtobufSerializer` refuses fields its message lacks,
        and so does any serializer whose round trip loses the field. Such
        payloads rely on the read's check that the record's key is the key
        asked for, which a copy under the same key in another namespace
        passes; ``signed(...)`` binds the whole storage key (namespace
        included) into its MAC whatever the inner serializer.
        """
        if NAMESPACE_FIELD in self.schema.field_names:
            return False
        probe: Payload = {NAMESPACE_FIELD: "probe"}
        try:
            return self.serializer.loads(self.serializer.dumps(probe)) == probe
        except Exception:  # a serializer may refuse the field with anything: then no mark
            return False

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
