"""The README's examples run: every ``python`` block, in order, in one namespace.

A block followed by an ``<!-- not executed ... -->`` comment (it needs a server)
is only compiled.
"""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"
BLOCK = re.compile(r"```python\n(.*?)```\n(<!-- not executed)?", re.DOTALL)


def test_readme_examples_run() -> None:
    blocks = BLOCK.findall(README.read_text(encoding="utf-8"))
    assert len(blocks) >= 5
    namespace: dict[str, object] = {"__name__": "readme"}
    for number, (code, skip) in enumerate(blocks, 1):
        compiled = compile(code, f"README.md block {number}", "exec")
        if not skip:
            exec(compiled, namespace)
