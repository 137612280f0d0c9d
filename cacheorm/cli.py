"""``python -m cacheorm``: look at and repair one cache entry from a shell.

::

    python -m cacheorm get    --url URL --schema module:ATTR KEY...  # the record, as JSON
    python -m cacheorm ttl    --url URL --schema module:ATTR KEY...  # seconds left, "no expiry"
    python -m cacheorm delete --url URL --schema module:ATTR KEY...  # "deleted"
    python -m cacheorm clear  --url URL --schema module:ATTR         # how many were removed
    python -m cacheorm ping   --url URL                              # "ok (0.3 ms)"

``--url`` is any URL :func:`cacheorm.backend_from_url` takes. ``module:ATTR``
names a :class:`~cacheorm.Schema` or a :class:`~cacheorm.Repo` in an importable
module (the current directory is on the path), e.g. ``myapp.cache:PERSON``;
a repo brings its serializer, namespace and hooks (its backend is replaced by
``--url``'s), which ``--serializer`` and ``--namespace`` override. A schema
alone is read with ``--serializer`` (default ``msgpack``, as ``co.Repo``'s) in
``--namespace`` (default none).

``KEY`` is the key's text, one argument per part of a composite key, read as
its key field's type: ``42`` for an ``int`` field, ``2024-05-01T12:00:00`` for
a ``datetime``, ``1.50`` for a ``Decimal``, an enum member's value or name,
the UTF-8 bytes of the text for a ``bytes`` field. A text the field cannot
hold is an error naming the field.

``get`` prints the record as JSON: records (NamedTuple, TypedDict, dataclass)
as objects in field order, ``datetime``/``date``/``time`` in ISO 8601,
``Decimal`` as a string of its exact digits, ``UUID`` in its canonical form,
an enum member as its value, ``bytes`` in base64 (as protobuf's JSON mapping
writes them), other values (a ``StructField``'s) as their ``str()``.

Exit status: ``0`` done; ``1`` the key is not there (``get``, ``ttl``,
``delete``); ``2`` a usage error or any cacheorm error (bad URL, unreachable
server, undecodable record, ...), reported as one line on stderr.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import dataclasses
import datetime as dt
import enum
import importlib
import json
import re
import sys
import time
import uuid
from collections.abc import Hashable, Iterator, Mapping, Sequence
from decimal import Decimal
from typing import Protocol, TextIO, TypeAlias, TypeVar, cast

import cacheorm as co
from cacheorm.fields import EnumField, Field, NullableField
from cacheorm.urls import SCHEMES, redact_url

__all__ = ["JSON", "jsonable", "key_from_text", "main"]

PROG = "python -m cacheorm"

JSON: TypeAlias = bool | int | float | str | list["JSON"] | dict[str, "JSON"] | None
"""A value :func:`json.dumps` writes as is."""

EXIT_OK = 0
EXIT_NOT_FOUND = 1
EXIT_ERROR = 2

_INT = re.compile(r"[+-]?[0-9]+\Z")

R = TypeVar("R")
K = TypeVar("K", bound=Hashable)


class UsageError(Exception):
    """A command line that names something unusable (a module, an attribute, a key)."""


# -- keys from text ------------------------------------------------------------------


def _readings(text: str) -> Iterator[object]:
    """The primitives ``text`` may stand for, most literal first."""
    yield text
    if _INT.match(text):
        yield int(text)
    with contextlib.suppress(ValueError):
        yield float(text)
    if text.lower() in ("true", "false"):
        yield text.lower() == "true"
    yield text.encode()


def _key_value(schema: co.Schema[R, K], name: str, text: str) -> object:
    rule: Field[object] = schema.fields[name]
    if isinstance(rule, NullableField):  # an AutoField key is int | None; a key is never None
        rule = rule.inner
    for reading in _readings(text):
        try:
            return rule.load(reading)  # type: ignore[arg-type]  # each reading is a Primitive
        except (TypeError, ValueError):
            continue
    if isinstance(rule, EnumField) and text in rule.enum_type.__members__:
        return rule.enum_type.__members__[text]  # a member's name, after its value
    raise UsageError(f"KEY {text!r} is not a value of {schema.name}.{name} ({type(rule).__name__})")


def key_from_text(schema: co.Schema[R, K], parts: Sequence[str]) -> K:
    """The key of ``schema`` that the command line's ``KEY`` arguments spell.

    Args:
        schema: the schema whose key fields say each part's type.
        parts: one text per key field, in the schema's key order.

    Raises:
        UsageError: too many or too few parts, or a part its field cannot hold.

    >>> from cacheorm.demo import COLLECTION  # key ("collector", "note_id"): str, int
    >>> key_from_text(COLLECTION, ["Bob", "1"])
    ('Bob', 1)
    """
    names = schema.key_fields
    if len(parts) != len(names):
        raise UsageError(
            f"{schema.name}'s key has {len(names)} part{'s' if len(names) > 1 else ''} "
            f"({', '.join(names)}): give {len(names)} KEY argument"
            f"{'s' if len(names) > 1 else ''}, got {len(parts)}"
        )
    values = [_key_value(schema, name, text) for name, text in zip(names, parts, strict=True)]
    # Each part was read by its own key field's rule: together they are a key of K.
    return cast("K", values[0] if len(values) == 1 else tuple(values))


# -- records as JSON -----------------------------------------------------------------


class _NamedTuple(Protocol):
    def _asdict(self) -> dict[str, object]: ...


def jsonable(value: object) -> JSON:
    """``value`` as JSON data: how ``get`` prints a record.

    >>> import datetime, decimal
    >>> jsonable({"at": datetime.date(2024, 5, 1), "price": decimal.Decimal("1.50"), "raw": b"hi"})
    {'at': '2024-05-01', 'price': '1.50', 'raw': 'aGk='}
    """
    match value:
        case enum.Enum():
            return jsonable(value.value)
        case None | bool() | int() | float() | str():
            return value
        case dt.datetime() | dt.date() | dt.time():
            return value.isoformat()
        case Decimal() | uuid.UUID():
            return str(value)
        case bytes() | bytearray() | memoryview():
            return base64.b64encode(value).decode("ascii")
        case tuple() if hasattr(value, "_asdict"):  # a NamedTuple record
            return jsonable(cast("_NamedTuple", value)._asdict())
        case Mapping():
            return {str(k): jsonable(v) for k, v in value.items()}
        case list() | tuple() | set() | frozenset():
            return [jsonable(item) for item in value]
        case _ if dataclasses.is_dataclass(value) and not isinstance(value, type):
            return {f.name: jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
        case _:
            return str(value)


# -- the command line ----------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Command:
    """A parsed command line."""

    name: str
    url: str
    schema: str | None = None
    key: tuple[str, ...] = ()
    namespace: str | None = None
    serializer: str | None = None


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Read, inspect and delete cacheorm records; check that a cache answers.",
        epilog="Exit status: 0 done, 1 not found, 2 usage or cache error. "
        "URLs: " + ", ".join(SCHEMES) + ".",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    url = argparse.ArgumentParser(add_help=False)
    url.add_argument(
        "--url", required=True, help="the cache, e.g. redis://127.0.0.1:6379/0 or memory://"
    )
    repo = argparse.ArgumentParser(add_help=False, parents=[url])
    repo.add_argument(
        "--schema",
        required=True,
        metavar="MODULE:ATTR",
        help="a co.Schema or co.Repo, e.g. myapp.cache:PERSON",
    )
    repo.add_argument("--namespace", help="the repo's namespace (default: the repo's, or none)")
    repo.add_argument(
        "--serializer", help="a registered serializer name (default: the repo's, or msgpack)"
    )
    keyed = argparse.ArgumentParser(add_help=False, parents=[repo])
    keyed.add_argument("key", nargs="+", metavar="KEY", help="the key (one per composite part)")
    for name, parent, text in (
        ("get", keyed, "print the record as JSON"),
        ("ttl", keyed, 'print the seconds it has left, or "no expiry"'),
        ("delete", keyed, "delete the record"),
        ("clear", repo, "delete every record of the schema in the namespace; print how many"),
        ("ping", url, "check that the cache answers"),
    ):
        commands.add_parser(
            name, parents=[parent], help=text, description=text[0].upper() + text[1:]
        )
    return parser


def _command(args: argparse.Namespace) -> Command:
    return Command(
        name=str(args.command),
        url=str(args.url),
        schema=getattr(args, "schema", None),
        key=tuple(getattr(args, "key", None) or ()),
        namespace=getattr(args, "namespace", None),
        serializer=getattr(args, "serializer", None),
    )


def _target(spec: str) -> object:
    """The object ``module:attr`` (``attr`` may be dotted) names.

    Raises:
        UsageError: a malformed spec, a module that cannot be imported, a missing attribute.
    """
    module_name, colon, attr = spec.partition(":")
    if not colon or not module_name or not attr:
        raise UsageError(f"--schema {spec!r}: write module:ATTR, e.g. myapp.cache:PERSON")
    try:
        found: object = importlib.import_module(module_name)
    except Exception as err:  # the user's module may raise anything while it loads
        raise UsageError(f"--schema {spec!r}: cannot import {module_name}: {err!r}") from err
    for step in attr.split("."):
        try:
            found = getattr(found, step)
        except AttributeError:
            raise UsageError(f"--schema {spec!r}: {module_name} has no {attr}") from None
    return found


def _repo(command: Command, backend: co.Backend) -> co.Repo[object, Hashable]:
    """The repo the command works on, over ``backend``.

    Raises:
        UsageError: ``--schema`` names neither a schema nor a repo.
        ValidationError: an unknown serializer name.
    """
    assert command.schema is not None
    found = _target(command.schema)
    if isinstance(found, co.Repo):
        repo = cast("co.Repo[object, Hashable]", found).replace(backend=backend)
    elif isinstance(found, co.Schema):
        repo = co.Repo(cast("co.Schema[object, Hashable]", found), backend)
    else:
        raise UsageError(
            f"--schema {command.schema!r} is a {type(found).__name__}, not a co.Schema or co.Repo"
        )
    # A diagnostic tool reports an outage, never a miss: on_backend_error="raise".
    return repo.replace(
        namespace=command.namespace, serializer=command.serializer, on_backend_error="raise"
    )


def _seconds(left: float) -> str:
    return "no expiry" if left == 0.0 else f"{left:.3f}"


def _run(command: Command, out: TextIO) -> int:
    """Carry out ``command``, printing its result to ``out``; return the exit status.

    Raises:
        UsageError: see :func:`_repo` and :func:`key_from_text`.
        CacheORMError: what the backend or the record functions raise.
    """
    backend = co.backend_from_url(command.url)
    try:
        if command.name == "ping":
            start = time.perf_counter()
            backend.ping()
            print(f"ok ({(time.perf_counter() - start) * 1000:.1f} ms)", file=out)
            return EXIT_OK
        repo = _repo(command, backend)
        if command.name == "clear":
            print(co.clear(repo), file=out)
            return EXIT_OK
        key = key_from_text(repo.schema, command.key)
        missing = f"{repo.schema.name} {key!r} not found"
        if command.name == "get":
            record = co.get_or_none(repo, key)
            if record is None:
                raise co.NotFound(missing)
            print(json.dumps(jsonable(record), indent=2, ensure_ascii=False), file=out)
        elif command.name == "ttl":
            found = backend.get_with_ttl(repo.schema.encode_key(key, repo.namespace))
            if found is None:
                raise co.NotFound(missing)
            print(_seconds(found[1]), file=out)
        else:
            if not co.delete(repo, key):
                raise co.NotFound(missing)
            print("deleted", file=out)
        return EXIT_OK
    finally:
        with contextlib.suppress(co.CacheORMError):
            backend.close()


def main(argv: Sequence[str] | None = None, out: TextIO | None = None) -> int:
    """Run the command line ``argv`` (default: ``sys.argv[1:]``); return the exit status.

    Errors are one line on stderr (the URL's password hidden), never a traceback.
    """
    command = _command(_parser().parse_args(argv))
    try:
        return _run(command, sys.stdout if out is None else out)
    except co.NotFound as err:
        print(f"{PROG}: {err}", file=sys.stderr)
        return EXIT_NOT_FOUND
    except (UsageError, co.CacheORMError) as err:
        kind = "error" if isinstance(err, UsageError) else type(err).__name__
        print(f"{PROG}: {kind}: {redact_url(str(err))}", file=sys.stderr)
        return EXIT_ERROR
