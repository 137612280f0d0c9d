"""The record functions: ``insert``, ``get``, ``update``, ``delete`` and friends.

Each public function is declared once, here, as a *plan* (see
:mod:`cacheorm.engine`): the plan says which storage commands to send, when to
wait and which user code to call, and what to make of the answers.
:func:`~cacheorm.engine.declare` turns it into the synchronous function
(``co.get``), :mod:`cacheorm.ops` into the op builder (``co.ops.get``) whose
ops ``co.execute`` runs in pipelines; ``__all__`` names every declared
function, and ``cacheorm``, ``cacheorm.ops`` and the mypy plugin read it. All
functions take the repo first and positionally, never mutate their inputs, and
return new records.

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
from typing import Final, Generic, NamedTuple, TypeVar, cast, overload

from cacheorm import stats
from cacheorm.backends.base import (
    KEEP_TTL,
    Add,
    Cas,
    Clear,
    Command,
    Delete,
    DeleteIf,
    Get,
    Gets,
    Incr,
    Replace,
    Set,
    is_int,
)
from cacheorm.engine import Plan, Sleep, T, declare, invoke, plan_all
from cacheorm.errors import (
    AlreadyExists,
    BackendError,
    CacheORMError,
    ConflictError,
    DecodeError,
    NotFound,
    ValidationError,
)
from cacheorm.repo import NAMESPACE_FIELD, AfterWrite, BeforeWrite, DeleteEvent, K, R, Repo

# The public functions: every name here is declared below with @declare, once.
__all__ = [
    "add",
    "clear",
    "delete",
    "delete_many",
    "exists",
    "get",
    "get_many",
    "get_many_or_load",
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

KL = TypeVar("KL", bound=Hashable)  # a loader's own key type, where the repo's is unknown

LOCK_PREFIX = b"\x00lock\x00"
"""Prefix of ``get_or_load``'s stampede lock keys: keys cacheorm builds never start with
NUL (only a custom ``key_format`` producing one could meet a lock key)."""

ABSENT_PREFIX = b"\x00absent\x00"
"""Prefix of the payload that remembers a key's absence (``get_or_load(...,
negative_ttl=N)``): ``ABSENT_PREFIX + storage key``, stored under the key itself with
a TTL of ``N``, so any write of the key replaces it and a write path pays nothing for
it. It is never decoded: a read whose payload does not decode compares it with the
marker of the key asked for (no serializer writes a record that starts with NUL or
equals it), and a match reads as no record (``get``, ``get_many``, ``exists``,
``update``), or as ``NotFound`` without loading (``get_or_load``)."""

MAX_AUTO_KEY_ATTEMPTS = 100
"""Ids an ``AutoField`` insert draws before :class:`ConflictError` (each one was taken)."""

MAX_CAS_ATTEMPTS = 100
"""Attempts of an atomic read-modify-write before :class:`ConflictError`."""


# --------------------------------------------------------------------------- helpers


_new: Final = tuple.__new__
"""``_new(Get, (bkey,))`` builds a command as ``Get(bkey)`` does, without a Python-level
``__new__`` (0.1 µs less per key of a batch)."""


def _check(result: object) -> object:
    """Raise a per-command error that a backend's ``batch`` put in a result slot."""
    if isinstance(result, BaseException):
        raise result
    return result


def _encode(repo: Repo[R, K], record: R, bkey: bytes) -> bytes:
    """A prepared record as the bytes stored under ``bkey``."""
    codec = repo.codec  # the compiled msgpack path (cacheorm.codec): same bytes, or None
    data = None if codec is None else codec.encode(record, bkey)
    if data is not None:
        return data
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
    # The compiled msgpack path (cacheorm.codec) returns the record with its
    # namespace mark checked, or None wherever the generic path must decide.
    codec = repo.codec
    record = None if codec is None else codec.decode(raw, bkey)
    if record is None:
        record = _load(repo, raw, key, bkey)
    found = schema.key_of(record)
    if found != key and not _same_key(repo, found, bkey):
        raise DecodeError(
            f"{schema.name} key {key!r}: the payload holds the record of key {found!r}: {_PLANTED}"
        )
    return record


def _load(repo: Repo[R, K], raw: bytes, key: object, bkey: bytes) -> R:
    """The generic path of :func:`_decode`: serializer, namespace mark, then schema."""
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
    return schema.load(payload, key)


def _same_key(repo: Repo[R, K], key: K, bkey: bytes) -> bool:
    """Whether ``key`` is stored as ``bkey`` (equal once normalised, e.g. ``1.0`` and ``1``)."""
    try:
        return repo.schema.encode_key(key, repo.namespace) == bkey
    except ValidationError:
        return False


def _before(repo: Repo[R, K], event: BeforeWrite, record: R) -> R:
    """The record to write once the ``event`` hooks have run (see :meth:`Repo.run_before_write`)."""
    return repo.run_before_write(event, record)


@overload
def _notify(repo: Repo[R, K], event: AfterWrite, subject: R) -> None: ...
@overload
def _notify(repo: Repo[R, K], event: DeleteEvent, subject: K) -> None: ...
def _notify(repo: Repo[R, K], event: AfterWrite | DeleteEvent, subject: object) -> None:
    """Run the ``event`` hooks on a stored record (``after_*``) or a key (``*_delete``)."""
    # The overloads pair each event with its subject's type.
    if event == "before_delete" or event == "after_delete":
        repo.run_delete_hooks(event, cast("K", subject))
    else:
        repo.run_after_write(event, cast("R", subject))


def _backoff(attempt: int) -> Sleep:
    """The wait before compare-and-set attempt ``attempt + 1``."""
    # Full jitter: spreads contending writers so one of them wins each round.
    return Sleep(random.uniform(0, min(0.02, 0.0005 * 2**attempt)))


def key_list(keys: Iterable[K]) -> list[K]:
    """The keys as a list; a lone ``str``/``bytes`` is refused, not split into characters."""
    if isinstance(keys, str | bytes):
        raise ValidationError(f"expected a list of keys, got the single key {keys!r}")
    return list(keys)


def key_tuple(keys: Iterable[K]) -> tuple[K, ...]:
    """An op's snapshot of its keys (see :func:`key_list`), checked when the op is built."""
    return tuple(key_list(keys))


def _miss_mode(repo: Repo[R, K]) -> bool:
    return repo.on_backend_error == "miss"


def _read(repo: Repo[R, K], answer: object) -> object:
    """A read command's answer; with ``on_backend_error="miss"`` an outage reads as a miss.

    Only reads degrade so: every other command's ``BackendError`` is raised by
    :func:`_check` in either mode (a write or delete that did not happen).
    """
    if isinstance(answer, BaseException):
        if isinstance(answer, BackendError) and _miss_mode(repo):
            stats.count(repo, errors=1)  # the store failed this read (cacheorm.stats)
            return None
        raise answer
    return answer


# --------------------------------------------------------------------------- public functions
#
# Each is declared once, as its plan (see the module docstring). With
# on_backend_error="miss" (see Repo), reads degrade during an outage and writes
# do not: the Raises sections below name BackendError for the calls that raise
# it in both modes.


@declare(draws_keys=True)
def insert(repo: Repo[R, K], record: R, /) -> Plan[R]:
    """Store a record (insert or overwrite) and return it as stored.

    Defaults are applied and an ``AutoField`` key is assigned when it is ``None``.

    Raises:
        ValidationError: the record is not of the repo's type or a value cannot be stored.
        BackendError: the server is unreachable; in either ``on_backend_error``
            mode, as the record was not stored.
    """
    schema = repo.schema
    prepared = schema.prepare(record)
    if schema.auto_key and schema.key_of(prepared) is None:
        (stored,) = yield from _plan_write(repo, [prepared], False)
        return stored
    # One record with its key: _plan_write's general bookkeeping costs more than the rest.
    hooks = repo.hooks
    if hooks.before_insert:
        prepared = _before(repo, "before_insert", prepared)
    bkey = schema.encode_key(schema.key_of(prepared), repo.namespace)
    (ok,) = yield [Set(bkey, _encode(repo, prepared, bkey), repo.ttl)]
    if ok is not True:  # a Set answers True, or has its error in its slot
        _check(ok)
    if hooks.after_insert:
        _notify(repo, "after_insert", prepared)
    return prepared


@declare(draws_keys=True, snapshot=tuple)
def insert_many(repo: Repo[R, K], records: Iterable[R], /) -> Plan[list[R]]:
    """Store several records in one round trip; return them as stored, in order.

    Raises:
        ValidationError: a record cannot be stored (nothing is written).
        BackendError: a write did not reach its server, in either
            ``on_backend_error`` mode (on a pool, records on healthy nodes are stored).
    """
    schema = repo.schema
    return (yield from _plan_write(repo, [schema.prepare(r) for r in records], False))


@declare(multi_phase=True, draws_keys=True)  # multi-phase only over a remembered absence
def add(repo: Repo[R, K], record: R, /) -> Plan[R]:
    """Store a record only if its key is absent (atomically).

    An absence remembered by ``get_or_load(..., negative_ttl=N)`` is no record:
    ``add`` stores over it.

    Raises:
        AlreadyExists: a record with that key is already stored.
        BackendError: the server is unreachable, in either ``on_backend_error`` mode.
    """
    (stored,) = yield from _plan_write(repo, [repo.schema.prepare(record)], True)
    return stored


def _plan_write(repo: Repo[R, K], prepared: list[R], only_new: bool) -> Plan[list[R]]:
    """Write prepared records, assigning ``AutoField`` keys from the backend's counter.

    A record given an automatic key is written with ``add``: if that id is taken
    (a record inserted earlier with an explicit id), it draws the next one
    instead of overwriting the other record.
    """
    schema, hooks = repo.schema, repo.hooks
    ns, ttl = repo.namespace, repo.ttl
    auto = (
        {i for i, r in enumerate(prepared) if schema.key_of(r) is None}
        if schema.auto_key
        else set()
    )
    stored = list(prepared)
    todo = list(range(len(stored)))
    for _ in range(MAX_AUTO_KEY_ATTEMPTS):
        waiting = [i for i in todo if i in auto]
        if waiting:
            counter = schema.counter_key(ns)
            (last,) = yield [Incr(counter, len(waiting))]
            first = _as_int(_check(last)) - len(waiting) + 1
            for offset, i in enumerate(waiting):
                stored[i] = _before(
                    repo, "before_insert", schema.with_key(prepared[i], first + offset)
                )
        if hooks.before_insert:  # a batch without hooks skips them at once
            for i in todo:
                if i not in auto:
                    stored[i] = _before(repo, "before_insert", stored[i])
        key_of = schema.key_of
        bkeys = schema.encode_keys([key_of(stored[i]) for i in todo], ns)
        kind = Add if only_new else Set
        commands: list[Command] = [
            (Add if i in auto else kind)(bkey, _encode(repo, stored[i], bkey), ttl)
            for i, bkey in zip(todo, bkeys, strict=True)
        ]
        if not commands:
            return []
        results = yield commands
        retry = []
        for i, bkey, ok in zip(todo, bkeys, results, strict=True):
            if _check(ok):
                continue
            if i not in auto:
                if only_new and (yield from _plan_add_over_absence(repo, stored[i], bkey)):
                    continue
                raise AlreadyExists(f"{schema.name} {schema.key_of(stored[i])!r} already exists")
            retry.append(i)
        if hooks.after_insert:
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


def _plan_add_over_absence(repo: Repo[R, K], record: R, bkey: bytes) -> Plan[bool]:
    """After ``add`` found ``bkey`` taken: store ``record`` if what is there is a remembered
    absence (see :data:`ABSENT_PREFIX`), which is no record; return whether it was stored.

    Only this failure path pays for it: the marker is replaced by compare-and-set,
    so a record written meanwhile is never overwritten.
    """
    payload = _encode(repo, record, bkey)
    for attempt in range(MAX_CAS_ATTEMPTS):
        (got,) = yield [Gets(bkey)]
        if _check(got) is None:  # the marker expired meanwhile
            (ok,) = yield [Add(bkey, payload, repo.ttl)]
        else:
            raw, token = _as_pair(got)
            if not _is_absence(raw, bkey):
                return False
            (ok,) = yield [Cas(bkey, payload, token, repo.ttl)]
        if _check(ok):
            return True
        yield _backoff(attempt)
    return False


@declare()
def get(repo: Repo[R, K], key: K, /) -> Plan[R]:
    """Return the record stored under ``key``.

    Raises:
        NotFound: no record under ``key`` (a ``LookupError``); also during an
            outage with ``on_backend_error="miss"``.
        DecodeError: the stored bytes are not a valid record of this schema, or
            are the record of another key or namespace (copied there).
        BackendError: the server is unreachable (``on_backend_error="raise"``).
    """
    # Not `yield from get_or_none(...)`: the hot path saves a generator.
    bkey = repo.schema.encode_key(key, repo.namespace)
    (raw,) = yield [Get(bkey)]
    record = _record_or_none(repo, raw, key, bkey)
    if record is None:
        raise NotFound(f"{repo.schema.name} {key!r} not found")
    return record


@declare()
def get_or_none(repo: Repo[R, K], key: K, /) -> Plan[R | None]:
    """Return the record stored under ``key``, or ``None``.

    With ``on_backend_error="miss"`` an outage returns ``None``.

    Raises:
        DecodeError: as for :func:`get`.
        BackendError: the server is unreachable (``on_backend_error="raise"``).
    """
    bkey = repo.schema.encode_key(key, repo.namespace)
    (raw,) = yield [Get(bkey)]
    return _record_or_none(repo, raw, key, bkey)


def _record_or_none(repo: Repo[R, K], answer: object, key: K, bkey: bytes) -> R | None:
    """The record in a ``Get`` answer for ``key`` (``bkey``); ``None`` on a miss."""
    codec = repo.codec
    if codec is not None and type(answer) is bytes:  # the common case, as in _records_or_none
        try:
            record = codec.decode(answer, bkey)
        except CacheORMError:
            record = None
        if record is not None and repo.schema.key_of(record) == key:
            return record
    raw = _read(repo, answer)
    if raw is None:
        return None
    try:
        return _decode(repo, _as_bytes(raw), key, bkey)
    except DecodeError:
        if _is_absence(raw, bkey):  # checked only once decoding failed: free for records
            return None
        raise


def _records_or_none(
    repo: Repo[R, K], answers: list[object], keys: list[K], bkeys: list[bytes]
) -> list[R | None]:
    """:func:`_record_or_none` for each key, the common case inline.

    That case (bytes the compiled codec decodes to the record of the key they
    were read under) costs a few calls less per key; anything else (no codec,
    an error, a doubt, another key's record) takes :func:`_record_or_none`.
    """
    codec = repo.codec
    if codec is None:
        return [
            _record_or_none(repo, a, k, b) for k, b, a in zip(keys, bkeys, answers, strict=True)
        ]
    # The schema's key getter itself (same package): key_of's call and error wrapping
    # cost a call per record, and any failure here takes the general path anyway.
    decode, key_of = codec.decode, repo.schema._key_getter
    records: list[R | None] = []
    append = records.append
    for key, bkey, answer in zip(keys, bkeys, answers, strict=True):
        if answer is None:
            append(None)
            continue
        if type(answer) is bytes:
            try:
                record = decode(answer, bkey)
                if record is not None and key_of(record) == key:
                    append(record)
                    continue
            except Exception:  # the general path below decides, and says why
                pass
        append(_record_or_none(repo, answer, key, bkey))
    return records


def _is_absence(raw: object, bkey: bytes) -> bool:
    """Whether ``raw``, read under ``bkey``, is the marker of its absence (see ABSENT_PREFIX)."""
    return raw == ABSENT_PREFIX + bkey


@declare(snapshot=key_tuple)
def get_many(repo: Repo[R, K], keys: Iterable[K], /) -> Plan[list[R | None]]:
    """Return the records in key order, ``None`` where missing, in one round trip.

    With ``on_backend_error="miss"`` a key whose server is down is ``None``
    (on a pool, keys on healthy nodes are still served).

    Raises:
        DecodeError: as for :func:`get`.
        BackendError: a key's server is unreachable (``on_backend_error="raise"``).
    """
    keys = key_list(keys)
    if not keys:
        return []
    bkeys = repo.schema.encode_keys(keys, repo.namespace)
    raws = yield [_new(Get, (bkey,)) for bkey in bkeys]  # Get(bkey) without its Python __new__
    return _records_or_none(repo, raws, keys, bkeys)


@declare()
def exists(repo: Repo[R, K], key: K, /) -> Plan[bool]:
    """Return whether a record is stored under ``key``.

    With ``on_backend_error="miss"`` an outage returns ``False``. An absence
    remembered by ``get_or_load(..., negative_ttl=N)`` is no record.
    """
    # A Get, not a Has: the payload tells a record from a remembered absence.
    bkey = repo.schema.encode_key(key, repo.namespace)
    try:
        (raw,) = yield [Get(bkey)]
    except DecodeError:  # a value the store cannot hand back as bytes: still a value
        return True
    if isinstance(raw, DecodeError):
        return True
    raw = _read(repo, raw)
    return raw is not None and not _is_absence(raw, bkey)


def _plan_rmw(repo: Repo[R, K], key: K, edit: dict[str, object] | Callable[[R], R]) -> Plan[R]:
    """Atomic read-modify-write of ``key`` on the backend's CAS.

    ``edit`` is the changes of :func:`update`, checked before anything is read
    (see :func:`_check_changes`), or the user's function of :func:`modify`
    (called through the driver, maybe several times). The public functions
    return this plan itself, not a generator delegating to it: one frame less
    on each of its steps.
    """
    schema = repo.schema
    if isinstance(edit, dict):
        bkey = _check_changes(repo, key, edit)
    else:
        bkey = schema.encode_key(key, repo.namespace)
    ttl = repo.ttl if repo.refresh_ttl_on_update else KEEP_TTL
    for attempt in range(MAX_CAS_ATTEMPTS):
        (got,) = yield [Gets(bkey)]
        if _check(got) is None:
            raise NotFound(f"{schema.name} {key!r} not found")
        raw, token = _as_pair(got)
        try:
            old = _decode(repo, raw, key, bkey)
        except DecodeError:
            if _is_absence(raw, bkey):  # a remembered absence: no record
                raise NotFound(f"{schema.name} {key!r} not found") from None
            raise
        if isinstance(edit, dict):  # checked by _check_changes, before the read
            new = schema.evolve(old, edit, checked=True, prepared=True)  # old: decoded
            may_move = False  # no key field among the changes: old's key, checked by _decode
        else:
            new = schema.prepare((yield from invoke(edit, old)))
            may_move = True
        if repo.hooks.before_update:
            new = _before(repo, "before_update", new)
            may_move = True
        if may_move:  # the user's function or a hook may have changed the key
            schema.check_same_key(key, new)
        (ok,) = yield [Cas(bkey, _encode(repo, new, bkey), token, ttl)]
        if _check(ok):
            if repo.hooks.after_update:
                _notify(repo, "after_update", new)
            return new
        stats.count(repo, retries=1)  # lost the race: another writer changed it
        yield _backoff(attempt)
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


@declare(multi_phase=True)
def update(repo: Repo[R, K], key: K, /, **changes: object) -> Plan[R]:
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
    return _plan_rmw(repo, key, changes)  # **changes: a dict of our own


def _plan_update(repo: Repo[R, K], key: K, changes: Mapping[str, object]) -> Plan[R]:
    """:func:`update` with the changes as a mapping (for :func:`update_many`)."""
    return _plan_rmw(repo, key, dict(changes))


@declare(multi_phase=True)
def modify(repo: Repo[R, K], key: K, fn: Callable[[R], R], /) -> Plan[R]:
    """Replace the record under ``key`` by ``fn(old)`` atomically; return the new record.

    ``fn`` may be called more than once under contention; it must be pure.

    Raises:
        NotFound, DecodeError, ConflictError, BackendError: as for :func:`update`.
    """
    return _plan_rmw(repo, key, fn)


def _changes_copy(changes: Mapping[K, Mapping[str, object]]) -> dict[K, dict[str, object]]:
    """An op's snapshot of ``update_many``'s changes (the caller may reuse its dicts)."""
    return {key: dict(fields) for key, fields in changes.items()}


def _or_none(plan: Plan[T]) -> Plan[T | None]:
    try:
        return (yield from plan)
    except NotFound:
        return None


@declare(multi_phase=True, snapshot=_changes_copy)
def update_many(
    repo: Repo[R, K], changes: Mapping[K, Mapping[str, object]], /
) -> Plan[list[R | None]]:
    """Apply ``{key: {field: value}}`` atomically per record; ``None`` where missing.

    All reads go in one round trip and all writes in another. Every change is
    validated before anything is read, so a bad one writes nothing.

    Raises:
        ValidationError: a bad key or change (nothing is written).
        BackendError: a record's server is unreachable, in either
            ``on_backend_error`` mode (records on healthy nodes are updated).
    """
    for key, fields in changes.items():
        _check_changes(repo, key, fields)
    updates = [_plan_update(repo, key, fields) for key, fields in changes.items()]
    results = yield from plan_all([_or_none(update) for update in updates])
    out: list[R | None] = []
    for result in results:
        if isinstance(result, Exception):
            raise result
        out.append(result)
    return out


@declare()
def replace(repo: Repo[R, K], record: R, /) -> Plan[R]:
    """Overwrite an existing record.

    Raises:
        NotFound: no record with that key is stored.
        BackendError: the server is unreachable, in either ``on_backend_error`` mode.
    """
    schema = repo.schema
    prepared = schema.prepare(record)
    stored = _before(repo, "before_update", prepared)
    schema.check_same_key(schema.key_of(prepared), stored, by="a before_update hook")
    key = schema.key_of(stored)
    bkey = schema.encode_key(key, repo.namespace)
    (ok,) = yield [Replace(bkey, _encode(repo, stored, bkey), repo.ttl)]
    if not _check(ok):
        raise NotFound(f"{schema.name} {key!r} not found")
    _notify(repo, "after_update", stored)
    return stored


@declare()
def delete(repo: Repo[R, K], key: K, /) -> Plan[bool]:
    """Delete the record under ``key``; return whether it existed.

    Raises:
        BackendError: the server is unreachable, in either ``on_backend_error``
            mode: a delete is never skipped silently, as the old value would be
            served again once the server answers.
    """
    bkey = repo.schema.encode_key(key, repo.namespace)
    hooks = repo.hooks
    if hooks.before_delete:
        _notify(repo, "before_delete", key)
    (existed,) = yield [Delete(bkey)]
    if type(existed) is not bool:  # not the common answer: an error to raise, or a truthy value
        existed = bool(_check(existed))
    if hooks.after_delete:
        _notify(repo, "after_delete", key)
    return existed


@declare(snapshot=key_tuple)
def delete_many(repo: Repo[R, K], keys: Iterable[K], /) -> Plan[int]:
    """Delete several records in one round trip; return how many existed.

    Raises:
        BackendError: as for :func:`delete` (keys on healthy nodes are deleted).
    """
    keys = key_list(keys)
    if not keys:
        return 0
    bkeys = repo.schema.encode_keys(keys, repo.namespace)
    hooks = repo.hooks
    if hooks.before_delete:
        for k in keys:
            _notify(repo, "before_delete", k)
    results = yield [Delete(b) for b in bkeys]
    count = sum(1 for r in results if _check(r))
    if hooks.after_delete:
        for k in keys:
            _notify(repo, "after_delete", k)
    return count


@declare(barrier=True)
def clear(repo: Repo[R, K], /) -> Plan[int]:
    """Remove every record of the repo's schema in the repo's namespace; return how many.

    Only keys of this schema (its name and version) in this namespace go:
    other schemas, namespaces and versions keep theirs, however their names
    begin. Absences remembered by ``get_or_load(..., negative_ttl=N)`` go too
    (and are counted); the ``AutoField`` counter stays, so ids are never
    reused, and so do the short-lived stampede locks of loads in flight. The
    ``*_delete`` hooks are not run (the keys are not known in advance).

    Not atomic: Redis is walked with ``SCAN`` and ``UNLINK`` (every master
    of a cluster), memcached with its LRU crawler (``lru_crawler metadump``),
    memory and files directly, a tier on both tiers. A record written while
    it runs may survive. In ``co.execute``, ops before it finish first and
    ops after it start after it.

    Raises:
        ValidationError: the schema's ``key_format`` is a callable or has no
            fixed text, so its keys cannot be told from others.
        BackendError: a server could not be walked or cleared, in either
            ``on_backend_error`` mode (the records of its healthy servers are removed).
    """
    prefix, shape = repo.schema.key_scope(repo.namespace)
    (removed,) = yield [Clear(prefix, shape)]
    return _as_int(_check(removed))


@overload
@declare(multi_phase=True)
def get_or_load(
    repo: Repo[R, K],
    key: K,
    loader: Callable[[K], R | None],
    /,
    *,
    lock_ttl: int = 10,
    wait: float = 10.0,
    negative_ttl: int | None = None,
) -> Plan[R]: ...
@overload
@declare(multi_phase=True)
def get_or_load(
    repo: Repo[R, Hashable],
    key: KL,
    loader: Callable[[KL], R | None],
    /,
    *,
    lock_ttl: int = 10,
    wait: float = 10.0,
    negative_ttl: int | None = None,
) -> Plan[R]: ...
@declare(multi_phase=True)
def get_or_load(
    repo: Repo[R, K],
    key: K,
    loader: Callable[[KL], R | None],
    /,
    *,
    lock_ttl: int = 10,
    wait: float = 10.0,
    negative_ttl: int | None = None,
) -> Plan[R]:
    """Return the stored record, or load, store and return it on a miss.

    On a miss exactly one caller (across threads and processes sharing the
    backend) runs ``loader(key)``: it takes a short-lived lock key with an atomic
    ``add``, and only the owner releases it. Others poll for the stored result
    for up to ``wait`` seconds, then load it themselves. An exception from
    ``loader`` reaches its caller and releases the lock. A payload that cannot
    be decoded (or holds another key's record) counts as a miss and is
    overwritten.

    A loader that returns ``None`` (no such record) makes the call raise
    :class:`NotFound`. With ``negative_ttl=N`` that absence is remembered for
    ``N`` seconds under the key itself (see :data:`ABSENT_PREFIX`): until then
    the calls of every caller raise ``NotFound`` without calling a loader, and
    ``get``/``get_many``/``exists``/``update`` see no record. Any write of the
    key ends it (``insert``, ``insert_many``, ``add``, ``replace``, a
    ``get_or_load`` whose loader finds the record), as does ``delete`` (which
    counts it as existing).

    With ``on_backend_error="miss"``, when the server is down the loader is
    called and its record returned without being stored; when only the lock
    cannot be taken, the record is loaded without the lock.

    Typing: the loader takes the repo's key type; when that is the default
    ``Hashable`` (an unannotated schema checked without the plugin), it takes
    the type of the key given, so ``loader(name: str)`` fits ``key="Dee"``.

    Args:
        lock_ttl: seconds after which a crashed owner's lock expires (``>= 1``).
        wait: seconds a caller waits for another caller's load (``>= 0``).
        negative_ttl: seconds to remember that the loader found nothing (an
            int ``>= 1``); ``None`` (the default) remembers nothing.

    Raises:
        NotFound: the loader returned ``None``, or an absence is remembered.
        ValidationError: the loader returned something that is not a record of
            the schema, or the record of another key (nothing is stored), or an
            illegal ``lock_ttl``/``wait``/``negative_ttl``.
        BackendError: the server is unreachable (``on_backend_error="raise"``).
    """
    # The overloads pair the loader with the key's type (the second with KL).
    load = cast("Callable[[K], R | None]", loader)
    return _plan_get_or_load(repo, key, load, lock_ttl, wait, negative_ttl)


class _Absence:
    """What a read-through read returns for a remembered absence (see :data:`ABSENT_PREFIX`)."""

    __slots__ = ()


ABSENT = _Absence()


def _plan_get_or_load(
    repo: Repo[R, K],
    key: K,
    loader: Callable[[K], R | None],
    lock_ttl: int,
    wait: float,
    negative_ttl: int | None = None,
) -> Plan[R]:
    """The plan of :func:`get_or_load`: read, else lock and load, else poll the lock."""
    _check_lock_settings(lock_ttl, wait)
    _check_negative_ttl(negative_ttl)
    bkey = repo.schema.encode_key(key, repo.namespace)
    lock = LOCK_PREFIX + bkey
    token = secrets.token_bytes(16)
    deadline = time.monotonic() + wait
    attempt = 0
    while True:
        found = yield from _plan_read_valid(repo, bkey, key)
        if isinstance(found, BackendError):  # miss mode, server down: nothing to store in
            return _found(repo, key, (yield from _plan_load(repo, key, bkey, loader)), loader)
        if isinstance(found, _Absence):
            stats.count(repo, hits=1)  # answered without a load (cacheorm.stats)
            raise NotFound(f"{repo.schema.name} {key!r} not found (its absence is remembered)")
        if found is not None:
            stats.count(repo, hits=1)
            return found
        try:
            (locked,) = yield [Add(lock, token, lock_ttl)]
        except GeneratorExit:
            raise
        except BaseException:
            # The add may have run (its reply lost, its task cancelled): give back
            # the lock if it is ours, then let the error through.
            yield from _plan_release_quietly(lock, token)
            raise
        if isinstance(locked, BackendError) and _miss_mode(repo):
            # The lock cannot be taken: load without it, as after `wait`.
            return (yield from _plan_load_and_store(repo, key, bkey, loader, negative_ttl))
        if _check(locked):
            return (
                yield from _plan_load_locked(repo, key, bkey, loader, (lock, token), negative_ttl)
            )
        if time.monotonic() >= deadline:
            logger.warning(
                "get_or_load %s %r: lock holder still busy after %.1fs; loading without the lock",
                repo.schema.name,
                key,
                wait,
            )
            return (yield from _plan_load_and_store(repo, key, bkey, loader, negative_ttl))
        yield Sleep(min(0.05, 0.002 * 2 ** min(attempt, 5)))  # capped: 2**attempt would overflow
        attempt += 1


def _plan_load_locked(
    repo: Repo[R, K],
    key: K,
    bkey: bytes,
    loader: Callable[[K], R | None],
    lock: tuple[bytes, bytes],
    negative_ttl: int | None = None,
) -> Plan[R]:
    """Holding ``lock`` (key, token): load and store the record, then release the lock."""
    try:
        # Another caller may have stored it between our read and our lock.
        found = yield from _plan_read_valid(repo, bkey, key)
        if isinstance(found, _Absence):
            stats.count(repo, hits=1)  # answered without a load (cacheorm.stats)
            raise NotFound(f"{repo.schema.name} {key!r} not found (its absence is remembered)")
        if found is not None and not isinstance(found, BackendError):
            stats.count(repo, hits=1)
            return found
        return (yield from _plan_load_and_store(repo, key, bkey, loader, negative_ttl))
    finally:
        yield from _plan_release(*lock)


def _check_lock_settings(lock_ttl: object, wait: object) -> None:
    """Refuse a ``lock_ttl`` that would never expire and a ``wait`` below zero."""
    if not is_int(lock_ttl) or lock_ttl < 1:
        raise ValidationError(
            f"lock_ttl must be a positive int of seconds, got {lock_ttl!r}: it is how long "
            "a crashed loader's lock blocks the key (0 would block it forever)"
        )
    if not (is_int(wait) or isinstance(wait, float)) or not wait >= 0:
        raise ValidationError(f"wait must be a number of seconds >= 0, got {wait!r}")


def _check_negative_ttl(negative_ttl: object) -> None:
    """Refuse a ``negative_ttl`` that is not ``None`` or a positive int of seconds."""
    if negative_ttl is not None and (not is_int(negative_ttl) or negative_ttl < 1):
        raise ValidationError(
            f"negative_ttl must be None or a positive int of seconds, got {negative_ttl!r}: "
            "it is how long an absence is remembered (0 would remember it forever)"
        )


def _loader_name(loader: object) -> str:
    """The loader as messages name it: its qualified name, else its repr."""
    name = getattr(loader, "__qualname__", None)
    return name if isinstance(name, str) else repr(loader)


def _loaded_record(repo: Repo[R, K], loader: object, key: object, value: object) -> R:
    """``value``, returned by ``loader`` for ``key``, as a prepared record of the schema.

    Raises:
        ValidationError: ``value`` is not a record of the schema (the message
            names the loader).
    """
    schema = repo.schema
    try:
        return schema.prepare(cast("R", value))  # checked here: a loader may return anything
    except ValidationError as err:
        raise ValidationError(
            f"{schema.name}: loader {_loader_name(loader)} returned, for key {key!r}, "
            f"{type(value).__name__} {value!r:.200}, not a record of the schema; nothing was "
            f"stored ({err})"
        ) from err


def _found(repo: Repo[R, K], key: K, record: R | None, loader: object) -> R:
    """A loaded record; ``None`` (the loader found nothing) raises :class:`NotFound`."""
    if record is None:
        raise NotFound(
            f"{repo.schema.name} {key!r} not found: loader {_loader_name(loader)} returned None"
        )
    return record


def _plan_load(
    repo: Repo[R, K], key: K, bkey: bytes, loader: Callable[[K], R | None]
) -> Plan[R | None]:
    """``loader(key)``, called by the driver, prepared, checked to be the record of ``key``.

    Returns:
        The record, or ``None`` when the loader found nothing.

    Raises:
        ValidationError: the loader returned something that is not a record of
            the schema, or the record of another key (nothing is stored).
    """
    schema = repo.schema
    stats.count(repo, misses=1)  # the cache missed: the loader is called (cacheorm.stats)
    value = yield from invoke(loader, key)
    if value is None:
        return None
    record = _loaded_record(repo, loader, key, value)
    found = schema.key_of(record)
    if found != key and not _same_key(repo, found, bkey):
        raise ValidationError(
            f"{schema.name}: loader {_loader_name(loader)} was asked for key {key!r} but "
            f"returned the record of key {found!r}; nothing was stored. Return the record "
            "of the key asked for"
        )
    return record


def _plan_load_and_store(
    repo: Repo[R, K],
    key: K,
    bkey: bytes,
    loader: Callable[[K], R | None],
    negative_ttl: int | None = None,
) -> Plan[R]:
    """Load the record and store it; in miss mode an outage returns it unstored.

    A loader that finds nothing raises :class:`NotFound`, its absence
    remembered first if ``negative_ttl`` is set.
    """
    record = yield from _plan_load(repo, key, bkey, loader)
    if record is None:
        if negative_ttl is not None:
            (marked,) = yield [_mark_absent(bkey, negative_ttl)]
            if not (isinstance(marked, BackendError) and _miss_mode(repo)):
                _check(marked)
        return _found(repo, key, record, loader)
    try:
        (stored,) = yield from _plan_write(repo, [record], False)
    except BackendError:
        if not _miss_mode(repo):
            raise
        return record
    stats.count(repo, writes=1)
    return stored


def _mark_absent(bkey: bytes, negative_ttl: int) -> Add:
    """The command that remembers ``bkey``'s absence; an ``add``, so it never hides a
    record stored meanwhile."""
    return Add(bkey, ABSENT_PREFIX + bkey, negative_ttl)


def _read_slot(
    repo: Repo[R, K], raw: object, key: K, bkey: bytes
) -> R | BackendError | _Absence | None:
    """A read-through's ``Get`` answer: the record, ``None`` on a miss (an undecodable
    payload included, overwritten later), :data:`ABSENT`, or, in miss mode, the
    ``BackendError`` that kept the read from reaching the server."""
    if isinstance(raw, BackendError) and _miss_mode(repo):
        stats.count(repo, errors=1)  # the store failed this read (cacheorm.stats)
        return raw
    if isinstance(raw, DecodeError):  # the store cannot hand back bytes (a Redis list...)
        return None
    if _check(raw) is None:
        return None
    try:
        return _decode(repo, _as_bytes(raw), key, bkey)
    except DecodeError as err:
        if _is_absence(raw, bkey):
            return ABSENT
        logger.warning(
            "%s %r: undecodable payload treated as a miss: %s", repo.schema.name, key, err
        )
        return None


def _plan_read_valid(
    repo: Repo[R, K], bkey: bytes, key: K
) -> Plan[R | BackendError | _Absence | None]:
    """Read a record for a read-through (see :func:`_read_slot`)."""
    try:
        (raw,) = yield [Get(bkey)]
    except DecodeError:
        raw = None  # the store cannot hand back bytes (a Redis key of another type)
    return _read_slot(repo, raw, key, bkey)


RELEASE_ATTEMPTS = 3
"""Times a lock release cut short by the caller's cancellation is run again."""


def _plan_release(lock: bytes, token: bytes) -> Plan[None]:
    """Delete the stampede lock only if we still own it.

    A release interrupted by a cancellation (an async caller's task cancelled or
    timed out) is run again before the cancellation goes on: a lock left behind
    would hold up every other caller of the key for ``lock_ttl``.
    """
    for attempt in range(RELEASE_ATTEMPTS):
        try:
            (got,) = yield [Gets(lock)]
            if got is not None and not isinstance(got, BaseException):
                value, cas_token = _as_pair(got)
                if value == token:
                    yield [DeleteIf(lock, cas_token)]
            return None
        except (GeneratorExit, CacheORMError):
            raise
        except BaseException:
            if attempt == RELEASE_ATTEMPTS - 1:
                raise
    return None


def _plan_release_quietly(lock: bytes, token: bytes) -> Plan[None]:
    """:func:`_plan_release` on the way out of a failure: a store that cannot answer
    now leaves the lock to expire after ``lock_ttl`` rather than hide the first error."""
    try:
        yield from _plan_release(lock, token)
    except CacheORMError as err:
        logger.debug("stampede lock %r left to expire: %s", lock, err)
    return None


# --------------------------------------------------------------------------- get_many_or_load


@overload
@declare(multi_phase=True, snapshot=key_tuple)
def get_many_or_load(
    repo: Repo[R, K],
    keys: Iterable[K],
    loader: Callable[[list[K]], Mapping[K, R | None]],
    /,
    *,
    lock_ttl: int = 10,
    wait: float = 10.0,
    negative_ttl: int | None = None,
) -> Plan[list[R | None]]: ...
@overload
@declare(multi_phase=True, snapshot=key_tuple)
def get_many_or_load(
    repo: Repo[R, Hashable],
    keys: Iterable[KL],
    loader: Callable[[list[KL]], Mapping[KL, R | None]],
    /,
    *,
    lock_ttl: int = 10,
    wait: float = 10.0,
    negative_ttl: int | None = None,
) -> Plan[list[R | None]]: ...
@declare(multi_phase=True, snapshot=key_tuple)
def get_many_or_load(
    repo: Repo[R, K],
    keys: Iterable[K],
    loader: Callable[[list[KL]], Mapping[KL, R | None]],
    /,
    *,
    lock_ttl: int = 10,
    wait: float = 10.0,
    negative_ttl: int | None = None,
) -> Plan[list[R | None]]:
    """Return the records in key order, loading the missing ones with one loader call.

    The stored records are read in one round trip. ``loader(missing_keys)`` is
    then called once with exactly the keys that missed, in key order (a key
    given twice is asked once), and returns ``{key: record}``; what it returns
    is stored in one round trip. A key it leaves out (or maps to ``None``) is
    ``None`` in the result; with ``negative_ttl=N`` that absence is remembered
    for ``N`` seconds, as by :func:`get_or_load` (a remembered absence is
    ``None`` without asking the loader).

    Stampede protection is :func:`get_or_load`'s, per key: the missing keys'
    locks are taken in one round trip, and the keys locked by this call are
    loaded at once. Keys whose lock another caller holds (across threads and
    processes) are polled until that caller stores them, for up to ``wait``
    seconds, then loaded by this call with a second loader call; so a key is
    not loaded twice, and a slow key held by another caller never delays the
    keys this call loads. Every lock is released on every way out (a loader's
    exception, an async caller's cancellation). A payload that cannot be
    decoded counts as a miss and is overwritten. With
    ``on_backend_error="miss"`` keys whose server is down are loaded and
    returned without being stored.

    Args:
        lock_ttl, wait, negative_ttl: as for :func:`get_or_load`.

    Raises:
        ValidationError: the loader returned something other than a mapping, a
            key it was not asked for, a value that is not a record of the
            schema, or under a key the record of another key (the message names
            the loader; nothing it returned is stored); an illegal
            ``lock_ttl``/``wait``/``negative_ttl``.
        DecodeError: a key that is not a key of the schema.
        BackendError: a key's server is unreachable (``on_backend_error="raise"``).
    """
    # The overloads pair the loader with the keys' type (the second with KL).
    load = cast("Callable[[list[K]], Mapping[K, R | None]]", loader)
    return _plan_get_many_or_load(repo, keys, load, lock_ttl, wait, negative_ttl)


def _plan_get_many_or_load(
    repo: Repo[R, K],
    keys: Iterable[K],
    loader: Callable[[list[K]], Mapping[K, R | None]],
    lock_ttl: int,
    wait: float,
    negative_ttl: int | None,
) -> Plan[list[R | None]]:
    """The plan of :func:`get_many_or_load`: read every key, then lock, load and poll the misses."""
    keys = key_list(keys)
    _check_lock_settings(lock_ttl, wait)
    _check_negative_ttl(negative_ttl)
    if not keys:
        return []
    bkeys = repo.schema.encode_keys(keys, repo.namespace)
    asked: dict[bytes, K] = {}  # each storage key once, in key order
    for key, bkey in zip(keys, bkeys, strict=True):
        asked.setdefault(bkey, key)
    found: dict[bytes, R | None] = {}
    missing: list[bytes] = []
    down: list[bytes] = []  # miss mode: their server is down, nothing to store in
    reads = yield from _plan_read_many(repo, asked, list(asked))
    for bkey, got in zip(asked, reads, strict=True):
        if got is None:
            missing.append(bkey)
        elif isinstance(got, BackendError):
            down.append(bkey)
        else:
            found[bkey] = None if isinstance(got, _Absence) else got
    stats.count(repo, hits=len(found))  # answered without a load (cacheorm.stats)
    if missing or down:
        many = _ManyLoad(repo, asked, loader, negative_ttl)
        found.update((yield from _plan_load_many(many, missing, down, lock_ttl, wait)))
    return [found[bkey] for bkey in bkeys]


class _ManyLoad(NamedTuple, Generic[R, K]):
    """What the loads of one :func:`get_many_or_load` call share."""

    repo: Repo[R, K]
    asked: dict[bytes, K]
    """Each storage key asked for, and its key, in key order."""
    loader: Callable[[list[K]], Mapping[K, R | None]]
    negative_ttl: int | None


def _plan_read_many(
    repo: Repo[R, K], asked: Mapping[bytes, K], bkeys: list[bytes]
) -> Plan[list[R | BackendError | _Absence | None]]:
    """Read ``bkeys`` in one phase, each as :func:`_read_slot` sees it."""
    if not bkeys:
        return []
    try:
        raws: list[object] = yield [Get(bkey) for bkey in bkeys]
    except DecodeError:  # a lone key the store cannot hand back as bytes
        raws = [None] * len(bkeys)
    slots: list[R | BackendError | _Absence | None] = []
    for bkey, raw in zip(bkeys, raws, strict=True):
        slot = _read_slot(repo, raw, asked[bkey], bkey)  # R from the repo, not from `slots`
        slots.append(slot)
    return slots


def _plan_load_many(
    many: _ManyLoad[R, K], missing: list[bytes], down: list[bytes], lock_ttl: int, wait: float
) -> Plan[dict[bytes, R | None]]:
    """Lock the ``missing`` keys, load the ones locked (and the ``down`` ones) at once, then
    poll the others' until they are stored or ``wait`` passes; every lock taken is released.

    Returns:
        ``{storage key: record or None}`` for every key of ``missing`` and ``down``.
    """
    repo = many.repo
    token = secrets.token_bytes(16)
    deadline = time.monotonic() + wait
    out: dict[bytes, R | None] = {}
    owned: list[bytes] = []  # lock keys this call holds
    todo, unstored, attempt = missing, down, 0
    try:
        while True:
            mine, held, lockless = yield from _plan_lock_many(repo, todo, token, lock_ttl, owned)
            # Ours may have been stored between our read and our lock; the others' are polled.
            store, unstored = list(lockless), list(unstored)
            waiting: list[bytes] = []
            theirs = set(held)
            rereads = yield from _plan_read_many(repo, many.asked, mine + held)
            for bkey, got in zip(mine + held, rereads, strict=True):
                if isinstance(got, _Absence):
                    stats.count(repo, hits=1)  # stored meanwhile: no load (cacheorm.stats)
                    out[bkey] = None
                elif got is None and bkey in theirs:
                    waiting.append(bkey)
                elif got is None or isinstance(got, BackendError):
                    # Ours; or, in miss mode, the other caller's server is down: load it unstored.
                    (unstored if bkey in theirs else store).append(bkey)
                else:
                    stats.count(repo, hits=1)
                    out[bkey] = got
            out.update((yield from _plan_load_batch(many, store, unstored)))
            if owned:
                yield from _plan_release_many(owned, token)
                owned.clear()
            if not waiting:
                return out
            if time.monotonic() >= deadline:
                logger.warning(
                    "get_many_or_load %s: lock holders still busy after %.1fs for %d keys; "
                    "loading them without the locks",
                    repo.schema.name,
                    wait,
                    len(waiting),
                )
                out.update((yield from _plan_load_batch(many, waiting, [])))
                return out
            yield Sleep(min(0.05, 0.002 * 2 ** min(attempt, 5)))  # as get_or_load polls
            todo, unstored, attempt = waiting, [], attempt + 1
    except GeneratorExit:
        raise
    except BaseException:
        if owned:  # a loader's error, a failed store, a cancellation: give the locks back
            yield from _plan_release_many_quietly(owned, token)
        raise


def _plan_lock_many(
    repo: Repo[R, K], bkeys: list[bytes], token: bytes, lock_ttl: int, owned: list[bytes]
) -> Plan[tuple[list[bytes], list[bytes], list[bytes]]]:
    """Take the stampede locks of ``bkeys`` in one phase (those taken go in ``owned``).

    Returns:
        The keys locked by us, those whose lock another caller holds, and, in
        miss mode, those whose lock could not be taken (loaded without it).
    """
    if not bkeys:
        return [], [], []
    locks = [LOCK_PREFIX + bkey for bkey in bkeys]
    try:
        answers = yield [Add(lock, token, lock_ttl) for lock in locks]
    except GeneratorExit:
        raise
    except BaseException:
        # The adds may have run (their replies lost, the task cancelled): give back ours.
        yield from _plan_release_many_quietly(locks, token)
        raise
    mine: list[bytes] = []
    held: list[bytes] = []
    lockless: list[bytes] = []
    failed: list[object] = []
    for bkey, lock, answer in zip(bkeys, locks, answers, strict=True):
        if isinstance(answer, BackendError) and _miss_mode(repo):
            lockless.append(bkey)
        elif isinstance(answer, BaseException):
            failed.append(answer)
        elif answer:
            owned.append(lock)
            mine.append(bkey)
        else:
            held.append(bkey)
    for answer in failed:
        _check(answer)  # raised once every lock taken is in ``owned``, to be released
    return mine, held, lockless


def _plan_load_batch(
    many: _ManyLoad[R, K], store: list[bytes], unstored: list[bytes]
) -> Plan[dict[bytes, R | None]]:
    """One loader call for the keys of ``store`` and ``unstored``, in key order; store what it
    returns for those of ``store`` (remembering absences with ``negative_ttl``) in one phase.

    In miss mode a store that cannot reach its server returns the records unstored.
    """
    if not store and not unstored:
        return {}
    repo, asked = many.repo, many.asked
    position = {bkey: i for i, bkey in enumerate(asked)}
    bkeys = sorted([*store, *unstored], key=position.__getitem__)
    wanted = {bkey: asked[bkey] for bkey in bkeys}
    stats.count(repo, misses=len(wanted))  # the loader is called for them (cacheorm.stats)
    returned = yield from invoke(many.loader, list(wanted.values()))
    records = _loaded_records(repo, many.loader, wanted, returned)
    out: dict[bytes, R | None] = {bkey: records.get(bkey) for bkey in bkeys}
    writes = [bkey for bkey in store if bkey in records]
    negative_ttl = many.negative_ttl
    marks = [] if negative_ttl is None else [b for b in store if b not in records]
    if not writes and not marks:
        return out
    plans: list[Plan[object]] = [_plan_write(repo, [records[bkey] for bkey in writes], False)]
    if marks and negative_ttl is not None:
        plans.append(_plan_mark_absent(repo, marks, negative_ttl))
    results = yield from plan_all(plans)
    for result in results:
        if isinstance(result, BackendError) and _miss_mode(repo):
            return out  # the server is down: what was loaded, unstored
        if isinstance(result, Exception):
            raise result
    stored = cast("list[R]", results[0])  # _plan_write's: the records as stored
    stats.count(repo, writes=len(stored))
    out.update(zip(writes, stored, strict=True))
    return out


def _plan_mark_absent(repo: Repo[R, K], bkeys: list[bytes], negative_ttl: int) -> Plan[None]:
    """Remember the absence of ``bkeys`` for ``negative_ttl`` seconds (see ABSENT_PREFIX)."""
    results = yield [_mark_absent(bkey, negative_ttl) for bkey in bkeys]
    for result in results:
        if not (isinstance(result, BackendError) and _miss_mode(repo)):
            _check(result)
    return None


def _loaded_records(
    repo: Repo[R, K], loader: object, wanted: Mapping[bytes, object], returned: object
) -> dict[bytes, R]:
    """The records a ``get_many_or_load`` loader returned for ``wanted``, by storage key.

    Raises:
        ValidationError: not a mapping; a key not wanted (or not a key of the
            schema); a value that is not a record; the record of another key.
    """
    schema = repo.schema
    name = _loader_name(loader)
    if not isinstance(returned, Mapping):
        raise ValidationError(
            f"{schema.name}: loader {name} must return a mapping of key to record, got "
            f"{type(returned).__name__}; nothing was stored"
        )
    records: dict[bytes, R] = {}
    for key, value in returned.items():
        try:
            bkey = schema.encode_key(key, repo.namespace)
        except ValidationError as err:
            raise ValidationError(
                f"{schema.name}: loader {name} returned key {key!r}, not a key of the schema; "
                f"nothing was stored ({err})"
            ) from err
        if bkey not in wanted:
            raise ValidationError(
                f"{schema.name}: loader {name} returned key {key!r}, which it was not asked "
                f"for (it was asked for {list(wanted.values())!r:.200}); nothing was stored"
            )
        if value is None:
            continue
        record = _loaded_record(repo, loader, key, value)
        found = schema.key_of(record)
        if found != key and not _same_key(repo, found, bkey):
            raise ValidationError(
                f"{schema.name}: loader {name} returned, under key {key!r}, the record of key "
                f"{found!r}; nothing was stored. Map each key to its own record"
            )
        records[bkey] = record
    return records


def _plan_release_many(locks: list[bytes], token: bytes) -> Plan[None]:
    """:func:`_plan_release` for several locks, in two phases whatever their number."""
    for attempt in range(RELEASE_ATTEMPTS):
        try:
            answers = yield [Gets(lock) for lock in locks]
            ours: list[Command] = []
            for lock, got in zip(locks, answers, strict=True):
                if got is not None and not isinstance(got, BaseException):
                    value, cas_token = _as_pair(got)
                    if value == token:
                        ours.append(DeleteIf(lock, cas_token))
            if ours:
                yield ours
            return None
        except (GeneratorExit, CacheORMError):
            raise
        except BaseException:
            if attempt == RELEASE_ATTEMPTS - 1:
                raise
    return None


def _plan_release_many_quietly(locks: list[bytes], token: bytes) -> Plan[None]:
    """:func:`_plan_release_many` on the way out of a failure (as :func:`_plan_release_quietly`)."""
    try:
        yield from _plan_release_many(locks, token)
    except CacheORMError as err:
        logger.debug("%d stampede locks left to expire: %s", len(locks), err)
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
