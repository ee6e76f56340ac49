"""Every Python snippet in README.md and docs/ runs, as written, and passes.

The blocks of a page run in order in one fresh directory. An HTML comment on the line
right before a block's opening fence says how to treat it:

* ``<!-- fragment -->``: an intentional fragment, not run.
* ``<!-- file: NAME -->``: written to NAME (any language: a conftest, an app module,
  a pytest.ini), for the page's later blocks; not run by itself.

Any other ```python block is run: one that defines a ``test_`` function is a test
module (pytest runs them all once the page's scripts have run), any other is a script
(``python``, exit status 0).

A page that drives Debian's Chromium (it names ``/usr/bin/chromium``) is skipped on a
machine without it, as the browser tests are, except in CI.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from test_browser import require_chromium

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]

_BLOCK = re.compile(
    r"^(?:<!--(?P<comment>[^\n]*?)-->\n)?(?P<fence>```+)(?P<lang>[\w-]*)[^\n]*\n(?P<code>.*?)^(?P=fence)[ \t]*$",
    flags=re.MULTILINE | re.DOTALL,
)
_DIRECTIVE = re.compile(r"\s*(?P<directive>fragment|file:\s*(?P<name>[\w./-]+))\s*")
_TEST_FUNCTION = re.compile(r"^(?:async\s+)?def\s+test_", flags=re.MULTILINE)


@dataclass(frozen=True)
class Block:
    line: int
    lang: str
    code: str
    directive: str | None
    file_name: str | None

    @property
    def is_test_module(self) -> bool:
        return _TEST_FUNCTION.search(self.code) is not None


def blocks_of(page: Path) -> list[Block]:
    text = page.read_text()
    blocks = []
    for match in _BLOCK.finditer(text):
        line = text.count("\n", 0, match.start("fence")) + 1
        directive = None if match["comment"] is None else _DIRECTIVE.fullmatch(match["comment"])
        if match["comment"] is not None and directive is None:
            # A misspelt directive would silently run a fragment, or run a file as a script.
            raise ValueError(f"{_page_id(page)}:{line - 1}: not a snippet directive: <!--{match['comment']}-->")
        blocks.append(
            Block(
                line=line,
                lang=match["lang"],
                code=match["code"],
                directive=directive and directive["directive"],
                file_name=directive and directive["name"],
            )
        )
    return blocks


def _page_id(page: Path) -> str:
    return str(page.relative_to(ROOT))


def _runs(page: Path) -> bool:
    return any(block.lang == "python" and block.directive is None for block in blocks_of(page))


@pytest.mark.parametrize("page", [page for page in PAGES if _runs(page)], ids=_page_id)
def test_snippets_run(page: Path, tmp_path: Path) -> None:
    if "/usr/bin/chromium" in page.read_text():
        require_chromium()  # a page that drives Debian's Chromium: skipped without it, as the browser tests are
    tests_written = 0
    for block in blocks_of(page):
        where = f"{_page_id(page)}:{block.line}"
        if block.file_name is not None:
            target = tmp_path / block.file_name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(block.code)
        elif block.lang != "python" or block.directive == "fragment":
            continue
        elif block.is_test_module:
            tests_written += 1
            (tmp_path / f"test_snippet_{block.line}.py").write_text(f"# {where}\n{block.code}")
        else:
            script = tmp_path / f"snippet_{block.line}.py"
            script.write_text(block.code)
            result = _run([sys.executable, script.name], tmp_path)
            assert result.returncode == 0, f"the snippet at {where} failed:\n{result.stdout}{result.stderr}"
    if tests_written:
        # Warnings are errors, except pytest-asyncio's own about an ini option a snippet need not set.
        options = ["-q", "-p", "no:cacheprovider", "-W", "error", "-o", "asyncio_default_fixture_loop_scope=function"]
        result = _run([sys.executable, "-m", "pytest", *options], tmp_path)
        assert result.returncode == 0, f"the test snippets of {_page_id(page)} failed:\n{result.stdout}{result.stderr}"


def _run(command: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    # Only the page's directory and the installed packages: not this repository's conftest or ini file.
    env = {key: value for key, value in os.environ.items() if key not in {"PYTEST_ADDOPTS", "PYTHONPATH"}}
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=120, env=env, check=False)


def test_every_page_is_read() -> None:
    """The docs exist, have Python blocks, and every directive before a block is spelt right."""
    assert (ROOT / "docs" / "index.md").is_file(), "docs/index.md is missing"
    assert sum(block.lang == "python" for page in PAGES for block in blocks_of(page)) > 0


def test_readme_is_a_short_front_door() -> None:
    """README.md stays short, and its first screen has the two set-up commands CI and users run."""
    lines = (ROOT / "README.md").read_text().splitlines()
    assert len(lines) <= 300, f"README.md has {len(lines)} lines; move detail into docs/"
    first_screen = "\n".join(lines[:60])
    assert "uv run --no-dev python demo_server.py" in first_screen
    assert "uv run pytest" in first_screen
    assert "\nrun_pytest uv run pytest\n" in (ROOT / ".ci" / "run").read_text(), "CI must run the README's command"


def test_the_readme_test_command_passes_without_chromium(tmp_path: Path) -> None:
    """What a fresh machine without Chromium sees of the tests that drive it: skips, with the reason."""
    env = {key: value for key, value in os.environ.items() if key not in {"CI", "PYTEST_ADDOPTS"}}
    env["UVICORN_TESTSERVER_CHROMIUM"] = str(tmp_path / "no-chromium")
    tests = [
        "integration_tests/test_browser.py",
        "integration_tests/test_playwright_base_url.py",
        "integration_tests/test_docs_snippets.py::test_snippets_run[docs/guides/pytest-playwright.md]",
    ]
    command = [sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", *tests]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300, env=env, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "no-chromium is missing: install Debian's chromium package" in result.stdout
    assert " skipped" in result.stdout
    assert " failed" not in result.stdout
