"""A mypy plugin that checks what cacheorm's plain annotations cannot express.

Enable it in ``pyproject.toml``::

    [tool.mypy]
    plugins = ["cacheorm.mypy"]

Without the plugin the generics already hold (``get`` returns ``R``, a key must
be a ``K``); the plugin adds three checks that need the record's field names:

* ``co.update(repo, key, **changes)``, ``co.ops.update(...)`` and ``aio.update`` get one
  optional keyword parameter per record field, typed as the field, so an
  unknown field (``heigth=1.0``) or a wrong value (``height="tall"``) is an error.
* ``co.update_many(repo, {key: {field: value}})``, ``co.ops.update_many`` and
  ``aio.update_many``:
  when the changes are written as dict literals, each inner dict is checked as
  a partial ``TypedDict`` of the record's fields.
* ``co.Schema(Person, key="name")`` infers the key type ``K`` from the named
  field (``str``; a tuple of the field types for a composite key; ``None`` is
  dropped, as a stored key is never ``None``), and reports a key field, a
  ``defaults=`` or a ``fields=`` name that the record does not have.

Records are NamedTuples, TypedDicts and dataclasses. When the repo's record
type is not known precisely (``Any``, a type variable), the plugin leaves the
default signature alone, so it never rejects what plain mypy accepts except
mistakes it can prove.
"""

from __future__ import annotations

from collections.abc import Callable

from mypy.errorcodes import ErrorCode
from mypy.expandtype import expand_type
from mypy.maptype import map_instance_to_supertype
from mypy.nodes import (
    ARG_NAMED_OPT,
    ARG_POS,
    ARG_STAR,
    ARG_STAR2,
    CallExpr,
    DictExpr,
    Expression,
    ListExpr,
    StrExpr,
    TupleExpr,
    Var,
)
from mypy.plugin import FunctionContext, FunctionSigContext, Plugin
from mypy.subtypes import is_same_type
from mypy.types import (
    AnyType,
    CallableType,
    FunctionLike,
    Instance,
    ProperType,
    TupleType,
    Type,
    TypedDictType,
    TypeOfAny,
    TypeVarId,
    TypeVarType,
    UnionType,
    get_proper_type,
    has_type_vars,
)

# The plugin module is cacheorm.mypy: importing it has imported cacheorm already.
from cacheorm import crud

__all__ = ["SCHEMA_FIELD", "plugin"]

SCHEMA_FIELD = ErrorCode(
    "cacheorm-schema",
    "A Schema names a key, default or field the record type does not have",
    "cacheorm",
)
"""The error code of the plugin's own errors (``# type: ignore[cacheorm-schema]``)."""

_REPO = "cacheorm.repo.Repo"
_SCHEMA = "cacheorm.schema.Schema"
# Each public function, its op builder and its coroutine twin (cacheorm.aio derives one per
# name in crud.__all__, as cacheorm.ops does).
_MODULES = ("cacheorm.crud", "cacheorm.ops", "cacheorm.aio")
_UPDATE = frozenset(f"{module}.update" for module in _MODULES)
_UPDATE_MANY = frozenset(f"{module}.update_many" for module in _MODULES)
# Every other public function (as cacheorm.crud declares them) binds R and K from its repo.
_REPO_FIRST = frozenset(
    f"{module}.{name}"
    for module in _MODULES
    for name in crud.__all__
    if name not in ("update", "update_many")
) | {"cacheorm.repo.on"}


def _record_fields(record: Type) -> dict[str, Type] | None:
    """The record's fields and their types, in order; ``None`` if not a known record."""
    proper = get_proper_type(record)
    if isinstance(proper, TypedDictType):
        return dict(proper.items)
    if isinstance(proper, TupleType):
        # A NamedTuple's instances are tuple types whose fallback is the class.
        proper = proper.partial_fallback
    if not isinstance(proper, Instance):
        return None
    info = proper.type
    if info.is_named_tuple and info.tuple_type is not None:
        names = info.metadata.get("namedtuple", {}).get("fields", [])
        if len(names) != len(info.tuple_type.items):
            return None
        return dict(zip(names, info.tuple_type.items, strict=True))
    dataclass = info.metadata.get("dataclass")
    if dataclass is None:
        return None
    fields: dict[str, Type] = {}
    for attribute in dataclass.get("attributes", []):
        if not attribute.get("is_in_init", True):
            continue
        symbol = info.get(attribute["name"])
        node = None if symbol is None else symbol.node
        if not isinstance(node, Var) or node.type is None:
            return None
        fields[attribute["name"]] = node.type
    return fields


def _repo_instance(repo: Type) -> Instance | None:
    """``Repo[R, K]`` of a repo (or of a subclass); ``None`` if not a repo."""
    proper = get_proper_type(repo)
    if not isinstance(proper, Instance):
        return None
    for base in proper.type.mro:
        if base.fullname == _REPO:
            mapped = map_instance_to_supertype(proper, base)
            return mapped if len(mapped.args) == 2 else None
    return None


def _repo_record(repo: Type) -> Type | None:
    """``R`` of a ``Repo[R, K]``; ``None`` if not a repo."""
    instance = _repo_instance(repo)
    return None if instance is None else instance.args[0]


def _has_unpacking(context: object) -> bool:
    """Whether the call passes ``*args`` or ``**kwargs`` (then the plugin stays out)."""
    return isinstance(context, CallExpr) and any(
        kind in (ARG_STAR, ARG_STAR2) for kind in context.arg_kinds
    )


def _fields_of_call(ctx: FunctionSigContext) -> dict[str, Type] | None:
    if _has_unpacking(ctx.context) or not ctx.args or len(ctx.args[0]) != 1:
        return None
    record = _repo_record(ctx.api.get_expression_type(ctx.args[0][0]))
    return None if record is None else _record_fields(record)


def _bind_repo(ctx: FunctionSigContext) -> CallableType:
    """The signature with ``R`` and ``K`` fixed to the repo argument's own.

    Plain inference solves ``R`` and ``K`` from every argument and the return
    context at once, which fails in ways that hide the mistake or invent one: a
    TypedDict record written as a dict literal cannot be inferred, a result
    passed where ``object`` is expected forces ``R = object`` against the
    invariant repo, and a wrong key reads "Cannot infer value of type
    parameter". Taking them from the repo first gives each argument the
    precise expected type ("expected "str"") instead.
    """
    sig = ctx.default_signature
    if _has_unpacking(ctx.context) or not ctx.args or len(ctx.args[0]) != 1:
        return sig
    formal = get_proper_type(sig.arg_types[0]) if sig.arg_types else None
    if not isinstance(formal, Instance) or formal.type.fullname != _REPO:
        return sig
    actual = _repo_instance(ctx.api.get_expression_type(ctx.args[0][0]))
    if actual is None:
        return sig
    env: dict[TypeVarId, Type] = {}
    for variable, value in zip(formal.args, actual.args, strict=True):
        proper = get_proper_type(variable)
        if isinstance(proper, TypeVarType):
            env[proper.id] = value
    if _is_key_fallback(formal, actual, sig):
        # An overload for the default key type (Hashable), typing its key by the
        # key given: with a known key type it is that key type's own signature.
        key = get_proper_type(sig.arg_types[1])
        assert isinstance(key, TypeVarType)
        env[key.id] = actual.args[1]
        sig = sig.copy_modified(arg_types=[actual, *sig.arg_types[1:]])
    bound = expand_type(sig, env)
    return bound.copy_modified(variables=[v for v in sig.variables if v.id not in env])


def _is_key_fallback(formal: Instance, actual: Instance, sig: CallableType) -> bool:
    """Whether ``sig`` is the ``Repo[R, Hashable]`` overload of a key-typed callback, and
    the repo's key type is known (see ``get_or_load``)."""
    formal_key = get_proper_type(formal.args[1])
    actual_key = get_proper_type(actual.args[1])
    return (
        isinstance(formal_key, Instance)
        and formal_key.type.fullname == "typing.Hashable"
        and not isinstance(actual_key, AnyType)
        and not (isinstance(actual_key, Instance) and actual_key.type.fullname == "typing.Hashable")
        and len(sig.arg_types) > 1
        and isinstance(get_proper_type(sig.arg_types[1]), TypeVarType)
    )


def _update_signature(ctx: FunctionSigContext) -> FunctionLike:
    """``update(repo, key, /, *, field: T = ..., ...)`` from the repo's record type."""
    sig = _bind_repo(ctx)
    fields = _fields_of_call(ctx)
    if fields is None:
        return sig
    # Keep the two positional-only parameters (repo, key); replace **changes.
    positional = [i for i, kind in enumerate(sig.arg_kinds) if kind == ARG_POS]
    if len(positional) != 2:
        return sig
    return sig.copy_modified(
        arg_types=[*(sig.arg_types[i] for i in positional), *fields.values()],
        arg_kinds=[ARG_POS, ARG_POS, *([ARG_NAMED_OPT] * len(fields))],
        # None names keep repo and key positional-only, so a field may be called "key".
        arg_names=[None, None, *fields],
    )


def _is_literal_changes(expr: Expression) -> bool:
    return isinstance(expr, DictExpr) and all(
        isinstance(value, DictExpr) for _, value in expr.items
    )


def _update_many_signature(ctx: FunctionSigContext) -> FunctionLike:
    """Check ``{key: {field: value}}`` literals as partial TypedDicts of the record."""
    sig = _bind_repo(ctx)
    if len(ctx.args) < 2 or len(ctx.args[1]) != 1 or not _is_literal_changes(ctx.args[1][0]):
        # A variable of type dict[K, dict[str, object]] stays accepted as declared.
        return sig
    fields = _fields_of_call(ctx)
    mapping = get_proper_type(sig.arg_types[1])
    if fields is None or not isinstance(mapping, Instance) or len(mapping.args) != 2:
        return sig
    partial = TypedDictType(
        items=fields,
        required_keys=set(),
        readonly_keys=set(),
        fallback=ctx.api.named_generic_type("typing._TypedDict", []),
    )
    changes = mapping.copy_modified(args=[mapping.args[0], partial])
    return sig.copy_modified(arg_types=[sig.arg_types[0], changes, *sig.arg_types[2:]])


def _literal_names(expr: Expression) -> list[tuple[str, Expression]] | None:
    """``"a"`` or ``("a", "b")`` / ``["a", "b"]`` as names; ``None`` if not all literal."""
    if isinstance(expr, StrExpr):
        return [(expr.value, expr)]
    if isinstance(expr, TupleExpr | ListExpr):
        names: list[tuple[str, Expression]] = [
            (item.value, item) for item in expr.items if isinstance(item, StrExpr)
        ]
        return names if len(names) == len(expr.items) else None
    return None


def _formal_args(ctx: FunctionContext, name: str) -> list[Expression]:
    try:
        return ctx.args[ctx.callee_arg_names.index(name)]
    except ValueError:
        return []


def _schema_return(ctx: FunctionContext) -> Type:
    """``Schema(Record, key=...)``: infer ``K`` and check the names it is given."""
    default = get_proper_type(ctx.default_return_type)
    if not isinstance(default, Instance) or len(default.args) != 2:
        return ctx.default_return_type
    fields = _record_fields(default.args[0])
    if fields is None:
        return ctx.default_return_type
    record_name = _record_name(default.args[0])
    _check_option_names(ctx, fields, record_name)
    key_args = _formal_args(ctx, "key")
    names = _literal_names(key_args[0]) if len(key_args) == 1 else None
    if names is None:
        return ctx.default_return_type
    key_type = _key_type(ctx, key_args[0], names, fields, record_name)
    if not _inferred_key_stands(ctx, key_type, key_args[0]):
        return ctx.default_return_type
    return default.copy_modified(args=[default.args[0], key_type])


def _check_option_names(ctx: FunctionContext, fields: dict[str, Type], record_name: str) -> None:
    """Report a ``defaults=`` or ``fields=`` literal naming a field the record lacks."""
    known = ", ".join(fields)
    for option in ("defaults", "fields"):
        for arg in _formal_args(ctx, option):
            if isinstance(arg, DictExpr):
                for item_key, _ in arg.items:
                    if isinstance(item_key, StrExpr) and item_key.value not in fields:
                        ctx.api.fail(
                            f'{option}= names "{item_key.value}", which {record_name} does not '
                            f"have; its fields are {known}",
                            item_key,
                            code=SCHEMA_FIELD,
                        )


def _key_type(
    ctx: FunctionContext,
    key_arg: Expression,
    names: list[tuple[str, Expression]],
    fields: dict[str, Type],
    record_name: str,
) -> Type:
    """The key type the named fields make (reporting a name the record lacks)."""
    key_types: list[Type] = []
    for name, expr in names:
        if name not in fields:
            ctx.api.fail(
                f'Schema key "{name}" is not a field of {record_name}; '
                f"its fields are {', '.join(fields)}",
                expr,
                code=SCHEMA_FIELD,
            )
            key_types.append(AnyType(TypeOfAny.from_error))
        else:
            key_types.append(fields[name])  # an AutoField key stays `int | None`
    if isinstance(key_arg, StrExpr) or len(key_types) == 1:
        # A one-field key is a scalar at run time, however it was spelt.
        return key_types[0]
    return TupleType(
        key_types,
        ctx.api.named_generic_type("builtins.tuple", [UnionType.make_union(key_types)]),
    )


def _inferred_key_stands(ctx: FunctionContext, key_type: Type, key_arg: Expression) -> bool:
    """Whether the inferred key type is the schema's: not when an annotation widens it
    (``Hashable``, ``Any``) or contradicts it (reported)."""
    context = get_proper_type(ctx.api.type_context[-1]) if ctx.api.type_context else None
    if (
        not isinstance(context, Instance)
        or context.type.fullname != _SCHEMA
        or not context.args
        # Nested in Repo(...), the context is Repo's own unsolved Schema[R, K].
        or has_type_vars(context.args[-1])
    ):
        return True
    wanted = context.args[-1]
    proper_wanted = get_proper_type(wanted)
    # An annotation with the default K (Hashable) or Any deliberately widens the key.
    if isinstance(proper_wanted, AnyType) or (
        isinstance(proper_wanted, Instance) and proper_wanted.type.fullname == "typing.Hashable"
    ):
        return False
    if not is_same_type(wanted, key_type):
        ctx.api.fail(
            f"the key of this Schema has type {_show(key_type)}, "
            f"but the annotation says {_show(wanted)}",
            key_arg,
            code=SCHEMA_FIELD,
        )
        return False
    return True


def _record_name(record: Type) -> str:
    proper = get_proper_type(record)
    if isinstance(proper, TypedDictType):
        return proper.fallback.type.name
    if isinstance(proper, TupleType):
        return proper.partial_fallback.type.name
    if isinstance(proper, Instance):
        return proper.type.name
    return str(proper)


def _show(tp: Type) -> str:
    proper: ProperType = get_proper_type(tp)
    return f'"{proper}"'


def _named(
    hook: Callable[[FunctionSigContext], FunctionLike], fullname: str
) -> Callable[[FunctionSigContext], FunctionLike]:
    """``hook``, its signature named after the function for mypy's messages.

    An op builder is derived by assignment (``get = op(crud.get)``), which
    leaves its signature nameless: messages would read "Argument 2 has ..."
    rather than "Argument 2 to "get" has ...".
    """
    name = fullname.rpartition(".")[2]

    def named(ctx: FunctionSigContext) -> FunctionLike:
        sig = hook(ctx)
        if isinstance(sig, CallableType) and sig.name is None:
            return sig.copy_modified(name=name)
        return sig

    return named


class CacheORMPlugin(Plugin):
    """Field-aware signatures for ``update``/``update_many`` and key inference for ``Schema``."""

    def get_function_signature_hook(
        self, fullname: str
    ) -> Callable[[FunctionSigContext], FunctionLike] | None:
        if fullname in _UPDATE:
            return _named(_update_signature, fullname)
        if fullname in _UPDATE_MANY:
            return _named(_update_many_signature, fullname)
        if fullname in _REPO_FIRST:
            return _named(_bind_repo, fullname)
        return None

    def get_function_hook(self, fullname: str) -> Callable[[FunctionContext], Type] | None:
        if fullname == _SCHEMA:
            return _schema_return
        return None


def plugin(version: str) -> type[Plugin]:
    """The mypy entry point (``plugins = ["cacheorm.mypy"]``).

    Args:
        version: the running mypy's version; every mypy with the plugin API
            used here (1.x and later) is accepted.
    """
    return CacheORMPlugin
