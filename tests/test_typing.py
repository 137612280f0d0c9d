"""Typing tests: the example files in ``tests/typing_cases`` run through mypy and pyright.

File name prefixes say which checker runs see a case:

* ``ok_*``: must pass ``--strict`` cleanly in every run (mypy with and without the
  ``cacheorm.mypy`` plugin, and pyright strict);
* ``err_*``: plain-generics mistakes, expected in both mypy runs;
* ``plain_*``: mypy without the plugin (and pyright);
* ``plugin_*``: mypy with the plugin only;
* ``reveal_*``: ``reveal_type`` notes, both mypy runs.

An expected error is marked on its line: ``# E: <part of the message>``; a note
(``reveal_type``) ``# N: <message>``; several markers may share a line. A marker
for one mypy run only is written ``# E[plain]: ...`` or ``# E[plugin]: ...`` (the
plugin turns "Cannot infer value of type parameter" into precise messages). Every
marker must be reported on its line and nothing else may be reported (notes other
than ``Revealed type`` ones are hints attached to errors and are not compared).

The documentation's examples are checked too: every ``python`` block of
``README.md``, ``docs/fields.md`` and ``docs/typing.md`` (one module per document,
each line at its own line number) must be clean in all three runs, as a user
pasting them would find them.

mypy runs once per configuration over all its files, with a cache under pytest's
tmp dir, since each run takes seconds.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest
from mypy import api as mypy_api

ROOT = Path(__file__).resolve().parent.parent
CASES = ROOT / "tests" / "typing_cases"
CONFIG = CASES / "mypy.ini"

DOCS = {
    "readme_examples.py": ROOT / "README.md",
    "fields_examples.py": ROOT / "docs" / "fields.md",
    "typing_guide_examples.py": ROOT / "docs" / "typing.md",
}
"""The documents whose ``python`` blocks are type-checked, by the module they become."""

_FENCE = re.compile(r"^```python\n(.*?)^```", re.DOTALL | re.MULTILINE)
_MARKER = re.compile(r"#\s*([EN])(?:\[(plain|plugin)\])?:\s*(.*?)\s*(?=#\s*[EN][\[:]|$)")
_REPORT = re.compile(r"^(?P<path>[^:]+):(?P<line>\d+): (?P<kind>error|note): (?P<msg>.*)$")

Expectations = dict[int, list[tuple[str, str]]]


def _cases(*prefixes: str) -> list[Path]:
    return sorted(p for p in CASES.glob("*.py") if p.name.startswith(prefixes))


PLUGIN_FILES = _cases("ok_", "err_", "plugin_", "reveal_")
PLAIN_FILES = _cases("ok_", "err_", "plain_", "reveal_")
PYRIGHT_FILES = _cases("ok_", "plain_", "reveal_")
PYRIGHT_ERROR_FILES = _cases("err_")


@dataclass(frozen=True)
class MypyRun:
    """What one mypy run reported, per file and line."""

    name: str
    reports: dict[str, dict[int, list[tuple[str, str]]]]
    stdout: str
    exit_status: int


def _expectations(path: Path, run: str | None = None) -> Expectations:
    expected: Expectations = defaultdict(list)
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        _, _, comment = line.partition("  #")
        if not comment:
            continue
        for kind, only, text in _MARKER.findall("#" + comment):
            if not only or run is None or only == run:
                expected[number].append(("error" if kind == "E" else "note", text))
    return expected


def _run_mypy(name: str, files: list[Path], config_text: str, tmp: Path) -> MypyRun:
    config = tmp / "mypy.ini"
    config.write_text(config_text.replace("$MYPY_CONFIG_FILE_DIR/../..", str(ROOT)))
    args = [
        "--config-file",
        str(config),
        "--cache-dir",
        str(tmp / "cache"),
        "--no-error-summary",
        "--hide-error-context",
        "--no-pretty",
        "--show-absolute-path",
        *map(str, files),
    ]
    stdout, stderr, status = mypy_api.run(args)
    assert not stderr.strip(), stderr
    reports: dict[str, dict[int, list[tuple[str, str]]]] = defaultdict(lambda: defaultdict(list))
    for line in stdout.splitlines():
        match = _REPORT.match(line)
        assert match, f"unparsed mypy output: {line}"
        msg = re.sub(r"\s+\[[a-z0-9-]+\]$", "", match["msg"])
        reports[Path(match["path"]).name][int(match["line"])].append((match["kind"], msg))
    return MypyRun(name, reports, stdout, status)


def _doc_as_module(doc: Path) -> str:
    """The document's ``python`` blocks as one module, each line at its own line number.

    Everything outside the blocks becomes a blank line, so a checker's report
    names the document's own line.
    """
    text = doc.read_text(encoding="utf-8")
    lines = [""] * (text.count("\n") + 1)
    for block in _FENCE.finditer(text):
        first = text.count("\n", 0, block.start(1))
        for offset, line in enumerate(block[1].splitlines()):
            lines[first + offset] = line
    return "\n".join(lines) + "\n"


@pytest.fixture(scope="session")
def doc_modules(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """The documents' examples written out as modules, for the checkers to read."""
    tmp = tmp_path_factory.mktemp("docs")
    modules = []
    for name, doc in DOCS.items():
        module = tmp / name
        module.write_text(_doc_as_module(doc), encoding="utf-8")
        modules.append(module)
    return modules


@pytest.fixture(scope="session")
def plugin_run(tmp_path_factory: pytest.TempPathFactory, doc_modules: list[Path]) -> MypyRun:
    return _run_mypy(
        "plugin",
        [*PLUGIN_FILES, *doc_modules],
        CONFIG.read_text(),
        tmp_path_factory.mktemp("mypy-plugin"),
    )


@pytest.fixture(scope="session")
def plain_run(tmp_path_factory: pytest.TempPathFactory, doc_modules: list[Path]) -> MypyRun:
    text = "\n".join(
        line for line in CONFIG.read_text().splitlines() if not line.startswith("plugins")
    )
    assert text != CONFIG.read_text()
    return _run_mypy(
        "plain", [*PLAIN_FILES, *doc_modules], text + "\n", tmp_path_factory.mktemp("mypy-plain")
    )


def _compare(path: Path, run: MypyRun) -> None:
    expected = _expectations(path, run.name)
    reported = run.reports.get(path.name, {})
    problems: list[str] = []
    for line, wanted in sorted(expected.items()):
        got = reported.get(line, [])
        for kind, text in wanted:
            if not any(k == kind and text in msg for k, msg in got):
                problems.append(f"{path.name}:{line}: missing {kind} {text!r}; got {got}")
    for line, got in sorted(reported.items()):
        wanted = expected.get(line, [])
        for kind, msg in got:
            if kind == "note" and not msg.startswith("Revealed type"):
                continue  # a hint attached to an error ("defined in", "did you mean")
            if not any(k == kind and text in msg for k, text in wanted):
                problems.append(f"{path.name}:{line}: unexpected {kind}: {msg}")
    assert not problems, "\n".join(problems) + "\n\nfull output:\n" + run.stdout


@pytest.mark.timeout(300)
@pytest.mark.parametrize("path", PLUGIN_FILES, ids=lambda p: p.name)
def test_mypy_with_plugin(path: Path, plugin_run: MypyRun) -> None:
    _compare(path, plugin_run)


@pytest.mark.timeout(300)
@pytest.mark.parametrize("path", PLAIN_FILES, ids=lambda p: p.name)
def test_mypy_without_plugin(path: Path, plain_run: MypyRun) -> None:
    _compare(path, plain_run)


def test_case_files_carry_expectations() -> None:
    """Guards the harness itself: error cases mark errors, clean cases mark none."""
    for path in _cases("err_", "plugin_err", "reveal_"):
        assert _expectations(path), f"{path.name} has no # E: / # N: markers"
    for path in _cases("ok_", "plugin_ok"):
        assert not _expectations(path), f"{path.name} must be clean but has markers"


def _pyright() -> str:
    found = Path(sys.executable).parent / "pyright"
    if found.exists():
        return str(found)
    on_path = shutil.which("pyright")
    if on_path is None:  # a loud failure: `make test` installs it with the dev extras
        pytest.fail("pyright is not installed; pip install 'pyright[nodejs]'")
    return on_path


@pytest.fixture(scope="session")
def pyright_errors(
    tmp_path_factory: pytest.TempPathFactory, doc_modules: list[Path]
) -> dict[str, dict[int, list[str]]]:
    """The errors pyright (strict) reports, by line, per case file it checks."""
    tmp = tmp_path_factory.mktemp("pyright")
    config = {
        "pythonVersion": "3.11",
        "typeCheckingMode": "strict",
        "stubPath": str(ROOT / "stubs"),
        "extraPaths": [str(ROOT)],
    }
    (tmp / "pyrightconfig.json").write_text(json.dumps(config))
    files = [*PYRIGHT_FILES, *PYRIGHT_ERROR_FILES, *doc_modules]
    done = subprocess.run(
        [
            _pyright(),
            "--outputjson",
            "--pythonpath",
            sys.executable,
            "-p",
            str(tmp / "pyrightconfig.json"),
            *map(str, files),
        ],
        capture_output=True,
        text=True,
        check=False,
        cwd=ROOT,
        timeout=240,
    )
    report = json.loads(done.stdout)
    assert report["summary"]["filesAnalyzed"] >= len(files), done.stdout
    errors: dict[str, dict[int, list[str]]] = {path.name: defaultdict(list) for path in files}
    for diagnostic in report["generalDiagnostics"]:
        if diagnostic["severity"] == "error":
            line = diagnostic["range"]["start"]["line"] + 1
            errors[Path(diagnostic["file"]).name][line].append(diagnostic["message"])
    return errors


@pytest.mark.timeout(300)
@pytest.mark.parametrize("path", PYRIGHT_FILES, ids=lambda p: p.name)
def test_pyright_accepts_plugin_free_cases(
    path: Path, pyright_errors: dict[str, dict[int, list[str]]]
) -> None:
    assert not pyright_errors[path.name], (
        f"pyright errors on lines {sorted(pyright_errors[path.name])}"
    )


@pytest.mark.timeout(300)
@pytest.mark.parametrize("path", PYRIGHT_ERROR_FILES, ids=lambda p: p.name)
def test_pyright_catches_the_plain_mistakes(
    path: Path, pyright_errors: dict[str, dict[int, list[str]]]
) -> None:
    marked = {line for line, wanted in _expectations(path, "plain").items() if wanted}
    assert set(pyright_errors[path.name]) == marked


# ------------------------------------------------- the documentation's examples


def _doc_problems(doc: Path, reported: Mapping[int, Sequence[object]]) -> str:
    return "\n".join(
        f"{doc.name}:{line}: {msg}" for line, msgs in sorted(reported.items()) for msg in msgs
    )


def test_doc_modules_hold_the_quickstart_and_hooks(doc_modules: list[Path]) -> None:
    """Guards the extraction: the examples the issue names are among what is checked."""
    readme = next(m for m in doc_modules if m.name == "readme_examples.py").read_text()
    for line in (
        'PERSON = co.Schema(Person, key="name")',  # the quickstart, unannotated
        'assert co.get_or_load(people, "Dee", load_person) == Person("Dee", 170.0)',
        'audited = co.on(people, "before_insert", stamp_email)',
        'tidied = co.on(collections, "before_update", tidy)',
    ):
        assert line in readme.splitlines()


@pytest.mark.timeout(300)
@pytest.mark.parametrize("name", DOCS, ids=lambda name: DOCS[name].name)
@pytest.mark.parametrize("run_name", ["plugin", "plain"])
def test_doc_examples_pass_mypy(name: str, run_name: str, request: pytest.FixtureRequest) -> None:
    """The README quickstart and hooks, the field and typing guides: clean under mypy --strict."""
    run: MypyRun = request.getfixturevalue(f"{run_name}_run")
    reported = run.reports.get(name, {})
    errors = {line: got for line, got in reported.items() if any(k == "error" for k, _ in got)}
    assert not errors, f"mypy ({run_name}):\n" + _doc_problems(DOCS[name], errors)


@pytest.mark.timeout(300)
@pytest.mark.parametrize("name", DOCS, ids=lambda name: DOCS[name].name)
def test_doc_examples_pass_pyright(
    name: str, pyright_errors: dict[str, dict[int, list[str]]]
) -> None:
    errors = pyright_errors[name]
    assert not errors, "pyright (strict):\n" + _doc_problems(DOCS[name], errors)
