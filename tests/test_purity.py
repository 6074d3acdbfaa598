"""The core stays pure (docs/architecture.md): standard library only, no I/O, no clock, no
threads, no global random source, and no required dependencies.

Every ``.py`` file under ``meshproto/`` is parsed with :mod:`ast` (never
imported), so a violation is found wherever it sits: at module level, inside a
function, or under ``if TYPE_CHECKING:``. Each rule has its own test, and the
checkers are themselves tested on synthetic sources that break each rule.
"""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

import pytest

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    tomllib = None  # type: ignore[assignment]

ROOT = Path(__file__).resolve().parents[1]
PACKAGE_DIR = ROOT / "meshproto"
PYPROJECT = ROOT / "pyproject.toml"

#: Modules that would let the core do I/O, start threads or read the clock.
FORBIDDEN_MODULES = frozenset(
    {"socket", "select", "selectors", "ssl", "asyncio", "threading", "time"}
)
#: The only name the core may take from :mod:`random`: the class, for type hints
#: and for callers' instances. Everything else draws from the global source.
RANDOM_ALLOWED = frozenset({"Random"})
#: Calls that import a module named by a string.
_DYNAMIC_IMPORTS = frozenset({"__import__", "import_module"})


# --- the checkers ----------------------------------------------------------------


def _imported_modules(tree: ast.AST) -> list[tuple[int, str]]:
    """(line, absolute module name) of every import; relative imports are left out."""
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module))
        elif isinstance(node, ast.Call):
            func = node.func
            name = func.id if isinstance(func, ast.Name) else getattr(func, "attr", None)
            first = node.args[0] if node.args else None
            if (
                name in _DYNAMIC_IMPORTS
                and isinstance(first, ast.Constant)
                and isinstance(first.value, str)
            ):
                found.append((node.lineno, first.value))
    return found


def third_party_imports(source: str, filename: str = "<source>") -> list[str]:
    """Imports of anything but the standard library and meshproto itself."""
    tree = ast.parse(source, filename)
    return [
        f"{filename}:{line}: imports {module!r}, which is not in the standard library"
        for line, module in _imported_modules(tree)
        if (top := module.partition(".")[0]) not in sys.stdlib_module_names and top != "meshproto"
    ]


def io_thread_or_clock_imports(source: str, filename: str = "<source>") -> list[str]:
    """Imports of socket, select, selectors, ssl, asyncio, threading or time."""
    tree = ast.parse(source, filename)
    return [
        f"{filename}:{line}: imports {module!r}"
        for line, module in _imported_modules(tree)
        if module.partition(".")[0] in FORBIDDEN_MODULES
    ]


def global_random_uses(source: str, filename: str = "<source>") -> list[str]:
    """Uses of :mod:`random`'s module-level functions (the shared global source).

    ``from random import Random`` and ``random.Random`` are fine; any other name
    taken from the module, or the module object itself passed around, is not.
    """
    tree = ast.parse(source, filename)
    found: list[str] = []
    aliases: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            aliases |= {a.asname or a.name for a in node.names if a.name == "random"}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module == "random":
            found += [
                f"{filename}:{node.lineno}: 'from random import {a.name}'"
                for a in node.names
                if a.name not in RANDOM_ALLOWED
            ]
    if not aliases:
        return found
    judged: set[int] = set()
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Name)
            and node.value.id in aliases
        ):
            judged.add(id(node.value))  # judged here, by its attribute
            if node.attr not in RANDOM_ALLOWED:
                found.append(f"{filename}:{node.lineno}: uses '{node.value.id}.{node.attr}'")
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Name)
            and node.id in aliases
            and isinstance(node.ctx, ast.Load)
            and id(node) not in judged
        ):
            found.append(f"{filename}:{node.lineno}: passes the 'random' module itself around")
    return found


def package_sources() -> list[tuple[str, str]]:
    """(path relative to the repository, source) of every module of the core."""
    paths = sorted(PACKAGE_DIR.rglob("*.py"))
    assert paths, f"no .py files under {PACKAGE_DIR}"
    return [(str(p.relative_to(ROOT)), p.read_text(encoding="utf-8")) for p in paths]


def _regex_dependencies(text: str) -> list[str]:
    """``[project] dependencies`` read with a regex (the fallback without tomllib)."""
    section = re.search(r"^\[project\][ \t]*$(.*?)(?=^\[|\Z)", text, re.MULTILINE | re.DOTALL)
    if section is None:
        return []
    body = section.group(1)
    match = re.search(r"^dependencies\s*=\s*\[(.*?)\]", body, re.MULTILINE | re.DOTALL)
    if match is None:
        return []
    items = re.sub(r"#[^\n]*", "", match.group(1))
    return [a or b for a, b in re.findall(r"\"([^\"]*)\"|'([^']*)'", items)]


def project_dependencies(text: str) -> list[str]:
    """The required dependencies declared in a ``pyproject.toml``."""
    if tomllib is not None:
        return list(tomllib.loads(text).get("project", {}).get("dependencies", []))
    return _regex_dependencies(text)


# --- the rules, on the real package ---------------------------------------------


def test_core_imports_only_the_standard_library() -> None:
    problems = [p for name, src in package_sources() for p in third_party_imports(src, name)]
    assert not problems, "\n".join(problems)


def test_core_imports_no_socket_select_ssl_asyncio_threading_or_time() -> None:
    problems = [p for name, src in package_sources() for p in io_thread_or_clock_imports(src, name)]
    assert not problems, "\n".join(problems)


def test_core_uses_no_module_level_random_functions() -> None:
    problems = [p for name, src in package_sources() for p in global_random_uses(src, name)]
    assert not problems, "\n".join(problems)


def test_project_declares_no_required_dependencies() -> None:
    text = PYPROJECT.read_text(encoding="utf-8")
    assert re.search(r"^\[project\]", text, re.MULTILINE), f"no [project] table in {PYPROJECT}"
    assert project_dependencies(text) == []
    assert _regex_dependencies(text) == []


# --- the checkers catch what they are meant to -----------------------------------

VIOLATIONS = """\
import json
import requests
import time
from socket import socket
import asyncio.events
import random
import random as rnd
from random import randint, Random
from random import *
import importlib

def f():
    from threading import Thread
    import nacl.signing
    x = random.random()
    y = rnd.choice([1, 2])
    src = random
    importlib.import_module("ssl")
    return random.Random(0), Random(1)
"""

CLEAN = """\
from __future__ import annotations
import json
import random
from random import Random
from collections.abc import Mapping
from . import _codec
from ._frames import Push
import meshproto._codec

def make(seed: int) -> Random:
    return random.Random(seed)
"""


def test_checker_flags_third_party_imports() -> None:
    found = third_party_imports(VIOLATIONS, "bad.py")
    assert [p.split(":")[1] for p in found] == ["2", "14"], found
    assert "'requests'" in found[0] and "'nacl.signing'" in found[1]


def test_checker_flags_io_thread_and_clock_imports() -> None:
    found = io_thread_or_clock_imports(VIOLATIONS, "bad.py")
    lines = [p.split(":")[1] for p in found]
    assert sorted(lines, key=int) == ["3", "4", "5", "13", "18"], found


def test_checker_flags_module_level_random_functions() -> None:
    found = global_random_uses(VIOLATIONS, "bad.py")
    text = "\n".join(found)
    assert "'from random import randint'" in text
    assert "'from random import *'" in text
    assert "'random.random'" in text
    assert "'rnd.choice'" in text
    assert "bad.py:17: passes the 'random' module itself around" in text
    assert len(found) == 5, found


@pytest.mark.parametrize(
    "checker", [third_party_imports, io_thread_or_clock_imports, global_random_uses]
)
def test_checkers_accept_a_clean_module(checker: object) -> None:
    assert checker(CLEAN, "clean.py") == []  # type: ignore[operator]


def test_dependency_readers_see_declared_dependencies() -> None:
    text = """\
[build-system]
requires = ["hatchling"]

[project]
name = "x"
dependencies = [
    "wsproto>=1.2",  # a comment
    'anyio',
]

[project.optional-dependencies]
test = ["pytest"]
"""
    assert _regex_dependencies(text) == ["wsproto>=1.2", "anyio"]
    assert project_dependencies(text) == ["wsproto>=1.2", "anyio"]
    empty = text.replace("\"wsproto>=1.2\",  # a comment\n    'anyio',\n", "")
    assert _regex_dependencies(empty) == []
    assert project_dependencies(empty) == []
