"""Typed joins: hooks typed on the record, every backend a ``co.Backend``, AutoField keys.

Checked with mypy --strict (with and without the cacheorm plugin) and pyright --strict.
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import NamedTuple, assert_type

import cacheorm as co
from tests.typing_cases.records import Collection, Person

PERSON: co.Schema[Person, str] = co.Schema(Person, key="name")
COLLECTION: co.Schema[Collection, tuple[str, int]] = co.Schema(
    Collection, key=("collector", "note_id")
)
people = co.Repo(PERSON)
collections = co.Repo(COLLECTION)


# -- hooks: each event's handler typed on the record (or the key), no isinstance


def stamp_email(repo: co.Repo[Person, str], person: Person) -> Person:
    return person._replace(email=f"{person.name.lower()}@example.com")


def keep(repo: co.Repo[Person, str], person: Person) -> None:
    print(person.height)


def audit(repo: co.Repo[Person, str], person: Person) -> None:
    print(repo.schema.name, person.name)


def keep_bob(repo: co.Repo[Person, str], name: str) -> None:
    if name == "Bob":
        raise PermissionError(name)


def tidy(repo: co.Repo[Collection, tuple[str, int]], item: Collection) -> Collection:
    return {**item, "remark": item["remark"].strip()}


def untyped(repo: co.Repo[Person, str], subject: object) -> object:
    return None  # the form hooks had before they were typed: still accepted for any event


hooked = co.on(people, "before_insert", stamp_email)
hooked = co.on(hooked, "before_update", keep)
hooked = co.on(hooked, "after_insert", audit)
hooked = co.on(hooked, "after_update", lambda repo, person: print(person.height + 1))
hooked = co.on(hooked, "before_delete", keep_bob)
hooked = co.on(hooked, "after_delete", lambda repo, name: print(name.upper()))
hooked = co.on(hooked, "after_insert", untyped)
hooked = co.on(hooked, "before_insert", lambda repo, person: person._replace(married=True))
assert_type(hooked, co.Repo[Person, str])
tidied = co.on(collections, "before_update", tidy)
tidied = co.on(tidied, "before_insert", lambda repo, item: {**item, "remark": ""})
assert_type(tidied, co.Repo[Collection, tuple[str, int]])

# An unannotated schema without the plugin has the key type Hashable; handlers
# written for the real key type are still accepted.
loose = co.Repo(co.Schema(Person, key="name"))
loose = co.on(loose, "before_insert", stamp_email)
loose = co.on(loose, "before_delete", keep_bob)


# -- every backend is a co.Backend (TieredBackend's default_ttl is a property)


def every_backend(
    memory: co.MemoryBackend,
    simple: co.SimpleBackend,
    filesystem: co.FileSystemBackend,
    redis: co.RedisBackend,
    memcached: co.MemcachedBackend,
    tiered: co.TieredBackend,
) -> list[co.Backend]:
    return [memory, simple, filesystem, redis, memcached, tiered]


tier = co.TieredBackend(co.MemoryBackend(), co.MemoryBackend())
near_far = co.Repo(PERSON, backend=tier)
assert_type(tier.default_ttl, int)


# -- an AutoField key: the key field's own type, so a stored record's id is a key


class Note(NamedTuple):
    id: int | None
    text: str


NOTE: co.Schema[Note, int | None] = co.Schema(Note, key="id", fields={"id": co.AutoField()})
notes = co.Repo(NOTE)
note = co.insert(notes, Note(None, "x"))
assert_type(co.get(notes, note.id), Note)
assert_type(co.get_many(notes, [note.id, 2]), list[Note | None])
assert_type(co.update(notes, note.id, text="y"), Note)
assert_type(co.delete(notes, note.id), bool)

# Unannotated: the key type is Hashable (plain) or int | None (plugin); either takes it.
plain_notes = co.Repo(co.Schema(Note, key="id", fields={"id": co.AutoField()}))
stored = co.insert(plain_notes, Note(None, "x"))
assert_type(co.get(plain_notes, stored.id), Note)
key: Hashable = stored.id
