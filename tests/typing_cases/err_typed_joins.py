"""Hooks of the wrong shape for their event, and keys of the wrong type, are type errors."""

from __future__ import annotations

from typing import NamedTuple

import cacheorm as co
from tests.typing_cases.records import Collection, Person

PERSON: co.Schema[Person, str] = co.Schema(Person, key="name")
people = co.Repo(PERSON)
collections = co.Repo(co.Schema(Collection, key=("collector", "note_id")))


def on_record(repo: co.Repo[Person, str], person: Person) -> None: ...


def on_key(repo: co.Repo[Person, str], name: str) -> None: ...


def renamed(repo: co.Repo[Person, str], person: Person) -> str:
    return person.name


def other_key(repo: co.Repo[Person, int], person: Person) -> None: ...


co.on(people, "before_insert", on_key)  # E: No overload variant of "on" matches
co.on(people, "after_update", on_key)  # E: No overload variant of "on" matches
co.on(people, "before_delete", on_record)  # E: No overload variant of "on" matches
co.on(people, "before_update", renamed)  # E: No overload variant of "on" matches
co.on(people, "after_insert", other_key)  # E: No overload variant of "on" matches
co.on(people, "before_insrt", on_record)  # E: No overload variant of "on" matches
co.on(collections, "before_insert", on_record)  # E: No overload variant of "on" matches
co.on(people, "before_insert", lambda repo, person: person.name)  # E: No overload variant of "on" matches


class Note(NamedTuple):
    id: int | None
    text: str


NOTE: co.Schema[Note, int | None] = co.Schema(Note, key="id", fields={"id": co.AutoField()})
notes = co.Repo(NOTE)
co.get(notes, "1")  # E[plain]: Cannot infer value of type parameter "K" of "get"  # E[plugin]: Argument 2 to "get" has incompatible type "str"; expected "int | None"
