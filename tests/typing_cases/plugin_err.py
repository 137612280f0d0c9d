"""Mistakes only the plugin can see: field names and types, key names and types."""

from __future__ import annotations

import cacheorm as co
from tests.typing_cases.records import Collection, Person, Point

people = co.Repo(co.Schema(Person, key="name"))
collections = co.Repo(co.Schema(Collection, key=("collector", "note_id")))
points = co.Repo(co.Schema(Point, key=("x", "y")))

co.update(people, "Sam", heigth=1.0)  # E: Unexpected keyword argument "heigth" for "update"; did you mean "height"?
co.update(people, "Sam", height="tall")  # E: Argument "height" to "update" has incompatible type "str"; expected "float"
co.update(people, "Sam", email=3)  # E: Argument "email" to "update" has incompatible type "int"; expected "str | None"
co.update(collections, ("Bob", 1), remarks="x")  # E: Unexpected keyword argument "remarks" for "update"
co.update(collections, ("Bob", 1), note_id="1")  # E: Argument "note_id" to "update" has incompatible type "str"; expected "int"
co.update(points, (1, 2), label=3)  # E: Argument "label" to "update" has incompatible type "int"; expected "str"
co.ops.update(people, "Sam", heigth=1.0)  # E: Unexpected keyword argument "heigth" for "update"
co.ops.update(points, (1, 2), z=0)  # E: Unexpected keyword argument "z" for "update"
co.update_many(people, {"Sam": {"heigth": 1.0}})  # E: Unexpected TypedDict key "heigth"
co.update_many(people, {"Sam": {"height": "tall"}})  # E: Incompatible types (expression has type "str", TypedDict item "height" has type "float")
co.ops.update_many(collections, {("Bob", 1): {"remark": 1}})  # E: Incompatible types (expression has type "int", TypedDict item "remark" has type "str")

# Keys are typed from the schema without any annotation.
co.get(people, 1)  # E: Argument 2 to "get" has incompatible type "int"; expected "str"
co.get(collections, ("Bob", "1"))  # E: Argument 2 to "get" has incompatible type "tuple[str, str]"; expected "tuple[str, int]"
co.delete(points, (1, "2"))  # E: Argument 2 to "delete" has incompatible type "tuple[int, str]"; expected "tuple[int, int]"

# Schemas naming what the record does not have.
co.Schema(Person, key="nam")  # E: Schema key "nam" is not a field of Person; its fields are name, height, married, email
co.Schema(Collection, key=("collector", "note"))  # E: Schema key "note" is not a field of Collection
co.Schema(Person, key="name", defaults={"heigt": 1.0})  # E: defaults= names "heigt", which Person does not have
co.Schema(Point, key="x", fields={"z": co.IntegerField()})  # E: fields= names "z", which Point does not have
# The plugin binds R and K from the repo: TypedDict literals and `object` contexts work.
co.insert(collections, {"collector": "Bob", "note_id": 1, "missing": ""})  # E: Extra key "missing" for TypedDict "Collection"  # E: Missing key "remark" for TypedDict "Collection"
co.insert(collections, {"collector": "Bob", "note_id": "1", "remark": ""})  # E: Incompatible types (expression has type "str", TypedDict item "note_id" has type "int")
WRONG: co.Schema[Person, int] = co.Schema(Person, key="name")  # E: the key of this Schema has type "str", but the annotation says "int"
