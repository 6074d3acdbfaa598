"""The repository stands alone: what its code and docs cite is inside it.

* Every citation of ``docs/protocol.md §N`` (in code, tests and docs) names a
  section that ``docs/protocol.md`` has.
* Nothing in the repository reads or cites files outside it.
"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PROTOCOL = ROOT / "docs" / "protocol.md"

#: Files whose text is checked: the project's own source, tests and prose.
_TEXT_SUFFIXES = {".py", ".md", ".toml", ".rst", ".txt"}
_SKIP_DIRS = {".venv", ".git", "_build", "__pycache__", "fixtures", ".hypothesis"}
_CITATION = re.compile(r"protocol\.md\s+((?:§\s?\d+(?:\.\d+)?(?:\s*(?:,|and|or|-|\u2013)\s*)?)+)")
_SECTION = re.compile(r"§\s?(\d+(?:\.\d+)?)")
#: Section headings: ``## 4. Messages`` or ``### 4.3 `client_ack` …``.
_HEADING = re.compile(r"^#{2,4}\s+(\d+(?:\.\d+)?)\.?\s", re.M)


def _project_files() -> list[Path]:
    return [
        path
        for path in ROOT.rglob("*")
        if path.is_file()
        and path.suffix in _TEXT_SUFFIXES
        and not _SKIP_DIRS.intersection(path.relative_to(ROOT).parts)
    ]


def _protocol_sections() -> set[str]:
    return set(_HEADING.findall(PROTOCOL.read_text(encoding="utf-8")))


def test_protocol_doc_has_the_numbered_sections() -> None:
    sections = _protocol_sections()
    for number in ("1", "2", "3", "3.1", "3.2", "3.3", "4", "4.1", "4.2", "4.3", "4.4"):
        assert number in sections, f"docs/protocol.md has no section {number}"
    for number in ("4.5", "4.6", "5", "6", "7"):
        assert number in sections, f"docs/protocol.md has no section {number}"


def test_every_protocol_citation_names_a_section_that_exists() -> None:
    sections = _protocol_sections()
    dangling = []
    for path in _project_files():
        text = path.read_text(encoding="utf-8", errors="replace")
        for match in _CITATION.finditer(text):
            for number in _SECTION.findall(match.group(1)):
                if number not in sections:
                    line = text.count("\n", 0, match.start()) + 1
                    dangling.append(f"{path.relative_to(ROOT)}:{line}: §{number}")
    assert not dangling, "citations of missing sections:\n" + "\n".join(dangling)


def test_nothing_cites_or_reads_files_beside_the_repository() -> None:
    outside = re.compile(
        r"\.\./shared|shared/conformance|parents\[2\]|\bPROTOCOL\.md|\bDESIGN\.md"
        r"|shared/ folder|broker-client\.ts"
    )
    found = []
    for path in _project_files():
        if path == Path(__file__).resolve():
            continue
        text = path.read_text(encoding="utf-8", errors="replace")
        for match in outside.finditer(text):
            line = text.count("\n", 0, match.start()) + 1
            found.append(f"{path.relative_to(ROOT)}:{line}: {match.group(0)}")
    assert not found, "references outside the repository:\n" + "\n".join(found)
