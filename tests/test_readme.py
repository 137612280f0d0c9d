"""The documentation's examples run: every ``python`` block, in order, in one namespace.

A block followed by an ``<!-- not executed ... -->`` comment (it needs a server)
is only compiled. ``tests/test_typing.py`` type-checks the same blocks.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest

import cacheorm as co

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
FIELDS = ROOT / "docs" / "fields.md"
BLOCK = re.compile(r"```python\n(.*?)```\n(<!-- not executed)?", re.DOTALL)


@pytest.fixture(autouse=True)
def _keep_the_registry() -> Iterator[None]:
    """Unregister what an example registered, so other tests can use the same names."""
    before = set(co.registry.names())
    yield
    for name in set(co.registry.names()) - before:
        co.registry.unregister(name)


def _run_blocks(doc: Path, at_least: int) -> None:
    blocks = BLOCK.findall(doc.read_text(encoding="utf-8"))
    assert len(blocks) >= at_least
    namespace: dict[str, object] = {"__name__": doc.stem.lower()}
    for number, (code, skip) in enumerate(blocks, 1):
        # dont_inherit: run as a user's module would, without this file's
        # `from __future__ import annotations` (which would leave the examples'
        # annotations as strings that no module namespace can resolve).
        compiled = compile(code, f"{doc.name} block {number}", "exec", dont_inherit=True)
        if not skip:
            exec(compiled, namespace)


def test_readme_examples_run() -> None:
    _run_blocks(README, at_least=9)


def test_field_reference_examples_run() -> None:
    _run_blocks(FIELDS, at_least=3)
