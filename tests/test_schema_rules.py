"""One owner per rule: the field errors in the tree, the key rule, int-not-bool, int64."""

from __future__ import annotations

import ast
import math
import pickle
from decimal import Decimal
from pathlib import Path
from typing import NamedTuple

import pytest

import cacheorm as co
from cacheorm import errors, fields
from cacheorm.backends.base import INT64_MAX, INT64_MIN, check_delta, counter_sum, resolve_ttl

PACKAGE = Path(co.__file__).parent


class Item(NamedTuple):
    label: str
    weight: float


class Basket(NamedTuple):
    key: str
    items: list[Item]


class Reading(NamedTuple):
    at: float
    value: int


BASKET = co.Schema(Basket, key="key")
READING = co.Schema(Reading, key="at")


def test_a_field_error_is_a_documented_validation_error_with_its_path() -> None:
    with pytest.raises(co.ValidationError) as info:
        BASKET.prepare(Basket("b", [Item("x", 1.0), Item("y", math.nan)]))
    err = info.value
    assert isinstance(err, errors.FieldValidationError)
    assert isinstance(err, co.CacheORMError)
    assert err.path == ("Basket", "items", "[1]", "weight")
    assert str(err).startswith("Basket.items[1].weight: nan is not finite")
    # Importable where it was first defined, and the same class.
    assert fields.FieldValidationError is errors.FieldValidationError


def test_a_load_error_inside_a_value_is_a_decode_error_naming_the_step() -> None:
    with pytest.raises(co.DecodeError) as info:
        fields.ListField(co.IntegerField()).load([1, 2, "3"])
    err = info.value
    assert isinstance(err, errors.FieldLoadError)
    assert isinstance(err, ValueError)  # what Field.load documents
    assert err.path == ("[2]",)
    assert fields.FieldLoadError is errors.FieldLoadError
    with pytest.raises(co.DecodeError, match=r"cannot load Basket \(key 'b'\): items\[0\]\.weight"):
        BASKET.load({"key": "b", "items": [{"label": "x", "weight": "heavy"}]}, key="b")


def test_field_errors_cross_process_boundaries_intact() -> None:
    for err in (
        errors.FieldValidationError(("Basket", "items", "[1]"), "bad"),
        errors.FieldLoadError(("[2]",), "bad"),
    ):
        copy = pickle.loads(pickle.dumps(err))
        assert type(copy) is type(err)
        assert (copy.path, copy.reason, str(copy)) == (err.path, err.reason, str(err))


def test_every_error_of_the_package_is_drawn_in_the_documented_tree() -> None:
    tree = errors.__doc__ or ""
    for name in errors.__all__:
        assert issubclass(getattr(errors, name), errors.CacheORMError)
        assert name in tree, f"{name} is missing from the tree in cacheorm.errors"


def test_check_same_key_accepts_the_same_key_as_stored() -> None:
    READING.check_same_key(1, Reading(1.0, 5))  # an int key is the float key 1.0
    BASKET.check_same_key("b", Basket("b", []))


def test_check_same_key_refuses_a_moved_record_saying_what_to_do() -> None:
    with pytest.raises(
        co.ValidationError,
        match=r"^Basket 'a': an update cannot change the key \(got 'b'\); "
        r"insert a new record and delete the old one$",
    ):
        BASKET.check_same_key("a", Basket("b", []))
    with pytest.raises(co.ValidationError, match="a before_update hook cannot change the key"):
        BASKET.check_same_key("a", Basket("b", []), by="a before_update hook")


def test_an_update_whose_hook_moves_the_key_writes_nothing() -> None:
    baskets = co.Repo(BASKET)
    co.insert(baskets, Basket("a", []))

    def move(repo: co.Repo[Basket, str], record: Basket) -> Basket:
        return record._replace(key="b")

    with pytest.raises(co.ValidationError, match="an update cannot change the key"):
        co.update(co.on(baskets, "before_update", move), "a", items=[Item("x", 1.0)])
    assert co.get(baskets, "a") == Basket("a", [])
    assert co.get_or_none(baskets, "b") is None


@pytest.mark.parametrize(
    "refuse",
    [
        lambda: co.IntegerField().prepare(True),
        lambda: co.FloatField().prepare(True),
        lambda: co.DecimalField().prepare(True),
        lambda: resolve_ttl(True, 0),
        lambda: check_delta(True),
        lambda: co.Schema(Reading, key="at", version=True),
        lambda: co.compressed("json", min_size=True),
    ],
    ids=["IntegerField", "FloatField", "DecimalField", "ttl", "delta", "version", "min_size"],
)
def test_a_bool_is_never_taken_for_an_int(refuse: object) -> None:
    assert callable(refuse)
    with pytest.raises((co.ValidationError, co.SchemaError, TypeError)):
        refuse()


def test_ints_and_their_subclasses_other_than_bool_are_taken() -> None:
    class Count(int):
        pass

    assert co.IntegerField().prepare(Count(3)) == 3
    assert type(co.IntegerField().prepare(Count(3))) is int
    assert co.FloatField().prepare(3) == 3.0
    assert co.DecimalField().prepare(3) == Decimal(3)
    assert resolve_ttl(5, 0) == 5
    assert check_delta(-2) == -2


def test_fields_and_counters_share_the_signed_64_bit_bounds() -> None:
    rule = co.IntegerField()
    assert rule.prepare(INT64_MAX) == INT64_MAX
    assert rule.prepare(INT64_MIN) == INT64_MIN
    for outside in (INT64_MAX + 1, INT64_MIN - 1):
        with pytest.raises(co.ValidationError, match="outside the signed 64-bit range"):
            rule.prepare(outside)
        with pytest.raises(ValueError, match="outside the signed 64-bit range"):
            rule.load(outside)
    assert counter_sum(INT64_MAX - 1, 1, b"k") == INT64_MAX
    with pytest.raises(co.ValidationError, match="leaves the signed 64-bit range"):
        counter_sum(INT64_MAX, 1, b"k")


@pytest.mark.parametrize("module", ["schema.py", "fields.py", "keys.py", "errors.py"])
def test_no_function_of_the_schema_layer_is_longer_than_50_lines(module: str) -> None:
    tree = ast.parse((PACKAGE / module).read_text(encoding="utf-8"))
    long = [
        f"{node.name} ({node.end_lineno - node.lineno + 1} lines)"
        for node in ast.walk(tree)
        if isinstance(node, ast.FunctionDef)
        and node.end_lineno is not None
        and node.end_lineno - node.lineno + 1 > 50
    ]
    assert not long, f"{module}: split {', '.join(long)}"
