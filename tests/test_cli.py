"""``python -m cacheorm``: run as a user runs it, in a subprocess, against a throwaway Redis.

What a user relies on: ``get`` prints the stored record as JSON (every field
type rendered as documented), ``ttl`` the seconds left or "no expiry",
``delete`` deletes, ``clear`` removes one schema's records and says how many,
``ping`` says whether the cache answers; ``KEY`` is read as the key field's
type; a ``co.Repo`` brings its serializer and namespace; exit status 1 means
"not found" and 2 an error, reported in one line without a traceback.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

import pytest

import cacheorm as co
from cacheorm.cli import UsageError, key_from_text, main
from tests.records import COLLECTION, EVERYTHING, NOTE, PERSON, Color, Everything, Note, Person, Tag

if TYPE_CHECKING:
    from tests.servers import RedisServer

ROOT = Path(__file__).resolve().parent.parent


class Result(NamedTuple):
    status: int
    out: str
    err: str


def cli(*args: str, path: Path | None = None) -> Result:
    """Run ``python -m cacheorm *args`` from the project root (``tests`` importable)."""
    env = dict(os.environ)
    if path is not None:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, (str(path), env.get("PYTHONPATH"))))
    done = subprocess.run(
        [sys.executable, "-m", "cacheorm", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    return Result(done.returncode, done.stdout, done.stderr)


def in_process(capsys: pytest.CaptureFixture[str], *args: str) -> Result:
    """The same ``main()`` as ``python -m cacheorm``, in this process (no interpreter start)."""
    status = main(list(args))
    out, err = capsys.readouterr()
    return Result(status, out, err)


def one_line_error(result: Result, status: int, says: str) -> None:
    assert result.status == status, result
    assert result.out == ""
    assert result.err.count("\n") == 1, result.err  # one line, no traceback
    assert result.err.startswith("python -m cacheorm: ")
    assert says in result.err


@pytest.fixture
def server(redis_server: RedisServer) -> RedisServer:
    redis_server.flush()
    return redis_server


@pytest.fixture
def backend(server: RedisServer) -> Iterator[co.Backend]:
    made = co.RedisBackend(url=server.url)
    try:
        yield made
    finally:
        made.close()


EVERY = Everything(
    id=7,
    text="héllo",
    number=1.5,
    flag=True,
    blob=b"\x00\xff",
    price=Decimal("9.90"),
    when=dt.datetime(2024, 5, 1, 12, 0, tzinfo=dt.UTC),
    day=dt.date(2024, 5, 1),
    clock=dt.time(12, 30),
    uid=uuid.UUID(int=1),
    color=Color.RED,
    tags=[Tag("a", 1)],
    scores={"x": 1},
)


def test_get_prints_the_record_as_json(server: RedisServer, backend: co.Backend) -> None:
    co.insert(co.Repo(EVERYTHING, backend=backend), EVERY)
    result = cli("get", "--url", server.url, "--schema", "tests.records:EVERYTHING", "7")
    assert result.status == 0, result
    assert json.loads(result.out) == {
        "id": 7,
        "text": "héllo",
        "number": 1.5,
        "flag": True,
        "blob": "AP8=",  # base64
        "price": "9.90",  # exact digits
        "when": "2024-05-01T12:00:00+00:00",
        "day": "2024-05-01",
        "clock": "12:30:00",
        "uid": "00000000-0000-0000-0000-000000000001",
        "color": "red",  # the member's value
        "tags": [{"label": "a", "weight": 1}],
        "scores": {"x": 1},
        "maybe": None,
    }
    assert list(json.loads(result.out)) == list(EVERYTHING.field_names)  # field order kept
    missing = cli("get", "--url", server.url, "--schema", "tests.records:EVERYTHING", "8")
    one_line_error(missing, 1, "Everything 8 not found")


def test_ttl_prints_the_seconds_left(server: RedisServer, backend: co.Backend) -> None:
    co.insert(co.Repo(PERSON, backend=backend, ttl=100), Person("Sam", 1.5))
    co.insert(co.Repo(PERSON, backend=backend, ttl=0), Person("Ann", 1.6))
    args = ("ttl", "--url", server.url, "--schema", "tests.records:PERSON")
    left = cli(*args, "Sam")
    assert left.status == 0, left
    assert 90 < float(left.out) <= 100
    assert cli(*args, "Ann").out == "no expiry\n"
    one_line_error(cli(*args, "Bob"), 1, "Person 'Bob' not found")


def test_delete_and_clear(server: RedisServer, backend: co.Backend) -> None:
    people = co.Repo(PERSON, backend=backend)
    co.insert_many(people, [Person(name, 1.0) for name in ("Sam", "Ann", "Bob")])
    notes = co.Repo(NOTE, backend=backend)
    note = co.insert(notes, Note(None, "kept"))  # another schema: clear leaves it
    args = ("--url", server.url, "--schema", "tests.records:PERSON")
    deleted = cli("delete", *args, "Sam")
    assert (deleted.status, deleted.out) == (0, "deleted\n")
    assert co.get_or_none(people, "Sam") is None
    one_line_error(cli("delete", *args, "Sam"), 1, "not found")
    cleared = cli("clear", *args)
    assert (cleared.status, cleared.out) == (0, "2\n"), cleared
    assert co.get_many(people, ["Ann", "Bob"]) == [None, None]
    assert note.id is not None
    assert co.get(notes, note.id) == note


def test_keys_are_read_as_their_fields_type_and_a_repo_brings_its_settings(
    server: RedisServer,
    backend: co.Backend,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    (tmp_path / "cli_models.py").write_text(
        textwrap.dedent(
            """
            import cacheorm as co
            from tests.records import COLLECTION

            REPO = co.Repo(COLLECTION, serializer="json", namespace="shop")
            """
        )
    )
    shop = co.Repo(COLLECTION, backend=backend, serializer="json", namespace="shop")
    co.insert(shop, {"collector": "Bob", "note_id": 1, "remark": "good"})
    args = ("get", "--url", server.url, "--schema", "cli_models:REPO")
    found = cli(*args, "Bob", "1", path=tmp_path)  # note_id read as an int
    assert found.status == 0, found
    assert json.loads(found.out) == {"collector": "Bob", "note_id": 1, "remark": "good"}
    # The schema alone: msgpack in no namespace, so this JSON record is not there.
    schema = cli("get", "--url", server.url, "--schema", "tests.records:COLLECTION", "Bob", "1")
    assert schema.status == 1, schema
    # --namespace overrides the repo's.
    assert cli(*args, "--namespace", "other", "Bob", "1", path=tmp_path).status == 1
    monkeypatch.syspath_prepend(str(tmp_path))
    one_line_error(in_process(capsys, *args, "Bob", "one"), 2, "Collection.note_id")
    one_line_error(in_process(capsys, *args, "Bob"), 2, "give 2 KEY arguments")
    sys.modules.pop("cli_models", None)


def test_ping_says_whether_the_cache_answers(
    server: RedisServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ok = cli("ping", "--url", server.url)
    assert ok.status == 0, ok
    assert ok.out.startswith("ok (")
    assert in_process(capsys, "ping", "--url", (tmp_path / "cache").as_uri()).status == 0
    dead = f"redis://{server.host}:1/0?socket_connect_timeout=0.5"
    one_line_error(cli("ping", "--url", dead), 2, "BackendError")


def test_usage_errors_exit_2_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    def run(*args: str) -> Result:
        return in_process(capsys, *args)

    url = (tmp_path / "cache").as_uri()
    one_line_error(run("get", "--url", url, "--schema", "no_such_module:X", "1"), 2, "import")
    one_line_error(run("get", "--url", url, "--schema", "tests.records:NOPE", "1"), 2, "no NOPE")
    one_line_error(
        run("get", "--url", url, "--schema", "tests.records:Person", "1"), 2, "not a co.Schema"
    )
    one_line_error(run("get", "--url", url, "--schema", "tests.records", "1"), 2, "module:ATTR")
    one_line_error(run("ping", "--url", "mem://"), 2, "supported: memory://")
    one_line_error(
        run("get", "--url", url, "--schema", "tests.records:NOTE", "--serializer", "xml", "1"),
        2,
        "no serializer is registered as 'xml'",
    )
    with pytest.raises(SystemExit) as usage:
        main(["get", "--url", url])
    assert usage.value.code == 2
    assert "required: --schema" in capsys.readouterr().err
    helped = cli("--help")
    assert helped.status == 0
    assert all(name in helped.out for name in ("get", "ttl", "delete", "clear", "ping"))
    absent = cli("get", "--url", "memory://", "--schema", "tests.records:NOTE", "1")
    one_line_error(absent, 1, "Note 1 not found")


class Reading(NamedTuple):
    color: Color
    uid: uuid.UUID
    at: dt.datetime
    price: Decimal
    raw: bytes
    ratio: float
    flag: bool


def test_key_text_is_read_as_each_key_fields_type() -> None:
    schema: co.Schema[Reading, tuple[Color, uuid.UUID, dt.datetime, Decimal, bytes, float, bool]]
    schema = co.Schema(Reading, key=Reading._fields)
    texts = ["RED", str(uuid.UUID(int=3)), "2024-05-01T12:00:00", "1.50", "ab", "1", "true"]
    assert key_from_text(schema, texts) == (
        Color.RED,  # a member's name (its value, "red", works too)
        uuid.UUID(int=3),
        dt.datetime(2024, 5, 1, 12, 0),
        Decimal("1.50"),
        b"ab",
        1.0,
        True,
    )
    assert key_from_text(schema, ["red", *texts[1:]])[0] is Color.RED
    with pytest.raises(UsageError, match=r"'maybe' is not a value of Reading\.flag"):
        key_from_text(schema, [*texts[:-1], "maybe"])
