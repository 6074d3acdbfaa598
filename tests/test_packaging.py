"""What a user installs is whole: typed packages, the version, and an sdist that tests itself.

The wheel and the sdist are built once per session with hatchling (the
project's build backend, in the ``test`` extra) into a temporary directory;
nothing is written into the repository.
"""

from __future__ import annotations

import re
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

#: Every package the wheel ships; each has public types.
PACKAGES = (
    "meshproto",
    "meshproto_ws",
    "meshproto_anyio",
    "meshproto_sync",
    "meshproto_crypto",
    "meshproto_cli",
)


def _build(target: str, out: Path) -> Path:
    result = subprocess.run(
        [sys.executable, "-m", "hatchling", "build", "-t", target, "-d", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    suffix = ".whl" if target == "wheel" else ".tar.gz"
    (built,) = out.glob(f"*{suffix}")
    return built


@pytest.fixture(scope="module")
def wheel_names(tmp_path_factory: pytest.TempPathFactory) -> set[str]:
    wheel = _build("wheel", tmp_path_factory.mktemp("wheel"))
    with zipfile.ZipFile(wheel) as archive:
        return set(archive.namelist())


@pytest.fixture(scope="module")
def sdist_names(tmp_path_factory: pytest.TempPathFactory) -> set[str]:
    sdist = _build("sdist", tmp_path_factory.mktemp("sdist"))
    with tarfile.open(sdist) as archive:
        # Names without the leading "meshproto-X.Y.Z/".
        return {name.partition("/")[2] for name in archive.getnames()}


@pytest.mark.parametrize("package", PACKAGES)
def test_wheel_marks_every_package_as_typed(wheel_names: set[str], package: str) -> None:
    assert f"{package}/py.typed" in wheel_names


def test_wheel_carries_the_license(wheel_names: set[str]) -> None:
    assert any(name.endswith("licenses/LICENSE") for name in wheel_names), sorted(wheel_names)


def test_sdist_holds_what_its_tests_need(sdist_names: set[str]) -> None:
    fixtures = sorted((ROOT / "tests" / "fixtures" / "real-broker").glob("*.jsonl"))
    assert fixtures
    for path in fixtures:
        assert path.relative_to(ROOT).as_posix() in sdist_names
    for needed in (
        "pyproject.toml",
        "README.md",
        "LICENSE",
        "CHANGELOG.md",
        "docs/conf.py",
        "docs/protocol.md",
        "examples/in_memory.py",
        "tests/test_conformance.py",
    ):
        assert needed in sdist_names, needed


def test_version_is_written_once() -> None:
    pyproject = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    assert 'dynamic = ["version"]' in pyproject
    assert not re.search(r"^version\s*=", pyproject, re.M)


def test_changelog_has_an_entry_for_this_version() -> None:
    from meshproto import __version__  # noqa: PLC0415

    changelog = (ROOT / "CHANGELOG.md").read_text(encoding="utf-8")
    assert re.search(rf"^## \[{re.escape(__version__)}\]", changelog, re.M), __version__


def test_command_prints_the_installed_version() -> None:
    from meshproto import __version__  # noqa: PLC0415

    result = subprocess.run(
        [sys.executable, "-m", "meshproto_cli", "--version"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"meshproto {__version__}"


def test_python_dash_m_meshproto_names_the_version_and_the_command() -> None:
    from meshproto import __version__  # noqa: PLC0415

    result = subprocess.run(
        [sys.executable, "-m", "meshproto"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert f"meshproto {__version__}" in result.stdout
    assert "meshproto --help" in result.stdout


def test_python_dash_m_meshproto_refuses_arguments_it_does_not_take() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "meshproto", "bogus"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert "takes no arguments" in result.stderr
    assert "Traceback" not in result.stderr


def test_trio_extra_brings_the_trio_backend() -> None:
    pyproject = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    (line,) = re.findall(r"^trio = \[.*\]$", pyproject, re.M)
    assert '"meshproto[anyio]"' in line
    assert '"trio>=' in line


def test_no_docstring_holds_a_lone_surrogate() -> None:
    """Python 3.13.0 re-encodes docstrings as it compiles them, and a lone
    surrogate in one (``"\\ud800"`` written without doubling the backslash)
    made ``import meshproto`` fail there with UnicodeEncodeError."""
    import ast  # noqa: PLC0415

    kinds = (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)
    bad = []
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                doc = ast.get_docstring(node, clean=False) if isinstance(node, kinds) else None
                if doc and any(0xD800 <= ord(c) <= 0xDFFF for c in doc):
                    bad.append(f"{path.relative_to(ROOT)}:{getattr(node, 'lineno', 1)}")
    assert bad == []
