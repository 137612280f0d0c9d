"""Without the plugin: an unannotated schema's key type is the PEP 696 default, Hashable."""

from __future__ import annotations

from collections.abc import Hashable
from typing import assert_type

import cacheorm as co
from tests.typing_cases.records import Person

people = co.Repo(co.Schema(Person, key="name"))
assert_type(people, co.Repo[Person, Hashable])
assert_type(co.get(people, "Sam"), Person)
co.get(people, 1)  # any hashable key passes: annotate the schema or enable the plugin
co.update(people, "Sam", heigth=1.0)  # no field check without the plugin
