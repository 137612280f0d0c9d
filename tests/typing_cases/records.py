"""Record types shared by the typing cases (one of each kind the contract allows)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple, TypedDict


class Person(NamedTuple):
    name: str
    height: float
    married: bool = False
    email: str | None = None


class Collection(TypedDict):
    collector: str
    note_id: int
    remark: str


@dataclass(frozen=True)
class Point:
    x: int
    y: int
    label: str = ""
