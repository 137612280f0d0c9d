"""The record functions: ``insert``, ``get``, ``update``, ``delete`` and friends.

Each public function is a thin driver over a *plan* (see :mod:`cacheorm.engine`):
the plan says which storage commands to send and what to make of the answers;
``co.execute`` runs the very same plans in pipelines. All functions take the
repo first and positionally, never mutate their inputs, and return new records.

Nothing read from the cache is trusted: every read checks that the decoded
record is the record of the key asked for, in the repo's namespace
(:class:`DecodeError` otherwise), so a payload copied or planted under another
key is refused; ``signed(...)`` also binds the storage key into its MAC. A
loader's record must be the record of the key it was asked for
(:class:`ValidationError` otherwise, nothing stored).
"""

from __future__ import annotations

import logging
import random
import secrets
import time
from collections.abc import Callable, Hashable, Iterable, Mapping
from typing import TypeVar

from typing_extensions import TypeVar as TypeVarWithDefault

from cacheorm.backends.base import KEEP_TTL, Command
from cacheorm.engine import Plan, plan_all, run_one
from cacheorm.errors import (
    AlreadyExists,
    BackendError,
    CacheORMError,
    ConflictError,
    DecodeError,
    NotFound,
    ValidationError,
)
from cacheorm.repo import NAMESPACE_FIELD, Event, Repo

__all__ = [
    "add",
    "delete",
    "delete_many",
    "exists",
    "get",
    "get_many",
    "get_or_load",
    "get_or_none",
    "insert",
    "insert_many",
    "modify",
    "replace",
    "update",
    "update_many",
]

logger = logging.getLogger(__name__)

R = TypeVar("R")
T = TypeVar("T")
K = TypeVarWithDefault("K", default=Hashable)

LOCK_PREFIX = b"\x00lock\x00"
"""Prefix of ``get_or_load``'s stampede lock keys: keys cacheorm builds never start with
NUL (only a custom ``key_format`` producing one could meet a lock key)."""

MAX_AUTO_KEY_ATTEMPTS = 100
"""Ids an ``AutoField`` insert draws before :class:`ConflictError` (each one was taken)."""

MAX_CAS_ATTEMPTS = 100
"""Attempts of an atomic read-modify-write before :class:`ConflictError`."""


# --------------------------------------------------------------------------- helpers


def _check(result: object) -> object:
    """Raise a per-command error that a backend's ``batch`` put in a result slot."""
    if isinstance(result, BaseException):
        raise result
    return result


def _encode(repo: Repo[R, K], record: R, bkey: bytes) -> bytes:
    """A prepared record as the bytes stored under ``bkey``."""
    payload = repo.schema.dump(record)  # a fresh dict: marking it needs no copy
    if repo.namespace and repo.marks_namespace:
        payload[NAMESPACE_FIELD] = repo.namespace
    keyed = repo.keyed_serializer
    try:
        if keyed is not None:
            return keyed.dumps_keyed(payload, bkey)
        return repo.serializer.dumps(payload)
    except CacheORMError:
        raise
    except Exception as err:  # a user-supplied serializer may raise anything
        raise ValidationError(
            f"{repo.schema.name}: serializer {repo.serializer!r} cannot encode the record: {err}"
        ) from err


_PLANTED = "it was copied or planted there; delete it (get_or_load overwrites it)"


def _decode(repo: Repo[R, K], raw: bytes, key: object, bkey: bytes) -> R:
    """The record stored as ``raw`` under ``key`` (``bkey``), checked to be that key's.

    Raises:
        DecodeError: the bytes do not decode to a record of this schema, or they
            decode to the record of another key or namespace (a copied payload).
    """
    schema = repo.schema
    keyed = repo.keyed_serializer
    try:
        payload = repo.serializer.loads(raw) if keyed is None else keyed.loads_keyed(raw, bkey)
    except CacheORMError as err:
        raise DecodeError(f"{schema.name} key {key!r}: {err}") from err
    except Exception as err:  # a user-supplied serializer may raise anything
        raise DecodeError(f"{schema.name} key {key!r}: cannot decode payload: {err}") from err
    # The mark is compared first: a matching one (the common case) never needs
    # the serializer probe behind marks_namespace.
    mark = payload.get(NAMESPACE_FIELD) if type(payload) is dict else None
    if mark != (repo.namespace or None) and repo.marks_namespace:
        raise DecodeError(
            f"{schema.name} key {key!r}: the payload was written under namespace "
            f"{mark or ''!r}, not {repo.namespace!r}: {_PLANTED}"
        )
    record = schema.load(payload, key)
    found = schema.key_of(record)
    if found != key and not _same_key(repo, found, bkey):
        raise DecodeError(
            f"{schema.name} key {key!r}: the payload holds the record of key {found!r}: {_PLANTED}"
        )
    return record


def _same_key(repo: Repo[R, K], key: K, bkey: bytes) -> bool:
    """Whether ``key`` is stored as ``bkey`` (equal once normalised, e.g. ``1.0`` and ``1``)."""
    try:
        return repo.schema.encode_key(key, repo.namespace) == bkey
    except ValidationError:
        return False


def _before(repo: Repo[R, K], event: Event, record: R) -> R:
    for handler in repo.handlers[event]:
        replacement = handler(repo, record)
        if replacement is not None:
            record = repo.schema.prepare(replacement)  # type: ignore[arg-type]  # checked by prepare
    return record


def _notify(repo: Repo[R, K], event: Event, subject: object) -> None:
    for handler in repo.handlers[event]:
        handler(repo, subject)


def _backoff(attempt: int) -> None:
    # Full jitter: spreads contending writers so one of them wins each round.
    time.sleep(random.uniform(0, min(0.02, 0.0005 * 2**attempt)))


def key_list(keys: Iterable[K]) -> list[K]:
    """The keys as a list; a lone ``str``/``bytes`` is refused, not split into characters."""
    if isinstance(keys, str | bytes):
        raise ValidationError(f"expected a list of keys, got the single key {keys!r}")
    return list(keys)


def _miss_mode(repo: Repo[R, K]) -> bool:
    return repo.on_backend_error == "miss"


def _read(repo: Repo[R, K], answer: object) -> object:
    """A read command's answer; with ``on_backend_error="miss"`` an outage reads as a miss.

    Only reads degrade so: every other command's ``BackendError`` is raised by
    :func:`_check` in either mode (a write or delete that did not happen).
    """
    if isinstance(answer, BaseException):
        if isinstance(answer, BackendError) and _miss_mode(repo):
            return None
        raise answer
    return answer


# --------------------------------------------------------------------------- plans


def plan_insert(repo: Repo[R, K], record: R, *, only_new: bool = False) -> Plan[R]:
    """Upsert one record (``only_new``: ``add`` semantics)."""
    (stored,) = yield from _plan_write(repo, [repo.schema.prepare(record)], only_new)
    return stored


def plan_insert_many(repo: Repo[R, K], records: Iterable[R]) -> Plan[list[R]]:
    """Upsert several records: one counter call for auto keys, one write call."""
    schema = repo.schema
    return (yield from _plan_write(repo, [schema.prepare(r) for r in records], False))


def _plan_write(repo: Repo[R, K], prepared: list[R], only_new: bool) -> Plan[list[R]]:
    """Write prepared records, assigning ``AutoField`` keys from the backend's counter.

    A record given an automatic key is written with ``add``: if that id is taken
    (a record inserted earlier with an explicit id), it draws the next one
    instead of overwriting the other record.
    """
    schema = repo.schema
    ns, ttl = repo.namespace, repo.ttl
    auto = {i for i, r in enumerate(prepared) if schema.auto_key and schema.key_of(r) is None}
    stored = list(prepared)
    todo = list(range(len(stored)))
    for _ in range(MAX_AUTO_KEY_ATTEMPTS):
        waiting = [i for i in todo if i in auto]
        if waiting:
            counter = schema.counter_key(ns)
            (last,) = yield [Command("incr", counter, delta=len(waiting))]
            first = _as_int(_check(last)) - len(waiting) + 1
            for offset, i in enumerate(waiting):
                stored[i] = _before(
                    repo, "before_insert", schema.with_key(prepared[i], first + offset)
                )
        for i in todo:
            if i not in auto:
                stored[i] = _before(repo, "before_insert", stored[i])
        bkeys = [schema.encode_key(schema.key_of(stored[i]), ns) for i in todo]
        commands = [
            Command(
                "add" if only_new or i in auto else "set",
                bkey,
                _encode(repo, stored[i], bkey),
                ttl=ttl,
            )
            for i, bkey in zip(todo, bkeys, strict=True)
        ]
        if not commands:
            return []
        results = yield commands
        retry = []
        for i, ok in zip(todo, results, strict=True):
            if _check(ok):
                continue
            if i not in auto:
                raise AlreadyExists(f"{schema.name} {schema.key_of(stored[i])!r} already exists")
            retry.append(i)
        for i in todo:
            if i not in retry:
                _notify(repo, "after_insert", stored[i])
        if not retry:
            return stored
        auto = set(retry)
        todo = retry
    raise ConflictError(
        f"{schema.name}: every automatic id drawn in {MAX_AUTO_KEY_ATTEMPTS} attempts was taken"
    )


def plan_get_or_none(repo: Repo[R, K], key: K) -> Plan[R | None]:
    """Read one record, ``None`` when missing."""
    bkey = repo.schema.encode_key(key, repo.namespace)
    (raw,) = yield [Command("get", bkey)]
    raw = _read(repo, raw)
    if raw is None:
        return None
    return _decode(repo, _as_bytes(raw), key, bkey)


def plan_get(repo: Repo[R, K], key: K) -> Plan[R]:
    """Read one record; :class:`NotFound` when missing."""
    record = yield from plan_get_or_none(repo, key)
    if record is None:
        raise NotFound(f"{repo.schema.name} {key!r} not found")
    return record


def plan_get_many(repo: Repo[R, K], keys: Iterable[K]) -> Plan[list[R | None]]:
    """Read several records in key order, ``None`` for each missing one."""
    keys = key_list(keys)
    if not keys:
        return []
    encode, ns = repo.schema.encode_key, repo.namespace
    bkeys = [encode(k, ns) for k in keys]
    raws = yield [Command("get", bkey) for bkey in bkeys]
    records: list[R | None] = []
    for k, bkey, raw in zip(keys, bkeys, raws, strict=True):
        raw = _read(repo, raw)
        records.append(None if raw is None else _decode(repo, _as_bytes(raw), k, bkey))
    return records


def plan_exists(repo: Repo[R, K], key: K) -> Plan[bool]:
    """Whether a record is stored under ``key``."""
    (found,) = yield [Command("has", repo.schema.encode_key(key, repo.namespace))]
    return bool(_read(repo, found))


def _plan_rmw(repo: Repo[R, K], key: K, bkey: bytes, change: Callable[[R], R]) -> Plan[R]:
    """Atomic read-modify-write of ``key`` (stored as ``bkey``) on the backend's CAS."""
    schema = repo.schema
    ttl = repo.ttl if repo.refresh_ttl_on_update else KEEP_TTL
    for attempt in range(MAX_CAS_ATTEMPTS):
        (got,) = yield [Command("gets", bkey)]
        if _check(got) is None:
            raise NotFound(f"{schema.name} {key!r} not found")
        raw, token = _as_pair(got)
        new = change(_decode(repo, raw, key, bkey))
        new = _before(repo, "before_update", new)
        if schema.encode_key(schema.key_of(new), repo.namespace) != bkey:
            raise ValidationError(
                f"{schema.name} {key!r}: an update cannot change the key "
                f"(got {schema.key_of(new)!r}); insert a new record and delete the old one"
            )
        (ok,) = yield [Command("cas", bkey, _encode(repo, new, bkey), ttl=ttl, token=token)]
        if _check(ok):
            _notify(repo, "after_update", new)
            return new
        _backoff(attempt)
    raise ConflictError(
        f"{schema.name} {key!r}: gave up after {MAX_CAS_ATTEMPTS} attempts under contention"
    )


def _check_changes(repo: Repo[R, K], key: K, changes: Mapping[str, object]) -> bytes:
    """Validate an update before anything is read or written; return the stored key.

    Raises:
        ValidationError: a bad key, or changes that no record could take (see
            :meth:`Schema.check_changes`: an unknown or key field, a value,
            ``None`` included, that its field cannot store).
    """
    bkey = repo.schema.encode_key(key, repo.namespace)
    repo.schema.check_changes(changes)
    return bkey


def plan_update(repo: Repo[R, K], key: K, changes: Mapping[str, object]) -> Plan[R]:
    """Change the named fields of one record atomically."""
    bkey = _check_changes(repo, key, changes)
    changes = dict(changes)
    return (yield from _plan_rmw(repo, key, bkey, lambda old: repo.schema.evolve(old, changes)))


def plan_modify(repo: Repo[R, K], key: K, fn: Callable[[R], R]) -> Plan[R]:
    """Replace one record by ``fn(old)`` atomically."""
    bkey = repo.schema.encode_key(key, repo.namespace)
    return (yield from _plan_rmw(repo, key, bkey, lambda old: repo.schema.prepare(fn(old))))


def _or_none(plan: Plan[T]) -> Plan[T | None]:
    try:
        return (yield from plan)
    except NotFound:
        return None


def plan_update_many(
    repo: Repo[R, K], changes: Mapping[K, Mapping[str, object]]
) -> Plan[list[R | None]]:
    """Update several records: all reads in one phase, all writes in the next.

    Every key and change is validated first, so a bad one writes nothing.
    """
    for key, fields in changes.items():
        _check_changes(repo, key, fields)
    updates = [plan_update(repo, key, fields) for key, fields in changes.items()]
    results = yield from plan_all([_or_none(update) for update in updates])
    out: list[R | None] = []
    for result in results:
        if isinstance(result, Exception):
            raise result
        out.append(result)
    return out


def plan_replace(repo: Repo[R, K], record: R) -> Plan[R]:
    """Overwrite an existing record; :class:`NotFound` when absent."""
    schema = repo.schema
    prepared = schema.prepare(record)
    stored = _before(repo, "before_update", prepared)
    key = schema.key_of(stored)
    if schema.key_of(prepared) != key:
        raise ValidationError(
            f"{schema.name}: a before_update hook cannot change the key "
            f"({schema.key_of(prepared)!r} -> {key!r})"
        )
    bkey = schema.encode_key(key, repo.namespace)
    (ok,) = yield [Command("replace", bkey, _encode(repo, stored, bkey), ttl=repo.ttl)]
    if not _check(ok):
        raise NotFound(f"{schema.name} {key!r} not found")
    _notify(repo, "after_update", stored)
    return stored


def plan_delete(repo: Repo[R, K], key: K) -> Plan[bool]:
    """Delete one record; whether it existed."""
    bkey = repo.schema.encode_key(key, repo.namespace)
    _notify(repo, "before_delete", key)
    (existed,) = yield [Command("delete", bkey)]
    existed = bool(_check(existed))
    _notify(repo, "after_delete", key)
    return existed


def plan_delete_many(repo: Repo[R, K], keys: Iterable[K]) -> Plan[int]:
    """Delete several records; how many existed."""
    keys = key_list(keys)
    if not keys:
        return 0
    encode, ns = repo.schema.encode_key, repo.namespace
    bkeys = [encode(k, ns) for k in keys]
    for k in keys:
        _notify(repo, "before_delete", k)
    results = yield [Command("delete", b) for b in bkeys]
    count = sum(1 for r in results if _check(r))
    for k in keys:
        _notify(repo, "after_delete", k)
    return count


def plan_get_or_load(
    repo: Repo[R, K],
    key: K,
    loader: Callable[[K], R],
    lock_ttl: int = 10,
    wait: float = 10.0,
) -> Plan[R]:
    """Read-through with stampede protection (see :func:`get_or_load`)."""
    _check_lock_settings(lock_ttl, wait)
    schema = repo.schema
    bkey = schema.encode_key(key, repo.namespace)
    lock = LOCK_PREFIX + bkey
    token = secrets.token_bytes(16)
    deadline = time.monotonic() + wait
    attempt = 0
    while True:
        found = yield from _plan_read_valid(repo, bkey, key)
        if isinstance(found, BackendError):
            return _load(repo, key, bkey, loader)  # miss mode, server down: nothing to store in
        if found is not None:
            return found
        (locked,) = yield [Command("add", lock, token, ttl=lock_ttl)]
        if isinstance(locked, BackendError) and _miss_mode(repo):
            # The lock cannot be taken: load without it, as after `wait`.
            return (yield from _plan_store_loaded(repo, _load(repo, key, bkey, loader)))
        if _check(locked):
            try:
                # Another caller may have stored it between our read and our lock.
                found = yield from _plan_read_valid(repo, bkey, key)
                if found is not None and not isinstance(found, BackendError):
                    return found
                return (yield from _plan_store_loaded(repo, _load(repo, key, bkey, loader)))
            finally:
                yield from _plan_release(lock, token)
        if time.monotonic() >= deadline:
            logger.warning(
                "get_or_load %s %r: lock holder still busy after %.1fs; loading without the lock",
                schema.name,
                key,
                wait,
            )
            return (yield from _plan_store_loaded(repo, _load(repo, key, bkey, loader)))
        time.sleep(min(0.05, 0.002 * 2**attempt))
        attempt += 1


def _check_lock_settings(lock_ttl: object, wait: object) -> None:
    """Refuse a ``lock_ttl`` that would never expire and a ``wait`` below zero."""
    if isinstance(lock_ttl, bool) or not isinstance(lock_ttl, int) or lock_ttl < 1:
        raise ValidationError(
            f"lock_ttl must be a positive int of seconds, got {lock_ttl!r}: it is how long "
            "a crashed loader's lock blocks the key (0 would block it forever)"
        )
    if isinstance(wait, bool) or not isinstance(wait, int | float) or not wait >= 0:
        raise ValidationError(f"wait must be a number of seconds >= 0, got {wait!r}")


def _load(repo: Repo[R, K], key: K, bkey: bytes, loader: Callable[[K], R]) -> R:
    """``loader(key)``, prepared, checked to be the record of ``key``.

    Raises:
        ValidationError: the loader returned something that is not a record of
            the schema, or the record of another key (nothing is stored).
    """
    schema = repo.schema
    record = schema.prepare(loader(key))
    found = schema.key_of(record)
    if found != key and not _same_key(repo, found, bkey):
        name = getattr(loader, "__qualname__", None) or repr(loader)
        raise ValidationError(
            f"{schema.name}: loader {name} was asked for key {key!r} but returned the record "
            f"of key {found!r}; nothing was stored. Return the record of the key asked for"
        )
    return record


def _plan_store_loaded(repo: Repo[R, K], record: R) -> Plan[R]:
    """Store a loaded, prepared record; in miss mode an outage returns it unstored."""
    try:
        (stored,) = yield from _plan_write(repo, [record], False)
    except BackendError:
        if not _miss_mode(repo):
            raise
        return record
    return stored


def _plan_read_valid(repo: Repo[R, K], bkey: bytes, key: K) -> Plan[R | BackendError | None]:
    """Read a record; an undecodable payload counts as a miss (and is overwritten later).

    Returns:
        The record, ``None`` on a miss, or, in miss mode, the ``BackendError``
        that kept the read from reaching the server.
    """
    try:
        (raw,) = yield [Command("get", bkey)]
    except DecodeError:
        raw = None  # the store cannot hand back bytes (a Redis key of another type)
    if isinstance(raw, BackendError) and _miss_mode(repo):
        return raw
    if isinstance(raw, DecodeError):
        raw = None
    if _check(raw) is None:
        return None
    try:
        return _decode(repo, _as_bytes(raw), key, bkey)
    except DecodeError as err:
        logger.warning(
            "%s %r: undecodable payload treated as a miss: %s", repo.schema.name, key, err
        )
        return None


def _plan_release(lock: bytes, token: bytes) -> Plan[None]:
    """Delete the stampede lock only if we still own it."""
    (got,) = yield [Command("gets", lock)]
    if got is not None and not isinstance(got, BaseException):
        value, cas_token = _as_pair(got)
        if value == token:
            yield [Command("delete_if", lock, token=cas_token)]
    return None


def _as_bytes(value: object) -> bytes:
    assert isinstance(value, bytes), value
    return value


def _as_int(value: object) -> int:
    assert isinstance(value, int), value
    return value


def _as_pair(value: object) -> tuple[bytes, object]:
    assert isinstance(value, tuple), value
    raw, token = value
    return _as_bytes(raw), token


# --------------------------------------------------------------------------- public API
#
# With on_backend_error="miss" (see Repo), reads degrade during an outage and
# writes do not: the Raises sections below name BackendError for the calls
# that raise it in both modes.


def insert(repo: Repo[R, K], record: R, /) -> R:
    """Store a record (insert or overwrite) and return it as stored.

    Defaults are applied and an ``AutoField`` key is assigned when it is ``None``.

    Raises:
        ValidationError: the record is not of the repo's type or a value cannot be stored.
        BackendError: the server is unreachable; in either ``on_backend_error``
            mode, as the record was not stored.
    """
    return run_one(repo.backend, plan_insert(repo, record), _miss_mode(repo))


def insert_many(repo: Repo[R, K], records: Iterable[R], /) -> list[R]:
    """Store several records in one round trip; return them as stored, in order.

    Raises:
        ValidationError: a record cannot be stored (nothing is written).
        BackendError: a write did not reach its server, in either
            ``on_backend_error`` mode (on a pool, records on healthy nodes are stored).
    """
    return run_one(repo.backend, plan_insert_many(repo, records), _miss_mode(repo))


def add(repo: Repo[R, K], record: R, /) -> R:
    """Store a record only if its key is absent (atomically).

    Raises:
        AlreadyExists: a record with that key is already stored.
        BackendError: the server is unreachable, in either ``on_backend_error`` mode.
    """
    return run_one(repo.backend, plan_insert(repo, record, only_new=True), _miss_mode(repo))


def get(repo: Repo[R, K], key: K, /) -> R:
    """Return the record stored under ``key``.

    Raises:
        NotFound: no record under ``key`` (a ``LookupError``); also during an
            outage with ``on_backend_error="miss"``.
        DecodeError: the stored bytes are not a valid record of this schema, or
            are the record of another key or namespace (copied there).
        BackendError: the server is unreachable (``on_backend_error="raise"``).
    """
    return run_one(repo.backend, plan_get(repo, key), _miss_mode(repo))


def get_or_none(repo: Repo[R, K], key: K, /) -> R | None:
    """Return the record stored under ``key``, or ``None``.

    With ``on_backend_error="miss"`` an outage returns ``None``.

    Raises:
        DecodeError: as for :func:`get`.
        BackendError: the server is unreachable (``on_backend_error="raise"``).
    """
    plan = plan_get_or_none(repo, key)
    return run_one(repo.backend, plan, _miss_mode(repo))


def get_many(repo: Repo[R, K], keys: Iterable[K], /) -> list[R | None]:
    """Return the records in key order, ``None`` where missing, in one round trip.

    With ``on_backend_error="miss"`` a key whose server is down is ``None``
    (on a pool, keys on healthy nodes are still served).

    Raises:
        DecodeError: as for :func:`get`.
        BackendError: a key's server is unreachable (``on_backend_error="raise"``).
    """
    return run_one(repo.backend, plan_get_many(repo, keys), _miss_mode(repo))


def exists(repo: Repo[R, K], key: K, /) -> bool:
    """Return whether a record is stored under ``key``.

    With ``on_backend_error="miss"`` an outage returns ``False``.
    """
    return run_one(repo.backend, plan_exists(repo, key), _miss_mode(repo))


def update(repo: Repo[R, K], key: K, /, **changes: object) -> R:
    """Change only the named fields of a stored record, atomically; return the new record.

    Concurrent writers never lose each other's changes: the write is a
    compare-and-set retried on conflict. The record's remaining TTL is kept
    unless the repo has ``refresh_ttl_on_update=True``.

    Raises:
        NotFound: no record under ``key`` (nothing is created).
        ValidationError: an unknown field or a value its field cannot store.
        DecodeError: as for :func:`get`.
        ConflictError: still conflicting after ``MAX_CAS_ATTEMPTS`` attempts.
        BackendError: the server is unreachable, in either ``on_backend_error``
            mode: nothing was written.
    """
    return run_one(repo.backend, plan_update(repo, key, changes), _miss_mode(repo))


def modify(repo: Repo[R, K], key: K, fn: Callable[[R], R], /) -> R:
    """Replace the record under ``key`` by ``fn(old)`` atomically; return the new record.

    ``fn`` may be called more than once under contention; it must be pure.

    Raises:
        NotFound, DecodeError, ConflictError, BackendError: as for :func:`update`.
    """
    return run_one(repo.backend, plan_modify(repo, key, fn), _miss_mode(repo))


def update_many(repo: Repo[R, K], changes: Mapping[K, Mapping[str, object]], /) -> list[R | None]:
    """Apply ``{key: {field: value}}`` atomically per record; ``None`` where missing.

    All reads go in one round trip and all writes in another. Every change is
    validated before anything is read, so a bad one writes nothing.

    Raises:
        ValidationError: a bad key or change (nothing is written).
        BackendError: a record's server is unreachable, in either
            ``on_backend_error`` mode (records on healthy nodes are updated).
    """
    return run_one(repo.backend, plan_update_many(repo, changes), _miss_mode(repo))


def replace(repo: Repo[R, K], record: R, /) -> R:
    """Overwrite an existing record.

    Raises:
        NotFound: no record with that key is stored.
        BackendError: the server is unreachable, in either ``on_backend_error`` mode.
    """
    return run_one(repo.backend, plan_replace(repo, record), _miss_mode(repo))


def delete(repo: Repo[R, K], key: K, /) -> bool:
    """Delete the record under ``key``; return whether it existed.

    Raises:
        BackendError: the server is unreachable, in either ``on_backend_error``
            mode: a delete is never skipped silently, as the old value would be
            served again once the server answers.
    """
    return run_one(repo.backend, plan_delete(repo, key), _miss_mode(repo))


def delete_many(repo: Repo[R, K], keys: Iterable[K], /) -> int:
    """Delete several records in one round trip; return how many existed.

    Raises:
        BackendError: as for :func:`delete` (keys on healthy nodes are deleted).
    """
    return run_one(repo.backend, plan_delete_many(repo, keys), _miss_mode(repo))


def get_or_load(
    repo: Repo[R, K],
    key: K,
    loader: Callable[[K], R],
    /,
    *,
    lock_ttl: int = 10,
    wait: float = 10.0,
) -> R:
    """Return the stored record, or load, store and return it on a miss.

    On a miss exactly one caller (across threads and processes sharing the
    backend) runs ``loader(key)``: it takes a short-lived lock key with an atomic
    ``add``, and only the owner releases it. Others poll for the stored result
    for up to ``wait`` seconds, then load it themselves. An exception from
    ``loader`` reaches its caller and releases the lock. A payload that cannot
    be decoded (or holds another key's record) counts as a miss and is
    overwritten.

    With ``on_backend_error="miss"``, when the server is down the loader is
    called and its record returned without being stored; when only the lock
    cannot be taken, the record is loaded without the lock.

    Args:
        lock_ttl: seconds after which a crashed owner's lock expires (``>= 1``).
        wait: seconds a caller waits for another caller's load (``>= 0``).

    Raises:
        ValidationError: the loader returned the record of another key (nothing
            is stored), or an illegal ``lock_ttl``/``wait``.
        BackendError: the server is unreachable (``on_backend_error="raise"``).
    """
    plan = plan_get_or_load(repo, key, loader, lock_ttl, wait)
    return run_one(repo.backend, plan, _miss_mode(repo))
