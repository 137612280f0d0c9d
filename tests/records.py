"""Record types shared by the record-level tests."""

from __future__ import annotations

import datetime as dt
import enum
import uuid
from dataclasses import dataclass
from decimal import Decimal
from typing import NamedTuple, TypedDict

import cacheorm as co


class Person(NamedTuple):
    name: str
    height: float
    married: bool = False
    email: str | None = None


class Collection(TypedDict):
    collector: str
    note_id: int
    remark: str


class Color(enum.Enum):
    RED = "red"
    GREEN = "green"


class Tag(NamedTuple):
    label: str
    weight: int


@dataclass(frozen=True)
class Everything:
    id: int
    text: str
    number: float
    flag: bool
    blob: bytes
    price: Decimal
    when: dt.datetime
    day: dt.date
    clock: dt.time
    uid: uuid.UUID
    color: Color
    tags: list[Tag]
    scores: dict[str, int]
    maybe: str | None = None


class Note(NamedTuple):
    id: int | None
    title: str
    created_at: dt.datetime | None = None


class Counter(NamedTuple):
    name: str
    value: int


PERSON = co.Schema(Person, key="name")
COLLECTION = co.Schema(
    Collection,
    key=("collector", "note_id"),
    key_format="collection.%s.%d",
    defaults={"remark": ""},
)
EVERYTHING = co.Schema(Everything, key="id", fields={"price": co.DecimalField(decimal_places=2)})
NOTE = co.Schema(
    Note,
    key="id",
    fields={"id": co.AutoField()},
    defaults={"created_at": lambda: dt.datetime(2026, 1, 1, tzinfo=dt.UTC)},
)
COUNTER = co.Schema(Counter, key="name")
