"""Every Python snippet in README.md is copied from a test that passes.

Each code line of each ```python block must appear, stripped, in test_basic.py or a
file under integration_tests/. Lines that only sketch (comments, ``...``, signatures
in the option reference) are marked by a block whose first line is ``# reference``.
"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _python_blocks(text: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", text, flags=re.DOTALL)


def _significant(line: str) -> str:
    code = line.split("  #", 1)[0].strip()
    return "" if code.startswith("#") or code in {"", "...", "pass"} else code


def test_readme_python_snippets_come_from_tests() -> None:
    sources = [ROOT / "test_basic.py", *sorted((ROOT / "integration_tests").rglob("*.py"))]
    corpus = {_significant(line) for path in sources for line in path.read_text().splitlines()}
    blocks = _python_blocks((ROOT / "README.md").read_text())
    assert blocks, "README.md has no ```python blocks"
    missing = [
        line
        for block in blocks
        if not block.startswith("# reference")
        for line in map(_significant, block.splitlines())
        if line and line not in corpus
    ]
    assert not missing, "README lines not found in any test:\n" + "\n".join(missing)
