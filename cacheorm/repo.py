"""The ``Repo`` value: a schema bound to a backend, a serializer, a TTL and a namespace.

A repo is a frozen, hashable value. Derive variants with ``repo.replace(ttl=60)``
or ``dataclasses.replace(repo, ttl=60)``, and attach hooks with :func:`on`.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from functools import cached_property
from typing import (
    TYPE_CHECKING,
    Final,
    Generic,
    Literal,
    TypeAlias,
    TypeVar,
    get_args,
    overload,
)

from typing_extensions import TypeVar as TypeVarWithDefault

from cacheorm.backends.base import AsyncBackend, Backend, resolve_ttl
from cacheorm.errors import ValidationError
from cacheorm.serializers.base import KeyedSerializer, Payload, Serializer
from cacheorm.serializers.registry import resolve as resolve_serializer

if TYPE_CHECKING:
    from cacheorm.codec import RecordCodec
    from cacheorm.schema import Schema
    from cacheorm.stats import Stats

__all__ = [
    "EVENTS",
    "Driver",
    "backend_driver",
    "NAMESPACE_FIELD",
    "AfterWrite",
    "AfterWriteHook",
    "BeforeWrite",
    "BeforeWriteHook",
    "DeleteEvent",
    "DeleteHook",
    "Event",
    "Hook",
    "Hooks",
    "OnBackendError",
    "Repo",
    "on",
]

# The record and key type variables, one definition for every module built on Repo.
R = TypeVar("R")
K = TypeVarWithDefault("K", default=Hashable)
KH = TypeVar("KH", bound=Hashable)  # a handler's own key type, where the repo's is unknown

Event: TypeAlias = Literal[
    "before_insert",
    "after_insert",
    "before_update",
    "after_update",
    "before_delete",
    "after_delete",
]
EVENTS: tuple[Event, ...] = get_args(Event)
BeforeWrite: TypeAlias = Literal["before_insert", "before_update"]
AfterWrite: TypeAlias = Literal["after_insert", "after_update"]
DeleteEvent: TypeAlias = Literal["before_delete", "after_delete"]

BeforeWriteHook: TypeAlias = Callable[["Repo[R, K]", R], "R | None"]
"""``handler(repo, record)`` on ``before_insert``/``before_update``: returns a
replacement record, or ``None`` to keep the record; raises to veto the write."""

AfterWriteHook: TypeAlias = Callable[["Repo[R, K]", R], object]
"""``handler(repo, record)`` on ``after_insert``/``after_update``, with the record
as stored; what it returns is ignored."""

DeleteHook: TypeAlias = Callable[["Repo[R, K]", K], object]
"""``handler(repo, key)`` on ``before_delete``/``after_delete``; a ``before_delete``
handler raises to veto the delete; what it returns is ignored."""

Hook: TypeAlias = Callable[["Repo[R, K]", object], object]
"""``handler(repo, record_or_key)`` for any event, its subject untyped: the form
hooks had before they were typed per event; :func:`on` still accepts it, and a
``before_*`` replacement it returns is checked at run time."""

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


_BACKEND_MEMBERS: Final = tuple(sorted(n for n in vars(Backend) if not n.startswith("_")))
_ASYNC_MEMBERS: Final = tuple(sorted(n for n in vars(AsyncBackend) if not n.startswith("_")))

Driver: TypeAlias = Literal["sync", "async", "both"]
"""Which functions a backend serves: ``co`` (sync I/O), ``cacheorm.aio`` (coroutines) or both
(an in-process store such as :class:`~cacheorm.MemoryBackend`, which does no I/O)."""

_DRIVERS: dict[type, Driver] = {}  # by backend type: a class's methods are sync or async for good


def backend_driver(backend: Backend | AsyncBackend) -> Driver:
    """Which functions serve ``backend`` (see :data:`Driver`); decided once per backend type.

    An :class:`AsyncBackend` has coroutine methods; an in-process store (a
    :class:`~cacheorm.MemoryBackend`, or any class with a true ``in_process``
    attribute) serves ``cacheorm.aio`` directly, its calls never blocking on I/O.
    """
    kind = type(backend)
    driver = _DRIVERS.get(kind)
    if driver is None:
        from cacheorm.backends.memory import MemoryBackend

        if inspect.iscoroutinefunction(getattr(backend, "batch", None)):
            driver = "async"
        elif isinstance(backend, MemoryBackend) or getattr(backend, "in_process", False) is True:
            driver = "both"
        else:
            driver = "sync"
        _DRIVERS[kind] = driver
    return driver


_WRAPPERS: Final = {"redis": "co.RedisBackend", "pymemcache": "co.MemcachedBackend"}
"""A driver's client given as a backend, by the driver's top-level module: its wrapper."""


def _check_backend(backend: object) -> None:
    """Refuse what is not a :class:`Backend`, before a call fails half way through.

    A redis-py or pymemcache client has some of the methods (``get``, ``set``)
    but not the rest, so it would serve a ``get`` and then fail on ``get_many``.

    Raises:
        ValidationError: naming the wrapper to use for a driver's client, or the
            members ``backend`` lacks.
    """
    # hasattr rather than isinstance(backend, Backend): Python 3.12 checks a
    # runtime protocol with getattr_static, which refuses delegating proxies.
    missing = [name for name in _BACKEND_MEMBERS if not hasattr(backend, name)]
    if not missing or all(hasattr(backend, name) for name in _ASYNC_MEMBERS):
        return
    kind = type(backend)
    wrapper = _WRAPPERS.get(kind.__module__.partition(".")[0])
    if wrapper is not None:
        raise ValidationError(
            f"backend= takes a cacheorm backend, not a {kind.__module__}.{kind.__qualname__} "
            f"client; wrap the client: backend={wrapper}(client=...)"
        )
    raise ValidationError(
        f"backend {backend!r} is not a co.Backend (nor a co.AsyncBackend): it lacks "
        f"{', '.join(missing)}; use "
        "co.MemoryBackend, co.FileSystemBackend, co.RedisBackend, co.MemcachedBackend, "
        "co.TieredBackend, an async backend (co.AsyncRedisBackend, ...) or a class "
        "implementing co.Backend or co.AsyncBackend"
    )


@dataclass(frozen=True)
class Hooks(Generic[R, K]):
    """A repo's hooks, by event, each in the order :func:`on` added them."""

    before_insert: tuple[BeforeWriteHook[R, K], ...] = ()
    before_update: tuple[BeforeWriteHook[R, K], ...] = ()
    after_insert: tuple[AfterWriteHook[R, K], ...] = ()
    after_update: tuple[AfterWriteHook[R, K], ...] = ()
    before_delete: tuple[DeleteHook[R, K], ...] = ()
    after_delete: tuple[DeleteHook[R, K], ...] = ()


@dataclass(frozen=True, eq=True)
class Repo(Generic[R, K]):
    """Where and how records of one schema are stored.

    Args:
        schema: the record type, its key and field rules.
        backend: where bytes go; ``None`` means a new in-process ``MemoryBackend``.
            Anything that is not a :class:`~cacheorm.Backend` is refused with
            :class:`ValidationError`, a driver's own client (``redis.Redis``, a
            pymemcache client) with the wrapper to put it in
            (``co.RedisBackend(client=...)``, ``co.MemcachedBackend(client=...)``).
        serializer: a registered name (``"msgpack"``, ``"json"``, ``"pickle"``, or
            one you registered) or any object with ``dumps``/``loads``.
        ttl: seconds a written record lives; ``None`` = the backend's default,
            ``0`` = never expires.
        namespace: prefix for every key, so two applications can share a server.
            Payloads also carry it where the serializer allows (see
            :attr:`marks_namespace`), so one copied between namespaces fails to decode.
        hooks: the handlers by event; add them with :func:`on`.
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
        stats: where the repo's calls are counted (see :func:`cacheorm.instrument`);
            ``None`` (default): not counted.

    Example:
        >>> import cacheorm as co
        >>> from cacheorm.demo import PERSON  # co.Schema(Person, key="name")
        >>> people = co.Repo(PERSON, ttl=60)
        >>> people.replace(ttl=0).ttl
        0
    """

    # Declared without defaults: the explicit __init__ below supplies them (and
    # resolves a serializer name), and dataclasses.replace() passes every field.
    schema: Schema[R, K]
    backend: Backend | AsyncBackend
    serializer: Serializer
    ttl: int | None
    namespace: str
    hooks: Hooks[R, K]
    on_backend_error: OnBackendError
    refresh_ttl_on_update: bool
    stats: Stats | None

    def __init__(
        self,
        schema: Schema[R, K],
        backend: Backend | AsyncBackend | None = None,
        serializer: str | Serializer = "msgpack",
        ttl: int | None = None,
        namespace: str = "",
        *,
        hooks: Hooks[R, K] | None = None,
        on_backend_error: OnBackendError = "raise",
        refresh_ttl_on_update: bool = False,
        stats: Stats | None = None,
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
        if backend is not None:
            _check_backend(backend)
        setattr_ = object.__setattr__
        setattr_(self, "schema", schema)
        setattr_(self, "backend", _default_backend() if backend is None else backend)
        setattr_(self, "serializer", resolve_serializer(serializer))
        setattr_(self, "ttl", ttl)
        setattr_(self, "namespace", namespace)
        setattr_(self, "hooks", Hooks[R, K]() if hooks is None else hooks)
        setattr_(self, "on_backend_error", on_backend_error)
        setattr_(self, "refresh_ttl_on_update", refresh_ttl_on_update)
        setattr_(self, "stats", stats)

    def __hash__(self) -> int:
        # Coarser than __eq__ (serializers and hooks compare by value), which is allowed.
        return hash((self.schema, id(self.backend), self.ttl, self.namespace))

    def replace(
        self,
        *,
        backend: Backend | AsyncBackend | None = None,
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
            stats=self.stats,
        )

    # -- hooks: called by the plans of cacheorm.crud ---------------------------

    def run_before_write(self, event: BeforeWrite, record: R) -> R:
        """The record to write once the ``event`` hooks have run, in order.

        Each handler sees the previous one's replacement, checked like any
        written record (:meth:`Schema.prepare`).

        Raises:
            ValidationError: a replacement that is not a valid record.
            Exception: whatever a handler raises to veto the write.
        """
        hooks = self.hooks
        for handler in hooks.before_insert if event == "before_insert" else hooks.before_update:
            replacement = handler(self, record)
            if replacement is not None:
                record = self.schema.prepare(replacement)
        return record

    def run_after_write(self, event: AfterWrite, record: R) -> None:
        """Call the ``event`` hooks, in order, with the record as stored."""
        hooks = self.hooks
        for handler in hooks.after_insert if event == "after_insert" else hooks.after_update:
            handler(self, record)

    def run_delete_hooks(self, event: DeleteEvent, key: K) -> None:
        """Call the ``event`` hooks, in order, with the key (``before_delete`` may veto)."""
        hooks = self.hooks
        for handler in hooks.before_delete if event == "before_delete" else hooks.after_delete:
            handler(self, key)

    # Derived, cached per repo value: the hot path reads these instead of recomputing.
    @cached_property
    def sync_backend(self) -> Backend:
        """The backend, for the synchronous functions (``co.get``...); decided once per repo.

        Raises:
            TypeError: the backend is asynchronous: use :mod:`cacheorm.aio`.
        """
        if backend_driver(self.backend) == "async":
            raise TypeError(
                f"{type(self.backend).__name__} is an async backend: use cacheorm.aio "
                "(await aio.get(repo, key)...) with this repo, not the co functions"
            )
        return self.backend  # type: ignore[return-value]  # not async, so a Backend

    @cached_property
    def aio_direct(self) -> bool:
        """For :mod:`cacheorm.aio`: ``True`` when the backend is an in-process sync store
        (run directly, it does no I/O), ``False`` when it is an :class:`AsyncBackend`.

        Raises:
            TypeError: the backend does blocking I/O: use the ``co`` functions.
        """
        driver = backend_driver(self.backend)
        if driver == "sync":
            raise TypeError(
                f"{type(self.backend).__name__} is a sync backend that blocks on I/O: "
                "use the co functions or an async backend (co.AsyncRedisBackend, "
                "co.AsyncMemcachedBackend, co.AsyncFileSystemBackend, co.AsyncTieredBackend)"
            )
        return driver == "both"

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

    @cached_property
    def codec(self) -> RecordCodec[R] | None:
        """The compiled msgpack codec of the records (:mod:`cacheorm.codec`), or ``None``.

        Compiled once per schema when the serializer is the msgpack preset
        (under ``signed``/``compressed`` too); other serializers keep the
        generic path. It reads and writes the same bytes, faster.
        """
        from cacheorm.codec import compile_codec

        return compile_codec(self)

    def __repr__(self) -> str:
        return (
            f"Repo({self.schema!r}, backend={type(self.backend).__name__}, "
            f"serializer={self.serializer!r}, ttl={self.ttl!r}, namespace={self.namespace!r})"
        )


# One overload per kind of event, so a handler of the wrong shape is a type error.
@overload
def on(repo: Repo[R, K], event: BeforeWrite, handler: BeforeWriteHook[R, K], /) -> Repo[R, K]: ...
@overload
def on(repo: Repo[R, K], event: AfterWrite, handler: AfterWriteHook[R, K], /) -> Repo[R, K]: ...
@overload
def on(repo: Repo[R, K], event: DeleteEvent, handler: DeleteHook[R, K], /) -> Repo[R, K]: ...


# A schema declared without annotation (and checked without the plugin) has the
# key type Hashable: its handlers may still name the real key type,
# ``def hook(repo: co.Repo[Person, str], record: Person) -> Person``.
@overload
def on(
    repo: Repo[R, Hashable], event: BeforeWrite, handler: BeforeWriteHook[R, KH], /
) -> Repo[R, Hashable]: ...
@overload
def on(
    repo: Repo[R, Hashable], event: AfterWrite, handler: AfterWriteHook[R, KH], /
) -> Repo[R, Hashable]: ...
@overload
def on(
    repo: Repo[R, Hashable], event: DeleteEvent, handler: DeleteHook[R, KH], /
) -> Repo[R, Hashable]: ...


# A handler that takes any subject (``Hook``, the form before hooks were typed).
@overload
def on(repo: Repo[R, K], event: Event, handler: Hook[R, K], /) -> Repo[R, K]: ...


def on(repo: Repo[R, K], event: Event, handler: Callable[..., object], /) -> Repo[R, K]:
    """Return a new repo that also calls ``handler`` on ``event``.

    ``handler(repo, subject)`` receives the record (``*_insert``, ``*_update``) or the
    key (``*_delete``). A ``before_insert``/``before_update`` handler may return a
    replacement record (or ``None`` to keep it); any ``before_*`` handler may raise to
    veto: nothing is written and the exception reaches the caller. Hooks run for
    direct calls and pipelined ops alike, once per record in batch calls.

    Typing: ``before_insert``/``before_update`` take a :data:`BeforeWriteHook`
    ``(Repo[R, K], R) -> R | None``; ``after_insert``/``after_update`` an
    :data:`AfterWriteHook` ``(Repo[R, K], R) -> object``; ``before_delete``/
    ``after_delete`` a :data:`DeleteHook` ``(Repo[R, K], K) -> object``. A
    :data:`Hook` ``(Repo[R, K], object) -> object`` suits any event.

    Example:
        >>> from typing import NamedTuple
        >>> import cacheorm as co
        >>> class Person(NamedTuple):
        ...     name: str
        ...     email: str = ""
        >>> def stamp(repo: co.Repo[Person, str], person: Person) -> Person:
        ...     return person._replace(email=f"{person.name.lower()}@example.com")
        >>> people = co.on(co.Repo(co.Schema(Person, key="name")), "before_insert", stamp)
        >>> co.insert(people, Person("Sam")).email
        'sam@example.com'

    Raises:
        ValidationError: an unknown event.
    """
    if event not in EVENTS:
        raise ValidationError(f"unknown hook event {event!r}; use one of {EVENTS}")
    hooks = repo.hooks
    added = (*getattr(hooks, event), handler)
    return dataclasses.replace(repo, hooks=dataclasses.replace(hooks, **{event: added}))
