"""The runnable examples in ``examples/`` run and do what their docstrings say."""

from __future__ import annotations

import asyncio
import importlib.util
import subprocess
import sys
import time
from pathlib import Path
from types import ModuleType

import pytest

import cacheorm as co

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"


def load_example(name: str) -> ModuleType:
    """Import ``examples/<name>.py`` (a script directory, not a package)."""
    spec = importlib.util.spec_from_file_location(f"examples_{name}", EXAMPLES / f"{name}.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses and NamedTuples look their module up
    spec.loader.exec_module(module)
    return module


@pytest.mark.timeout(30)
def test_async_handler_script_serves_20_requests_with_3_queries() -> None:
    """``python examples/async_handler.py``: 20 answers, one database query per product."""
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, str(EXAMPLES / "async_handler.py")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=20,
        check=False,
    )
    elapsed = time.monotonic() - started
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert len(lines) == 21
    assert lines[0] == "/products/a1 200 {'sku': 'a1', 'name': 'Product a1', 'price_cents': 200}"
    assert all(" 200 {'sku': " in line for line in lines[:20])
    assert lines[-1] == "20 requests, 3 database queries"
    assert elapsed < 10, f"the example took {elapsed:.1f} s"


@pytest.mark.timeout(30)
def test_async_handler_answers_concurrent_requests_while_one_loads() -> None:
    """The 20 requests overlap: they take about one 50 ms query, not 20 of them."""
    example = load_example("async_handler")
    backend = co.MemoryBackend()
    started = time.monotonic()
    responses = asyncio.run(example.serve(backend))
    elapsed = time.monotonic() - started
    assert [r["status"] for r in responses] == [200] * 20
    assert responses[2] == {
        "status": 200,
        "body": {"sku": "c333", "name": "Product c333", "price_cents": 400},
    }
    assert elapsed < 0.5, f"20 requests took {elapsed:.2f} s: the loads did not overlap"
    # A second round is served from the cache: no query at all.
    again = example.App(backend, example.FakeDatabase())
    reply = asyncio.run(again.handle({"method": "GET", "path": "/products/b22"}))
    assert reply["body"] == {"sku": "b22", "name": "Product b22", "price_cents": 300}
    assert again.database.queries == 0
