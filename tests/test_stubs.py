"""The hand-written stubs in ``stubs/`` match the installed libraries (mypy's stubtest).

Add a module to ``STUBBED`` when its stubs land (e.g. ``"msgpack"``), with an
allowlist file next to its stubs if something there is genuinely dynamic.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
STUBS = ROOT / "stubs"
STUBBED = ["pymemcache", "msgpack"]


@pytest.mark.timeout(180)
@pytest.mark.parametrize("module", STUBBED)
def test_stubs_match_the_runtime_library(module: str) -> None:
    command = [
        sys.executable,
        "-m",
        "mypy.stubtest",
        module,
        "--mypy-config-file",
        str(ROOT / "pyproject.toml"),
        # The stubs cover what cacheorm calls, not the library's whole surface.
        "--ignore-missing-stub",
    ]
    allowlist = STUBS / module / "stubtest-allowlist.txt"
    if allowlist.exists():
        command += ["--allowlist", str(allowlist)]
    result = subprocess.run(
        command,
        cwd=ROOT,
        env={"PATH": "/usr/bin:/bin", "MYPYPATH": str(STUBS)},
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
