"""The public namespace: one sorted `__all__`, the version, type information, documented names."""

from __future__ import annotations

import ast
import importlib.metadata
import inspect
import itertools
import shutil
import subprocess
import zipfile
from pathlib import Path

import pytest

import uvicorn_testserver

PACKAGE_DIR = Path(uvicorn_testserver.__file__).resolve().parent
PROJECT_DIR = PACKAGE_DIR.parent.parent


def public_names() -> set[str]:
    """Names a user can import from the package, submodules aside."""
    names = {name for name in dir(uvicorn_testserver) if not name.startswith("_")}
    return {name for name in names if not inspect.ismodule(getattr(uvicorn_testserver, name))} | {"__version__"}


def test_all_is_sorted() -> None:
    assert uvicorn_testserver.__all__ == sorted(uvicorn_testserver.__all__)


def test_all_lists_exactly_the_public_names() -> None:
    assert set(uvicorn_testserver.__all__) == public_names()


def test_every_name_in_all_imports() -> None:
    for name in uvicorn_testserver.__all__:
        assert getattr(uvicorn_testserver, name) is not None, name


def test_version_matches_the_installed_distribution() -> None:
    assert uvicorn_testserver.__version__ == importlib.metadata.version("uvicorn-testserver")


def test_py_typed_is_in_the_package() -> None:
    assert (PACKAGE_DIR / "py.typed").is_file()


@pytest.mark.skipif(shutil.which("uv") is None, reason="uv is not on PATH")
def test_py_typed_is_shipped_in_the_wheel(tmp_path: Path) -> None:
    subprocess.run(
        ["uv", "build", "--wheel", "--offline", "--quiet", "--out-dir", str(tmp_path), str(PROJECT_DIR)],
        check=True,
        timeout=120,
    )
    [wheel] = tmp_path.glob("*.whl")
    with zipfile.ZipFile(wheel) as archive:
        assert "uvicorn_testserver/py.typed" in archive.namelist()


def attribute_docstrings() -> dict[str, str]:
    """Docstrings written under module-level assignments (``Alias = ...`` then ``\"\"\"...\"\"\"``)."""
    docs = {}
    for path in PACKAGE_DIR.rglob("*.py"):
        body = ast.parse(path.read_text()).body
        for statement, following in itertools.pairwise(body):
            targets = statement.targets if isinstance(statement, ast.Assign) else []
            if isinstance(statement, ast.AnnAssign):
                targets = [statement.target]
            if (
                isinstance(following, ast.Expr)
                and isinstance(following.value, ast.Constant)
                and isinstance(following.value.value, str)
            ):
                docs.update({target.id: following.value.value for target in targets if isinstance(target, ast.Name)})
    return docs


@pytest.mark.parametrize("name", [name for name in uvicorn_testserver.__all__ if name != "__version__"])
def test_every_public_name_has_a_docstring(name: str) -> None:
    value = getattr(uvicorn_testserver, name)
    if inspect.isclass(value):
        doc = value.__dict__.get("__doc__")  # its own, not one inherited from a base class
    elif inspect.isfunction(value):
        doc = value.__doc__
    else:  # a type alias: documented where it is assigned
        doc = attribute_docstrings().get(name)
    assert doc, f"{name} has no docstring"
    assert doc.strip(), f"{name} has an empty docstring"


def _modules() -> dict[str, Path]:
    """Every module of the package, subpackages included, by its dotted name below it ('' for the package)."""
    found = {}
    for path in sorted(PACKAGE_DIR.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE_DIR).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


def _internal_imports() -> dict[str, list[tuple[str, str]]]:
    """module -> [(module imported from, name)] for every ``from uvicorn_testserver... import name`` in src;
    ``from package import module`` is (that module, '')."""
    modules = _modules()
    found: dict[str, list[tuple[str, str]]] = {}
    for module, path in modules.items():
        imports = found.setdefault(module, [])
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("uvicorn_testserver"):
                source = (node.module or "").removeprefix("uvicorn_testserver").lstrip(".")
                for alias in node.names:
                    sub = f"{source}.{alias.name}".lstrip(".")
                    imports.append((sub, "") if sub in modules else (source, alias.name))
    return found


def test_no_module_imports_another_modules_private_names() -> None:
    private = [
        f"{module} imports {target}.{name}"
        for module, imports in _internal_imports().items()
        for target, name in imports
        if target and name.startswith("_") and not name.startswith("__")
    ]
    assert private == []


def test_imports_flow_one_way_without_cycles() -> None:
    graph = {
        module: {target for target, _ in imports if target not in ("", module)}
        for module, imports in _internal_imports().items()
    }

    def reaches(start: str, goal: str, seen: set[str]) -> bool:
        return any(
            nxt == goal or (nxt not in seen and reaches(nxt, goal, seen | {nxt})) for nxt in graph.get(start, ())
        )

    cycles = sorted(module for module in graph if reaches(module, module, {module}))
    assert cycles == []


def test_uvicorn_internals_are_used_in_one_module_only() -> None:
    internal = ("uvicorn.server", "uvicorn.config", "uvicorn.protocols", "uvicorn.lifespan", "uvicorn.main")
    users = sorted(
        str(path.relative_to(PACKAGE_DIR))
        for path in PACKAGE_DIR.rglob("*.py")
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.ImportFrom | ast.Import)
        and any(
            name.startswith(internal)
            for name in ([node.module or ""] if isinstance(node, ast.ImportFrom) else [a.name for a in node.names])
        )
    )
    assert set(users) == {"_core/uvicorn_internals.py"}


@pytest.mark.parametrize("name", [name for name in uvicorn_testserver.__all__ if name != "__version__"])
def test_public_classes_report_the_public_module(name: str) -> None:
    value = getattr(uvicorn_testserver, name)
    if isinstance(value, type):
        assert value.__module__ == "uvicorn_testserver"
